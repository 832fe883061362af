//! The operations API over a live engine (SPEC §7): Prometheus metrics, the blacklist, explain,
//! token-authenticated rule edits and link statistics.
//!
//! The engine follows a generated log with 2 workers (explain must reach the worker that holds
//! the IP), its rules in a copy of `rules/` (edits are written back there), the API on a free
//! loopback port. After the end of the file, event time moves on with the wall clock, so the
//! checks that compare two views of the blacklist read both as of one tick.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use antispider::api::ApiState;
use antispider::config::{Config, SourceKind};
use antispider::format::LogFormat;
use antispider::gen::{self, GenOptions};
use antispider::ops::OpsHub;
use antispider::rules::RuleTables;
use serde_json::Value;

mod support;
use support::http::{call, call_with, wait_until, LiveEngine};

const LINES: u64 = 100_000;
const TOKEN: &str = "test-token-0123";

/// One sample of the metrics text, e.g. `antispider_lines_read_total` or
/// `antispider_dead_letters_total{reason="late"}`; every sample whose name (before `{`) is
/// `name` is summed.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(k, _)| *k == name || k.split('{').next() == Some(name) && !name.contains('{'))
        .map(|(_, v)| v.parse::<f64>().unwrap())
        .sum()
}

fn metrics(addr: SocketAddr) -> String {
    let (status, text) = call_with(addr, "GET", "/metrics", &[], "");
    assert_eq!(status, 200, "{text}");
    text
}

/// The (flow, IP) pairs on the blacklist per `blacklist.jsonl` (adds and removes; score
/// updates are not written there), as of event time `until` (all of it when `None`).
fn blacklist_from_file(path: &Path, until: Option<u64>) -> BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut on = BTreeSet::new();
    for line in text.lines() {
        let d: Value = serde_json::from_str(line).unwrap();
        if until.is_some_and(|t| d["event_time_ms"].as_u64().unwrap() > t) {
            continue;
        }
        let key = (
            d["flow_id"].as_str().unwrap().to_string(),
            d["ip"].as_str().unwrap().to_string(),
        );
        match d["action"].as_str().unwrap() {
            "add" => {
                on.insert(key);
            }
            "remove" => {
                on.remove(&key);
            }
            other => panic!("unknown action {other}"),
        }
    }
    on
}

