//! Rule changes mid-stream (SPEC §4, §5): the window is re-evaluated at the change tick.
//!
//! * A critical-page row added while events are in the window makes those events critical
//!   at once (criticalPages, criticalCookies, criticalPagesAccTime, the short-interval count);
//!   removing the row restores the previous values exactly. Checked with hand-computed values
//!   and, on random traffic, against runs where the rules were in force from the start.
//! * Editing a rule's score or a flow's threshold moves the blacklist at the change tick; a
//!   stopped flow (status 1) loses its entries at once.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;

use antispider::dataflow::BlacklistEntry;
use antispider::harness::{self, Observed, Scenario};
use antispider::rulecompute::{stable_hash, Indicators, Time, WinEvent, WindowSpec, ABSENT};
use antispider::rules::{CriticalPage, OrdF64, ProcessInfo, Rule, RuleTables, Strategy};
use antispider::sink::blacklist::{decisions, Action};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const T0: u64 = 1_795_312_800_000;
const W60: WindowSpec = WindowSpec {
    length_ms: 60_000,
    slide_ms: 1_000,
};
const FLOW: &str = "flow-anticrawler-1";
const QUERY: &str = "POST /B2C40/query/jaxb/direct/query.ao HTTP/1.1";
const SPECIAL_RULE: &str = r"GET /B2C40/special/.*";

fn defaults() -> RuleTables {
    RuleTables::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn event(ip: IpAddr, t_ms: u64, request: &str, ua: u64, cookie: u64) -> WinEvent {
    WinEvent {
        ip,
        t_ms,
        request_hash: stable_hash(request),
        request: request.into(),
        ua_hash: ua,
        cookie_hash: cookie,
        journey_hash: None,
    }
}

fn with_interval(mut t: RuleTables, interval_ms: f64) -> RuleTables {
    for r in t.rule.iter_mut().filter(|r| r.rule_name == 4) {
        r.arg0 = OrdF64(interval_ms);
    }
    t
}

fn with_special_rule(mut t: RuleTables) -> RuleTables {
    t.critical_pages.push(CriticalPage {
        id: 99,
        critical_page_match_expression: SPECIAL_RULE.into(),
    });
    t
}

fn at<'a>(o: &'a Observed, tick: Time, ip: &IpAddr) -> &'a Indicators {
    o.indicators
        .get(&tick)
        .and_then(|m| m.get(ip))
        .unwrap_or_else(|| panic!("no indicators for {ip} at tick {tick}"))
}

#[test]
fn critical_rule_added_and_removed_mid_stream() {
    let (a, b) = (ip("10.1.0.1"), ip("10.1.0.2"));
    let (c1, c2, c3, c4) = (11, 12, 13, 14);
    let events = vec![
        event(a, T0 + 1_000, QUERY, 1, c1),
        event(a, T0 + 5_000, "GET /B2C40/special/a.html HTTP/1.1", 1, c2),
        event(a, T0 + 5_200, "GET /B2C40/special/b.html HTTP/1.1", 1, c3),
        event(
            a,
            T0 + 5_300,
            "GET /B2C40/special/b.html HTTP/1.1",
            1,
            ABSENT,
        ),
        event(a, T0 + 9_000, QUERY, 1, c1),
        event(b, T0 + 2_000, "GET /B2C40/special/x.html HTTP/1.1", 2, c4),
    ];
    let base = with_interval(defaults(), 1000.0);
    let (added, removed) = (T0 + 20_000, T0 + 30_000);
    let ticks = vec![
        T0 + 19_000,
        added - 1_000,
        added,
        T0 + 25_000,
        removed - 1_000,
        removed,
        T0 + 35_000,
    ];
    for workers in [1, 2] {
        let o = harness::run(Scenario {
            spec: W60,
            rules: base.clone(),
            rule_changes: vec![
                (added, with_special_rule(base.clone())),
                (removed, base.clone()),
            ],
            events: events.clone(),
            ticks: ticks.clone(),
            workers,
        });
        // Before: only the two query.ao requests are critical.
        let before = at(&o, T0 + 19_000, &a).clone();
        assert_eq!(before.ip, 5);
        assert_eq!(before.critical_pages, 2);
        assert_eq!(before.critical_pages_acc_time, Some(8_000));
        assert_eq!(before.less_than(1000), 0);
        assert_eq!(before.critical_cookies, 1);
        let b_before = at(&o, T0 + 19_000, &b).clone();
        assert_eq!(
            (
                b_before.critical_pages,
                b_before.critical_pages_acc_time,
                b_before.critical_cookies
            ),
            (0, None, 0)
        );
        assert_eq!(
            at(&o, added - 1_000, &a),
            &before,
            "nothing changes before the edit"
        );

        // From the change tick on, the events already in the window are critical:
        // times 1000, 5000, 5200, 5300, 9000 → gaps 4000, 200, 100, 3700.
        for t in [added, T0 + 25_000, removed - 1_000] {
            let during = at(&o, t, &a);
            assert_eq!(during.ip, 5, "tick {t}");
            assert_eq!(during.critical_pages, 5, "tick {t}");
            assert_eq!(during.critical_pages_acc_time, Some(100), "tick {t}");
            assert_eq!(
                during.critical_pages_less_than.to_vec(),
                vec![(1000, 2)],
                "tick {t}"
            );
            assert_eq!(
                during.critical_cookies, 4,
                "tick {t}: c1, c2, c3 and absent"
            );
            let bd = at(&o, t, &b);
            assert_eq!(
                (
                    bd.critical_pages,
                    bd.critical_pages_acc_time,
                    bd.critical_cookies
                ),
                (1, None, 1),
                "tick {t}"
            );
        }
        // Removing the row restores the values exactly.
        for t in [removed, T0 + 35_000] {
            assert_eq!(at(&o, t, &a), &before, "tick {t}, {workers} workers");
            assert_eq!(at(&o, t, &b), &b_before, "tick {t}, {workers} workers");
        }
    }
}

