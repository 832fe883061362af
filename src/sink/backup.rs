//! Durable backup of the Redis blacklist writes (SPEC §5; the original's HDFS parquet).
//!
//! Every write of a `CSANTI_ANTI_BLACK…` key is appended to a local JSON-lines file as
//! `{"key":…,"value":…,"expire_at":<epoch ms>}` (a removal as `"value":null`) and fsynced in
//! batches ([`Backup::sync`]). The newest record per key is kept in memory; [`Backup::live`]
//! lists the unexpired ones, which the Redis sink writes back (`SET … PXAT … NX`) at start-up
//! and whenever Redis comes back empty. When the file holds many more lines than live keys it
//! is compacted: rewritten to a temporary file with only the newest unexpired record per key,
//! fsynced and renamed over the old one.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// One line of the backup file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    pub key: String,
    /// `None`: the key was deleted (it must not be restored).
    pub value: Option<String>,
    /// Epoch milliseconds when the key expires in Redis.
    pub expire_at: i64,
}

/// The backup file and the newest record of every key in it.
pub struct Backup {
    path: PathBuf,
    out: BufWriter<File>,
    index: HashMap<String, BackupRecord>,
    /// Lines in the file (including superseded and expired ones).
    lines: usize,
    /// Records appended since the last [`Backup::sync`].
    unsynced: usize,
    /// Compact when the file has more lines than this and than 4 × the live keys.
    compact_min_lines: usize,
}

