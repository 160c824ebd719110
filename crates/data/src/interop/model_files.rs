//! Model files by what they hold, told from their first bytes and zip entries rather than
//! their names: so that `--init` given a PyTorch file says what it got and what to do,
//! instead of a safetensors parse error. And TorchScript's extra files (`extra/NAME` in
//! the archive, what `torch.jit.load(_extra_files=...)` reads), which carry the facts a
//! traced graph does not: the input size `launch/export_onnx.py` needs.

use anyhow::{Context, Result};
use std::io::Read;
use std::path::Path;

/// What a weights file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFile {
    /// A `.safetensors` file (u64 header length, then a JSON header).
    Safetensors,
    /// `torch.save` since PyTorch 1.6: a zip archive with one `<folder>/data.pkl`.
    TorchSave,
    /// `torch.jit.save` (or `trainer export`): a zip archive with code and constants.
    TorchScript,
    /// A pickle: `torch.save` before PyTorch 1.6 (or with the legacy format), or plain pickle.
    Pickle,
    /// None of these.
    Other,
}

impl ModelFile {
    /// Reads `path`'s first bytes (and, for a zip, its entry names).
    pub fn detect(path: &Path) -> Result<ModelFile> {
        let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut head = [0u8; 9];
        let got = file.read(&mut head).with_context(|| format!("reading {}", path.display()))?;
        let head = &head[..got];
        Ok(match head {
            [b'P', b'K', 3, 4, ..] => zip_kind(path),
            [0x80, 2..=5, ..] => ModelFile::Pickle,
            [h @ .., b'{'] if got == 9 && u64::from_le_bytes(h.try_into().unwrap_or_default()) + 8 <= len => {
                ModelFile::Safetensors
            }
            _ => ModelFile::Other,
        })
    }

    /// How a message names it.
    pub fn describe(self) -> &'static str {
        match self {
            ModelFile::Safetensors => "a safetensors file",
            ModelFile::TorchSave => "a PyTorch torch.save file (a zip archive holding data.pkl)",
            ModelFile::TorchScript => "a TorchScript file (torch.jit.save or `trainer export`)",
            ModelFile::Pickle => "a pickle (torch.save's format before PyTorch 1.6, or another pickle)",
            ModelFile::Other => "neither safetensors nor a PyTorch file",
        }
    }
}

fn zip_kind(path: &Path) -> ModelFile {
    let names: Vec<String> = std::fs::File::open(path)
        .ok()
        .and_then(|f| zip::ZipArchive::new(f).ok())
        .map(|z| z.file_names().map(str::to_string).collect())
        .unwrap_or_default();
    let under_folder = |leaf: &str| names.iter().any(|n| n.split_once('/').is_some_and(|(_, rest)| rest == leaf));
    if under_folder("constants.pkl") || names.iter().any(|n| n.contains("/code/")) {
        ModelFile::TorchScript
    } else if under_folder("data.pkl") {
        ModelFile::TorchSave
    } else {
        ModelFile::Other
    }
}

/// Adds `extra/<name>` holding `data` to the TorchScript archive at `path`, in place, under
/// the archive's own folder (libtorch names it after the file it was saved to).
pub fn add_torchscript_extra(path: &Path, name: &str, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let open = || std::fs::OpenOptions::new().read(true).write(true).open(path);
    let file = open().with_context(|| format!("opening {}", path.display()))?;
    let folder = {
        let zip = zip::ZipArchive::new(&file).with_context(|| format!("{} is not a zip archive", path.display()))?;
        let first = zip.file_names().find_map(|n| n.split_once('/').map(|(f, _)| f.to_string()));
        first.with_context(|| format!("{} has no archive folder", path.display()))?
    };
    let mut zip = zip::ZipWriter::new_append(open()?).with_context(|| format!("appending to {}", path.display()))?;
    let opts = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file_aligned(format!("{folder}/extra/{name}"), opts, 64)?;
    zip.write_all(data)?;
    zip.finish().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_told_apart_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let header = br#"{"__metadata__":{}}"#;
        let mut st = (header.len() as u64).to_le_bytes().to_vec();
        st.extend_from_slice(header);
        assert_eq!(ModelFile::detect(&write("m.safetensors", &st)).unwrap(), ModelFile::Safetensors);
        assert_eq!(ModelFile::detect(&write("old.pth", b"\x80\x02\x8a\x0alz")).unwrap(), ModelFile::Pickle);
        assert_eq!(ModelFile::detect(&write("x.bin", b"hello, world")).unwrap(), ModelFile::Other);
        // A header length past the end of the file is not safetensors.
        assert_eq!(ModelFile::detect(&write("short", b"\xff\x00\x00\x00\x00\x00\x00\x00{")).unwrap(), ModelFile::Other);
        let zip = |name: &str, entries: &[&str]| {
            let p = dir.path().join(name);
            let mut z = zip::ZipWriter::new(std::fs::File::create(&p).unwrap());
            for e in entries {
                z.start_file(*e, zip::write::FileOptions::default()).unwrap();
            }
            z.finish().unwrap();
            p
        };
        let pth = zip("b.pth", &["archive/data.pkl", "archive/byteorder", "archive/data/0"]);
        assert_eq!(ModelFile::detect(&pth).unwrap(), ModelFile::TorchSave);
        let ts = zip("m.pt", &["m/data.pkl", "m/constants.pkl", "m/code/__torch__.py"]);
        assert_eq!(ModelFile::detect(&ts).unwrap(), ModelFile::TorchScript);
        add_torchscript_extra(&ts, "trainer.json", b"{}").unwrap();
        let z = zip::ZipArchive::new(std::fs::File::open(&ts).unwrap()).unwrap();
        assert!(z.file_names().any(|n| n == "m/extra/trainer.json"), "{:?}", z.file_names().collect::<Vec<_>>());
    }
}
