//! Checkpoints: `checkpoints/step-NNNNNNNNN/{model,optimizer}.safetensors + state.json`.
//!
//! A checkpoint appears only complete: files go to a `.tmp` directory, are fsynced, and
//! the directory is renamed into place. `state.json` records a CRC32C of each tensor file,
//! so a damaged checkpoint is named as such instead of failing somewhere inside libtorch.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::state::TrainState;
use crate::dist::Comm;
use trainer_data::output;

pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIM_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "state.json";

/// What `state.json` holds: the loop state plus the checksums of its sibling files.
#[derive(Serialize, Deserialize)]
pub struct StateFile {
    pub state: TrainState,
    pub checksums: BTreeMap<String, String>,
}

/// Writes a checkpoint into `dir` atomically; `write_tensors` fills the temp directory.
pub fn save(dir: &Path, state: &TrainState, write_tensors: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = with_suffix(dir, ".tmp");
    output::check_dir_target(dir)?;
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    output::create_temp_dir(&tmp)?;
    write_tensors(&tmp)?;
    let mut checksums = BTreeMap::new();
    for name in [MODEL_FILE, OPTIM_FILE] {
        let path = tmp.join(name);
        if path.exists() {
            checksums.insert(name.to_string(), format!("{:08x}", file_crc(&path)?));
            fsync(&path)?;
        }
    }
    let json = serde_json::to_vec_pretty(&StateFile { state: state.clone(), checksums })?;
    write_synced(&tmp.join(STATE_FILE), &json)?;
    replace_dir(&tmp, dir)
}

/// Reads and checks a checkpoint; tensor files are verified against their checksums.
pub fn load_state(dir: &Path) -> Result<StateFile> {
    let path = dir.join(STATE_FILE);
    let bytes = fs::read(&path).with_context(|| format!("checkpoint {}: cannot read {STATE_FILE}", dir.display()))?;
    let file: StateFile = serde_json::from_slice(&bytes)
        .with_context(|| format!("checkpoint {}: {STATE_FILE} is corrupt", dir.display()))?;
    check_counters(&file.state).with_context(|| format!("checkpoint {}: {STATE_FILE}", dir.display()))?;
    for (name, want) in &file.checksums {
        let p = dir.join(name);
        let got =
            format!("{:08x}", file_crc(&p).with_context(|| format!("checkpoint {}: missing {name}", dir.display()))?);
        if &got != want {
            bail!(
                "checkpoint {}: {name} is corrupt (crc32c {got}, expected {want}); resume from an older checkpoint",
                dir.display()
            );
        }
    }
    Ok(file)
}

/// Past 2^53 a step no longer survives the f64s of the logs; no real run comes near it.
const MAX_COUNTER: u64 = 1 << 53;

/// Counters no run can have reached (a tampered or damaged `state.json`) are an error
/// before they wrap or name checkpoints that do not exist.
fn check_counters(state: &TrainState) -> Result<()> {
    let big = |what: &str, v: u64| -> Result<()> {
        anyhow::ensure!(v <= MAX_COUNTER, "{what} is {v}, past 2^53: the file is damaged or was edited");
        Ok(())
    };
    big("step", state.step)?;
    big("rollbacks", state.run.rollbacks)?;
    for (head, n) in &state.loss_counts {
        big(&format!("the {head:?} loss count"), *n)?;
    }
    if let Some(late) = state.lr_changes.iter().find(|c| c.step > state.step) {
        bail!("a learning-rate change at step {} is later than the checkpoint's step {}", late.step, state.step);
    }
    anyhow::ensure!(
        state.elapsed_secs.is_finite() && state.elapsed_secs >= 0.0,
        "elapsed_secs is {}, expected a finite count of seconds",
        state.elapsed_secs
    );
    Ok(())
}

/// A resumed run cannot start past the steps it is allowed to take.
pub fn check_resume_step(state: &TrainState, max_steps: Option<u64>) -> Result<()> {
    match max_steps {
        Some(max) if state.step > max => {
            bail!("the checkpoint is at step {}, past --max-steps {max}: raise --max-steps to continue it", state.step)
        }
        _ => Ok(()),
    }
}

/// The checkpoint directories of a run, oldest first.
pub fn list(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let root = run_dir.join("checkpoints");
    if !root.exists() {
        return Ok(vec![]);
    }
    let mut dirs: Vec<(u64, PathBuf)> = fs::read_dir(&root)
        .with_context(|| format!("listing {}", root.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let step = name.strip_prefix("step-")?.parse().ok()?;
            Some((step, e.path()))
        })
        .collect();
    dirs.sort();
    Ok(dirs.into_iter().map(|(_, p)| p).collect())
}

