//! The one rule every writer follows (`plot`, `embed`, `export`, `unpack`, `pack`,
//! checkpoints, TensorBoard, the run log), so that a name planted where an output goes is
//! never written through:
//!
//! - a temporary (`<final>.partial`) is created with `O_EXCL|O_NOFOLLOW`; a name already
//!   there is removed only when it is a regular file of our own user, anything else (a
//!   link, a FIFO, another user's file) is an error naming it;
//! - the final name is replaced only when it is absent, a regular file or a symlink (the
//!   link itself is replaced by the rename, never followed); a device, FIFO, socket or
//!   folder there is an error naming it, checked before anything is written;
//! - every file of one output is written and synced before the first rename, so a failure
//!   leaves the old outputs as they were and removes the temporaries.

pub mod tree;

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub use tree::SafeOut;

pub const PARTIAL: &str = ".partial";

/// What sits at `path`, in words, when it is something an output must not replace.
fn refused_kind(meta: &std::fs::Metadata) -> Option<&'static str> {
    let t = meta.file_type();
    if t.is_file() || t.is_symlink() {
        None
    } else if t.is_dir() {
        Some("a folder")
    } else if t.is_block_device() || t.is_char_device() {
        Some("a device")
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        Some("not a regular file")
    }
}

/// The final name may be replaced: it is absent, a regular file or a symlink.
pub fn check_target(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => match refused_kind(&meta) {
            Some(kind) => bail!("{} is {kind}; an output only replaces a regular file or a link", path.display()),
            None => Ok(()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("looking at {}", path.display())),
    }
}

/// A folder output's final name (a checkpoint): absent, a folder or a link.
pub fn check_dir_target(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() || meta.file_type().is_symlink() => Ok(()),
        Ok(meta) => bail!(
            "{} is {}; a folder output only replaces a folder or a link",
            path.display(),
            refused_kind(&meta).unwrap_or("a regular file")
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("looking at {}", path.display())),
    }
}

/// Whether `meta` is a regular file (or folder, `dir`) owned by the user we run as.
fn ours(meta: &std::fs::Metadata, dir: bool) -> bool {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let kind = if dir { meta.is_dir() } else { meta.is_file() };
    kind && meta.uid() == me
}

/// Creates `path` new (`O_EXCL|O_NOFOLLOW`). A leftover there is removed first when it is a
/// regular file of ours (an interrupted run's temporary); anything else is an error.
pub fn create_temp(path: &Path) -> Result<File> {
    for attempt in 0..2 {
        let opened = File::options()
            .write(true)
            .read(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(0o666)
            .open(path);
        match opened {
            Ok(f) => return Ok(f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt == 0 => {
                let meta = std::fs::symlink_metadata(path).with_context(|| format!("looking at {}", path.display()))?;
                if !ours(&meta, false) {
                    let kind = if meta.file_type().is_symlink() {
                        "a symlink"
                    } else {
                        refused_kind(&meta).unwrap_or("another user's file")
                    };
                    bail!("{} is already there and is {kind}, not a temporary of ours; remove it", path.display());
                }
                std::fs::remove_file(path).with_context(|| format!("removing the leftover {}", path.display()))?;
            }
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
    }
    bail!("{} reappeared while it was being created", path.display())
}

/// A fresh folder at `path` (a checkpoint's `.tmp`): a leftover folder of ours is removed
/// first; a link or anything else there is an error.
pub fn create_temp_dir(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if ours(&meta, true) => {
            std::fs::remove_dir_all(path).with_context(|| format!("removing the leftover {}", path.display()))?
        }
        Ok(meta) => bail!(
            "{} is already there and is {}, not a temporary folder of ours; remove it",
            path.display(),
            if meta.file_type().is_symlink() { "a symlink" } else { refused_kind(&meta).unwrap_or("a file") }
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("looking at {}", path.display())),
    }
    std::fs::create_dir(path).with_context(|| format!("creating {}", path.display()))
}

/// A log opened for appending (created if absent): never through a link, and only a
/// regular file.
pub fn open_append(path: &Path) -> Result<File> {
    let file = File::options()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("opening {} (a log is never opened through a link)", path.display()))?;
    let meta = file.metadata().with_context(|| format!("opening {}", path.display()))?;
    if let Some(kind) = refused_kind(&meta) {
        bail!("{} is {kind}; a log is only appended to a regular file", path.display());
    }
    Ok(file)
}

/// `<path>.partial`.
pub fn temp_name(path: &Path) -> Result<PathBuf> {
    let Some(name) = path.file_name() else { bail!("{}: not a file name", path.display()) };
    let mut tmp = name.to_os_string();
    tmp.push(PARTIAL);
    Ok(path.with_file_name(tmp))
}

/// A path through which libtorch, which only writes by name, reaches exactly the file we
/// created (the name could be swapped after we made it; the descriptor cannot).
pub fn fd_path(file: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// The files of one output, staged under temporary names and renamed together by
/// `commit`; dropped uncommitted, the temporaries are removed.
#[derive(Default)]
pub struct Output {
    /// (temporary, final) in the order they were staged.
    staged: Vec<(PathBuf, PathBuf)>,
}

impl Output {
    pub fn new() -> Output {
        Output::default()
    }

    /// Checks `target` may be replaced and creates its temporary.
    pub fn create(&mut self, target: &Path) -> Result<(File, PathBuf)> {
        check_target(target)?;
        let tmp = temp_name(target)?;
        let file = create_temp(&tmp)?;
        self.staged.push((tmp.clone(), target.to_path_buf()));
        Ok((file, tmp))
    }

    /// Stages `bytes` (synced) for `target`.
    pub fn write(&mut self, target: &Path, bytes: &[u8]) -> Result<()> {
        let (mut file, tmp) = self.create(target)?;
        file.write_all(bytes).with_context(|| format!("writing {}", tmp.display()))?;
        file.sync_all().with_context(|| format!("syncing {}", tmp.display()))
    }

    /// Renames every temporary into place, checking each final name again first.
    pub fn commit(mut self) -> Result<()> {
        for (_, target) in &self.staged {
            check_target(target)?;
        }
        let staged = std::mem::take(&mut self.staged);
        for (i, (tmp, target)) in staged.iter().enumerate() {
            if let Err(e) = std::fs::rename(tmp, target) {
                staged[i..].iter().for_each(|(t, _)| drop(std::fs::remove_file(t)));
                return Err(e).with_context(|| format!("renaming {} to {}", tmp.display(), target.display()));
            }
        }
        for parent in staged.iter().filter_map(|(_, t)| t.parent()) {
            let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
            File::open(parent).and_then(|d| d.sync_all()).ok();
        }
        Ok(())
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        for (tmp, _) in &self.staged {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// One file, written whole under the rule.
pub fn write_file(target: &Path, bytes: &[u8]) -> Result<()> {
    let mut out = Output::new();
    out.write(target, bytes)?;
    out.commit()
}

#[cfg(test)]
mod tests;
