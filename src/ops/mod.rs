//! What the HTTP API sees of the running engine (SPEC §7): its metrics, the blacklist as it
//! stands, explain requests (answered by the worker that holds the IP, from the dataflow's own
//! arrangements), the live rule tables, and the link statistics.
//!
//! One [`OpsHub`] per process, shared by the API thread and the workers. Handlers never wait
//! on a worker's lock: an explain request is left in an inbox that the worker empties between
//! two steps of its loop, and answered through a oneshot channel.

pub mod explain;
pub mod metrics;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use differential_dataflow::hashable::Hashable;
use serde_json::Value;

pub use metrics::Metrics;

use crate::cluster::Cluster;
use crate::monitor::FinishedPeriod;
use crate::rules::feed::RuleFeed;
use crate::sink::blacklist::{Action, DecisionEvent};
use crate::sink::redis::LinkStats;

/// The engine's state as the API reads it; see the module docs.
#[derive(Default)]
pub struct OpsHub {
    pub metrics: Metrics,
    /// (flow id, IP) → the entry's JSON, for the decisions of this process's workers.
    blacklist: RwLock<BTreeMap<(String, IpAddr), Value>>,
    explains: Mutex<Vec<ExplainRequest>>,
    /// Requests in `explains`, read without the lock by every worker at every loop.
    explains_pending: AtomicUsize,
    engine: RwLock<Option<Running>>,
    /// Link statistics (`monitor`): the last finished period, and all periods summed.
    links: Mutex<Option<Links>>,
}

/// Link statistics as the API shows them.
struct Links {
    last_period: Value,
    since_start: LinkStats,
    lines: u64,
    queries: u64,
}

/// What the hub knows of a running engine.
struct Running {
    rules: Arc<RuleFeed>,
    cluster: Cluster,
}

/// An explain request for the worker `worker`; the answer goes to `reply`.
pub struct ExplainRequest {
    pub ip: IpAddr,
    pub worker: usize,
    pub reply: tokio::sync::oneshot::Sender<Value>,
}

/// Why an explain request cannot be asked here.
#[derive(Debug, PartialEq, Eq)]
pub enum AskError {
    /// No engine runs in this process (the run has ended, or not yet begun).
    NotRunning,
    /// The IP is held by a worker of another process of the cluster.
    Elsewhere { process: usize, worker: usize },
}

impl OpsHub {
    /// The engine has started with these rules on this place of the cluster.
    pub fn attach(&self, rules: Arc<RuleFeed>, cluster: Cluster) {
        *self.engine.write().unwrap_or_else(|p| p.into_inner()) = Some(Running { rules, cluster });
    }

    /// The engine has stopped: its workers answer nothing any more.
    pub fn detach(&self) {
        *self.engine.write().unwrap_or_else(|p| p.into_inner()) = None;
        // Whoever still waits gets a closed channel, not a timeout.
        self.explains
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.explains_pending.store(0, Ordering::Release);
    }

    /// Whether an engine runs in this process now.
    pub fn running(&self) -> bool {
        self.place().is_some()
    }

    /// This process's place in the cluster (`process`, `processes`), while the engine runs.
    pub fn place(&self) -> Option<(usize, usize)> {
        let engine = self.engine.read().unwrap_or_else(|p| p.into_inner());
        engine
            .as_ref()
            .map(|r| (r.cluster.process, r.cluster.processes))
    }

    /// The live rule feed, while the engine runs.
    pub fn rules(&self) -> Option<Arc<RuleFeed>> {
        let engine = self.engine.read().unwrap_or_else(|p| p.into_inner());
        engine.as_ref().map(|r| r.rules.clone())
    }

