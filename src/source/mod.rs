//! Sources of log lines. A source hands out raw lines (bytes) with where they came from; the
//! engine parses them. `file` reads a file or stdin, `kafka` a consumer's share of partitions.

pub mod file;
pub mod kafka;

pub use file::{FileSource, SharedLog};
pub use kafka::KafkaSource;

use crate::format::LogFormat;

/// One raw line and where it came from.
#[derive(Clone, Debug)]
pub struct RawLine {
    /// 1-based line number in a file; the offset in a Kafka partition.
    pub no: u64,
    /// The line as read, newline included (a slice of the source's read buffer).
    pub bytes: bytes::Bytes,
    pub format: LogFormat,
    /// Re-read after a restart to rebuild the window: its outputs were already written.
    pub replay: bool,
    /// Which of the source's partitions it came from (0 for files).
    pub slot: u32,
}

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
