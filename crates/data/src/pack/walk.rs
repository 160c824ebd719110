//! Class folders → inputs: label i is the i-th subfolder of SRC in byte order of its name,
//! and every regular file below it is one record.
//!
//! Nothing is followed blindly: a link to a file is read as that file, but a link to a
//! folder is entered only with `--follow-links`, and then never back into a folder above
//! it, into a class folder or into a folder already walked (a loop or a second route to
//! the same images). FIFOs, sockets and devices are never opened. Everything left out is
//! reported with its reason.

use super::listing::{Item, Listing};
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::fs::{FileType, Metadata};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// A folder's identity on disk: (device, inode).
type DirId = (u64, u64);

/// What one directory entry turned out to be.
enum Entry {
    Folder(DirId),
    File,
    /// Left out on purpose (never fatal).
    Excluded(String),
    /// A bad input (fatal under `--strict`).
    Bad(String),
}

struct Walker {
    follow_links: bool,
    listing: Listing,
    /// Every folder walked, by identity → its path relative to SRC.
    walked: HashMap<DirId, String>,
}

/// Lists the inputs under SRC's class folders.
pub fn from_folders(src: &Path, follow_links: bool) -> Result<Listing> {
    let mut w = Walker { follow_links, listing: Listing::default(), walked: HashMap::new() };
    let root = dir_id(&std::fs::metadata(src).with_context(|| format!("reading {}", src.display()))?);
    let mut classes = Vec::new();
    for path in sorted_entries(src)? {
        let Some(name) = w.utf8_name(&path, "") else { continue };
        if name.starts_with('.') {
            w.exclude(&name, "hidden (name starts with '.')");
            continue;
        }
        match w.classify(&path, &[root]) {
            Entry::Folder(id) => match classes.iter().find(|c: &&(PathBuf, String, DirId)| c.2 == id) {
                Some(first) => w.exclude(&name, &format!("symlink to a folder packed as {}", first.1)),
                None => classes.push((path, name, id)),
            },
            Entry::File => w.exclude(&name, "outside any class folder (only files inside SRC's subfolders are packed)"),
            Entry::Excluded(why) => w.exclude(&name, &why),
            Entry::Bad(why) => w.reject(&name, &why),
        }
    }
    // Class folders are theirs first: a link elsewhere that leads into one is a second route.
    for (_, name, id) in &classes {
        w.walked.insert(*id, name.clone());
    }
    for (path, name, id) in classes {
        let label = w.listing.classes.entries.len() as u32;
        w.listing.classes.entries.push((label, name.clone()));
        w.walk(&path, &name, label, &[root, id])?;
    }
    Ok(w.listing)
}

impl Walker {
    fn walk(&mut self, dir: &Path, rel: &str, label: u32, ancestors: &[DirId]) -> Result<()> {
        for path in sorted_entries(dir)? {
            let Some(name) = self.utf8_name(&path, rel) else { continue };
            let child = format!("{rel}/{name}");
            if name.starts_with('.') {
                self.exclude(&child, "hidden (name starts with '.')");
                continue;
            }
            match self.classify(&path, ancestors) {
                Entry::Folder(id) => {
                    self.walked.entry(id).or_insert_with(|| child.clone());
                    let below: Vec<DirId> = ancestors.iter().copied().chain([id]).collect();
                    self.walk(&path, &child, label, &below)?;
                }
                Entry::File => self.listing.items.push(Item { rel: child, label, gender: -1, age: -1 }),
                Entry::Excluded(why) => self.exclude(&child, &why),
                Entry::Bad(why) => self.reject(&child, &why),
            }
        }
        Ok(())
    }

    /// Looks at an entry without following it, then follows a link only as far as allowed.
    fn classify(&self, path: &Path, ancestors: &[DirId]) -> Entry {
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) => return Entry::Bad(format!("unreadable: {e}")),
        };
        let kind = meta.file_type();
        if kind.is_dir() {
            return Entry::Folder(dir_id(&meta));
        }
        if kind.is_file() {
            return Entry::File;
        }
        if !kind.is_symlink() {
            return Entry::Bad(not_regular(kind));
        }
        let target = match std::fs::metadata(path) {
            Ok(t) => t,
            Err(e) => return Entry::Bad(format!("broken symlink: {e}")),
        };
        if target.is_file() {
            return Entry::File;
        }
        if !target.is_dir() {
            return Entry::Bad(format!("symlink to a {}, not a regular file", kind_name(target.file_type())));
        }
        if !self.follow_links {
            return Entry::Excluded(
                "symlink to a folder, not followed (pass --follow-links to pack what it holds)".into(),
            );
        }
        let id = dir_id(&target);
        if ancestors.contains(&id) {
            return Entry::Excluded("symlink loop: leads back to a folder above it".into());
        }
        if let Some(first) = self.walked.get(&id) {
            return Entry::Excluded(format!("symlink to a folder packed as {first}"));
        }
        Entry::Folder(id)
    }

    fn utf8_name(&mut self, path: &Path, rel: &str) -> Option<String> {
        let raw = path.file_name().unwrap_or_default();
        if let Some(name) = raw.to_str() {
            return Some(name.to_string());
        }
        let shown = if rel.is_empty() {
            raw.to_string_lossy().into_owned()
        } else {
            format!("{rel}/{}", raw.to_string_lossy())
        };
        self.reject(&shown, "file name is not UTF-8");
        None
    }

    fn exclude(&mut self, rel: &str, why: &str) {
        self.listing.excluded.push((rel.to_string(), why.to_string()));
    }

    fn reject(&mut self, rel: &str, why: &str) {
        self.listing.rejected.push((rel.to_string(), why.to_string()));
    }
}

