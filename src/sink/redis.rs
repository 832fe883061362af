//! Redis: the blacklist keys (SPEC §5), the monitoring records (§3.1, §7) and the rule-table
//! change flags (§2.2).
//!
//! [`RedisSink`] never blocks its caller on Redis: every call puts a write into a bounded
//! in-memory queue that a background thread drains. The thread
//! - writes `CSANTI_ANTI_BLACK<ip>:<flowId>` with its TTL and re-writes it every
//!   `refresh_secs` while the IP stays blacklisted ([`RedisSink::blacklist_set`] /
//!   [`RedisSink::blacklist_clear`]);
//! - appends every blacklist write to the durable [`Backup`] before sending it;
//! - keeps the writes it could not send while Redis is down (blacklist writes coalesced per
//!   key, monitor records in order; beyond `buffer_limit` the oldest monitor records are dropped
//!   first), reconnects with exponential back-off (capped at 5 s), and on every (re)connection —
//!   and whenever its marker key has disappeared (a `FLUSHALL` or a restart without
//!   persistence) — writes every unexpired backup record back with `SET key value PXAT t NX`.
//!
//! [`RedisChangeFlags`] reads and resets the six change flags in one Lua script, so a flag an
//! admin UI sets between the read and the reset is never lost.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use redis::IntoConnectionInfo;
use serde::Serialize;

use crate::config::RedisConfig;
use crate::format::time::format_ymd_hms;
use crate::sink::backup::{Backup, BackupRecord};

/// Prefix of the blacklist keys: `CSANTI_ANTI_BLACK<ip>:<flowId>` (no separator).
pub const BLACKLIST_PREFIX: &str = "CSANTI_ANTI_BLACK";
/// Link statistics: `CSANTI_MONITOR_LP<epochMillis>`.
pub const MONITOR_LP: &str = "CSANTI_MONITOR_LP";
/// dataprocess monitor: `CSANTI_MONITOR_DP<ms>` and `CSANTI_MONITOR_DP_LAST`.
pub const MONITOR_DP: &str = "CSANTI_MONITOR_DP";
/// rulecompute monitor: `CSANTI_MONITOR_QUERY<ms>` and `CSANTI_MONITOR_QUERY_LAST`.
pub const MONITOR_QUERY: &str = "CSANTI_MONITOR_QUERY";
/// Written (without TTL) after every restore; when it is missing Redis has lost its data.
pub const MARKER_KEY: &str = "antispider:redis_sink:marker";

/// The change flags in the order of [`ChangeFlags`]' fields.
pub const CHANGE_FLAGS: [&str; 6] = [
    "FilterChangeFlag",
    "ClassifyRuleChangeFlag",
    "AnalyzeRuleChangeFlag",
    "IpBlackRuleChangeFlag",
    "QueryCriticalPagesChangeFlag",
    "ProcessChangeFlag",
];

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(2);
const BATCH: usize = 1000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `CSANTI_ANTI_BLACK<ip>:<flowId>`.
pub fn blacklist_key(ip: IpAddr, flow_id: &str) -> String {
    format!("{BLACKLIST_PREFIX}{ip}:{flow_id}")
}

/// The original's score rendering: like a Java/Scala `Double` for the usual values
/// (`16.875`, `100.0`).
fn format_score(score: f64) -> String {
    if score.is_finite() && score.fract() == 0.0 && score.abs() < 1e15 {
        format!("{score:.1}")
    } else {
        format!("{score}")
    }
}

/// `<score>|<strategyCode>|<ruleId,ruleId,...>|<yyyy-MM-dd HH:mm:ss>` (SPEC §5), the time
/// rendered at `utc_offset_minutes`.
pub fn blacklist_value<S: AsRef<str>>(
    score: f64,
    strategy_code: &str,
    rule_ids: &[S],
    time_ms: i64,
    utc_offset_minutes: i32,
) -> String {
    let ids: Vec<&str> = rule_ids.iter().map(AsRef::as_ref).collect();
    format!(
        "{}|{}|{}|{}",
        format_score(score),
        strategy_code,
        ids.join(","),
        format_ymd_hms(time_ms, utc_offset_minutes)
    )
}

