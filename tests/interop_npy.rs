mod common;

use serde_json::Value;
use trainer_data::interop::npy::{write_matrix, write_vector, NpyWriter};

const NUMPY_VIEW: &str = r#"
import json, sys, numpy as np
out = []
for path in sys.argv[1:]:
    with open(path, 'rb') as f:
        version = np.lib.format.read_magic(f)
    a = np.load(path)
    m = np.load(path, mmap_mode='r')
    out.append({'version': list(version), 'shape': list(a.shape), 'dtype': a.dtype.str,
                'fortran': bool(np.isfortran(a)), 'hex': a.tobytes().hex(), 'mmap_equal': bool(np.array_equal(a, m, equal_nan=True))})
print(json.dumps(out))
"#;

fn le_hex(values: &[f32]) -> String {
    common::hex(&values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())
}

#[test]
fn numpy_loads_what_we_write() {
    let dir = tempfile::tempdir().unwrap();
    let values: Vec<f32> = vec![1.0, -0.0, f32::NAN, f32::INFINITY, 1e-45, -3.25, f32::MAX, 0.1, 7.0, 8.0, 9.0, -1.0];
    let matrix = dir.path().join("emb.npy");
    write_matrix(&matrix, 3, &values).unwrap();
    let empty = dir.path().join("empty.npy");
    NpyWriter::<f32>::create(&empty, 512).unwrap().finish().unwrap();
    let vector = dir.path().join("issame.npy");
    write_vector(&vector, &[1u8, 0, 1]).unwrap();
    let wide = dir.path().join("wide.npy");
    write_matrix(&wide, 2, &[0.5f64, -2.0]).unwrap();
    let names: Vec<String> =
        dir.path().read_dir().unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(names.iter().all(|n| !n.ends_with(".partial")), "{names:?}");

    let Some(python) = common::ref_python("numpy") else { return };
    let paths = [&matrix, &empty, &vector, &wide];
    let mut args = vec!["-c".to_string(), NUMPY_VIEW.to_string()];
    args.extend(paths.iter().map(|p| p.to_str().unwrap().to_string()));
    let out = std::process::Command::new(&python).args(&args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seen: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let expect = [
        (vec![4, 3], "<f4", le_hex(&values)),
        (vec![0, 512], "<f4", String::new()),
        (vec![3], "|u1", "010001".to_string()),
        (vec![1, 2], "<f8", [0.5f64, -2.0].iter().flat_map(|v| v.to_le_bytes()).map(|b| format!("{b:02x}")).collect()),
    ];
    for (got, (shape, dtype, hex)) in seen.iter().zip(expect) {
        assert_eq!(got["version"], serde_json::json!([1, 0]));
        assert_eq!(got["shape"], serde_json::json!(shape));
        assert_eq!(got["dtype"], dtype);
        assert_eq!(got["fortran"], false);
        assert_eq!(got["hex"], hex);
        assert_eq!(got["mmap_equal"], true);
    }
}

#[test]
fn bad_rows_are_errors_and_unfinished_files_vanish() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("emb.npy");
    let mut w = NpyWriter::<f32>::create(&path, 4).unwrap();
    w.write_row(&[1.0, 2.0, 3.0, 4.0]).unwrap();
    let err = w.write_row(&[1.0]).unwrap_err();
    assert!(
        format!("{err:#}").contains("row 1 of") && format!("{err:#}").contains("has 1 values, expected 4"),
        "{err:#}"
    );
    assert!(dir.path().join("emb.npy.partial").exists());
    drop(w);
    assert_eq!(dir.path().read_dir().unwrap().count(), 0, "an abandoned writer leaves nothing");
    assert!(write_matrix(&path, 3, &[1.0f32; 4]).is_err());
}
