//! Issue 26, cases 1–4: every writer follows the output rule (docs/hostile-input.md). A
//! planted `<out>.partial` link is never written through, a device node, FIFO or folder at
//! the final name is refused and named, a link there is replaced (not followed), and a
//! failure leaves earlier outputs and no `.partial` behind.

mod common;
use common::*;
use std::os::unix::fs::{symlink, FileTypeExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A device node in the test's own folder (tests run as root; never under /dev).
fn device(path: &Path) {
    let st = Command::new("mknod").arg(path).args(["c", "1", "3"]).status().expect("mknod");
    assert!(st.success(), "mknod {}", path.display());
}

fn fifo(path: &Path) {
    let st = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(st.success(), "mkfifo {}", path.display());
}

fn victim(dir: &Path, name: &str) -> PathBuf {
    let v = dir.join(name);
    std::fs::write(&v, b"precious").unwrap();
    v
}

fn partials(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".partial"))
        .collect()
}

/// Runs `trainer args`, expecting a refusal whose message contains `needle`.
fn refused(args: &[&str], needle: &str) {
    let out = trainer().args(args).output().unwrap();
    let t = text(&out);
    assert!(!out.status.success(), "trainer {args:?} should fail:\n{t}");
    assert!(t.contains(needle), "trainer {args:?}: expected {needle:?} in:\n{t}");
    assert!(!t.contains("panicked"), "{t}");
}

#[test]
fn plot_never_writes_through_a_link_a_device_a_fifo_or_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let lines: String = (1..=20)
        .map(|s| {
            format!(
                "{{\"step\":{},\"loss\":{},\"lr\":0.1,\"images_per_s\":700.0,\"time\":{}}}\n",
                s * 10,
                20.0 - s as f64 * 0.5,
                s
            )
        })
        .collect();
    std::fs::write(run.join("log.txt"), lines).unwrap();
    let o = dir.path().join("o");
    std::fs::create_dir_all(&o).unwrap();

    let v = victim(dir.path(), "victim");
    symlink(&v, o.join("p.png.partial")).unwrap();
    refused(&["plot", s(&run), "--out", s(&o.join("p.png"))], "p.png.partial");
    assert_eq!(std::fs::read(&v).unwrap(), b"precious");
    assert!(!o.join("p.png").exists());

    let null = o.join("null");
    device(&null);
    refused(&["plot", s(&run), "--out", s(&null)], "is a device");
    assert!(std::fs::symlink_metadata(&null).unwrap().file_type().is_char_device());
    let pipe = o.join("pipe");
    fifo(&pipe);
    refused(&["plot", s(&run), "--out", s(&pipe)], "is a FIFO");
    assert!(std::fs::symlink_metadata(&pipe).unwrap().file_type().is_fifo());
    let folder = o.join("folder.png");
    std::fs::create_dir(&folder).unwrap();
    refused(&["plot", s(&run), "--out", s(&folder)], "is a folder");
    assert_eq!(partials(&o), vec!["p.png.partial".to_string()], "only the planted link is left");

    // A link at the final name is replaced by the picture, its target untouched.
    symlink(&v, o.join("q.png")).unwrap();
    run_ok(&["plot", s(&run), "--out", s(&o.join("q.png"))]);
    assert_eq!(std::fs::read(&v).unwrap(), b"precious");
    let meta = std::fs::symlink_metadata(o.join("q.png")).unwrap();
    assert!(meta.is_file() && meta.len() > 1000);
}

/// A 2-step run of the tiny network (FR, 16-dim embeddings) in `dir/Model/r`.
fn tiny_run(dir: &Path) -> PathBuf {
    let train = packed_synth(dir, "train", 6, 4, 1, 1);
    let out = dir.join("Model");
    let tiny = tiny_train("FR", &out, "r").bare().set("--batch-size", "8").set("--emb-dim", "16");
    run_ok(&tiny.set("--train-sets", s(&train)).set("--max-steps", "2").args());
    out.join("r")
}

