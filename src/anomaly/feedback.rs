//! Operator feedback from the MySQL table `cat_feedback` (SPEC §6, issue 4: feedback "via the
//! API and a MySQL table").
//!
//! An admin UI (or a DBA) inserts one row per verdict: the app, the sample's minute and the
//! label `normal` | `anomalous` (see `rules/mysql/schema.sql`). The table is an append-only log:
//! to change a verdict, insert a new row for the same sample; the row with the highest id
//! wins.
//!
//! [`MysqlFeedbackReader`] reads the table in its own thread (with its own tokio runtime, like
//! the rule feed of `rules::mysql`): all rows once at start, then, every
//! `[mysql] poll_interval_ms`, the rows with an id above the highest one seen. Each good row
//! takes exactly the path of `POST /api_v1/nt_spark/feedback` ([`AnomalyHub::post_feedback`]:
//! the leader applies it to the training labels and retrains that app's forest). A row that
//! cannot be used (no app, a negative or missing time, an unknown label) goes to the dead-letter
//! file `OUT/feedback_deadletter.jsonl` with the reason (masked, as every dead letter), is
//! counted, and never stops the reader.
//!
//! Ids can become visible out of order (two admin sessions insert concurrently and the later
//! id commits first): an id skipped over is looked for again for [`GAP_GRACE`] before it is
//! given up as a rolled-back insert. Unreachable MySQL: the reader logs once and retries with
//! back-off (capped at 5 s); no row is lost, since it resumes after the last id it read.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use mysql_async::prelude::*;
use mysql_async::{Opts, Pool, Row};
use serde::Serialize;

use super::hub::{AnomalyHub, FeedbackItem};
use crate::config::MysqlConfig;
use crate::dataprocess::Masker;
use crate::deadletter::DeadLetter;
use crate::rules::mysql::{mysql_opts, sleep_unless_stopped, MYSQL_TIMEOUT};

/// The feedback table.
pub const FEEDBACK_TABLE: &str = "cat_feedback";
/// Dead letters of unusable feedback rows, in the output directory.
pub const FEEDBACK_DEADLETTER_FILE: &str = "feedback_deadletter.jsonl";
/// Rows read per query.
const PAGE: usize = 1000;
/// How long an id skipped over is looked for again.
pub const GAP_GRACE: Duration = Duration::from_secs(60);
/// At most this many skipped ids are tracked (a huge jump in ids is not a gap to wait for).
const MAX_GAPS: usize = 1000;
const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// One `cat_feedback` row as read (every column as text, so that no value fails to decode).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FeedbackRow {
    pub id: i64,
    pub appid: Option<String>,
    pub sample_time_ms: Option<String>,
    pub label: Option<String>,
    pub created_at: Option<String>,
}

/// Why a row was not used: `(reason, detail)`.
pub type Rejection = (&'static str, String);

impl FeedbackRow {
    /// The sample id and verdict of the row, by the rules of the API's feedback items (the
    /// time is rounded down to its minute; `label` is `normal`, or `anomalous` / `anomaly` /
    /// `abnormal`, in any case).
    pub fn resolve(&self) -> Result<(String, bool), Rejection> {
        let appid = self.appid.as_deref().map(str::trim).unwrap_or_default();
        if appid.is_empty() {
            return Err(("missing_appid", "appid is NULL or empty".into()));
        }
        let time = self.sample_time_ms.as_deref().map(str::trim);
        let t: i64 = match time.map(str::parse::<i64>) {
            Some(Ok(t)) if t >= 0 => t,
            Some(Ok(t)) => {
                return Err((
                    "bad_sample_time",
                    format!("sample_time_ms {t} is before 1970"),
                ))
            }
            Some(Err(_)) => {
                return Err((
                    "bad_sample_time",
                    format!(
                        "sample_time_ms `{}` is not epoch milliseconds",
                        time.unwrap_or_default()
                    ),
                ))
            }
            None => return Err(("bad_sample_time", "sample_time_ms is NULL".into())),
        };
        let Some(label) = self.label.as_deref() else {
            return Err(("bad_label", "label is NULL".into()));
        };
        let item = FeedbackItem {
            id: String::new(),
            appid: Some(serde_json::Value::String(appid.to_string())),
            time: Some(t),
            anomalous: None,
            label: Some(label.trim().to_ascii_lowercase()),
            at: None,
        };
        item.resolve().map_err(|e| ("bad_label", e))
    }
}

/// Counters of a [`MysqlFeedbackReader`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FeedbackReaderStats {
    /// Rows read (good and bad).
    pub rows: u64,
    /// Rows handed to the hub.
    pub applied: u64,
    /// Rows superseded by a newer row for the same sample before they were read.
    pub superseded: u64,
    pub dead_lettered: u64,
    /// The highest row id read.
    pub last_id: i64,
    /// Whether the first read of the whole table completed.
    pub loaded: bool,
    pub connected: bool,
}

