//! Blacklist decisions (SPEC §5): the changes of the blacklist collection, read as actions.
//!
//! At each completed tick, a (flow, IP) whose entry only appeared is an `add`, one whose entry
//! only disappeared is a `remove`, and one whose entry was replaced (new score or hit rules) is
//! an `update` (it stays blacklisted; a Redis sink refreshes its key).

use serde_json::json;

use crate::dataflow::BlacklistEntry;
use crate::format::time::{format_iso8601, format_ymd_hms};
use crate::rulecompute::Time;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Add,
    Update,
    Remove,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Add => "add",
            Action::Update => "update",
            Action::Remove => "remove",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct DecisionEvent {
    pub action: Action,
    pub tick: Time,
    pub entry: BlacklistEntry,
}

/// Turns completed updates of the blacklist collection into decisions, in time order.
pub fn decisions(mut updates: Vec<(BlacklistEntry, Time, isize)>) -> Vec<DecisionEvent> {
    updates
        .sort_by(|a, b| (a.1, &a.0.flow_id, a.0.ip, &a.0).cmp(&(b.1, &b.0.flow_id, b.0.ip, &b.0)));
    differential_dataflow::consolidation::consolidate_updates(&mut updates);
    updates.sort_by(|a, b| (a.1, &a.0.flow_id, a.0.ip).cmp(&(b.1, &b.0.flow_id, b.0.ip)));
    let mut out = Vec::new();
    let mut i = 0;
    while i < updates.len() {
        let (ref first, t, _) = updates[i];
        let mut j = i;
        let (mut added, mut removed) = (None, None);
        while j < updates.len()
            && updates[j].1 == t
            && updates[j].0.flow_id == first.flow_id
            && updates[j].0.ip == first.ip
        {
            if updates[j].2 > 0 {
                added = Some(j);
            } else {
                removed = Some(j);
            }
            j += 1;
        }
        let (action, idx) = match (added, removed) {
            (Some(a), None) => (Action::Add, a),
            (None, Some(r)) => (Action::Remove, r),
            (Some(a), Some(_)) => (Action::Update, a),
            (None, None) => unreachable!("group has at least one update"),
        };
        out.push(DecisionEvent {
            action,
            tick: t,
            entry: updates[idx].0.clone(),
        });
        i = j;
    }
    out
}

/// The decision as one JSON line of `blacklist.jsonl` / the `blacklist` topic.
pub fn to_json(d: &DecisionEvent, utc_offset_minutes: i32, wall_ms: i64) -> serde_json::Value {
    let e = &d.entry;
    json!({
        "action": d.action.as_str(),
        "ip": e.ip.to_string(),
        "flow_id": e.flow_id,
        "flow_name": e.decision.flow_name,
        "strategy_code": e.flow_id,
        "score": e.decision.score.0,
        "threshold": e.decision.threshold.0,
        "hit_rules": e.decision.hit_rule_ids,
        "hit_rule_names": e.decision.hit_rule_names,
        "indicators": e.indicators.to_json(e.decision.flow_interval_ms),
        "event_time": format_iso8601(d.tick as i64, utc_offset_minutes),
        "event_time_ms": d.tick,
        "wall_time": format_ymd_hms(wall_ms, utc_offset_minutes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::OrdF64;
    use crate::scoring::Decision;

    fn entry(score: f64) -> BlacklistEntry {
        BlacklistEntry {
            flow_id: "f".into(),
            ip: "10.0.0.1".parse().unwrap(),
            decision: Decision {
                flow_name: "n".into(),
                score: OrdF64(score),
                threshold: OrdF64(20.0),
                hit_rule_ids: vec!["r0".into()],
                hit_rule_names: vec!["ip".into()],
                flow_interval_ms: 0,
            },
            indicators: Default::default(),
        }
    }

    #[test]
    fn add_update_remove() {
        let ups = vec![
            (entry(30.0), 5, 1),
            (entry(30.0), 6, -1),
            (entry(40.0), 6, 1),
            (entry(40.0), 9, -1),
        ];
        let d = decisions(ups);
        let acts: Vec<(Action, Time)> = d.iter().map(|d| (d.action, d.tick)).collect();
        assert_eq!(
            acts,
            vec![(Action::Add, 5), (Action::Update, 6), (Action::Remove, 9)]
        );
        let j = to_json(&d[0], 480, 0);
        assert_eq!(j["action"], "add");
        assert_eq!(j["indicators"]["ip"], 0);
    }
}
