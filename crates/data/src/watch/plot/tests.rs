use super::draw::short_number;
use super::figure::{self, clip, decimate, ema, smoothing_weight, MarkKind};
use super::runlog::RunLog;

const LOG: &str = r#"{"step":20,"epoch":0,"loss":21.3,"lr":0.1,"images_per_s":712.5,"loss_FR":21.3,"loss_scale":65536,"time":1764400000.1}
{"step":40,"epoch":0,"loss":null,"lr":0.1,"images_per_s":700,"loss_FR":null,"new_key":[1,2],"time":1764400001.1}
{"event":"rollback","step":40,"to_step":20,"loss":null,"lr":0.1,"time":1764400001.2}

{"step":40,"epoch":0,"loss":19.5,"lr":0.1,"images_per_s":"fast","loss_FR":19.5,"time":1764400002.1}
{"event":"decay","step":40,"lr":0.01,"time":1764400002.2}
{"event":"valid","step":40,"valid_verif_acc":0.94,"valid_gap":2.58,"valid_note":"text","other":1,"time":1764400002.3}
{"event":"best","step":40,"metric":0.94,"time":1764400002.4}
{"event":"future","step":41,"loss":99,"time":1764400002.5}
{"step":60,"epoch":1,"loss":18.0,"lr":0.01,"lr_head":0.02,"images_per_s":720,"loss_FR":17.0,"time":1764400003.1}
"#;

#[test]
fn a_log_becomes_curves_and_marks() {
    let log = RunLog::parse(LOG).unwrap();
    let loss = &log.losses["loss"];
    // The null loss is skipped; step 40 again opens a second segment.
    assert_eq!(loss.segments, vec![vec![(20.0, 21.3)], vec![(40.0, 19.5), (60.0, 18.0)]]);
    assert_eq!(log.losses.keys().collect::<Vec<_>>(), ["loss", "loss_FR"], "loss_scale is no task loss");
    assert_eq!(log.lrs["lr"].points().count(), 4);
    assert_eq!(log.lrs["lr_head"].segments, vec![vec![(60.0, 0.02)]]);
    assert_eq!(
        log.images_per_s.points().map(|p| p.1).collect::<Vec<_>>(),
        [712.5, 700.0, 720.0],
        "a string is not a number"
    );
    assert_eq!(log.decays, vec![(40.0, Some(0.01))]);
    assert_eq!((log.rollbacks[0].step, log.rollbacks[0].to_step, log.rollbacks[0].lr), (40.0, Some(20.0), Some(0.1)));
    assert_eq!(log.valid.keys().collect::<Vec<_>>(), ["valid_gap", "valid_verif_acc"]);
}

/// A rise rollback names its statistic and threshold beside its mark; an accepted level
/// gets its own mark on the learning-rate panel.
#[test]
fn rise_rollbacks_say_what_rose_and_accepted_levels_are_marked() {
    let log = RunLog::parse(concat!(
        r#"{"step":100,"loss":2.0,"lr":0.1}"#,
        "\n",
        r#"{"event":"rollback","step":200,"to_step":100,"reason":"rising loss","lr":0.1,"#,
        r#""rise_test":{"rise":1.2345,"rise_threshold":0.5,"p_increasing":0.999}}"#,
        "\n",
        r#"{"event":"rollback","step":150,"to_step":100,"reason":"NaN","lr":0.1}"#,
        "\n",
        r#"{"event":"rise_accepted","step":300,"lr":0.1}"#,
        "\n",
    ))
    .unwrap();
    let notes: Vec<&str> = log.rollbacks.iter().map(|r| r.note.as_str()).collect();
    assert_eq!(notes, ["rise 1.234 > 0.500", "NaN"]);
    assert_eq!(log.accepted, vec![(300.0, Some(0.1))]);
    let fig = figure::build(std::slice::from_ref(&log), 1000);
    let marks: Vec<_> = fig.panels.iter().flat_map(|p| &p.marks).collect();
    assert!(marks.iter().any(|m| m.kind == MarkKind::Accepted && m.x == 300.0), "no accepted mark");
    assert!(marks.iter().any(|m| m.note.as_deref() == Some("rise 1.234 > 0.500")));
}

