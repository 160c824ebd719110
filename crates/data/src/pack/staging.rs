//! Claiming a dataset name in `--out` and committing its files so that a crash never
//! leaves a valid-looking dataset and a re-pack never replaces one by accident.
//!
//! Everything is written as `<final name>.partial`, fsynced, then renamed into place with
//! the manifest last. The pack holds an exclusive lock (`flock`) on its manifest's
//! `.partial` file from start to commit: a second pack of the same name sees the lock and
//! stops, and any later pack into the folder tells the `.partial` files of a pack that died
//! (no lock held) from those of one still running, and removes only the former.

use crate::format::idx as format;
use crate::output;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashSet};
use std::fs::{File, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::output::PARTIAL;

/// Files staged under temporary names; dropped without `commit`, they are deleted.
pub struct Staging {
    out: PathBuf,
    name: String,
    /// (temporary, final) in commit order, the manifest excluded.
    files: Vec<(PathBuf, PathBuf)>,
    /// The manifest's temporary file, locked for the whole pack.
    lock: File,
    lock_path: PathBuf,
    committed: bool,
}

/// The files of dataset `name` in `out`: shards of any count, a legacy pair, sidecars.
pub fn dataset_files(out: &Path, name: &str) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(out) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", out.display())),
    };
    let sidecars = [
        format!("{name}.bin"),
        format!("{name}.idx"),
        format::labels_file(name),
        format::manifest_file(name),
        format::skipped_file(name),
    ];
    let mut found = Vec::new();
    for entry in entries {
        let file = entry.with_context(|| format!("listing {}", out.display()))?.file_name();
        let Some(file) = file.to_str() else { continue };
        let stem = file.strip_suffix(".bin").or_else(|| file.strip_suffix(".idx"));
        if sidecars.iter().any(|s| s == file) || stem.is_some_and(|s| format::parse_shard_stem(s, name).is_some()) {
            found.push(out.join(file));
        }
    }
    found.sort();
    Ok(found)
}

/// Refuses to touch an existing dataset `name` in `out` unless `force`.
pub fn check_free(out: &Path, name: &str, force: bool) -> Result<()> {
    let existing = dataset_files(out, name)?;
    if let (false, Some(first)) = (force, existing.first()) {
        bail!(
            "{} already holds a dataset named {name:?} ({} file(s), e.g. {}); pass --force to replace it \
             (its files are removed only after the new ones are in place) or choose another --name",
            out.display(),
            existing.len(),
            first.display()
        );
    }
    Ok(())
}

impl Staging {
    /// Claims `name` in `out`: checks it is free (or `force`), takes the lock, and clears
    /// what interrupted packs left in `out`.
    pub fn new(out: &Path, name: &str, force: bool) -> Result<Staging> {
        std::fs::create_dir_all(out).with_context(|| format!("creating output directory {}", out.display()))?;
        check_free(out, name, force)?;
        let lock_path = out.join(format!("{}{PARTIAL}", format::manifest_file(name)));
        output::check_target(&out.join(format::manifest_file(name)))?;
        let lock = open_lock(&lock_path)?;
        let locked = match lock.try_lock() {
            Ok(()) => true,
            Err(TryLockError::WouldBlock) => bail!("another `trainer pack` is writing {name:?} into {} right now (it holds {}); wait for it or use another --name", out.display(), lock_path.display()),
            Err(TryLockError::Error(e)) => {
                tracing::debug!("no lock on {} ({e}); leftovers of other packs are reported, not removed", lock_path.display());
                false
            }
        };
        lock.set_len(0).with_context(|| format!("truncating {}", lock_path.display()))?;
        let staging = Staging {
            out: out.to_path_buf(),
            name: name.to_string(),
            files: Vec::new(),
            lock,
            lock_path,
            committed: false,
        };
        staging.clear_leftovers(locked)?;
        Ok(staging)
    }

    /// Removes `.partial` files of packs that are no longer running (this name's always;
    /// another name's when its lock is free), reporting what it removed or left.
    fn clear_leftovers(&self, may_remove_others: bool) -> Result<()> {
        for (owner, files) in partial_files(&self.out)? {
            let mine = owner == self.name;
            let files: Vec<PathBuf> = files.into_iter().filter(|f| *f != self.lock_path).collect();
            let their_lock = self.out.join(format!("{}{PARTIAL}", format::manifest_file(&owner)));
            let state = match (mine, may_remove_others) {
                (true, _) => Owner::Gone,
                (false, true) => owner_state(&their_lock)?,
                (false, false) => Owner::Running,
            };
            if let Owner::Running = state {
                tracing::warn!(
                    "{} .partial file(s) of {owner:?} in {} belong to a pack that may still be running; left alone",
                    files.len(),
                    self.out.display()
                );
                continue;
            }
            // A dead owner's lock stays held by us while its files go.
            for f in &files {
                remove_if_exists(f)?;
            }
            drop(state);
            if !files.is_empty() {
                tracing::warn!(
                    "removed {} .partial file(s) left in {} by an interrupted pack of {owner:?}",
                    files.len(),
                    self.out.display()
                );
            }
        }
        Ok(())
    }

    /// A new temporary file that `commit` will rename to `<out>/<file_name>`.
    pub fn create(&mut self, file_name: &str) -> Result<(File, PathBuf)> {
        let target = self.out.join(file_name);
        output::check_target(&target)?;
        let tmp = self.out.join(format!("{file_name}{PARTIAL}"));
        let file = output::create_temp(&tmp)?;
        self.files.push((tmp.clone(), target));
        Ok((file, tmp))
    }

