//! The one differential dataflow: log events and rule tables in, indicators and blacklist out.
//!
//! `build` reads like SPEC's table of contents: window → indicators (§4) → flow rules and
//! scores (§5) → blacklist with the indicator values that explain it.

use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;

use differential_dataflow::hashable::Hashable;
use differential_dataflow::input::{Input, InputSession};
use differential_dataflow::operators::arrange::TraceAgent;
use differential_dataflow::operators::ThresholdTotal;
use differential_dataflow::trace::cursor::{cursor_list, Cursor};
use differential_dataflow::trace::implementations::ValSpine;
use differential_dataflow::trace::TraceReader;
use differential_dataflow::AsCollection;
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::{Exchange, Inspect, Probe};
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

/// A blacklist decision of the dataflow: the IP is in the flow's blacklist with this score.
pub type DecisionRow = ((String, IpAddr), Decision);

/// Updates captured from the dataflow, drained by the driver once the probe has passed them.
pub type Captured<D> = Rc<RefCell<Vec<(D, Time, isize)>>>;

type GatherTrace = TraceAgent<crate::rulecompute::GatherSpine>;
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
    /// Blacklist decisions, without their explanation (see [`Pipeline::drain_blacklist`]).
    decisions: Captured<DecisionRow>,
    /// Every decision before this time has been drained; the traces keep what is needed to
    /// explain the later ones.
    drained_below: Time,
    /// Service anomalies (SPEC §6): sample parts and model keys in, see `anomaly::wire`.
    pub service: crate::anomaly::wire::ServiceInputs,
    gathered: GatherTrace,
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
        self.compact();
    }

    /// Lets the traces compact up to what can still be read: the indicators at the input
    /// time, and at the ticks of the decisions not yet drained (and the tick before them).
    fn compact(&mut self) {
        let frontier = [self
            .time()
            .saturating_sub(1)
            .min(self.drained_below.saturating_sub(1))];
        // Only the times matter here: explain reads every batch (`spans_through(&[])`), so
        // the large gather trace's batches may be merged as its own reduce allows.
        self.gathered
            .set_logical_compaction(AntichainRef::new(&frontier));
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
            counts_at(&mut self.block_counts, t).into_iter().collect();
        let mut out = gathered_at(&mut self.gathered, None, t);
        for (ip, ind) in &mut out {
            // Every worker holds every block's count (see `rulecompute::block_indicator`).
            ind.ip_block = blocks
                .get(&crate::rulecompute::block_of(ip))
                .copied()
                .unwrap_or(ind.ip_block);
        }
        out
    }

    /// Takes the captured decision updates whose time the dataflow has completed.
    pub fn drain_decisions(&mut self) -> Vec<(DecisionRow, Time, isize)> {
        let done = {
            let mut captured = self.decisions.borrow_mut();
            let (done, pending): (Vec<_>, Vec<_>) = captured
                .drain(..)
                .partition(|(_, t, _)| !self.probe.less_equal(t));
            *captured = pending;
            done
        };
        // The join that scores emits a retraction and re-insertion of an unchanged decision
        // whenever a blacklisted IP's indicators change: cancel them here.
        let mut done = done;
        differential_dataflow::consolidation::consolidate_updates(&mut done);
        self.drained_below = self.drained_below.max(self.completed());
        done
    }

    /// Takes the completed decision updates, each with the indicators that explain it: an
    /// insertion with the IP's indicators at its tick, a retraction with those of the tick
    /// before (the last state in which the IP was blacklisted that way).
    ///
    /// The explanation is read from the traces here rather than joined in the dataflow: a join
    /// would re-emit every blacklisted IP's entry at every tick its indicators change.
    pub fn drain_blacklist(&mut self) -> Vec<(BlacklistEntry, Time, isize)> {
        let done = self.drain_decisions();
        let out = done
            .into_iter()
            .map(|(((flow_id, ip), decision), t, r)| {
                let at = if r > 0 { t } else { t.saturating_sub(1) };
                let entry = BlacklistEntry {
                    flow_id,
                    ip,
                    decision,
                    indicators: self.explain(ip, at),
                };
                (entry, t, r)
            })
            .collect();
        self.compact();
        out
    }

    /// The indicators of `ip` at tick `t`, with its block's exact count (indicator 7). Only
    /// on the worker that holds the IP (where its decisions are captured), for a `t` not
    /// yet compacted away.
    pub fn explain(&mut self, ip: IpAddr, t: Time) -> Indicators {
        let mut ind = gathered_at(&mut self.gathered, Some(ip), t)
            .pop()
            .map(|(_, ind)| ind)
            .unwrap_or_default();
        ind.ip_block = count_at(
            &mut self.block_counts,
            &crate::rulecompute::block_of(&ip),
            t,
        );
        ind
    }

    /// For the API's explain: the newest completed tick, the indicators of `ip` at it, and
    /// the flow-rule list the scoring used then (held in the gather arrangement). Only on the
    /// worker that holds the IP.
    pub fn explain_latest(&mut self, ip: IpAddr) -> (Time, Indicators, Vec<scoring::FlowRule>) {
        let t = self.completed().min(self.time()).saturating_sub(1);
        let indicators = self.explain(ip, t);
        let rules = match value_at(&mut self.gathered, &rulecompute::GatherKey::Rules, t) {
            Some(rulecompute::Part::FlowRules(rules)) => rules,
            _ => Vec::new(),
        };
        (t, indicators, rules)
    }

    /// Drops the dataflow without running its future (e.g. window expirations after a replay).
    pub fn shutdown(self, worker: &mut Worker) {
        let id = self.dataflow_id;
        drop(self);
        worker.drop_dataflow(id);
    }
}

