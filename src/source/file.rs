//! File and stdin source, optionally following a growing file (`tail -f`).
//!
//! With several workers, each worker opens the file itself and keeps every `peers`-th line
//! (`line_no % peers == index`), so parsing is spread over the workers with no exchange.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use bytes::{Buf, BytesMut};

use super::{LineSource, Poll, RawLine};
use crate::format::LogFormat;

/// Longest line kept whole; longer lines are cut here and dead-lettered as oversize.
const MAX_KEEP: usize = 1 << 20;
/// Size of a newly allocated read buffer.
const READ_CHUNK: usize = 1 << 20;
/// Most bytes asked of the file per read: the space is zeroed first, so a followed file polled
/// every millisecond must not zero a whole chunk each time.
const MAX_READ: usize = 128 << 10;

pub struct FileSource {
    reader: Box<dyn Read + Send>,
    /// Read and not yet taken: the lines handed out share this buffer's memory (a line is a
    /// slice of the chunk it was read into, not a copy of its own).
    pending: BytesMut,
    /// How much of `pending` is known to hold no newline.
    scanned: usize,
    /// The rest of an oversize line (up to its newline) is being skipped.
    skipping: bool,
    path: Option<PathBuf>,
    follow: bool,
    line_no: u64,
    /// Bytes consumed so far (to notice truncation of a followed file).
    offset: u64,
    shard: (u64, u64),
    format: LogFormat,
}

impl FileSource {
    /// Opens `path` (`-` = stdin). `shard = (index, peers)` selects this worker's lines.
    pub fn open(
        path: &Path,
        format: LogFormat,
        follow: bool,
        shard: (usize, usize),
    ) -> std::io::Result<FileSource> {
        let (reader, path): (Box<dyn Read + Send>, Option<PathBuf>) = if path == Path::new("-") {
            (Box::new(std::io::stdin()), None)
        } else {
            (Box::new(File::open(path)?), Some(path.to_path_buf()))
        };
        Ok(FileSource {
            reader,
            pending: BytesMut::new(),
            scanned: 0,
            skipping: false,
            path,
            follow,
            line_no: 0,
            offset: 0,
            shard: (shard.0 as u64, shard.1.max(1) as u64),
            format,
        })
    }

    /// Reopens a followed file that was truncated or replaced (log rotation).
    fn reopen_if_rotated(&mut self) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            let mut f = File::open(path)?;
            f.seek(SeekFrom::Start(0))?;
            self.reader = Box::new(f);
            self.offset = 0;
            self.pending.clear();
            self.scanned = 0;
            self.skipping = false;
        }
        Ok(())
    }

    /// Appends what the file has now to `pending`; 0 at its end. The read goes straight into
    /// the buffer the lines are taken from: no copy of the line bytes between the two.
    fn fill(&mut self) -> std::io::Result<usize> {
        let start = self.pending.len();
        if self.pending.capacity() - start < MAX_READ {
            // Lines handed out still hold the old chunk: a new one is allocated, and only the
            // unfinished line is copied into it.
            self.pending.reserve(READ_CHUNK);
        }
        let room = (self.pending.capacity() - start).min(MAX_READ);
        self.pending.resize(start + room, 0);
        let read = loop {
            match self.reader.read(&mut self.pending[start..]) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        self.pending.truncate(start + *read.as_ref().unwrap_or(&0));
        read
    }

    /// Takes the first `len` bytes of `pending` as the next line: kept if it is this
    /// worker's, dropped otherwise.
    fn take_line(&mut self, len: usize, buf: &mut Vec<RawLine>, got: &mut usize) {
        self.scanned = 0;
        self.offset += len as u64;
        self.line_no += 1;
        if self.line_no % self.shard.1 == self.shard.0 {
            let bytes = self.pending.split_to(len).freeze();
            buf.push(RawLine {
                no: self.line_no,
                bytes,
                format: self.format,
                replay: false,
                slot: 0,
            });
            *got += 1;
        } else {
            self.pending.advance(len);
        }
    }
}

impl LineSource for FileSource {
    fn poll(&mut self, buf: &mut Vec<RawLine>, max: usize) -> std::io::Result<Poll> {
        let mut got = 0;
        while got < max {
            if self.skipping {
                // The rest of an oversize line, through its newline, is dropped.
                match memchr::memchr(b'\n', &self.pending) {
                    Some(pos) => {
                        self.pending.advance(pos + 1);
                        self.offset += pos as u64 + 1;
                        self.skipping = false;
                    }
                    None => {
                        self.offset += self.pending.len() as u64;
                        self.pending.clear();
                        if self.fill()? == 0 {
                            return self.at_end(buf, got);
                        }
                    }
                }
                continue;
            }
            // A line is whole when its newline is within the first MAX_KEEP + 1 bytes.
            let window = self.pending.len().min(MAX_KEEP + 1);
            if let Some(pos) = memchr::memchr(b'\n', &self.pending[self.scanned..window]) {
                self.take_line(self.scanned + pos + 1, buf, &mut got);
                continue;
            }
            self.scanned = window;
            if window > MAX_KEEP {
                // Oversize: keep the head (it will be dead-lettered), skip to the newline.
                self.take_line(window, buf, &mut got);
                self.skipping = true;
                continue;
            }
            if self.fill()? == 0 {
                return self.at_end(buf, got);
            }
        }
        Ok(Poll::Data)
    }
}

