//! Line files shared by all workers of a process, written in batches.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

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

/// A worker's pending lines for one [`SharedFile`]; written when 64 KiB have gathered.
pub struct Batched {
    file: SharedFile,
    buf: Vec<u8>,
}

impl Batched {
    pub fn new(file: SharedFile) -> Batched {
        Batched {
            file,
            buf: Vec::with_capacity(1 << 16),
        }
    }

    pub fn line(&mut self, line: &str) -> std::io::Result<()> {
        self.buf.extend_from_slice(line.as_bytes());
        self.buf.push(b'\n');
        if self.buf.len() >= 1 << 16 {
            self.flush()?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.file.write_all(&self.buf)?;
            self.buf.clear();
        }
        self.file.flush()
    }
}
