//! The oracle test (SPEC §4, §5): the dataflow's indicators and blacklist must equal a plain
//! batch recomputation over the same window, for every IP, at every tick we look at.
//!
//! The oracle below is deliberately naive: for a tick `T` it filters the raw event list to
//! the window `(T − W, T]`, groups by IP, sorts, loops and counts with `HashSet`s. Scenarios
//! are random (seeded `ChaCha8Rng`, so every failure is reproducible from the printed seed):
//! 20–60 IPs over a few /16s (one of them IPv6), a few hundred to a few thousand events over
//! ~15 minutes with ms-precision times, duplicate times, exact duplicate events, sub-second
//! bursts and long pauses (so IPs leave and re-enter the window), a small set of request
//! lines of which the critical-page rows of the scenario match some, shared pools of user
//! agents / journeys, per-IP cookies with some absent ones and `None` journeys.
//!
//! Each scenario is run with 1, 2 and 4 workers and compared at ~40 ticks: random ones,
//! the entry tick of events, the last tick an event is in the window and the first tick it
//! is out (`tick_of(t) + W`), the tick at which an IP's last event leaves, and a tick after
//! everything has left (no IP may remain).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use antispider::dataflow::BlacklistEntry;
use antispider::harness::{self, Observed, Scenario};
use antispider::rulecompute::{
    block_of, stable_hash, Indicators, Time, WinEvent, WindowSpec, ABSENT, INDICATOR_NAMES,
};
use antispider::rules::{CriticalPage, OrdF64, ProcessInfo, Rule, RuleTables, Strategy};
use antispider::scoring::flow_score;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

// ---------------------------------------------------------------------------------------------
// The oracle
// ---------------------------------------------------------------------------------------------

/// What the oracle knows about one IP at one tick: the indicators plus the raw sorted gaps
/// between consecutive critical events (to evaluate indicator 4 for any interval).
#[derive(Clone, Debug)]
struct OracleIp {
    ind: Indicators,
    gaps: Vec<u64>,
}

impl OracleIp {
    fn less_than(&self, a: i64) -> i64 {
        self.gaps.iter().filter(|&&g| (g as i64) < a).count() as i64
    }
}

/// Compiled critical-page rows: `^(?:expr)$`, any row matching makes a request critical.
fn critical_matchers(tables: &RuleTables) -> Vec<regex::Regex> {
    tables
        .critical_pages
        .iter()
        .map(|c| regex::Regex::new(&format!("^(?:{})$", c.critical_page_match_expression)).unwrap())
        .collect()
}

/// Ids of the running flows: status 0 in nh_process_info and a row in nh_strategy.
fn running_flows(tables: &RuleTables) -> BTreeMap<String, (String, f64)> {
    tables
        .process_info
        .iter()
        .filter(|p| p.status == 0)
        .filter_map(|p| {
            tables.strategy.iter().find(|s| s.id == p.id).map(|s| {
                (
                    p.id.clone(),
                    (p.process_name.clone(), s.crawler_blacklist_thresholds.0),
                )
            })
        })
        .collect()
}

/// The indicator name of a rule (via nh_rules_maintenance_table).
fn real_name(tables: &RuleTables, rule: &Rule) -> Option<String> {
    tables
        .maintenance
        .iter()
        .find(|m| m.rule_name == rule.rule_name)
        .map(|m| m.rule_real_name.clone())
}

/// The anti-crawler rules of a flow that the scoring sees (crawler_type 0, named).
fn flow_rules_of<'a>(tables: &'a RuleTables, flow: &str) -> Vec<(&'a Rule, String)> {
    tables
        .rule
        .iter()
        .filter(|r| r.process_id == flow && r.crawler_type == 0)
        .filter_map(|r| real_name(tables, r).map(|n| (r, n)))
        .collect()
}

/// The indicator-4 intervals in force: arg0 of the running flows' rule-4 rules, > 0.
fn thresholds_in_force(tables: &RuleTables) -> BTreeSet<i64> {
    running_flows(tables)
        .keys()
        .flat_map(|f| flow_rules_of(tables, f))
        .filter(|(_, n)| n == INDICATOR_NAMES[4])
        .map(|(r, _)| r.arg0.0 as i64)
        .filter(|a| *a > 0)
        .collect()
}

fn in_window(e: &WinEvent, tick: Time, spec: WindowSpec) -> bool {
    // (T − W, T]
    e.t_ms <= tick && e.t_ms + spec.length_ms > tick
}

