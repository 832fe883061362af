//! Scoring and blacklist (SPEC §5): flow scores per IP from the rules that hit.
//!
//! The rule tables are joined into one [`FlowRule`] per (running flow, rule); each IP's
//! [`Indicators`] are compared with every flow rule; the hit rules of (flow, IP) are folded
//! into the flow score; the blacklist is the collection of (flow, IP) whose score is above
//! the flow's threshold. A rule edit changes `FlowRule`s and so the blacklist, at once.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::rulecompute::{
    arranged_here, block_of, block_partition, broadcast_arranged, fold_parts, reduce_total, Block,
    Coll, GatherKey, Gathered, Indicators, Part, INDICATOR_NAMES, PARTITIONS,
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

/// The indicator-4 intervals (ms) of the running flows' rule 4 (the dataflow makes them
/// distinct).
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
    decide_by(rules, |_, rule| rule.hits(ind))
}

/// [`decide`] with `hit(index, rule)` telling whether the rule at that index of `rules` hits.
fn decide_by(
    rules: &[FlowRule],
    mut hit: impl FnMut(usize, &FlowRule) -> bool,
) -> Vec<(String, Decision)> {
    let mut out = Vec::new();
    let mut start = 0;
    for flow in rules.chunk_by(|a, b| a.flow_id == b.flow_id) {
        let hits: Vec<&FlowRule> = flow
            .iter()
            .enumerate()
            .filter(|(i, r)| hit(start + i, r))
            .map(|(_, r)| r)
            .collect();
        start += flow.len();
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

/// Which rules of a rule list an IP's indicators hit, as a bit per rule (bit `i` for the
/// `i`-th rule), leaving out the `ipBlock` rules: indicator 7 belongs to the IP's /16 and is
/// compared in [`ScoringContext::decide`]. Most IPs hit nothing, and an IP's hits change far
/// less often than its indicators, which change with each of its requests.
pub type RuleHits = smallvec::SmallVec<[u64; 1]>;

/// The [`RuleHits`] of `ind` under `rules`.
pub fn rule_hits(rules: &[FlowRule], ind: &Indicators) -> RuleHits {
    let mut hits = RuleHits::new();
    for (i, rule) in rules.iter().enumerate() {
        if rule.kind != Some(7) && rule.hits(ind) {
            if hits.len() <= i / 64 {
                hits.resize(i / 64 + 1, 0);
            }
            hits[i / 64] |= 1 << (i % 64);
        }
    }
    hits
}

/// Whether bit `i` of `hits` is set.
fn is_hit(hits: &RuleHits, i: usize) -> bool {
    hits.get(i / 64)
        .is_some_and(|word| word & (1 << (i % 64)) != 0)
}

/// The [`RuleHits`] of every IP in the window, on the worker that gathered it: each IP's
/// parts are folded into its [`Indicators`] each time they change, and compared with the flow
/// rules (the gather's [`GatherKey::Rules`] value) at once; a rule change compares every IP
/// again. The result changes only when the IP enters or leaves the window or its hits change,
/// so the arrangement and the join of scoring see a few updates per IP, not one per request.
pub fn rule_hits_per_ip<'s>(gathered: Gathered<'s>) -> Coll<'s, (IpAddr, RuleHits)> {
    reduce_total(
        gathered,
        "GatherIndicators",
        Some(GatherKey::Rules),
        |_key, input, side| {
            let Some(Part::FlowRules(rules)) = side else {
                return None;
            };
            let ind = fold_parts(input.iter().map(|&(part, count)| (part, count)))?;
            // An IP in the window is scored even when it hits nothing: its /16 may.
            Some(rule_hits(rules, &ind))
        },
    )
    // The side key (the rules) has no result of its own.
    .flat_map(|(key, hits)| match key {
        GatherKey::Ip(ip) => Some((ip, hits)),
        GatherKey::Rules => None,
    })
}

/// What scores the IPs of one partition: the flow rules, and the level (indicator 7 as
/// scoring sees it, see `rulecompute::block_indicator`) of the partition's blocks whose level is
/// above 0, sorted by block.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ScoringContext {
    pub rules: Vec<FlowRule>,
    pub busy_blocks: Vec<(Block, i64)>,
}

