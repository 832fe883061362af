//! Late events: an event whose tick is behind the input frontier (newest tick minus the
//! allowed lateness) is counted as late and dead-lettered with its line number, not windowed.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use antispider::config::Config;
use antispider::engine::{self, RunOptions};
use antispider::format::LogFormat;
use antispider::gen::{generate, GenOptions};

#[test]
fn late_line_is_dead_lettered_with_reason() {
    let dir = tempfile::tempdir().unwrap();
    let opts = GenOptions {
        lines: 5_000,
        malformed_per_mille: 0,
        format: LogFormat::Cs,
        ..Default::default()
    };
    let (mut log, mut truth) = (Vec::new(), Vec::new());
    generate(&opts, &mut log, &mut truth).unwrap();
    let lines: Vec<&[u8]> = log
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    // A query line from the start of the log, repeated at the end: far behind the frontier.
    let early = lines
        .iter()
        .take(500)
        .find(|l| String::from_utf8_lossy(l).contains("/query/jaxb/direct/query.ao"))
        .expect("an early query line");
    let mut text = log.clone();
    text.extend_from_slice(early);
    text.push(b'\n');
    let path = dir.path().join("late.cs.log");
    std::fs::write(&path, &text).unwrap();

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
    assert_eq!(summary.counters.late, 1, "{:?}", summary.counters);
    let dead = std::fs::read_to_string(dir.path().join("out/deadletter.jsonl")).unwrap();
    let late: Vec<serde_json::Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["reason"] == "late")
        .collect();
    assert_eq!(late.len(), 1);
    assert_eq!(late[0]["line_no"], lines.len() as u64 + 1);
    assert!(late[0]["detail"]
        .as_str()
        .unwrap()
        .contains("behind the input frontier"));
}
