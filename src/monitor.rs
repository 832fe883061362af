//! Link statistics and the admin UI's monitoring records (SPEC §3.1, §7), published to Redis
//! every `redis.monitor_interval_secs`:
//! - `CSANTI_MONITOR_LP<ms>`: per `server_addr`, requests of the period (before filtering) and
//!   the last `connections_active`;
//! - `CSANTI_MONITOR_DP<ms>` / `_DP_LAST`: lines the dataprocess stage handled in the period;
//! - `CSANTI_MONITOR_QUERY<ms>` / `_QUERY_LAST`: Query requests the window took in.
//!
//! Workers count into a local [`Tally`] per line (no lock) and merge it into the process's
//! [`Monitor`] once per batch; worker 0 publishes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Instant;

use crate::sink::redis::{LinkStats, MonitorRecord, RedisSink};

/// One worker's counts since its last merge.
#[derive(Debug, Default)]
pub struct Tally {
    /// server_addr → (requests, last connections_active).
    servers: HashMap<String, (u64, Option<u32>)>,
    lines: u64,
    queries: u64,
}

impl Tally {
    /// A line that parsed (before filtering).
    pub fn line(&mut self, server_addr: &str, connections_active: Option<u32>) {
        self.lines += 1;
        match self.servers.get_mut(server_addr) {
            Some(e) => {
                e.0 += 1;
                e.1 = connections_active.or(e.1);
            }
            None => {
                self.servers
                    .insert(server_addr.to_string(), (1, connections_active));
            }
        }
    }

    /// A Query request went into the window.
    pub fn query(&mut self) {
        self.queries += 1;
    }
}

#[derive(Debug)]
struct Period {
    since: Instant,
    since_ms: i64,
    servers: BTreeMap<String, u64>,
    active: BTreeMap<String, u64>,
    lines: u64,
    queries: u64,
}

impl Period {
    fn new() -> Period {
        Period {
            since: Instant::now(),
            since_ms: now_ms(),
            servers: BTreeMap::new(),
            active: BTreeMap::new(),
            lines: 0,
            queries: 0,
        }
    }
}

/// The counts of the current period, merged from all workers of the process.
pub struct Monitor {
    period: Mutex<Period>,
    interval_ms: u64,
    /// `applicationUniqueName` / `applicationId` of the records.
    pub app_name: String,
    pub utc_offset_minutes: i32,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Monitor {
    pub fn new(interval_ms: u64, app_name: &str, utc_offset_minutes: i32) -> Monitor {
        Monitor {
            period: Mutex::new(Period::new()),
            interval_ms: interval_ms.max(1),
            app_name: app_name.to_string(),
            utc_offset_minutes,
        }
    }

    /// Adds a worker's tally and empties it.
    pub fn merge(&self, t: &mut Tally) {
        if t.lines == 0 && t.queries == 0 {
            return;
        }
        let Ok(mut p) = self.period.lock() else {
            return;
        };
        p.lines += t.lines;
        p.queries += t.queries;
        for (server, (n, active)) in t.servers.drain() {
            if let Some(a) = active {
                p.active.insert(server.clone(), a as u64);
            }
            *p.servers.entry(server).or_default() += n;
        }
        t.lines = 0;
        t.queries = 0;
    }

    /// When the period is over: its counts, and the next period begins (worker 0 calls this).
    pub fn take_due(&self) -> Option<FinishedPeriod> {
        self.take(|p| p.since.elapsed().as_millis() >= self.interval_ms as u128)
    }

    /// The counts of the period so far, if it counted anything (at the end of a run).
    pub fn take_rest(&self) -> Option<FinishedPeriod> {
        self.take(|p| p.lines > 0 || p.queries > 0)
    }

    fn take(&self, due: impl FnOnce(&Period) -> bool) -> Option<FinishedPeriod> {
        let done = {
            let mut p = self.period.lock().ok()?;
            if !due(&p) {
                return None;
            }
            std::mem::replace(&mut *p, Period::new())
        };
        let end_ms = now_ms();
        Some(FinishedPeriod {
            end_ms,
            cost_ms: (end_ms - done.since_ms).max(0) as u64,
            links: LinkStats {
                servers_count_map: done.servers,
                active_num_map: done.active,
            },
            lines: done.lines,
            queries: done.queries,
        })
    }

    /// Publishes a finished period's records to Redis.
    pub fn publish(&self, redis: &RedisSink, done: &FinishedPeriod) {
        let end = done.end_ms;
        redis.publish_link_stats(end, &done.links);
        redis.publish_dataprocess(&MonitorRecord {
            end_time_ms: end,
            utc_offset_minutes: self.utc_offset_minutes,
            application_unique_name: format!("{}-dataprocess", self.app_name),
            application_id: self.app_name.clone(),
            source_count: done.lines,
            cost_time_ms: done.cost_ms,
            servers_count_map: done.links.servers_count_map.clone(),
        });
        redis.publish_rulecompute(&MonitorRecord {
            end_time_ms: end,
            utc_offset_minutes: self.utc_offset_minutes,
            application_unique_name: format!("{}-rulecompute", self.app_name),
            application_id: self.app_name.clone(),
            source_count: done.queries,
            cost_time_ms: done.cost_ms,
            servers_count_map: BTreeMap::new(),
        });
    }
}

/// The counts of one finished period.
#[derive(Debug)]
pub struct FinishedPeriod {
    /// Wall-clock end of the period, ms since the epoch.
    pub end_ms: i64,
    pub cost_ms: u64,
    /// Per `server_addr`: requests of the period and the last `connections_active`.
    pub links: LinkStats,
    /// Lines dataprocess handled.
    pub lines: u64,
    /// Query requests the window took in.
    pub queries: u64,
}

impl FinishedPeriod {
    /// As the API shows it: the Redis record's two maps, with the period and its totals.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "end_time_ms": self.end_ms,
            "period_ms": self.cost_ms,
            "serversCountMap": self.links.servers_count_map,
            "activeNumMap": self.links.active_num_map,
            "lines": self.lines,
            "queries": self.queries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_merge_per_server_with_the_last_active_count() {
        let m = Monitor::new(1000, "antispider", 480);
        let mut a = Tally::default();
        a.line("10.0.0.1", Some(5));
        a.line("10.0.0.1", None);
        a.line("10.0.0.2", Some(7));
        a.query();
        let mut b = Tally::default();
        b.line("10.0.0.1", Some(9));
        m.merge(&mut a);
        m.merge(&mut b);
        let p = m.period.lock().unwrap();
        assert_eq!(p.lines, 4);
        assert_eq!(p.queries, 1);
        assert_eq!(p.servers["10.0.0.1"], 3);
        assert_eq!(p.active["10.0.0.1"], 9);
        assert_eq!(p.active["10.0.0.2"], 7);
        assert!(a.servers.is_empty() && a.lines == 0);
    }
}
