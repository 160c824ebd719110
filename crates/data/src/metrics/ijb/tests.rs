use super::roc::roc;
use super::*;

fn labelled(genuine: &[f64], impostor: &[f64]) -> (Vec<f64>, Vec<bool>) {
    let scores = genuine.iter().chain(impostor).copied().collect();
    let labels = genuine.iter().map(|_| true).chain(impostor.iter().map(|_| false)).collect();
    (scores, labels)
}

#[test]
fn ties_share_a_threshold_and_equal_distances_take_the_later_point() {
    // Thresholds 0.9, 0.8 (two genuine and one impostor tied), 0.7, 0.5 (tied), 0.1:
    // fpr 0, 0, .25, .5, .75, 1 and tpr 0, .25, .75, .75, 1, 1 with (0, 0) in front. Every
    // FAR is nearest to FPR 0 (for 0.1: .1 < .15), held by two points: the later (tpr .25)
    // wins, as the first in eval_ijbc.py's reversed order.
    let (s, l) = labelled(&[0.9, 0.8, 0.8, 0.5], &[0.8, 0.7, 0.5, 0.1]);
    let r = roc(&s, &l).unwrap();
    assert_eq!(r.tar, [0.25; 6]);
    assert_eq!(r.far, [0.0; 6]);
    // Mann-Whitney: 12.5 of 16 genuine-impostor orderings right, ties counted half.
    assert!((r.auc - 0.78125).abs() < 1e-15, "{}", r.auc);
    assert_eq!((r.genuine, r.impostor), (4, 4));
}

#[test]
fn collinear_points_are_dropped_before_the_nearest_is_read() {
    // 20 genuine/impostor ties: points (k, k) all on one line, so only (0,0), (1,1) and
    // (20,20) survive; FAR 0.1 then reads FPR .05 (not .1, which was dropped).
    let g: Vec<f64> = (0..20).map(|k| (20 - k) as f64 / 20.0).collect();
    let (s, l) = labelled(&g, &g);
    let r = roc(&s, &l).unwrap();
    assert_eq!((r.far[5], r.tar[5]), (0.05, 0.05));
    assert_eq!((r.far[4], r.tar[4]), (0.0, 0.0));
    assert!((r.auc - 0.5).abs() < 1e-15);
}

#[test]
fn negative_zero_is_the_same_threshold_as_zero() {
    let (a, la) = labelled(&[0.0, 1.0], &[-0.0, -1.0]);
    let (b, lb) = labelled(&[0.0, 1.0], &[0.0, -1.0]);
    assert_eq!(roc(&a, &la).unwrap(), roc(&b, &lb).unwrap());
}

#[test]
fn undefined_rocs_are_errors() {
    assert!(roc(&[0.5, 0.2], &[true, true]).unwrap_err().to_string().contains("no impostor"));
    assert!(roc(&[0.5, 0.2], &[false, false]).unwrap_err().to_string().contains("no genuine"));
    assert!(roc(&[0.5, f64::NAN], &[true, false]).unwrap_err().to_string().contains("pair 2 is NaN"));
}

#[test]
fn the_table_is_laid_out_as_eval_ijbc_prints_it() {
    let t = table("ijbc", &[0.5, 0.125, 0.96371, 1.0, 0.0, 0.98765]);
    let expected = "\
+---------+-------+-------+--------+--------+------+-------+
| Methods | 1e-06 | 1e-05 | 0.0001 | 0.001  | 0.01 |  0.1  |
+---------+-------+-------+--------+--------+------+-------+
|   ijbc  | 50.00 | 12.50 | 96.37  | 100.00 | 0.00 | 98.77 |
+---------+-------+-------+--------+--------+------+-------+
";
    assert_eq!(t, expected);
    assert_eq!(format!("{:.2}", 0.125), "0.12", "exact halves round to even, as Python's '%.2f'");
}