#[test]
fn embed_and_export_never_write_through_what_they_do_not_own() {
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path());
    let set = dir.path().join("pairs.bin");
    let imgs: Vec<Vec<u8>> = (0..4).map(|i| png_face(i as u8)).collect();
    std::fs::write(&set, pair_set_py2(&imgs, &[true, false])).unwrap();
    let o = dir.path().join("o");
    std::fs::create_dir_all(&o).unwrap();
    let embed = |out: &Path| -> Vec<String> {
        ["embed", s(&run), "--sets", s(&set), "--out", s(out), "--device", "cpu"].map(String::from).to_vec()
    };

    // Case 1: the .partial of the array and of the TorchScript file.
    let v = victim(dir.path(), "victim");
    symlink(&v, o.join("e.npy.partial")).unwrap();
    refused(&args(&embed(&o.join("e.npy"))), "e.npy.partial");
    symlink(&v, o.join("m.pt.partial")).unwrap();
    refused(&["export", s(&run), "--out", s(&o.join("m.pt"))], "m.pt.partial");
    assert_eq!(std::fs::read(&v).unwrap(), b"precious");
    assert!(!o.join("e.npy").exists() && !o.join("e.tsv").exists() && !o.join("m.pt").exists());

    // Case 3: the row table through a link, and a failed embed keeps the earlier pair whole.
    let vt = victim(dir.path(), "victim.tsv");
    symlink(&vt, o.join("link.tsv")).unwrap();
    run_ok(&args(&embed(&o.join("link.npy"))));
    assert_eq!(std::fs::read(&vt).unwrap(), b"precious");
    assert!(std::fs::read_to_string(o.join("link.tsv")).unwrap().starts_with("path\tpair\tissame"));
    run_ok(&args(&embed(&o.join("keep.npy"))));
    let (npy, tsv) = (std::fs::read(o.join("keep.npy")).unwrap(), std::fs::read(o.join("keep.tsv")).unwrap());
    let empty = dir.path().join("empty.bin");
    std::fs::write(&empty, pair_set_py2(&[], &[])).unwrap();
    let keep = o.join("keep.npy");
    let failing = ["embed", s(&run), "--sets", s(&empty), "--out", s(&keep), "--device", "cpu"];
    refused(&failing, "0 pairs");
    assert_eq!(std::fs::read(o.join("keep.npy")).unwrap(), npy);
    assert_eq!(std::fs::read(o.join("keep.tsv")).unwrap(), tsv, "a failed embed leaves the old table whole");

    // Case 2: devices, FIFOs and folders at the final names are refused and left as they are.
    let null = o.join("null.npy");
    device(&null);
    refused(&args(&embed(&null)), "is a device");
    fifo(&o.join("fifo.tsv"));
    refused(&args(&embed(&o.join("fifo.npy"))), "is a FIFO");
    assert!(!o.join("fifo.npy").exists());
    let dev = o.join("null.pt");
    device(&dev);
    refused(&["export", s(&run), "--out", s(&dev)], "is a device");
    assert!(std::fs::symlink_metadata(&dev).unwrap().file_type().is_char_device());
    assert!(std::fs::symlink_metadata(&null).unwrap().file_type().is_char_device());

    // Case 4: a folder at the final name leaves no .partial; nor does a missing folder.
    std::fs::create_dir(o.join("d.pt")).unwrap();
    refused(&["export", s(&run), "--out", s(&o.join("d.pt"))], "is a folder");
    std::fs::create_dir(o.join("d.npy")).unwrap();
    refused(&args(&embed(&o.join("d.npy"))), "is a folder");
    let gone = o.join("missing/m.pt");
    let out = trainer().args(["export", s(&run), "--out", s(&gone)]).output().unwrap();
    let t = text(&out);
    assert!(!out.status.success() && t.contains("missing/m.pt") && !t.contains("frame #"), "{t}");
    let mut left = partials(&o);
    left.sort();
    assert_eq!(left, vec!["e.npy.partial".to_string(), "m.pt.partial".to_string()], "only the planted links");
    // Export still works and a link at its final name is replaced, not followed.
    symlink(&v, o.join("l.pt")).unwrap();
    run_ok(&["export", s(&run), "--out", s(&o.join("l.pt"))]);
    assert_eq!(std::fs::read(&v).unwrap(), b"precious");
    assert!(std::fs::symlink_metadata(o.join("l.pt")).unwrap().is_file());
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A small PNG of a flat grey face-sized square.
fn png_face(shade: u8) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(32, 32, image::Rgb([shade.wrapping_mul(40), 90, 120]));
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
    bytes
}

#[test]
fn pack_and_unpack_refuse_a_device_or_fifo_at_their_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    run_ok(&["synth", "--out", s(&img), "--identities", "2", "--per-identity", "2", "--size", "32"]);
    let list = img.join("list.tsv");
    let out = dir.path().join("shards");
    std::fs::create_dir_all(&out).unwrap();
    // --force: the names are taken, so only the output rule stands in the way.
    let pack = |name: &str| {
        ["pack", s(&img), "--list", s(&list), "--name", name, "--out", s(&out), "--force"].map(String::from)
    };

    let manifest = out.join("d.manifest.json");
    device(&manifest);
    refused(&args(&pack("d")), "is a device");
    assert!(std::fs::symlink_metadata(&manifest).unwrap().file_type().is_char_device());
    let bin = out.join("e-00000-of-00001.bin");
    fifo(&bin);
    refused(&args(&pack("e")), "is a FIFO");
    assert!(std::fs::symlink_metadata(&bin).unwrap().file_type().is_fifo());
    assert!(partials(&out).is_empty(), "{:?}", partials(&out));

    run_ok(&args(&pack("ok")));
    let first = std::fs::read_to_string(&list).unwrap().lines().nth(1).unwrap().split('\t').next().unwrap().to_string();
    let back = dir.path().join("back");
    std::fs::create_dir_all(back.join(&first).parent().unwrap()).unwrap();
    fifo(&back.join(&first));
    refused(&["unpack", s(&out.join("ok")), "--out", s(&back), "--force"], "is a FIFO");
    assert!(std::fs::symlink_metadata(back.join(&first)).unwrap().file_type().is_fifo());
}