#[derive(Default)]
struct Counters {
    rows: AtomicU64,
    applied: AtomicU64,
    superseded: AtomicU64,
    dead_lettered: AtomicU64,
    last_id: AtomicI64,
    loaded: AtomicBool,
    connected: AtomicBool,
}

/// Reads `cat_feedback` into an [`AnomalyHub`]; see the module documentation.
pub struct MysqlFeedbackReader {
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MysqlFeedbackReader {
    /// Starts the reader thread: rows go to `hub`, unusable rows to `deadletter` (created,
    /// truncated), masked with `masker`.
    pub fn start(
        cfg: &MysqlConfig,
        hub: Arc<AnomalyHub>,
        deadletter: &Path,
        masker: Masker,
    ) -> anyhow::Result<MysqlFeedbackReader> {
        let opts = mysql_opts(cfg)?;
        let interval = Duration::from_millis(cfg.poll_interval_ms.max(10));
        let file = std::fs::File::create(deadletter)
            .with_context(|| format!("{}: cannot create", deadletter.display()))?;
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the MySQL feedback reader runtime")?;
        let mut state = ReaderState {
            hub,
            counters: counters.clone(),
            deadletter: std::io::BufWriter::new(file),
            deadletter_path: deadletter.to_path_buf(),
            masker,
            last_id: 0,
            gaps: BTreeMap::new(),
            newest_row: HashMap::new(),
        };
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("mysql-feedback".into())
            .spawn(move || rt.block_on(state.run(opts, interval, stop2)))
            .context("cannot start the MySQL feedback reader thread")?;
        Ok(MysqlFeedbackReader {
            counters,
            stop,
            thread: Some(thread),
        })
    }

    pub fn stats(&self) -> FeedbackReaderStats {
        let c = &self.counters;
        FeedbackReaderStats {
            rows: c.rows.load(Ordering::Relaxed),
            applied: c.applied.load(Ordering::Relaxed),
            superseded: c.superseded.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
            last_id: c.last_id.load(Ordering::Relaxed),
            loaded: c.loaded.load(Ordering::Relaxed),
            connected: c.connected.load(Ordering::Relaxed),
        }
    }

    /// Waits until the whole table was read once (true) or `timeout` passes (false).
    pub fn wait_loaded(&self, timeout: Duration) -> bool {
        crate::sink::wait_until(timeout, || self.counters.loaded.load(Ordering::Relaxed))
    }
}

impl Drop for MysqlFeedbackReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct ReaderState {
    hub: Arc<AnomalyHub>,
    counters: Arc<Counters>,
    deadletter: std::io::BufWriter<std::fs::File>,
    deadletter_path: PathBuf,
    masker: Masker,
    /// The highest id read.
    last_id: i64,
    /// Ids skipped over, and when they were first missed.
    gaps: BTreeMap<i64, Instant>,
    /// Per sample id, the highest row id applied (an older row read late does not win).
    newest_row: HashMap<String, i64>,
}

const COLUMNS: &str =
    "id, CAST(appid AS CHAR) AS appid, CAST(sample_time_ms AS CHAR) AS sample_time_ms, \
                       CAST(label AS CHAR) AS label, CAST(created_at AS CHAR) AS created_at";

fn text(row: &mut Row, name: &str) -> Option<String> {
    match row.take_opt::<Option<String>, &str>(name) {
        Some(Ok(v)) => v,
        _ => None,
    }
}

fn decode(mut row: Row) -> Option<FeedbackRow> {
    let id = match row.take_opt::<i64, &str>("id") {
        Some(Ok(id)) => id,
        _ => return None,
    };
    Some(FeedbackRow {
        id,
        appid: text(&mut row, "appid"),
        sample_time_ms: text(&mut row, "sample_time_ms"),
        label: text(&mut row, "label"),
        created_at: text(&mut row, "created_at"),
    })
}

impl ReaderState {
    async fn run(&mut self, opts: Opts, interval: Duration, stop: Arc<AtomicBool>) {
        let pool = Pool::new(opts);
        let mut backoff = BACKOFF_START;
        let mut failing = false;
        while !stop.load(Ordering::SeqCst) {
            let wait = match tokio::time::timeout(MYSQL_TIMEOUT, self.poll(&pool)).await {
                Ok(Ok(())) => {
                    if failing {
                        tracing::info!("MySQL feedback reader: reading {FEEDBACK_TABLE} again");
                        failing = false;
                    }
                    self.counters.connected.store(true, Ordering::Relaxed);
                    self.counters.loaded.store(true, Ordering::Relaxed);
                    backoff = BACKOFF_START;
                    interval
                }
                failed => {
                    let e = match failed {
                        Ok(Err(e)) => e,
                        _ => anyhow::anyhow!("MySQL: reading {FEEDBACK_TABLE} timed out"),
                    };
                    self.counters.connected.store(false, Ordering::Relaxed);
                    if !failing {
                        tracing::warn!("MySQL feedback reader: {e:#}; retrying");
                        failing = true;
                    } else {
                        tracing::debug!("MySQL feedback reader: {e:#}");
                    }
                    let b = backoff;
                    backoff = (backoff * 2).min(BACKOFF_CAP);
                    b
                }
            };
            if let Err(e) = self.deadletter.flush() {
                tracing::error!("{}: {e}", self.deadletter_path.display());
            }
            sleep_unless_stopped(wait, &stop).await;
        }
        let _ = self.deadletter.flush();
        let _ = tokio::time::timeout(Duration::from_secs(2), pool.disconnect()).await;
    }

