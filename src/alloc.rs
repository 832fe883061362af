//! Settings of the global allocator (mimalloc, set in `main.rs`).
//!
//! mimalloc hands memory that has been free for `purge_delay` back to the kernel (1 s by
//! default). The dataflow frees and reallocates large buffers (a step's updates, merged
//! batches) seconds apart, so that memory was handed back and then faulted in and zeroed
//! again: the kernel's page zeroing was ~6 % of a replay's perf samples. Kept 10 s, a
//! replay runs ~5 % faster (5M lines, 2 workers: 18.66 → 17.74 s) for ~7 % more peak RSS
//! (550 → 589 MB); memory still goes back 10 s after a burst. `MIMALLOC_PURGE_DELAY`, when
//! set, wins.

use std::ffi::c_long;

/// `mi_option_purge_delay` in mimalloc's `mimalloc.h` (v3: the option before
/// `mi_option_use_numa_nodes`, which the bindings name, 16).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = libmimalloc_sys::mi_option_use_numa_nodes - 1;

/// The purge delay this engine runs with, in milliseconds.
pub const PURGE_DELAY_MS: c_long = 10_000;

/// Applies [`PURGE_DELAY_MS`] unless `MIMALLOC_PURGE_DELAY` is set. Call once, first thing.
pub fn tune() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's option values (a plain store); any value is valid.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, PURGE_DELAY_MS) };
    }
}

/// The purge delay mimalloc uses now, in milliseconds.
pub fn purge_delay_ms() -> c_long {
    // SAFETY: reads one of mimalloc's option values.
    unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_set_is_the_purge_delay() {
        // mimalloc v3's purge delay is 1000 ms unless the environment says otherwise: the
        // option number names it (no other option defaults to 1000).
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(purge_delay_ms(), 1000);
        }
        tune();
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(purge_delay_ms(), PURGE_DELAY_MS);
        }
    }
}