/// The keys of a trace whose multiplicities are counts (see [`rulecompute::BlockCountSpine`]),
/// with their counts at time `t` (the positive ones).
fn counts_at<K>(trace: &mut TraceAgent<ValSpine<K, (), Time, isize>>, t: Time) -> Vec<(K, i64)>
where
    K: differential_dataflow::ExchangeData + Clone,
{
    let mut out = Vec::new();
    let Some(batches) = trace.spans_through(Antichain::new().borrow()) else {
        return out;
    };
    let (mut cursor, storage) = cursor_list(batches.into_iter().filter_map(|b| b.inner).collect());
    while let Some(key) = cursor.get_key(&storage) {
        let n = multiplicity_at(&mut cursor, &storage, t);
        if n > 0 {
            out.push((key.clone(), n as i64));
        }
        cursor.step_key(&storage);
    }
    out
}

/// The count of `key` at time `t` in a trace whose multiplicities are counts.
fn count_at<K>(trace: &mut TraceAgent<ValSpine<K, (), Time, isize>>, key: &K, t: Time) -> i64
where
    K: differential_dataflow::ExchangeData,
{
    let Some(batches) = trace.spans_through(Antichain::new().borrow()) else {
        return 0;
    };
    let (mut cursor, storage) = cursor_list(batches.into_iter().filter_map(|b| b.inner).collect());
    cursor.seek_key(&storage, key);
    if cursor.get_key(&storage) != Some(key) {
        return 0;
    }
    multiplicity_at(&mut cursor, &storage, t) as i64
}

/// The multiplicity at time `t` of the cursor's current value.
fn multiplicity_at<C: Cursor<Time = Time, Diff = isize>>(
    cursor: &mut C,
    storage: &C::Storage,
    t: Time,
) -> isize {
    let mut n = 0isize;
    cursor.map_times(storage, |tt, r| {
        if C::owned_time(tt) <= t {
            n += C::owned_diff(r);
        }
    });
    n
}

/// The value of `key` present at time `t` in a trace with one value per key.
fn value_at<K, V>(
    trace: &mut TraceAgent<ValSpine<K, V, Time, isize>>,
    key: &K,
    t: Time,
) -> Option<V>
where
    K: differential_dataflow::ExchangeData,
    V: differential_dataflow::ExchangeData + Clone,
{
    let batches = trace.spans_through(Antichain::new().borrow())?;
    let (mut cursor, storage) = cursor_list(batches.into_iter().filter_map(|b| b.inner).collect());
    cursor.seek_key(&storage, key);
    if cursor.get_key(&storage) != Some(key) {
        return None;
    }
    let mut found = None;
    while let Some(v) = cursor.get_val(&storage) {
        if multiplicity_at(&mut cursor, &storage, t) > 0 {
            found = Some(v.clone());
        }
        cursor.step_val(&storage);
    }
    found
}

