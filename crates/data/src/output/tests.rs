use super::*;
use std::os::unix::fs::symlink;

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

#[test]
fn a_planted_partial_link_is_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let out = dir.path().join("o.png");
    symlink(&victim, dir.path().join("o.png.partial")).unwrap();
    let err = format!("{:#}", write_file(&out, b"new").unwrap_err());
    assert!(err.contains("o.png.partial") && err.contains("symlink"), "{err}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(!out.exists());
}

#[test]
fn a_link_at_the_final_name_is_replaced_and_a_fifo_or_folder_refused() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let out = dir.path().join("o.npy");
    symlink(&victim, &out).unwrap();
    write_file(&out, b"new").unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert_eq!(std::fs::read(&out).unwrap(), b"new");
    assert!(!std::fs::symlink_metadata(&out).unwrap().file_type().is_symlink());

    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let err = format!("{:#}", write_file(&fifo, b"x").unwrap_err());
    assert!(err.contains("is a FIFO"), "{err}");
    std::fs::create_dir(dir.path().join("d")).unwrap();
    let err = format!("{:#}", write_file(&dir.path().join("d"), b"x").unwrap_err());
    assert!(err.contains("is a folder"), "{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.iter().all(|n| !n.to_string_lossy().ends_with(PARTIAL)), "{left:?}");
}

#[test]
fn a_leftover_temporary_of_ours_is_replaced_and_nothing_is_renamed_before_all_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.npy"), dir.path().join("a.tsv"));
    std::fs::write(&a, b"old a").unwrap();
    std::fs::write(&b, b"old b").unwrap();
    std::fs::write(dir.path().join("a.npy.partial"), b"leftover").unwrap();
    let mut out = Output::new();
    out.write(&a, b"new a").unwrap();
    out.write(&b, b"new b").unwrap();
    drop(out);
    assert_eq!(std::fs::read(&a).unwrap(), b"old a");
    assert_eq!(std::fs::read(&b).unwrap(), b"old b");
    assert!(!dir.path().join("a.npy.partial").exists());
    let mut out = Output::new();
    out.write(&a, b"new a").unwrap();
    out.write(&b, b"new b").unwrap();
    out.commit().unwrap();
    assert_eq!(std::fs::read(&b).unwrap(), b"new b");
}

#[test]
fn temporary_folders_replace_only_our_own_folders() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("keep"), b"k").unwrap();
    let tmp = dir.path().join("step.tmp");
    symlink(&elsewhere, &tmp).unwrap();
    assert!(create_temp_dir(&tmp).is_err());
    assert!(elsewhere.join("keep").exists());
    std::fs::remove_file(&tmp).unwrap();
    std::fs::create_dir(&tmp).unwrap();
    std::fs::write(tmp.join("x"), b"x").unwrap();
    create_temp_dir(&tmp).unwrap();
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
}