    /// Reads the rows after the last id (page by page) and the gaps still awaited.
    async fn poll(&mut self, pool: &Pool) -> anyhow::Result<()> {
        let mut conn = pool.get_conn().await.context("MySQL: cannot connect")?;
        let now = Instant::now();
        self.gaps
            .retain(|_, first| now.duration_since(*first) < GAP_GRACE);
        if !self.gaps.is_empty() {
            let ids: Vec<i64> = self.gaps.keys().copied().collect();
            let sql = format!(
                "SELECT {COLUMNS} FROM {FEEDBACK_TABLE} WHERE id IN ({}) ORDER BY id",
                vec!["?"; ids.len()].join(", ")
            );
            let rows: Vec<Row> = conn
                .exec(sql, ids)
                .await
                .with_context(|| format!("MySQL table {FEEDBACK_TABLE}: cannot read"))?;
            for row in rows.into_iter().filter_map(decode) {
                self.gaps.remove(&row.id);
                self.take(row);
            }
        }
        loop {
            let sql = format!(
                "SELECT {COLUMNS} FROM {FEEDBACK_TABLE} WHERE id > ? ORDER BY id LIMIT {PAGE}"
            );
            let rows: Vec<Row> = conn
                .exec(sql, (self.last_id,))
                .await
                .with_context(|| format!("MySQL table {FEEDBACK_TABLE}: cannot read"))?;
            let n = rows.len();
            for row in rows.into_iter().filter_map(decode) {
                // Ids skipped over may still commit (see the module docs). The very first read
                // starts from 0: ids below the first row are not gaps.
                if self.last_id > 0 && row.id > self.last_id + 1 {
                    for gap in (self.last_id + 1)..row.id {
                        if self.gaps.len() >= MAX_GAPS {
                            break;
                        }
                        self.gaps.insert(gap, now);
                    }
                }
                self.last_id = self.last_id.max(row.id);
                self.take(row);
            }
            self.counters.last_id.store(self.last_id, Ordering::Relaxed);
            if n < PAGE {
                return Ok(());
            }
        }
    }