/// Batch recomputation of every IP's indicators at `tick`.
fn oracle(
    events: &[WinEvent],
    tables: &RuleTables,
    spec: WindowSpec,
    tick: Time,
) -> BTreeMap<IpAddr, OracleIp> {
    let matchers = critical_matchers(tables);
    let thresholds = thresholds_in_force(tables);
    let live: Vec<&WinEvent> = events.iter().filter(|e| in_window(e, tick, spec)).collect();

    let mut per_block: HashMap<_, i64> = HashMap::new();
    for e in &live {
        *per_block.entry(block_of(&e.ip)).or_default() += 1;
    }
    let mut by_ip: BTreeMap<IpAddr, Vec<&WinEvent>> = BTreeMap::new();
    for e in &live {
        by_ip.entry(e.ip).or_default().push(e);
    }

    let mut out = BTreeMap::new();
    for (ip, evs) in by_ip {
        let critical: Vec<&WinEvent> = evs
            .iter()
            .copied()
            .filter(|e| matchers.iter().any(|m| m.is_match(&e.request)))
            .collect();
        let mut times: Vec<u64> = critical.iter().map(|e| e.t_ms).collect();
        times.sort_unstable();
        let gaps: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
        let uas: HashSet<u64> = evs.iter().map(|e| e.ua_hash).collect();
        let cookies: HashSet<u64> = critical.iter().map(|e| e.cookie_hash).collect();
        let journeys: HashSet<u64> = evs.iter().filter_map(|e| e.journey_hash).collect();
        let ind = Indicators {
            ip: evs.len() as i64,
            critical_pages: critical.len() as i64,
            user_agent: uas.len() as i64,
            critical_pages_acc_time: gaps.iter().min().map(|g| *g as i64),
            critical_pages_less_than: thresholds
                .iter()
                .map(|&a| (a, gaps.iter().filter(|&&g| (g as i64) < a).count() as i64))
                .collect(),
            critical_cookies: cookies.len() as i64,
            flight_query: journeys.len() as i64,
            ip_block: per_block[&block_of(&ip)],
        };
        out.insert(ip, OracleIp { ind, gaps });
    }
    out
}

/// Whether a rule of kind `name` with these args hits (SPEC §4 table, last column).
fn rule_hits(name: &str, rule: &Rule, o: &OracleIp) -> bool {
    let arg0 = rule.arg0.0;
    let ind = &o.ind;
    let gt = |v: i64| (v as f64) > arg0;
    match INDICATOR_NAMES.iter().position(|n| *n == name) {
        Some(0) => gt(ind.ip),
        Some(1) => gt(ind.critical_pages),
        Some(2) => gt(ind.user_agent),
        Some(3) => ind
            .critical_pages_acc_time
            .is_some_and(|v| (v as f64) < arg0),
        Some(4) => (o.less_than(arg0 as i64) as f64) > rule.arg1.0,
        Some(5) => gt(ind.critical_cookies),
        Some(6) => gt(ind.flight_query),
        Some(7) => gt(ind.ip_block),
        _ => false,
    }
}

/// The oracle's blacklist at a tick: (flow, ip) → (score, sorted hit rule ids).
fn oracle_blacklist(
    ips: &BTreeMap<IpAddr, OracleIp>,
    tables: &RuleTables,
) -> BTreeMap<(String, IpAddr), (f64, Vec<String>)> {
    let mut out = BTreeMap::new();
    for (flow, (_name, threshold)) in running_flows(tables) {
        let rules = flow_rules_of(tables, &flow);
        let n = rules.len() as i64;
        for (ip, o) in ips {
            let hits: Vec<&(&Rule, String)> = rules
                .iter()
                .filter(|(r, name)| rule_hits(name, r, o))
                .collect();
            let scored: Vec<(i32, bool)> =
                hits.iter().map(|(r, _)| (r.score, r.status == 0)).collect();
            let score = flow_score(&scored, n);
            if score > threshold {
                let mut ids: Vec<String> = hits.iter().map(|(r, _)| r.id.clone()).collect();
                ids.sort();
                out.insert((flow.clone(), *ip), (score, ids));
            }
        }
    }
    out
}