    /// Writes a small file completely (fsynced) under its temporary name.
    pub fn write_small(&mut self, file_name: &str, bytes: &[u8]) -> Result<()> {
        let (mut file, tmp) = self.create(file_name)?;
        file.write_all(bytes).with_context(|| format!("writing {}", tmp.display()))?;
        file.sync_all().with_context(|| format!("syncing {}", tmp.display()))
    }

    /// Writes the manifest (fsynced) into the locked file; `commit` renames it last.
    pub fn write_manifest(&mut self, bytes: &[u8]) -> Result<()> {
        self.lock.write_all(bytes).with_context(|| format!("writing {}", self.lock_path.display()))?;
        self.lock.sync_all().with_context(|| format!("syncing {}", self.lock_path.display()))
    }

    /// Removes the old manifest first (so a crash mid-commit leaves no manifest), renames
    /// everything into place with the manifest last, then deletes the files of the old
    /// dataset that the new one did not replace (shards of another count, a legacy pair),
    /// and syncs the directory.
    pub fn commit(mut self) -> Result<()> {
        let manifest = self.out.join(format::manifest_file(&self.name));
        let old = dataset_files(&self.out, &self.name)?;
        for target in self.files.iter().map(|(_, t)| t).chain([&manifest]).chain(&old) {
            output::check_target(target)?;
        }
        remove_if_exists(&manifest)?;
        for (tmp, target) in &self.files {
            std::fs::rename(tmp, target)
                .with_context(|| format!("renaming {} to {}", tmp.display(), target.display()))?;
        }
        std::fs::rename(&self.lock_path, &manifest)
            .with_context(|| format!("renaming {} to {}", self.lock_path.display(), manifest.display()))?;
        self.committed = true;
        let keep: HashSet<&PathBuf> = self.files.iter().map(|(_, t)| t).chain([&manifest]).collect();
        for old in dataset_files(&self.out, &self.name)?.into_iter().filter(|p| !keep.contains(p)) {
            remove_if_exists(&old)?;
        }
        File::open(&self.out)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing directory {}", self.out.display()))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            for (tmp, _) in &self.files {
                let _ = std::fs::remove_file(tmp);
            }
            // Still locked here, so no other pack can mistake it for its own.
            let _ = std::fs::remove_file(&self.lock_path);
        }
    }
}

/// The manifest's temporary, which is also the pack's lock: created if absent, never
/// through a link, and only a regular file of ours (an interrupted pack's) is reused.
fn open_lock(path: &Path) -> Result<File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let lock = File::options()
        .create(true)
        .write(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("creating {} (a link there is never followed)", path.display()))?;
    let meta = lock.metadata().with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: geteuid has no preconditions.
    if !meta.is_file() || meta.uid() != unsafe { libc::geteuid() } {
        bail!("{} is already there and is not a temporary of ours; remove it", path.display());
    }
    Ok(lock)
}

/// `.partial` files in `out` that a pack writes, grouped by the dataset they belong to.
fn partial_files(out: &Path) -> Result<BTreeMap<String, Vec<PathBuf>>> {
    let mut groups: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(out).with_context(|| format!("listing {}", out.display()))? {
        let entry = entry.with_context(|| format!("listing {}", out.display()))?;
        let file = entry.file_name();
        let Some(owner) = file.to_str().and_then(|f| f.strip_suffix(PARTIAL)).and_then(dataset_of) else { continue };
        groups.entry(owner.to_string()).or_default().push(entry.path());
    }
    Ok(groups)
}

/// The dataset name a file written by `pack` belongs to, from its final name.
fn dataset_of(file: &str) -> Option<&str> {
    for sidecar in [".manifest.json", ".labels.tsv", ".skipped.tsv"] {
        if let Some(name) = file.strip_suffix(sidecar) {
            return Some(name);
        }
    }
    let stem = file.strip_suffix(".bin").or_else(|| file.strip_suffix(".idx"))?;
    let (name, _) = stem.rsplit_once("-of-")?.0.rsplit_once('-')?;
    format::parse_shard_stem(stem, name).map(|_| name)
}

/// Whether the pack that owns some `.partial` files still runs.
enum Owner {
    /// Its lock file is gone: it is not running.
    Gone,
    /// It died: we now hold its lock.
    Dead(#[allow(dead_code)] File),
    Running,
}

/// The state of the pack whose manifest partial (its lock) is `path`.
fn owner_state(path: &Path) -> Result<Owner> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Owner::Gone),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    match file.try_lock() {
        Ok(()) => Ok(Owner::Dead(file)),
        Err(TryLockError::WouldBlock) => Ok(Owner::Running),
        Err(TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}

/// Removes `p` unless it is something the output rule never replaces (then it is kept and
/// named as a warning).
fn remove_if_exists(p: &Path) -> Result<()> {
    if let Err(e) = output::check_target(p) {
        tracing::warn!("{e:#}; left in place");
        return Ok(());
    }
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", p.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_files_are_attributed_to_their_dataset() {
        assert_eq!(dataset_of("faces-00003-of-00008.bin"), Some("faces"));
        assert_eq!(dataset_of("my-set-00000-of-00001.idx"), Some("my-set"));
        assert_eq!(dataset_of("faces.manifest.json"), Some("faces"));
        assert_eq!(dataset_of("notes.txt"), None);
        assert_eq!(dataset_of("faces-3-of-8.bin"), None);
    }

    #[test]
    fn a_second_pack_of_the_same_name_is_refused_while_the_first_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let first = Staging::new(dir.path(), "d", false).unwrap();
        let err = format!("{:#}", Staging::new(dir.path(), "d", false).err().unwrap());
        assert!(err.contains("another `trainer pack`"), "{err}");
        // Another name may pack beside it and leaves the running pack's files alone.
        let other = Staging::new(dir.path(), "e", false).unwrap();
        assert!(first.lock_path.exists());
        drop((first, other));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "dropped stagings leave nothing");
    }
}
