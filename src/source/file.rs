//! File and stdin source, optionally following a growing file (`tail -f`).
//!
//! A process reads its log once ([`SharedLog`]): the first of its workers to need the next
//! chunk reads it, and every worker of the process splits the same chunks into lines and keeps
//! every `peers`-th (`line_no % peers == index`), so parsing is spread over the workers with no
//! exchange, and no byte is read (copied out of the kernel) twice. Lines are slices of the
//! chunk they were read into, not copies.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes, BytesMut};

use super::{LineSource, Poll, RawLine};
use crate::buffers::BufferPool;
use crate::format::LogFormat;

/// Longest line kept whole; longer lines are cut here and dead-lettered as oversize.
const MAX_KEEP: usize = 1 << 20;
/// Most bytes read from the file at once (one chunk). 256 KiB, not 1 MiB: the allocator
/// gives a 1 MiB chunk pages of its own and hands them back when the chunk is freed, so each
/// chunk was faulted in again, often as a huge page the kernel zeroes (`clear_page_erms` was
/// 1.6–5 % of a replay's perf samples with 1 MiB chunks, under 0.8 % with 256 KiB).
const READ_CHUNK: usize = 1 << 18;

/// What a reader of the log gets next.
#[derive(Clone)]
enum Chunk {
    /// The next bytes of the log.
    Data(Arc<PooledChunk>),
    /// A followed file was truncated or replaced (log rotation): what follows is the new
    /// file from its start, and an unfinished line of the old one is dropped.
    Rotated,
}

/// Read buffers kept for reuse ([`PooledChunk`]). Fewer than a replay holds at once (a worker
/// holds a whole batch of its lines: ~60 chunks with 2 workers), but keeping every buffer
/// measured 3.5 % slower (BENCHMARKS.md, session 23).
const POOL_KEEP: usize = 16;

/// The buffers of chunks that every line of has been dropped, to read the next chunks into.
type ChunkPool = Arc<BufferPool>;

/// A chunk read straight into a buffer of [`READ_CHUNK`] bytes, which goes back to the pool
/// when the last line sliced from it is dropped. Allocating and copying every chunk instead
/// cost ~3 % of a replay's CPU (perf): a fresh 256 KiB allocation is often memory the
/// allocator had handed back, which the kernel faults in and zeroes again.
struct PooledChunk {
    buf: Vec<u8>,
    len: usize,
    pool: ChunkPool,
}

impl Drop for PooledChunk {
    fn drop(&mut self) {
        give_back(&self.pool, std::mem::take(&mut self.buf));
    }
}

/// Keeps `buf` for the next read if it is a read buffer (not the copy of a short read) and
/// the pool is not full.
fn give_back(pool: &ChunkPool, buf: Vec<u8>) {
    if buf.len() == READ_CHUNK {
        pool.keep(buf);
    }
}

/// Reads shorter than this (a followed file's few new lines) are copied out, so the read
/// buffer is reused at once and a chunk waiting for a slow reader holds only its bytes.
const SHORT_READ: usize = READ_CHUNK / 16;

/// One worker's handle on a chunk, the owner of the `Bytes` it splits lines from (a handle of
/// its own: the lines count their references there, not on one counter every worker's core
/// updates).
struct ChunkHandle(Arc<PooledChunk>);

impl AsRef<[u8]> for ChunkHandle {
    fn as_ref(&self) -> &[u8] {
        &self.0.buf[..self.0.len]
    }
}

/// One log (a file or stdin) read once for all the workers of a process: chunks are kept
/// until every worker has taken them.
pub struct SharedLog {
    /// A followed file (`tail -f`): its end is only the end of what is there now.
    follow: bool,
    state: Mutex<LogState>,
}

struct LogState {
    reader: Box<dyn Read + Send>,
    /// `None` for stdin.
    path: Option<PathBuf>,
    /// Bytes read from the current file (to notice its truncation).
    offset: u64,
    /// Buffers to read the next chunks into.
    pool: ChunkPool,
    /// Sequence number of `chunks[0]`.
    first: u64,
    chunks: VecDeque<Chunk>,
    /// Per reader, the sequence number of the chunk it takes next.
    next: Vec<u64>,
}

