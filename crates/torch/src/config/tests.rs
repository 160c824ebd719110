use super::*;
use crate::amp::AmpMode;
use crate::model::Arch;
use clap::{CommandFactory, FromArgMatches, Parser};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    cfg: TrainConfig,
}

fn parse(args: &[&str]) -> (TrainConfig, ArgMatches) {
    let m = Cli::command().try_get_matches_from(std::iter::once("train").chain(args.iter().copied())).unwrap();
    (Cli::from_arg_matches(&m).unwrap().cfg, m)
}

fn resolve(recipe: Option<&Path>, args: &[&str]) -> Result<TrainConfig> {
    let (typed, m) = parse(args);
    TrainConfig::resolve(TrainConfig::default(), recipe, &typed, &m)
}

fn recipe(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn flags_override_recipe_which_overrides_defaults() {
    let (_dir, path) = recipe(
        "[model]\ntask = 'Gender'\nsize = 64\n[optim]\nlr = 0.5\n[data]\ntrain_sets = ['a']\n\
         [heads]\nemb_dim = 128\ns = 32.0\n",
    );
    let cfg = resolve(Some(&path), &["--lr", "0.01", "--arc-s", "16"]).unwrap();
    assert_eq!(cfg.model.task, Task::Gender, "a default on the command line does not override the recipe");
    assert_eq!((cfg.model.size, cfg.optim.lr, cfg.data.batch_size), (64, 0.01, 50));
    assert_eq!((cfg.heads.emb_dim, cfg.heads.s), (128, 16.0));
}

/// Recipes written before the sections, and runs' `config.json` files, read as before.
#[test]
fn flat_recipes_and_flat_stored_configs_still_read() {
    let (_dir, path) =
        recipe("task = 'Gender'\nsize = 64\nlr = 0.5\nschedule = 'poly'\nmax_steps = 9\ntrain_sets = ['a']\n[heads]\nemb_dim = 128\n");
    let cfg = resolve(Some(&path), &["--lr", "0.01"]).unwrap();
    assert_eq!((cfg.model.task, cfg.model.size, cfg.optim.lr), (Task::Gender, 64, 0.01));
    assert_eq!((cfg.schedule.schedule, cfg.schedule.max_steps, cfg.heads.emb_dim), (Schedule::Poly, Some(9), 128));
    let stored = serde_json::json!({"task": "Age", "workers": 3, "device": "cpu", "heads": {"age_classes": 5}});
    let cfg = TrainConfig::from_json(stored).unwrap();
    assert_eq!((cfg.model.task, cfg.data.workers, cfg.heads.age_classes), (Task::Age, 3, 5));
    assert_eq!(cfg.run.device.device, "cpu");
}

#[test]
fn unknown_keys_in_a_section_are_named() {
    let (_dir, path) = recipe("[data]\ntrain_sets = ['a']\n[optim]\nlearning_rate = 0.1\n");
    let msg = format!("{:#}", resolve(Some(&path), &[]).unwrap_err());
    assert!(msg.contains("r.toml") && msg.contains("learning_rate"), "{msg}");
    let (_dir, path) = recipe("[data]\ntrain_sets = ['a']\n[optimizer]\nlr = 0.1\n");
    let msg = format!("{:#}", resolve(Some(&path), &[]).unwrap_err());
    assert!(msg.contains("optimizer"), "{msg}");
}

#[test]
fn negated_flags_and_parsed_values() {
    let cfg =
        resolve(None, &["Multi", "--train-sets", "a", "--no-shuffle", "--pk", "4x2", "--loss-weights", "1,0.5,0.25"])
            .unwrap();
    assert!(!cfg.data.shuffle && cfg.data.augment && cfg.schedule.rollback);
    assert_eq!((cfg.model.task, cfg.data.pk, cfg.optim.loss_weights), (Task::Multi, [4, 2], [1.0, 0.5, 0.25]));
}

/// What makes "typed on the command line" work: a flag's id is its config key, in
/// exactly one section.
#[test]
fn every_flag_is_a_config_key_in_one_section() {
    let sections = serde_json::to_value(TrainConfig::default()).unwrap();
    let sections = sections.as_object().unwrap();
    for arg in Cli::command().get_arguments() {
        let id = arg.get_id().as_str();
        let homes = sections.values().filter(|t| t.get(id).is_some()).count();
        assert_eq!(homes, 1, "flag {id} is a key of {homes} sections");
    }
}

#[test]
fn unknown_recipe_key_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("bad.toml");
    std::fs::write(&recipe, "train_sets = ['a']\nlearning_rate = 0.1\n").unwrap();
    let msg = format!("{:#}", resolve(Some(&recipe), &[]).unwrap_err());
    assert!(msg.contains("bad.toml") && msg.contains("learning_rate"), "{msg}");
}

#[test]
fn iresnet_needs_112_and_margins_parse() {
    let msg =
        format!("{:#}", resolve(None, &["--train-sets", "a", "--arch", "iresnet50", "--size", "224"]).unwrap_err());
    assert!(msg.contains("--size 112"), "{msg}");
    let cfg =
        resolve(None, &["--train-sets", "a", "--arch", "iresnet100", "--margin", "cosface", "--m3", "0.4"]).unwrap();
    assert_eq!(
        (cfg.model.arch, cfg.heads.margin().unwrap()),
        (Arch::Iresnet100, crate::model::Margin::cosface(0.4).into())
    );
    assert!(resolve(None, &["--train-sets", "a", "--margin", "arcface", "--m1", "1.2"]).is_err());
    assert!(format!("{:#}", resolve(None, &["--train-sets", "a", "--schedule", "poly"]).unwrap_err())
        .contains("--max-steps"));
    assert!(Cli::command().try_get_matches_from(["train", "--train-sets", "a", "--clip-grad-norm", "0"]).is_err());
}

