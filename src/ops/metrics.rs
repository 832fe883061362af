//! Prometheus metrics (SPEC §7): events in, out and dead-lettered per stage, the window's size,
//! latency from a line's arrival to its tick's decisions, and each worker's progress.
//!
//! Workers count into their own [`Counters`] per line (no shared write per line) and add what
//! is new to these metrics once per batch ([`Metrics::publish`]). The window gauges are moved
//! by the dataflow itself (see `dataflow::build_with`). Labels carry only stage names, dead
//! letter reasons, flow ids and worker numbers: never an IP, a phone or an ID number.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::engine::Counters;

/// The window's size, moved by the dataflow of every worker (see `dataflow::build_with`).
#[derive(Clone, Default)]
pub struct WindowGauges {
    /// Requests in the window.
    pub events: Gauge,
    /// IPs in the window.
    pub ips: Gauge,
}

type Label = [(&'static str, &'static str); 1];
type OwnedLabel = [(&'static str, String); 1];

/// The engine's metrics, all under the `antispider_` prefix.
pub struct Metrics {
    registry: Registry,
    pub lines_read: Counter,
    pub lines_parsed: Counter,
    pub requests_filtered: Counter,
    /// Processed requests by behaviour (`query`, `book`, `other`).
    pub requests_processed: Family<Label, Counter>,
    /// Dead-lettered lines by reason (`late`, `bad_time`, parse error kinds, ...).
    pub dead_letters: Family<OwnedLabel, Counter>,
    /// Requests that went into the window.
    pub window_events_in: Counter,
    /// Blacklist decisions written, by action (`add`, `remove`).
    pub decisions: Family<Label, Counter>,
    /// Requests in the live window (all workers of the process).
    pub window_events: Gauge,
    /// IPs with at least one request in the live window.
    pub window_ips: Gauge,
    /// (flow, IP) pairs on the blacklist now (decided by this process's workers).
    pub blacklist_entries: Gauge,
    /// Each worker's input time (event time, ms): what it has read up to.
    pub worker_input_time: Family<OwnedLabel, Gauge>,
    /// Each worker's completed time (event time, ms): every tick before it is decided.
    pub worker_completed_time: Family<OwnedLabel, Gauge>,
    /// A tick's first line read → the tick's decisions written, seconds.
    pub tick_latency: Histogram,
    /// A decision's tick first seen → the decision written, seconds.
    pub decision_latency: Histogram,
    /// Per output sink (`redis`, `mysql`, `kafka`): writes acknowledged, dropped (or failed),
    /// waiting, and reconnections.
    pub sink_written: Family<Label, Counter>,
    pub sink_dropped: Family<Label, Counter>,
    pub sink_pending: Family<Label, Gauge>,
    pub sink_reconnects: Family<Label, Counter>,
}

/// What an output sink reports of itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct SinkFigures {
    pub written: u64,
    pub dropped: u64,
    pub pending: u64,
    pub reconnects: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// A new metric of type `M`, registered under `name`.
fn registered<M>(registry: &mut Registry, name: &str, help: &str) -> M
where
    M: prometheus_client::registry::Metric + Clone + Default,
{
    let metric = M::default();
    registry.register(name, help, metric.clone());
    metric
}

/// Latency buckets: 1 ms to about 16 s.
fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("antispider");
        let r = &mut registry;
        let lines_read = registered(r, "lines_read", "Lines read from the source");
        let lines_parsed = registered(
            r,
            "lines_parsed",
            "Lines that parsed as an access-log record",
        );
        let requests_filtered = registered(
            r,
            "requests_filtered",
            "Requests dropped by a filter rule (static resources)",
        );
        let requests_processed = registered(
            r,
            "requests_processed",
            "Requests through dataprocess, by behaviour",
        );
        let dead_letters = registered(r, "dead_letters", "Lines dead-lettered, by reason");
        let window_events_in =
            registered(r, "window_events_in", "Requests that entered the window");
        let decisions = registered(
            r,
            "blacklist_decisions",
            "Blacklist decisions written, by action",
        );
        let window_events = registered(r, "window_events", "Requests in the live window");
        let window_ips = registered(r, "window_ips", "IPs with requests in the live window");
        let blacklist_entries = registered(
            r,
            "blacklist_entries",
            "(flow, IP) pairs on the blacklist now",
        );
        let worker_input_time = registered(
            r,
            "worker_input_time_ms",
            "Event time each worker has read up to (ms since the epoch)",
        );
        let worker_completed_time = registered(
            r,
            "worker_completed_time_ms",
            "Event time before which each worker has decided every tick (ms since the epoch)",
        );
        let tick_latency = latency_buckets();
        r.register(
            "tick_latency_seconds",
            "A tick's first line read to the tick's decisions written",
            tick_latency.clone(),
        );
        let decision_latency = latency_buckets();
        r.register(
            "decision_latency_seconds",
            "A decision's tick first seen to the decision written",
            decision_latency.clone(),
        );
        let sink_written = registered(
            r,
            "sink_written",
            "Writes an output sink has delivered, by sink",
        );
        let sink_dropped = registered(
            r,
            "sink_dropped",
            "Writes an output sink dropped or failed to deliver, by sink",
        );
        let sink_pending = registered(
            r,
            "sink_pending",
            "Writes waiting in an output sink, by sink",
        );
        let sink_reconnects = registered(
            r,
            "sink_reconnects",
            "Reconnections of an output sink, by sink",
        );
        Metrics {
            registry,
            sink_written,
            sink_dropped,
            sink_pending,
            sink_reconnects,
            lines_read,
            lines_parsed,
            requests_filtered,
            requests_processed,
            dead_letters,
            window_events_in,
            decisions,
            window_events,
            window_ips,
            blacklist_entries,
            worker_input_time,
            worker_completed_time,
            tick_latency,
            decision_latency,
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String does not fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Adds what a worker counted since its last call: `now` are its counters, `published`
    /// what it had added before (updated here).
    pub fn publish(&self, now: &Counters, published: &mut Counters) {
        fn delta(counter: &Counter, now: u64, before: u64) {
            if now > before {
                counter.inc_by(now - before);
            }
        }
        let p = &*published;
        delta(&self.lines_read, now.lines_read, p.lines_read);
        delta(&self.lines_parsed, now.parsed, p.parsed);
        delta(&self.requests_filtered, now.filtered, p.filtered);
        for (behavior, n, before) in [
            ("query", now.processed_query, p.processed_query),
            ("book", now.processed_book, p.processed_book),
            ("other", now.processed_other, p.processed_other),
        ] {
            delta(
                &self
                    .requests_processed
                    .get_or_create(&[("behavior", behavior)]),
                n,
                before,
            );
        }
        for (reason, n) in &now.dead_lettered_by_reason {
            let before = p.dead_lettered_by_reason.get(reason).copied().unwrap_or(0);
            if *n > before {
                self.dead_letters
                    .get_or_create(&[("reason", (*reason).to_string())])
                    .inc_by(n - before);
            }
        }
        delta(&self.window_events_in, now.windowed, p.windowed);
        for (action, n, before) in [
            ("add", now.decisions_add, p.decisions_add),
            ("remove", now.decisions_remove, p.decisions_remove),
        ] {
            delta(
                &self.decisions.get_or_create(&[("action", action)]),
                n,
                before,
            );
        }
        *published = now.clone();
    }

    /// The figures of output sink `sink`, as it counts them (one caller per process).
    pub fn sink(&self, sink: &'static str, f: SinkFigures) {
        let label = [("sink", sink)];
        for (family, now) in [
            (&self.sink_written, f.written),
            (&self.sink_dropped, f.dropped),
            (&self.sink_reconnects, f.reconnects),
        ] {
            let counter = family.get_or_create(&label);
            let before = counter.get();
            if now > before {
                counter.inc_by(now - before);
            }
        }
        self.sink_pending
            .get_or_create(&label)
            .set(f.pending.min(i64::MAX as u64) as i64);
    }

    /// The gauges the dataflow keeps at the window's size.
    pub fn window_gauges(&self) -> WindowGauges {
        WindowGauges {
            events: self.window_events.clone(),
            ips: self.window_ips.clone(),
        }
    }

    /// Worker `index`'s input and completed times (the completed time is at most the input
    /// time: past the end of the input the dataflow has completed everything).
    pub fn progress(&self, index: usize, input_time: u64, completed: u64) {
        let label = [("worker", index.to_string())];
        self.worker_input_time
            .get_or_create(&label)
            .set(input_time as i64);
        self.worker_completed_time
            .get_or_create(&label)
            .set(completed.min(input_time) as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes_deltas_once() {
        let m = Metrics::new();
        let mut published = Counters::default();
        let mut now = Counters {
            lines_read: 10,
            parsed: 9,
            processed_query: 4,
            windowed: 4,
            ..Default::default()
        };
        now.dead_lettered_by_reason.insert("late", 1);
        m.publish(&now, &mut published);
        now.lines_read = 15;
        now.dead_lettered_by_reason.insert("late", 3);
        m.publish(&now, &mut published);
        m.publish(&now, &mut published);
        let text = m.render();
        for line in [
            "antispider_lines_read_total 15",
            "antispider_lines_parsed_total 9",
            "antispider_requests_processed_total{behavior=\"query\"} 4",
            "antispider_dead_letters_total{reason=\"late\"} 3",
            "antispider_window_events_in_total 4",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn sink_figures_become_counters_and_a_gauge() {
        let m = Metrics::new();
        let f = SinkFigures {
            written: 5,
            dropped: 1,
            pending: 3,
            reconnects: 0,
        };
        m.sink("redis", f);
        m.sink(
            "redis",
            SinkFigures {
                written: 7,
                pending: 0,
                ..f
            },
        );
        let text = m.render();
        for line in [
            "antispider_sink_written_total{sink=\"redis\"} 7",
            "antispider_sink_dropped_total{sink=\"redis\"} 1",
            "antispider_sink_pending{sink=\"redis\"} 0",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }

    #[test]
    fn progress_per_worker() {
        let m = Metrics::new();
        m.progress(1, 5_000, 4_000);
        m.progress(1, 6_000, u64::MAX);
        let text = m.render();
        assert!(text.contains("antispider_worker_input_time_ms{worker=\"1\"} 6000"));
        assert!(text.contains("antispider_worker_completed_time_ms{worker=\"1\"} 6000"));
    }
}