impl SharedLog {
    /// Opens `path` (`-` = stdin) for `readers` readers (the workers of this process that
    /// read it, numbered from 0).
    pub fn open(path: &Path, follow: bool, readers: usize) -> std::io::Result<Arc<SharedLog>> {
        let (reader, path): (Box<dyn Read + Send>, Option<PathBuf>) = if path == Path::new("-") {
            (Box::new(std::io::stdin()), None)
        } else {
            (Box::new(File::open(path)?), Some(path.to_path_buf()))
        };
        Ok(Arc::new(SharedLog {
            follow,
            state: Mutex::new(LogState {
                reader,
                path,
                offset: 0,
                pool: Arc::new(BufferPool::new(POOL_KEEP)),
                first: 0,
                chunks: VecDeque::new(),
                next: vec![0; readers.max(1)],
            }),
        }))
    }

    /// The next chunk for `reader`; `None` when nothing more is there now (at the end of a
    /// file that is not followed: for good).
    fn next(&self, reader: usize) -> std::io::Result<Option<Chunk>> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let seq = s.next[reader];
        let at = (seq - s.first) as usize;
        let chunk = match s.chunks.get(at) {
            Some(chunk) => chunk.clone(),
            None => match s.read(self.follow)? {
                Some(chunk) => {
                    s.chunks.push_back(chunk.clone());
                    chunk
                }
                None => return Ok(None),
            },
        };
        s.next[reader] += 1;
        // Drop what every reader has taken.
        let oldest = s.next.iter().copied().min().unwrap_or(0);
        while s.first < oldest && s.chunks.pop_front().is_some() {
            s.first += 1;
        }
        Ok(Some(chunk))
    }
}

impl LogState {
    /// Reads the next chunk from the log (`follow`: see [`SharedLog`]).
    fn read(&mut self, follow: bool) -> std::io::Result<Option<Chunk>> {
        let mut buf = self.pool.take().unwrap_or_else(|| vec![0; READ_CHUNK]);
        let n = loop {
            match self.reader.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        if n >= SHORT_READ {
            self.offset += n as u64;
            return Ok(Some(Chunk::Data(Arc::new(PooledChunk {
                buf,
                len: n,
                pool: self.pool.clone(),
            }))));
        }
        // Short or nothing: the buffer goes straight back to the pool.
        let short = buf[..n].to_vec();
        give_back(&self.pool, buf);
        if n > 0 {
            self.offset += n as u64;
            return Ok(Some(Chunk::Data(Arc::new(PooledChunk {
                buf: short,
                len: n,
                pool: self.pool.clone(),
            }))));
        }
        if follow && self.reopen_if_rotated()? {
            return Ok(Some(Chunk::Rotated));
        }
        Ok(None)
    }

    /// Reopens a followed file that was truncated or replaced (log rotation).
    fn reopen_if_rotated(&mut self) -> std::io::Result<bool> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if len >= self.offset {
            return Ok(false);
        }
        let mut f = File::open(path)?;
        f.seek(SeekFrom::Start(0))?;
        self.reader = Box::new(f);
        self.offset = 0;
        Ok(true)
    }
}

/// One worker's lines of a [`SharedLog`].
pub struct FileSource {
    log: Arc<SharedLog>,
    /// This worker's number among the readers of `log`.
    reader: usize,
    /// The part of the current chunk not split into lines yet.
    rest: Bytes,
    /// The start of a line that began in an earlier chunk.
    carry: BytesMut,
    /// The rest of an oversize line (up to its newline) is being skipped.
    skipping: bool,
    line_no: u64,
    shard: (u64, u64),
    format: LogFormat,
}

impl FileSource {
    /// Reader number `reader` of `log`, keeping the lines of `shard = (index, peers)`.
    pub fn reading(
        log: Arc<SharedLog>,
        reader: usize,
        format: LogFormat,
        shard: (usize, usize),
    ) -> FileSource {
        FileSource {
            log,
            reader,
            rest: Bytes::new(),
            carry: BytesMut::new(),
            skipping: false,
            line_no: 0,
            shard: (shard.0 as u64, shard.1.max(1) as u64),
            format,
        }
    }

    /// Counts the next line; true if it is this worker's.
    fn next_is_mine(&mut self) -> bool {
        self.line_no += 1;
        self.line_no % self.shard.1 == self.shard.0
    }

    fn keep(&self, bytes: Bytes, buf: &mut Vec<RawLine>) {
        buf.push(RawLine {
            no: self.line_no,
            bytes,
            format: self.format,
            replay: false,
            slot: 0,
        });
    }