/// training/wf42m-vit_t.toml: arcface_torch's wf42m_pfc03_40epoch_8gpu_vit_t settings.
#[test]
fn the_wf42m_vit_t_recipe_resolves() {
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../training/wf42m-vit_t.toml");
    let cfg = resolve(Some(&recipe), &["--train-sets", "a"]).unwrap();
    let (m, o, s) = (&cfg.model, &cfg.optim, &cfg.schedule);
    assert_eq!(
        (m.arch, m.drop_path, m.mask_ratio, m.partial_fc, m.sample_rate),
        (Arch::VitT, Some(0.05), Some(0.0), true, 0.3)
    );
    assert_eq!(
        (o.optimizer, o.lr, o.wd_backbone, o.wd_fr, o.amp),
        (crate::optim::OptimizerChoice::Adamw, 1e-3, 0.1, 0.1, AmpMode::Fp16)
    );
    assert_eq!((s.schedule, s.warmup_steps, s.max_steps), (Schedule::Poly, 41_476, Some(414_760)));
    assert_eq!((cfg.data.batch_size, cfg.heads.margin().unwrap()), (512, crate::model::Margin::cosface(0.4).into()));
}

#[test]
fn the_arcface_torch_recipe_resolves() {
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../training/fr-iresnet50-pfc.toml");
    assert!(format!("{:#}", resolve(Some(&recipe), &["--train-sets", "a"]).unwrap_err()).contains("--max-steps"));
    let cfg = resolve(Some(&recipe), &["--train-sets", "a", "--max-steps", "1000", "--sample-rate", "0.1"]).unwrap();
    assert_eq!(
        (cfg.model.arch, cfg.schedule.schedule, cfg.model.partial_fc, cfg.model.sample_rate, cfg.optim.clip_grad_norm),
        (Arch::Iresnet50, Schedule::Poly, true, 0.1, Some(5.0))
    );
    assert_eq!(
        (cfg.data.batch_size, cfg.heads.margin().unwrap(), cfg.heads.fr_dropout),
        (128, crate::model::Margin::arcface(0.5).into(), 0.0)
    );
}

/// arcface_torch's ms1mv3_mbf and ms1mv3_r100 configs, in this project's sections: every
/// value they set, and their 40 and 25 epochs on 8 ranks as steps.
#[test]
fn the_ms1mv3_recipes_resolve_to_arcface_torch_settings() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../training");
    for (file, arch, lr, wd, steps) in
        [("ms1mv3-mbf.toml", Arch::Mbf, 0.1, 1e-4, 202_320), ("ms1mv3-r100.toml", Arch::Iresnet100, 0.2, 5e-4, 126_450)]
    {
        let cfg = resolve(Some(&dir.join(file)), &["--train-sets", "a"]).unwrap();
        assert_eq!(
            (cfg.model.arch, cfg.model.size, cfg.model.partial_fc, cfg.model.sample_rate),
            (arch, 112, true, 1.0)
        );
        assert_eq!(
            (cfg.heads.emb_dim, cfg.heads.s, cfg.heads.margin().unwrap()),
            (512, 64.0, crate::model::Margin::arcface(0.5).into())
        );
        let o = &cfg.optim;
        assert_eq!(
            (o.lr, o.momentum, o.wd_backbone, o.wd_fr, o.clip_grad_norm, o.amp),
            (lr, 0.9, wd, wd, Some(5.0), AmpMode::Fp16)
        );
        assert_eq!(
            (cfg.data.batch_size, cfg.schedule.schedule, cfg.schedule.warmup_steps, cfg.schedule.max_steps),
            (128, Schedule::Poly, 0, Some(steps))
        );
    }
}

#[test]
fn missing_train_sets_is_explained() {
    let err = resolve(None, &[]).unwrap_err();
    assert!(
        format!("{err:#}").contains("--train-sets") && err.downcast_ref::<trainer_data::term::BadSettings>().is_some(),
        "{err:#}"
    );
}

/// `--amp` alone is fp16 (as before it took a value); `--amp bf16` and a recipe's
/// `amp = 'bf16'` name the dtype; the flag still wins over the recipe.
#[test]
fn amp_takes_an_optional_dtype() {
    let amp = |args: &[&str]| resolve(None, &[&["--train-sets", "a"], args].concat()).unwrap().optim.amp;
    assert_eq!(amp(&[]), AmpMode::Off);
    assert_eq!(amp(&["--amp"]), AmpMode::Fp16);
    assert_eq!(amp(&["--amp", "bf16", "--lr", "0.1"]), AmpMode::Bf16);
    assert_eq!(amp(&["--amp", "--lr", "0.1"]), AmpMode::Fp16);
    let (_dir, path) = recipe("[optim]\namp = 'bf16'\n");
    assert_eq!(resolve(Some(&path), &["--train-sets", "a"]).unwrap().optim.amp, AmpMode::Bf16);
    assert_eq!(resolve(Some(&path), &["--train-sets", "a", "--amp", "off"]).unwrap().optim.amp, AmpMode::Off);
}
