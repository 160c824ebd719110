//! `pack --align`: the face in each input is aligned with its five landmarks onto
//! insightface's ArcFace template (`codec::align`, OpenCV 4's bilinear arithmetic), at
//! `--size`, then encoded as `--encoding` asks. A record whose landmarks are missing or
//! degenerate, or that does not decode, is skipped with the reason.

use super::extras::Extras;
use super::transcode::{encode_rgb, Encoding, Transcode};
use super::PackArgs;
use crate::codec::{align, decode_rgb_into};
use anyhow::{bail, ensure, Context, Result};
use turbojpeg::Decompressor;

/// The crop side when `--align` is given without `--size`: insightface's 112.
pub const DEFAULT_SIZE: u32 = 112;

pub struct Aligner {
    pub extras: Extras,
    pub size: u32,
    pub transcode: Transcode,
}

impl Aligner {
    /// The aligner `--align` asks for (`None` without it), with the list table's landmarks.
    pub fn for_args(args: &PackArgs, t: &Transcode) -> Result<Option<Aligner>> {
        if !args.align {
            return Ok(None);
        }
        let table =
            args.list.as_deref().context("--align needs --list: a table with the landmark columns x1 y1 … x5 y5")?;
        let extras = Extras::read(table, crate::sidefile::Limit::folder_table())?;
        ensure!(
            extras.has_landmarks,
            "--align: list table {} has no landmark columns (x1 y1 … x5 y5)",
            table.display()
        );
        let encoding = match (args.encoding, t.encoding) {
            (Some(Encoding::Keep), _) => bail!("--align re-encodes the aligned crop: use --encoding jpeg or png"),
            (_, Encoding::Keep) => Encoding::Jpeg,
            (_, e) => e,
        };
        let size = args.size.unwrap_or(DEFAULT_SIZE);
        ensure!(size <= align::MAX_SIZE, "--size {size} is over the largest aligned crop, {}", align::MAX_SIZE);
        Ok(Some(Aligner { extras, size, transcode: Transcode { encoding, size: Some(size), quality: t.quality } }))
    }

    /// The aligned, encoded crop of the input at `path` (its name in the list table).
    pub fn payload(&self, path: &str, bytes: &[u8]) -> std::result::Result<Vec<u8>, String> {
        let landmarks = self.extras.landmarks(path)?;
        let mut rgb = Vec::new();
        let (w, h) = decode_rgb_into(Decompressor::new().ok().as_mut(), bytes, usize::MAX, &mut rgb)
            .map_err(|e| format!("cannot decode: {e:#}"))?;
        let image =
            image::RgbImage::from_raw(w as u32, h as u32, rgb).ok_or("decoded pixels do not match the image size")?;
        let crop = align::norm_crop(&image, &landmarks, self.size).map_err(|e| format!("cannot align: {e:#}"))?;
        encode_rgb(crop.as_raw(), self.size as usize, self.size as usize, &self.transcode)
    }
}
