//! End to end: 200 000 generated lines through `engine::run` with the default rules.
//!
//! * detection against the generator's ground truth: every `aggressive`, `ua_rotating` and
//!   `cookie_rotating` IP gets an `add` decision, no `human` / `human_nat` IP does; precision
//!   and recall per crawler kind are printed (`--nocapture`);
//! * accounting: every line is read, every malformed line is dead-lettered with a reason
//!   (none lost, none twice), and the counters add up;
//! * outputs: `processed_*.cs` lines have 19 `#CS#` fields; no output file contains a raw
//!   mobile number or ID number;
//! * determinism across workers: 2 workers give the same decisions
//!   (action, ip, flow, event time) and the same `indicators.jsonl` as 1 worker.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use antispider::config::{Config, SourceKind};
use antispider::engine::{self, RunOptions, Summary};
use antispider::format::LogFormat;
use antispider::gen::{self, GenOptions, GenSummary};
use serde_json::Value;

const LINES: u64 = 200_000;

fn generate(dir: &Path) -> (PathBuf, PathBuf, GenSummary) {
    let log = dir.join("traffic.cs.log");
    let truth = dir.join("traffic.truth.csv");
    let opts = GenOptions {
        lines: LINES,
        format: LogFormat::Cs,
        ..Default::default()
    };
    let mut l = std::io::BufWriter::new(std::fs::File::create(&log).unwrap());
    let mut t = std::io::BufWriter::new(std::fs::File::create(&truth).unwrap());
    let s = gen::generate(&opts, &mut l, &mut t).unwrap();
    drop((l, t));
    (log, truth, s)
}

fn run_engine(log: &Path, out: &Path, workers: usize) -> Summary {
    let mut config = Config::default();
    config.source.kind = SourceKind::File;
    config.source.path = log.to_path_buf();
    config.source.format = LogFormat::Cs;
    config.source.follow = false;
    config.rules.dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    config.rules.watch = false;
    config.output.dir = out.to_path_buf();
    config.output.print_decisions = false;
    config.engine.workers = workers;
    engine::run(
        RunOptions {
            config,
            live: false,
            progress: false,
        },
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap()
}

fn read_lines(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    String::from_utf8(bytes)
        .unwrap_or_else(|e| panic!("{}: not UTF-8: {e}", path.display()))
        .lines()
        .map(str::to_string)
        .collect()
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    read_lines(path)
        .iter()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}: bad JSON line {l:?}: {e}", path.display()))
        })
        .collect()
}

