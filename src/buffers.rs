//! Byte buffers kept for reuse across threads: the file source's read buffers and the output
//! files' batches. A fresh buffer of a few hundred KiB is often memory the allocator had
//! handed back to the kernel, which faults it in and zeroes it again; a kept one is warm.

use std::sync::Mutex;

/// At most `keep` spare buffers; what they are for (size, state) is the caller's business.
pub struct BufferPool {
    keep: usize,
    spare: Mutex<Vec<Vec<u8>>>,
}

impl BufferPool {
    pub fn new(keep: usize) -> BufferPool {
        BufferPool {
            keep,
            spare: Mutex::new(Vec::new()),
        }
    }

    /// A kept buffer, if there is one.
    pub fn take(&self) -> Option<Vec<u8>> {
        self.spare.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    /// Keeps `buf` for a later [`Self::take`], unless the pool is full.
    pub fn keep(&self, buf: Vec<u8>) {
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < self.keep {
            spare.push(buf);
        }
    }

    /// The lengths of the kept buffers.
    #[cfg(test)]
    pub fn lens(&self) -> Vec<usize> {
        let spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        spare.iter().map(Vec::len).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_at_most_its_number_and_gives_them_back() {
        let pool = BufferPool::new(2);
        assert!(pool.take().is_none());
        for n in [1, 2, 3] {
            pool.keep(vec![0; n]);
        }
        assert_eq!(pool.lens(), [1, 2]);
        assert_eq!(pool.take().map(|b| b.len()), Some(2));
        assert_eq!(pool.lens(), [1]);
    }
}
