//! Late events: an event whose tick is behind the input frontier (newest tick minus the
//! allowed lateness) is counted as late and dead-lettered with its line number, not windowed.
//! Events from after 2999 (a clock or parsing fault) are dead-lettered too, and move no
//! frontier.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use antispider::config::Config;
use antispider::engine::{self, RunOptions};
use antispider::format::LogFormat;
use antispider::gen::{generate, GenOptions};

/// The lines of a generated log of 5 000 lines (cs, no malformed lines).
fn generated_lines() -> Vec<Vec<u8>> {
    let opts = GenOptions {
        lines: 5_000,
        malformed_per_mille: 0,
        format: LogFormat::Cs,
        ..Default::default()
    };
    let (mut log, mut truth) = (Vec::new(), Vec::new());
    generate(&opts, &mut log, &mut truth).unwrap();
    log.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// Replays `lines` with the default rules; the summary and the dead letters.
fn replay(lines: &[Vec<u8>]) -> (engine::Summary, Vec<serde_json::Value>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.cs.log");
    let mut text = lines.join(&b'\n');
    text.push(b'\n');
    std::fs::write(&path, text).unwrap();
    let mut cfg = Config::default();
    cfg.source.path = path;
    cfg.rules.dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    cfg.rules.watch = false;
    cfg.output.dir = dir.path().join("out");
    let summary = engine::run(
        RunOptions {
            config: cfg,
            live: false,
            progress: false,
        },
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    let dead = std::fs::read_to_string(dir.path().join("out/deadletter.jsonl")).unwrap();
    let dead = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (summary, dead)
}

/// The first query line among the first 500.
fn early_query(lines: &[Vec<u8>]) -> Vec<u8> {
    lines
        .iter()
        .take(500)
        .find(|l| String::from_utf8_lossy(l).contains("/query/jaxb/direct/query.ao"))
        .expect("an early query line")
        .clone()
}

#[test]
fn late_line_is_dead_lettered_with_reason() {
    let mut lines = generated_lines();
    // A query line from the start of the log, repeated at the end: far behind the frontier.
    lines.push(early_query(&lines));
    let (summary, dead) = replay(&lines);
    assert_eq!(summary.counters.late, 1, "{:?}", summary.counters);
    let late: Vec<_> = dead.iter().filter(|v| v["reason"] == "late").collect();
    assert_eq!(late.len(), 1);
    assert_eq!(late[0]["line_no"], lines.len() as u64);
    assert!(late[0]["detail"]
        .as_str()
        .unwrap()
        .contains("behind the input frontier"));
}

#[test]
fn line_from_after_2999_is_dead_lettered_and_moves_no_frontier() {
    let lines = generated_lines();
    let (base, _) = replay(&lines);
    // An early query line dated 3100, put in at line 1 001: had its time counted, every
    // later line would be late.
    let future = String::from_utf8(early_query(&lines))
        .unwrap()
        .replace("2026", "3100");
    let mut with_future = lines.clone();
    with_future.insert(1_000, future.into_bytes());
    let (summary, dead) = replay(&with_future);
    let c = &summary.counters;
    assert_eq!(c.late, 0, "{c:?}");
    assert_eq!(c.dead_lettered, base.counters.dead_lettered + 1, "{c:?}");
    assert_eq!(c.windowed, base.counters.windowed, "{c:?}");
    let bad: Vec<_> = dead.iter().filter(|v| v["reason"] == "bad_time").collect();
    assert_eq!(bad.len(), 1, "{dead:?}");
    assert_eq!(bad[0]["line_no"], 1_001);
    assert_eq!(bad[0]["detail"], "event time after 2999");
    assert_eq!(summary.ips_blacklisted, base.ips_blacklisted);
}