/// Link statistics (SPEC §3.1): requests per `server_addr` and its last `connections_active`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LinkStats {
    #[serde(rename = "serversCountMap")]
    pub servers_count_map: BTreeMap<String, u64>,
    #[serde(rename = "activeNumMap")]
    pub active_num_map: BTreeMap<String, u64>,
}

impl LinkStats {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("link stats serialise")
    }
}

/// A monitor record of the original admin UI (SPEC §7): `CSANTI_MONITOR_DP…` for dataprocess,
/// `CSANTI_MONITOR_QUERY…` for rulecompute. Counts are rendered as strings, as the original.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MonitorRecord {
    /// End of the measured period (epoch ms); also the `<ms>` of the key.
    pub end_time_ms: i64,
    /// Offset used to render `endTime` (`yyyy-MM-dd HH:mm:ss`).
    pub utc_offset_minutes: i32,
    pub application_unique_name: String,
    pub application_id: String,
    /// Lines (dataprocess) or processed queries (rulecompute) of the period.
    pub source_count: u64,
    /// Processing time of the period in ms.
    pub cost_time_ms: u64,
    /// Per `server_addr` line counts (empty for rulecompute, as the original).
    pub servers_count_map: BTreeMap<String, u64>,
}

impl MonitorRecord {
    /// `{"endTime","applicationUniqueName","applicationId","sourceCount","costTime","countPerMillis","serversCountMap"}`.
    pub fn to_json(&self) -> String {
        let per_ms = if self.cost_time_ms == 0 {
            0.0
        } else {
            self.source_count as f64 / self.cost_time_ms as f64
        };
        serde_json::json!({
            "endTime": format_ymd_hms(self.end_time_ms, self.utc_offset_minutes),
            "applicationUniqueName": self.application_unique_name,
            "applicationId": self.application_id,
            "sourceCount": self.source_count.to_string(),
            "costTime": self.cost_time_ms.to_string(),
            "countPerMillis": per_ms.to_string(),
            "serversCountMap": self.servers_count_map,
        })
        .to_string()
    }
}

/// Counters of a [`RedisSink`] (monotonic except `pending` and `connected`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RedisSinkStats {
    /// Writes accepted but not yet in Redis.
    pub pending: u64,
    /// Writes Redis acknowledged (blacklist keys, refreshes, monitor records).
    pub written: u64,
    /// Writes dropped because the buffer was full (or Redis rejected them).
    pub dropped: u64,
    /// Successful re-connections after a lost connection.
    pub reconnects: u64,
    /// Keys written back from the backup because Redis did not have them.
    pub restored: u64,
    /// Failed attempts to write the backup file.
    pub backup_errors: u64,
    pub connected: bool,
}

/// The six change flags (SPEC §2.2); `true` = the table was edited since the last take.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChangeFlags {
    pub filter: bool,
    pub classify: bool,
    pub analyze: bool,
    pub ip_black: bool,
    pub query_critical_pages: bool,
    pub process: bool,
}

impl ChangeFlags {
    fn from_array(a: [bool; 6]) -> ChangeFlags {
        ChangeFlags {
            filter: a[0],
            classify: a[1],
            analyze: a[2],
            ip_black: a[3],
            query_critical_pages: a[4],
            process: a[5],
        }
    }

    fn as_array(&self) -> [bool; 6] {
        [
            self.filter,
            self.classify,
            self.analyze,
            self.ip_black,
            self.query_critical_pages,
            self.process,
        ]
    }

    pub fn any(&self) -> bool {
        self.as_array().iter().any(|b| *b)
    }

    /// The Redis names of the flags that are set.
    pub fn names(&self) -> Vec<&'static str> {
        CHANGE_FLAGS
            .iter()
            .zip(self.as_array())
            .filter(|(_, set)| *set)
            .map(|(n, _)| *n)
            .collect()
    }
}