#[test]
fn broken_logs_are_reported_by_line() {
    let err = |text: &str| format!("{:#}", RunLog::parse(text).unwrap_err());
    assert!(err("").contains("empty log"), "{}", err(""));
    assert!(err("\n  \n").contains("empty log"));
    let two = "{\"step\":1,\"loss\":2}\n{\"step\":2,\"loss\":\n{\"step\":3}\n";
    assert!(err(two).contains("line 2: malformed JSON"), "{}", err(two));
    assert!(err("{\"step\":1}\n[1,2]\n").contains("line 2: not a JSON object"));
    assert!(err("{\"step\":1}\n{\"step\":2}garbage\n").contains("line 2"));
    assert!(err("{\"step\":1,").contains("line 1: malformed JSON"), "a lone unfinished line is no log");
}

#[test]
fn an_unfinished_last_line_is_one_being_written() {
    let log = RunLog::parse("{\"step\":1,\"loss\":2}\n{\"step\":2,\"lo").unwrap();
    assert_eq!(log.losses["loss"].points().count(), 1);
    assert!(RunLog::parse("{\"step\":1,\"loss\":2}\n{\"step\":2,\"lo\n").is_err(), "a finished line must parse");
}

#[test]
fn a_duplicate_task_loss_is_drawn_once_and_marks_are_kept() {
    let log = RunLog { name: "r".into(), ..RunLog::parse(LOG).unwrap() };
    let fig = figure::build(&[log], 1000);
    let titles: Vec<&str> = fig.panels.iter().map(|p| p.title.as_str()).collect();
    assert_eq!(
        titles,
        ["loss (light: raw, dark: smoothed)", "learning rate (log scale)", "images/s", "valid_gap", "valid_verif_acc"]
    );
    let labels: Vec<_> = fig.panels[0].lines.iter().filter_map(|l| l.label.clone()).collect();
    assert_eq!(labels, ["r", "r loss_FR"], "loss_FR differs from loss at step 60");
    let kinds: Vec<_> = fig.panels[1].marks.iter().map(|m| (m.kind, m.x, m.y)).collect();
    assert_eq!(kinds, [(MarkKind::Decay, 40.0, Some(0.01)), (MarkKind::Rollback, 40.0, Some(0.1))]);
    assert_eq!(fig.x_range, (0.0, 60.0));
}

#[test]
fn validation_sets_of_one_metric_share_a_panel() {
    // A packed FR set (plain keys), a second packed set, two pair sets, and Gender.
    let line = r#"{"event":"valid","step":10,"valid_fr_verif_acc":0.9,"valid_fr_gap":2.5,"valid_fr_verif_acc_faces-valid":0.85,"valid_fr_gap_faces-valid":2.4,"valid_lfw_verif_acc":0.8,"valid_lfw_verif_std":0.02,"valid_lfw_gap":2.1,"valid_cfp_fp_verif_acc":0.7,"valid_cfp_fp_verif_std":0.03,"valid_cfp_fp_gap":1.9,"valid_gender_acc":0.7}"#;
    let fig = figure::build(&[RunLog::parse(line).unwrap()], 1000);
    let panels: Vec<_> = fig.panels[3..]
        .iter()
        .map(|p| (p.title.as_str(), p.lines.iter().map(|l| l.label.clone().unwrap_or_default()).collect::<Vec<_>>()))
        .collect();
    let sets = ["first set", "cfp_fp", "faces-valid", "lfw"].map(String::from).to_vec();
    assert_eq!(
        panels,
        [
            ("valid_fr_gap", sets.clone()),
            ("valid_fr_verif_acc", sets.clone()),
            ("valid_gender_acc", vec!["first set".to_string()])
        ],
        "no _verif_std panel, every set in its metric's panel"
    );
    let colours: std::collections::HashSet<_> = fig.panels[4].lines.iter().map(|l| l.color).collect();
    assert_eq!(colours.len(), 4, "one run: a colour per set");
    // Two runs: the run's colour, a dash per set, the dashes named.
    let two = figure::build(&[RunLog::parse(line).unwrap(), RunLog::parse(line).unwrap()], 1000);
    let acc = &two.panels[4];
    assert_eq!(acc.lines.len(), 8);
    assert_eq!(acc.styles.iter().map(|s| s.0.clone()).collect::<Vec<_>>(), sets);
    for (key, want) in [
        ("valid_fr_verif_acc_faces-valid", ("valid_fr_verif_acc", "faces-valid")),
        ("valid_cfp_fp_verif_acc", ("valid_fr_verif_acc", "cfp_fp")),
        ("valid_age_mae", ("valid_age_mae", "")),
        ("valid_verif_acc_lfw", ("valid_verif_acc", "lfw")),
        ("valid_acc_set_verif_acc", ("valid_fr_verif_acc", "acc_set")),
        ("valid_ijbc_tar", ("valid_ijbc_tar", "")),
    ] {
        let (m, s) = figure::metric_and_set(key);
        assert_eq!((m.as_str(), s.as_str()), want, "{key}");
    }
}

