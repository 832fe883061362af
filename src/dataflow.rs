//! The one differential dataflow: log events and rule tables in, indicators and blacklist out.
//!
//! `build` reads like SPEC's table of contents: window → indicators (§4) → flow rules and
//! scores (§5) → blacklist with the indicator values that explain it.

use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;

use differential_dataflow::input::{Input, InputSession};
use differential_dataflow::operators::arrange::TraceAgent;
use differential_dataflow::operators::ThresholdTotal;
use differential_dataflow::trace::cursor::{cursor_list, Cursor};
use differential_dataflow::trace::implementations::ValSpine;
use differential_dataflow::trace::TraceReader;
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::progress::frontier::{Antichain, AntichainRef};
use timely::worker::Worker;

use crate::rulecompute::{self, Indicators, Time, WinEvent, WindowSpec};
use crate::rules::{CriticalPage, ProcessInfo, Rule, RuleMaintenance, RuleTables, Strategy};
use crate::scoring::{self, Decision};

/// One blacklist entry with the indicator values that put it there.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlacklistEntry {
    pub flow_id: String,
    pub ip: IpAddr,
    pub decision: Decision,
    pub indicators: Indicators,
}

/// Updates captured from the dataflow, drained by the driver once the probe has passed them.
pub type Captured<D> = Rc<RefCell<Vec<(D, Time, isize)>>>;

type IndicatorTrace = TraceAgent<ValSpine<IpAddr, Indicators, Time, isize>>;
type BlockTrace = TraceAgent<crate::rulecompute::BlockCountSpine>;

/// The rule tables that rulecompute and scoring read, as input collections.
pub struct RuleInputs {
    pub critical_pages: InputSession<Time, CriticalPage, isize>,
    pub process_info: InputSession<Time, ProcessInfo, isize>,
    pub strategy: InputSession<Time, Strategy, isize>,
    pub rule: InputSession<Time, Rule, isize>,
    pub maintenance: InputSession<Time, RuleMaintenance, isize>,
}

impl RuleInputs {
    /// Applies the difference between two snapshots: retractions of removed rows, insertions
    /// of new ones, at the sessions' current time.
    pub fn apply(&mut self, old: &RuleTables, new: &RuleTables) {
        fn apply_table<T: differential_dataflow::ExchangeData + Ord + Clone>(
            session: &mut InputSession<Time, T, isize>,
            old: &[T],
            new: &[T],
        ) {
            let (removed, added) = crate::rules::diff_rows(old, new);
            for row in removed {
                session.remove(row);
            }
            for row in added {
                session.insert(row);
            }
        }
        apply_table(
            &mut self.critical_pages,
            &old.critical_pages,
            &new.critical_pages,
        );
        apply_table(&mut self.process_info, &old.process_info, &new.process_info);
        apply_table(&mut self.strategy, &old.strategy, &new.strategy);
        apply_table(&mut self.rule, &old.rule, &new.rule);
        apply_table(&mut self.maintenance, &old.maintenance, &new.maintenance);
    }

    fn for_each(&mut self, mut f: impl FnMut(&mut dyn SessionOps)) {
        f(&mut self.critical_pages);
        f(&mut self.process_info);
        f(&mut self.strategy);
        f(&mut self.rule);
        f(&mut self.maintenance);
    }
}

/// What the driver needs of an input session, whatever its row type.
trait SessionOps {
    fn advance(&mut self, t: Time);
    fn flush_now(&mut self);
}

impl<D: differential_dataflow::Data> SessionOps for InputSession<Time, D, isize> {
    fn advance(&mut self, t: Time) {
        if t > *self.time() {
            self.advance_to(t);
        }
    }
    fn flush_now(&mut self) {
        self.flush();
    }
}