/// (action, ip, flow_id, event_time_ms) of every decision, sorted.
fn decision_keys(blacklist: &[Value]) -> Vec<(String, String, String, u64)> {
    let mut v: Vec<_> = blacklist
        .iter()
        .map(|d| {
            (
                d["action"].as_str().unwrap().to_string(),
                d["ip"].as_str().unwrap().to_string(),
                d["flow_id"].as_str().unwrap().to_string(),
                d["event_time_ms"].as_u64().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Sensitive digit runs (SPEC §3.3) left in `text`: an 11-digit mobile number `1[3-9]…`,
/// an 18-digit ID (or 17 digits + X), `86` + mobile; also tried without the hex digits of a
/// directly preceding `%HH` / `\xHH` escape (URL-encoded JSON puts `%22` before a number).
fn sensitive_runs(text: &str) -> Vec<String> {
    let runs = regex::Regex::new(r"[0-9]+").unwrap();
    let bytes = text.as_bytes();
    let is_mobile =
        |r: &str| r.len() == 11 && r.starts_with('1') && (b'3'..=b'9').contains(&r.as_bytes()[1]);
    let mut found = Vec::new();
    for m in runs.find_iter(text) {
        let run = m.as_str();
        let next = bytes.get(m.end()).copied();
        let mut candidates = vec![run];
        let start = m.start();
        // `%2213812345678`: the run starts with the escape's hex digit(s).
        let before = |k: usize| start.checked_sub(k).map(|i| bytes[i]);
        if before(1) == Some(b'%') || (before(1) == Some(b'x') && before(2) == Some(b'\\')) {
            candidates.push(&run[run.len().min(2)..]);
        } else if (before(2) == Some(b'%') || (before(2) == Some(b'x') && before(3) == Some(b'\\')))
            && before(1).is_some_and(|c| c.is_ascii_hexdigit())
        {
            candidates.push(&run[run.len().min(1)..]);
        }
        for r in candidates {
            let id17x = r.len() == 17 && matches!(next, Some(b'X' | b'x'));
            let cc_mobile = r.len() == 13 && r.starts_with("86") && is_mobile(&r[2..]);
            if is_mobile(r) || r.len() == 18 || id17x || cc_mobile {
                let lo = start.saturating_sub(40);
                let hi = (m.end() + 20).min(text.len());
                found.push(String::from_utf8_lossy(&bytes[lo..hi]).into_owned());
            }
        }
    }
    found
}

#[test]
fn sensitive_run_scanner_self_check() {
    assert_eq!(sensitive_runs("phone=13812345678&x=1").len(), 1);
    assert_eq!(sensitive_runs("t=1795312800000 138123456789").len(), 0);
    assert_eq!(sensitive_runs("id 11010519491231002X end").len(), 1);
    assert_eq!(sensitive_runs("id 110105194912310021 end").len(), 1);
    assert_eq!(sensitive_runs("%22phone%22%3A%2213818791413%22").len(), 1);
    assert_eq!(sensitive_runs("\\x2213818791413\\x22").len(), 1);
    assert_eq!(sensitive_runs("+8613812345678").len(), 1);
    assert_eq!(sensitive_runs("12812345678 1381234567").len(), 0);
}

struct Outputs {
    summary: Summary,
    blacklist: Vec<Value>,
    indicators_text: String,
}

fn check_run(out: &Path, summary: Summary, gen: &GenSummary) -> Outputs {
    let c = &summary.counters;
    eprintln!("workers {}: {c:?}", summary.workers);

    // --- Accounting ------------------------------------------------------------------------
    assert_eq!(c.lines_read, gen.lines, "every line is read");
    let parse_failures = c.lines_read - c.parsed;
    let deadletters = read_jsonl(&out.join("deadletter.jsonl"));
    assert_eq!(
        deadletters.len() as u64,
        c.dead_lettered,
        "deadletter.jsonl has one line per dead letter"
    );
    let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
    let mut line_nos = BTreeSet::new();
    for d in &deadletters {
        let reason = d["reason"].as_str().unwrap_or_default();
        assert!(!reason.is_empty(), "dead letter without a reason: {d}");
        let n = d["line_no"].as_u64().expect("line_no");
        assert!((1..=gen.lines).contains(&n), "line_no {n} out of range");
        assert!(line_nos.insert(n), "line {n} dead-lettered twice");
        *by_reason.entry(reason.to_string()).or_default() += 1;
    }
    eprintln!("dead letters by reason: {by_reason:?}");
    assert_eq!(
        by_reason.get("late").copied().unwrap_or(0),
        c.late,
        "late counter = late dead letters"
    );
    // Dead letters = parse failures + post-parse rejects (pre-1970 time, non-IP address) + late.
    let post_parse = c.dead_lettered - parse_failures - c.late;
    assert!(c.dead_lettered >= parse_failures + c.late);
    assert_eq!(
        c.parsed,
        c.filtered + c.processed_query + c.processed_book + c.processed_other + c.late + post_parse,
        "every parsed line is filtered, processed, late or rejected"
    );
    assert_eq!(
        c.windowed, c.processed_query,
        "window input = processed Query requests"
    );
    assert_eq!(
        c.late, 0,
        "the generator's disorder (≤ 2 s) is within the allowed lateness (10 s)"
    );
    assert_eq!(
        c.dead_lettered, gen.malformed,
        "every malformed line (and only those) is dead-lettered"
    );

    // --- Processed output ------------------------------------------------------------------
    for (name, expected) in [
        ("processed_query.cs", c.processed_query),
        ("processed_book.cs", c.processed_book),
    ] {
        let lines = read_lines(&out.join(name));
        assert_eq!(lines.len() as u64, expected, "{name}: one line per record");
        for l in &lines {
            assert_eq!(l.split("#CS#").count(), 19, "{name}: {l}");
        }
    }
    assert!(c.processed_query > 0 && c.processed_book > 0);

    // --- No raw phone / ID numbers in any output -------------------------------------------
    for name in [
        "blacklist.jsonl",
        "processed_query.cs",
        "processed_book.cs",
        "deadletter.jsonl",
        "indicators.jsonl",
    ] {
        let bytes = std::fs::read(out.join(name)).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        let leaks = sensitive_runs(&text);
        assert!(
            leaks.is_empty(),
            "{name}: {} raw phone/ID numbers, e.g. {:?}",
            leaks.len(),
            &leaks[..leaks.len().min(5)]
        );
    }

    let blacklist = read_jsonl(&out.join("blacklist.jsonl"));
    assert_eq!(
        blacklist.iter().filter(|d| d["action"] == "add").count() as u64,
        c.decisions_add
    );
    assert_eq!(
        blacklist.iter().filter(|d| d["action"] == "remove").count() as u64,
        c.decisions_remove
    );
    // Per (flow, ip), actions alternate add, remove, add, ... in event time.
    let mut per: BTreeMap<(String, String), Vec<(u64, String)>> = BTreeMap::new();
    for d in &blacklist {
        per.entry((d["flow_id"].to_string(), d["ip"].to_string()))
            .or_default()
            .push((
                d["event_time_ms"].as_u64().unwrap(),
                d["action"].as_str().unwrap().to_string(),
            ));
    }
    for (key, mut acts) in per {
        acts.sort();
        for (i, (_, a)) in acts.iter().enumerate() {
            let want = if i % 2 == 0 { "add" } else { "remove" };
            assert_eq!(a, want, "{key:?}: {acts:?}");
        }
    }
    let indicators_text = std::fs::read_to_string(out.join("indicators.jsonl")).unwrap();
    assert!(!indicators_text.is_empty());
    Outputs {
        summary,
        blacklist,
        indicators_text,
    }
}

#[test]
fn end_to_end_200k() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (log, truth_path, gen) = generate(dir.path());
    eprintln!(
        "generated {} lines ({} malformed) in {:.1?}; IPs per kind {:?}",
        gen.lines,
        gen.malformed,
        started.elapsed(),
        gen.ips_by_kind
    );
    assert!(gen.malformed > 0);

    let out1 = dir.path().join("out1");
    let t = Instant::now();
    let s1 = run_engine(&log, &out1, 1);
    eprintln!("1 worker: {:.1?}", t.elapsed());
    let one = check_run(&out1, s1, &gen);

    // --- Detection vs ground truth ---------------------------------------------------------
    let mut kind_of: BTreeMap<String, String> = BTreeMap::new();
    let truth = read_lines(&truth_path);
    assert_eq!(truth[0], "ip,label,kind");
    for row in &truth[1..] {
        let f: Vec<&str> = row.split(',').collect();
        assert_eq!(f.len(), 3, "{row}");
        kind_of.insert(f[0].to_string(), f[2].to_string());
    }
    let added: BTreeSet<String> = one
        .blacklist
        .iter()
        .filter(|d| d["action"] == "add")
        .map(|d| d["ip"].as_str().unwrap().to_string())
        .collect();
    let unknown: Vec<&String> = added
        .iter()
        .filter(|ip| !kind_of.contains_key(*ip))
        .collect();
    assert!(
        unknown.is_empty(),
        "blacklisted IPs not in the ground truth: {unknown:?}"
    );
    let mut per_kind: BTreeMap<&str, (usize, usize)> = BTreeMap::new(); // kind → (n, flagged)
    for (ip, kind) in &kind_of {
        let e = per_kind.entry(kind.as_str()).or_default();
        e.0 += 1;
        e.1 += usize::from(added.contains(ip));
    }
    let humans_flagged: usize = ["human", "human_nat"]
        .iter()
        .map(|k| per_kind.get(k).map_or(0, |v| v.1))
        .sum();
    let crawlers_flagged = added.len() - humans_flagged;
    eprintln!(
        "blacklisted IPs: {} ({} crawlers, {} humans); overall precision {:.3}",
        added.len(),
        crawlers_flagged,
        humans_flagged,
        crawlers_flagged as f64 / added.len().max(1) as f64
    );
    eprintln!("kind              IPs  flagged  recall  precision(kind vs humans)");
    for kind in gen::KINDS {
        let (n, flagged) = per_kind.get(kind).copied().unwrap_or_default();
        let recall = flagged as f64 / n.max(1) as f64;
        if kind.starts_with("human") {
            eprintln!("{kind:<16} {n:>4}  {flagged:>7}  (false positives)");
        } else {
            let precision = if flagged + humans_flagged == 0 {
                "n/a".to_string()
            } else {
                format!("{:.3}", flagged as f64 / (flagged + humans_flagged) as f64)
            };
            eprintln!("{kind:<16} {n:>4}  {flagged:>7}  {recall:>6.3}  {precision:>9}");
        }
    }
    for kind in ["aggressive", "ua_rotating", "cookie_rotating"] {
        let missed: Vec<&String> = kind_of
            .iter()
            .filter(|(ip, k)| k.as_str() == kind && !added.contains(*ip))
            .map(|(ip, _)| ip)
            .collect();
        assert!(
            per_kind.get(kind).is_some_and(|v| v.0 > 0),
            "no {kind} IP in the truth"
        );
        assert!(
            missed.is_empty(),
            "{kind} IPs never blacklisted: {missed:?}"
        );
    }
    let false_positives: Vec<(&String, &String)> = kind_of
        .iter()
        .filter(|(ip, k)| k.starts_with("human") && added.contains(*ip))
        .collect();
    assert!(
        false_positives.is_empty(),
        "human IPs blacklisted: {false_positives:?}"
    );

    // --- Same results with 2 workers -------------------------------------------------------
    let out2 = dir.path().join("out2");
    let t = Instant::now();
    let s2 = run_engine(&log, &out2, 2);
    eprintln!("2 workers: {:.1?}", t.elapsed());
    let two = check_run(&out2, s2, &gen);
    let (d1, d2) = (decision_keys(&one.blacklist), decision_keys(&two.blacklist));
    if d1 != d2 {
        let a: BTreeSet<_> = d1.iter().collect();
        let b: BTreeSet<_> = d2.iter().collect();
        panic!(
            "decisions differ between 1 and 2 workers ({} vs {}); only with 1: {:?}; only with 2: {:?}",
            d1.len(),
            d2.len(),
            a.difference(&b).take(10).collect::<Vec<_>>(),
            b.difference(&a).take(10).collect::<Vec<_>>()
        );
    }
    assert!(
        one.indicators_text == two.indicators_text,
        "indicators.jsonl differs between 1 and 2 workers"
    );
    let (c1, c2) = (&one.summary.counters, &two.summary.counters);
    assert_eq!(
        serde_json::to_value(c1).unwrap(),
        serde_json::to_value(c2).unwrap(),
        "counters differ between 1 and 2 workers"
    );
    assert_eq!(one.summary.final_tick, two.summary.final_tick);
    eprintln!("total {:.1?}", started.elapsed());
}
