//! The image header MXNet's `recordio.pack` puts in front of every payload (struct
//! `IfQQ`: flag, label, id, id2) and the label array that follows it when flag > 0.

use super::Header;

pub(crate) const HEADER_BYTES: usize = 24;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Parsed {
    pub flag: u32,
    pub label: f32,
    pub id: u64,
    pub id2: u64,
    /// The `flag` labels when flag > 0 (the first is the class), else empty.
    pub labels: Vec<f32>,
    /// Where the image bytes start in the payload.
    pub image_start: usize,
}

impl Parsed {
    /// The class as insightface reads it: the first label when there is an array.
    pub fn class(&self) -> f32 {
        self.labels.first().copied().unwrap_or(self.label)
    }

    pub fn has_image(&self, payload_len: usize) -> bool {
        payload_len > self.image_start
    }
}

pub(crate) fn parse(payload: &[u8]) -> Result<Parsed, String> {
    if payload.len() < HEADER_BYTES {
        return Err(format!("payload of {} bytes is shorter than the 24-byte image header", payload.len()));
    }
    let u32_at = |i: usize| u32::from_le_bytes(payload[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(payload[i..i + 8].try_into().expect("8 bytes"));
    let flag = u32_at(0);
    let label = f32::from_bits(u32_at(4));
    let labels_end = HEADER_BYTES as u64 + 4 * flag as u64;
    if labels_end > payload.len() as u64 {
        return Err(format!(
            "header flag {flag} announces {flag} labels but the payload has only {} bytes",
            payload.len()
        ));
    }
    let labels: Vec<f32> = (0..flag as usize).map(|i| f32::from_bits(u32_at(HEADER_BYTES + 4 * i))).collect();
    Ok(Parsed { flag, label, id: u64_at(8), id2: u64_at(16), labels, image_start: labels_end as usize })
}

/// `v` as a non-negative whole number that an f32 holds exactly.
pub(crate) fn whole(v: f32) -> Option<u64> {
    (v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v <= (1u32 << 24) as f32).then_some(v as u64)
}

/// A label as a class id: a whole number in `0..MAX_CLASSES` (2^24, the limit every
/// dataset has, and all an f32 holds exactly).
pub fn class_id(v: f32) -> Option<u32> {
    let max = crate::format::idx::MAX_CLASSES as f32;
    (v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v < max).then_some(v as u32)
}

/// A `[start, end]` pair of whole numbers in a record without image bytes: the shape of
/// insightface's header record and of its identity records.
pub(crate) fn range_record(p: &Parsed, payload_len: usize) -> Option<(u64, u64)> {
    if p.flag != 2 || p.has_image(payload_len) {
        return None;
    }
    let (a, b) = (whole(p.labels[0])?, whole(p.labels[1])?);
    (a <= b).then_some((a, b))
}

/// Record 0 is insightface's header when it is a range record `[first, end]` with
/// `1 ≤ first ≤ end`: images are then keys `1..first`, identities `first..end`.
pub(crate) fn detect_header(p: &Parsed, payload_len: usize) -> Option<Header> {
    let (first, end) = range_record(p, payload_len)?;
    (first >= 1).then_some(Header { first_identity_key: first, end_key: end })
}

/// The length of the image header and its labels when `first` (a payload's first bytes)
/// holds all of it, else 0: the frame reader's split point.
pub(crate) fn header_len(first: &[u8]) -> usize {
    let Some(flag) = first.get(..4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize) else {
        return 0;
    };
    let n = HEADER_BYTES.saturating_add(flag.saturating_mul(4));
    if n <= first.len() {
        n
    } else {
        0
    }
}

/// A payload read as `head` + `body`, parsed.
pub(crate) fn parse_parts(head: &[u8], body: &[u8]) -> Result<Parsed, String> {
    if head.is_empty() {
        parse(body)
    } else {
        parse(head)
    }
}

/// The image bytes of a payload read as `head` + `body`: `body` itself when the split fell
/// at the image, else the payload with the header and labels cut off.
pub(crate) fn into_image(head: Vec<u8>, body: Vec<u8>, image_start: usize) -> Vec<u8> {
    if !head.is_empty() && head.len() == image_start {
        return body;
    }
    let mut payload = head;
    payload.extend_from_slice(&body);
    payload.drain(..image_start.min(payload.len()));
    payload
}
