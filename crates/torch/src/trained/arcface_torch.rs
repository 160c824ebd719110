//! arcface_torch's backbone files, both ways: `trainer import arcface-torch backbone.pth`
//! makes a run directory from a published or trained `torch.save(backbone.state_dict())`,
//! and `trainer export RUN --format arcface-torch` writes our backbone as one. Our
//! `backbone.*` tensors carry arcface_torch's names, so the mapping is the prefix alone;
//! the load is strict: every tensor present, no other, each with its shape and dtype.

use anyhow::{bail, ensure, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use trainer_data::interop::torch_save::{self, DType, StoredTensor};

use crate::config::{ModelConfig, TrainConfig};
use crate::model::{Arch, Head, HeadConfig, Net, Task};
use crate::train::checkpoint;
use crate::train::state::TrainState;

/// The variable prefix of the backbone: what follows it is arcface_torch's name.
const PREFIX: &str = "backbone.";

#[derive(clap::Subcommand, Debug)]
pub enum ImportCommand {
    /// An arcface_torch backbone (`torch.save(backbone.state_dict())`, e.g. its model zoo's
    /// `backbone.pth`) as a run directory for eval, embed, export and `train --init`.
    #[command(name = "arcface-torch")]
    ArcfaceTorch(ImportArgs),
}

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// The `.pth` file torch.save wrote (a state dict, or arcface_torch's training
    /// checkpoint, whose `state_dict_backbone` is taken).
    pub file: PathBuf,
    /// The backbone the file holds (arcface_torch's `r50` is `iresnet50`, `r100` `iresnet100`).
    #[arg(long, value_enum)]
    pub arch: Arch,
    /// The run directory to create (Model/<run-id>); it must not exist.
    #[arg(long)]
    pub out: PathBuf,
    /// Embedding size (default: read from the file).
    #[arg(long, value_parser = trainer_data::bounds::count::<usize>(1 << 16))]
    pub emb_dim: Option<usize>,
}

pub fn run_import(cmd: ImportCommand) -> Result<()> {
    let ImportCommand::ArcfaceTorch(args) = cmd;
    let summary = import(&args)?;
    trainer_data::term::print(&format!("{summary}\n"))
}

/// Reads, checks and writes; on any error nothing is left at `args.out`.
pub fn import(args: &ImportArgs) -> Result<String> {
    ensure!(!args.out.exists(), "{} already exists: give a new run directory", args.out.display());
    check_arch(args.arch)?;
    let tensors = torch_save::read(&args.file)?;
    let emb_dim = match args.emb_dim {
        Some(d) => d,
        None => embedding_size(args.arch, &tensors)
            .with_context(|| format!("{}: cannot tell the embedding size, give --emb-dim", args.file.display()))?,
    };
    let cfg = imported_config(args.arch, emb_dim);
    let vs = VarStore::new(Device::Cpu);
    Net::new(&vs.root(), cfg.model.arch, &cfg.heads, 0, Task::Fr)?;
    load_backbone(&vs, &tensors)
        .with_context(|| format!("{} as arcface_torch's {}", args.file.display(), arch_name(args.arch)))?;
    let partial = with_suffix(&args.out, ".partial");
    let written = write_run(&partial, &cfg, &vs).and_then(|()| {
        std::fs::rename(&partial, &args.out)
            .with_context(|| format!("renaming {} to {}", partial.display(), args.out.display()))
    });
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e);
    }
    Ok(format!(
        "imported {} ({} tensors, {}, embedding {emb_dim}) into {}: eval, embed, export and train --init take it",
        args.file.display(),
        tensors.len(),
        arch_name(args.arch),
        args.out.display()
    ))
}

/// Only the backbones built with arcface_torch's layout have its state dict.
fn check_arch(arch: Arch) -> Result<()> {
    ensure!(
        arch.is_arcface_torch(),
        "--arch {} has torchvision's layout, not arcface_torch's: give one of its backbones (iresnet18, iresnet34, iresnet50, iresnet100, iresnet200, mbf, mbf_large, vit_t, vit_s, vit_b)",
        arch_name(arch)
    );
    Ok(())
}

/// The embedding size a file's last BatchNorm (`features`) gives.
fn embedding_size(arch: Arch, tensors: &[StoredTensor]) -> Result<usize> {
    let name = match (arch.iresnet_depth(), arch.mbf_shape(), arch.vit_shape()) {
        (Some(_), _, _) => "features.running_mean",
        (_, Some(_), _) => "features.layers.3.running_mean",
        (_, _, Some(_)) => "feature.3.running_mean",
        _ => bail!("no embedding tensor known for {}", arch_name(arch)),
    };
    let t = tensors.iter().find(|t| t.name == name).with_context(|| format!("the file has no {name}"))?;
    ensure!(t.shape.len() == 1, "{name} has shape {:?}, expected one dimension", t.shape);
    Ok(t.shape[0])
}

/// An FR run of `arch` with no identities yet: the settings `train --init` and eval read.
fn imported_config(arch: Arch, emb_dim: usize) -> TrainConfig {
    let heads = HeadConfig { emb_dim, fr_dropout: 0.0, ..HeadConfig::default() };
    let model = ModelConfig {
        task: Task::Fr,
        arch,
        size: crate::model::iresnet::INPUT_SIDE as usize,
        ..ModelConfig::default()
    };
    TrainConfig { model, heads, ..TrainConfig::default() }
}