#[test]
fn a_run_without_validation_gets_an_empty_panel() {
    let fig = figure::build(&[RunLog::parse("{\"step\":5,\"loss\":1}\n").unwrap()], 1000);
    let last = fig.panels.last().unwrap();
    assert_eq!((last.title.as_str(), last.y_range()), ("validation", None));
    assert_eq!(fig.panels[1].y_range(), None, "no lr logged");
}

#[test]
fn y_ranges_pad_and_ignore_raw_spikes() {
    let text: String = (0..100)
        .map(|i| format!("{{\"step\":{i},\"loss\":{}}}\n", if i == 50 { 1e6 } else { 1.0 + f64::from(i % 3) }))
        .collect();
    let log = RunLog::parse(&text).unwrap();
    let fig = figure::build(&[log], 1000);
    let (lo, hi) = fig.panels[0].y_range().unwrap();
    assert!(lo < 1.0 && lo > 0.5 && hi > 3.0 && hi < 4.0, "{lo} {hi}");
    let falling: String = (0..100)
        .map(|i| format!("{{\"step\":{i},\"loss\":{}}}\n", 2.0 + 38.0 * (-f64::from(i) / 10.0).exp()))
        .collect();
    let (_, hi) = figure::build(&[RunLog::parse(&falling).unwrap()], 1000).panels[0].y_range().unwrap();
    assert!(hi > 40.0, "the first, highest point stays in view: {hi}");
}

#[test]
fn smoothing_starts_at_the_first_point_and_follows() {
    assert_eq!(smoothing_weight(10), 0.0);
    assert!((smoothing_weight(2000) - 0.99).abs() < 1e-12);
    assert!((smoothing_weight(100_000) - (1.0 - 1.0 / 400.0)).abs() < 1e-12);
    let s = ema(&[(0.0, 10.0), (1.0, 10.0), (2.0, 0.0)], 0.5);
    assert_eq!(s[0], (0.0, 10.0));
    assert_eq!(s[1], (1.0, 10.0));
    assert!(s[2].1 > 0.0 && s[2].1 < 10.0);
}

#[test]
fn clipping_ends_pieces_on_the_border() {
    let pts = [(0.0, 0.5), (1.0, 2.0), (2.0, 0.5), (3.0, -1.0), (4.0, 3.0), (5.0, 0.5)];
    let pieces = clip(&pts, 0.0, 1.0);
    let expected = [
        vec![(0.0, 0.5), (1.0 / 3.0, 1.0)],
        vec![(5.0 / 3.0, 1.0), (2.0, 0.5), (7.0 / 3.0, 0.0)],
        vec![(3.25, 0.0), (3.5, 1.0)], // a jump across the whole range
        vec![(4.8, 1.0), (5.0, 0.5)],
    ];
    assert_eq!(pieces.len(), expected.len(), "{pieces:?}");
    for (got, want) in pieces.iter().zip(&expected) {
        assert_eq!(got.len(), want.len(), "{pieces:?}");
        assert!(got.iter().zip(want).all(|(a, b)| (a.0 - b.0).abs() < 1e-12 && a.1 == b.1), "{pieces:?}");
    }
    assert_eq!(clip(&[(0.0, 5.0), (1.0, 6.0)], 0.0, 1.0), Vec::<Vec<(f64, f64)>>::new());
}

#[test]
fn decimation_keeps_the_envelope_in_order() {
    let pts: Vec<(f64, f64)> = (0..10_000).map(|i| (f64::from(i), f64::from(i % 7))).collect();
    let d = decimate(&pts, 200);
    assert!(d.len() <= 200 && d.len() > 100, "{}", d.len());
    assert!(d.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(d.iter().map(|p| p.1).fold(f64::NAN, f64::max), 6.0);
    assert_eq!(d.iter().map(|p| p.1).fold(f64::NAN, f64::min), 0.0);
    assert_eq!(decimate(&pts[..50], 200).len(), 50);
}

#[test]
fn axis_numbers_stay_short() {
    let cases = [
        (0.0, "0"),
        (2.5, "2.5"),
        (20.0, "20"),
        (12_000.0, "12k"),
        (1_250_000.0, "1.25M"),
        (1e300, "1.0e300"),
        (-3.2e12, "-3.2e12"),
        (0.94, "0.94"),
        (0.000_25, "2.5e-4"),
    ];
    for (v, s) in cases {
        assert_eq!(short_number(v), s);
    }
}