impl FileSource {
    /// End of what is there now. A followed file keeps an unterminated tail for later;
    /// otherwise the tail is the last line.
    fn at_end(&mut self, buf: &mut Vec<RawLine>, mut got: usize) -> std::io::Result<Poll> {
        if self.follow {
            self.reopen_if_rotated()?;
        } else if !self.pending.is_empty() && !self.skipping {
            self.take_line(self.pending.len(), buf, &mut got);
        }
        Ok(match got {
            0 if self.follow => Poll::Idle,
            0 => Poll::Eof,
            _ => Poll::Data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn shards_follows_and_reopens_a_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        std::fs::write(&p, "l1\nl2\nl3\nl4").unwrap();
        let mut s = FileSource::open(&p, LogFormat::Cs, false, (1, 2)).unwrap();
        let mut buf = Vec::new();
        assert_eq!(s.poll(&mut buf, 100).unwrap(), Poll::Data);
        let nums: Vec<u64> = buf.iter().map(|l| l.no).collect();
        assert_eq!(nums, vec![1, 3]);

        let mut f = FileSource::open(&p, LogFormat::Cs, true, (0, 1)).unwrap();
        let mut buf = Vec::new();
        f.poll(&mut buf, 100).unwrap();
        assert_eq!(buf.len(), 3, "the unterminated tail waits for its newline");
        assert_eq!(f.poll(&mut buf, 100).unwrap(), Poll::Idle);
        let mut w = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        w.write_all(b"-end\nl5\n").unwrap();
        buf.clear();
        assert_eq!(f.poll(&mut buf, 100).unwrap(), Poll::Data);
        assert_eq!(&buf[0].bytes[..], b"l4-end\n");
        assert_eq!(buf.len(), 2);

        w.write_all(b"unfinished").unwrap();
        assert_eq!(f.poll(&mut buf, 100).unwrap(), Poll::Idle);
        // Rotated: the file is shorter than what was read. It is read again from its start,
        // and the unfinished tail of the old one is dropped.
        std::fs::write(&p, "new\n").unwrap();
        buf.clear();
        assert_eq!(f.poll(&mut buf, 100).unwrap(), Poll::Idle);
        assert_eq!(f.poll(&mut buf, 100).unwrap(), Poll::Data);
        let lines: Vec<&[u8]> = buf.iter().map(|l| &l.bytes[..]).collect();
        assert_eq!(lines, [&b"new\n"[..]]);
    }

    #[test]
    fn lines_across_buffer_refills_and_oversize_lines_split_the_same_way_for_every_shard() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.log");
        let mut text = Vec::new();
        let mut lines = Vec::new();
        for i in 0..3000 {
            let line = if i == 1500 {
                vec![b'x'; MAX_KEEP + 100]
            } else {
                format!("{i} {}", "y".repeat(i % 1400)).into_bytes()
            };
            text.extend_from_slice(&line);
            text.push(b'\n');
            lines.push(line);
        }
        std::fs::write(&p, &text).unwrap();
        let read_all = |shard: (usize, usize)| {
            let mut s = FileSource::open(&p, LogFormat::Cs, false, shard).unwrap();
            let mut out = Vec::new();
            while s.poll(&mut out, 64).unwrap() == Poll::Data {}
            out
        };
        let whole = read_all((0, 1));
        assert_eq!(whole.len(), 3000);
        for (i, raw) in whole.iter().enumerate() {
            assert_eq!(raw.no, i as u64 + 1);
            if i == 1500 {
                assert!(raw.bytes.len() > MAX_KEEP && raw.bytes.len() < lines[i].len());
            } else {
                assert_eq!(&raw.bytes[..raw.bytes.len() - 1], &lines[i][..], "line {i}");
            }
        }
        let mut sharded: Vec<(u64, Vec<u8>)> = (0..3)
            .flat_map(|k| read_all((k, 3)))
            .map(|raw| (raw.no, raw.bytes.to_vec()))
            .collect();
        sharded.sort();
        let whole: Vec<(u64, Vec<u8>)> = whole
            .into_iter()
            .map(|r| (r.no, r.bytes.to_vec()))
            .collect();
        assert_eq!(sharded, whole);
    }
}
