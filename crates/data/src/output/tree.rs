//! `unpack`'s side of the output rule (see `output`): writing files below a folder without ever leaving it: each path component is opened
//! relative to its parent's descriptor with `O_NOFOLLOW` (`openat`/`mkdirat`), so a
//! symlink anywhere below the folder — planted before or during the run — is refused
//! instead of written through. Files are created with `O_EXCL`; replacing one (`force`)
//! unlinks it first, so even a symlink in its place is replaced, never followed.

use anyhow::{bail, Context, Result};
use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

pub struct SafeOut {
    root: PathBuf,
    root_fd: OwnedFd,
    /// The folder of the last file written (relative path and descriptor): records of one
    /// folder usually follow each other.
    last_dir: Option<(String, OwnedFd)>,
    force: bool,
}

impl SafeOut {
    /// Creates `root` if missing. `root` itself is the user's choice and may be a link.
    pub fn open(root: &Path, force: bool) -> Result<SafeOut> {
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let dir = File::open(root).with_context(|| format!("opening {}", root.display()))?;
        Ok(SafeOut { root: root.to_path_buf(), root_fd: OwnedFd::from(dir), last_dir: None, force })
    }

    /// Writes `bytes` to `root/rel` (`rel` already checked to be a contained path).
    pub fn write(&mut self, rel: &str, bytes: &[u8]) -> Result<()> {
        let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        if self.last_dir.as_ref().is_none_or(|(d, _)| d != dir) {
            let fd = self.open_dir(dir)?;
            self.last_dir = Some((dir.to_string(), fd));
        }
        let dir_fd = self.last_dir.as_ref().map_or(self.root_fd.as_raw_fd(), |(_, fd)| fd.as_raw_fd());
        let shown = self.root.join(rel);
        let mut file = self.create_file(dir_fd, name, &shown)?;
        file.write_all(bytes).with_context(|| format!("writing {}", shown.display()))
    }

    /// Opens (creating as needed) each folder of `dir` below the root, refusing links.
    fn open_dir(&self, dir: &str) -> Result<OwnedFd> {
        let mut fd = dup(self.root_fd.as_raw_fd(), &self.root)?;
        let mut shown = self.root.clone();
        for part in dir.split('/').filter(|p| !p.is_empty() && *p != ".") {
            shown.push(part);
            let name = c_name(part, &shown)?;
            // SAFETY: plain syscalls on a descriptor we own and a NUL-terminated name.
            let made = unsafe { libc::mkdirat(fd.as_raw_fd(), name.as_ptr(), 0o777) };
            if made != 0 && errno() != libc::EEXIST {
                return Err(std::io::Error::last_os_error()).with_context(|| format!("creating {}", shown.display()));
            }
            let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
            // SAFETY: as above; the returned descriptor is owned below.
            let next = unsafe { libc::openat(fd.as_raw_fd(), name.as_ptr(), flags) };
            if next < 0 {
                let err = std::io::Error::last_os_error();
                // O_NOFOLLOW with O_DIRECTORY reports a link as ELOOP or ENOTDIR: look again.
                return match err.raw_os_error() {
                    Some(libc::ELOOP | libc::ENOTDIR) if is_link(fd.as_raw_fd(), &name) => {
                        bail!(
                            "{} is a symlink; unpack never writes through links (remove it or choose another --out)",
                            shown.display()
                        )
                    }
                    Some(libc::ENOTDIR) => bail!("{} exists and is not a folder", shown.display()),
                    _ => Err(err).with_context(|| format!("opening {}", shown.display())),
                };
            }
            // SAFETY: `next` is a fresh descriptor nobody else owns.
            fd = unsafe { OwnedFd::from_raw_fd(next) };
        }
        Ok(fd)
    }

