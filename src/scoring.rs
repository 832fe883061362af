//! Scoring and blacklist (SPEC §5): flow scores per IP from the rules that hit.
//!
//! The rule tables are joined into one [`FlowRule`] per (running flow, rule); each IP's
//! [`Indicators`] are compared with every flow rule; the hit rules of (flow, IP) are folded
//! into the flow score; the blacklist is the collection of (flow, IP) whose score is above
//! the flow's threshold. A rule edit changes `FlowRule`s and so the blacklist, at once.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::rulecompute::{
    block_of, block_partition, broadcast_arranged, one_list, reduce_total, Block, Coll, Indicators,
    IndicatorsByPartition, INDICATOR_NAMES, PARTITIONS,
};
use crate::rules::{OrdF64, ProcessInfo, Rule, RuleMaintenance, Strategy};

/// One rule of one running flow, with what the score needs of its flow.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FlowRule {
    pub flow_id: String,
    pub flow_name: String,
    pub threshold: OrdF64,
    /// Number of rules of the flow (`n` of the formula).
    pub n_rules: i64,
    /// The flow's interval for indicator 4 (its rule 4's `arg0`, ms), used when reporting.
    pub flow_interval_ms: i64,
    pub rule_id: String,
    /// Indicator index 0..=7; `None` when `rule_real_name` is unknown (never hits).
    pub kind: Option<usize>,
    pub rule_real_name: String,
    pub arg0: OrdF64,
    pub arg1: OrdF64,
    pub score: i32,
    /// `status == 0`.
    pub enabled: bool,
}

impl FlowRule {
    /// Whether this rule hits for these indicator values (SPEC §4 table, last column).
    pub fn hits(&self, ind: &Indicators) -> bool {
        let arg0 = self.arg0.0;
        match self.kind {
            None => false,
            Some(3) => ind
                .critical_pages_acc_time
                .is_some_and(|v| (v as f64) < arg0),
            Some(4) => (ind.less_than(arg0 as i64) as f64) > self.arg1.0,
            Some(k) => ind.value(k, 0).is_some_and(|v| (v as f64) > arg0),
        }
    }
}

/// SPEC §5's formula. `hits` are (score, enabled) of the rules that hit; `n_rules` is the
/// number of rules of the flow.
pub fn flow_score(hits: &[(i32, bool)], n_rules: i64) -> f64 {
    if hits.is_empty() || n_rules <= 0 {
        return 0.0;
    }
    let sum: f64 = hits.iter().map(|(s, _)| *s as f64).sum();
    let enabled: Vec<f64> = hits
        .iter()
        .filter(|(_, e)| *e)
        .map(|(s, _)| *s as f64)
        .collect();
    let factor1 = sum / (10.0 * n_rules as f64);
    let max_enabled = enabled
        .iter()
        .cloned()
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    let factor2 = match max_enabled {
        None => 0.0,
        Some(m) if m > 6.0 => 60.0,
        Some(m) => 10.0 * m,
    };
    let factor3 = if sum == 0.0 {
        0.0
    } else {
        40.0 * enabled.iter().sum::<f64>() / sum
    };
    factor1 * (factor2 + factor3)
}

