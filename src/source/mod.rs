//! Sources of log lines. A source hands out raw lines (bytes) with their line numbers; the
//! engine parses them. Kafka (a later connector) implements the same [`LineSource`] trait.

pub mod file;

pub use file::FileSource;

/// One raw line and where it came from (1-based line number within the source).
pub type RawLine = (u64, Vec<u8>);

/// What a poll of a source produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poll {
    /// Lines were appended to the buffer (possibly fewer than asked).
    Data,
    /// Nothing now; more may come (a followed file, a live stream).
    Idle,
    /// The source is exhausted.
    Eof,
}

/// A source of raw log lines.
pub trait LineSource {
    /// Appends up to `max` lines to `buf`.
    fn poll(&mut self, buf: &mut Vec<RawLine>, max: usize) -> std::io::Result<Poll>;
}