    /// Leaves an explain request for the worker that holds `ip` (the one the dataflow
    /// exchanges the IP's parts to); the answer arrives on the returned channel.
    pub fn ask_explain(
        &self,
        ip: IpAddr,
    ) -> Result<tokio::sync::oneshot::Receiver<Value>, AskError> {
        let engine = self.engine.read().unwrap_or_else(|p| p.into_inner());
        let Some(running) = engine.as_ref() else {
            return Err(AskError::NotRunning);
        };
        let c = &running.cluster;
        // As timely's exchange routes a record: its hash modulo the workers of the cluster.
        let worker = (ip.hashed() % c.peers() as u64) as usize;
        if c.process_of(worker) != c.process {
            return Err(AskError::Elsewhere {
                process: c.process_of(worker),
                worker,
            });
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let mut all = self.explains.lock().unwrap_or_else(|p| p.into_inner());
        all.push(ExplainRequest { ip, worker, reply });
        // Under the lock, so the count never says less than the inbox holds.
        self.explains_pending.store(all.len(), Ordering::Release);
        Ok(answer)
    }

    /// The explain requests for worker `index` (usually none: one atomic read).
    pub fn take_explains(&self, index: usize) -> Vec<ExplainRequest> {
        if self.explains_pending.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        let mut all = self.explains.lock().unwrap_or_else(|p| p.into_inner());
        let (mine, rest): (Vec<_>, Vec<_>) = all.drain(..).partition(|r| r.worker == index);
        *all = rest;
        self.explains_pending.store(all.len(), Ordering::Release);
        mine
    }

    /// A decision was made (written now, or recomputed after a restart): the blacklist as the
    /// API shows it follows it. `json` is the decision's output line.
    pub fn decided(&self, d: &DecisionEvent, json: &Value) {
        let key = (d.entry.flow_id.clone(), d.entry.ip);
        let mut list = self.blacklist.write().unwrap_or_else(|p| p.into_inner());
        match d.action {
            Action::Remove => {
                list.remove(&key);
            }
            Action::Add | Action::Update => {
                let mut json = json.clone();
                if let Some(o) = json.as_object_mut() {
                    o.remove("action");
                    o.remove("wall_time");
                    // Since when the pair is on the list (an update keeps the add's time).
                    let since = list
                        .get(&key)
                        .and_then(|old| old.get("since").cloned())
                        .unwrap_or_else(|| o["event_time"].clone());
                    o.insert("since".into(), since);
                }
                list.insert(key, json);
            }
        }
        self.metrics.blacklist_entries.set(list.len() as i64);
    }

    /// The blacklist entries, of one flow or of all, ordered by flow and IP.
    pub fn blacklist(&self, flow_id: Option<&str>) -> Vec<Value> {
        let list = self.blacklist.read().unwrap_or_else(|p| p.into_inner());
        list.iter()
            .filter(|((flow, _), _)| flow_id.is_none_or(|f| f == flow))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// A period of link statistics ended (`monitor`).
    pub fn period_ended(&self, p: &FinishedPeriod) {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let links = links.get_or_insert_with(|| Links {
            last_period: Value::Null,
            since_start: LinkStats::default(),
            lines: 0,
            queries: 0,
        });
        links.last_period = p.to_json();
        for (server, n) in &p.links.servers_count_map {
            *links
                .since_start
                .servers_count_map
                .entry(server.clone())
                .or_default() += n;
        }
        for (server, n) in &p.links.active_num_map {
            links.since_start.active_num_map.insert(server.clone(), *n);
        }
        links.lines += p.lines;
        links.queries += p.queries;
    }

    /// The link statistics: the last finished period, and every period since the start
    /// (requests summed, the last `connections_active` of each server); `None` before the
    /// first period has ended.
    pub fn links(&self) -> Option<Value> {
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links.as_ref().map(|l| {
            serde_json::json!({
                "last_period": l.last_period,
                "since_start": {
                    "serversCountMap": l.since_start.servers_count_map,
                    "activeNumMap": l.since_start.active_num_map,
                    "lines": l.lines,
                    "queries": l.queries,
                },
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(processes: usize, process: usize) -> Cluster {
        Cluster::from_config(&crate::config::EngineConfig {
            workers: 2,
            processes,
            process,
            ..Default::default()
        })
        .unwrap()
    }

    fn rules() -> Arc<RuleFeed> {
        let mut cfg = crate::config::Config::default();
        cfg.rules.dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        cfg.rules.watch = false;
        Arc::new(RuleFeed::start(&cfg).unwrap())
    }

    #[test]
    fn explain_goes_to_the_worker_of_the_ip_or_names_its_process() {
        let hub = OpsHub::default();
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(hub.ask_explain(ip).err(), Some(AskError::NotRunning));
        hub.attach(rules(), cluster(1, 0));
        let worker = (ip.hashed() % 2) as usize;
        let _answer = hub.ask_explain(ip).unwrap();
        assert!(hub.take_explains(1 - worker).is_empty());
        let mine = hub.take_explains(worker);
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].ip, ip);
        assert!(hub.take_explains(worker).is_empty());

        // Two processes of two workers: workers 2 and 3 are process 1's.
        hub.attach(rules(), cluster(2, 0));
        let elsewhere = (0..=255u8)
            .map(|b| IpAddr::from([10, 0, 0, b]))
            .find(|ip| ip.hashed() % 4 >= 2)
            .unwrap();
        assert!(matches!(
            hub.ask_explain(elsewhere),
            Err(AskError::Elsewhere { process: 1, .. })
        ));
        hub.detach();
        assert_eq!(hub.ask_explain(ip).err(), Some(AskError::NotRunning));
    }
}