/// Random traffic with some `/B2C40/special/` requests.
fn random_events(seed: u64, spec: WindowSpec, span_ms: u64) -> Vec<WinEvent> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let requests = [
        QUERY,
        "POST /B2C40/query/jaxb/direct/lowfare.ao HTTP/1.1",
        "GET /B2C40/special/a.html HTTP/1.1",
        "GET /B2C40/special/b.html?x=1 HTTP/1.1",
        "GET /B2C40/index.html HTTP/1.1",
        "GET /B2C40/specialx.html HTTP/1.1",
    ];
    let ips: Vec<IpAddr> = (0..25)
        .map(|i| ip(&format!("10.{}.{}.{}", 1 + i % 3, i / 7, 1 + i)))
        .collect();
    let mut events = Vec::new();
    for &x in &ips {
        let mut t = T0 + rng.random_range(0..span_ms);
        let n = rng.random_range(5..60);
        for _ in 0..n {
            events.push(WinEvent {
                ip: x,
                t_ms: t,
                request_hash: 0,
                request: "".into(),
                ua_hash: rng.random_range(1..5),
                cookie_hash: [ABSENT, 21, 22, 23, 24][rng.random_range(0..5)],
                journey_hash: rng.random_bool(0.5).then(|| rng.random_range(1..6)),
            });
            let r = requests[rng.random_range(0..requests.len())];
            let e = events.last_mut().unwrap();
            e.request = r.into();
            e.request_hash = stable_hash(r);
            t += match rng.random_range(0..10) {
                0 => 0,
                1..5 => rng.random_range(1..1_500),
                _ => rng.random_range(1_500..spec.length_ms / 3),
            };
            if t >= T0 + span_ms {
                break;
            }
        }
    }
    events
}

