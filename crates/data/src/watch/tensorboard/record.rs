//! TFRecord framing, the container of TensorBoard event files: each record is the payload
//! length (u64 LE), a masked CRC-32C of those 8 bytes (u32 LE), the payload, and a masked
//! CRC-32C of the payload (u32 LE).

use anyhow::{bail, Result};
use std::io::{self, Write};

/// Bytes a record adds around its payload.
pub const OVERHEAD: usize = 8 + 4 + 4;

/// TensorFlow masks stored CRCs so that a CRC computed over data that itself contains
/// CRCs stays well distributed.
pub fn masked_crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes).rotate_right(15).wrapping_add(0xa282_ead8)
}

pub fn write_record(out: &mut impl Write, data: &[u8]) -> io::Result<()> {
    let len = (data.len() as u64).to_le_bytes();
    out.write_all(&len)?;
    out.write_all(&masked_crc(&len).to_le_bytes())?;
    out.write_all(data)?;
    out.write_all(&masked_crc(data).to_le_bytes())
}

/// One checked record: its payload and the byte offset of its header in the file.
pub struct Record<'a> {
    pub offset: usize,
    pub data: &'a [u8],
}

/// Splits a whole file into records, checking both CRCs of each. An error names the
/// record (counted from 0) and its byte offset; the caller adds the file name.
pub fn split_records(bytes: &[u8]) -> Result<Vec<Record<'_>>> {
    let mut records = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        let index = records.len();
        let rest = &bytes[offset..];
        if rest.len() < 12 {
            bail!("record {index} at byte offset {offset}: truncated header ({} of 12 bytes)", rest.len());
        }
        let (len_bytes, crc_bytes) = (&rest[..8], &rest[8..12]);
        check_crc(len_bytes, crc_bytes, "length", index, offset)?;
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
        let available = (rest.len() - 12) as u64;
        if available < len.saturating_add(4) {
            bail!("record {index} at byte offset {offset}: truncated data (length says {len} bytes + 4 CRC bytes, {available} left in the file)");
        }
        let len = len as usize;
        let data = &rest[12..12 + len];
        check_crc(data, &rest[12 + len..16 + len], "data", index, offset)?;
        records.push(Record { offset, data });
        offset += OVERHEAD + len;
    }
    Ok(records)
}

fn check_crc(covered: &[u8], stored: &[u8], what: &str, index: usize, offset: usize) -> Result<()> {
    let stored = u32::from_le_bytes(stored.try_into().expect("4 bytes"));
    let computed = masked_crc(covered);
    if stored != computed {
        bail!("record {index} at byte offset {offset}: {what} CRC mismatch (stored {stored:#010x}, computed {computed:#010x})");
    }
    Ok(())
}