impl Backup {
    /// Opens (creating it and its directory if needed) the backup at `path` and reads the
    /// records already in it. A torn or unparsable line (a crash mid-write) is skipped with a
    /// warning.
    pub fn open(path: &Path) -> anyhow::Result<Backup> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("{}: cannot create directory", dir.display()))?;
        }
        let mut index = HashMap::new();
        let mut lines = 0;
        if path.exists() {
            let f = File::open(path)
                .with_context(|| format!("{}: cannot read backup", path.display()))?;
            for (n, line) in BufReader::new(f).lines().enumerate() {
                let line =
                    line.with_context(|| format!("{}: cannot read backup", path.display()))?;
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<BackupRecord>(&line) {
                    Ok(r) => {
                        lines += 1;
                        index.insert(r.key.clone(), r);
                    }
                    Err(e) => tracing::warn!(
                        "{}: line {}: skipping unreadable backup record: {e}",
                        path.display(),
                        n + 1
                    ),
                }
            }
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("{}: cannot open backup for appending", path.display()))?;
        // After a torn write the file does not end with a newline: start a fresh line.
        let content_len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if content_len > 0 {
            let mut last = [0u8; 1];
            use std::io::{Read, Seek, SeekFrom};
            let mut r = File::open(path)
                .with_context(|| format!("{}: cannot read backup", path.display()))?;
            if r.seek(SeekFrom::End(-1)).is_ok()
                && r.read_exact(&mut last).is_ok()
                && last[0] != b'\n'
            {
                file.write_all(b"\n")
                    .with_context(|| format!("{}: cannot append to backup", path.display()))?;
            }
        }
        Ok(Backup {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
            index,
            lines,
            unsynced: 0,
            compact_min_lines: 10_000,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the line count above which [`Backup::maybe_compact`] may rewrite the file.
    pub fn set_compact_min_lines(&mut self, n: usize) {
        self.compact_min_lines = n;
    }

    /// Lines currently in the file.
    pub fn lines(&self) -> usize {
        self.lines
    }

    /// Appends a record (buffered; call [`Backup::sync`] to make it durable).
    pub fn append(&mut self, rec: BackupRecord) -> anyhow::Result<()> {
        let line = serde_json::to_string(&rec).expect("a backup record serialises");
        self.out
            .write_all(line.as_bytes())
            .and_then(|_| self.out.write_all(b"\n"))
            .with_context(|| format!("{}: cannot append to backup", self.path.display()))?;
        self.lines += 1;
        self.unsynced += 1;
        self.index.insert(rec.key.clone(), rec);
        Ok(())
    }

    /// Flushes and fsyncs the records appended since the last call (no-op when none).
    pub fn sync(&mut self) -> anyhow::Result<()> {
        if self.unsynced == 0 {
            return Ok(());
        }
        self.out
            .flush()
            .and_then(|_| self.out.get_ref().sync_data())
            .with_context(|| format!("{}: cannot fsync backup", self.path.display()))?;
        self.unsynced = 0;
        Ok(())
    }

    /// The newest record of every key that is neither deleted nor expired at `now_ms`.
    pub fn live(&self, now_ms: i64) -> Vec<BackupRecord> {
        let mut v: Vec<BackupRecord> = self
            .index
            .values()
            .filter(|r| r.value.is_some() && r.expire_at > now_ms)
            .cloned()
            .collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    /// Compacts when the file has grown well beyond its live content; true if it did.
    pub fn maybe_compact(&mut self, now_ms: i64) -> anyhow::Result<bool> {
        if self.lines <= self.compact_min_lines {
            return Ok(false);
        }
        let live = self
            .index
            .values()
            .filter(|r| r.value.is_some() && r.expire_at > now_ms)
            .count();
        if self.lines <= live.saturating_mul(4) {
            return Ok(false);
        }
        self.compact(now_ms)?;
        Ok(true)
    }

    /// Rewrites the file with only the newest unexpired, undeleted record per key.
    pub fn compact(&mut self, now_ms: i64) -> anyhow::Result<()> {
        self.sync()?;
        let live = self.live(now_ms);
        let tmp = self.path.with_extension("jsonl.compact");
        {
            let f =
                File::create(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
            let mut w = BufWriter::new(f);
            for r in &live {
                serde_json::to_writer(&mut w, r).expect("a backup record serialises");
                w.write_all(b"\n")
                    .with_context(|| format!("{}: cannot write", tmp.display()))?;
            }
            w.flush()
                .and_then(|_| w.get_ref().sync_all())
                .with_context(|| format!("{}: cannot fsync", tmp.display()))?;
        }
        std::fs::rename(&tmp, &self.path).with_context(|| {
            format!("cannot rename {} to {}", tmp.display(), self.path.display())
        })?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Make the rename durable; not fatal where directories cannot be opened.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .with_context(|| format!("{}: cannot reopen backup", self.path.display()))?;
        self.out = BufWriter::new(file);
        self.index = live.iter().map(|r| (r.key.clone(), r.clone())).collect();
        self.lines = live.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &str, value: Option<&str>, expire_at: i64) -> BackupRecord {
        BackupRecord {
            key: key.into(),
            value: value.map(String::from),
            expire_at,
        }
    }

    #[test]
    fn newest_unexpired_record_per_key_survives_reopen_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/backup.jsonl");
        let mut b = Backup::open(&p).unwrap();
        b.append(rec("a", Some("1"), 1_000)).unwrap();
        b.append(rec("a", Some("2"), 5_000)).unwrap();
        b.append(rec("old", Some("x"), 100)).unwrap();
        b.append(rec("gone", Some("y"), 9_000)).unwrap();
        b.append(rec("gone", None, 0)).unwrap();
        b.sync().unwrap();
        drop(b);
        // A torn last line is skipped.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"key\":\"torn\",\"val").unwrap();
        drop(f);
        let mut b = Backup::open(&p).unwrap();
        assert_eq!(b.live(500), vec![rec("a", Some("2"), 5_000)]);
        assert_eq!(b.lines(), 5);
        b.set_compact_min_lines(2);
        assert!(b.maybe_compact(500).unwrap());
        assert_eq!(b.lines(), 1);
        b.append(rec("b", Some("3"), 7_000)).unwrap();
        b.sync().unwrap();
        let b = Backup::open(&p).unwrap();
        assert_eq!(
            b.live(500),
            vec![rec("a", Some("2"), 5_000), rec("b", Some("3"), 7_000)]
        );
        assert_eq!(b.live(6_000), vec![rec("b", Some("3"), 7_000)]);
    }
}