/// Indicators at tick `t` depend only on the events in the window and the rules in force at
/// `t`: a run whose rules change at `c` (and change back at `d`) must equal, tick by tick,
/// the run with the old rules throughout (before `c`, from `d` on) and the run with the new
/// rules throughout (in `[c, d)`).
#[test]
fn rule_change_equals_rules_in_force_from_the_start() {
    let base = with_interval(defaults(), 1500.0);
    let mut second_flow = with_special_rule(base.clone());
    second_flow.process_info.push(ProcessInfo {
        id: "flow-2".into(),
        process_name: "second".into(),
        status: 0,
    });
    second_flow.strategy.push(Strategy {
        id: "flow-2".into(),
        crawler_blacklist_thresholds: OrdF64(10.0),
        occ_blacklist_thresholds: OrdF64(100.0),
    });
    second_flow
        .rule
        .extend(base.rule.iter().cloned().map(|mut r| {
            r.id = format!("f2-{}", r.id);
            r.process_id = "flow-2".into();
            if r.rule_name == 4 {
                r.arg0 = OrdF64(700.0);
            }
            r
        }));
    let variants: Vec<(&str, RuleTables)> = vec![
        ("critical row added", with_special_rule(base.clone())),
        (
            "rule-4 interval 1500 → 400",
            with_interval(base.clone(), 400.0),
        ),
        (
            "critical row + interval",
            with_interval(with_special_rule(base.clone()), 2500.0),
        ),
        ("critical row + second flow (interval 700)", second_flow),
    ];
    for (seed, spec) in [
        (1u64, W60),
        (
            2,
            WindowSpec {
                length_ms: 10_000,
                slide_ms: 100,
            },
        ),
    ] {
        let span = 6 * spec.length_ms;
        let events = random_events(seed, spec, span);
        let (c, d) = (spec.tick_of(T0 + span / 3), spec.tick_of(T0 + 2 * span / 3));
        let mut ticks = BTreeSet::new();
        for k in 0..=40 {
            ticks.insert(spec.tick_of(T0 + span * k / 40));
        }
        for t in [c, d] {
            ticks.insert(t - spec.slide_ms);
            ticks.insert(t);
            ticks.insert(t + spec.slide_ms);
        }
        let ticks: Vec<Time> = ticks.into_iter().collect();
        let run = |rules: RuleTables, changes: Vec<(Time, RuleTables)>, workers: usize| {
            harness::run(Scenario {
                spec,
                rules,
                rule_changes: changes,
                events: events.clone(),
                ticks: ticks.clone(),
                workers,
            })
        };
        let never = run(base.clone(), vec![], 1);
        for (name, new) in &variants {
            let always = run(new.clone(), vec![], 1);
            let mut differs = 0;
            for workers in [1, 2] {
                let changed = run(
                    base.clone(),
                    vec![(c, new.clone()), (d, base.clone())],
                    workers,
                );
                for &t in &ticks {
                    let reference = if t >= c && t < d { &always } else { &never };
                    assert_eq!(
                        changed.indicators.get(&t),
                        reference.indicators.get(&t),
                        "{name}, seed {seed}, window {spec:?}, {workers} workers, tick {t} \
                         (change at {c}, back at {d})"
                    );
                    if t >= c && t < d && always.indicators.get(&t) != never.indicators.get(&t) {
                        differs += 1;
                    }
                }
                // The blacklist follows too: same state at every tick as the reference run.
                for &t in &ticks {
                    let reference = if t >= c && t < d { &always } else { &never };
                    assert_eq!(
                        live_blacklist(&changed.blacklist, t),
                        live_blacklist(&reference.blacklist, t),
                        "{name}, seed {seed}: blacklist at tick {t}, {workers} workers"
                    );
                }
            }
            assert!(
                differs > 0,
                "{name}: the change made no difference; weak test"
            );
        }
    }
}

/// The live blacklist at `tick` from the consolidated updates: (flow, ip) → entry.
fn live_blacklist(
    updates: &[(BlacklistEntry, Time, isize)],
    tick: Time,
) -> BTreeMap<(String, IpAddr), BlacklistEntry> {
    let mut acc: BTreeMap<&BlacklistEntry, isize> = BTreeMap::new();
    for (e, t, r) in updates {
        if *t <= tick {
            *acc.entry(e).or_default() += r;
        }
    }
    let mut out = BTreeMap::new();
    for (e, n) in acc {
        assert!(n == 0 || n == 1, "multiplicity {n} for {e:?} at {tick}");
        if n == 1 {
            assert!(
                out.insert((e.flow_id.clone(), e.ip), e.clone()).is_none(),
                "two live entries for ({}, {}) at {tick}",
                e.flow_id,
                e.ip
            );
        }
    }
    out
}

fn rule(id: &str, rule_name: i32, arg0: f64, arg1: f64, score: i32) -> Rule {
    Rule {
        id: id.into(),
        process_id: FLOW.into(),
        rule_name,
        arg0: OrdF64(arg0),
        arg1: OrdF64(arg1),
        score,
        status: 0,
        crawler_type: 0,
        rule_type: 0,
    }
}