impl ScoringContext {
    /// The decisions for `ip` with these rule hits (from [`rule_hits`] under `self.rules`),
    /// and the `ipBlock` rules compared with the level of its /16 from `busy_blocks`.
    pub fn decide(&self, ip: &IpAddr, hits: &RuleHits) -> Vec<(String, Decision)> {
        let block = block_of(ip);
        let level = self
            .busy_blocks
            .binary_search_by_key(&block, |(b, _)| *b)
            .map_or(0, |i| self.busy_blocks[i].1);
        let block_ind = Indicators {
            ip_block: level,
            ..Indicators::default()
        };
        decide_by(&self.rules, |i, rule| {
            if rule.kind == Some(7) {
                rule.hits(&block_ind)
            } else {
                is_hit(hits, i)
            }
        })
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
    rule_list: Coll<'s, Vec<FlowRule>>,
    block_levels: Coll<'s, (Block, i64)>,
) -> Coll<'s, (u64, ScoringContext)> {
    let parts = rule_list
        .flat_map(|list| (0..PARTITIONS).map(move |p| (p, ContextPart::Rules(list.clone()))))
        .concat(
            block_levels.map(|(b, level)| (block_partition(&b), ContextPart::BusyBlock(b, level))),
        )
        .arrange_by_key_named("Arrange: ScoringContext parts");
    reduce_total(parts, "ScoringContext", None, |_p, input, _| {
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
/// `rule_list` is the flow rules as one sorted list, the one the gather holds: the IPs'
/// `rule_hits` ([`rule_hits_per_ip`]) are bits into it. Each changed hit record is scored in the join
/// itself against its block partition's [`ScoringContext`] (the flow rules, and the levels of
/// the busy /16 blocks). Most IPs hit nothing, so almost nothing leaves the join; a rule
/// change re-scores every IP in the window at once, and a block crossing an `ipBlock`
/// threshold re-scores the IPs of its partition.
///
/// The hits are scored on the worker that gathered them, against contexts that every worker
/// holds: a busy /16 sends its IPs to no single worker, and no record crosses workers to be
/// scored.
pub fn blacklist<'s>(
    rule_hits: Coll<'s, (IpAddr, RuleHits)>,
    rule_list: Coll<'s, Vec<FlowRule>>,
    block_levels: Coll<'s, (Block, i64)>,
) -> Coll<'s, ((String, IpAddr), Decision)> {
    let contexts = broadcast_arranged(
        scoring_contexts(rule_list, block_levels),
        "Arrange: ScoringContext (every worker)",
    );
    let hits = arranged_here(
        rule_hits.map(|(ip, hits)| (block_partition(&block_of(&ip)), (ip, hits))),
        "Arrange: Rule hits by partition",
    );
    hits.join_core(contexts, |_p, (ip, hits), context| {
        let ip = *ip;
        context
            .decide(&ip, hits)
            .into_iter()
            .map(move |(flow_id, decision)| ((flow_id, ip), decision))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn flow_rule(flow: u8, i: usize, kind: usize, arg0: f64, arg1: f64, score: i32) -> FlowRule {
        FlowRule {
            flow_id: format!("f{flow}"),
            flow_name: format!("flow {flow}"),
            threshold: OrdF64(10.0),
            n_rules: 8,
            flow_interval_ms: 0,
            rule_id: format!("r{i}"),
            kind: Some(kind),
            rule_real_name: INDICATOR_NAMES[kind].to_string(),
            arg0: OrdF64(arg0),
            arg1: OrdF64(arg1),
            score,
            enabled: !i.is_multiple_of(3),
        }
    }

    proptest! {
        /// Scoring an IP's rule hits with its /16's level decides as scoring its indicators.
        #[test]
        fn rule_hits_decide_as_the_indicators(
            values in proptest::collection::vec(0i64..40, 8),
            rules in proptest::collection::vec(
                (0u8..3, 0usize..8, 0i64..40, 0i64..10, 1i32..=10), 0..70),
            level in 0i64..40,
        ) {
            let ind = Indicators {
                ip: values[0],
                critical_pages: values[1],
                user_agent: values[2],
                critical_pages_acc_time: (values[3] > 5).then_some(values[3]),
                critical_pages_less_than: [(0, values[4]), (values[7], values[4] / 2)]
                    .into_iter()
                    .collect(),
                critical_cookies: values[5],
                flight_query: values[6],
                ip_block: level,
            };
            let mut rules: Vec<FlowRule> = rules
                .into_iter()
                .enumerate()
                .map(|(i, (flow, kind, arg0, arg1, score))| {
                    flow_rule(flow, i, kind, arg0 as f64 + 0.5, arg1 as f64, score)
                })
                .collect();
            rules.sort();
            let ip: IpAddr = "10.1.2.3".parse().unwrap();
            let context = ScoringContext {
                rules: rules.clone(),
                busy_blocks: vec![(block_of(&ip), level)],
            };
            let hits = rule_hits(&rules, &Indicators { ip_block: 0, ..ind.clone() });
            prop_assert_eq!(context.decide(&ip, &hits), decide(&ind, &rules));
        }
    }

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