/// The newest complete checkpoint of a run.
pub fn latest(run_dir: &Path) -> Result<PathBuf> {
    let mut dirs = list(run_dir)?;
    if crate::dist::failure::stale_listing() {
        dirs.pop();
    }
    dirs.pop().with_context(|| {
        format!("{} has no checkpoints (looked in {}/checkpoints)", run_dir.display(), run_dir.display())
    })
}

/// Rank 0 picks the checkpoint to resume from and tells every rank its path and the CRC of
/// its `state.json`; each rank checks it sees the same file, so no rank can resume from
/// another step on a filesystem whose listings lag.
pub fn agree_latest(comm: &dyn Comm, run_dir: &Path) -> Result<PathBuf> {
    let mut bytes = if comm.rank() == 0 {
        let dir = latest(run_dir)?;
        let crc = file_crc(&dir.join(STATE_FILE))?;
        format!("{crc:08x} {}", dir.display()).into_bytes()
    } else {
        vec![]
    };
    comm.broadcast_bytes(&mut bytes, 0)?;
    let text = String::from_utf8(bytes)?;
    let (crc, dir) = text.split_once(' ').context("malformed checkpoint choice from rank 0")?;
    let dir = PathBuf::from(dir);
    let mine = file_crc(&dir.join(STATE_FILE))
        .with_context(|| format!("rank {}: resuming from {} (rank 0's choice)", comm.rank(), dir.display()))?;
    if format!("{mine:08x}") != crc {
        bail!("rank {}: {} differs from rank 0's copy (crc32c {mine:08x}, rank 0 {crc}); the ranks do not see the same run directory", comm.rank(), dir.join(STATE_FILE).display());
    }
    Ok(dir)
}

pub fn step_dir(run_dir: &Path, step: u64) -> PathBuf {
    run_dir.join("checkpoints").join(format!("step-{step:09}"))
}

/// Deletes all but the newest `keep` checkpoints.
pub fn prune(run_dir: &Path, keep: usize) -> Result<()> {
    let dirs = list(run_dir)?;
    for old in dirs.iter().take(dirs.len().saturating_sub(keep.max(1))) {
        fs::remove_dir_all(old).with_context(|| format!("removing old checkpoint {}", old.display()))?;
    }
    Ok(())
}

/// Copies a finished checkpoint to `dst` (e.g. `best/`), atomically.
pub fn copy_to(src: &Path, dst: &Path) -> Result<()> {
    let tmp = with_suffix(dst, ".tmp");
    output::check_dir_target(dst)?;
    output::create_temp_dir(&tmp)?;
    for entry in fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let entry = entry?;
        let to = tmp.join(entry.file_name());
        fs::copy(entry.path(), &to).with_context(|| format!("copying {}", entry.path().display()))?;
        fsync(&to)?;
    }
    replace_dir(&tmp, dst)
}

/// Puts the finished folder `tmp` at `dst` (a folder there is replaced, a link there is
/// replaced without being followed).
fn replace_dir(tmp: &Path, dst: &Path) -> Result<()> {
    output::check_dir_target(dst)?;
    let is_link = fs::symlink_metadata(dst).is_ok_and(|m| m.file_type().is_symlink());
    if is_link {
        fs::remove_file(dst).with_context(|| format!("replacing the link {}", dst.display()))?;
    }
    if dst.exists() {
        let old = with_suffix(dst, ".old");
        let _ = fs::remove_dir_all(&old);
        fs::rename(dst, &old)?;
        fs::rename(tmp, dst).with_context(|| format!("renaming {} to {}", tmp.display(), dst.display()))?;
        fs::remove_dir_all(&old)?;
    } else {
        fs::rename(tmp, dst).with_context(|| format!("renaming {} to {}", tmp.display(), dst.display()))?;
    }
    if let Some(parent) = dst.parent() {
        fs::File::open(parent).and_then(|f| f.sync_all()).ok();
    }
    Ok(())
}

/// Writes a small file whole (synced) under the output rule.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    output::write_file(path, bytes)
}

fn fsync(path: &Path) -> Result<()> {
    fs::File::open(path).and_then(|f| f.sync_all()).with_context(|| format!("syncing {}", path.display()))
}

/// Streamed, so checking a checkpoint of a 100k-identity ArcFace layer needs no copy of it.
fn file_crc(path: &Path) -> Result<u32> {
    use std::io::Read;
    let mut f = fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let (mut crc, mut buf) = (0u32, vec![0u8; 1 << 20]);
    loop {
        let n = f.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            return Ok(crc);
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
    }
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}