fn set_threshold(mut t: RuleTables, threshold: f64) -> RuleTables {
    for s in t.strategy.iter_mut().filter(|s| s.id == FLOW) {
        s.crawler_blacklist_thresholds = OrdF64(threshold);
    }
    t
}

fn set_score(mut t: RuleTables, id: &str, score: i32) -> RuleTables {
    for r in t.rule.iter_mut().filter(|r| r.id == id) {
        r.score = score;
    }
    t
}

/// One flow with a rule of each kind and threshold 20, and two IPs in two /16 blocks: A (20
/// queries 200 ms apart, score 23.75: blacklisted) and B (12 queries 2 s apart, 18.75: not).
fn two_ips() -> (RuleTables, Vec<WinEvent>, IpAddr, IpAddr) {
    let mut base = defaults();
    base.process_info.retain(|p| p.id == FLOW);
    base.rule = vec![
        rule("r0", 0, 10.0, 0.0, 8),    // ip > 10
        rule("r1", 1, 10.0, 0.0, 7),    // criticalPages > 10
        rule("r2", 2, 6.0, 0.0, 8),     // userAgent > 6: never
        rule("r3", 3, 300.0, 0.0, 4),   // min interval < 300 ms
        rule("r4", 4, 1500.0, 60.0, 7), // > 60 intervals < 1500 ms: never
        rule("r5", 5, 6.0, 0.0, 8),     // criticalCookies > 6: never
        rule("r6", 6, 30.0, 0.0, 6),    // flightQuery > 30: never
        rule("r7", 7, 1500.0, 0.0, 7),  // ipBlock > 1500: never
    ];
    let base = set_threshold(base, 20.0);
    let (a, b) = (ip("10.1.0.1"), ip("10.2.0.1"));
    let mut events = Vec::new();
    // A: 20 queries 200 ms apart → hits r0, r1, r3: (8+7+4)/80 · (60+40) = 23.75.
    for i in 0..20 {
        events.push(event(a, T0 + 1_000 + 200 * i, QUERY, 1, 5));
    }
    // B: 12 queries 2 s apart → hits r0, r1: 15/80 · 100 = 18.75.
    for i in 0..12 {
        events.push(event(b, T0 + 1_000 + 2_000 * i, QUERY, 1, 6));
    }
    (base, events, a, b)
}

/// The IPs in the live blacklist at tick `t`.
fn members(blacklist: &[(BlacklistEntry, Time, isize)], t: Time) -> BTreeSet<IpAddr> {
    live_blacklist(blacklist, t)
        .into_keys()
        .map(|(_, ip)| ip)
        .collect()
}

#[test]
fn threshold_score_and_flow_status_changes_move_the_blacklist_at_once() {
    let (base, events, a, b) = two_ips();
    let lower = set_threshold(base.clone(), 18.0);
    let r3_weak = set_score(base.clone(), "r3", 1); // A: 16/80 · 100 = 20.0, not > 20
    let mut stopped = base.clone();
    stopped.process_info[0].status = 1;
    let changes = vec![
        (T0 + 30_000, lower),
        (T0 + 40_000, r3_weak),
        (T0 + 50_000, base.clone()),
        (T0 + 55_000, stopped),
    ];
    let ticks: Vec<Time> = (1..=59).map(|s| T0 + s * 1_000).collect();
    for workers in [1, 2] {
        let o = harness::run(Scenario {
            spec: W60,
            rules: base.clone(),
            rule_changes: changes.clone(),
            events: events.clone(),
            ticks: ticks.clone(),
            workers,
        });
        let members = |t: Time| members(&o.blacklist, t);
        let set = |ips: &[IpAddr]| ips.iter().copied().collect::<BTreeSet<_>>();
        assert_eq!(members(T0 + 25_000), set(&[a]));
        assert_eq!(members(T0 + 29_000), set(&[a]));
        assert_eq!(
            members(T0 + 30_000),
            set(&[a, b]),
            "threshold 20 → 18 adds B at once"
        );
        assert_eq!(members(T0 + 39_000), set(&[a, b]));
        assert_eq!(
            members(T0 + 40_000),
            set(&[]),
            "threshold back, r3 score 4 → 1"
        );
        assert_eq!(members(T0 + 49_000), set(&[]));
        assert_eq!(members(T0 + 50_000), set(&[a]), "r3 score back to 4");
        assert_eq!(members(T0 + 54_000), set(&[a]));
        assert_eq!(members(T0 + 55_000), set(&[]), "flow stopped");
        assert_eq!(members(T0 + 59_000), set(&[]));

        // The same as add/remove decisions (what blacklist.jsonl records).
        let acts: Vec<(Action, IpAddr, Time)> = decisions(o.blacklist.clone())
            .into_iter()
            .filter(|d| d.action != Action::Update)
            .map(|d| (d.action, d.entry.ip, d.tick))
            .collect();
        assert_eq!(
            acts,
            vec![
                // 11th request of A at T0+3000: ip 11 > 10, critical 11 > 10, interval 200.
                (Action::Add, a, T0 + 3_000),
                (Action::Add, b, T0 + 30_000),
                (Action::Remove, a, T0 + 40_000),
                (Action::Remove, b, T0 + 40_000),
                (Action::Add, a, T0 + 50_000),
                (Action::Remove, a, T0 + 55_000),
            ],
            "{workers} workers"
        );
        let bl = live_blacklist(&o.blacklist, T0 + 35_000);
        let sa = &bl[&(FLOW.to_string(), a)].decision;
        let sb = &bl[&(FLOW.to_string(), b)].decision;
        assert!((sa.score.0 - 23.75).abs() < 1e-9, "{sa:?}");
        assert!((sb.score.0 - 18.75).abs() < 1e-9, "{sb:?}");
        assert_eq!(sb.threshold.0, 18.0);
        let mut ids = sa.hit_rule_ids.clone();
        ids.sort();
        assert_eq!(ids, ["r0", "r1", "r3"]);
    }
}