/// Joins the flow tables into one [`FlowRule`] per rule of every running anti-crawler flow.
pub fn flow_rules<'s>(
    processes: Coll<'s, ProcessInfo>,
    strategies: Coll<'s, Strategy>,
    rules: Coll<'s, Rule>,
    maintenance: Coll<'s, RuleMaintenance>,
) -> Coll<'s, FlowRule> {
    let running = processes
        .filter(|p| p.status == 0)
        .map(|p| (p.id, p.process_name))
        .join(strategies.map(|s| (s.id, s.crawler_blacklist_thresholds)));

    let named_rules = rules
        .filter(|r| r.crawler_type == 0)
        .map(|r| (r.rule_name, r))
        .join(maintenance.map(|m| (m.rule_name, m.rule_real_name)))
        .map(|(_, (rule, real_name))| (rule.process_id.clone(), (rule, real_name)));

    let per_flow = named_rules.clone().map(|(flow, (rule, name))| {
        let interval = if name == INDICATOR_NAMES[4] {
            rule.arg0.0 as i64
        } else {
            0
        };
        (flow, interval)
    });
    // Per flow: n (all its rules, enabled or not) and its indicator-4 interval.
    let meta = per_flow.reduce_named("FlowMeta", |_flow, input, output| {
        let n: isize = input.iter().map(|(_, r)| *r).sum();
        let interval = input.iter().map(|(i, _)| **i).max().unwrap_or(0);
        output.push(((n as i64, interval), 1));
    });

    named_rules.join(running).join(meta).map(
        |(flow_id, (((rule, real_name), (flow_name, threshold)), (n, interval)))| FlowRule {
            kind: INDICATOR_NAMES.iter().position(|n| *n == real_name),
            flow_id,
            flow_name,
            threshold,
            n_rules: n,
            flow_interval_ms: interval,
            rule_id: rule.id,
            rule_real_name: real_name,
            arg0: rule.arg0,
            arg1: rule.arg1,
            score: rule.score,
            enabled: rule.status == 0,
        },
    )
}

/// The indicator-4 intervals (ms) of the running flows' rule 4 (the dataflow adds 0, which
/// carries indicator 3, and makes them distinct).
pub fn interval_thresholds<'s>(flow_rules: Coll<'s, FlowRule>) -> Coll<'s, i64> {
    flow_rules
        .filter(|r| r.kind == Some(4))
        .map(|r| r.arg0.0 as i64)
}

/// The `arg0` of every running `ipBlock` rule (indicator 7), see `rulecompute::block_level`.
pub fn block_thresholds<'s>(flow_rules: Coll<'s, FlowRule>) -> Coll<'s, OrdF64> {
    flow_rules.filter(|r| r.kind == Some(7)).map(|r| r.arg0)
}

/// Why (flow, IP) is on the blacklist.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Decision {
    pub flow_name: String,
    pub score: OrdF64,
    pub threshold: OrdF64,
    pub hit_rule_ids: Vec<String>,
    pub hit_rule_names: Vec<String>,
    pub flow_interval_ms: i64,
}

/// The decisions for one IP: every flow of `rules` (sorted, so grouped by flow) whose score
/// over the rules its indicators hit is above the flow's threshold.
pub fn decide(ind: &Indicators, rules: &[FlowRule]) -> Vec<(String, Decision)> {
    let mut out = Vec::new();
    for flow in rules.chunk_by(|a, b| a.flow_id == b.flow_id) {
        let hits: Vec<&FlowRule> = flow.iter().filter(|r| r.hits(ind)).collect();
        let Some(first) = hits.first() else { continue };
        let scored: Vec<(i32, bool)> = hits.iter().map(|r| (r.score, r.enabled)).collect();
        let score = flow_score(&scored, first.n_rules);
        if score > first.threshold.0 {
            out.push((
                first.flow_id.clone(),
                Decision {
                    flow_name: first.flow_name.clone(),
                    score: OrdF64(score),
                    threshold: first.threshold,
                    hit_rule_ids: hits.iter().map(|r| r.rule_id.clone()).collect(),
                    hit_rule_names: hits.iter().map(|r| r.rule_real_name.clone()).collect(),
                    flow_interval_ms: first.flow_interval_ms,
                },
            ));
        }
    }
    out
}

/// What scores the IPs of one partition: the flow rules, and the level (indicator 7 as
/// scoring sees it, see `rulecompute::block_levels`) of the partition's blocks whose level is
/// above 0, sorted by block.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ScoringContext {
    pub rules: Vec<FlowRule>,
    pub busy_blocks: Vec<(Block, i64)>,
}

impl ScoringContext {
    /// The decisions for `ip` with these indicators (indicator 7 from `busy_blocks`).
    pub fn decide(&self, ip: &IpAddr, ind: &Indicators) -> Vec<(String, Decision)> {
        let block = block_of(ip);
        let level = self
            .busy_blocks
            .binary_search_by_key(&block, |(b, _)| *b)
            .map_or(0, |i| self.busy_blocks[i].1);
        let mut ind = ind.clone();
        ind.ip_block = level;
        decide(&ind, &self.rules)
    }
}

