//! A cluster of 2 processes on 127.0.0.1 (timely's `-n 2 -p I -h hostfile`) reads a 4-partition
//! Kafka topic on a real Kafka-protocol broker (Tansu) with the shipped `dataflows/kafka.toml`,
//! to the topic's end (`kafka.stop_at_end`). Twice: `-w 1` (2 workers, 2 partitions each) and
//! `-w 3` (6 workers: process 0 reads partitions 0, 1, 2, process 1 reads partition 3 and has two
//! workers with nothing to read). Every partition is read by exactly one worker of the cluster
//! (the one `kafka.source_topics` assigns it to), from its first message to its last, and the
//! union of the two processes' outputs equals a single-process `replay` of the same file: the
//! blacklist decisions (files and topic), the indicators at the final tick, the processed
//! records (files and topic, each line exactly once) and the dead letters.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::tansu::read_topic;
use support::tansu::Tansu;

const BIN: &str = env!("CARGO_BIN_EXE_antispider");
const TOPIC: &str = "logs";
const PARTITIONS: usize = 4;
const LINES: usize = 30_000;

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")
}

/// A command of the binary with no `ANTISPIDER__*` override inherited from the caller's
/// environment and the log level the partition checks read.
fn command() -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy()
            .to_ascii_uppercase()
            .starts_with("ANTISPIDER__")
        {
            c.env_remove(k);
        }
    }
    c.env("RUST_LOG", "antispider=info");
    c
}

fn antispider(args: &[&str]) -> String {
    let out = command().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "antispider {args:?} failed:\n{stderr}"
    );
    stderr
}

/// The lines of files that must all exist.
fn lines(files: &[PathBuf]) -> Vec<String> {
    let mut all = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        all.extend(text.lines().map(str::to_string));
    }
    all
}

/// A multiset: how often each value occurs (duplicates must show, unlike in a set).
fn counted(items: impl IntoIterator<Item = String>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for i in items {
        *m.entry(i).or_insert(0) += 1;
    }
    m
}

/// Blacklist decisions without their wall-clock time.
fn decisions<'a>(lines: impl IntoIterator<Item = &'a String>) -> BTreeMap<String, usize> {
    counted(lines.into_iter().map(|l| {
        let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
        v.as_object_mut().unwrap().remove("wall_time");
        v.to_string()
    }))
}

/// Processed records without field 7 (highFrqIPGroup): it depends on when a decision lands
/// relative to the line, which differs between runs.
fn processed<'a>(lines: impl IntoIterator<Item = &'a String>) -> BTreeMap<String, usize> {
    counted(lines.into_iter().map(|l| {
        let mut f: Vec<&str> = l.trim_end().split("#CS#").collect();
        assert!(f.len() > 7, "not a processed record: {l}");
        f[7] = "";
        f.join("#CS#")
    }))
}

/// Dead letters without the line number (a file line number in a replay, a partition offset
/// from Kafka).
fn dead_letters<'a>(lines: impl IntoIterator<Item = &'a String>) -> BTreeMap<String, usize> {
    counted(lines.into_iter().map(|l| {
        let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
        v.as_object_mut().unwrap().remove("line_no");
        v.to_string()
    }))
}

