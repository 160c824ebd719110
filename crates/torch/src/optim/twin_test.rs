//! AdamW against `torch.optim.AdamW` itself (`benches/adamw_twin.py`): two groups with their
//! own rates and weight decays (one without), a rate that changes every step (warm-up, a
//! plateau shrink), a group skipped for a step, and the state saved and loaded midway. The
//! weights must agree after every step, and the moments and step counts at the end.
//!
//! The python is `$TRAINER_TORCH_PYTHON`, else `$TORCH_VENV/bin/python` (launch/setup.sh's
//! venv). Without it the test fails, unless `TRAINER_ALLOW_SKIP=1` is set outside CI.

use super::{Optimizer, ParamGroup, Rule};
use crate::optim::AdamW;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use tch::{Device, Kind, Tensor};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../benches/adamw_twin.py");
const STEPS: usize = 6;

fn python() -> Option<PathBuf> {
    let py = crate::test_tools::torch_python();
    let works = Command::new(&py).args(["-c", "import torch"]).output().is_ok_and(|o| o.status.success());
    if works {
        return Some(py);
    }
    crate::test_tools::missing(&format!("the AdamW twin: {} cannot import torch", py.display()));
    None
}

/// Parameters by name, their group, and their values.
fn params() -> Vec<(&'static str, usize, Tensor)> {
    tch::manual_seed(7);
    let p = |shape: &[i64]| Tensor::randn(shape, (Kind::Float, Device::Cpu)).set_requires_grad(true);
    vec![("a_bias", 0, p(&[4])), ("a_weight", 0, p(&[3, 4])), ("b_weight", 1, p(&[5]))]
}

/// Gives `p` exactly `grad` as its gradient (loss = Σ grad·p).
fn set_grad(p: &Tensor, grad: &Tensor) {
    (p * grad).sum(Kind::Float).backward();
}

fn optimiser(named: &[(&str, usize, Tensor)], rule: Rule) -> Optimizer {
    let group = |g: usize, name: &str, lr: f64, wd: f64| {
        let params = named.iter().filter(|(_, pg, _)| *pg == g).map(|(_, _, t)| t.shallow_clone()).collect();
        ParamGroup::new(name, params, lr, wd)
    };
    Optimizer::new(vec![group(0, "a", 1e-2, 0.05), group(1, "b", 3e-3, 0.0)], rule)
}

#[test]
fn adamw_matches_torch_optim_adamw_step_by_step() {
    let Some(py) = python() else { return };
    let rule = Rule::AdamW(AdamW { betas: [0.8, 0.95], eps: 1e-6 });
    let named = params();
    let mut io: Vec<(String, Tensor)> =
        named.iter().map(|(n, _, t)| (format!("init.{n}"), t.detach().copy())).collect();
    io.extend(named.iter().map(|(n, g, _)| (format!("group.{n}"), Tensor::from(*g as i64))));
    let mut opt = optimiser(&named, rule);
    let (mut lrs, mut ours) = (Vec::new(), BTreeMap::new());
    for step in 0..STEPS {
        opt.set_lr_factor([0.25, 0.5, 1.0, 1.0, 1.0, 1.0][step]);
        if step == 3 {
            opt.scale_lr(&["a"], 0.1);
            let saved: Vec<(String, Tensor)> = opt.state().into_iter().map(|(n, t)| (n, t.copy())).collect();
            opt = optimiser(&named, rule);
            opt.load_state(&saved).unwrap();
        }
        lrs.extend([opt.lr("a").unwrap(), opt.lr("b").unwrap()]);
        opt.zero_grad();
        for (n, g, p) in &named {
            // Gradients of different scales, one element exactly 0; group b sits out step 2.
            let grad = Tensor::randn(p.size(), (Kind::Float, Device::Cpu)) * (1.0 + step as f64);
            let _ = grad.flatten(0, -1).get(0).fill_(0.0);
            if *g == 1 && step == 2 {
                continue;
            }
            set_grad(p, &grad);
            io.push((format!("grad.{step}.{n}"), grad));
        }
        if step == 2 {
            opt.step_groups(&["a"]);
        } else {
            opt.step();
        }
        ours.extend(named.iter().map(|(n, _, p)| (format!("param.{step}.{n}"), p.detach().copy())));
    }
    io.push(("lr".into(), Tensor::from_slice(&lrs).reshape([STEPS as i64, 2])));
    io.push(("wd".into(), Tensor::from_slice(&[0.05, 0.0])));
    io.push(("betas".into(), Tensor::from_slice(&[0.8, 0.95])));
    io.push(("eps".into(), Tensor::from_slice(&[1e-6])));
    for (name, t) in opt.state() {
        let Some((param, part)) = name.split_once('.').and_then(|(g, rest)| rest.split_once('.').map(|r| (g, r)))
        else {
            continue;
        };
        let index: usize = part.0.parse().unwrap();
        let pname = named.iter().filter(|(_, g, _)| *g == usize::from(param == "b")).nth(index).unwrap().0;
        ours.insert(format!("{}.{pname}", part.1), t);
    }

    let dir = tempfile::tempdir().unwrap();
    let (io_path, out_path) = (dir.path().join("io.safetensors"), dir.path().join("out.safetensors"));
    Tensor::write_safetensors(&io, &io_path).unwrap();
    let out = Command::new(&py).arg(SCRIPT).arg("--io").arg(&io_path).arg("--out").arg(&out_path).output().unwrap();
    assert!(out.status.success(), "adamw_twin.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let theirs: BTreeMap<String, Tensor> = Tensor::read_safetensors(&out_path).unwrap().into_iter().collect();

    assert_eq!(ours.keys().collect::<Vec<_>>(), theirs.keys().collect::<Vec<_>>());
    for (name, t) in &theirs {
        let diff = (&ours[name].to_kind(Kind::Double) - t.to_kind(Kind::Double)).abs().max().double_value(&[]);
        let scale = t.abs().max().double_value(&[]).max(1.0);
        assert!(diff <= 1e-6 * scale, "{name}: ours and torch.optim.AdamW differ by {diff:.3e}");
    }
}