    /// Applies or dead-letters one row.
    fn take(&mut self, row: FeedbackRow) {
        self.counters.rows.fetch_add(1, Ordering::Relaxed);
        match row.resolve() {
            Ok((id, anomalous)) => {
                let newest = self.newest_row.entry(id.clone()).or_insert(row.id);
                if *newest > row.id {
                    self.counters.superseded.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                *newest = row.id;
                self.hub.post_feedback(id, anomalous);
                self.counters.applied.fetch_add(1, Ordering::Relaxed);
            }
            Err((reason, detail)) => {
                let n = self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                if n < 5 {
                    tracing::warn!(
                        "MySQL table {FEEDBACK_TABLE}: row id = {}: {detail} (dead-lettered)",
                        row.id
                    );
                }
                let line = serde_json::to_string(&row).unwrap_or_default();
                let detail = format!("{FEEDBACK_TABLE} row id = {}: {detail}", row.id);
                let d = DeadLetter::new(
                    row.id.max(0) as u64,
                    reason,
                    &detail,
                    line.as_bytes(),
                    &self.masker,
                );
                if let Err(e) = writeln!(self.deadletter, "{}", d.to_json_line()) {
                    tracing::error!("{}: {e}", self.deadletter_path.display());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(appid: Option<&str>, t: Option<&str>, label: Option<&str>) -> FeedbackRow {
        FeedbackRow {
            id: 1,
            appid: appid.map(Into::into),
            sample_time_ms: t.map(Into::into),
            label: label.map(Into::into),
            created_at: None,
        }
    }

    #[test]
    fn rows_resolve_like_api_feedback() {
        let ok = row(Some("1001"), Some("90000"), Some("anomalous"));
        assert_eq!(ok.resolve().unwrap(), ("1001:60000".into(), true));
        let ok = row(Some(" 1001 "), Some("60000"), Some(" Normal "));
        assert_eq!(ok.resolve().unwrap(), ("1001:60000".into(), false));
        assert!(
            row(Some("a"), Some("0"), Some("ANOMALY"))
                .resolve()
                .unwrap()
                .1
        );
        let bad = |r: FeedbackRow| r.resolve().unwrap_err().0;
        assert_eq!(bad(row(None, Some("0"), Some("normal"))), "missing_appid");
        assert_eq!(
            bad(row(Some(""), Some("0"), Some("normal"))),
            "missing_appid"
        );
        assert_eq!(bad(row(Some("a"), None, Some("normal"))), "bad_sample_time");
        assert_eq!(
            bad(row(Some("a"), Some("-5"), Some("normal"))),
            "bad_sample_time"
        );
        assert_eq!(
            bad(row(Some("a"), Some("soon"), Some("normal"))),
            "bad_sample_time"
        );
        assert_eq!(bad(row(Some("a"), Some("0"), Some("maybe"))), "bad_label");
        assert_eq!(bad(row(Some("a"), Some("0"), None)), "bad_label");
        let (_, detail) = row(Some("a"), Some("0"), Some("maybe"))
            .resolve()
            .unwrap_err();
        assert!(detail.contains("maybe"), "{detail}");
    }
}
