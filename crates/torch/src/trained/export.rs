//! `trainer export RUN --out model.pt`: the backbone and the FR embedding layer traced to
//! TorchScript, for `torch.jit.load` in Python and `torch::jit::load` in C++ (and, through
//! `launch/export_onnx.py`, ONNX). Input: NCHW float32 RGB, (x − 127.5)/127.5, any batch
//! size; output: the embedding `[N, emb_dim]` before L2 normalisation. The weights are
//! stored in the file as constants of the traced graph; the input size and embedding size
//! in its extra file `trainer.json`.
//!
//! `--format arcface-torch` writes the backbone as arcface_torch's `torch.save` state dict
//! instead (`arcface_torch.rs`).

use anyhow::{ensure, Context, Result};
use std::path::PathBuf;
use tch::{CModule, Device, Kind, Tensor};

use super::ModelArgs;
use crate::device::DeviceArg;
use trainer_data::interop::model_files;
use trainer_data::output::{self, Output};

/// The archive's extra file (`torch.jit.load(path, _extra_files={"trainer.json": ""})`)
/// holding `input_size` and `emb_dim`.
pub const EXTRA_FILE: &str = "trainer.json";

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// torchscript (backbone + FR embedding layer, traced) or arcface-torch (the backbone's
    /// state dict as `torch.save` writes it, for arcface_torch's `get_model(...).load_state_dict`).
    #[arg(long, value_enum, default_value_t = ExportFormat::Torchscript)]
    pub format: ExportFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    Torchscript,
    ArcfaceTorch,
}

pub fn run(args: ExportArgs) -> Result<()> {
    // Traced on the CPU: a TorchScript file that loads anywhere.
    let mut model = args.model.load(&DeviceArg { device: "cpu".into() }, 0)?;
    if args.format == ExportFormat::ArcfaceTorch {
        return trainer_data::term::print(&format!("{}\n", crate::trained::arcface_torch::export(&model, &args.out)?));
    }
    // Weights become constants of the traced graph, which must not require gradients.
    model.freeze();
    model.require_fr("export")?;
    let size = model.cfg.model.size as i64;
    let example = Tensor::rand([2, 3, size, size], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let mut failure = None;
    let mut forward = |inputs: &[Tensor]| match model.net.embed_batch(&inputs[0]) {
        Ok(e) => vec![e],
        Err(e) => {
            failure = Some(e);
            vec![inputs[0].shallow_clone()]
        }
    };
    let module = tch::no_grad(|| {
        CModule::create_by_tracing("TrainerEmbedding", "forward", std::slice::from_ref(&example), &mut forward)
    })
    .context("tracing the backbone and FR embedding layer")?;
    if let Some(e) = failure {
        return Err(e);
    }
    // libtorch writes by name: it is given the descriptor's name of the temporary we created.
    let mut output = Output::new();
    let (file, partial) = output.create(&args.out)?;
    module
        .save(output::fd_path(&file))
        .map_err(crate::errors::cut)
        .with_context(|| format!("writing {}", partial.display()))?;
    // The traced graph does not say its input size: `launch/export_onnx.py` reads it here.
    let facts = serde_json::json!({"input_size": size, "emb_dim": model.cfg.heads.emb_dim});
    model_files::add_torchscript_extra(&output::fd_path(&file), EXTRA_FILE, facts.to_string().as_bytes())
        .with_context(|| format!("writing {}", partial.display()))?;
    check_round_trip(&output::fd_path(&file), &model.net, size)
        .with_context(|| format!("checking {}", partial.display()))?;
    output.commit()?;
    println!(
        "exported {} (step {}) to {}: input [N, 3, {size}, {size}] float32 RGB, (x - 127.5) / 127.5; output [N, {}] embedding (not normalised)",
        model.checkpoint.display(),
        model.step,
        args.out.display(),
        model.cfg.heads.emb_dim
    );
    Ok(())
}

/// Loads the file back with libtorch's own loader and compares it with the model on a
/// batch of another size than the traced one (the batch dimension must stay free).
fn check_round_trip(path: &std::path::Path, net: &crate::model::Net, size: i64) -> Result<()> {
    let loaded = CModule::load(path).with_context(|| format!("loading {} back", path.display()))?;
    let x = Tensor::rand([3, 3, size, size], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let (theirs, ours) =
        tch::no_grad(|| -> Result<(Tensor, Tensor)> { Ok((loaded.forward_ts(&[&x])?, net.embed_batch(&x)?)) })?;
    ensure!(
        theirs.size() == ours.size(),
        "the exported model gives shape {:?}, the model {:?}",
        theirs.size(),
        ours.size()
    );
    let diff = (theirs - ours).abs().max().double_value(&[]);
    ensure!(diff < 1e-4, "the exported model differs from the model by {diff}");
    Ok(())
}
