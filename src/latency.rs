//! End-to-end latency: from a line entering the engine to the decisions of its tick leaving the
//! sinks (issue 5's live-latency figure, SPEC §7's "latency from event arrival to blacklist
//! output").
//!
//! The engine notes the wall-clock time at which each tick was first seen (when a worker reads
//! a windowed line with a newer tick than any before). Two figures come out:
//! - per tick: when every worker has written the decisions of ticks before `c`, each tick below
//!   `c` is done; its latency is now − first seen. One sample per slide, whether or not the
//!   tick changed the blacklist: what any decision would have waited. This includes waiting
//!   for the tick to close (up to one slide: a tick is done only once a later tick arrives),
//!   so it is the figure for the tick's *first* line;
//! - per tick, from its *last* line: now − the first arrival of the next tick (a lower bound:
//!   the tick's last line came just before it).
//! - per decision: now − the first arrival of a tick at or after the decision's tick.
//!
//! Both are upper bounds for the line that caused a decision (it arrived no earlier than its
//! tick was first seen).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

use prometheus_client::metrics::histogram::Histogram;

use crate::rulecompute::Time;

/// Samples kept per figure (a reservoir would be fairer; a cap keeps memory bounded).
const MAX_SAMPLES: usize = 1_000_000;

#[derive(Default)]
pub struct LatencyRecorder {
    first_seen: Mutex<BTreeMap<Time, Instant>>,
    ticks_us: Mutex<Vec<u64>>,
    ticks_last_us: Mutex<Vec<u64>>,
    decisions_us: Mutex<Vec<u64>>,
    /// The metrics' histograms of the per-tick and per-decision figures.
    histograms: Option<(Histogram, Histogram)>,
}

/// Percentiles in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct LatencySummary {
    /// Per completed tick: first line of the tick read → its decisions written.
    pub tick: Percentiles,
    /// Per completed tick: (about) its last line read → its decisions written.
    pub tick_last_line: Percentiles,
    /// Per blacklist decision written.
    pub decision: Percentiles,
}

fn percentiles(mut v: Vec<u64>) -> Percentiles {
    if v.is_empty() {
        return Percentiles::default();
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    Percentiles {
        samples: v.len(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        max_ms: *v.last().expect("not empty") as f64 / 1000.0,
    }
}

fn push(v: &Mutex<Vec<u64>>, us: u64) {
    if let Ok(mut v) = v.lock() {
        if v.len() < MAX_SAMPLES {
            v.push(us);
        }
    }
}

impl LatencyRecorder {
    /// A recorder that also feeds the latency histograms of `metrics`.
    pub fn observed_by(metrics: &crate::ops::Metrics) -> LatencyRecorder {
        LatencyRecorder {
            histograms: Some((
                metrics.tick_latency.clone(),
                metrics.decision_latency.clone(),
            )),
            ..Default::default()
        }
    }

    /// A worker read the first line of `tick` (newer than any it read before).
    pub fn seen(&self, tick: Time) {
        if let Ok(mut m) = self.first_seen.lock() {
            m.entry(tick).or_insert_with(Instant::now);
        }
    }

    /// A decision at `tick` was written.
    pub fn decision_written(&self, tick: Time) {
        let first = self
            .first_seen
            .lock()
            .ok()
            .and_then(|m| m.range(tick..).next().map(|(_, i)| *i));
        if let Some(i) = first {
            let us = i.elapsed().as_micros() as u64;
            push(&self.decisions_us, us);
            if let Some((_, h)) = &self.histograms {
                h.observe(us as f64 / 1e6);
            }
        }
    }

    /// Every worker has written the decisions of the ticks before `below` (call from one
    /// worker). `record` = false drops them unmeasured (ticks re-read after a restart).
    pub fn written_below(&self, below: Time, record: bool) {
        let (done, next): (Vec<Instant>, Option<Instant>) = match self.first_seen.lock() {
            Ok(mut m) => {
                let rest = m.split_off(&below);
                let next = rest.values().next().copied();
                (
                    std::mem::replace(&mut *m, rest).into_values().collect(),
                    next,
                )
            }
            Err(_) => return,
        };
        if record {
            for (k, i) in done.iter().enumerate() {
                let us = i.elapsed().as_micros() as u64;
                push(&self.ticks_us, us);
                if let Some((h, _)) = &self.histograms {
                    h.observe(us as f64 / 1e6);
                }
                // The next tick's first line marks the end of this tick's lines.
                if let Some(n) = done.get(k + 1).copied().or(next) {
                    push(&self.ticks_last_us, n.elapsed().as_micros() as u64);
                }
            }
        }
    }

    pub fn summary(&self) -> LatencySummary {
        let take = |v: &Mutex<Vec<u64>>| v.lock().map(|v| v.clone()).unwrap_or_default();
        LatencySummary {
            tick: percentiles(take(&self.ticks_us)),
            tick_last_line: percentiles(take(&self.ticks_last_us)),
            decision: percentiles(take(&self.decisions_us)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_measured_once_when_written() {
        let r = LatencyRecorder::default();
        r.seen(1000);
        r.seen(2000);
        r.seen(3000);
        r.decision_written(1500); // → the arrival of tick 2000
        r.written_below(2500, true);
        r.written_below(2500, true);
        let s = r.summary();
        assert_eq!(s.tick.samples, 2, "ticks 1000 and 2000, each once");
        assert_eq!(s.decision.samples, 1);
        r.written_below(10_000, false);
        assert_eq!(r.summary().tick.samples, 2, "unrecorded ticks are dropped");
        assert!(percentiles(vec![1000, 2000, 3000]).p50_ms == 2.0);
    }
}