    fn create_file(&self, dir: RawFd, name: &str, shown: &Path) -> Result<File> {
        let c = c_name(name, shown)?;
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        for attempt in 0..2 {
            // SAFETY: plain syscall; the descriptor is owned right after.
            let fd = unsafe { libc::openat(dir, c.as_ptr(), flags, 0o666 as libc::c_uint) };
            if fd >= 0 {
                // SAFETY: `fd` is a fresh descriptor nobody else owns.
                return Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }));
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EEXIST) || attempt > 0 {
                return Err(err).with_context(|| format!("creating {}", shown.display()));
            }
            if !self.force {
                bail!("{} already exists; pass --force to replace it", shown.display());
            }
            if let Some(kind) = unreplaceable(dir, &c) {
                bail!("{} is {kind}; an output only replaces a regular file or a link", shown.display());
            }
            // SAFETY: unlinks the entry itself (a file or a link), never what a link points to.
            if unsafe { libc::unlinkat(dir, c.as_ptr(), 0) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("replacing {} (a folder cannot be replaced by a file)", shown.display()));
            }
        }
        unreachable!("the loop returns on its second attempt")
    }
}

/// What `name` in folder `dir` is (not followed) when it is neither a regular file nor a link.
fn unreplaceable(dir: RawFd, name: &CString) -> Option<&'static str> {
    // SAFETY: fstatat fills the zeroed struct we own; the name is NUL-terminated.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        return None;
    }
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG | libc::S_IFLNK => None,
        libc::S_IFDIR => Some("a folder"),
        libc::S_IFCHR | libc::S_IFBLK => Some("a device"),
        libc::S_IFIFO => Some("a FIFO"),
        _ => Some("a socket"),
    }
}

/// Whether `name` in folder `dir` is a symbolic link (not followed).
fn is_link(dir: RawFd, name: &CString) -> bool {
    // SAFETY: fstatat fills the zeroed struct we own; the name is NUL-terminated.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } == 0;
    ok && st.st_mode & libc::S_IFMT == libc::S_IFLNK
}

fn c_name(part: &str, shown: &Path) -> Result<CString> {
    CString::new(part).with_context(|| format!("{} contains a NUL byte", shown.display()))
}

fn dup(fd: RawFd, shown: &Path) -> Result<OwnedFd> {
    // SAFETY: duplicating a descriptor we own; the copy is owned right after.
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if copy < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("opening {}", shown.display()));
    }
    // SAFETY: `copy` is a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn writes_below_the_root_and_refuses_links_and_existing_files() {
        let tmp = tempfile::tempdir().unwrap();
        let (out, elsewhere) = (tmp.path().join("out"), tmp.path().join("elsewhere"));
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("ok.jpg"), b"precious").unwrap();
        let mut w = SafeOut::open(&out, false).unwrap();
        w.write("a/b/c.jpg", b"1").unwrap();
        w.write("top.jpg", b"2").unwrap();
        assert_eq!(std::fs::read(out.join("a/b/c.jpg")).unwrap(), b"1");

        symlink(&elsewhere, out.join("link")).unwrap();
        let err = format!("{:#}", w.write("link/ok.jpg", b"evil").unwrap_err());
        assert!(err.contains("is a symlink"), "{err}");
        symlink(elsewhere.join("ok.jpg"), out.join("file_link.jpg")).unwrap();
        let err = format!("{:#}", w.write("file_link.jpg", b"evil").unwrap_err());
        assert!(err.contains("already exists"), "{err}");
        assert!(w.write("top.jpg", b"3").is_err());

        let mut forced = SafeOut::open(&out, true).unwrap();
        forced.write("file_link.jpg", b"new").unwrap();
        forced.write("top.jpg", b"3").unwrap();
        assert!(forced.write("link/ok.jpg", b"evil").is_err(), "--force never enters a linked folder");
        assert_eq!(std::fs::read(elsewhere.join("ok.jpg")).unwrap(), b"precious");
        assert!(!std::fs::symlink_metadata(out.join("file_link.jpg")).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(out.join("top.jpg")).unwrap(), b"3");
    }
}