/// Either half of a [`ScoringContext`], keyed by block partition.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum ContextPart {
    Rules(Vec<FlowRule>),
    BusyBlock(Block, i64),
}

/// The [`ScoringContext`] of every block partition; none while no flow rule runs. A rule
/// change rebuilds every partition's context; a block crossing an `ipBlock` threshold
/// rebuilds only its partition's.
fn scoring_contexts<'s>(
    flow_rules: Coll<'s, FlowRule>,
    block_levels: Coll<'s, (Block, i64)>,
) -> Coll<'s, (u64, ScoringContext)> {
    let parts = one_list(flow_rules, "FlowRuleList")
        .flat_map(|list| (0..PARTITIONS).map(move |p| (p, ContextPart::Rules(list.clone()))))
        .concat(
            block_levels.map(|(b, level)| (block_partition(&b), ContextPart::BusyBlock(b, level))),
        )
        .arrange_by_key_named("Arrange: ScoringContext parts");
    reduce_total(parts, "ScoringContext", |_p, input| {
        let mut rules = None;
        let mut busy_blocks = Vec::new();
        for &(part, _) in input {
            match part {
                ContextPart::Rules(list) => rules = Some(list.clone()),
                ContextPart::BusyBlock(b, level) => busy_blocks.push((*b, *level)),
            }
        }
        rules.map(|rules| ScoringContext { rules, busy_blocks })
    })
}

/// The blacklist: (flow id, IP) → decision, for every IP whose flow score is above threshold.
///
/// Each changed indicator record is scored in the join itself against its block partition's
/// [`ScoringContext`] (the flow rules, and the levels of the busy /16 blocks). Most IPs hit
/// nothing, so almost nothing leaves the join; a rule change re-scores every IP in the window
/// at once, and a block crossing an `ipBlock` threshold re-scores the IPs of its partition.
/// The output is not consolidated: a blacklisted IP whose indicators change emits its
/// decision's retraction and re-insertion at that tick (the reader consolidates).
///
/// The indicators are scored on the worker that gathered them (`rulecompute::gather` leaves
/// them there, arranged by partition), against contexts that every worker holds: a busy /16 sends
/// its IPs to no single worker, and no indicator record crosses workers to be scored.
pub fn blacklist<'s>(
    indicators: IndicatorsByPartition<'s>,
    flow_rules: Coll<'s, FlowRule>,
    block_levels: Coll<'s, (Block, i64)>,
) -> Coll<'s, ((String, IpAddr), Decision)> {
    let contexts = broadcast_arranged(
        scoring_contexts(flow_rules, block_levels),
        "Arrange: ScoringContext (every worker)",
    );
    indicators.join_core(contexts, |_p, (ip, ind), context| {
        let ip = *ip;
        context
            .decide(&ip, ind)
            .into_iter()
            .map(move |(flow_id, decision)| ((flow_id, ip), decision))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_worked_examples() {
        // 8 rules, all enabled: 3 hits of score 5 → 16.875; 8 hits of score 10 → 100.
        assert!((flow_score(&[(5, true); 3], 8) - 16.875).abs() < 1e-9);
        assert!((flow_score(&[(10, true); 8], 8) - 100.0).abs() < 1e-9);
        // 4 enabled + 4 disabled hits of score 8 → 0.8 · (60 + 20) = 64.
        let mixed = [
            (8, true),
            (8, true),
            (8, true),
            (8, true),
            (8, false),
            (8, false),
            (8, false),
            (8, false),
        ];
        assert!((flow_score(&mixed, 8) - 64.0).abs() < 1e-9);
        // No hit → 0, never NaN.
        assert_eq!(flow_score(&[], 8), 0.0);
        // Only disabled hits: factor2 = factor3 = 0.
        assert_eq!(flow_score(&[(9, false)], 8), 0.0);
        // max(xa) = 6 is not > 6 → factor2 = 60 exactly by 10·6.
        assert!((flow_score(&[(6, true)], 8) - 6.0 / 80.0 * 100.0).abs() < 1e-9);
    }
}
