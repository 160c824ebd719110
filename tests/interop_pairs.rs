mod common;

use serde_json::Value;
use std::path::Path;
use trainer_data::interop::pairs::PairSet;

/// Builds pickle byte streams opcode by opcode.
#[derive(Default)]
struct P(Vec<u8>);

impl P {
    fn op(mut self, bytes: &[u8]) -> P {
        self.0.extend_from_slice(bytes);
        self
    }
    fn short_binstring(self, data: &[u8]) -> P {
        self.op(&[b'U', data.len() as u8]).op(data)
    }
    fn binstring(self, data: &[u8]) -> P {
        self.op(b"T").op(&(data.len() as i32).to_le_bytes()).op(data)
    }
    fn binput(self, i: u8) -> P {
        self.op(&[b'q', i])
    }
}

const PROTO2: &[u8] = b"\x80\x02";
const TRUE: &[u8] = b"\x88";
const FALSE: &[u8] = b"\x89";

/// Python 2, protocol 2: images as str (SHORT_BINSTRING and BINSTRING), one repeated
/// through the memo, bools NEWTRUE/NEWFALSE.
fn py2_stream() -> (Vec<u8>, Vec<Vec<u8>>, Vec<bool>) {
    let big = vec![0xabu8; 300];
    let images = vec![b"jpeg-a".to_vec(), big.clone(), b"jpeg-a".to_vec(), b"".to_vec()];
    let p = P::default().op(PROTO2).op(b"]").binput(0).op(b"(");
    let p = p
        .short_binstring(b"jpeg-a")
        .binput(1)
        .binstring(&big)
        .binput(2)
        .op(b"h\x01")
        .short_binstring(b"")
        .binput(3)
        .op(b"e");
    let p = p.op(b"]").binput(4).op(b"(").op(TRUE).op(FALSE).op(b"e").op(b"\x86").binput(5).op(b".");
    (p.0, images, vec![true, false])
}

fn parse_err(data: &[u8]) -> String {
    format!("{:#}", PairSet::parse(data).expect_err("must be rejected"))
}

#[test]
fn python2_protocol_2_with_binstring_and_memo() {
    let (data, images, issame) = py2_stream();
    let set = PairSet::parse(&data).unwrap();
    assert_eq!(set.images.iter().map(|i| i.to_vec()).collect::<Vec<_>>(), images);
    assert_eq!(set.issame, issame);
    assert_eq!(set.pair(1), (&b"jpeg-a"[..], &b""[..], false));
}

#[test]
fn python2_cpickle_layout() {
    // cPickle (protocol 2): memo from 1, a string it does not memoize, no memo for the tuple.
    let b300 = vec![b'b'; 300];
    let p = P::default()
        .op(PROTO2)
        .op(b"]")
        .binput(1)
        .op(b"(")
        .short_binstring(b"aaa")
        .binput(2)
        .binstring(&b300)
        .binput(3);
    let p = p.short_binstring(b"c").op(b"h\x02e").op(b"]").binput(4).op(b"(").op(TRUE).op(FALSE).op(b"e\x86.");
    let set = PairSet::parse(&p.0).unwrap();
    let images: Vec<Vec<u8>> = set.images.iter().map(|i| i.to_vec()).collect();
    assert_eq!(images, vec![b"aaa".to_vec(), b300, b"c".to_vec(), b"aaa".to_vec()]);
    assert_eq!(set.issame, vec![true, false]);
}

#[test]
fn python2_protocol_1_bools_and_python3_protocol_4_bytes() {
    // Protocol 1 has no PROTO opcode; bools are `I01\n` / `I00\n`, the tuple MARK ... TUPLE.
    let p1 = P::default()
        .op(b"(")
        .op(b"]q\x00(")
        .short_binstring(b"x")
        .short_binstring(b"y")
        .op(b"e")
        .op(b"]q\x01I01\na")
        .op(b"tq\x02.");
    let set = PairSet::parse(&p1.0).unwrap();
    assert_eq!((set.images.len(), set.issame.clone()), (2, vec![true]));
    // Protocol 4: FRAME, SHORT_BINBYTES, BINBYTES8, MEMOIZE, TUPLE2.
    let body = P::default()
        .op(b"]\x94(")
        .op(b"C\x02ab\x94")
        .op(b"\x8e")
        .op(&3u64.to_le_bytes())
        .op(b"cde\x94")
        .op(b"e]\x94\x89a\x86\x94.");
    let p4 = P::default().op(b"\x80\x04\x95").op(&(body.0.len() as u64).to_le_bytes()).op(&body.0);
    let set = PairSet::parse(&p4.0).unwrap();
    assert_eq!(set.images.iter().map(|i| i.to_vec()).collect::<Vec<_>>(), vec![b"ab".to_vec(), b"cde".to_vec()]);
    assert_eq!(set.issame, vec![false]);
}