    /// Ends the line held in `carry` with the first `len` bytes of `rest`, keeping it if it
    /// is this worker's. A line within one chunk is a slice of it, not a copy.
    fn end_line(&mut self, len: usize, buf: &mut Vec<RawLine>) -> bool {
        if !self.next_is_mine() {
            self.carry.clear();
            self.rest.advance(len);
            return false;
        }
        let bytes = if self.carry.is_empty() {
            self.rest.split_to(len)
        } else {
            self.carry.extend_from_slice(&self.rest[..len]);
            self.rest.advance(len);
            self.carry.split().freeze()
        };
        self.keep(bytes, buf);
        true
    }

    /// End of what is there now. A followed file keeps an unfinished last line for later;
    /// otherwise that is the last line.
    fn at_end(&mut self, buf: &mut Vec<RawLine>, mut got: usize) -> Poll {
        let follow = self.log.follow;
        if !follow && !self.carry.is_empty() && !self.skipping {
            got += usize::from(self.end_line(0, buf));
        }
        match got {
            0 if follow => Poll::Idle,
            0 => Poll::Eof,
            _ => Poll::Data,
        }
    }
}

impl LineSource for FileSource {
    fn poll(&mut self, buf: &mut Vec<RawLine>, max: usize) -> std::io::Result<Poll> {
        let mut got = 0;
        while got < max {
            if self.rest.is_empty() {
                match self.log.next(self.reader)? {
                    Some(Chunk::Data(chunk)) => self.rest = Bytes::from_owner(ChunkHandle(chunk)),
                    Some(Chunk::Rotated) => {
                        self.carry.clear();
                        self.skipping = false;
                    }
                    None => return Ok(self.at_end(buf, got)),
                }
                continue;
            }
            if self.skipping {
                // The rest of an oversize line, through its newline, is dropped.
                match memchr::memchr(b'\n', &self.rest) {
                    Some(pos) => {
                        self.rest.advance(pos + 1);
                        self.skipping = false;
                    }
                    None => self.rest.clear(),
                }
                continue;
            }
            // A line is whole when its newline is within its first MAX_KEEP + 1 bytes.
            let room = (MAX_KEEP + 1 - self.carry.len()).min(self.rest.len());
            if let Some(pos) = memchr::memchr(b'\n', &self.rest[..room]) {
                got += usize::from(self.end_line(pos + 1, buf));
            } else if self.carry.len() + room > MAX_KEEP {
                // Oversize: keep the head (it will be dead-lettered), skip to the newline.
                got += usize::from(self.end_line(room, buf));
                self.skipping = true;
            } else {
                // The line goes on in the next chunk.
                self.carry.extend_from_slice(&self.rest);
                self.rest.clear();
            }
        }
        Ok(Poll::Data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// `path` read by one reader keeping the lines of `shard`.
    fn open(path: &Path, follow: bool, shard: (usize, usize)) -> FileSource {
        FileSource::reading(
            SharedLog::open(path, follow, 1).unwrap(),
            0,
            LogFormat::Cs,
            shard,
        )
    }

    #[test]
    fn shards_follows_and_reopens_a_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        std::fs::write(&p, "l1\nl2\nl3\nl4").unwrap();
        let mut s = open(&p, false, (1, 2));
        let mut buf = Vec::new();
        assert_eq!(s.poll(&mut buf, 100).unwrap(), Poll::Data);
        let nums: Vec<u64> = buf.iter().map(|l| l.no).collect();
        assert_eq!(nums, vec![1, 3]);

        let mut f = open(&p, true, (0, 1));
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
        // Rotated: the file is shorter than what was read. It is read again from its start
        // at once, and the unfinished tail of the old one is dropped.
        std::fs::write(&p, "new\n").unwrap();
        buf.clear();
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
            let mut s = open(&p, false, shard);
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

        // The workers of a process read the file once: three readers of one shared log, taking
        // turns, get the same lines as three separate readers, and the log keeps only the
        // chunks some reader has not taken yet.
        let log = SharedLog::open(&p, false, 3).unwrap();
        let mut readers: Vec<FileSource> = (0..3)
            .map(|k| FileSource::reading(log.clone(), k, LogFormat::Cs, (k, 3)))
            .collect();
        let mut shared: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut done = [false; 3];
        while !done.iter().all(|d| *d) {
            for (k, r) in readers.iter_mut().enumerate() {
                let mut out = Vec::new();
                done[k] = r.poll(&mut out, 40).unwrap() == Poll::Eof;
                shared.extend(out.into_iter().map(|raw| (raw.no, raw.bytes.to_vec())));
                // What one reader takes in one poll (at most 40 lines, one of them the
                // oversize line), and the chunk of each of the other two readers.
                let held = log.state.lock().unwrap().chunks.len();
                let bound = (MAX_KEEP + 40 * 1400).div_ceil(READ_CHUNK) + 3;
                assert!(held <= bound, "{held} chunks held, more than {bound}");
            }
        }
        shared.sort();
        assert_eq!(shared, whole);
    }

    /// The lines of `text` as every split must give them: numbered from 1, each through its
    /// newline (the last may have none), cut to its first `MAX_KEEP + 1` bytes if longer.
    fn reference_lines(text: &[u8]) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let end = memchr::memchr(b'\n', rest).map_or(rest.len(), |p| p + 1);
            let no = out.len() as u64 + 1;
            out.push((no, rest[..end.min(MAX_KEEP + 1)].to_vec()));
            rest = &rest[end..];
        }
        out
    }

    /// A line of `len` bytes before its newline, with `seed` in it.
    fn test_line(seed: usize, len: usize) -> Vec<u8> {
        let mut line = format!("{seed}:").into_bytes();
        line.resize(len, b'a' + (seed % 26) as u8);
        line
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// Lines of every kind of length (short, about a chunk, about and well over the
        /// oversize limit), with or without a last newline, split by 1 to 4 workers of one shared log taking
        /// turns: together they give the reference lines, each once.
        #[test]
        fn workers_of_a_shared_log_split_it_as_the_reference_does(
            lens in proptest::collection::vec(
                proptest::prop_oneof![
                    6 => 0usize..700,
                    1 => (READ_CHUNK - 3)..(READ_CHUNK + 3),
                    1 => (MAX_KEEP - 2)..(MAX_KEEP + 3),
                    1 => (MAX_KEEP + 3)..(MAX_KEEP + 2 * READ_CHUNK),
                ],
                1..40,
            ),
            last_newline in proptest::bool::ANY,
            workers in 1usize..5,
            batch in 1usize..50,
        ) {
            let mut text = Vec::new();
            for (i, len) in lens.iter().enumerate() {
                text.extend_from_slice(&test_line(i, *len));
                text.push(b'\n');
            }
            if !last_newline {
                text.pop();
            }
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("lines.log");
            std::fs::write(&p, &text).unwrap();
            let log = SharedLog::open(&p, false, workers).unwrap();
            let mut readers: Vec<FileSource> = (0..workers)
                .map(|k| FileSource::reading(log.clone(), k, LogFormat::Cs, (k, workers)))
                .collect();
            let mut got: Vec<(u64, Vec<u8>)> = Vec::new();
            let mut done = vec![false; workers];
            while !done.iter().all(|d| *d) {
                for (k, r) in readers.iter_mut().enumerate() {
                    let mut out = Vec::new();
                    done[k] = r.poll(&mut out, batch).unwrap() == Poll::Eof;
                    for raw in out {
                        proptest::prop_assert_eq!(raw.no as usize % workers, k);
                        got.push((raw.no, raw.bytes.to_vec()));
                    }
                }
            }
            got.sort();
            proptest::prop_assert_eq!(got, reference_lines(&text));
        }
    }

    #[test]
    fn read_buffers_return_to_the_pool_when_their_lines_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pool.log");
        let text: String = (0..20_000)
            .map(|i| format!("line {i:06} {}\n", "z".repeat(40)))
            .collect();
        assert!(text.len() > 3 * READ_CHUNK);
        std::fs::write(&p, &text).unwrap();
        let log = SharedLog::open(&p, true, 1).unwrap();
        let mut s = FileSource::reading(log.clone(), 0, LogFormat::Cs, (0, 1));
        let mut lines = Vec::new();
        while s.poll(&mut lines, 1000).unwrap() == Poll::Data {}
        let read: Vec<u8> = lines.iter().flat_map(|l| l.bytes.to_vec()).collect();
        assert_eq!(read, text.as_bytes());
        let pool = log.state.lock().unwrap().pool.clone();
        let held_before = pool.lens().len();
        drop(lines);
        s.rest = Bytes::new();
        let held = pool.lens().len();
        assert!(
            held > held_before && held <= POOL_KEEP,
            "{held_before} -> {held}"
        );
        // A short read (a followed file's new line) is a copy; its buffer is not pooled.
        let mut w = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        w.write_all(b"one more\n").unwrap();
        let mut more = Vec::new();
        assert_eq!(s.poll(&mut more, 10).unwrap(), Poll::Data);
        assert_eq!(&more[0].bytes[..], b"one more\n");
        drop(more);
        s.rest = Bytes::new();
        let pool = pool.lens();
        assert!(pool.iter().all(|len| *len == READ_CHUNK));
        assert!(pool.len() <= POOL_KEEP);
    }
}
