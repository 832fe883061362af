//! The `antispider` binary: `gen` then `replay`, and clear failures on bad rules or input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod support;
use support::copy_rules;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_antispider"));
    // The default `--rules rules` resolves against the crate root.
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c.env("RUST_LOG", "antispider=warn");
    c
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("the binary runs");
    eprintln!(
        "$ {:?}\n  status {}\n  stderr: {}",
        cmd,
        out.status,
        String::from_utf8_lossy(&out.stderr).trim_end()
    );
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn default_rules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")
}

/// Generates a 20 000-line log into `dir`; returns its path.
fn gen(dir: &Path) -> PathBuf {
    let log = dir.join("traffic.log");
    let o = run(bin().arg("gen").args(["--lines", "20000", "-o"]).arg(&log));
    assert!(o.status.success(), "gen failed: {}", stderr(&o));
    assert!(stderr(&o).contains("wrote 20000 lines"), "{}", stderr(&o));
    assert!(log.is_file());
    let truth = dir.join("traffic.truth.csv");
    let t = std::fs::read_to_string(&truth).expect("ground truth next to the log");
    assert!(t.starts_with("ip,label,kind\n"));
    // Byte count: some malformed lines are deliberately not UTF-8.
    let lines = std::fs::read(&log)
        .unwrap()
        .iter()
        .filter(|b| **b == b'\n')
        .count();
    assert_eq!(lines, 20_000);
    log
}

#[test]
fn gen_then_replay() {
    let dir = tempfile::tempdir().unwrap();
    let log = gen(dir.path());

    let out = dir.path().join("out");
    let o = run(bin()
        .arg("replay")
        .arg(&log)
        .args(["--format", "cs", "--out"])
        .arg(&out));
    assert!(o.status.success(), "replay failed: {}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("lines read 20000"), "summary: {err}");
    for f in [
        "blacklist.jsonl",
        "processed_query.cs",
        "processed_book.cs",
        "deadletter.jsonl",
        "indicators.jsonl",
    ] {
        let p = out.join(f);
        assert!(p.is_file(), "{} missing", p.display());
    }
    assert!(
        std::fs::metadata(out.join("processed_query.cs"))
            .unwrap()
            .len()
            > 0
    );
    assert!(
        std::fs::metadata(out.join("indicators.jsonl"))
            .unwrap()
            .len()
            > 0
    );

    // The JSON summary, with 2 workers, counts the same lines.
    let out2 = dir.path().join("out2");
    let o = run(bin()
        .arg("replay")
        .arg(&log)
        .args(["--format", "cs", "--json", "-w", "2", "--rules"])
        .arg(default_rules())
        .arg("--out")
        .arg(&out2));
    assert!(o.status.success(), "replay --json failed: {}", stderr(&o));
    let summary: serde_json::Value =
        serde_json::from_slice(&o.stdout).expect("--json prints the summary as JSON");
    assert_eq!(summary["counters"]["lines_read"], 20_000);
    assert_eq!(summary["workers"], 2);
}

/// Replays `log` with the rules in `rules`; must fail naming `expect` in the error.
fn replay_fails(log: &Path, rules: &Path, out: &Path, expect: &[&str]) {
    let o = run(bin()
        .arg("replay")
        .arg(log)
        .args(["--format", "cs", "--rules"])
        .arg(rules)
        .arg("--out")
        .arg(out));
    assert!(!o.status.success(), "replay with bad rules succeeded");
    let err = stderr(&o);
    for e in expect {
        assert!(err.contains(e), "error should name {e:?}: {err}");
    }
}

#[test]
fn replay_with_bad_rules_fails_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("small.log");
    // A few valid-looking lines are enough: the rules are checked before any line is read.
    std::fs::write(&log, "not a log line\n").unwrap();
    let out = dir.path().join("out");

    // Rules directory that does not exist.
    let missing_dir = dir.path().join("no-such-rules");
    replay_fails(&log, &missing_dir, &out, &["no-such-rules", ".toml"]);

    // One table file missing.
    let r = dir.path().join("rules-missing-file");
    copy_rules(&r);
    std::fs::remove_file(r.join("nh_strategy.toml")).unwrap();
    replay_fails(&log, &r, &out, &["nh_strategy.toml"]);

    // Invalid critical-page regex.
    let r = dir.path().join("rules-bad-regex");
    copy_rules(&r);
    std::fs::write(
        r.join("nh_query_critical_pages.toml"),
        "[[rows]]\nid = 7\ncriticalPageMatchExpression = 'POST /x(('\n",
    )
    .unwrap();
    replay_fails(
        &log,
        &r,
        &out,
        &["nh_query_critical_pages.toml", "id = 7", "regex"],
    );

    // TOML syntax error.
    let r = dir.path().join("rules-bad-toml");
    copy_rules(&r);
    std::fs::write(r.join("nh_rule.toml"), "[[rows]]\nid = 'r0\n").unwrap();
    replay_fails(&log, &r, &out, &["nh_rule.toml", "line"]);

    // Score outside 1..=10.
    let r = dir.path().join("rules-bad-score");
    copy_rules(&r);
    let text = std::fs::read_to_string(r.join("nh_rule.toml"))
        .unwrap()
        .replacen("score = 8", "score = 11", 1);
    std::fs::write(r.join("nh_rule.toml"), text).unwrap();
    replay_fails(&log, &r, &out, &["nh_rule.toml", "score 11"]);
}

#[test]
fn replay_of_a_missing_log_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("does-not-exist.log");
    let o = run(bin()
        .arg("replay")
        .arg(&log)
        .args(["--format", "cs", "--out"])
        .arg(dir.path().join("out")));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("does-not-exist.log"), "{}", stderr(&o));
}