fn dir_id(meta: &Metadata) -> DirId {
    (meta.dev(), meta.ino())
}

/// Why a file that is not a regular file is not read (reading a FIFO would block).
pub fn not_regular(kind: FileType) -> String {
    format!("not a regular file: {}", kind_name(kind))
}

fn kind_name(kind: FileType) -> &'static str {
    if kind.is_fifo() {
        "FIFO"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_block_device() || kind.is_char_device() {
        "device"
    } else if kind.is_dir() {
        "folder"
    } else {
        "special file"
    }
}

/// Entries of `dir` sorted by name bytes, so labels and order are the same on every
/// file system.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        out.push(entry.with_context(|| format!("listing {}", dir.display()))?.path());
    }
    out.sort_by(|a, b| a.file_name().map(|n| n.as_encoded_bytes()).cmp(&b.file_name().map(|n| n.as_encoded_bytes())));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn touch(root: &Path, files: &[&str]) {
        for f in files {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
    }

    fn rels(l: &Listing) -> Vec<(&str, u32)> {
        l.items.iter().map(|i| (i.rel.as_str(), i.label)).collect()
    }

    #[test]
    fn folders_get_sorted_labels_and_recursive_files() {
        let dir = tempfile::tempdir().unwrap();
        touch(
            dir.path(),
            &[
                "b_cls/2.jpg",
                "b_cls/1.jpg",
                "a cls/sub/x (1).jpg",
                "a cls/.hidden",
                "a cls/.git/x",
                "loose.jpg",
                ".DS_Store",
            ],
        );
        let l = from_folders(dir.path(), false).unwrap();
        assert_eq!(rels(&l), [("a cls/sub/x (1).jpg", 0), ("b_cls/1.jpg", 1), ("b_cls/2.jpg", 1)]);
        assert_eq!(l.classes.entries, [(0, "a cls".to_string()), (1, "b_cls".to_string())]);
        let excluded: Vec<&str> = l.excluded.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(excluded, [".DS_Store", "loose.jpg", "a cls/.git", "a cls/.hidden"]);
        assert!(l.rejected.is_empty());
    }

    #[test]
    fn links_loops_and_fifos_are_reported_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        touch(root, &["a/1.jpg", "b/2.jpg", "outside/3.jpg"]);
        let src = root.join("src");
        std::fs::create_dir_all(src.join("a")).unwrap();
        std::fs::rename(root.join("a"), src.join("a/real")).unwrap();
        std::fs::rename(root.join("b"), src.join("b")).unwrap();
        symlink("..", src.join("a/loop")).unwrap();
        symlink("../b", src.join("a/to_b")).unwrap();
        symlink("../../outside", src.join("a/ext")).unwrap();
        symlink("real/1.jpg", src.join("a/file_link.jpg")).unwrap();
        symlink("p", src.join("a/q")).unwrap();
        symlink("q", src.join("a/p")).unwrap();
        let fifo = src.join("b/pipe.jpg");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());

        let plain = from_folders(&src, false).unwrap();
        assert_eq!(rels(&plain), [("a/file_link.jpg", 0), ("a/real/1.jpg", 0), ("b/2.jpg", 1)]);
        let reason = |l: &Listing, p: &str| {
            l.excluded.iter().chain(&l.rejected).find(|(q, _)| q == p).map(|(_, r)| r.clone()).unwrap_or_default()
        };
        assert!(reason(&plain, "a/loop").contains("--follow-links"));
        assert!(reason(&plain, "a/p").contains("broken symlink"), "{}", reason(&plain, "a/p"));
        assert!(reason(&plain, "b/pipe.jpg").contains("FIFO"));

        let followed = from_folders(&src, true).unwrap();
        assert_eq!(rels(&followed), [("a/ext/3.jpg", 0), ("a/file_link.jpg", 0), ("a/real/1.jpg", 0), ("b/2.jpg", 1)]);
        assert!(reason(&followed, "a/loop").contains("loop"));
        assert!(reason(&followed, "a/to_b").contains("packed as b"), "{}", reason(&followed, "a/to_b"));
    }
}
