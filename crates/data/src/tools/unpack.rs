//! `trainer unpack`: records back to byte-identical files at their original paths, never
//! outside `--out` and never over an existing file unless `--force`.

use crate::format::idx::normalise_path;
use crate::output::SafeOut;
use crate::reader::Dataset;
use anyhow::{bail, Context, Result};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Write every record back to its original relative path under --out.
#[derive(clap::Args, Debug)]
pub struct UnpackArgs {
    /// `<dir>/<name>` (all shards) or a legacy `<dir>/<name>` .bin/.idx pair.
    pub dataset: PathBuf,
    /// Directory to recreate the files in (created if missing). Nothing is ever written
    /// through a symlink below it.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace files that already exist under --out (a symlink there is replaced, not followed).
    #[arg(long)]
    pub force: bool,
}

/// Writes the files; returns the summary line.
pub fn unpack(args: &UnpackArgs) -> Result<String> {
    let ds = Dataset::open(&args.dataset)?;
    check_paths(&ds)?;
    check_targets(&ds, &args.out, args.force)?;
    let mut out = SafeOut::open(&args.out, args.force)?;
    let progress = crate::term::progress_bar(ds.len() as u64, "unpacking [{bar:30}] {pos}/{len} {per_sec} ETA {eta}");
    let mut seen = HashSet::new();
    let (mut written, mut duplicates, mut bytes) = (0usize, 0usize, 0u64);
    for shard in &ds.shards {
        for i in 0..shard.len() {
            progress.inc(1);
            let rel = normalise_path(shard.path_of(i)).context("checked above")?;
            if !seen.insert(rel.clone()) {
                duplicates += 1;
                progress.suspend(|| {
                    tracing::warn!(
                        "{}: record {i} repeats path {rel:?}; the first copy was kept",
                        shard.bin_path().display()
                    )
                });
                continue;
            }
            let payload = shard.payload(i)?;
            if let Some(want) = shard.checksum(i) {
                if crc32c::crc32c(payload) != want {
                    bail!(
                        "{}: record {i} ({rel}): crc32c mismatch; the shard is corrupt (run `trainer verify`)",
                        shard.bin_path().display()
                    );
                }
            }
            out.write(&rel, payload)?;
            written += 1;
            bytes += payload.len() as u64;
        }
    }
    progress.finish_and_clear();
    let dups = if duplicates > 0 { format!("; {duplicates} duplicate paths skipped") } else { String::new() };
    Ok(format!("unpacked {written} files ({:.1} MB) into {}{dups}\n", bytes as f64 / 1e6, args.out.display()))
}

/// Refuses the whole unpack before writing anything if any path would land outside --out.
fn check_paths(ds: &Dataset) -> Result<()> {
    for shard in &ds.shards {
        for i in 0..shard.len() {
            let rel = shard.path_of(i);
            if normalise_path(rel).is_none() {
                bail!("{}: record {i} has path {rel:?}, which is absolute, escapes the output directory or names no file; refusing to unpack", shard.idx_path().display());
            }
        }
    }
    Ok(())
}

/// Refuses before writing anything when a folder on the way is a link or a file, or (without
/// `force`) when files are already there. `SafeOut` enforces the same while writing, so a
/// link planted meanwhile is still refused.
fn check_targets(ds: &Dataset, out: &Path, force: bool) -> Result<()> {
    let mut folders: HashMap<PathBuf, bool> = HashMap::new();
    let mut existing = Vec::new();
    for shard in &ds.shards {
        for i in 0..shard.len() {
            let rel = normalise_path(shard.path_of(i)).context("checked above")?;
            let rel = Path::new(&rel);
            let mut below = PathBuf::new();
            let mut present = true;
            for part in rel.parent().into_iter().flat_map(|p| p.components()) {
                below.push(part);
                if present {
                    present = match folders.get(&below) {
                        Some(&p) => p,
                        None => {
                            let p = folder_present(&out.join(&below))?;
                            folders.insert(below.clone(), p);
                            p
                        }
                    };
                }
            }
            let target = out.join(rel);
            if present && std::fs::symlink_metadata(&target).is_ok() {
                if target.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                    bail!(
                        "{} is a folder; record {i} of {} needs a file there",
                        target.display(),
                        shard.bin_path().display()
                    );
                }
                existing.push(target);
            }
        }
    }
    if let (false, Some(first)) = (force, existing.first()) {
        bail!(
            "{} of the files already exist under {} (e.g. {}); pass --force to replace them (nothing was written)",
            existing.len(),
            out.display(),
            first.display()
        );
    }
    Ok(())
}

/// Whether a folder on the way exists (false: it will be created); links and files are errors.
fn folder_present(path: &Path) -> Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => bail!(
            "{} is a symlink; unpack never writes through links (remove it or choose another --out)",
            path.display()
        ),
        Ok(m) if m.is_dir() => Ok(true),
        Ok(_) => bail!("{} exists and is not a folder", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("checking {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use crate::format::idx::is_contained_path;

    #[test]
    fn only_plain_relative_paths_stay_inside() {
        for ok in ["a/b.jpg", "x (1)/é.png", "./a"] {
            assert!(is_contained_path(ok), "{ok}");
        }
        for bad in ["../x", "a/../../x", "/etc/passwd", "", "a/\0b"] {
            assert!(!is_contained_path(bad), "{bad}");
        }
    }
}
