//! MXNet RecordIO as insightface stores face sets (`train.rec`, `train.idx`, `property`).
//!
//! The `.rec` is read front to back through one reused buffer, never whole: sets are tens
//! of GB. The `.idx`, when there is one, names each record's key, bounds each record (a
//! length that runs into the next indexed record is damage), and is where reading resumes
//! after damage; without it keys are record ordinals up to the first damage, and reading
//! resumes at the next part header (magic): records after it are named by offset, since
//! how many records the damage took is unknowable and a guessed count would shift names. A damaged record is reported as [`RecordItem::Skipped`]
//! and reading goes on; only I/O errors end the iteration.

mod frame;
mod idx;
mod payload;
mod property;
mod stream;
mod summary;

pub use frame::MAGIC;
pub use idx::{read_idx, IdxEntry};
pub use payload::class_id;
pub use property::{image_size, Property};
pub use summary::Summary;

use anyhow::{anyhow, Context, Result};
use frame::{scan, Frame, Limit, Next};
use std::collections::VecDeque;
use std::ops::Range;
use std::path::{Path, PathBuf};
use stream::Stream;

/// insightface's layout announced by record 0: images are keys `1..first_identity_key`,
/// identity records (each `[first image key, end image key]`) are `first_identity_key..end_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub first_identity_key: u64,
    pub end_key: u64,
}

impl Header {
    pub fn images(&self) -> Range<u64> {
        1..self.first_identity_key
    }

