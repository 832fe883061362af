//! Line files shared by all workers of a process, written in batches.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};

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
/// letters): a worker hands its 64 KiB batches over and goes on. When the disk is slow (the
/// kernel throttles a writer once much is dirty) the file falls behind, not the dataflow, up
/// to [`BackgroundFile::QUEUE`] batches; `flush` waits until everything is written.
#[derive(Clone)]
pub struct BackgroundFile(mpsc::SyncSender<Job>);

impl BackgroundFile {
    /// Batches a file may fall behind by before the workers wait for it (64 KiB each).
    pub const QUEUE: usize = 256;

    pub fn create(path: &Path) -> std::io::Result<BackgroundFile> {
        let f = File::create(path).map_err(|e| {
            std::io::Error::new(e.kind(), format!("{}: cannot create: {e}", path.display()))
        })?;
        let (tx, rx) = mpsc::sync_channel::<Job>(Self::QUEUE);
        let name = path.display().to_string();
        std::thread::Builder::new()
            .name("antispider-file".into())
            .spawn(move || {
                let mut w = BufWriter::with_capacity(1 << 16, f);
                let mut failed: Option<std::io::Error> = None;
                for job in rx {
                    match job {
                        Job::Write(bytes) => {
                            if failed.is_none() {
                                failed = w.write_all(&bytes).err();
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
        Ok(BackgroundFile(tx))
    }

    fn closed() -> std::io::Error {
        std::io::Error::other("output file writer stopped")
    }

    /// Appends `bytes` (whole lines) once the lines handed over before are written.
    pub fn write(&self, bytes: Vec<u8>) -> std::io::Result<()> {
        self.0.send(Job::Write(bytes)).map_err(|_| Self::closed())
    }

    /// Waits until everything handed over is written (and reports a write error).
    pub fn flush(&self) -> std::io::Result<()> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.0.send(Job::Flush(tx)).map_err(|_| Self::closed())?;
        rx.recv().map_err(|_| Self::closed())?
    }
}

/// A worker's pending lines for one [`BackgroundFile`]; handed over when 64 KiB have gathered.
pub struct Batched {
    file: BackgroundFile,
    buf: Vec<u8>,
}

impl Batched {
    pub fn new(file: BackgroundFile) -> Batched {
        Batched {
            file,
            buf: Vec::with_capacity(1 << 16),
        }
    }

    pub fn line(&mut self, line: &str) -> std::io::Result<()> {
        self.buf.extend_from_slice(line.as_bytes());
        self.buf.push(b'\n');
        if self.buf.len() >= 1 << 16 {
            self.hand_over()?;
        }
        Ok(())
    }

    fn hand_over(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(1 << 16));
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

    #[test]
    fn background_file_keeps_order_and_flush_waits_for_the_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        let file = BackgroundFile::create(&path).unwrap();
        let mut a = Batched::new(file.clone());
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
}