fn blacklist_from_api(addr: SocketAddr) -> BTreeMap<(String, String), f64> {
    let (status, v) = call(addr, "GET", "/blacklist", "");
    assert_eq!(status, 200, "{v}");
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(v["count"].as_u64().unwrap() as usize, entries.len());
    entries
        .iter()
        .map(|e| {
            (
                (
                    e["flow_id"].as_str().unwrap().to_string(),
                    e["ip"].as_str().unwrap().to_string(),
                ),
                e["score"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// The API's blacklist holds the pairs `blacklist.jsonl` adds up to, each with a score
/// above its threshold. Both move as ticks complete: compare when the API gave the same list
/// before and after reading the file.
fn assert_blacklist_matches_file(addr: SocketAddr, file: &Path) -> BTreeMap<(String, String), f64> {
    for _ in 0..50 {
        let before = blacklist_from_api(addr);
        let from_file = blacklist_from_file(file, None);
        let after = blacklist_from_api(addr);
        if before == after {
            let pairs: BTreeSet<(String, String)> = before.keys().cloned().collect();
            assert_eq!(
                pairs, from_file,
                "the API's blacklist differs from the file's"
            );
            return before;
        }
    }
    panic!("the blacklist never held still");
}

/// Explain agrees with the decisions written up to its tick (per flow, blacklisted or not),
/// and with itself: each rule's hit with its value and arguments, the flow's score with the
/// rules hit (SPEC §5's formula), blacklisted with the score and threshold.
fn assert_explain_agrees(addr: SocketAddr, file: &Path, ip: &str) -> Value {
    let (status, v) = call(addr, "GET", &format!("/explain/{ip}"), "");
    assert_eq!(status, 200, "{v}");
    let tick = v["event_time_ms"].as_u64().unwrap();
    let decided = blacklist_from_file(file, Some(tick));
    for flow in v["flows"].as_array().unwrap() {
        let key = (
            flow["flow_id"].as_str().unwrap().to_string(),
            ip.to_string(),
        );
        let blacklisted = flow["blacklisted"].as_bool().unwrap();
        assert_eq!(
            blacklisted,
            decided.contains(&key),
            "explain of {ip} at {tick} vs the decisions: {v}"
        );
        let rules = flow["rules"].as_array().unwrap();
        let mut hits = Vec::new();
        for r in rules {
            let (arg0, arg1) = (r["arg0"].as_f64().unwrap(), r["arg1"].as_f64().unwrap());
            let value = r["value"].as_f64();
            let expected = match r["rule_real_name"].as_str().unwrap() {
                "criticalPagesAccTime" => value.is_some_and(|v| v < arg0),
                "criticalPagesLessThanDefault" => value.unwrap() > arg1,
                _ => value.unwrap() > arg0,
            };
            assert_eq!(r["hit"], expected, "{r} of {v}");
            if expected {
                hits.push((
                    r["score"].as_i64().unwrap() as i32,
                    r["enabled"].as_bool().unwrap(),
                ));
            }
        }
        let score = antispider::scoring::flow_score(&hits, rules.len() as i64);
        assert!(
            (flow["score"].as_f64().unwrap() - score).abs() < 1e-9,
            "{v}"
        );
        assert_eq!(
            blacklisted,
            score > flow["threshold"].as_f64().unwrap(),
            "{v}"
        );
    }
    v
}

#[test]
fn metrics_blacklist_explain_rule_edits_and_link_stats() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("traffic.cs.log");
    let opts = GenOptions {
        lines: LINES,
        duration_ms: 20 * 60_000,
        format: LogFormat::Cs,
        ..Default::default()
    };
    let mut l = std::io::BufWriter::new(std::fs::File::create(&log).unwrap());
    let mut t = std::io::sink();
    gen::generate(&opts, &mut l, &mut t).unwrap();
    drop(l);
    let rules = dir.path().join("rules");
    support::copy_rules(&rules);

    let mut cfg = Config::default();
    cfg.source.kind = SourceKind::File;
    cfg.source.path = log.clone();
    cfg.source.format = LogFormat::Cs;
    cfg.source.follow = true;
    cfg.rules.dir = rules.clone();
    cfg.rules.watch = true;
    cfg.output.dir = dir.path().join("out");
    cfg.output.print_decisions = false;
    cfg.engine.workers = 2;
    cfg.api.enabled = true;
    cfg.redis.monitor_interval_secs = 1;
    let blacklist_file = cfg.output.dir.join("blacklist.jsonl");

    let ops = Arc::new(OpsHub::default());
    let live = LiveEngine::start(
        cfg,
        ApiState {
            anomaly: Default::default(),
            ops: ops.clone(),
            token: Some(Arc::from(TOKEN)),
            token_env: "ANTISPIDER_API_TOKEN".into(),
            utc_offset_minutes: 480,
        },
    );
    let addr = live.addr;

    wait_until("the engine to start", || {
        call(addr, "GET", "/health", "").1["engine_running"] == true
    });

    // Metrics: every line read, counted once per stage.
    wait_until("every line read", || {
        metric(&metrics(addr), "antispider_lines_read_total") == LINES as f64
    });
    wait_until("blacklist decisions", || {
        metric(&metrics(addr), "antispider_blacklist_decisions_total") > 0.0
    });
    let m = metrics(addr);
    assert!(m.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");
    let parsed = metric(&m, "antispider_lines_parsed_total");
    let dead = metric(&m, "antispider_dead_letters_total");
    assert!(dead > 0.0, "the generated log has malformed lines:\n{m}");
    assert!(parsed < LINES as f64 && parsed > 0.9 * LINES as f64, "{m}");
    assert_eq!(
        metric(
            &m,
            "antispider_requests_processed_total{behavior=\"query\"}"
        ),
        metric(&m, "antispider_window_events_in_total"),
        "queries are what the window takes in:\n{m}"
    );
    let (events, ips) = (
        metric(&m, "antispider_window_events"),
        metric(&m, "antispider_window_ips"),
    );
    assert!(events > 0.0 && ips > 0.0 && ips <= events, "{m}");
    for w in 0..2 {
        assert!(
            metric(
                &m,
                &format!("antispider_worker_input_time_ms{{worker=\"{w}\"}}")
            ) > 0.0,
            "{m}"
        );
    }
    assert!(
        metric(&m, "antispider_tick_latency_seconds_count") > 0.0,
        "{m}"
    );
    // No IP in any label.
    assert!(
        !m.lines()
            .any(|l| l.contains('{') && l.split('"').any(|v| v.parse::<std::net::IpAddr>().is_ok())),
        "{m}"
    );

    // The blacklist as the API has it is the one the decisions add up to.
    let listed = assert_blacklist_matches_file(addr, &blacklist_file);
    assert!(
        !listed.is_empty(),
        "the generated crawlers are on the blacklist"
    );
    let (_, flow_only) = call(addr, "GET", "/blacklist?flow_id=no-such-flow", "");
    assert_eq!(flow_only["count"], 0);

    // Explain, on whichever worker holds the IP, agrees with the decisions.
    let blacklisted: Vec<String> = listed.keys().map(|(_, ip)| ip.clone()).take(5).collect();
    for ip in &blacklisted {
        assert_explain_agrees(addr, &blacklist_file, ip);
    }
    // IPs in the window that are not on the blacklist: from the processed queries.
    let processed = std::fs::read_to_string(dir.path().join("out/processed_query.cs")).unwrap();
    let listed_ips: BTreeSet<&String> = listed.keys().map(|(_, ip)| ip).collect();
    let others: BTreeSet<String> = processed
        .lines()
        .rev()
        .take(2000)
        .filter_map(|l| {
            l.split("#CS#")
                .find(|f| f.parse::<std::net::IpAddr>().is_ok())
        })
        .map(str::to_string)
        .filter(|ip| !listed_ips.contains(ip))
        .take(5)
        .collect();
    assert!(!others.is_empty());
    let mut in_window = 0;
    for ip in &others {
        let v = assert_explain_agrees(addr, &blacklist_file, ip);
        in_window += (v["in_window"] == true) as usize;
    }
    assert!(in_window > 0, "recent IPs are in the window");
    let (status, v) = call(addr, "GET", "/explain/192.0.2.77", "");
    assert_eq!(status, 200);
    assert_eq!(v["in_window"], false);
    assert_eq!(v["indicators"]["ip"], 0);
    let (status, _) = call(addr, "GET", "/explain/not-an-ip", "");
    assert_eq!(status, 400);

    // Rule edits: refused without the token, with a wrong one, for an unknown table, and for
    // a bad regex (which leaves the file as it was).
    let strategy_file = rules.join(antispider::rules::STRATEGY);
    let original = std::fs::read_to_string(&strategy_file).unwrap();
    let lowered = r#"[{"id":"flow-anticrawler-1","crawler_blacklist_thresholds":1.0,"occ_blacklist_thresholds":100.0}]"#;
    let put = |path: &str, auth: Option<&str>, body: &str| {
        let header = auth.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = header
            .as_deref()
            .map(|h| vec![("Authorization", h)])
            .unwrap_or_default();
        call_with(addr, "PUT", path, &headers, body)
    };
    assert_eq!(put("/rules/nh_strategy", None, lowered).0, 401);
    assert_eq!(put("/rules/nh_strategy", Some("wrong"), lowered).0, 401);
    assert_eq!(put("/rules/nh_nothing", Some(TOKEN), lowered).0, 404);
    let (status, body) = put(
        "/rules/nh_query_critical_pages",
        Some(TOKEN),
        r#"{"rows":[{"id":9,"criticalPageMatchExpression":"POST /(unclosed"}]}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("id = 9") && body.contains("regex"), "{body}");
    let (_, before) = call(addr, "GET", "/rules/nh_strategy", "");
    assert_eq!(std::fs::read_to_string(&strategy_file).unwrap(), original);

    // A threshold lowered through the API applies at once to the IPs in the window: the
    // blacklist grows and keeps every pair it had.
    let (status, body) = put("/rules/nh_strategy", Some(TOKEN), lowered);
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["rows"], 1);
    assert!(answer["version"].as_u64().unwrap() > before["version"].as_u64().unwrap());
    let (_, after) = call(addr, "GET", "/rules/nh_strategy", "");
    assert_eq!(after["rows"][0]["crawler_blacklist_thresholds"], 1.0);
    wait_until("the lowered threshold to blacklist more IPs", || {
        blacklist_from_api(addr).len() > listed.len()
    });
    let grown = assert_blacklist_matches_file(addr, &blacklist_file);
    assert!(grown.len() > listed.len());
    // The edit is in the rule file, under the file's own comment header, and loads back.
    let written = std::fs::read_to_string(&strategy_file).unwrap();
    assert!(written.starts_with("# nh_strategy"), "{written}");
    let reloaded = RuleTables::load_dir(&rules).unwrap();
    assert_eq!(reloaded.strategy[0].crawler_blacklist_thresholds.0, 1.0);

    // Link statistics: every request counted under its server.
    wait_until("a finished period of link statistics", || {
        call(addr, "GET", "/link_stats", "").1["since_start"]["lines"]
            .as_u64()
            .is_some_and(|n| n > 0)
    });
    let (_, links) = call(addr, "GET", "/link_stats", "");
    let per_server: u64 = links["since_start"]["serversCountMap"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(per_server, links["since_start"]["lines"].as_u64().unwrap());

    let (server, summary) = live.stop();
    // The metrics count what the run's summary counts.
    let m = metrics(addr);
    let c = &summary.counters;
    assert_eq!(
        metric(&m, "antispider_lines_read_total"),
        c.lines_read as f64
    );
    assert_eq!(metric(&m, "antispider_lines_parsed_total"), c.parsed as f64);
    assert_eq!(
        metric(&m, "antispider_dead_letters_total"),
        c.dead_lettered as f64
    );
    assert_eq!(
        metric(&m, "antispider_blacklist_decisions_total{action=\"add\"}"),
        c.decisions_add as f64
    );
    assert_eq!(
        metric(
            &m,
            "antispider_blacklist_decisions_total{action=\"remove\"}"
        ),
        c.decisions_remove as f64
    );
    // Once the engine has stopped, health and explain say so.
    let (status, v) = call(addr, "GET", &format!("/explain/{}", blacklisted[0]), "");
    assert_eq!(status, 503, "{v}");
    assert_eq!(call(addr, "GET", "/health", "").1["engine_running"], false);
    server.shutdown();
}