/// Handles to one worker's part of the dataflow.
pub struct Pipeline {
    pub events: InputSession<Time, WinEvent, isize>,
    pub rules: RuleInputs,
    pub probe: ProbeHandle<Time>,
    pub blacklist: Captured<BlacklistEntry>,
    /// Service anomalies (SPEC §6): sample parts and model keys in, see `anomaly::wire`.
    pub service: crate::anomaly::wire::ServiceInputs,
    indicators: IndicatorTrace,
    block_counts: BlockTrace,
    dataflow_id: usize,
}

impl Pipeline {
    /// The time all inputs are at.
    pub fn time(&self) -> Time {
        *self.events.time()
    }

    /// Moves every input to `t` (never backwards) and lets arrangements compact up to it.
    pub fn advance_to(&mut self, t: Time) {
        if t <= self.time() {
            return;
        }
        self.events.advance_to(t);
        self.rules.for_each(|s| s.advance(t));
        self.service.advance_to(t);
        self.flush();
        // Nothing reads the indicator trace before the input time, so it may compact.
        let frontier = [t.saturating_sub(1)];
        self.indicators
            .set_logical_compaction(AntichainRef::new(&frontier));
        self.indicators
            .set_physical_compaction(AntichainRef::new(&frontier));
        self.block_counts
            .set_logical_compaction(AntichainRef::new(&frontier));
        self.block_counts
            .set_physical_compaction(AntichainRef::new(&frontier));
    }

    pub fn flush(&mut self) {
        self.events.flush();
        self.rules.for_each(|s| s.flush_now());
        self.service.flush();
    }

    /// The earliest time the dataflow has not finished (every time before it is done).
    pub fn completed(&self) -> Time {
        self.probe
            .with_frontier(|f| f.iter().next().copied().unwrap_or(Time::MAX))
    }

    /// Whether the dataflow has finished every time `<= t`.
    pub fn done_through(&self, t: Time) -> bool {
        !self.probe.less_equal(&t)
    }

    /// This worker's share of the indicators as of tick `t` (the dataflow must be done
    /// through `t`), with the exact indicator 7 of each IP's block.
    pub fn indicators_at(&mut self, t: Time) -> Vec<(IpAddr, Indicators)> {
        let blocks: std::collections::HashMap<_, _> =
            live_at(&mut self.block_counts, t).into_iter().collect();
        let mut out = live_at(&mut self.indicators, t);
        for (ip, ind) in &mut out {
            // Every worker holds every block's count (see `rulecompute::count_indicators`).
            ind.ip_block = blocks
                .get(&crate::rulecompute::block_of(ip))
                .copied()
                .unwrap_or(ind.ip_block);
        }
        out
    }

    /// Takes the captured blacklist updates whose time the dataflow has completed.
    pub fn drain_blacklist(&self) -> Vec<(BlacklistEntry, Time, isize)> {
        let mut captured = self.blacklist.borrow_mut();
        let (done, pending): (Vec<_>, Vec<_>) = captured
            .drain(..)
            .partition(|(_, t, _)| !self.probe.less_equal(t));
        *captured = pending;
        done
    }

    /// Drops the dataflow without running its future (e.g. window expirations after a replay).
    pub fn shutdown(self, worker: &mut Worker) {
        let id = self.dataflow_id;
        drop(self);
        worker.drop_dataflow(id);
    }
}

/// The `(key, value)` pairs of a trace present at time `t`.
fn live_at<K, V>(trace: &mut TraceAgent<ValSpine<K, V, Time, isize>>, t: Time) -> Vec<(K, V)>
where
    K: differential_dataflow::ExchangeData + Clone,
    V: differential_dataflow::ExchangeData + Clone,
{
    let mut out = Vec::new();
    let Some(batches) = trace.spans_through(Antichain::new().borrow()) else {
        return out;
    };
    let (mut cursor, storage) = cursor_list(batches.into_iter().filter_map(|b| b.inner).collect());
    for ((k, v), times) in cursor.to_vec(&storage, |k| k.clone(), |v| v.clone()) {
        let n: isize = times
            .iter()
            .filter(|(tt, _)| *tt <= t)
            .map(|(_, r)| *r)
            .sum();
        if n > 0 {
            out.push((k, v));
        }
    }
    out
}

