//! Explain (SPEC §7): an IP's indicators at the newest completed tick, and for every running
//! flow each rule with the IP's value, whether it hits, and the flow's score.
//!
//! Both come from the dataflow's gather arrangement on the worker that holds the IP (its parts
//! and the flow-rule list the scoring used at that tick), so the answer agrees with the
//! decisions; nothing is recomputed from the rule files.

use std::net::IpAddr;

use serde_json::{json, Value};

use crate::dataflow::Pipeline;
use crate::format::time::format_iso8601;
use crate::rulecompute::{Indicators, Time};
use crate::scoring::{flow_score, FlowRule};

/// The answer for `ip` from this worker's part of the dataflow.
pub fn answer(pipeline: &mut Pipeline, ip: IpAddr, utc_offset_minutes: i32) -> Value {
    let (tick, indicators, rules) = pipeline.explain_latest(ip);
    to_json(ip, tick, &indicators, &rules, utc_offset_minutes)
}

/// The explain document; `rules` is the sorted flow-rule list (grouped by flow).
pub fn to_json(
    ip: IpAddr,
    tick: Time,
    ind: &Indicators,
    rules: &[FlowRule],
    utc_offset_minutes: i32,
) -> Value {
    let flows: Vec<Value> = rules
        .chunk_by(|a, b| a.flow_id == b.flow_id)
        .map(|flow| {
            let first = &flow[0];
            let mut hits = Vec::new();
            let rows: Vec<Value> = flow
                .iter()
                .map(|r| {
                    let hit = r.hits(ind);
                    if hit {
                        hits.push((r.score, r.enabled));
                    }
                    let value = r.kind.and_then(|k| ind.value(k, r.arg0.0 as i64));
                    json!({
                        "rule_id": r.rule_id,
                        "rule_real_name": r.rule_real_name,
                        "arg0": r.arg0.0,
                        "arg1": r.arg1.0,
                        "score": r.score,
                        "enabled": r.enabled,
                        "value": value,
                        "hit": hit,
                    })
                })
                .collect();
            let score = flow_score(&hits, first.n_rules);
            json!({
                "flow_id": first.flow_id,
                "flow_name": first.flow_name,
                "threshold": first.threshold.0,
                "score": score,
                "blacklisted": score > first.threshold.0,
                "rules": rows,
            })
        })
        .collect();
    let interval = rules.first().map_or(0, |r| r.flow_interval_ms);
    json!({
        "ip": ip.to_string(),
        "in_window": ind.ip > 0,
        "event_time": format_iso8601(tick as i64, utc_offset_minutes),
        "event_time_ms": tick,
        "indicators": ind.to_json(interval),
        "flows": flows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::OrdF64;

    fn rule(id: &str, kind: usize, name: &str, arg0: f64, score: i32) -> FlowRule {
        FlowRule {
            flow_id: "f1".into(),
            flow_name: "flow one".into(),
            threshold: OrdF64(20.0),
            n_rules: 2,
            flow_interval_ms: 0,
            rule_id: id.into(),
            kind: Some(kind),
            rule_real_name: name.into(),
            arg0: OrdF64(arg0),
            arg1: OrdF64(0.0),
            score,
            enabled: true,
        }
    }

    #[test]
    fn rules_show_value_hit_and_the_flow_score() {
        let rules = [
            rule("r0", 0, "ip", 100.0, 8),
            rule("r2", 2, "userAgent", 5.0, 6),
        ];
        let ind = Indicators {
            ip: 150,
            user_agent: 2,
            ..Default::default()
        };
        let v = to_json("10.0.0.1".parse().unwrap(), 60_000, &ind, &rules, 0);
        assert_eq!(v["in_window"], true);
        assert_eq!(v["indicators"]["ip"], 150);
        let flow = &v["flows"][0];
        assert_eq!(flow["rules"][0]["value"], 150);
        assert_eq!(flow["rules"][0]["hit"], true);
        assert_eq!(flow["rules"][1]["hit"], false);
        let expected = flow_score(&[(8, true)], 2);
        assert_eq!(flow["score"].as_f64().unwrap(), expected);
        assert_eq!(flow["blacklisted"], expected > 20.0);
    }
}
