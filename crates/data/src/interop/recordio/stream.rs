//! A forward-only file reader with one large buffer that knows its absolute position, so
//! the framing code can peek at a part header before deciding to consume it and jump
//! ahead cheaply when resynchronising.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

pub(crate) struct Stream {
    file: File,
    buf: Box<[u8]>,
    lo: usize,
    hi: usize,
    /// File offset of `buf[lo]`.
    pos: u64,
    /// File length when opened; lengths are judged plausible against it.
    pub len: u64,
}

impl Stream {
    pub fn open(path: &Path, capacity: usize) -> io::Result<Stream> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let capacity = capacity.max(64 << 10);
        Ok(Stream { file, buf: vec![0; capacity].into_boxed_slice(), lo: 0, hi: 0, pos: 0, len })
    }

    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// The buffered bytes from the current position, at least `n` (≤ capacity) of them
    /// unless the file ends first.
    pub fn peek(&mut self, n: usize) -> io::Result<&[u8]> {
        if self.hi - self.lo < n {
            self.buf.copy_within(self.lo..self.hi, 0);
            self.hi -= self.lo;
            self.lo = 0;
            while self.hi < n.min(self.buf.len()) {
                match self.file.read(&mut self.buf[self.hi..]) {
                    Ok(0) => break,
                    Ok(got) => self.hi += got,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(&self.buf[self.lo..self.hi])
    }

    /// Drops `n` bytes already returned by `peek`.
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.hi - self.lo);
        self.lo += n;
        self.pos += n as u64;
    }

    /// Appends the next `n` bytes to `out`; large reads bypass the buffer.
    pub fn read_into(&mut self, out: &mut Vec<u8>, n: usize) -> io::Result<()> {
        let mut rest = n;
        while rest > 0 {
            let buffered = self.hi - self.lo;
            if buffered == 0 && rest >= self.buf.len() / 2 {
                let got = (&mut self.file).take(rest as u64).read_to_end(out)?;
                self.pos += got as u64;
                if got < rest {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file became shorter while being read",
                    ));
                }
                return Ok(());
            }
            let avail = if buffered == 0 { self.peek(rest)?.len() } else { buffered };
            if avail == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file became shorter while being read"));
            }
            let take = avail.min(rest);
            out.extend_from_slice(&self.buf[self.lo..self.lo + take]);
            self.consume(take);
            rest -= take;
        }
        Ok(())
    }

    /// Moves forward to `target` (never backward: callers only resume ahead of themselves).
    pub fn seek_to(&mut self, target: u64) -> io::Result<()> {
        if target < self.pos {
            return Err(io::Error::other(format!("internal: backward seek from {} to {target}", self.pos)));
        }
        let ahead = target - self.pos;
        if ahead <= (self.hi - self.lo) as u64 {
            self.consume(ahead as usize);
        } else {
            self.file.seek(SeekFrom::Start(target))?;
            self.lo = 0;
            self.hi = 0;
            self.pos = target;
        }
        Ok(())
    }
}
