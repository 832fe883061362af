//! MySQL outputs: blacklisted IPs into `nh_ip_blacklist` (insert-once, SPEC §5) and the
//! service-anomaly results into `cat_result_data` (SPEC §6).
//!
//! [`MysqlBlacklistSink`] never blocks its caller: rows go into a bounded in-memory buffer that
//! a background thread (with its own tokio runtime) writes in batches, retrying with
//! exponential back-off (capped at 5 s) while MySQL is unreachable. Beyond `buffer_limit` the
//! oldest anomaly results are dropped first, then the oldest IPs (counted in `dropped`).

use std::collections::{HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use mysql_async::prelude::*;
use mysql_async::{Opts, Pool};
use serde::Serialize;

use crate::config::MysqlConfig;
use crate::rules::mysql::{mysql_opts, MYSQL_TIMEOUT};

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
const BATCH: usize = 500;

/// One row of `cat_result_data`: the anomaly verdict for one app's 1-minute sample.
/// `(appid, sample_time_ms, algorithm, model_version)` is unique; writing the same key again
/// updates the row (so retries and re-scoring are idempotent).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CatResultRow {
    pub appid: String,
    /// Start of the sample's minute, epoch ms.
    pub sample_time_ms: i64,
    /// k-means cluster (None for the random forest).
    pub cluster: Option<i32>,
    /// Distance to the nearest centroid (k-means).
    pub distance: Option<f64>,
    /// Anomaly score (k-means: distance / threshold; random forest: P(anomaly)).
    pub score: Option<f64>,
    pub anomaly: bool,
    /// `kmeans` or `random_forest`.
    pub algorithm: String,
    pub model_version: String,
}

/// Counters of a [`MysqlBlacklistSink`] (monotonic except `pending` and `connected`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MysqlSinkStats {
    pub pending: u64,
    /// Rows MySQL acknowledged (an IP already present counts too).
    pub written: u64,
    pub dropped: u64,
    /// Successful writes after a failure.
    pub reconnects: u64,
    pub connected: bool,
}

enum Op {
    Ip(String),
    Cat(CatResultRow),
}

#[derive(Default)]
struct Buffer {
    ips: VecDeque<String>,
    cats: VecDeque<CatResultRow>,
    /// IPs already in `nh_ip_blacklist` (or queued): not inserted again.
    seen: HashSet<String>,
}

#[derive(Default)]
struct Counters {
    written: AtomicU64,
    dropped: AtomicU64,
    reconnects: AtomicU64,
    in_flight: AtomicU64,
    connected: AtomicBool,
}

struct Shared {
    buf: Mutex<Buffer>,
    notify: tokio::sync::Notify,
    stop: AtomicBool,
    limit: usize,
    counters: Counters,
}

