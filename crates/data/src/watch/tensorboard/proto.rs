//! The few protobuf messages of an event file, encoded and decoded by hand:
//! `Event { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5;
//! SessionLog session_log = 7; }`, `Summary { repeated Value value = 1; }`,
//! `Value { string tag = 1; float simple_value = 2; }`, `SessionLog { SessionStatus status = 1; }`.
//! Decoding skips fields it does not know, as protobuf readers must.

use super::{Event, Scalar};
use anyhow::{bail, Context, Result};

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;
/// `SessionLog.SessionStatus.START`.
const SESSION_START: u64 = 1;

/// Encodes an event; `scalars` is walked twice (sizes first), hence Clone.
pub fn encode_event<'a>(out: &mut Vec<u8>, head: &Head, scalars: impl Iterator<Item = (&'a str, f32)> + Clone) {
    let Head { wall_time, step, file_version, restart } = *head;
    put_key(out, 1, FIXED64);
    out.extend_from_slice(&wall_time.to_le_bytes());
    if step != 0 {
        put_key(out, 2, VARINT);
        put_varint(out, step as u64);
    }
    if let Some(v) = file_version {
        put_bytes(out, 3, v.as_bytes());
    }
    let summary_len: usize = scalars.clone().map(|(tag, _)| nested_len(value_len(tag))).sum();
    if summary_len > 0 {
        put_key(out, 5, LEN);
        put_varint(out, summary_len as u64);
        for (tag, value) in scalars {
            put_key(out, 1, LEN);
            put_varint(out, value_len(tag) as u64);
            put_bytes(out, 1, tag.as_bytes());
            put_key(out, 2, FIXED32);
            out.extend_from_slice(&value.to_le_bytes());
        }
    }
    if restart {
        put_key(out, 7, LEN);
        put_varint(out, 2);
        put_key(out, 1, VARINT);
        put_varint(out, SESSION_START);
    }
}

/// An event's fields besides its scalars.
pub struct Head<'a> {
    pub wall_time: f64,
    pub step: i64,
    pub file_version: Option<&'a str>,
    pub restart: bool,
}

/// Encoded size of a `Value` with a tag and a simple_value.
fn value_len(tag: &str) -> usize {
    nested_len(tag.len()) + 1 + 4
}

/// Size of a length-delimited field with a one-byte key and a payload of `len` bytes.
fn nested_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, u64::from(field << 3 | u32::from(wire)));
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

pub fn decode_event(data: &[u8]) -> Result<Event> {
    let mut ev = Event::default();
    let mut r = Fields { data, pos: 0 };
    while let Some((field, wire)) = r.key()? {
        match field {
            1 => ev.wall_time = f64::from_le_bytes(r.expect(field, wire, FIXED64)?.try_into().expect("8 bytes")),
            2 => {
                r.check_wire(field, wire, VARINT)?;
                ev.step = r.varint()? as i64;
            }
            3 => {
                let s = r.expect(field, wire, LEN)?;
                ev.file_version = Some(String::from_utf8(s.to_vec()).context("file_version is not UTF-8")?);
            }
            5 => decode_summary(r.expect(field, wire, LEN)?, &mut ev.scalars).context("in the summary")?,
            7 => {
                ev.restart = decode_session_status(r.expect(field, wire, LEN)?).context("in the session log")?
                    == Some(SESSION_START)
            }
            _ => r.skip(wire)?,
        }
    }
    Ok(ev)
}

fn decode_summary(data: &[u8], scalars: &mut Vec<Scalar>) -> Result<()> {
    let mut r = Fields { data, pos: 0 };
    while let Some((field, wire)) = r.key()? {
        match field {
            1 => {
                if let Some(s) =
                    decode_value(r.expect(field, wire, LEN)?).with_context(|| format!("in value {}", scalars.len()))?
                {
                    scalars.push(s);
                }
            }
            _ => r.skip(wire)?,
        }
    }
    Ok(())
}

fn decode_session_status(data: &[u8]) -> Result<Option<u64>> {
    let mut r = Fields { data, pos: 0 };
    let mut status = None;
    while let Some((field, wire)) = r.key()? {
        if field == 1 {
            r.check_wire(field, wire, VARINT)?;
            status = Some(r.varint()?);
        } else {
            r.skip(wire)?;
        }
    }
    Ok(status)
}

/// A `Value` without a simple_value (an image, a histogram, a tensor) is not a scalar: None.
fn decode_value(data: &[u8]) -> Result<Option<Scalar>> {
    let mut r = Fields { data, pos: 0 };
    let (mut tag, mut value) = (String::new(), None);
    while let Some((field, wire)) = r.key()? {
        match field {
            1 => tag = String::from_utf8(r.expect(field, wire, LEN)?.to_vec()).context("tag is not UTF-8")?,
            2 => value = Some(f32::from_le_bytes(r.expect(field, wire, FIXED32)?.try_into().expect("4 bytes"))),
            _ => r.skip(wire)?,
        }
    }
    Ok(value.map(|value| Scalar { tag, value }))
}

/// A cursor over one message's fields; positions in errors are relative to that message.
struct Fields<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn key(&mut self) -> Result<Option<(u64, u8)>> {
        if self.pos == self.data.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 {
            bail!("field number 0 at byte {}", self.pos);
        }
        Ok(Some((field, (key & 7) as u8)))
    }

    fn varint(&mut self) -> Result<u64> {
        let start = self.pos;
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.data.get(self.pos) else { bail!("truncated varint at byte {start}") };
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        bail!("varint longer than 10 bytes at byte {start}")
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        let left = self.data.len() - self.pos;
        if n > left as u64 {
            bail!("field at byte {} wants {n} bytes, {left} left", self.pos);
        }
        let s = &self.data[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn check_wire(&self, field: u64, wire: u8, want: u8) -> Result<()> {
        if wire != want {
            bail!("field {field} has wire type {wire}, expected {want} (byte {})", self.pos);
        }
        Ok(())
    }

    /// The payload of a fixed-size or length-delimited field of the expected wire type.
    fn expect(&mut self, field: u64, wire: u8, want: u8) -> Result<&'a [u8]> {
        self.check_wire(field, wire, want)?;
        self.payload(wire)
    }

    fn payload(&mut self, wire: u8) -> Result<&'a [u8]> {
        match wire {
            FIXED64 => self.take(8),
            FIXED32 => self.take(4),
            LEN => {
                let n = self.varint()?;
                self.take(n)
            }
            _ => bail!("wire type {wire} has no payload (byte {})", self.pos),
        }
    }

    fn skip(&mut self, wire: u8) -> Result<()> {
        match wire {
            VARINT => self.varint().map(drop),
            FIXED64 | FIXED32 | LEN => self.payload(wire).map(drop),
            _ => bail!("unsupported wire type {wire} at byte {}", self.pos),
        }
    }
}