/// The indicators at time `t` of `ip` (or of every IP), folded from their parts in the gather
/// arrangement as scoring folds them.
fn gathered_at(trace: &mut GatherTrace, ip: Option<IpAddr>, t: Time) -> Vec<(IpAddr, Indicators)> {
    let mut out = Vec::new();
    let Some(batches) = trace.spans_through(Antichain::new().borrow()) else {
        return out;
    };
    let (mut cursor, storage) = cursor_list(batches.into_iter().filter_map(|b| b.inner).collect());
    if let Some(ip) = ip {
        cursor.seek_key(&storage, &rulecompute::GatherKey::Ip(ip));
    }
    let mut parts: Vec<(&rulecompute::Part, isize)> = Vec::new();
    while let Some(key) = cursor.get_key(&storage) {
        let rulecompute::GatherKey::Ip(at_ip) = *key else {
            cursor.step_key(&storage);
            continue;
        };
        if ip.is_some_and(|ip| ip != at_ip) {
            break;
        }
        parts.clear();
        while let Some(part) = cursor.get_val(&storage) {
            let n = multiplicity_at(&mut cursor, &storage, t);
            if n != 0 {
                parts.push((part, n));
            }
            cursor.step_val(&storage);
        }
        if let Some(ind) = rulecompute::fold_parts(parts.iter().copied()) {
            out.push((at_ip, ind));
        }
        cursor.step_key(&storage);
    }
    out
}

/// Builds the dataflow on this worker (with service anomalies fed by nobody).
pub fn build(worker: &mut Worker, spec: WindowSpec) -> Pipeline {
    build_with(worker, spec, Default::default(), Default::default())
}

/// Adds the multiplicities of a collection's updates to `gauge`: its size, as the updates
/// pass (one atomic add per message, not per record).
fn count_into<D: differential_dataflow::Data>(
    updates: rulecompute::Coll<'_, D>,
    gauge: prometheus_client::metrics::gauge::Gauge,
) -> rulecompute::Coll<'_, D> {
    updates
        .inner
        .inspect_core(move |event| {
            if let Ok((_, data)) = event {
                let n: isize = data.iter().map(|(_, _, r)| *r).sum();
                if n != 0 {
                    gauge.inc_by(n as i64);
                }
            }
        })
        .as_collection()
}

/// Builds the dataflow on this worker; `service` is shared by the workers of the process,
/// `gauges` (the window's size) too.
pub fn build_with(
    worker: &mut Worker,
    spec: WindowSpec,
    service: crate::anomaly::wire::ServiceShared,
    gauges: crate::ops::metrics::WindowGauges,
) -> Pipeline {
    let dataflow_id = worker.next_dataflow_index();
    worker.dataflow::<Time, _, _>(|scope| {
        let (events_in, events) = scope.new_collection::<WinEvent, isize>();
        let (critical_in, critical_pages) = scope.new_collection::<CriticalPage, isize>();
        let (process_in, processes) = scope.new_collection::<ProcessInfo, isize>();
        let (strategy_in, strategies) = scope.new_collection::<Strategy, isize>();
        let (rule_in, rules) = scope.new_collection::<Rule, isize>();
        let (maintenance_in, maintenance) = scope.new_collection::<RuleMaintenance, isize>();

        let flow_rules = scoring::flow_rules(processes, strategies, rules, maintenance);
        let thresholds = scoring::interval_thresholds(flow_rules.clone()).distinct_total();
        let critical_rules = critical_pages.map(|c| (c.id, c.critical_page_match_expression));

        let mut window = rulecompute::windowed(events, spec);
        window.records = count_into(window.records, gauges.events);
        let (parts, blocks) = rulecompute::indicators(window, critical_rules, thresholds);
        // One sorted list, for the gather (rule hits are bits into it) and the scoring.
        let rule_list = rulecompute::one_list(flow_rules.clone(), "FlowRuleList");
        let gathered = rulecompute::gather(parts, rule_list.clone());
        let block =
            rulecompute::block_indicator(blocks, scoring::block_thresholds(flow_rules.clone()));
        let block_counts = block.counts;
        let mut gather_trace = gathered.trace.clone();
        gather_trace.set_physical_compaction(Antichain::new().borrow());
        let block_trace = block_counts.trace.clone();

        let decision_capture: Captured<DecisionRow> = Rc::new(RefCell::new(Vec::new()));
        let sink = decision_capture.clone();
        // One record per IP in the window: its rule hits.
        let rule_hits = count_into(scoring::rule_hits_per_ip(gathered), gauges.ips);
        let (probe, _) = scoring::blacklist(rule_hits, rule_list, block.levels)
            .inner
            // To the worker that holds the IP's indicators, which explain the decision.
            .exchange(|(((_, ip), _), _, _): &(DecisionRow, Time, isize)| ip.hashed())
            .inspect(move |update| sink.borrow_mut().push(update.clone()))
            .as_collection()
            .probe();
        // Decisions are explained from the block counts too: the probe covers them.
        block_counts.stream.probe_with(&probe);

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
            decisions: decision_capture,
            drained_below: 0,
            service: crate::anomaly::wire::ServiceInputs::new(
                parts_in,
                models_in,
                service.captures,
                service.store,
            ),
            gathered: gather_trace,
            block_counts: block_trace,
            dataflow_id,
        }
    })
}
