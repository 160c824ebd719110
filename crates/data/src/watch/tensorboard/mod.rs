//! TensorBoard event files: a writer for scalar curves (what rank 0 logs while training)
//! and a reader that checks every CRC (tests, and tools that read runs back).
//!
//! A file is a sequence of TFRecords (see `record`), each holding one `Event` protobuf
//! (see `proto`); the first event carries only the format version.

mod proto;
mod record;
mod scalars;
#[cfg(test)]
mod tests;

pub use scalars::{tag_of, RunScalars};

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// What TensorBoard expects in the first event of a file.
pub const FILE_VERSION: &str = "brain.Event:2";

/// One decoded event. Summary values that are not plain scalars are left out. TensorBoard
/// reads one of `file_version`, `scalars` and `restart` per event (a protobuf `oneof`);
/// the writer's methods never mix them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Event {
    pub wall_time: f64,
    pub step: i64,
    pub file_version: Option<String>,
    /// A `SessionLog` START: training restarted from `step - 1` (a resume or a rollback).
    /// TensorBoard's Python loader then drops what it holds at steps >= `step`.
    pub restart: bool,
    pub scalars: Vec<Scalar>,
}

impl Event {
    fn head(&self) -> proto::Head<'_> {
        proto::Head {
            wall_time: self.wall_time,
            step: self.step,
            file_version: self.file_version.as_deref(),
            restart: self.restart,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    pub tag: String,
    /// TensorBoard stores scalars as f32.
    pub value: f32,
}

/// Appends events to a new file in a log directory. Writes are buffered: call `flush`
/// when TensorBoard should see them (dropping the writer flushes too, ignoring errors).
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
    /// Reused encoding buffer, so a scalar costs no allocation.
    scratch: Vec<u8>,
}

/// Distinguishes writers opened by one process within the same second.
static NEXT_FILE: AtomicU64 = AtomicU64::new(0);

impl EventWriter {
    /// Creates `dir` if needed and a file named
    /// `events.out.tfevents.<unix secs>.<hostname>.<pid>.<counter>` in it. The file is
    /// opened with create_new, so an existing file (an earlier run, another process) is
    /// never reused: a resumed run gets a file of its own, which TensorBoard merges.
    pub fn create(dir: &Path) -> Result<EventWriter> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating TensorBoard directory {}", dir.display()))?;
        let now = now();
        let (host, pid) = (hostname(), std::process::id());
        for _ in 0..1000 {
            let n = NEXT_FILE.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!("events.out.tfevents.{}.{host}.{pid}.{n}", now as u64));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
            {
                Ok(file) => {
                    let mut w = EventWriter {
                        path,
                        out: BufWriter::with_capacity(64 << 10, file),
                        scratch: Vec::with_capacity(256),
                    };
                    w.write(&Event { wall_time: now, file_version: Some(FILE_VERSION.into()), ..Event::default() })?;
                    return Ok(w);
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("creating TensorBoard event file {}", path.display())),
            }
        }
        bail!("no free TensorBoard event file name in {} after 1000 tries", dir.display())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One scalar at the current time.
    pub fn scalar(&mut self, tag: &str, step: i64, value: f64) -> Result<()> {
        self.scalar_at(tag, step, value, now())
    }

    /// One scalar at an explicit wall time (unix seconds), e.g. the time of a log line.
    pub fn scalar_at(&mut self, tag: &str, step: i64, value: f64, wall_time: f64) -> Result<()> {
        self.scalars_at(step, &[(tag, value)], wall_time)
    }

    /// Several scalars of one step in a single event (one record instead of one per tag).
    pub fn scalars_at(&mut self, step: i64, values: &[(&str, f64)], wall_time: f64) -> Result<()> {
        self.scratch.clear();
        let head = proto::Head { wall_time, step, file_version: None, restart: false };
        proto::encode_event(&mut self.scratch, &head, values.iter().map(|&(tag, v)| (tag, v as f32)));
        self.put()
    }

    /// Marks a restart (TensorFlow's `SessionLog.START`) at `step`, the first step run
    /// again. TensorBoard's Python loader (EventAccumulator) forgets every point at
    /// `step` and later when it reads this; its Rust loader, which ignores it, replaces
    /// such points per tag as the retried steps arrive.
    pub fn restart_at(&mut self, step: i64, wall_time: f64) -> Result<()> {
        self.write(&Event { wall_time, step, restart: true, ..Event::default() })
    }

    pub fn write(&mut self, ev: &Event) -> Result<()> {
        self.scratch.clear();
        let scalars = ev.scalars.iter().map(|s| (s.tag.as_str(), s.value));
        proto::encode_event(&mut self.scratch, &ev.head(), scalars);
        self.put()
    }

    fn put(&mut self) -> Result<()> {
        record::write_record(&mut self.out, &self.scratch)
            .with_context(|| format!("writing TensorBoard event file {}", self.path.display()))
    }

    /// Hands buffered events to the OS (no fsync: a lost tail only loses curve points).
    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().with_context(|| format!("writing TensorBoard event file {}", self.path.display()))
    }
}

/// Reads every event of one file, checking both CRCs of every record. Errors name the
/// file, the record number (from 0) and its byte offset.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading TensorBoard event file {}", path.display()))?;
    let records = record::split_records(&bytes).map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            proto::decode_event(r.data).map_err(|e| {
                anyhow::anyhow!("{}: record {i} at byte offset {}: bad Event protobuf: {e:#}", path.display(), r.offset)
            })
        })
        .collect()
}

pub(crate) fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The host name as TensorBoard's own writers put it in file names, with anything that
/// could not be part of a file name replaced. Read from procfs (no libc call, no unsafe
/// code); "localhost" where it is unavailable.
fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String =
        raw.trim().chars().map(|c| if c.is_ascii_alphanumeric() || "-._".contains(c) { c } else { '_' }).collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}