/// See the module documentation.
pub struct MysqlBlacklistSink {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl MysqlBlacklistSink {
    pub fn start(cfg: &MysqlConfig) -> anyhow::Result<MysqlBlacklistSink> {
        let opts = mysql_opts(cfg)?;
        let shared = Arc::new(Shared {
            buf: Mutex::new(Buffer::default()),
            notify: tokio::sync::Notify::new(),
            stop: AtomicBool::new(false),
            limit: cfg.buffer_limit.max(1),
            counters: Counters::default(),
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the MySQL sink runtime")?;
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("mysql-sink".into())
            .spawn(move || rt.block_on(writer(opts, s)))
            .context("cannot start the MySQL sink thread")?;
        Ok(MysqlBlacklistSink {
            shared,
            thread: Some(thread),
        })
    }

    fn push(&self, op: Op) {
        let mut b = self.shared.buf.lock().unwrap_or_else(|e| e.into_inner());
        match op {
            Op::Ip(ip) => {
                if !b.seen.insert(ip.clone()) {
                    return;
                }
                b.ips.push_back(ip);
            }
            Op::Cat(row) => b.cats.push_back(row),
        }
        while b.ips.len() + b.cats.len() > self.shared.limit {
            if b.cats.pop_front().is_none() {
                if let Some(ip) = b.ips.pop_front() {
                    b.seen.remove(&ip);
                }
            }
            self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
        drop(b);
        self.shared.notify.notify_one();
    }

    /// Inserts `ip` into `nh_ip_blacklist` unless it is there already (`INSERT IGNORE` on the
    /// unique `ip_name`; repeated calls for the same IP cost nothing).
    pub fn insert_ip(&self, ip: IpAddr) {
        self.push(Op::Ip(ip.to_string()));
    }

    /// Writes anomaly results into `cat_result_data` (upsert on the row's unique key).
    pub fn insert_cat_results(&self, rows: Vec<CatResultRow>) {
        for r in rows {
            self.push(Op::Cat(r));
        }
    }

    pub fn stats(&self) -> MysqlSinkStats {
        let c = &self.shared.counters;
        let b = self.shared.buf.lock().unwrap_or_else(|e| e.into_inner());
        MysqlSinkStats {
            pending: (b.ips.len() + b.cats.len()) as u64 + c.in_flight.load(Ordering::Relaxed),
            written: c.written.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            connected: c.connected.load(Ordering::Relaxed),
        }
    }

    /// Waits until nothing is pending (true) or `timeout` passes (false).
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        super::wait_until(timeout, || self.stats().pending == 0)
    }
}

impl Drop for MysqlBlacklistSink {
    /// Stops the writer after one last attempt to write what is pending.
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.notify.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn write_ips(pool: &Pool, ips: &[String]) -> anyhow::Result<()> {
    let mut conn = pool.get_conn().await.context("MySQL: cannot connect")?;
    let placeholders = vec!["(?)"; ips.len()].join(", ");
    let sql = format!("INSERT IGNORE INTO nh_ip_blacklist (ip_name) VALUES {placeholders}");
    conn.exec_drop(sql, ips.to_vec())
        .await
        .context("MySQL: insert into nh_ip_blacklist")?;
    Ok(())
}

async fn write_cats(pool: &Pool, rows: &[CatResultRow]) -> anyhow::Result<()> {
    let mut conn = pool.get_conn().await.context("MySQL: cannot connect")?;
    let placeholders = vec!["(?, ?, ?, ?, ?, ?, ?, ?)"; rows.len()].join(", ");
    let sql = format!(
        "INSERT INTO cat_result_data (appid, sample_time_ms, cluster, distance, score, is_anomaly, algorithm, model_version) VALUES {placeholders} \
         ON DUPLICATE KEY UPDATE cluster = VALUES(cluster), distance = VALUES(distance), score = VALUES(score), is_anomaly = VALUES(is_anomaly)"
    );
    let mut params: Vec<mysql_async::Value> = Vec::with_capacity(rows.len() * 8);
    for r in rows {
        params.push(r.appid.clone().into());
        params.push(r.sample_time_ms.into());
        params.push(r.cluster.into());
        params.push(r.distance.into());
        params.push(r.score.into());
        params.push((r.anomaly as i32).into());
        params.push(r.algorithm.clone().into());
        params.push(r.model_version.clone().into());
    }
    conn.exec_drop(sql, params)
        .await
        .context("MySQL: insert into cat_result_data")?;
    Ok(())
}

async fn writer(opts: Opts, shared: Arc<Shared>) {
    let pool = Pool::new(opts);
    let mut backoff = BACKOFF_START;
    let mut failing = false;
    loop {
        let stopping = shared.stop.load(Ordering::SeqCst);
        let (ips, cats): (Vec<String>, Vec<CatResultRow>) = {
            let mut b = shared.buf.lock().unwrap_or_else(|e| e.into_inner());
            let n = b.ips.len().min(BATCH);
            let ips: Vec<String> = b.ips.drain(..n).collect();
            let n = b.cats.len().min(BATCH);
            let cats: Vec<CatResultRow> = b.cats.drain(..n).collect();
            shared
                .counters
                .in_flight
                .store((ips.len() + cats.len()) as u64, Ordering::Relaxed);
            (ips, cats)
        };
        if ips.is_empty() && cats.is_empty() {
            if stopping {
                break;
            }
            let _ =
                tokio::time::timeout(Duration::from_millis(200), shared.notify.notified()).await;
            continue;
        }
        let ip_res = if ips.is_empty() {
            Ok(())
        } else {
            match tokio::time::timeout(MYSQL_TIMEOUT, write_ips(&pool, &ips)).await {
                Ok(r) => r,
                Err(_) => Err(anyhow::anyhow!(
                    "MySQL: insert into nh_ip_blacklist timed out"
                )),
            }
        };
        let ips_ok = ip_res.is_ok();
        let cat_res = if cats.is_empty() || !ips_ok {
            ip_res
        } else {
            match tokio::time::timeout(MYSQL_TIMEOUT, write_cats(&pool, &cats)).await {
                Ok(r) => r,
                Err(_) => Err(anyhow::anyhow!(
                    "MySQL: insert into cat_result_data timed out"
                )),
            }
        };
        let cats_ok = ips_ok && cat_res.is_ok();
        let c = &shared.counters;
        let mut written = 0;
        if ips_ok {
            written += ips.len();
        }
        if cats_ok {
            written += cats.len();
        }
        c.written.fetch_add(written as u64, Ordering::Relaxed);
        match cat_res {
            Ok(()) => {
                c.connected.store(true, Ordering::Relaxed);
                if failing {
                    c.reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!("MySQL sink: writing again");
                    failing = false;
                }
                backoff = BACKOFF_START;
                c.in_flight.store(0, Ordering::Relaxed);
            }
            Err(e) => {
                c.connected.store(false, Ordering::Relaxed);
                if !failing {
                    tracing::warn!("MySQL sink: {e:#}; buffering and retrying");
                    failing = true;
                }
                // Put the unwritten rows back in front, in their order.
                {
                    let mut b = shared.buf.lock().unwrap_or_else(|e| e.into_inner());
                    if !cats_ok {
                        for r in cats.into_iter().rev() {
                            b.cats.push_front(r);
                        }
                    }
                    if !ips_ok {
                        for ip in ips.into_iter().rev() {
                            b.ips.push_front(ip);
                        }
                    }
                    c.in_flight.store(0, Ordering::Relaxed);
                }
                if stopping {
                    tracing::warn!("MySQL sink stopping with unwritten rows");
                    break;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_CAP);
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), pool.disconnect()).await;
}

/// Every service result (normal or anomalous, both algorithms) into `cat_result_data`, as the
/// admin UI reads it; a re-scored sample gets the new model version's row.
pub struct CatResultTable(pub Arc<MysqlBlacklistSink>);

impl crate::anomaly::driver::ResultSink for CatResultTable {
    fn change(
        &mut self,
        action: crate::anomaly::driver::ChangeAction,
        r: &crate::anomaly::hub::StoredResult,
    ) -> anyhow::Result<()> {
        if action == crate::anomaly::driver::ChangeAction::Add {
            let a = &r.result;
            self.0.insert_cat_results(vec![CatResultRow {
                appid: a.appid.clone(),
                sample_time_ms: a.time_ms,
                cluster: a.cluster.map(|c| c as i32),
                distance: a.distance,
                score: Some(a.score),
                anomaly: a.anomaly,
                algorithm: a.algorithm.name().to_string(),
                model_version: a.model_version.to_string(),
            }]);
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}
