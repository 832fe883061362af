//! A cluster of 2 processes on 127.0.0.1 (timely's `-n 2 -p I -h hostfile`, `-w 1` and `-w 2`
//! threads each) replays a generated log; the union of the processes' outputs equals the
//! single-process replay: the blacklist decisions, the indicators at the final tick, the
//! processed records and the dead letters.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_antispider")
}

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")
}

fn run_ok(args: &[&str]) -> String {
    let out = Command::new(bin()).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "antispider {args:?} failed:\n{stderr}"
    );
    stderr
}

/// `antispider gen` output of `lines` lines over `minutes` minutes, in `dir`.
fn generated_log(dir: &Path, lines: u64, minutes: u64) -> PathBuf {
    let log = dir.join("traffic.cs.log");
    run_ok(&[
        "gen",
        "--lines",
        &lines.to_string(),
        "--minutes",
        &minutes.to_string(),
        "-o",
        log.to_str().unwrap(),
    ]);
    log
}

/// Two ports on 127.0.0.1 that were free a moment ago (see [`support::free_port`]).
fn free_ports() -> [u16; 2] {
    [support::free_port(), support::free_port()]
}

/// Runs `replay` as a 2-process cluster with `threads` workers per process into `out`.
fn replay_cluster(dir: &Path, log: &Path, out: &Path, threads: usize) {
    let (ok0, err0, ok1, err1) = start_cluster(dir, log, out, [threads, threads]);
    assert!(
        ok0 && ok1,
        "cluster -w {threads} failed\nprocess 0:\n{err0}\nprocess 1:\n{err1}"
    );
    for err in [&err0, &err1] {
        assert!(err.contains(&format!("workers {threads}")), "{err}");
    }
}

/// Runs `replay` as a 2-process cluster, process `p` with `threads[p]` workers; returns each
/// process's success and stderr.
fn start_cluster(
    dir: &Path,
    log: &Path,
    out: &Path,
    threads: [usize; 2],
) -> (bool, String, bool, String) {
    let [p0, p1] = free_ports();
    let hostfile = dir.join(format!("hosts-{}-{}", threads[0], threads[1]));
    std::fs::write(&hostfile, format!("127.0.0.1:{p0}\n127.0.0.1:{p1}\n")).unwrap();
    let spawn = |process: usize| {
        Command::new(bin())
            .arg("replay")
            .arg(log)
            .arg("--rules")
            .arg(rules_dir())
            .arg("--out")
            .arg(out)
            .args(["-w", &threads[process].to_string(), "-n", "2"])
            .args(["-p", &process.to_string()])
            .arg("-h")
            .arg(&hostfile)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Process 1 first: the processes connect to each other in any order.
    let second = spawn(1);
    let first = spawn(0);
    let limit = Duration::from_secs(300);
    let (ok0, err0) = support::wait_child(first, Instant::now() + limit);
    let (ok1, err1) = support::wait_child(second, Instant::now() + limit);
    (ok0, err0, ok1, err1)
}

#[test]
fn processes_with_different_worker_counts_refuse_to_start_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let log = generated_log(dir.path(), 2_000, 2);
    let out = dir.path().join("out");
    let (ok0, err0, ok1, err1) = start_cluster(dir.path(), &log, &out, [1, 2]);
    assert!(!ok0 && !ok1, "process 0:\n{err0}\nprocess 1:\n{err1}");
    assert!(
        err0.contains("workers per process (-w, engine.workers): 1 here, 2 in process 1"),
        "{err0}"
    );
    assert!(
        err1.contains("workers per process (-w, engine.workers): 2 here, 1 in process 0"),
        "{err1}"
    );
    // A clean refusal, not a panic in timely's network threads.
    for err in [&err0, &err1] {
        assert!(!err.contains("panicked"), "{err}");
    }
}

fn lines(files: &[PathBuf]) -> Vec<String> {
    let mut all = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        all.extend(text.lines().map(str::to_string));
    }
    all
}

/// Blacklist decisions without their wall-clock time.
fn decisions(files: &[PathBuf]) -> BTreeSet<String> {
    lines(files)
        .iter()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("wall_time");
            v.to_string()
        })
        .collect()
}

/// Processed records without field 7 (highFrqIPGroup): it depends on when a decision lands
/// relative to the line, which differs between runs.
fn processed(files: &[PathBuf]) -> BTreeSet<String> {
    lines(files)
        .iter()
        .map(|l| {
            let mut f: Vec<&str> = l.split("#CS#").collect();
            f[7] = "";
            f.join("#CS#")
        })
        .collect()
}

fn set(files: &[PathBuf]) -> BTreeSet<String> {
    lines(files).into_iter().collect()
}