#[test]
fn python3_protocol_2_codecs_encode() {
    // bytes b"\xff\x00A" pickled by Python 3 at protocol 2: _codecs.encode('ÿ\x00A', 'latin1').
    let p = P::default()
        .op(PROTO2)
        .op(b"]q\x00(")
        .op(b"c_codecs\nencode\nq\x01")
        .op(b"X\x04\x00\x00\x00\xc3\xbf\x00Aq\x02X\x06\x00\x00\x00latin1q\x03\x86q\x04Rq\x05");
    let p = p.op(b"h\x01X\x00\x00\x00\x00h\x03\x86Rq\x06").op(b"e]q\x07\x88a\x86q\x08.");
    let set = PairSet::parse(&p.0).unwrap();
    assert_eq!(set.images.iter().map(|i| i.to_vec()).collect::<Vec<_>>(), vec![vec![0xff, 0, b'A'], vec![]]);
    let not_latin1 = P::default()
        .op(PROTO2)
        .op(b"]q\x00(c_codecs\nencode\nX\x03\x00\x00\x00\xe2\x82\xacX\x06\x00\x00\x00latin1\x86R")
        .op(b"e]\x88a\x86.");
    assert!(parse_err(&not_latin1.0).contains("not latin-1"));
}

#[test]
fn inconsistent_files_are_clear_errors() {
    let odd = P::default()
        .op(PROTO2)
        .op(b"](")
        .short_binstring(b"a")
        .short_binstring(b"b")
        .short_binstring(b"c")
        .op(b"e](")
        .op(TRUE)
        .op(TRUE)
        .op(b"e\x86.");
    assert!(parse_err(&odd.0).contains("3 images: an odd number"), "{}", parse_err(&odd.0));
    let mismatch = P::default()
        .op(PROTO2)
        .op(b"](")
        .short_binstring(b"a")
        .short_binstring(b"b")
        .op(b"e](")
        .op(TRUE)
        .op(TRUE)
        .op(b"e\x86.");
    assert!(parse_err(&mismatch.0).contains("2 images but 2 issame labels"), "{}", parse_err(&mismatch.0));
    let ints = P::default().op(PROTO2).op(b"](").short_binstring(b"a").short_binstring(b"b").op(b"e]K\x01a\x86.");
    assert!(parse_err(&ints.0).contains("issame[0]: a int 1, expected a bool"), "{}", parse_err(&ints.0));
    let not_bytes = P::default().op(PROTO2).op(b"]K\x05a]\x86.");
    assert!(parse_err(&not_bytes.0).contains("image 0 is a int 5, expected bytes"), "{}", parse_err(&not_bytes.0));
    let text = b"((lp0\nS'a'\np1\na.";
    assert!(parse_err(text).contains("protocol 0 (text) pickle, which is not supported"), "{}", parse_err(text));
    let dict = P::default().op(PROTO2).op(b"}.");
    assert!(
        parse_err(&dict.0).contains("byte 2: opcode 0x7d ('}') is not one a pair file uses"),
        "{}",
        parse_err(&dict.0)
    );
    let three = P::default().op(PROTO2).op(b"]]]\x87.");
    assert!(parse_err(&three.0).contains("holds 3 values, expected 2"), "{}", parse_err(&three.0));
    let trailing = P::default().op(&py2_stream().0).op(b"junk");
    assert!(parse_err(&trailing.0).contains("4 bytes follow the end"), "{}", parse_err(&trailing.0));
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let (data, _, _) = py2_stream();
    for cut in 0..data.len() {
        let err = parse_err(&data[..cut]);
        assert!(err.contains("truncated") || err.contains("STOP") || err.contains("byte"), "cut {cut}: {err}");
    }
}

#[test]
fn hostile_lengths_and_structures_allocate_nothing() {
    let huge = P::default().op(PROTO2).op(b"\x8e").op(&(u64::MAX / 2).to_le_bytes()).op(b"xx");
    assert!(
        parse_err(&huge.0).contains("BINBYTES8 at byte 11 needs 9223372036854775807 bytes, 2 left"),
        "{}",
        parse_err(&huge.0)
    );
    let negative = P::default().op(PROTO2).op(b"T").op(&(-5i32).to_le_bytes());
    assert!(parse_err(&negative.0).contains("negative length"), "{}", parse_err(&negative.0));
    let frame = P::default().op(b"\x80\x04\x95").op(&u64::MAX.to_le_bytes());
    assert!(parse_err(&frame.0).contains("FRAME"), "{}", parse_err(&frame.0));
    let cycle = P::default().op(PROTO2).op(b"]q\x00h\x00a.");
    assert!(parse_err(&cycle.0).contains("already inside another value"), "{}", parse_err(&cycle.0));
    let mut deep = P::default().op(PROTO2).op(b")");
    for _ in 0..100_000 {
        deep = deep.op(b"\x85");
    }
    assert!(parse_err(&deep.0).contains("nest deeper than 16"), "{}", parse_err(&deep.0));
    let get = P::default().op(PROTO2).op(b"j\xff\xff\xff\xff");
    assert!(parse_err(&get.0).contains("never PUT"), "{}", parse_err(&get.0));
    let proto = P::default().op(b"\x80\x09");
    assert!(parse_err(&proto.0).contains("protocol 9 is not supported"), "{}", parse_err(&proto.0));
}

