//! What the loader hands out: N images as one planar u8 NCHW buffer (RGB, unflipped), each
//! image's flip flag, and each head's target. Flip and normalisation happen on the device
//! (`trainer-torch`'s `model::input`), so a batch is a quarter of the f32 bytes it was.
//! Buffers travel in a ring: the consumer hands them back (`Loader::recycle`) and workers
//! refill them, so the steady state allocates nothing.

use crate::codec::normalise::slot_f32;
use crossbeam_channel::{bounded, Receiver, Sender};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// N images as one NCHW u8 buffer plus each head's target (-1: none for this record).
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// N×3×S×S, RGB, 0..=255, not flipped.
    pub images: Vec<u8>,
    /// Per image: mirror its columns before use (the training loader's random flip).
    pub flips: Vec<bool>,
    /// Identities (the FR head's targets).
    pub labels: Vec<i64>,
    /// -1 unknown.
    pub genders: Vec<i64>,
    /// Age buckets as stored, -1 unknown (the model clips to its last bucket).
    pub ages: Vec<i64>,
    pub n: usize,
    pub size: usize,
    /// Corrupt records met while building this batch (replaced, or dropped in sequential mode).
    pub skipped: usize,
    /// View record index of each image (after replacements).
    pub records: Vec<u32>,
    /// Encoded payload bytes read for this batch.
    pub bytes: usize,
}

impl Batch {
    /// The images flipped and normalised on the host, N×3×S×S f32: the same bits as the
    /// device path, for tools and tests that want floats in host memory.
    pub fn images_f32(&self) -> Vec<f32> {
        let slot = 3 * self.size * self.size;
        let mut out = vec![0f32; self.images.len()];
        for (i, (src, dst)) in self.images.chunks_exact(slot).zip(out.chunks_exact_mut(slot)).enumerate() {
            slot_f32(src, self.size, self.flips.get(i).copied().unwrap_or(false), dst);
        }
        out
    }
}

/// Image buffers handed back by the consumer, reused by the workers; counts the buffers it
/// had to allocate (or grow) because none came back in time.
#[derive(Clone)]
pub(crate) struct BufferRing {
    back: Sender<Vec<u8>>,
    spare: Receiver<Vec<u8>>,
    allocated: Arc<AtomicU64>,
}

impl BufferRing {
    /// A ring that holds up to `spares` returned buffers (more are dropped).
    pub fn new(spares: usize) -> BufferRing {
        let (back, spare) = bounded(spares.max(1));
        BufferRing { back, spare, allocated: Arc::new(AtomicU64::new(0)) }
    }

    /// A buffer of `len` bytes: a returned one when there is one (its bytes are stale: the
    /// caller overwrites or truncates them), else a new one.
    pub fn take(&self, len: usize) -> Vec<u8> {
        let mut buf = self.spare.try_recv().unwrap_or_default();
        if buf.capacity() < len {
            self.allocated.fetch_add(1, Ordering::Relaxed);
        }
        buf.resize(len, 0);
        buf
    }

    pub fn give(&self, buf: Vec<u8>) {
        let _ = self.back.try_send(buf);
    }

    /// Buffers allocated or grown so far.
    pub fn allocated(&self) -> u64 {
        self.allocated.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_floats_are_the_normalised_images_with_flagged_rows_mirrored() {
        let size = 2;
        let b = Batch {
            images: (0..24).map(|i| i * 10).collect(),
            flips: vec![false, true],
            n: 2,
            size,
            ..Batch::default()
        };
        let f = b.images_f32();
        let norm = |v: u8| (v as f32 - 127.5) / 127.5;
        assert_eq!(f[..2], [norm(0), norm(10)]);
        assert_eq!(f[12..14], [norm(130), norm(120)], "image 1 is mirrored");
    }

    #[test]
    fn a_returned_buffer_is_reused_without_allocating() {
        let ring = BufferRing::new(2);
        let a = ring.take(100);
        let ptr = a.as_ptr();
        ring.give(a);
        let b = ring.take(80);
        assert_eq!((b.as_ptr(), b.len(), ring.allocated()), (ptr, 80, 1));
        ring.give(b);
        let c = ring.take(100);
        assert_eq!(c.as_ptr(), ptr, "a truncated buffer grows back within its capacity");
        assert_eq!(ring.allocated(), 1);
        ring.take(10);
        assert_eq!(ring.allocated(), 2, "nothing was returned: a new buffer");
    }
}