/// What `a` holds more often than `b`: how many in all, and a few of them.
fn surplus<'a>(
    a: &'a BTreeMap<String, usize>,
    b: &BTreeMap<String, usize>,
) -> (usize, Vec<(&'a String, usize)>) {
    let d: Vec<(&String, usize)> = a
        .iter()
        .filter_map(|(k, n)| {
            let m = b.get(k).copied().unwrap_or(0);
            (*n > m).then_some((k, n - m))
        })
        .collect();
    (
        d.iter().map(|(_, n)| n).sum(),
        d.into_iter().take(3).collect(),
    )
}

/// `got` equals `want` as multisets; otherwise says how many are extra (or repeated) and
/// missing, with a few of each, instead of printing thousands of records.
fn assert_same(got: &BTreeMap<String, usize>, want: &BTreeMap<String, usize>, what: &str) {
    if got == want {
        return;
    }
    let (extra, extra_eg) = surplus(got, want);
    let (missing, missing_eg) = surplus(want, got);
    panic!(
        "{what}: {} records, the replay {}; {extra} extra or repeated, e.g. {extra_eg:?}; \
         {missing} missing, e.g. {missing_eg:?}",
        got.values().sum::<usize>(),
        want.values().sum::<usize>()
    );
}

fn per_process(dir: &Path, stem: &str, ext: &str) -> Vec<PathBuf> {
    (0..2)
        .map(|p| dir.join(format!("{stem}.p{p}.{ext}")))
        .collect()
}

/// What one cluster run wrote.
struct ClusterRun {
    out: PathBuf,
    blacklist_topic: String,
    processed_topic: String,
    /// stderr of process 0 and process 1.
    stderr: [String; 2],
}

/// Runs `antispider run` with the shipped Kafka config as a 2-process cluster with `threads`
/// workers per process, reading the whole topic from a fresh consumer group, until both
/// processes stop at its end.
fn run_cluster(dir: &Path, brokers: &str, threads: usize) -> ClusterRun {
    let ports = [support::free_port(), support::free_port()];
    assert_ne!(ports[0], ports[1]);
    let hostfile = dir.join(format!("hosts-w{threads}"));
    std::fs::write(
        &hostfile,
        format!("127.0.0.1:{}\n127.0.0.1:{}\n", ports[0], ports[1]),
    )
    .unwrap();
    let out = dir.join(format!("cluster-w{threads}"));
    let run = ClusterRun {
        out: out.clone(),
        blacklist_topic: format!("blacklist-w{threads}"),
        processed_topic: format!("processedQuery-w{threads}"),
        stderr: Default::default(),
    };
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows/kafka.toml");
    let spawn = |process: usize| {
        command()
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(["-w", &threads.to_string(), "-n", "2"])
            .args(["-p", &process.to_string()])
            .arg("-h")
            .arg(&hostfile)
            // The shipped production config, pointed at the test's broker and files.
            .env("ANTISPIDER__KAFKA__BROKERS", brokers)
            .env("ANTISPIDER__KAFKA__GROUP_ID", format!("cluster-w{threads}"))
            .env(
                "ANTISPIDER__KAFKA__SOURCE_TOPICS",
                format!(r#"[{{ name = "{TOPIC}", format = "cs" }}]"#),
            )
            .env("ANTISPIDER__KAFKA__STOP_AT_END", "true")
            .env("ANTISPIDER__KAFKA__COMMIT_INTERVAL_MS", "200")
            .env("ANTISPIDER__KAFKA__BLACKLIST_TOPIC", &run.blacklist_topic)
            .env(
                "ANTISPIDER__KAFKA__PROCESSED_QUERY_TOPIC",
                &run.processed_topic,
            )
            .env("ANTISPIDER__KAFKA__PROCESSED_BOOK_TOPIC", "")
            .env("ANTISPIDER__KAFKA__DEADLETTER_TOPIC", "")
            .env("ANTISPIDER__KAFKA__SERVICE_ANOMALIES_TOPIC", "")
            // No Redis or MySQL here (tests/connectors_kafka.rs covers them): rules from files.
            .env("ANTISPIDER__REDIS__ENABLED", "false")
            .env("ANTISPIDER__MYSQL__RULES", "false")
            .env("ANTISPIDER__MYSQL__BLACKLIST", "false")
            .env("ANTISPIDER__RULES__DIR", rules_dir())
            .env("ANTISPIDER__RULES__WATCH", "false")
            .env("ANTISPIDER__OUTPUT__DIR", &out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Process 1 first: the processes connect to each other in any order.
    let second = spawn(1);
    let first = spawn(0);
    let limit = Duration::from_secs(90);
    let deadline = Instant::now() + limit;
    let (ok0, err0) = support::wait_child(first, deadline);
    let (ok1, err1) = support::wait_child(second, deadline);
    assert!(
        ok0 && ok1,
        "cluster -w {threads} failed or did not stop at the end of the topic within {limit:?}\n\
         process 0:\n{err0}\nprocess 1:\n{err1}"
    );
    ClusterRun {
        stderr: [err0, err1],
        ..run
    }
}

/// `lines read N` of a summary.
fn lines_read(stderr: &str) -> usize {
    let re = regex::Regex::new(r"lines read (\d+) ").unwrap();
    let caps = re
        .captures(stderr)
        .unwrap_or_else(|| panic!("no summary in\n{stderr}"));
    caps[1].parse().unwrap()
}

/// Checks from the processes' logs that partition `p` was read by worker `p mod (2 × threads)`,
/// in its process and nowhere else, from offset 0 to its last message.
fn check_partitions(run: &ClusterRun, threads: usize, sizes: &[usize]) {
    let peers = 2 * threads;
    let reads = regex::Regex::new(&format!(
        r"kafka: worker (\d+) reads {TOPIC}/(\d+) from offset (\d+) "
    ))
    .unwrap();
    let stopped = regex::Regex::new(&format!(
        r"kafka: stopped reading {TOPIC}/(\d+) at offset (\d+) "
    ))
    .unwrap();
    // partition → [(process, worker, start offset)], [(process, stop offset)]
    let mut started: BTreeMap<usize, Vec<(usize, usize, usize)>> = BTreeMap::new();
    let mut ended: BTreeMap<usize, Vec<(usize, usize)>> = BTreeMap::new();
    for (process, err) in run.stderr.iter().enumerate() {
        for c in reads.captures_iter(err) {
            started.entry(c[2].parse().unwrap()).or_default().push((
                process,
                c[1].parse().unwrap(),
                c[3].parse().unwrap(),
            ));
        }
        for c in stopped.captures_iter(err) {
            ended
                .entry(c[1].parse().unwrap())
                .or_default()
                .push((process, c[2].parse().unwrap()));
        }
        // Each process read exactly the messages of its own partitions.
        let own: usize = (0..PARTITIONS)
            .filter(|p| (p % peers) / threads == process)
            .map(|p| sizes[p])
            .sum();
        assert_eq!(
            lines_read(err),
            own,
            "-w {threads}: lines read by process {process}\n{err}"
        );
    }
    let logs = || {
        format!(
            "process 0:\n{}\nprocess 1:\n{}",
            run.stderr[0], run.stderr[1]
        )
    };
    assert_eq!(
        started.keys().copied().collect::<Vec<_>>(),
        (0..PARTITIONS).collect::<Vec<_>>(),
        "-w {threads}: every partition is read\n{}",
        logs()
    );
    for p in 0..PARTITIONS {
        let worker = p % peers;
        assert_eq!(
            started[&p],
            vec![(worker / threads, worker, 0)],
            "-w {threads}: partition {p} is read by exactly one worker, {worker}, from offset 0\n{}",
            logs()
        );
        assert_eq!(
            ended.get(&p).cloned().unwrap_or_default(),
            vec![(worker / threads, sizes[p])],
            "-w {threads}: partition {p} is read to its end ({} messages)\n{}",
            sizes[p],
            logs()
        );
    }
}

#[test]
fn two_processes_read_kafka_partitions_once_and_match_replay() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("traffic.cs.log");
    antispider(&[
        "gen",
        "--lines",
        &LINES.to_string(),
        "--minutes",
        "12",
        "-o",
        log.to_str().unwrap(),
    ]);
    // `produce` sends the n-th non-empty line to partition n mod 4 (the malformed lines are
    // not UTF-8, so bytes).
    let bytes = std::fs::read(&log).unwrap();
    let messages = bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    assert_eq!(messages, LINES);
    let sizes: Vec<usize> = (0..PARTITIONS)
        .map(|p| (LINES + PARTITIONS - 1 - p) / PARTITIONS)
        .collect();

    // The single-process reference.
    let one = dir.path().join("one");
    antispider(&[
        "replay",
        log.to_str().unwrap(),
        "--rules",
        rules_dir().to_str().unwrap(),
        "--out",
        one.to_str().unwrap(),
    ]);
    let want_blacklist = lines(&[one.join("blacklist.jsonl")]);
    let want_decisions = decisions(&want_blacklist);
    let want_indicators = counted(lines(&[one.join("indicators.jsonl")]));
    let want_processed = processed(&lines(&[one.join("processed_query.cs")]));
    let want_dead = dead_letters(&lines(&[one.join("deadletter.jsonl")]));
    let adds = want_blacklist
        .iter()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["action"] == "add")
        .count();
    assert!(
        adds >= 5,
        "the generated crawlers are blacklisted: {want_blacklist:?}"
    );
    assert!(want_indicators.len() > 100);
    assert!(!want_dead.is_empty());

    let kafka = Tansu::start();
    let brokers = kafka.brokers();
    let out = command()
        .args(["produce", log.to_str().unwrap(), "--brokers", &brokers])
        .args(["--topic", TOPIC, "--partitions", &PARTITIONS.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "produce failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    for threads in [1, 3] {
        let t = Instant::now();
        let run = run_cluster(dir.path(), &brokers, threads);
        eprintln!(
            "cluster_kafka: -w {threads} x 2 processes ran in {:.1} s; lines read {} + {}",
            t.elapsed().as_secs_f64(),
            lines_read(&run.stderr[0]),
            lines_read(&run.stderr[1])
        );
        let what = |what: &str| format!("{what}, -w {threads} x 2 processes");

        // Blacklist decisions: each in exactly one process's file, and once in the topic.
        let files = lines(&per_process(&run.out, "blacklist", "jsonl"));
        assert_same(
            &decisions(&files),
            &want_decisions,
            &what("blacklist files"),
        );
        let topic = read_topic(&brokers, &run.blacklist_topic);
        assert_same(
            &decisions(&topic),
            &want_decisions,
            &what("blacklist topic"),
        );

        // Indicators at the final tick: each IP's in one process's file.
        let got = counted(lines(&per_process(&run.out, "indicators", "jsonl")));
        assert_same(&got, &want_indicators, &what("indicators"));

        // Every processed line exactly once, in the files and in the topic.
        let got = processed(&lines(&per_process(&run.out, "processed_query", "cs")));
        assert_same(&got, &want_processed, &what("processed_query files"));
        let topic = read_topic(&brokers, &run.processed_topic);
        assert_same(
            &processed(&topic),
            &want_processed,
            &what("processedQuery topic"),
        );

        let got = dead_letters(&lines(&per_process(&run.out, "deadletter", "jsonl")));
        assert_same(&got, &want_dead, &what("dead letters"));
        // A cluster does not write the single-process names.
        assert!(!run.out.join("blacklist.jsonl").exists());

        // Which worker read what, from the processes' logs.
        check_partitions(&run, threads, &sizes);
    }
    eprintln!(
        "cluster_kafka: {} decisions, {} indicator rows, {} processed records, {} dead letters \
         agree; {:.1} s in all",
        want_blacklist.len(),
        want_indicators.len(),
        want_processed.values().sum::<usize>(),
        want_dead.values().sum::<usize>(),
        started.elapsed().as_secs_f64()
    );
}
