//! Drives the dataflow over explicit events and rule changes, for tests and benchmarks.
//!
//! The engine's own driver reads logs; this one takes [`WinEvent`]s directly, so the oracle
//! test can compare the dataflow's indicators with a batch recomputation at chosen ticks.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::dataflow::{self, BlacklistEntry};
use crate::rulecompute::{Indicators, Time, WinEvent, WindowSpec};
use crate::rules::RuleTables;

/// Input of a harness run. Event `i` is fed by worker `i % workers`; rules by worker 0.
#[derive(Clone, Debug, Default)]
pub struct Scenario {
    pub spec: WindowSpec,
    /// Rule tables in force from time 0.
    pub rules: RuleTables,
    /// Rule tables replacing the previous ones from a tick on (sorted by tick).
    pub rule_changes: Vec<(Time, RuleTables)>,
    /// Events; each enters the window at `spec.tick_of(t_ms)`.
    pub events: Vec<WinEvent>,
    /// Ticks at which to read the indicators.
    pub ticks: Vec<Time>,
    pub workers: usize,
}

/// What the dataflow held at each requested tick.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    pub indicators: BTreeMap<Time, BTreeMap<IpAddr, Indicators>>,
    /// Consolidated blacklist updates with their times.
    pub blacklist: Vec<(BlacklistEntry, Time, isize)>,
}

/// Runs `scenario` and returns the indicators at each requested tick.
pub fn run(scenario: Scenario) -> Observed {
    let workers = scenario.workers.max(1);
    let scenario = Arc::new(scenario);
    let result = Arc::new(Mutex::new(Observed::default()));
    let (s, r) = (scenario.clone(), result.clone());
    let config = if workers == 1 {
        timely::Config::thread()
    } else {
        timely::Config::process(workers)
    };
    timely::execute(config, move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let spec = s.spec;
        let mut p = dataflow::build(worker, spec);
        if index == 0 {
            p.rules.apply(&RuleTables::default(), &s.rules);
        }
        let mut mine: Vec<(Time, WinEvent)> = s
            .events
            .iter()
            .enumerate()
            .filter(|(i, _)| i % peers == index)
            .map(|(_, e)| (spec.tick_of(e.t_ms), e.clone()))
            .collect();
        mine.sort_by_key(|(t, _)| *t);
        let mut ticks = s.ticks.clone();
        ticks.sort_unstable();
        ticks.dedup();
        let mut current_rules = s.rules.clone();
        let mut changes = s.rule_changes.iter().peekable();
        let mut next_event = 0;
        let mut seen = Vec::new();
        // The blacklist as a collection of entries that carry the indicators of the tick they
        // are read at (what the oracle checks): decisions explained at their own tick, then
        // refreshed at each requested tick.
        let mut live: BTreeMap<(String, IpAddr), BlacklistEntry> = BTreeMap::new();
        let mut entries: Vec<(BlacklistEntry, Time, isize)> = Vec::new();
        for &tick in &ticks {
            // Feed everything up to and including `tick`, in time order.
            loop {
                let te = mine.get(next_event).map(|(t, _)| *t).filter(|t| *t <= tick);
                let tc = changes.peek().map(|(t, _)| *t).filter(|t| *t <= tick);
                let t = match (te, tc) {
                    (None, None) => break,
                    (a, b) => a.into_iter().chain(b).min().expect("one is some"),
                };
                p.advance_to(t);
                while next_event < mine.len() && mine[next_event].0 == t {
                    p.events.update_at(mine[next_event].1.clone(), t, 1);
                    next_event += 1;
                }
                while let Some((_, new)) = changes.next_if(|(ct, _)| *ct == t) {
                    if index == 0 {
                        p.rules.apply(&current_rules, new);
                    }
                    current_rules = new.clone();
                }
            }
            p.advance_to(tick + 1);
            while !p.done_through(tick) {
                worker.step();
            }
            let now = p.indicators_at(tick);
            let mut decisions = p.drain_decisions();
            decisions.sort_by_key(|(_, t, r)| (*t, *r));
            for (((flow_id, ip), decision), t, r) in decisions {
                let key = (flow_id.clone(), ip);
                if r < 0 {
                    if let Some(old) = live.remove(&key) {
                        entries.push((old, t, -1));
                    }
                } else {
                    let entry = BlacklistEntry {
                        flow_id,
                        ip,
                        decision,
                        indicators: p.explain(ip, t),
                    };
                    entries.push((entry.clone(), t, 1));
                    live.insert(key, entry);
                }
            }
            let by_ip: BTreeMap<IpAddr, &Indicators> = now.iter().map(|(ip, i)| (*ip, i)).collect();
            for entry in live.values_mut() {
                if let Some(ind) = by_ip.get(&entry.ip) {
                    if **ind != entry.indicators {
                        entries.push((entry.clone(), tick, -1));
                        entry.indicators = (*ind).clone();
                        entries.push((entry.clone(), tick, 1));
                    }
                }
            }
            seen.push((tick, now));
        }
        let bl = entries;
        let mut out = r.lock().expect("harness result lock");
        for (tick, rows) in seen {
            out.indicators.entry(tick).or_default().extend(rows);
        }
        out.blacklist.extend(bl);
        drop(out);
        p.shutdown(worker);
    })
    .expect("timely starts")
    .join();
    let mut out = Arc::try_unwrap(result)
        .map(|m| m.into_inner().expect("harness result lock"))
        .unwrap_or_else(|a| a.lock().expect("harness result lock").clone());
    differential_dataflow::consolidation::consolidate_updates(&mut out.blacklist);
    out
}