fn single(dir: &Path, name: &str) -> Vec<PathBuf> {
    vec![dir.join(name)]
}

fn per_process(dir: &Path, stem: &str, ext: &str) -> Vec<PathBuf> {
    (0..2)
        .map(|p| dir.join(format!("{stem}.p{p}.{ext}")))
        .collect()
}

#[test]
fn two_processes_on_loopback_match_one() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("traffic.cs.log");
    let log_s = log.to_str().unwrap();
    run_ok(&["gen", "--lines", "30000", "--minutes", "12", "-o", log_s]);

    let one = dir.path().join("one");
    let rules = rules_dir();
    run_ok(&[
        "replay",
        log_s,
        "--rules",
        rules.to_str().unwrap(),
        "--out",
        one.to_str().unwrap(),
        "-w",
        "2",
    ]);
    let want_decisions = decisions(&single(&one, "blacklist.jsonl"));
    let want_indicators = set(&single(&one, "indicators.jsonl"));
    let want_processed = processed(&single(&one, "processed_query.cs"));
    let want_dead = set(&single(&one, "deadletter.jsonl"));
    assert!(want_decisions.len() >= 5, "{want_decisions:?}");
    assert!(want_indicators.len() > 100);

    for threads in [1, 2] {
        let out = dir.path().join(format!("cluster-w{threads}"));
        replay_cluster(dir.path(), &log, &out, threads);
        let got = decisions(&per_process(&out, "blacklist", "jsonl"));
        assert_eq!(got, want_decisions, "blacklist, -w {threads} x 2 processes");
        // Each IP's decisions are written by the one process whose worker owns the IP.
        assert_eq!(
            lines(&per_process(&out, "blacklist", "jsonl")).len(),
            want_decisions.len()
        );
        let got = set(&per_process(&out, "indicators", "jsonl"));
        assert_eq!(
            got, want_indicators,
            "indicators, -w {threads} x 2 processes"
        );
        assert_eq!(
            lines(&per_process(&out, "indicators", "jsonl")).len(),
            want_indicators.len(),
            "an IP's indicators are in one process's file"
        );
        let got = processed(&per_process(&out, "processed_query", "cs"));
        assert_eq!(got, want_processed, "processed_query, -w {threads}");
        let got = set(&per_process(&out, "deadletter", "jsonl"));
        assert_eq!(got, want_dead, "dead letters, -w {threads}");
        // The single-process names are not written by a cluster.
        assert!(!out.join("blacklist.jsonl").exists());
    }
}

