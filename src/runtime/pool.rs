//! Buffer pool: intermediate tensors return their buffers here when dropped, and the next
//! tensor of the same size class takes one instead of allocating. Reuse is safe without
//! fences: GPU work runs in recording order, and buffers are only written by recorded
//! commands or at creation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::Result;
use crate::runtime::buffer::Buffer;
use crate::runtime::context::lock;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes of every buffer the pool has created and still holds (live or free).
    pub allocated_bytes: u64,
    /// Bytes held by live tensors now.
    pub live_bytes: u64,
    /// The most bytes live at once since the last [`BufferPool::reset_peak`].
    pub peak_live_bytes: u64,
}

#[derive(Default)]
pub struct BufferPool {
    /// Free buffers by (releasing thread, size class). A tensor dropped while its recorder is
    /// still open goes back at once, so the same pass reuses it (commands run in recording
    /// order); another thread's recorder must not get it, since the first recorder's commands
    /// that still write it may run after the second's.
    free: HashMap<(std::thread::ThreadId, u64), Vec<Buffer>>,
    stats: PoolStats,
}

/// A buffer on loan from the pool; goes back on drop.
pub struct PooledBuffer {
    buffer: Option<Buffer>,
    class: u64,
    pool: Arc<Mutex<BufferPool>>,
}

/// Round up to a size class (four per octave, at most 19% slack) so that buffers of nearby
/// sizes share a class.
fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(256).next_multiple_of(256);
    let octave = 1u64 << (63 - bytes.leading_zeros());
    let step = (octave / 4).max(256);
    bytes.next_multiple_of(step)
}

impl BufferPool {
    /// A free buffer of `bytes`' size class, or a new one from `create` (given the class size).
    pub fn acquire(
        pool: &Arc<Mutex<BufferPool>>,
        bytes: u64,
        create: impl FnOnce(u64) -> Result<Buffer>,
    ) -> Result<PooledBuffer> {
        let class = size_class(bytes);
        let reused = lock(pool)
            .free
            .get_mut(&(std::thread::current().id(), class))
            .and_then(Vec::pop);
        Ok(match reused {
            Some(b) => Self::lend(pool, b, class, false),
            None => Self::lend(pool, create(class)?, class, true),
        })
    }

    /// A new buffer holding `data`, written by `create` (given the class size and the data).
    pub fn create_init(
        pool: &Arc<Mutex<BufferPool>>,
        data: &[u8],
        create: impl FnOnce(u64, &[u8]) -> Result<Buffer>,
    ) -> Result<PooledBuffer> {
        let class = size_class(data.len() as u64);
        Ok(Self::lend(pool, create(class, data)?, class, true))
    }

    /// Count `buffer` live (and allocated, when `created`) and hand it out.
    fn lend(
        pool: &Arc<Mutex<BufferPool>>,
        buffer: Buffer,
        class: u64,
        created: bool,
    ) -> PooledBuffer {
        {
            let mut p = lock(pool);
            if created {
                p.stats.allocated_bytes += class;
            }
            p.note_live(class as i64);
        }
        PooledBuffer {
            buffer: Some(buffer),
            class,
            pool: pool.clone(),
        }
    }

    fn note_live(&mut self, delta: i64) {
        self.stats.live_bytes = (self.stats.live_bytes as i64 + delta) as u64;
        self.stats.peak_live_bytes = self.stats.peak_live_bytes.max(self.stats.live_bytes);
    }

    pub fn stats(&self) -> PoolStats {
        self.stats
    }

    pub fn reset_peak(&mut self) {
        self.stats.peak_live_bytes = self.stats.live_bytes;
    }

    /// Drop every free buffer (e.g. after a large run, to give memory back).
    pub fn trim(&mut self) {
        let freed: u64 = self
            .free
            .iter()
            .map(|((_, class), v)| class * v.len() as u64)
            .sum();
        self.free.clear();
        self.stats.allocated_bytes -= freed;
    }
}

impl PooledBuffer {
    pub fn buffer(&self) -> &Buffer {
        self.buffer.as_ref().expect("buffer present until drop")
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            let mut p = lock(&self.pool);
            p.note_live(-(self.class as i64));
            p.free
                .entry((std::thread::current().id(), self.class))
                .or_default()
                .push(buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_cover_and_bound_slack() {
        for bytes in [
            1u64,
            255,
            256,
            257,
            1000,
            4096,
            5000,
            1 << 20,
            (1 << 20) + 1,
            123_456_789,
        ] {
            let c = size_class(bytes);
            assert!(c >= bytes, "{bytes} -> {c}");
            assert!(c.is_multiple_of(256));
            assert!(
                (c as f64) <= (bytes.max(256) as f64) * 1.25 + 256.0,
                "{bytes} -> {c}"
            );
        }
    }
}