/// The dataflow's blacklist at `tick`, accumulated from the captured updates.
fn dataflow_blacklist(
    updates: &[(BlacklistEntry, Time, isize)],
    tick: Time,
) -> Result<BTreeMap<(String, IpAddr), BlacklistEntry>, String> {
    let mut acc: BTreeMap<&BlacklistEntry, isize> = BTreeMap::new();
    for (e, t, r) in updates {
        if *t <= tick {
            *acc.entry(e).or_default() += r;
        }
    }
    let mut out = BTreeMap::new();
    for (e, n) in acc {
        if !(0..=1).contains(&n) {
            return Err(format!("tick {tick}: entry with multiplicity {n}: {e:?}"));
        }
        if n == 1 {
            if let Some(prev) = out.insert((e.flow_id.clone(), e.ip), e.clone()) {
                return Err(format!(
                    "tick {tick}: two live entries for ({}, {}): {prev:?} and {e:?}",
                    e.flow_id, e.ip
                ));
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Comparison
// ---------------------------------------------------------------------------------------------

/// The indicators with indicator 4 in canonical form: one (a, count) per interval in force.
///
/// The dataflow lists an interval only for IPs with at least one critical request (an IP
/// without critical requests has an empty list, which `less_than` reads as 0); that is a
/// representation choice, so both sides are canonicalised through `less_than`. Separately,
/// [`check_indicator4_list`] checks the dataflow's list never holds an interval not in force.
fn canonical(ind: &Indicators, thresholds: &BTreeSet<i64>) -> Indicators {
    let mut c = ind.clone();
    c.critical_pages_less_than = thresholds.iter().map(|&a| (a, ind.less_than(a))).collect();
    c
}

fn check_indicator4_list(ind: &Indicators, thresholds: &BTreeSet<i64>) -> Result<(), String> {
    let listed: Vec<i64> = ind
        .critical_pages_less_than
        .iter()
        .map(|(a, _)| *a)
        .collect();
    let mut sorted = listed.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted != listed {
        return Err(format!("indicator-4 list not sorted/unique: {listed:?}"));
    }
    if let Some(a) = listed.iter().find(|a| !thresholds.contains(a)) {
        return Err(format!(
            "indicator-4 list holds interval {a} not in force (in force: {thresholds:?})"
        ));
    }
    Ok(())
}

/// All rule tables in force at `tick`.
fn tables_at(scenario: &Scenario, tick: Time) -> &RuleTables {
    scenario
        .rule_changes
        .iter()
        .rfind(|(t, _)| *t <= tick)
        .map_or(&scenario.rules, |(_, r)| r)
}

/// Compares the dataflow with the oracle at every tick of the scenario; returns the
/// mismatches as readable lines.
fn compare(scenario: &Scenario, observed: &Observed, check_blacklist: bool) -> Vec<String> {
    let mut bad = Vec::new();
    let empty = BTreeMap::new();
    for &tick in &scenario.ticks {
        let tables = tables_at(scenario, tick);
        let thresholds = thresholds_in_force(tables);
        let expected = oracle(&scenario.events, tables, scenario.spec, tick);
        let got = observed.indicators.get(&tick).unwrap_or(&empty);
        let ips: BTreeSet<&IpAddr> = expected.keys().chain(got.keys()).collect();
        for ip in ips {
            match (expected.get(ip), got.get(ip)) {
                (Some(e), Some(g)) => {
                    if canonical(&e.ind, &thresholds) != canonical(g, &thresholds) {
                        bad.push(format!(
                            "tick {tick} ip {ip}: indicators differ{}\n    expected {:?}\n    got      {:?}",
                            diff_names(&canonical(&e.ind, &thresholds), &canonical(g, &thresholds)),
                            e.ind,
                            g
                        ));
                    }
                    if let Err(m) = check_indicator4_list(g, &thresholds) {
                        bad.push(format!("tick {tick} ip {ip}: {m}: {g:?}"));
                    }
                }
                (Some(e), None) => bad.push(format!(
                    "tick {tick} ip {ip}: missing from the dataflow; expected {:?}",
                    e.ind
                )),
                (None, Some(g)) => bad.push(format!(
                    "tick {tick} ip {ip}: not in the window but the dataflow has {g:?}"
                )),
                (None, None) => unreachable!(),
            }
        }
        if !check_blacklist {
            continue;
        }
        let want = oracle_blacklist(&expected, tables);
        let have = match dataflow_blacklist(&observed.blacklist, tick) {
            Ok(h) => h,
            Err(m) => {
                bad.push(m);
                continue;
            }
        };
        let keys: BTreeSet<&(String, IpAddr)> = want.keys().chain(have.keys()).collect();
        for key in keys {
            match (want.get(key), have.get(key)) {
                (Some((score, ids)), Some(entry)) => {
                    let mut got_ids = entry.decision.hit_rule_ids.clone();
                    got_ids.sort();
                    if (entry.decision.score.0 - score).abs() > 1e-9 || &got_ids != ids {
                        bad.push(format!(
                            "tick {tick} flow {} ip {}: expected score {score} hits {ids:?}, got score {} hits {got_ids:?}",
                            key.0, key.1, entry.decision.score.0
                        ));
                    }
                    if Some(&entry.indicators) != got.get(&key.1) {
                        bad.push(format!(
                            "tick {tick} flow {} ip {}: blacklist entry carries indicators {:?}, the window has {:?}",
                            key.0, key.1, entry.indicators, got.get(&key.1)
                        ));
                    }
                }
                (Some((score, ids)), None) => bad.push(format!(
                    "tick {tick} flow {} ip {}: should be blacklisted (score {score}, hits {ids:?}, indicators {:?}) but is not",
                    key.0,
                    key.1,
                    expected.get(&key.1).map(|o| &o.ind)
                )),
                (None, Some(entry)) => bad.push(format!(
                    "tick {tick} flow {} ip {}: blacklisted by the dataflow (score {}, hits {:?}) but the oracle says no (indicators {:?})",
                    key.0,
                    key.1,
                    entry.decision.score.0,
                    entry.decision.hit_rule_ids,
                    expected.get(&key.1).map(|o| &o.ind)
                )),
                (None, None) => unreachable!(),
            }
        }
    }
    bad
}

fn diff_names(a: &Indicators, b: &Indicators) -> String {
    let mut names = Vec::new();
    if a.ip != b.ip {
        names.push(INDICATOR_NAMES[0]);
    }
    if a.critical_pages != b.critical_pages {
        names.push(INDICATOR_NAMES[1]);
    }
    if a.user_agent != b.user_agent {
        names.push(INDICATOR_NAMES[2]);
    }
    if a.critical_pages_acc_time != b.critical_pages_acc_time {
        names.push(INDICATOR_NAMES[3]);
    }
    if a.critical_pages_less_than != b.critical_pages_less_than {
        names.push(INDICATOR_NAMES[4]);
    }
    if a.critical_cookies != b.critical_cookies {
        names.push(INDICATOR_NAMES[5]);
    }
    if a.flight_query != b.flight_query {
        names.push(INDICATOR_NAMES[6]);
    }
    if a.ip_block != b.ip_block {
        names.push(INDICATOR_NAMES[7]);
    }
    format!(" in {names:?}")
}

// ---------------------------------------------------------------------------------------------
// Random scenarios
// ---------------------------------------------------------------------------------------------

/// Request lines; the comment says which critical rows (default ids 1–4, custom 101–104)
/// match each fully.
const REQUESTS: [&str; 12] = [
    "POST /B2C40/query/jaxb/direct/query.ao HTTP/1.1", // 1
    "POST /B2C40/query/jaxb/direct/query.ao?lang=zh HTTP/1.1", // 1
    "POST /B2C40/query/jaxb/direct/lowfare.ao HTTP/1.1", // 2
    "GET /B2C40/query/jaxb/direct/calendar.ao?depCity=PEK&arrCity=SHA HTTP/1.1", // 3
    "POST /ita/intl/zh/shop/query HTTP/1.1",           // 4, 104
    "GET /B2C40/query/jaxb/direct/query.ao HTTP/1.1",  // none (GET)
    "GET /B2C40/modules/bookingnew/main/flightSelectDirect.html HTTP/1.1", // 101
    "GET /B2C40/index.html HTTP/1.1",                  // 102
    "POST /B2C40/bookingnew/order/create.ao HTTP/1.1", // none
    "XPOST /B2C40/query/jaxb/direct/query.ao HTTP/1.1", // none (full match only)
    "GET /ita/intl/zh/shop/search?x=1 HTTP/1.1",       // 104
    "GET /B2C40/index.html",                           // 102
];

/// Custom critical rows; 103 would match many lines if it were not anchored.
const CUSTOM_CRITICAL: [(i64, &str); 4] = [
    (101, r"GET /B2C40/modules/bookingnew/.*"),
    (102, r"GET /B2C40/index\.html( HTTP/1\.1)?"),
    (103, r"query\.ao"),
    (104, r"(GET|POST) /ita/intl/zh/shop/\S*( HTTP/[0-9.]+)?"),
];

/// /16s of the scenario IPs (the last one is IPv6).
const BLOCKS: [(u16, u16); 5] = [(10, 1), (10, 2), (47, 92), (8, 8), (0x2001, 0x0db8)];

const BASE_MS: u64 = 1_795_312_800_123; // deliberately not on the slide grid
const DURATION_MS: u64 = 15 * 60_000;

fn random_ips(rng: &mut ChaCha8Rng, n: usize) -> Vec<IpAddr> {
    let mut ips = BTreeSet::new();
    while ips.len() < n {
        let (a, b) = BLOCKS[rng.random_range(0..BLOCKS.len())];
        let (c, d) = (rng.random_range(0..4u16), rng.random_range(1..255u16));
        let ip = if a > 255 {
            IpAddr::V6(Ipv6Addr::new(a, b, 0, 0, 0, 0, c, d))
        } else {
            IpAddr::V4(Ipv4Addr::new(a as u8, b as u8, c as u8, d as u8))
        };
        ips.insert(ip);
    }
    ips.into_iter().collect()
}

fn event(
    ip: IpAddr,
    t_ms: u64,
    request: &str,
    ua: u64,
    cookie: u64,
    journey: Option<u64>,
) -> WinEvent {
    WinEvent {
        ip,
        t_ms,
        request_hash: stable_hash(request),
        request: request.into(),
        ua_hash: ua,
        cookie_hash: cookie,
        journey_hash: journey,
    }
}

/// A few hundred to a few thousand events over ~15 minutes.
fn random_events(rng: &mut ChaCha8Rng) -> Vec<WinEvent> {
    let n_ips = rng.random_range(20..=60);
    let total = rng.random_range(300..=3000usize);
    let ips = random_ips(rng, n_ips);
    // Shared pools: the distinct counts are per IP, so the same UA/journey on two IPs counts
    // once for each.
    let uas: Vec<u64> = (0..8).map(|i| stable_hash(&("ua", i))).collect();
    let journeys: Vec<u64> = (0..12).map(|i| stable_hash(&("journey", i))).collect();
    let mut events = Vec::new();
    for (k, &ip) in ips.iter().enumerate() {
        // Uneven shares: a few hot IPs, many light ones.
        let share = if k % 7 == 0 {
            6.0
        } else {
            1.0 + rng.random::<f64>()
        };
        let n = ((total as f64 / n_ips as f64) * share).ceil() as usize;
        let p_critical: f64 = rng.random();
        let my_uas: Vec<u64> = (0..rng.random_range(1..=4))
            .map(|_| uas[rng.random_range(0..uas.len())])
            .collect();
        let mut my_cookies: Vec<u64> = (0..rng.random_range(1..=4))
            .map(|_| stable_hash(&(ip, "cookie", rng.random_range(0..6u32))))
            .collect();
        if rng.random_bool(0.3) {
            my_cookies.push(ABSENT);
        }
        let mut my_journeys: Vec<Option<u64>> = (0..rng.random_range(0..=5))
            .map(|_| Some(journeys[rng.random_range(0..journeys.len())]))
            .collect();
        if my_journeys.is_empty() || rng.random_bool(0.4) {
            my_journeys.push(None);
        }
        let mut t = BASE_MS + rng.random_range(0..DURATION_MS);
        for _ in 0..n {
            let request = if rng.random_bool(p_critical) {
                REQUESTS[rng.random_range(0..5)]
            } else {
                REQUESTS[rng.random_range(0..REQUESTS.len())]
            };
            let e = event(
                ip,
                t,
                request,
                my_uas[rng.random_range(0..my_uas.len())],
                my_cookies[rng.random_range(0..my_cookies.len())],
                my_journeys[rng.random_range(0..my_journeys.len())],
            );
            if rng.random_bool(0.03) {
                events.push(e.clone()); // an exact duplicate event
            }
            events.push(e);
            let gap = match rng.random_range(0..100) {
                0..8 => 0,                                // same millisecond
                8..45 => rng.random_range(1..1000),       // burst
                45..84 => rng.random_range(1000..20_000), // browsing
                // exactly a rule-4 interval: `gap < a` must not count it
                84..89 => INTERVALS[rng.random_range(0..INTERVALS.len())] as u64,
                _ => rng.random_range(20_000..400_000), // pause: may leave the window
            };
            t += gap;
            if t >= BASE_MS + DURATION_MS {
                break;
            }
        }
    }
    // Arbitrary input order (the harness sorts per worker by tick).
    for i in (1..events.len()).rev() {
        events.swap(i, rng.random_range(0..=i));
    }
    events
}

fn defaults() -> RuleTables {
    RuleTables::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")).unwrap()
}

fn random_critical_rows(rng: &mut ChaCha8Rng, base: &RuleTables) -> Vec<CriticalPage> {
    let mut rows: Vec<CriticalPage> = base
        .critical_pages
        .iter()
        .filter(|_| rng.random_bool(0.75))
        .cloned()
        .collect();
    for (id, expr) in CUSTOM_CRITICAL {
        if rng.random_bool(0.4) {
            rows.push(CriticalPage {
                id,
                critical_page_match_expression: expr.to_string(),
            });
        }
    }
    if rows.is_empty() {
        rows.push(base.critical_pages[0].clone());
    }
    rows
}

/// A quantile of `values` (0 when empty).
fn quantile(values: &mut [i64], q: f64) -> i64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    values[((values.len() - 1) as f64 * q).round() as usize]
}

/// Rules of one flow with thresholds tuned on the scenario (quantiles of the oracle's values
/// over a few sample ticks), so that some IPs hit some rules and some get blacklisted.
fn tuned_flow_rules(
    rng: &mut ChaCha8Rng,
    flow: &str,
    interval_ms: i64,
    samples: &[OracleIp],
    base: &RuleTables,
) -> Vec<Rule> {
    let mut rules = Vec::new();
    for (kind, name) in INDICATOR_NAMES.iter().enumerate() {
        let name = *name;
        let rule_name = base
            .maintenance
            .iter()
            .find(|m| m.rule_real_name == name)
            .unwrap()
            .rule_name;
        let q = rng.random_range(0.4..0.95);
        let (arg0, arg1) = match kind {
            3 => {
                let mut v: Vec<i64> = samples
                    .iter()
                    .filter_map(|o| o.ind.critical_pages_acc_time)
                    .collect();
                // hits when value < arg0: a low quantile; sometimes + 1 so the quantile
                // value itself hits, sometimes not (the IP at the quantile must not hit).
                let tie = f64::from(u8::from(rng.random_bool(0.5)));
                (quantile(&mut v, 1.0 - q) as f64 + tie, 0.0)
            }
            4 => {
                let mut v: Vec<i64> = samples.iter().map(|o| o.less_than(interval_ms)).collect();
                (interval_ms as f64, quantile(&mut v, q) as f64)
            }
            _ => {
                let mut v: Vec<i64> = samples
                    .iter()
                    .map(|o| match kind {
                        0 => o.ind.ip,
                        1 => o.ind.critical_pages,
                        2 => o.ind.user_agent,
                        5 => o.ind.critical_cookies,
                        6 => o.ind.flight_query,
                        _ => o.ind.ip_block,
                    })
                    .collect();
                (quantile(&mut v, q) as f64, 0.0)
            }
        };
        rules.push(Rule {
            id: format!("{flow}-r{kind}"),
            process_id: flow.to_string(),
            rule_name,
            arg0: OrdF64(arg0),
            arg1: OrdF64(arg1),
            score: rng.random_range(1..=10),
            status: i32::from(rng.random_bool(0.15)),
            crawler_type: 0,
            rule_type: 0,
        });
    }
    rules
}

const INTERVALS: [i64; 8] = [80, 300, 500, 700, 1000, 1500, 2500, 4000];

/// One random scenario. `flows` running flows (each with its own rule-4 interval), plus a
/// stopped flow whose rule-4 interval must not be tracked.
fn random_scenario(seed: u64, spec: WindowSpec, flows: usize, tuned: bool) -> Scenario {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let events = random_events(&mut rng);
    let base = defaults();
    let mut tables = base.clone();
    tables.critical_pages = random_critical_rows(&mut rng, &base);

    let mut intervals: Vec<i64> = INTERVALS.to_vec();
    for i in (1..intervals.len()).rev() {
        intervals.swap(i, rng.random_range(0..=i));
    }
    let flow_ids: Vec<String> = (0..flows)
        .map(|i| {
            if i == 0 {
                "flow-anticrawler-1".to_string()
            } else {
                format!("flow-{}", i + 1)
            }
        })
        .collect();

    // Sample the oracle (with all intervals tracked) to tune the rule arguments.
    let samples: Vec<OracleIp> = if tuned {
        let mut probe = tables.clone();
        probe.rule.retain(|r| r.rule_name != 4);
        (0..6)
            .flat_map(|i| {
                let t = spec.tick_of(BASE_MS + DURATION_MS * (i + 1) / 7);
                oracle(&events, &probe, spec, t).into_values()
            })
            .collect()
    } else {
        Vec::new()
    };

    tables.rule.clear();
    tables.process_info.clear();
    tables.strategy.clear();
    for (i, flow) in flow_ids.iter().enumerate() {
        let interval = intervals[i];
        let rules = if tuned {
            tuned_flow_rules(&mut rng, flow, interval, &samples, &base)
        } else {
            base.rule
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    r.id = format!("{flow}-{}", r.id);
                    r.process_id = flow.clone();
                    if r.rule_name == 4 {
                        r.arg0 = OrdF64(interval as f64);
                    }
                    r
                })
                .collect()
        };
        tables.rule.extend(rules);
        tables.process_info.push(ProcessInfo {
            id: flow.clone(),
            process_name: format!("flow {flow}"),
            status: 0,
        });
        tables.strategy.push(Strategy {
            id: flow.clone(),
            crawler_blacklist_thresholds: OrdF64(if tuned {
                rng.random_range(5.0..40.0)
            } else {
                20.0
            }),
            occ_blacklist_thresholds: OrdF64(100.0),
        });
    }
    // A stopped flow with its own interval: not in force.
    let stopped = "flow-stopped";
    tables.process_info.push(ProcessInfo {
        id: stopped.into(),
        process_name: "stopped".into(),
        status: 1,
    });
    tables.strategy.push(Strategy {
        id: stopped.into(),
        crawler_blacklist_thresholds: OrdF64(0.0),
        occ_blacklist_thresholds: OrdF64(0.0),
    });
    tables.rule.push(Rule {
        id: "stopped-r4".into(),
        process_id: stopped.into(),
        rule_name: 4,
        arg0: OrdF64(intervals[flows] as f64),
        arg1: OrdF64(0.0),
        score: 10,
        status: 0,
        crawler_type: 0,
        rule_type: 0,
    });

    let ticks = random_ticks(&mut rng, &events, spec);
    Scenario {
        spec,
        rules: tables,
        rule_changes: Vec::new(),
        events,
        ticks,
        workers: 1,
    }
}

/// ~40 ticks: random ones, entry/last-in/first-out ticks of random events, the ticks at which
/// IPs' last events leave, and a tick after everything left.
fn random_ticks(rng: &mut ChaCha8Rng, events: &[WinEvent], spec: WindowSpec) -> Vec<Time> {
    let (w, s) = (spec.length_ms, spec.slide_ms);
    let mut ticks = BTreeSet::new();
    for _ in 0..6 {
        let e = &events[rng.random_range(0..events.len())];
        let entry = spec.tick_of(e.t_ms);
        ticks.insert(entry);
        ticks.insert(entry + w - s); // last tick the event is in
        ticks.insert(entry + w); // first tick it is out
    }
    let mut last: BTreeMap<IpAddr, u64> = BTreeMap::new();
    for e in events {
        let l = last.entry(e.ip).or_default();
        *l = (*l).max(e.t_ms);
    }
    let lasts: Vec<u64> = last.values().copied().collect();
    for _ in 0..6 {
        let t = spec.tick_of(lasts[rng.random_range(0..lasts.len())]);
        ticks.insert(t + w); // the IP just left the window
    }
    let first = spec.tick_of(events.iter().map(|e| e.t_ms).min().unwrap());
    let end = spec.tick_of(events.iter().map(|e| e.t_ms).max().unwrap());
    while ticks.len() < 38 {
        let t = rng.random_range(first..=end + w);
        ticks.insert(t / s * s);
    }
    ticks.insert(end + w); // empty window
    ticks.into_iter().collect()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

fn run_case(seed: u64, spec: WindowSpec, flows: usize, tuned: bool, strict: bool) {
    let mut scenario = random_scenario(seed, spec, flows, tuned);
    let thresholds = thresholds_in_force(&scenario.rules);
    assert_eq!(
        thresholds.len(),
        flows,
        "one tracked interval per running flow"
    );
    // Sanity of the scenario itself: the interesting cases do occur.
    let (mut ips_seen, mut with_crit, mut blacklisted) = (BTreeSet::new(), 0, 0);
    let mut left = 0;
    for (i, &tick) in scenario.ticks.iter().enumerate() {
        let o = oracle(&scenario.events, &scenario.rules, spec, tick);
        with_crit += o
            .values()
            .filter(|v| v.ind.critical_pages_acc_time.is_some())
            .count();
        blacklisted += oracle_blacklist(&o, &scenario.rules).len();
        if i > 0 {
            let prev = oracle(
                &scenario.events,
                &scenario.rules,
                spec,
                scenario.ticks[i - 1],
            );
            left += prev.keys().filter(|ip| !o.contains_key(ip)).count();
        }
        ips_seen.extend(o.into_keys());
    }
    // The fixed seeds are checked to exercise what they are meant to; extra seeds only warn.
    let weak = [
        (with_crit == 0, "no IP with 2+ critical events"),
        (left == 0, "no IP ever leaves the window between ticks"),
        (tuned && blacklisted == 0, "nothing blacklisted at any tick"),
    ];
    for (is_weak, what) in weak {
        if is_weak {
            assert!(!strict, "seed {seed}: {what}");
            eprintln!("seed {seed}: weak scenario: {what}");
        }
    }
    for workers in [1, 2, 4] {
        scenario.workers = workers;
        let started = std::time::Instant::now();
        let observed = harness::run(scenario.clone());
        let bad = compare(&scenario, &observed, true);
        eprintln!(
            "seed {seed} window {}/{} ms, {} flows, {} events, {} IPs, {} ticks, workers {workers}: \
             {} mismatches ({} IP-ticks with 2+ critical events, {} oracle blacklist entries) in {:.2?}",
            spec.length_ms,
            spec.slide_ms,
            flows,
            scenario.events.len(),
            ips_seen.len(),
            scenario.ticks.len(),
            bad.len(),
            with_crit,
            blacklisted,
            started.elapsed()
        );
        assert!(
            bad.is_empty(),
            "seed {seed}, window {:?}, {workers} workers, critical rows {:?}: {} mismatches:\n{}",
            spec,
            scenario.rules.critical_pages,
            bad.len(),
            bad.iter().take(25).cloned().collect::<Vec<_>>().join("\n")
        );
    }
}

const W60: WindowSpec = WindowSpec {
    length_ms: 60_000,
    slide_ms: 1_000,
};
const W300: WindowSpec = WindowSpec {
    length_ms: 300_000,
    slide_ms: 1_000,
};
const W10: WindowSpec = WindowSpec {
    length_ms: 10_000,
    slide_ms: 100,
};

#[test]
fn oracle_window_60s_slide_1s() {
    run_case(1, W60, 1, true, true);
    run_case(4, W60, 2, true, true);
}

#[test]
fn oracle_window_300s_slide_1s() {
    run_case(2, W300, 2, true, true);
    run_case(6, W300, 1, false, true);
}

#[test]
fn oracle_window_10s_slide_100ms() {
    run_case(3, W10, 1, true, true);
    run_case(5, W10, 2, true, true);
}

/// More seeds on demand: `ORACLE_SEEDS=50 cargo test --test oracle more_seeds -- --ignored`.
#[test]
#[ignore]
fn more_seeds() {
    let n: u64 = std::env::var("ORACLE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    for seed in 100..100 + n {
        let spec = [W60, W300, W10][(seed % 3) as usize];
        run_case(seed, spec, 1 + (seed % 2) as usize, seed % 5 != 0, false);
    }
}

/// Hand-checked values, so the oracle itself is pinned down.
#[test]
fn oracle_self_check() {
    let spec = W60;
    let mut tables = defaults();
    tables
        .rule
        .iter_mut()
        .filter(|r| r.rule_name == 4)
        .for_each(|r| r.arg0 = OrdF64(1000.0));
    let a: IpAddr = "10.1.0.1".parse().unwrap();
    let b: IpAddr = "10.1.0.2".parse().unwrap();
    let c: IpAddr = "10.2.0.1".parse().unwrap();
    let crit = REQUESTS[0];
    let other = REQUESTS[5];
    let t0 = BASE_MS;
    let events = vec![
        event(a, t0, crit, 1, 7, Some(1)),
        event(a, t0 + 500, crit, 2, ABSENT, None),
        event(a, t0 + 500, crit, 2, ABSENT, None), // duplicate time → gap 0
        event(a, t0 + 2500, other, 3, 8, Some(1)),
        event(a, t0 + 4000, crit, 1, 9, Some(2)),
        event(b, t0 + 100, other, 1, 7, None),
        event(c, t0 + 100, crit, 1, 7, None),
    ];
    let o = oracle(&events, &tables, spec, spec.tick_of(t0 + 4000));
    let ia = &o[&a].ind;
    assert_eq!(ia.ip, 5);
    assert_eq!(ia.critical_pages, 4);
    assert_eq!(ia.user_agent, 3);
    assert_eq!(ia.critical_pages_acc_time, Some(0));
    assert_eq!(ia.critical_pages_less_than.to_vec(), vec![(1000, 2)]); // gaps 500, 0, 3500
    assert_eq!(ia.critical_cookies, 3); // 7, ABSENT, 9
    assert_eq!(ia.flight_query, 2);
    assert_eq!(ia.ip_block, 6);
    assert_eq!(o[&b].ind.critical_pages_acc_time, None);
    assert_eq!(o[&c].ind.ip_block, 1);
    // t0 = ...123: the first event is in the window until tick_of(t0) + W − S, out at + W.
    let last_in = spec.tick_of(t0) + spec.length_ms - spec.slide_ms;
    assert_eq!(oracle(&events, &tables, spec, last_in)[&a].ind.ip, 5);
    assert_eq!(
        oracle(&events, &tables, spec, last_in + spec.slide_ms)[&a]
            .ind
            .ip,
        2
    );

    // And the dataflow agrees on this small case with 1 and 3 workers.
    for workers in [1, 3] {
        let scenario = Scenario {
            spec,
            rules: tables.clone(),
            rule_changes: vec![],
            events: events.clone(),
            ticks: vec![
                spec.tick_of(t0),
                spec.tick_of(t0 + 4000),
                last_in,
                last_in + 1000,
                last_in + 5000,
            ],
            workers,
        };
        let observed = harness::run(scenario.clone());
        let bad = compare(&scenario, &observed, true);
        assert!(bad.is_empty(), "{}", bad.join("\n"));
    }
}