#[test]
fn read_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lfw.bin");
    std::fs::write(&path, b"\x80\x02]").unwrap();
    let err = format!("{:#}", PairSet::read(&path).unwrap_err());
    assert!(err.contains("lfw.bin") && err.contains("truncated"), "{err}");
}

/// Files written Python 2 style (re-created from Python 3) and by Python 3 (protocols 2–5,
/// numpy issame arrays) all read as the same pair set, the one the script meant.
#[test]
fn every_python_style_reads_identically() {
    let Some(python) = common::ref_python("pickle, numpy") else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = common::run_script(&python, "insightface_pairs.py", &["write", dir.path().to_str().unwrap()]);
    let manifest: Value = serde_json::from_str(&out).unwrap();
    let want_images: Vec<&str> = manifest["images"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let want_issame: Vec<bool> = manifest["issame"].as_array().unwrap().iter().map(|v| v.as_bool().unwrap()).collect();
    let files: Vec<&str> = manifest["files"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(files.len() >= 5, "{files:?}");
    assert!(files.iter().any(|f| f.starts_with("numpy")), "numpy issame arrays were not written: {files:?}");
    for name in &files {
        let set = PairSet::read(&dir.path().join(format!("{name}.bin"))).unwrap();
        assert_eq!(set.images.iter().map(|i| common::hex(i)).collect::<Vec<_>>(), want_images, "{name}");
        assert_eq!(set.issame, want_issame, "{name}");
    }
    // Python itself reads the re-created Python 2 file as meant.
    let py2 = dir.path().join("py2_p2.bin");
    let read: Value =
        serde_json::from_str(&common::run_script(&python, "insightface_pairs.py", &["read", py2.to_str().unwrap()]))
            .unwrap();
    assert_eq!((&read["images"], &read["issame"]), (&manifest["images"], &manifest["issame"]));
    assert!(Path::new(&py2).exists());
}

/// Python 2's `pickle` and `cPickle` at protocols 1 and 2, as insightface's files were
/// written: Debian has no Python 2, so benches/insightface_pairs.py re-creates their
/// bytes from Python 3 (`str` images as SHORT_BINSTRING / BINSTRING, cPickle's unmemoized
/// short strings), and pickletools' view of each file shows Python 2's opcodes only.
#[test]
fn python2_pickle_and_cpickle_files_read_as_written() {
    let Some(python) = common::ref_python("pickle, pickletools") else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = common::run_script(&python, "insightface_pairs.py", &["write-py2", dir.path().to_str().unwrap()]);
    let want: Value = serde_json::from_str(&out).unwrap();
    let py3_only = ["SHORT_BINBYTES", "BINBYTES", "GLOBAL", "STACK_GLOBAL", "REDUCE", "BINUNICODE", "FRAME"];
    for name in ["pickle_p1", "pickle_p2", "cPickle_p1", "cPickle_p2"] {
        let ops: Vec<&str> = want["opcodes"][name].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert!(
            ops.contains(&"SHORT_BINSTRING") && ops.contains(&"BINSTRING") && ops.contains(&"BINGET"),
            "{name}: {ops:?}"
        );
        assert!(!ops.iter().any(|op| py3_only.contains(op)), "{name} has an opcode Python 2 never wrote: {ops:?}");
        let p2 = ["PROTO", "NEWTRUE", "NEWFALSE", "TUPLE2"];
        let (has, lacks): (&[&str], &[&str]) =
            if name.ends_with("p2") { (&p2, &["INT"]) } else { (&["INT", "TUPLE"], &p2) };
        assert!(has.iter().all(|op| ops.contains(op)) && !lacks.iter().any(|op| ops.contains(op)), "{name}: {ops:?}");
        let set = PairSet::read(&dir.path().join(format!("{name}.bin"))).unwrap();
        assert_eq!(
            serde_json::json!(set.images.iter().map(|i| common::hex(i)).collect::<Vec<_>>()),
            want["images"],
            "{name}"
        );
        assert_eq!(serde_json::json!(set.issame), want["issame"], "{name}");
    }
    let size = |name: &str| std::fs::metadata(dir.path().join(format!("{name}.bin"))).unwrap().len();
    assert_ne!(size("pickle_p2"), size("cPickle_p2"), "cPickle does not memoize short strings as pickle does");
}
