//! IJB-B/IJB-C images → aligned NCHW u8 batches, as eval_ijbc.py feeds its model:
//! each `loose_crop/` image decoded at full size, warped onto the ArcFace template by its five
//! landmarks (`codec::align`: scikit-image's similarity, `cv2.warpAffine` with a black
//! border); (x − 127.5) / 127.5 follows on the device. Worker threads fill a batch while the
//! model runs the last.

use anyhow::{ensure, Context, Result};
use image::RgbImage;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;
use turbojpeg::Decompressor;

use crate::codec::align::{umeyama, warp_affine, Interp, Landmarks};
use crate::codec::{decode_rgb_into, Decoder};
use crate::metrics::ijb::{Meta, Target};

/// eval_ijbc.py's template: float32 points with 8 added to x in float32.
const TEMPLATE_F32: [[f32; 2]; 5] =
    [[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366], [33.5493, 92.3655], [62.7299, 92.2041]];

/// The template for a `size`×`size` crop, computed as eval_ijbc.py does for 112 (scaled for
/// other sizes).
pub fn template(size: u32) -> Landmarks {
    let k = f64::from(size) / 112.0;
    TEMPLATE_F32.map(|[x, y]| [f64::from(x + 8.0) * k, f64::from(y) * k])
}

/// One image to load: its file, where it is named, and its landmarks.
#[derive(Clone, Debug)]
pub struct Job {
    pub path: PathBuf,
    pub line: usize,
    pub landmarks: [[f32; 2]; 5],
}

/// The images of `meta` in order, each checked to exist: a missing one is an error naming it
/// and its line, never skipped (a benchmark with a missing image is not that benchmark).
pub fn jobs(dir: &Path, meta: &Meta, target: Target) -> Result<Vec<Job>> {
    let list = target.landmarks_file(dir);
    let jobs: Vec<Job> = meta
        .images
        .iter()
        .enumerate()
        .map(|(i, img)| Job { path: Meta::image_path(dir, &img.name), line: i + 1, landmarks: img.landmarks })
        .collect();
    let missing: Vec<&Job> = jobs.par_iter().filter(|j| !j.path.is_file()).collect();
    if let Some(first) = missing.first() {
        anyhow::bail!(
            "{}, line {}: image {} is missing ({} of {} images are)",
            list.display(),
            first.line,
            first.path.display(),
            missing.len(),
            jobs.len()
        );
    }
    Ok(jobs)
}

/// Decodes `job`'s image and aligns it to `size`×`size` RGB.
pub fn aligned(job: &Job, size: u32, tj: Option<&mut Decompressor>, rgb: &mut Vec<u8>) -> Result<RgbImage> {
    let bytes = std::fs::read(&job.path)?;
    let (w, h) = decode_rgb_into(tj, &bytes, usize::MAX, rgb)?;
    let image = RgbImage::from_raw(w as u32, h as u32, std::mem::take(rgb)).context("decoded buffer size")?;
    let lm: Landmarks = job.landmarks.map(|[x, y]| [f64::from(x), f64::from(y)]);
    let m = umeyama(&lm, &template(size)).context("cannot fit the landmarks to the template")?;
    ensure!(m.is_finite() && m.det() > 0.0, "the landmarks give a degenerate transform: {m:?}");
    let crop = warp_affine(&image, &m, size, size, Interp::Fixed);
    *rgb = image.into_raw();
    crop
}

/// A batch of consecutive images: `n` crops from image `first` on, 3×size×size planar RGB
/// bytes each.
pub struct IjbBatch {
    pub first: usize,
    pub n: usize,
    pub pixels: Vec<u8>,
}

/// Fills batches on `workers` threads, one batch ahead of the consumer.
pub struct IjbLoader {
    rx: Receiver<Result<IjbBatch>>,
    thread: Option<JoinHandle<()>>,
}

impl IjbLoader {
    pub fn start(jobs: Vec<Job>, list: PathBuf, size: u32, batch: usize, workers: usize) -> Result<IjbLoader> {
        ensure!(batch > 0 && workers > 0, "batch size and workers must be at least 1");
        let pool = rayon::ThreadPoolBuilder::new().num_threads(workers).build()?;
        let (tx, rx) = sync_channel(1);
        let thread = std::thread::Builder::new().name("ijb-loader".into()).spawn(move || {
            for (c, chunk) in jobs.chunks(batch).enumerate() {
                let filled = pool.install(|| fill(chunk, size, &list));
                let failed = filled.is_err();
                let sent = tx.send(filled.map(|pixels| IjbBatch { first: c * batch, n: chunk.len(), pixels }));
                if sent.is_err() || failed {
                    return;
                }
            }
        })?;
        Ok(IjbLoader { rx, thread: Some(thread) })
    }

    /// The next batch, or `None` after the last.
    pub fn next_batch(&mut self) -> Result<Option<IjbBatch>> {
        match self.rx.recv() {
            Ok(b) => b.map(Some),
            Err(_) => {
                if let Some(t) = self.thread.take() {
                    t.join().map_err(|_| anyhow::anyhow!("the IJB loader thread panicked"))?;
                }
                Ok(None)
            }
        }
    }
}

fn fill(chunk: &[Job], size: u32, list: &Path) -> Result<Vec<u8>> {
    let slot = 3 * size as usize * size as usize;
    let mut pixels = vec![0u8; chunk.len() * slot];
    pixels.par_chunks_mut(slot).zip(chunk.par_iter()).try_for_each_init(
        || (Decompressor::new().ok(), Decoder::new(), Vec::new()),
        |(tj, decoder, rgb), (out, job)| {
            let crop = aligned(job, size, tj.as_mut(), rgb)
                .with_context(|| format!("{}, line {}: image {}", list.display(), job.line, job.path.display()))?;
            decoder.from_rgb(crop.as_raw(), size as usize, size as usize, size as usize, out)
        },
    )?;
    Ok(pixels)
}