/// An `ipBlock` threshold change re-levels the /16 blocks already in the window at once, and
/// a block's count crossing the threshold as requests arrive and expire moves its IPs.
#[test]
fn ip_block_threshold_changes_move_the_blacklist_at_once() {
    let (base, events, a, b) = two_ips();
    let block_rule = |arg0: f64| {
        let mut t = base.clone();
        for r in t.rule.iter_mut().filter(|r| r.id == "r7") {
            r.arg0 = OrdF64(arg0);
        }
        t
    };
    // B's /16 holds B's 12 requests (T0+1 s … T0+23 s) until the first expires at T0+62 s:
    // over 10 it hits r7, (8+7+7)/80 · 100 = 27.5 > 20.
    let changes = vec![(T0 + 30_000, block_rule(10.0)), (T0 + 40_000, base.clone())];
    let ticks: Vec<Time> = (1..=80).map(|s| T0 + s * 1_000).collect();
    let set = |ips: &[IpAddr]| ips.iter().copied().collect::<BTreeSet<_>>();
    for workers in [1, 2] {
        let run = |rules: RuleTables, rule_changes: Vec<(Time, RuleTables)>| {
            harness::run(Scenario {
                spec: W60,
                rules,
                rule_changes,
                events: events.clone(),
                ticks: ticks.clone(),
                workers,
            })
        };
        let o = run(base.clone(), changes.clone());
        assert_eq!(members(&o.blacklist, T0 + 29_000), set(&[a]));
        assert_eq!(
            members(&o.blacklist, T0 + 30_000),
            set(&[a, b]),
            "ipBlock threshold 1500 → 10 adds B at once, {workers} workers"
        );
        let bl = live_blacklist(&o.blacklist, T0 + 35_000);
        let entry = &bl[&(FLOW.to_string(), b)];
        assert_eq!(entry.indicators.ip_block, 12, "the exact count explains it");
        let mut ids = entry.decision.hit_rule_ids.clone();
        ids.sort();
        assert_eq!(ids, ["r0", "r1", "r7"]);
        assert_eq!(
            members(&o.blacklist, T0 + 40_000),
            set(&[a]),
            "threshold back to 1500 removes B at once, {workers} workers"
        );

        // With 10 in force throughout, B is in while its block has more than 10 requests:
        // from its 11th (T0+21 s) until its second expires (T0+3 s + 60 s).
        let o = run(block_rule(10.0), vec![]);
        for t in &ticks {
            let want = (T0 + 21_000..T0 + 63_000).contains(t);
            assert_eq!(
                members(&o.blacklist, *t).contains(&b),
                want,
                "B at tick {t} (T0 + {} s), {workers} workers",
                (t - T0) / 1000
            );
        }
    }
}
