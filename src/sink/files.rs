//! Line files shared by all workers of a process, written in batches.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::buffers::BufferPool;

/// A file that every worker appends whole lines to.
#[derive(Clone)]
pub struct SharedFile(Arc<Mutex<BufWriter<File>>>);

impl SharedFile {
    pub fn create(path: &Path) -> std::io::Result<SharedFile> {
        let f = File::create(path).map_err(|e| {
            std::io::Error::new(e.kind(), format!("{}: cannot create: {e}", path.display()))
        })?;
        Ok(SharedFile(Arc::new(Mutex::new(BufWriter::with_capacity(
            1 << 16,
            f,
        )))))
    }

    pub fn write_all(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut w = self.0.lock().unwrap_or_else(|p| p.into_inner());
        w.write_all(bytes)
    }

    pub fn flush(&self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

/// What a [`BackgroundFile`]'s thread is asked to do.
enum Job {
    Write(Vec<u8>),
    /// Write out everything sent before, then answer with the first error since the last
    /// flush.
    Flush(mpsc::SyncSender<std::io::Result<()>>),
}

/// A line file written by a thread of its own, for the bulk outputs (processed records, dead
/// letters): a worker hands its [`BATCH`]-byte batches over and goes on. When the disk is slow (the
/// kernel throttles a writer once much is dirty) the file falls behind, not the dataflow, up
/// to [`BackgroundFile::QUEUE`] batches; `flush` waits until everything is written.
#[derive(Clone)]
pub struct BackgroundFile {
    jobs: mpsc::SyncSender<Job>,
    /// Written batches' buffers, emptied, for the next batches.
    spare: Arc<BufferPool>,
}

impl BackgroundFile {
    /// Batches a file may fall behind by before the workers wait for it (16 MiB).
    pub const QUEUE: usize = (16 << 20) / BATCH;

    pub fn create(path: &Path) -> std::io::Result<BackgroundFile> {
        let f = File::create(path).map_err(|e| {
            std::io::Error::new(e.kind(), format!("{}: cannot create: {e}", path.display()))
        })?;
        let (tx, rx) = mpsc::sync_channel::<Job>(Self::QUEUE);
        let spare = Arc::new(BufferPool::new(Self::SPARE));
        let give_back = spare.clone();
        let name = path.display().to_string();
        std::thread::Builder::new()
            .name("antispider-file".into())
            .spawn(move || {
                let mut w = BufWriter::with_capacity(1 << 16, f);
                let mut failed: Option<std::io::Error> = None;
                for job in rx {
                    match job {
                        Job::Write(mut bytes) => {
                            if failed.is_none() {
                                failed = w.write_all(&bytes).err();
                            }
                            if bytes.capacity() == BATCH {
                                bytes.clear();
                                give_back.keep(bytes);
                            }
                        }
                        Job::Flush(reply) => {
                            let result = match failed.take() {
                                Some(e) => Err(e),
                                None => w.flush(),
                            };
                            let result = result
                                .map_err(|e| std::io::Error::new(e.kind(), format!("{name}: {e}")));
                            let _ = reply.send(result);
                        }
                    }
                }
                let _ = w.flush();
            })?;
        Ok(BackgroundFile { jobs: tx, spare })
    }

    /// Buffers kept for reuse: a few per worker.
    const SPARE: usize = 16;

    /// An empty buffer of [`BATCH`] bytes' capacity, reused when one is spare.
    fn empty_buffer(&self) -> Vec<u8> {
        self.spare
            .take()
            .unwrap_or_else(|| Vec::with_capacity(BATCH))
    }

    fn closed() -> std::io::Error {
        std::io::Error::other("output file writer stopped")
    }

    /// Appends `bytes` (whole lines) once the lines handed over before are written.
    pub fn write(&self, bytes: Vec<u8>) -> std::io::Result<()> {
        self.jobs
            .send(Job::Write(bytes))
            .map_err(|_| Self::closed())
    }

    /// Waits until everything handed over is written (and reports a write error).
    pub fn flush(&self) -> std::io::Result<()> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.jobs.send(Job::Flush(tx)).map_err(|_| Self::closed())?;
        rx.recv().map_err(|_| Self::closed())?
    }
}

/// Bytes of lines a worker gathers before it hands them to the file's thread. Each hand-over
/// wakes that thread, which takes the core from a worker for a moment: a replay writing
/// 1.5 GB of processed records woke it 23 000 times with 64 KiB batches.
pub const BATCH: usize = 256 << 10;

/// A worker's pending lines for one [`BackgroundFile`]; handed over when the next line would
/// not fit in [`BATCH`] bytes (so the buffer never grows, which would copy it), and by
/// [`Batched::hand_over_if_old`] once the oldest has waited [`Batched::MAX_AGE`].
pub struct Batched {
    file: BackgroundFile,
    buf: Vec<u8>,
    /// When the first line of `buf` came.
    since: Option<Instant>,
}

impl Batched {
    /// How long a live engine's lines may wait for more before they go to the file.
    pub const MAX_AGE: Duration = Duration::from_millis(500);