    pub fn identities(&self) -> Range<u64> {
        self.first_identity_key..self.end_key
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    /// The idx key, or the record's ordinal without an idx; `None` once a scan past damage
    /// has made ordinals unknowable.
    pub key: Option<u64>,
    /// Byte offset of the record's first part in the `.rec`.
    pub offset: u64,
    /// The class: the header's label, or the first of its label array (as insightface reads it).
    pub label: f32,
    /// The rest of the label array (empty when the record has a single label).
    pub extra_labels: Vec<f32>,
    pub id: u64,
    pub id2: u64,
    /// The encoded image exactly as stored.
    pub image: Vec<u8>,
    /// The header's layout puts this key among the identity records or past them: the
    /// record is kept as an image, and the contradiction reported.
    pub outside_layout: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRecord {
    pub key: Option<u64>,
    pub offset: u64,
    /// `key - first_identity_key` when the key is known.
    pub identity: Option<u64>,
    /// The image keys of this identity.
    pub images: Range<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub key: Option<u64>,
    pub offset: u64,
    pub reason: String,
    /// Where reading went on; `None` when nothing readable followed.
    pub resumed_at: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RecordItem {
    Image(ImageRecord),
    Identity(IdentityRecord),
    Skipped(Skipped),
}

#[derive(Debug, Clone, Default)]
pub enum IdxSource {
    /// The `.idx` beside the `.rec` (same stem), when it exists.
    #[default]
    Beside,
    Path(PathBuf),
    /// Scan the `.rec` alone.
    Ignore,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LayoutChoice {
    /// insightface's layout when record 0 is a header (see [`Header`]), else plain.
    #[default]
    Detect,
    /// Every record is an image, even a first record shaped like a header.
    Plain,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub idx: IdxSource,
    pub layout: LayoutChoice,
    /// Read the `property` file beside the `.rec` and check the header against it at open.
    pub property: bool,
    /// Bytes per read. 128 KiB (as `cat` uses) keeps the kernel's copy landing in cache,
    /// which measured 2-3x faster from the page cache than multi-MiB reads; the kernel's
    /// readahead keeps a disk streaming either way. Records longer than half of it are read
    /// straight into their own buffer.
    pub buffer_bytes: usize,
    /// A record claiming more is damage (guards memory against a corrupt length).
    pub max_record_bytes: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            idx: IdxSource::Beside,
            layout: LayoutChoice::Detect,
            property: true,
            buffer_bytes: 128 << 10,
            max_record_bytes: 64 << 20,
        }
    }
}

enum Raw {
    Record { key: Option<u64>, offset: u64, head: Vec<u8>, body: Vec<u8> },
    Skipped(Skipped),
    End,
}

/// Streams a `.rec`, yielding images, identity records and reports of skipped records.
pub struct RecordReader {
    path: PathBuf,
    stream: Stream,
    idx: Option<Vec<IdxEntry>>,
    cursor: usize,
    ordinal: Option<u64>,
    header: Option<Header>,
    property: Option<Property>,
    pending: VecDeque<RecordItem>,
    summary: Summary,
    max_record_bytes: usize,
    finished: bool,
}

impl RecordReader {
    pub fn open(path: &Path, options: &Options) -> Result<RecordReader> {
        let stream = Stream::open(path, options.buffer_bytes).with_context(|| format!("opening {}", path.display()))?;
        let idx = match &options.idx {
            IdxSource::Beside => Some(path.with_extension("idx")).filter(|p| p.exists()),
            IdxSource::Path(p) => Some(p.clone()),
            IdxSource::Ignore => None,
        };
        let idx = idx.map(|p| read_idx(&p, stream.len)).transpose()?;
        let property = if options.property { Property::beside(path)? } else { None };
        let mut reader = RecordReader {
            path: path.to_path_buf(),
            stream,
            idx,
            cursor: 0,
            ordinal: Some(0),
            header: None,
            property,
            pending: VecDeque::new(),
            summary: Summary::default(),
            max_record_bytes: options.max_record_bytes,
            finished: false,
        };
        reader.read_first(options.layout)?;
        Ok(reader)
    }

    /// Reads up to the first record to find insightface's header in record 0; what is
    /// read and is not the header waits in `pending`.
    fn read_first(&mut self, layout: LayoutChoice) -> Result<()> {
        loop {
            let raw = self.next_raw().map_err(|e| self.io_error(e))?;
            if let Raw::Record { key: Some(0), offset, head, body } = &raw {
                let parsed = payload::parse_parts(head, body).ok();
                let header = parsed
                    .and_then(|p| payload::detect_header(&p, head.len() + body.len()))
                    .filter(|_| layout == LayoutChoice::Detect);
                if let Some(header) = header {
                    if let Some(property) = &self.property {
                        property
                            .check_header(&header)
                            .with_context(|| format!("{} (header record at offset {offset})", self.path.display()))?;
                    }
                    self.header = Some(header);
                    self.summary.header = Some(header);
                    return Ok(());
                }
            }
            let first_record = !matches!(raw, Raw::Skipped(_));
            let item = self.item(raw);
            self.pending.extend(item);
            if first_record {
                return Ok(());
            }
        }
    }

    pub fn header(&self) -> Option<Header> {
        self.header
    }

    /// The idx entries in file order, when an idx is used.
    pub fn idx(&self) -> Option<&[IdxEntry]> {
        self.idx.as_deref()
    }

    pub fn property(&self) -> Option<Property> {
        self.property
    }

    /// What has been read so far.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// Checks what was read against the `property` file (call after iterating); warnings
    /// are returned, mismatches that would break training are errors.
    pub fn check_property(&self) -> Result<Vec<String>> {
        match &self.property {
            Some(p) => {
                p.check(&self.summary).with_context(|| format!("{} against its property file", self.path.display()))
            }
            None => Ok(Vec::new()),
        }
    }

    fn read_frame(&mut self, limit: Limit) -> std::io::Result<Frame> {
        frame::read_frame(&mut self.stream, limit, self.max_record_bytes, payload::header_len)
    }

    fn io_error(&self, e: std::io::Error) -> anyhow::Error {
        anyhow!(e).context(format!("reading {} near offset {}", self.path.display(), self.stream.pos()))
    }

    fn next_raw(&mut self) -> std::io::Result<Raw> {
        if self.idx.is_some() {
            self.next_indexed()
        } else {
            self.next_scanned()
        }
    }

    fn next_scanned(&mut self) -> std::io::Result<Raw> {
        let limit = Limit { at: self.stream.len, what: "the end of the file" };
        let key = self.ordinal;
        match self.read_frame(limit)? {
            Frame::End => Ok(Raw::End),
            Frame::Record { offset, head, body } => {
                self.ordinal = key.map(|k| k + 1);
                Ok(Raw::Record { key, offset, head, body })
            }
            Frame::Damaged { offset, reason, next } => {
                let resumed_at = match next {
                    Next::At(at) => {
                        // The part there may start the next record or be the damaged one's
                        // tail: ordinals are unknowable from here, and records are named by
                        // offset rather than risk naming every later one wrongly.
                        self.stream.seek_to(at)?;
                        self.ordinal = None;
                        Some(at)
                    }
                    Next::ScanFrom(from) => {
                        self.ordinal = None;
                        scan(&mut self.stream, from, limit.at, self.max_record_bytes)?
                    }
                };
                Ok(Raw::Skipped(Skipped { key, offset, reason, resumed_at }))
            }
        }
    }

    fn next_indexed(&mut self) -> std::io::Result<Raw> {
        let entries = self.idx.as_deref().unwrap_or_default();
        let (pos, len) = (self.stream.pos(), self.stream.len);
        let Some(&entry) = entries.get(self.cursor) else {
            if pos >= len {
                return Ok(Raw::End);
            }
            self.stream.seek_to(len)?;
            let reason = format!("{} bytes after the last indexed record are not in the idx", len - pos);
            return Ok(Raw::Skipped(Skipped { key: None, offset: pos, reason, resumed_at: None }));
        };
        let skip = |reason: String| {
            Ok(Raw::Skipped(Skipped { key: Some(entry.key), offset: entry.offset, reason, resumed_at: None }))
        };
        if entry.offset >= len {
            self.cursor += 1;
            return skip(format!("the idx puts it at offset {}, past the end of the file ({len} bytes)", entry.offset));
        }
        if entry.offset % 4 != 0 {
            self.cursor += 1;
            return skip(format!(
                "the idx puts it at offset {}, which is not 4-aligned, so no record starts there",
                entry.offset
            ));
        }
        if entry.offset < pos {
            self.cursor += 1;
            return skip(format!(
                "the idx puts it at offset {}, inside the record read before it (which ends at {pos})",
                entry.offset
            ));
        }
        if entry.offset > pos {
            self.stream.seek_to(entry.offset)?;
            let reason =
                format!("{} bytes before the record with key {} are not in the idx", entry.offset - pos, entry.key);
            return Ok(Raw::Skipped(Skipped { key: None, offset: pos, reason, resumed_at: Some(entry.offset) }));
        }
        self.cursor += 1;
        let limit = match entries.get(self.cursor) {
            Some(next) if next.offset < len => Limit { at: next.offset, what: "the next indexed record" },
            _ => Limit { at: len, what: "the end of the file" },
        };
        match self.read_frame(limit)? {
            Frame::Record { offset, head, body } => Ok(Raw::Record { key: Some(entry.key), offset, head, body }),
            Frame::End => skip("the idx entry points at no data".to_string()),
            Frame::Damaged { offset, reason, .. } => {
                self.stream.seek_to(limit.at)?;
                let resumed_at = (limit.at < len).then_some(limit.at);
                Ok(Raw::Skipped(Skipped { key: Some(entry.key), offset, reason, resumed_at }))
            }
        }
    }

    /// Turns a raw record into what it is in this set's layout, and counts it.
    fn item(&mut self, raw: Raw) -> Option<RecordItem> {
        let item = match raw {
            Raw::End => {
                self.finished = true;
                return None;
            }
            Raw::Skipped(s) => RecordItem::Skipped(s),
            Raw::Record { key, offset, head, body } => self.classify(key, offset, head, body),
        };
        self.summary.count(&item);
        Some(item)
    }

    fn classify(&self, key: Option<u64>, offset: u64, head: Vec<u8>, body: Vec<u8>) -> RecordItem {
        let skipped = |reason: String| RecordItem::Skipped(Skipped { key, offset, reason, resumed_at: None });
        let parsed = match payload::parse_parts(&head, &body) {
            Ok(p) => p,
            Err(reason) => return skipped(reason),
        };
        let total = head.len() + body.len();
        let range = payload::range_record(&parsed, total);
        // A record the layout calls an identity but that holds an image (or a key past the
        // layout) contradicts record 0: it is kept as the image it is, and counted.
        let (is_identity, outside_layout) = match (self.header, key) {
            (None, _) => (false, false),
            (Some(h), Some(k)) if h.images().contains(&k) => (false, false),
            (Some(h), Some(k)) if h.identities().contains(&k) => {
                let image = range.is_none() && parsed.has_image(total);
                (!image, image)
            }
            (Some(_), Some(_)) => (range.is_some(), range.is_none()),
            (Some(_), None) => (range.is_some(), false),
        };
        if is_identity {
            let Some((first_image, end_image)) = range else {
                return skipped(format!(
                    "expected an identity record [first image, end] but found flag {} with {} image bytes",
                    parsed.flag,
                    total - parsed.image_start
                ));
            };
            let identity = key.zip(self.header).map(|(k, h)| k - h.first_identity_key);
            return RecordItem::Identity(IdentityRecord { key, offset, identity, images: first_image..end_image });
        }
        if !parsed.has_image(total) {
            return skipped("the record holds no image bytes".to_string());
        }
        let label = parsed.class();
        let extra_labels = parsed.labels.get(1..).unwrap_or_default().to_vec();
        let (id, id2) = (parsed.id, parsed.id2);
        let image = payload::into_image(head, body, parsed.image_start);
        RecordItem::Image(ImageRecord { key, offset, label, extra_labels, id, id2, image, outside_layout })
    }
}

impl Iterator for RecordReader {
    type Item = Result<RecordItem>;

    fn next(&mut self) -> Option<Result<RecordItem>> {
        if let Some(item) = self.pending.pop_front() {
            return Some(Ok(item));
        }
        if self.finished {
            return None;
        }
        match self.next_raw() {
            Ok(raw) => self.item(raw).map(Ok),
            Err(e) => {
                self.finished = true;
                Some(Err(self.io_error(e)))
            }
        }
    }
}