fn write_run(dir: &Path, cfg: &TrainConfig, vs: &VarStore) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    checkpoint::write_synced(&dir.join("config.json"), &serde_json::to_vec_pretty(cfg)?)?;
    let state = TrainState::new(cfg, &[Head::Fr], 1, 0);
    std::fs::create_dir_all(dir.join("checkpoints"))?;
    checkpoint::save(&checkpoint::step_dir(dir, 0), &state, |tmp| {
        let path = tmp.join(checkpoint::MODEL_FILE);
        vs.save(&path).with_context(|| format!("writing {}", path.display()))
    })
}

fn kind_of(dtype: DType) -> Kind {
    match dtype {
        DType::F32 => Kind::Float,
        DType::F64 => Kind::Double,
        DType::F16 => Kind::Half,
        DType::BF16 => Kind::BFloat16,
        DType::I64 => Kind::Int64,
        DType::I32 => Kind::Int,
        DType::I16 => Kind::Int16,
        DType::I8 => Kind::Int8,
        DType::U8 => Kind::Uint8,
        DType::Bool => Kind::Bool,
    }
}

fn dtype_of(kind: Kind) -> Result<DType> {
    Ok(match kind {
        Kind::Float => DType::F32,
        Kind::Double => DType::F64,
        Kind::Half => DType::F16,
        Kind::BFloat16 => DType::BF16,
        Kind::Int64 => DType::I64,
        Kind::Int => DType::I32,
        other => bail!("tensors of kind {other:?} have no torch.save storage here"),
    })
}

/// The backbone's variables by arcface_torch name.
fn backbone_vars(vs: &VarStore) -> BTreeMap<String, Tensor> {
    vs.variables().into_iter().filter_map(|(k, v)| Some((k.strip_prefix(PREFIX)?.to_string(), v))).collect()
}

/// Copies `tensors` into the backbone after checking all of them: names both ways, shapes,
/// dtypes. The first problem is named; nothing is copied unless all pass.
pub fn load_backbone(vs: &VarStore, tensors: &[StoredTensor]) -> Result<()> {
    let vars = backbone_vars(vs);
    let mut given: HashMap<&str, &StoredTensor> = HashMap::new();
    for t in tensors {
        let Some(v) = vars.get(&t.name) else {
            bail!("tensor {:?} is not in this backbone (another architecture, or not a backbone's state dict?)", t.name)
        };
        let shape: Vec<i64> = t.shape.iter().map(|&s| s as i64).collect();
        ensure!(shape == v.size(), "tensor {:?} has shape {:?}, this backbone's is {:?}", t.name, t.shape, v.size());
        ensure!(
            kind_of(t.dtype) == v.kind(),
            "tensor {:?} is {:?}, this backbone's is {:?} (convert the file's tensors first)",
            t.name,
            t.dtype,
            v.kind()
        );
        given.insert(&t.name, t);
    }
    let missing: Vec<&String> = vars.keys().filter(|k| !given.contains_key(k.as_str())).collect();
    if let Some(first) = missing.first() {
        bail!("tensor {first:?} is missing from the file ({} of this backbone's {} are)", missing.len(), vars.len());
    }
    tch::no_grad(|| {
        for (name, v) in &vars {
            let t = given[name.as_str()];
            let shape: Vec<i64> = t.shape.iter().map(|&s| s as i64).collect();
            let src = Tensor::from_data_size(&t.data, &shape, v.kind());
            v.shallow_clone().copy_(&src);
        }
    });
    Ok(())
}

/// The backbone as arcface_torch's state dict, its tensors in name order.
pub fn backbone_state(vs: &VarStore) -> Result<Vec<StoredTensor>> {
    backbone_vars(vs)
        .into_iter()
        .map(|(name, v)| {
            let dtype = dtype_of(v.kind()).with_context(|| format!("tensor {name}"))?;
            let flat = v.detach().to_device(Device::Cpu).contiguous().reshape([-1]);
            let data = Vec::<u8>::try_from(flat.view_dtype(Kind::Uint8)).with_context(|| format!("tensor {name}"))?;
            let shape = v.size().iter().map(|&s| s as usize).collect();
            Ok(StoredTensor { name, dtype, shape, data })
        })
        .collect()
}

/// `trainer export RUN --format arcface-torch`: the backbone of `model` as `backbone.pth`.
pub fn export(model: &crate::trained::Loaded, out: &Path) -> Result<String> {
    check_arch(model.cfg.model.arch)?;
    let tensors = backbone_state(model.vars())?;
    torch_save::write(out, &tensors)?;
    Ok(format!(
        "exported {} (step {}) to {}: {} tensors, arcface_torch's {} state dict (torch.load, then load_state_dict)",
        model.checkpoint.display(),
        model.step,
        out.display(),
        tensors.len(),
        arch_name(model.cfg.model.arch)
    ))
}

/// The `--arch` value as typed.
fn arch_name(arch: Arch) -> String {
    use clap::ValueEnum;
    arch.to_possible_value().map_or_else(|| format!("{arch:?}"), |v| v.get_name().to_string())
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}
