//! insightface's `property` file (`classes,height,width`) and the check of a set against
//! it. Mismatches that would break training (a class the head does not have, a header that
//! counts other identities) are errors; harmless ones (declared classes with no image,
//! images of another size, which a loader resizes) are returned as warnings.

use super::{Header, Summary};
use anyhow::{bail, Context, Result};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Property {
    pub classes: u64,
    pub height: u32,
    pub width: u32,
}

impl Property {
    pub fn read(path: &Path) -> Result<Property> {
        let text = crate::sidefile::read_text(path, crate::sidefile::Limit::property())?;
        Property::parse(&text).with_context(|| format!("parsing property file {}", path.display()))
    }

    /// The `property` file beside a `.rec`, if there is one.
    pub fn beside(rec: &Path) -> Result<Option<Property>> {
        let path = rec.with_file_name("property");
        if path.exists() {
            Property::read(&path).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn parse(text: &str) -> Result<Property> {
        let fields: Vec<&str> = text.trim().split(',').map(str::trim).collect();
        let [classes, height, width] = fields[..] else {
            bail!("expected `classes,height,width`, found {}", crate::sidefile::quote(text.trim()));
        };
        let number = |name: &str, v: &str| {
            v.parse::<u64>()
                .with_context(|| format!("{name} {} is not a non-negative integer", crate::sidefile::quote(v)))
        };
        let (classes, height, width) =
            (number("classes", classes)?, number("height", height)?, number("width", width)?);
        let side = |name: &str, v: u64| u32::try_from(v).with_context(|| format!("{name} {v} is too large"));
        Ok(Property { classes, height: side("height", height)?, width: side("width", width)? })
    }

    /// Before reading: an insightface header must count exactly `classes` identities.
    pub fn check_header(&self, header: &Header) -> Result<()> {
        let ids = header.identities().end - header.identities().start;
        if ids != self.classes {
            bail!(
                "property declares {} classes but the header record lists {ids} identity records (keys {}..{})",
                self.classes,
                header.first_identity_key,
                header.end_key
            );
        }
        Ok(())
    }

    /// After reading: errors for classes outside `0..classes`, warnings for the rest.
    pub fn check(&self, summary: &Summary) -> Result<Vec<String>> {
        if let Some(header) = &summary.header {
            self.check_header(header)?;
        }

        if let Some(max) = summary.max_class {
            if max >= self.classes {
                bail!("class {max} was read but property declares only {} classes (0..{})", self.classes, self.classes);
            }
        }
        let mut warnings = Vec::new();
        let seen = summary.distinct_classes();
        if seen < self.classes {
            warnings.push(format!("property declares {} classes but only {seen} have images", self.classes));
        }
        let want = (self.height, self.width);
        let other: u64 = summary.image_sizes.iter().filter(|(size, _)| *size != Some(want)).map(|(_, n)| n).sum();
        if other > 0 {
            let sizes: Vec<String> =
                summary.image_sizes.iter().map(|(s, n)| format!("{}: {n}", size_text(*s))).collect();
            warnings.push(format!(
                "{other} images are not {}x{} (height x width) as property says ({})",
                want.0,
                want.1,
                sizes.join(", ")
            ));
        }
        Ok(warnings)
    }
}

fn size_text(size: Option<(u32, u32)>) -> String {
    size.map_or("unknown format".to_string(), |(h, w)| format!("{h}x{w}"))
}

/// (height, width) from a JPEG's frame header or a PNG's IHDR, without decoding.
pub fn image_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.get(12..16) == Some(b"IHDR") {
        let be = |i: usize| bytes.get(i..i + 4).map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")));
        return Some((be(20)?, be(16)?));
    }
    if !bytes.starts_with(&[0xff, 0xd8]) {
        return None;
    }
    let mut at = 2;
    loop {
        while bytes.get(at) == Some(&0xff) && bytes.get(at + 1) == Some(&0xff) {
            at += 1;
        }
        let (&ff, &marker) = (bytes.get(at)?, bytes.get(at + 1)?);
        if ff != 0xff {
            return None;
        }
        let be16 = |i: usize| bytes.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]) as u32);
        let is_frame = matches!(marker, 0xc0..=0xcf) && !matches!(marker, 0xc4 | 0xc8 | 0xcc);
        if is_frame {
            return Some((be16(at + 5)?, be16(at + 7)?));
        }
        if matches!(marker, 0xd0..=0xd9 | 0x01) {
            at += 2;
            continue;
        }
        at += 2 + be16(at + 2)? as usize;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_property_and_rejects_junk() {
        assert_eq!(Property::parse("85742,112,112\n").unwrap(), Property { classes: 85742, height: 112, width: 112 });
        assert!(Property::parse("85742,112").is_err());
        assert!(Property::parse("a,112,112").is_err());
    }

    #[test]
    fn sniffs_png_and_jpeg_sizes() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        png.extend_from_slice(&7u32.to_be_bytes());
        png.extend_from_slice(&5u32.to_be_bytes());
        assert_eq!(image_size(&png), Some((5, 7)));
        // SOI, an APP0 segment of 4 bytes, then SOF0 with height 112, width 96.
        let jpeg = [0xff, 0xd8, 0xff, 0xe0, 0, 4, 0, 0, 0xff, 0xc0, 0, 17, 8, 0, 112, 0, 96, 3];
        assert_eq!(image_size(&jpeg), Some((112, 96)));
        assert_eq!(image_size(&jpeg[..12]), None);
        assert_eq!(image_size(b"not an image"), None);
    }
}