/// Anything that can take (read and reset) the change flags; the MySQL rule feed polls one.
pub trait ChangeFlagSource: Send {
    fn take_change_flags(&mut self) -> anyhow::Result<ChangeFlags>;
}

/// A Redis client built from the config, with the password from `password_env` if set.
pub fn redis_client(cfg: &RedisConfig) -> anyhow::Result<redis::Client> {
    let info = cfg
        .url
        .as_str()
        .into_connection_info()
        .map_err(|e| anyhow!("redis.url: {e}"))?;
    let info = match std::env::var(&cfg.password_env) {
        Ok(pw) if !cfg.password_env.is_empty() && !pw.is_empty() => {
            let settings = info.redis_settings().clone().set_password(pw);
            info.set_redis_settings(settings)
        }
        _ => info,
    };
    redis::Client::open(info).map_err(|e| anyhow!("redis.url: {e}"))
}

fn connect(client: &redis::Client) -> redis::RedisResult<redis::Connection> {
    let conn = client.get_connection_with_timeout(IO_TIMEOUT)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(conn)
}

fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

/// Reads and resets the change flags atomically (one Lua script). A flag counts as set when its
/// value is `true` in any case, surrounding spaces ignored (the original's `toBoolean`); only
/// set flags are written back, as `"false"`; absent flags stay absent.
pub struct RedisChangeFlags {
    client: redis::Client,
    conn: Option<redis::Connection>,
    script: redis::Script,
}

const TAKE_FLAGS_LUA: &str = r#"
local out = {}
for i, k in ipairs(KEYS) do
  local v = redis.call('GET', k)
  if v and string.lower(string.match(v, '^%s*(.-)%s*$')) == 'true' then
    redis.call('SET', k, 'false')
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"#;

impl RedisChangeFlags {
    pub fn new(cfg: &RedisConfig) -> anyhow::Result<RedisChangeFlags> {
        Ok(RedisChangeFlags {
            client: redis_client(cfg)?,
            conn: None,
            script: redis::Script::new(TAKE_FLAGS_LUA),
        })
    }

    /// Reads the six flags and resets the set ones to `"false"`, atomically.
    pub fn take(&mut self) -> anyhow::Result<ChangeFlags> {
        if self.conn.is_none() {
            self.conn =
                Some(connect(&self.client).context("Redis (change flags): cannot connect")?);
        }
        let conn = self.conn.as_mut().expect("connected above");
        let mut inv = self.script.prepare_invoke();
        for k in CHANGE_FLAGS {
            inv.key(k);
        }
        match inv.invoke::<Vec<i64>>(conn) {
            Ok(v) if v.len() == 6 => {
                let mut a = [false; 6];
                for (slot, x) in a.iter_mut().zip(v) {
                    *slot = x == 1;
                }
                Ok(ChangeFlags::from_array(a))
            }
            Ok(v) => Err(anyhow!(
                "Redis (change flags): unexpected script result {v:?}"
            )),
            Err(e) => {
                if is_connection_error(&e) {
                    self.conn = None;
                }
                Err(anyhow!("Redis (change flags): {e}"))
            }
        }
    }
}

impl ChangeFlagSource for RedisChangeFlags {
    fn take_change_flags(&mut self) -> anyhow::Result<ChangeFlags> {
        self.take()
    }
}

impl ChangeFlagSource for Arc<RedisSink> {
    fn take_change_flags(&mut self) -> anyhow::Result<ChangeFlags> {
        RedisSink::take_change_flags(self)
    }
}

enum Op {
    Set { key: String, value: String },
    Clear { key: String },
    Monitor { key: String, value: String },
    Restore,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Op>,
    monitors: usize,
}

#[derive(Default)]
struct Counters {
    pending_local: AtomicU64,
    written: AtomicU64,
    dropped: AtomicU64,
    reconnects: AtomicU64,
    restored: AtomicU64,
    backup_errors: AtomicU64,
    connected: AtomicBool,
}

struct Shared {
    queue: Mutex<Queue>,
    cv: Condvar,
    stop: AtomicBool,
    limit: usize,
    counters: Counters,
}

