//! A synthetic `log.txt` shaped like the trainer's, for the plot tests and the example.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Options of a synthetic run.
pub struct Synth {
    pub steps: u64,
    pub every: u64,
    /// Multi-task: `loss_FR` and `loss_Gender` beside `loss`, and per-group learning rates.
    pub multi: bool,
    pub seed: u64,
}

/// Writes `dir/name/log.txt`: progress lines with noise, decays at 40% and 75% of the
/// run, a rollback (NaN loss, written as null) at 30%, validation every 10%.
pub fn write_run(dir: &Path, name: &str, o: &Synth) -> PathBuf {
    let run = dir.join(name);
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("log.txt"), log_text(o)).unwrap();
    run
}

pub fn log_text(o: &Synth) -> String {
    let mut rng = o.seed.wrapping_mul(6364136223846793005) | 1;
    let mut noise = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % 1000) as f64 / 1000.0 - 0.5
    };
    let (mut out, mut lr, t0) = (String::new(), 0.1, 1764400000.0);
    let (rollback_at, decays) = (
        o.steps * 3 / 10 / o.every * o.every,
        [o.steps * 4 / 10 / o.every * o.every, o.steps * 3 / 4 / o.every * o.every],
    );
    let mut step = o.every;
    let mut rolled_back = false;
    while step <= o.steps {
        let t = t0 + step as f64 * 0.1;
        if step == rollback_at + o.every && !rolled_back {
            rolled_back = true;
            let groups = if o.multi {
                format!(r#","loss_FR":null,"loss_Gender":null,"lr_backbone":{lr},"lr_gender":{}"#, lr * 0.5)
            } else {
                r#","loss_FR":null"#.to_string()
            };
            writeln!(out, r#"{{"step":{step},"loss":null,"lr":{lr},"images_per_s":700.0{groups},"time":{t}}}"#)
                .unwrap();
            writeln!(
                out,
                r#"{{"event":"rollback","step":{step},"to_step":{rollback_at},"loss":null,"lr":{lr},"time":{t}}}"#
            )
            .unwrap();
            step = rollback_at.saturating_sub(o.every * 2).max(o.every);
            continue;
        }
        let base = 2.0 + 20.0 * (-(step as f64) / (o.steps as f64 / 5.0)).exp() + (1.0 - lr * 10.0) * -0.5;
        let loss = base + noise() * 1.5;
        let ips = 700.0 + 60.0 * noise() + o.seed as f64 * 40.0;
        let mut line = format!(
            r#"{{"step":{step},"epoch":0,"loss":{loss},"lr":{lr},"images_per_s":{ips},"data_wait_frac":0.02,"world_size":2,"effective_batch":64,"steps_without_decrease":3,"skipped_records":0"#
        );
        if o.multi {
            write!(
                line,
                r#","loss_FR":{},"loss_Gender":{},"lr_backbone":{lr},"lr_gender":{}"#,
                loss * 0.8,
                loss * 0.2 + noise() * 0.2,
                lr * 0.5
            )
            .unwrap();
        } else {
            write!(line, r#","loss_FR":{loss}"#).unwrap();
        }
        writeln!(out, r#"{line},"time":{t}}}"#).unwrap();
        if decays.contains(&step) {
            lr /= 10.0;
            writeln!(out, r#"{{"event":"decay","step":{step},"lr":{lr},"time":{t}}}"#).unwrap();
        }
        if step.is_multiple_of((o.steps / 10).max(1)) {
            let acc = 0.5 + 0.45 * (1.0 - (-(step as f64) / (o.steps as f64 / 4.0)).exp()) + o.seed as f64 * 0.01;
            writeln!(out, r#"{{"event":"valid","step":{step},"valid_fr_verif_acc":{acc},"valid_fr_gap":{},"valid_lfw_verif_acc":{},"time":{t}}}"#, acc * 3.0, acc - 0.05).unwrap();
            writeln!(out, r#"{{"event":"checkpoint","step":{step},"path":"ckpt/step-{step}","time":{t}}}"#).unwrap();
        }
        step += o.every;
    }
    writeln!(
        out,
        r#"{{"event":"end","step":{},"reason":"MaxSteps","decays":{decays:?},"rollbacks":1,"time":{t0}}}"#,
        o.steps
    )
    .unwrap();
    out
}