/// Merging ahead (`engine.merge_effort`) and the step size (`engine.step_lines`, and a fifth
/// of the window in event time) change when the traces' batches are made and merged, never
/// what they hold: off, the default and an extreme effort, and many small steps, give the
/// same outputs.
#[test]
fn merge_effort_and_step_size_change_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let log = generated_log(dir.path(), 30_000, 12);
    let rules = rules_dir();
    let replay = |name: &str, engine: Option<&str>| {
        let out = dir.path().join(name);
        let mut args = vec![
            "replay".to_string(),
            log.to_str().unwrap().to_string(),
            "--rules".to_string(),
            rules.to_str().unwrap().to_string(),
            "--out".to_string(),
            out.to_str().unwrap().to_string(),
            "-w".to_string(),
            "2".to_string(),
        ];
        if let Some(engine) = engine {
            let config = dir.path().join(format!("{name}.toml"));
            std::fs::write(&config, format!("[engine]\n{engine}\n")).unwrap();
            args.extend(["--config".to_string(), config.to_str().unwrap().to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_ok(&args);
        (
            decisions(&single(&out, "blacklist.jsonl")),
            set(&single(&out, "indicators.jsonl")),
            processed(&single(&out, "processed_query.cs")),
            set(&single(&out, "deadletter.jsonl")),
        )
    };
    let default = replay("default", None);
    assert!(default.0.len() >= 5 && default.1.len() > 100);
    for (i, engine) in [
        "merge_effort = 0",
        "merge_effort = 1000000",
        // 30k lines over 12 minutes: a step every 256 lines per worker (~12 s of event time)
        // instead of every minute.
        "step_lines = 256",
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("variant-{i}");
        assert!(default == replay(&name, Some(engine)), "{engine}");
    }
}

#[test]
fn a_bad_hostfile_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1:1\n").unwrap();
    let out = Command::new(bin())
        .args(["replay", "-", "--out"])
        .arg(dir.path().join("out"))
        .args(["-n", "2", "-p", "0", "-h"])
        .arg(&hosts)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("hosts") && stderr.contains("1 addresses for 2 processes"),
        "{stderr}"
    );
    let out = Command::new(bin())
        .args(["replay", "-", "-n", "2", "-p", "2"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("engine.process (2)"), "{stderr}");
}

/// The operations API of a live 2-process cluster: every process answers explain for the IPs
/// its workers hold and names the other process for the rest; rule edits go through process
/// 0 (the one whose tables the dataflow reads) and are refused, with the reason, elsewhere.
#[test]
fn a_live_cluster_routes_explain_and_rule_edits() {
    use support::http::{call, call_with, wait_until};
    let dir = tempfile::tempdir().unwrap();
    let log = generated_log(dir.path(), 20_000, 10);
    let rules = dir.path().join("rules");
    support::copy_rules(&rules);
    let config = dir.path().join("live.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nkind = \"file\"\npath = {:?}\nformat = \"cs\"\nfollow = true\n\
             [rules]\ndir = {:?}\n[output]\nprint_decisions = false\n[api]\nenabled = true\n",
            log, rules
        ),
    )
    .unwrap();
    let [t0, t1] = free_ports();
    let hostfile = dir.path().join("hosts");
    std::fs::write(&hostfile, format!("127.0.0.1:{t0}\n127.0.0.1:{t1}\n")).unwrap();
    let api = free_ports();
    let mut procs = Children(
        (0..2)
            .map(|p| {
                Command::new(bin())
                    .args(["run", "--config", config.to_str().unwrap()])
                    .args(["-w", "1", "-n", "2", "-p", &p.to_string(), "-h"])
                    .arg(&hostfile)
                    .env("ANTISPIDER__API__LISTEN", format!("127.0.0.1:{}", api[p]))
                    .env(
                        "ANTISPIDER__OUTPUT__DIR",
                        dir.path().join(format!("out{p}")),
                    )
                    .env("ANTISPIDER_API_TOKEN", "tok")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect(),
    );
    let addrs: Vec<std::net::SocketAddr> = api
        .iter()
        .map(|p| format!("127.0.0.1:{p}").parse().unwrap())
        .collect();
    let lines_read = |a| {
        let (status, text) = call_with(a, "GET", "/metrics", &[], "");
        (status == 200)
            .then(|| {
                text.lines()
                    .find_map(|l| l.strip_prefix("antispider_lines_read_total "))
                    .and_then(|v| v.parse::<f64>().ok())
            })
            .flatten()
            .unwrap_or(0.0)
    };
    wait_until("both processes to read their share", || {
        std::net::TcpStream::connect(addrs[0]).is_ok()
            && std::net::TcpStream::connect(addrs[1]).is_ok()
            && lines_read(addrs[0]) + lines_read(addrs[1]) == 20_000.0
    });

    // IPs of the log: each is explained by exactly one process, and the other names it.
    let text = String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned();
    let ips: BTreeSet<&str> = text
        .lines()
        .rev()
        .flat_map(|l| l.split("#CS#"))
        .filter(|f| f.parse::<std::net::IpAddr>().is_ok())
        .take(200)
        .collect();
    assert!(ips.len() > 10);
    let mut held = [0, 0];
    for ip in &ips {
        let answers: Vec<(u16, serde_json::Value)> = addrs
            .iter()
            .map(|a| call(*a, "GET", &format!("/explain/{ip}"), ""))
            .collect();
        let owner = answers.iter().position(|(s, _)| *s == 200);
        let Some(owner) = owner else {
            panic!("no process explains {ip}: {answers:?}");
        };
        held[owner] += 1;
        let (status, other) = &answers[1 - owner];
        assert_eq!(*status, 404, "{ip}: {other}");
        assert!(
            other["detail"]
                .as_str()
                .unwrap()
                .contains(&format!("of process {owner}")),
            "{other}"
        );
    }
    assert!(held[0] > 0 && held[1] > 0, "IPs spread over both: {held:?}");

    // Rule edits: refused on process 1, taken on process 0.
    let body = r#"[{"id":"flow-anticrawler-1","crawler_blacklist_thresholds":25.0,"occ_blacklist_thresholds":100.0}]"#;
    let auth = [("Authorization", "Bearer tok")];
    let (status, answer) = call_with(addrs[1], "PUT", "/rules/nh_strategy", &auth, body);
    assert_eq!(status, 409, "{answer}");
    assert!(answer.contains("process 0"), "{answer}");
    let (status, answer) = call_with(addrs[0], "PUT", "/rules/nh_strategy", &auth, body);
    assert_eq!(status, 200, "{answer}");

    for p in &procs.0 {
        let _ = Command::new("kill")
            .args(["-INT", &p.id().to_string()])
            .status();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for p in &mut procs.0 {
        while p.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "the cluster did not stop on SIGINT"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Child processes killed when the test ends, also when it fails.
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