/// The Redis blacklist and monitoring sink; see the module documentation.
pub struct RedisSink {
    shared: Arc<Shared>,
    flags: Mutex<RedisChangeFlags>,
    thread: Option<JoinHandle<()>>,
}

impl RedisSink {
    /// Opens the backup (if configured) and starts the writer thread. Fails only on a bad URL
    /// or an unusable backup file; an unreachable Redis is retried in the background.
    pub fn start(cfg: &RedisConfig) -> anyhow::Result<RedisSink> {
        let client = redis_client(cfg)?;
        let backup = if cfg.backup_path.as_os_str().is_empty() {
            None
        } else {
            Some(Backup::open(&cfg.backup_path)?)
        };
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            cv: Condvar::new(),
            stop: AtomicBool::new(false),
            limit: cfg.buffer_limit.max(1),
            counters: Counters::default(),
        });
        let ttl = cfg.blacklist_ttl_secs.max(1);
        let refresh = if cfg.refresh_secs == 0 {
            (ttl / 4).max(1)
        } else {
            cfg.refresh_secs
        };
        let mut worker = Worker {
            shared: shared.clone(),
            client,
            conn: None,
            ever_connected: false,
            backoff: BACKOFF_START,
            next_attempt: Instant::now(),
            ttl_ms: ttl as i64 * 1000,
            refresh: Duration::from_secs(refresh),
            monitor_ttl: cfg.monitor_ttl_secs.max(1),
            delete_on_remove: cfg.delete_on_remove,
            restore_check: Duration::from_secs(cfg.restore_check_secs.max(1)),
            next_marker_check: Instant::now(),
            need_restore: true,
            active: HashMap::new(),
            dirty: HashMap::new(),
            monitors: VecDeque::new(),
            backup,
            logged_down: false,
        };
        let thread = std::thread::Builder::new()
            .name("redis-sink".into())
            .spawn(move || worker.run())
            .context("cannot start the Redis sink thread")?;
        Ok(RedisSink {
            shared,
            flags: Mutex::new(RedisChangeFlags::new(cfg)?),
            thread: Some(thread),
        })
    }

    fn push(&self, op: Op) {
        let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.items.len() >= self.shared.limit {
            // Drop the oldest monitor record; only when there is none, the oldest write.
            let pos = if q.monitors > 0 {
                q.items.iter().position(|o| matches!(o, Op::Monitor { .. }))
            } else {
                Some(0)
            };
            if let Some(i) = pos {
                if let Some(Op::Monitor { .. }) = q.items.remove(i) {
                    q.monitors -= 1;
                }
                self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        if matches!(op, Op::Monitor { .. }) {
            q.monitors += 1;
        }
        q.items.push_back(op);
        drop(q);
        self.shared.cv.notify_one();
    }

    /// Blacklists `ip` for `flow_id`: SET `CSANTI_ANTI_BLACK<ip>:<flowId>` = `value` with the
    /// TTL, refreshed until [`RedisSink::blacklist_clear`]. A later call replaces the value.
    pub fn blacklist_set(&self, ip: IpAddr, flow_id: &str, value: String) {
        self.push(Op::Set {
            key: blacklist_key(ip, flow_id),
            value,
        });
    }

    /// Stops refreshing the key (it then expires by itself; DEL with `delete_on_remove`).
    pub fn blacklist_clear(&self, ip: IpAddr, flow_id: &str) {
        self.push(Op::Clear {
            key: blacklist_key(ip, flow_id),
        });
    }

    fn monitor(&self, key: String, value: String) {
        self.push(Op::Monitor { key, value });
    }

    /// `CSANTI_MONITOR_LP<at_ms>` = the link statistics JSON, with the monitor TTL.
    pub fn publish_link_stats(&self, at_ms: i64, stats: &LinkStats) {
        self.monitor(format!("{MONITOR_LP}{at_ms}"), stats.to_json());
    }

    /// `CSANTI_MONITOR_DP<end ms>` and `CSANTI_MONITOR_DP_LAST`.
    pub fn publish_dataprocess(&self, rec: &MonitorRecord) {
        let json = rec.to_json();
        self.monitor(format!("{MONITOR_DP}{}", rec.end_time_ms), json.clone());
        self.monitor(format!("{MONITOR_DP}_LAST"), json);
    }

    /// `CSANTI_MONITOR_QUERY<end ms>` and `CSANTI_MONITOR_QUERY_LAST`.
    pub fn publish_rulecompute(&self, rec: &MonitorRecord) {
        let json = rec.to_json();
        self.monitor(format!("{MONITOR_QUERY}{}", rec.end_time_ms), json.clone());
        self.monitor(format!("{MONITOR_QUERY}_LAST"), json);
    }

    /// Asks the writer to restore the backup now (as after a reconnection).
    pub fn restore_now(&self) {
        self.push(Op::Restore);
    }

    /// Reads and resets the change flags (a blocking call with a 2 s timeout, on the caller's
    /// own connection).
    pub fn take_change_flags(&self) -> anyhow::Result<ChangeFlags> {
        self.flags.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    pub fn stats(&self) -> RedisSinkStats {
        let c = &self.shared.counters;
        let queued = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .items
            .len() as u64;
        RedisSinkStats {
            pending: queued + c.pending_local.load(Ordering::Relaxed),
            written: c.written.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            restored: c.restored.load(Ordering::Relaxed),
            backup_errors: c.backup_errors.load(Ordering::Relaxed),
            connected: c.connected.load(Ordering::Relaxed),
        }
    }

    /// Waits until nothing is pending (true) or `timeout` passes (false).
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        super::wait_until(timeout, || self.stats().pending == 0)
    }
}

impl Drop for RedisSink {
    /// Stops the writer after one last attempt to send what is pending (the backup is synced).
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Active {
    value: String,
    next_refresh: Instant,
}

enum Desired {
    Set { value: String, expire_at: i64 },
    Del,
}

struct Worker {
    shared: Arc<Shared>,
    client: redis::Client,
    conn: Option<redis::Connection>,
    ever_connected: bool,
    backoff: Duration,
    next_attempt: Instant,
    ttl_ms: i64,
    refresh: Duration,
    monitor_ttl: u64,
    delete_on_remove: bool,
    restore_check: Duration,
    next_marker_check: Instant,
    need_restore: bool,
    /// Blacklisted keys being refreshed.
    active: HashMap<String, Active>,
    /// Blacklist writes not yet acknowledged, coalesced per key.
    dirty: HashMap<String, Desired>,
    /// Monitor records not yet acknowledged (key, value), oldest first.
    monitors: VecDeque<(String, String)>,
    backup: Option<Backup>,
    logged_down: bool,
}

impl Worker {
    fn run(&mut self) {
        loop {
            let stopping = self.shared.stop.load(Ordering::SeqCst);
            let ops = self.wait_for_ops(stopping);
            let now = now_ms();
            for op in ops {
                self.apply(op, now);
            }
            self.refresh_due(now);
            self.sync_backup(now);
            self.enforce_limit();
            self.ensure_connected(stopping);
            if self.conn.is_some() {
                self.check_restore();
            }
            if self.conn.is_some() {
                self.flush();
            }
            self.publish_pending();
            if stopping {
                if !self.dirty.is_empty() || !self.monitors.is_empty() {
                    tracing::warn!(
                        "Redis sink stopping with {} blacklist and {} monitor writes unsent (blacklist keys stay in the backup)",
                        self.dirty.len(),
                        self.monitors.len()
                    );
                }
                return;
            }
        }
    }

    /// Takes the queued operations, waiting up to the next timer (at most 200 ms) for some.
    fn wait_for_ops(&mut self, stopping: bool) -> Vec<Op> {
        let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.items.is_empty() && !stopping {
            let mut wait = Duration::from_millis(200);
            let now = Instant::now();
            if let Some(t) = self.active.values().map(|a| a.next_refresh).min() {
                wait = wait.min(t.saturating_duration_since(now));
            }
            if self.conn.is_none() && (!self.dirty.is_empty() || !self.monitors.is_empty()) {
                wait = wait.min(self.next_attempt.saturating_duration_since(now));
            }
            q = self
                .shared
                .cv
                .wait_timeout(q, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        q.monitors = 0;
        let ops: Vec<Op> = q.items.drain(..).collect();
        // Count the taken operations as pending before the queue looks empty to `stats()`.
        self.shared.counters.pending_local.store(
            (self.dirty.len() + self.monitors.len() + ops.len()) as u64,
            Ordering::Relaxed,
        );
        ops
    }

    fn backup_append(&mut self, rec: BackupRecord) {
        if let Some(b) = &mut self.backup {
            if let Err(e) = b.append(rec) {
                self.shared
                    .counters
                    .backup_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!("{e:#}");
            }
        }
    }

    fn apply(&mut self, op: Op, now: i64) {
        match op {
            Op::Set { key, value } => {
                let expire_at = now + self.ttl_ms;
                self.backup_append(BackupRecord {
                    key: key.clone(),
                    value: Some(value.clone()),
                    expire_at,
                });
                self.dirty.insert(
                    key.clone(),
                    Desired::Set {
                        value: value.clone(),
                        expire_at,
                    },
                );
                self.active.insert(
                    key,
                    Active {
                        value,
                        next_refresh: Instant::now() + self.refresh,
                    },
                );
            }
            Op::Clear { key } => {
                self.active.remove(&key);
                if self.delete_on_remove {
                    self.backup_append(BackupRecord {
                        key: key.clone(),
                        value: None,
                        expire_at: 0,
                    });
                    self.dirty.insert(key, Desired::Del);
                }
            }
            Op::Monitor { key, value } => self.monitors.push_back((key, value)),
            Op::Restore => self.need_restore = true,
        }
    }

    fn refresh_due(&mut self, now: i64) {
        let instant = Instant::now();
        let due: Vec<String> = self
            .active
            .iter()
            .filter(|(_, a)| a.next_refresh <= instant)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            let a = self.active.get_mut(&key).expect("listed above");
            a.next_refresh = instant + self.refresh;
            let value = a.value.clone();
            let expire_at = now + self.ttl_ms;
            self.backup_append(BackupRecord {
                key: key.clone(),
                value: Some(value.clone()),
                expire_at,
            });
            self.dirty.insert(key, Desired::Set { value, expire_at });
        }
    }

    fn sync_backup(&mut self, now: i64) {
        if let Some(b) = &mut self.backup {
            let r = b.sync().and_then(|_| b.maybe_compact(now).map(|_| ()));
            if let Err(e) = r {
                self.shared
                    .counters
                    .backup_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!("{e:#}");
            }
        }
    }

    /// Keeps the unsent writes within the limit: oldest monitor records first, then blacklist
    /// writes (those are in the backup and come back with the next restore).
    fn enforce_limit(&mut self) {
        let limit = self.shared.limit;
        let mut dropped = 0u64;
        while self.dirty.len() + self.monitors.len() > limit && self.monitors.pop_front().is_some()
        {
            dropped += 1;
        }
        if self.dirty.len() > limit {
            let excess: Vec<String> = self
                .dirty
                .keys()
                .take(self.dirty.len() - limit)
                .cloned()
                .collect();
            for k in excess {
                self.dirty.remove(&k);
                dropped += 1;
            }
            self.need_restore = true;
        }
        if dropped > 0 {
            self.shared
                .counters
                .dropped
                .fetch_add(dropped, Ordering::Relaxed);
        }
    }

    fn lost(&mut self, what: &str, e: &redis::RedisError) {
        self.conn = None;
        self.shared
            .counters
            .connected
            .store(false, Ordering::Relaxed);
        if !self.logged_down {
            tracing::warn!("Redis sink: {what}: {e}; buffering and retrying");
            self.logged_down = true;
        }
        self.next_attempt = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_CAP);
    }

    fn ensure_connected(&mut self, stopping: bool) {
        if self.conn.is_some() || (!stopping && Instant::now() < self.next_attempt) {
            return;
        }
        if stopping && self.dirty.is_empty() && self.monitors.is_empty() {
            return;
        }
        match connect(&self.client) {
            Ok(c) => {
                self.conn = Some(c);
                self.backoff = BACKOFF_START;
                self.need_restore = true;
                self.shared
                    .counters
                    .connected
                    .store(true, Ordering::Relaxed);
                if self.ever_connected {
                    self.shared
                        .counters
                        .reconnects
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!("Redis sink: reconnected");
                }
                self.ever_connected = true;
                self.logged_down = false;
            }
            Err(e) => self.lost("cannot connect", &e),
        }
    }

    /// Restores the backup when needed: after a (re)connection, on request, or when the marker
    /// key has vanished.
    fn check_restore(&mut self) {
        if !self.need_restore && Instant::now() >= self.next_marker_check {
            self.next_marker_check = Instant::now() + self.restore_check;
            let conn = self.conn.as_mut().expect("connected");
            match redis::cmd("EXISTS").arg(MARKER_KEY).query::<i64>(conn) {
                Ok(0) => {
                    tracing::warn!("Redis sink: Redis has lost its data (marker key missing): restoring the blacklist from the backup");
                    self.need_restore = true;
                }
                Ok(_) => {}
                Err(e) if is_connection_error(&e) => return self.lost("marker check", &e),
                Err(e) => tracing::warn!("Redis sink: marker check: {e}"),
            }
        }
        if !self.need_restore {
            return;
        }
        let now = now_ms();
        // A key with a write pending is written by the next flush: restoring it too would
        // count it as lost (at a fresh start, the first decisions are in the backup already).
        let live: Vec<_> = self
            .backup
            .as_ref()
            .map(|b| b.live(now))
            .unwrap_or_default()
            .into_iter()
            .filter(|r| !self.dirty.contains_key(&r.key))
            .collect();
        let mut restored = 0u64;
        for chunk in live.chunks(BATCH) {
            let mut p = redis::pipe();
            for r in chunk {
                p.cmd("SET")
                    .arg(&r.key)
                    .arg(r.value.as_deref().unwrap_or(""))
                    .arg("PXAT")
                    .arg(r.expire_at)
                    .arg("NX");
            }
            let conn = self.conn.as_mut().expect("connected");
            match p.query::<Vec<redis::Value>>(conn) {
                Ok(vals) => {
                    restored += vals
                        .iter()
                        .filter(|v| matches!(v, redis::Value::Okay))
                        .count() as u64;
                }
                Err(e) if is_connection_error(&e) => return self.lost("restore", &e),
                Err(e) => {
                    tracing::warn!("Redis sink: restore: {e}");
                }
            }
        }
        let conn = self.conn.as_mut().expect("connected");
        if let Err(e) = redis::cmd("SET").arg(MARKER_KEY).arg(now).query::<()>(conn) {
            if is_connection_error(&e) {
                return self.lost("restore", &e);
            }
            tracing::warn!("Redis sink: marker: {e}");
        }
        if restored > 0 {
            tracing::info!("Redis sink: restored {restored} blacklist keys from the backup");
        }
        self.shared
            .counters
            .restored
            .fetch_add(restored, Ordering::Relaxed);
        self.need_restore = false;
        self.next_marker_check = Instant::now() + self.restore_check;
    }

    /// Sends the unsent writes in pipelines of up to [`BATCH`] commands.
    fn flush(&mut self) {
        let now = now_ms();
        // Blacklist keys whose write expired while Redis was away need no write.
        self.dirty.retain(|_, d| match d {
            Desired::Set { expire_at, .. } => *expire_at > now,
            Desired::Del => true,
        });
        while !self.dirty.is_empty() {
            let keys: Vec<String> = self.dirty.keys().take(BATCH).cloned().collect();
            let mut p = redis::pipe();
            for k in &keys {
                match &self.dirty[k] {
                    Desired::Set { value, expire_at } => {
                        p.cmd("SET")
                            .arg(k)
                            .arg(value)
                            .arg("PXAT")
                            .arg(*expire_at)
                            .ignore();
                    }
                    Desired::Del => {
                        p.cmd("DEL").arg(k).ignore();
                    }
                }
            }
            let conn = self.conn.as_mut().expect("connected");
            match p.query::<()>(conn) {
                Ok(()) => self.count_written(keys.len()),
                Err(e) if is_connection_error(&e) => return self.lost("write", &e),
                Err(e) => {
                    tracing::warn!("Redis sink: blacklist write rejected: {e}");
                    self.count_dropped(keys.len());
                }
            }
            for k in &keys {
                self.dirty.remove(k);
            }
        }
        while !self.monitors.is_empty() {
            let n = self.monitors.len().min(BATCH);
            let mut p = redis::pipe();
            for (k, v) in self.monitors.iter().take(n) {
                p.cmd("SET")
                    .arg(k)
                    .arg(v)
                    .arg("EX")
                    .arg(self.monitor_ttl)
                    .ignore();
            }
            let conn = self.conn.as_mut().expect("connected");
            match p.query::<()>(conn) {
                Ok(()) => self.count_written(n),
                Err(e) if is_connection_error(&e) => return self.lost("write", &e),
                Err(e) => {
                    tracing::warn!("Redis sink: monitor write rejected: {e}");
                    self.count_dropped(n);
                }
            }
            self.monitors.drain(..n);
        }
    }

    fn count_written(&self, n: usize) {
        self.shared
            .counters
            .written
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    fn count_dropped(&self, n: usize) {
        self.shared
            .counters
            .dropped
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    fn publish_pending(&self) {
        self.shared.counters.pending_local.store(
            (self.dirty.len() + self.monitors.len()) as u64,
            Ordering::Relaxed,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_and_value_formats() {
        let ip: IpAddr = "192.168.56.1".parse().unwrap();
        assert_eq!(
            blacklist_key(ip, "flow-1"),
            "CSANTI_ANTI_BLACK192.168.56.1:flow-1"
        );
        // 2020-04-03T16:39:49+08:00
        let t = 1_585_903_189_000;
        assert_eq!(
            blacklist_value(16.875, "flow-1", &["r1", "r2"], t, 480),
            "16.875|flow-1|r1,r2|2020-04-03 16:39:49"
        );
        assert_eq!(
            blacklist_value::<&str>(100.0, "f", &[], t, 0),
            "100.0|f||2020-04-03 08:39:49"
        );
    }

    #[test]
    fn monitor_json() {
        let mut ls = LinkStats::default();
        ls.servers_count_map.insert("192.168.8.103".into(), 1);
        ls.active_num_map.insert("192.168.8.103".into(), 3);
        assert_eq!(
            ls.to_json(),
            r#"{"serversCountMap":{"192.168.8.103":1},"activeNumMap":{"192.168.8.103":3}}"#
        );
        let rec = MonitorRecord {
            end_time_ms: 1_585_903_189_000,
            utc_offset_minutes: 480,
            application_unique_name: "antispider".into(),
            application_id: "app-1".into(),
            source_count: 10,
            cost_time_ms: 4,
            servers_count_map: ls.servers_count_map.clone(),
        };
        let v: serde_json::Value = serde_json::from_str(&rec.to_json()).unwrap();
        assert_eq!(v["endTime"], "2020-04-03 16:39:49");
        assert_eq!(v["sourceCount"], "10");
        assert_eq!(v["costTime"], "4");
        assert_eq!(v["countPerMillis"], "2.5");
        assert_eq!(v["serversCountMap"]["192.168.8.103"], 1);
        assert_eq!(v["applicationId"], "app-1");
    }

    #[test]
    fn change_flag_names() {
        let f = ChangeFlags {
            analyze: true,
            process: true,
            ..Default::default()
        };
        assert!(f.any());
        assert_eq!(
            f.names(),
            vec!["AnalyzeRuleChangeFlag", "ProcessChangeFlag"]
        );
        assert!(!ChangeFlags::default().any());
    }
}