    pub fn new(file: BackgroundFile) -> Batched {
        let buf = file.empty_buffer();
        Batched {
            file,
            buf,
            since: None,
        }
    }

    pub fn line(&mut self, line: &str) -> std::io::Result<()> {
        if self.buf.len() + line.len() + 1 > BATCH {
            self.hand_over()?;
        }
        if self.buf.is_empty() {
            self.since = Some(Instant::now());
        }
        self.buf.extend_from_slice(line.as_bytes());
        self.buf.push(b'\n');
        Ok(())
    }

    /// Hands the lines over if the oldest has waited [`Self::MAX_AGE`]: a live engine's
    /// outputs trail its input by at most that (a replay fills its batches long before).
    pub fn hand_over_if_old(&mut self) -> std::io::Result<()> {
        match self.since {
            Some(t) if t.elapsed() >= Self::MAX_AGE => self.hand_over(),
            _ => Ok(()),
        }
    }

    fn hand_over(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.since = None;
        let full = std::mem::replace(&mut self.buf, self.file.empty_buffer());
        self.file.write(full)
    }

    /// Writes every line so far to the file (returns once they are written).
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.hand_over()?;
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A background file in a new directory (kept while the test runs), and a batcher for it.
    fn batched_file() -> (
        tempfile::TempDir,
        std::path::PathBuf,
        BackgroundFile,
        Batched,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        let file = BackgroundFile::create(&path).unwrap();
        let batched = Batched::new(file.clone());
        (dir, path, file, batched)
    }

    #[test]
    fn background_file_keeps_order_and_flush_waits_for_the_writes() {
        let (_dir, path, _file, mut a) = batched_file();
        let mut expected = String::new();
        for i in 0..20_000 {
            let line = format!("line {i} {}", "x".repeat(i % 50));
            a.line(&line).unwrap();
            expected.push_str(&line);
            expected.push('\n');
        }
        a.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), expected);
    }

    #[test]
    fn big_lines_and_old_lines_are_handed_over() {
        let (_dir, path, file, mut a) = batched_file();
        // Longer than a batch: handed over whole, with what came before it.
        let big = "b".repeat(BATCH + 10);
        a.line("first").unwrap();
        a.line(&big).unwrap();
        a.line("after").unwrap();
        // Young lines wait; once old they go to the file without a flush.
        a.hand_over_if_old().unwrap();
        file.flush().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("first\n{big}\n")
        );
        std::thread::sleep(Batched::MAX_AGE + Duration::from_millis(50));
        a.hand_over_if_old().unwrap();
        file.flush().unwrap();
        let expected = format!("first\n{big}\nafter\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), expected);
        a.line("last").unwrap();
        a.flush().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{expected}last\n")
        );
    }
}