/// Builds the dataflow on this worker (with service anomalies fed by nobody).
pub fn build(worker: &mut Worker, spec: WindowSpec) -> Pipeline {
    build_with(worker, spec, Default::default())
}

/// Builds the dataflow on this worker; `service` is shared by the workers of the process.
pub fn build_with(
    worker: &mut Worker,
    spec: WindowSpec,
    service: crate::anomaly::wire::ServiceShared,
) -> Pipeline {
    let dataflow_id = worker.next_dataflow_index();
    worker.dataflow::<Time, _, _>(|scope| {
        let (events_in, events) = scope.new_collection::<WinEvent, isize>();
        let (critical_in, critical_pages) = scope.new_collection::<CriticalPage, isize>();
        let (process_in, processes) = scope.new_collection::<ProcessInfo, isize>();
        let (strategy_in, strategies) = scope.new_collection::<Strategy, isize>();
        let (rule_in, rules) = scope.new_collection::<Rule, isize>();
        let (maintenance_in, maintenance) = scope.new_collection::<RuleMaintenance, isize>();
        // Interval threshold 0 always exists: it carries indicator 3 (see rulecompute::intervals).
        let (_, zero_threshold) = scope.new_collection_from(if scope.index() == 0 {
            vec![0i64]
        } else {
            vec![]
        });

        let flow_rules = scoring::flow_rules(processes, strategies, rules, maintenance);
        let thresholds = scoring::interval_thresholds(flow_rules.clone())
            .concat(zero_threshold)
            .distinct_total();
        let critical_rules = critical_pages.map(|c| (c.id, c.critical_page_match_expression));

        let block_thresholds = scoring::block_thresholds(flow_rules.clone());
        let (by_ip, block_counts) =
            rulecompute::indicators(events, critical_rules, thresholds, block_thresholds, spec);
        let indicator_trace = by_ip.trace.clone();
        let block_trace = block_counts.trace.clone();
        let indicators = by_ip.clone().as_collection(|ip, ind| (*ip, ind.clone()));

        let blacklist_capture: Captured<BlacklistEntry> = Rc::new(RefCell::new(Vec::new()));
        let sink = blacklist_capture.clone();
        let (probe, _) = scoring::blacklist(indicators, flow_rules)
            .map(|((flow_id, ip), decision)| (ip, (flow_id, decision)))
            .join_core(by_ip, |ip, (flow_id, decision), ind| {
                Some(BlacklistEntry {
                    flow_id: flow_id.clone(),
                    ip: *ip,
                    decision: decision.clone(),
                    indicators: ind.clone(),
                })
            })
            // Reports show the block's exact count, not the level scoring used.
            .map(|entry| (rulecompute::block_of(&entry.ip), entry))
            .join_core(block_counts, |_block, entry, &n| {
                let mut entry = entry.clone();
                entry.indicators.ip_block = n;
                Some(entry)
            })
            .inspect(move |update| sink.borrow_mut().push(update.clone()))
            .probe();

        let (parts_in, parts) = scope.new_collection();
        let (models_in, models) = scope.new_collection();
        crate::anomaly::wire::build(
            parts,
            models,
            service.store.clone(),
            &service.captures,
            &probe,
        );

        Pipeline {
            events: events_in,
            rules: RuleInputs {
                critical_pages: critical_in,
                process_info: process_in,
                strategy: strategy_in,
                rule: rule_in,
                maintenance: maintenance_in,
            },
            probe,
            blacklist: blacklist_capture,
            service: crate::anomaly::wire::ServiceInputs::new(
                parts_in,
                models_in,
                service.captures,
                service.store,
            ),
            indicators: indicator_trace,
            block_counts: block_trace,
            dataflow_id,
        }
    })
}
