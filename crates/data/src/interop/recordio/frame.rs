//! RecordIO framing: one logical record from its parts, with every way the bytes can be
//! wrong turned into a `Damaged` frame that says where reading may resume.

use super::stream::Stream;
use std::io;

pub const MAGIC: u32 = 0xced7_230a;
const LENGTH_MASK: u32 = (1 << 29) - 1;

/// How far a record may reach: the end of the file, or (with an idx) the next indexed record.
#[derive(Clone, Copy)]
pub(crate) struct Limit {
    pub at: u64,
    pub what: &'static str,
}

pub(crate) enum Frame {
    /// The payload is `head` followed by `body`; `head` is empty unless the record was a
    /// single part and `split` chose a prefix for it.
    Record {
        offset: u64,
        head: Vec<u8>,
        body: Vec<u8>,
    },
    Damaged {
        offset: u64,
        reason: String,
        next: Next,
    },
    End,
}

/// Where a reader without an idx goes after damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// A record starts exactly here (a sequence broke at a new first part).
    At(u64),
    /// Look for the next plausible part header from here on.
    ScanFrom(u64),
}

fn word(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn damaged(offset: u64, reason: String, next: Next) -> io::Result<Frame> {
    Ok(Frame::Damaged { offset, reason, next })
}

/// How many leading bytes of a single-part payload, given its first bytes (as many as are
/// buffered), to return apart in `head`; 0 for none. Reading the image header apart saves
/// moving every image down by the header's length afterwards.
pub(crate) type Split = fn(&[u8]) -> usize;

/// Reads the record starting at the stream's position. Nothing past a part header is
/// consumed before the header has been judged, so a sequence that breaks at a new first part
/// leaves the stream exactly there.
pub(crate) fn read_frame(s: &mut Stream, limit: Limit, max_bytes: usize, split: Split) -> io::Result<Frame> {
    let start = s.pos();
    let mut payload: Vec<u8> = Vec::new();
    let mut parts = 0u32;
    loop {
        let at = s.pos();
        if parts == 0 && at >= limit.at {
            return Ok(Frame::End);
        }
        let room = limit.at.saturating_sub(at);
        let head = s.peek(8)?;
        if room < 8 || head.len() < 8 {
            let left = room.min(head.len() as u64);
            let reason =
                format!("truncated: {left} bytes before {} at offset {at}, too few for a part header", limit.what);
            return damaged(start, reason, Next::ScanFrom(at + 4));
        }
        let (magic, lrec) = (word(head, 0), word(head, 4));
        let (flag, len) = (lrec >> 29, (lrec & LENGTH_MASK) as u64);
        if let Some((reason, next)) = judge_header(start, at, parts, magic, flag) {
            return damaged(start, reason, next);
        }
        let padded = (len + 3) & !3;
        if 8 + padded > room {
            let reason =
                format!("part at offset {at} claims {len} bytes but only {} remain before {}", room - 8, limit.what);
            return damaged(start, reason, Next::ScanFrom(at + 4));
        }
        if payload.len() as u64 + 4 + len > max_bytes as u64 {
            let reason =
                format!("record larger than the {max_bytes}-byte limit (part at offset {at} adds {len} bytes)");
            return damaged(start, reason, Next::ScanFrom(at + 4));
        }
        s.consume(8);
        if parts > 0 {
            payload.extend_from_slice(&MAGIC.to_le_bytes());
        } else if flag == 0 {
            let head_len = split(s.peek(256)?).min(len as usize);
            let mut head = Vec::with_capacity(head_len);
            s.read_into(&mut head, head_len)?;
            let mut body = Vec::with_capacity(len as usize - head_len);
            s.read_into(&mut body, len as usize - head_len)?;
            s.seek_to(s.pos() + (padded - len))?;
            return Ok(Frame::Record { offset: start, head, body });
        } else {
            payload.reserve_exact(len as usize);
        }
        s.read_into(&mut payload, len as usize)?;
        s.seek_to(s.pos() + (padded - len))?;
        parts += 1;
        if flag == 3 {
            return Ok(Frame::Record { offset: start, head: Vec::new(), body: payload });
        }
    }
}

/// Why a part header cannot continue the record being read, if it cannot.
fn judge_header(start: u64, at: u64, parts: u32, magic: u32, flag: u32) -> Option<(String, Next)> {
    if magic != MAGIC {
        let what = if parts == 0 {
            "record".to_string()
        } else {
            format!("part {} of the record at offset {start}", parts + 1)
        };
        return Some((
            format!("bad magic 0x{magic:08x} at offset {at} where a {what} should start"),
            Next::ScanFrom(at + 4),
        ));
    }
    match (parts, flag) {
        (0, 0 | 1) | (1.., 2 | 3) => None,
        (0, 2 | 3) => Some((
            format!("a continuation part (flag {flag}) at offset {at} with no first part before it"),
            Next::ScanFrom(at + 4),
        )),
        (1.., 0 | 1) => Some((
            format!("record split in parts ends without its last part: the part at offset {at} starts a new record"),
            Next::At(at),
        )),
        _ => Some((format!("invalid continuation flag {flag} at offset {at}"), Next::ScanFrom(at + 4))),
    }
}

/// Whether a part header at the start of `head` could begin a record within `room` bytes;
/// used to resynchronise after damage.
pub(crate) fn plausible_start(head: &[u8], room: u64, max_bytes: usize) -> bool {
    if head.len() < 8 || word(head, 0) != MAGIC {
        return false;
    }
    let lrec = word(head, 4);
    let (flag, len) = (lrec >> 29, (lrec & LENGTH_MASK) as u64);
    flag <= 1 && len <= max_bytes as u64 && 8 + ((len + 3) & !3) <= room
}

/// Advances to the next 4-aligned offset at or after `from` where a plausible record starts;
/// returns it, or `None` (stream left at `limit`) when there is none.
pub(crate) fn scan(s: &mut Stream, from: u64, limit: u64, max_bytes: usize) -> io::Result<Option<u64>> {
    let mut at = (from + 3) & !3;
    while at + 8 <= limit {
        s.seek_to(at)?;
        let head = s.peek(8)?;
        if head.len() < 8 {
            break;
        }
        if plausible_start(head, limit - at, max_bytes) {
            return Ok(Some(at));
        }
        at += 4;
    }
    s.seek_to(limit.max(s.pos()))?;
    Ok(None)
}
