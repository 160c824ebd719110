//! `trainer embed RUN --sets DATASET|pairs.bin --out emb.npy [--flip]`: a run's FR
//! embeddings (before L2 normalisation, as `trainer export`'s model outputs them) as a
//! float32 NumPy array, one row per image in record order, with a `.tsv` beside it naming
//! each row: `path label` for a dataset, `path pair issame` for a pair set.

use anyhow::{bail, ensure, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::Tensor;

use super::{Loaded, ModelArgs};
use crate::device::DeviceArg;
use crate::eval::pairs;
use trainer_data::interop::npy::NpyWriter;
use trainer_data::output::Output;
use trainer_data::pipeline::{Loader, RankView};

#[derive(clap::Args, Debug)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceArg,
    /// What to embed: a dataset (`DIR/NAME`) or an insightface pair set (`lfw.bin`, ...).
    #[arg(long)]
    pub sets: PathBuf,
    /// The `.npy` to write; the row names go to the same path with `.tsv`.
    #[arg(long)]
    pub out: PathBuf,
    /// Add the embedding of the mirrored image (insightface's test-time flip).
    #[arg(long)]
    pub flip: bool,
    /// Images per forward pass (default: the run's batch size).
    #[arg(long, value_parser = trainer_data::bounds::count::<usize>(trainer_data::bounds::MAX_BATCH))]
    pub batch_size: Option<usize>,
    /// Decode threads (default: the run's).
    #[arg(long, value_parser = trainer_data::bounds::count::<usize>(trainer_data::bounds::MAX_THREADS))]
    pub workers: Option<usize>,
}

pub fn run(args: EmbedArgs) -> Result<()> {
    let model = args.model.load(&args.device, args.workers.unwrap_or(1))?;
    model.require_fr("embed with")?;
    let batch = args.batch_size.unwrap_or(model.cfg.data.batch_size).max(1);
    let tsv = args.out.with_extension("tsv");
    ensure!(tsv != args.out, "--out {} would be its own row table: give the array a .npy name", args.out.display());
    // Both files are staged and renamed together: a failure leaves an earlier pair as it was.
    let mut output = Output::new();
    let (file, _) = output.create(&tsv)?;
    let mut table = std::io::BufWriter::new(file);
    let written = if pairs::is_pair_set(&args.sets) {
        embed_pair_set(&args, &model, batch, &mut output, &mut table)?
    } else {
        embed_dataset(&args, &model, batch, &mut output, &mut table)?
    };
    let file = table.into_inner().map_err(|e| e.into_error()).with_context(|| format!("writing {}", tsv.display()))?;
    file.sync_all().with_context(|| format!("writing {}", tsv.display()))?;
    output.commit()?;
    eprintln!("wrote {written} embeddings to {} and their names to {}", args.out.display(), tsv.display());
    Ok(())
}

/// Rows of `plain` (plus `mirrored`, added, with `--flip`) into the array; an embedding
/// that is not finite (NaN weights) is an error, as in `eval` and `export`.
fn write_rows(rows: Rows<'_>, dim: usize, plain: &[f32], mirrored: Option<&[f32]>) -> Result<()> {
    ensure!(dim > 0, "the model gives embeddings of dimension 0");
    let npy = match rows.npy {
        Some(w) => w,
        None => rows.npy.insert(NpyWriter::create_staged(rows.output, rows.out, dim)?),
    };
    for (r, row) in plain.chunks(dim).enumerate() {
        let row = match mirrored {
            Some(m) => row.iter().zip(&m[r * dim..(r + 1) * dim]).map(|(a, b)| a + b).collect::<Vec<f32>>(),
            None => row.to_vec(),
        };
        if let Some(bad) = row.iter().find(|v| !v.is_finite()) {
            bail!(
                "row {} of the embeddings is not finite ({bad}): the checkpoint's weights are damaged or diverged; nothing was written",
                rows.first + r
            );
        }
        npy.write_row(&row)?;
    }
    Ok(())
}

/// Where `write_rows` puts rows: the array (made on the first batch, once its width is
/// known) staged in the output, and the index of the first row.
struct Rows<'a> {
    npy: &'a mut Option<NpyWriter<f32>>,
    output: &'a mut Output,
    out: &'a Path,
    first: usize,
}

fn embed_pair_set(
    args: &EmbedArgs,
    model: &Loaded,
    batch: usize,
    output: &mut Output,
    table: &mut impl Write,
) -> Result<usize> {
    let set = pairs::open(&args.sets)?;
    ensure!(!set.images.is_empty(), "{} holds 0 pairs: there is nothing to embed", args.sets.display());
    let bar = trainer_data::term::progress_bar(
        set.images.len() as u64,
        "embedding [{bar:30}] {pos}/{len} {per_sec} ETA {eta}",
    );
    let e =
        pairs::embed_images(&model.net, &set.images, model.cfg.model.size, batch, model.device, |n| bar.inc(n as u64))
            .with_context(|| format!("embedding {}", args.sets.display()))?;
    bar.finish_and_clear();
    let mut npy = None;
    let rows = Rows { npy: &mut npy, output, out: &args.out, first: 0 };
    write_rows(rows, e.dim, &e.plain, args.flip.then_some(e.mirrored.as_slice()))?;
    npy.context("the pair set has no images")?.finish()?;
    let file = args.sets.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    writeln!(table, "path\tpair\tissame")?;
    for i in 0..set.images.len() {
        writeln!(table, "{file}#{i}\t{}\t{}", i / 2, u8::from(set.issame[i / 2]))?;
    }
    Ok(set.images.len())
}

fn embed_dataset(
    args: &EmbedArgs,
    model: &Loaded,
    batch: usize,
    output: &mut Output,
    table: &mut impl Write,
) -> Result<usize> {
    let view = Arc::new(RankView::open_paths(std::slice::from_ref(&args.sets), 0, 1, false)?);
    let workers = args.workers.unwrap_or(model.cfg.data.workers);
    let mut loader = Loader::sequential(Arc::clone(&view), model.cfg.model.size, batch, workers)?;
    let bar =
        trainer_data::term::progress_bar(view.len() as u64, "embedding [{bar:30}] {pos}/{len} {per_sec} ETA {eta}");
    writeln!(table, "path\tlabel")?;
    let (mut npy, mut rows) = (None, 0);
    while let Some(b) = loader.next_batch()? {
        let x = crate::model::input::images(&b, model.device)?;
        let (plain, mirrored) = tch::no_grad(|| -> Result<(Tensor, Option<Tensor>)> {
            let mirrored = if args.flip { Some(model.net.embed_batch(&x.flip([3]))?) } else { None };
            Ok((model.net.embed_batch(&x)?, mirrored))
        })?;
        let dim = plain.size()[1] as usize;
        let mirrored = mirrored.as_ref().map(pairs::to_f32).transpose()?;
        let rows_at = Rows { npy: &mut npy, output: &mut *output, out: &args.out, first: rows };
        write_rows(rows_at, dim, &pairs::to_f32(&plain)?, mirrored.as_deref())?;
        for &r in &b.records {
            let id = view.records[r as usize];
            let path = view.dataset.shards[id.shard as usize].path_of(id.index as usize);
            writeln!(table, "{}\t{}", trainer_data::format::idx::escape_path(path), view.labels()[r as usize])?;
        }
        rows += b.n;
        bar.inc(b.n as u64);
    }
    bar.finish_and_clear();
    if loader.skipped_total() > 0 {
        tracing::warn!("{} corrupt records were left out (the .tsv names the rows written)", loader.skipped_total());
    }
    npy.context("the dataset has no readable records")?.finish()?;
    Ok(rows)
}
