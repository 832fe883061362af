//! Service anomalies against real servers on 127.0.0.1 (issue 4): a Kafka-protocol broker
//! (Tansu) and mariadbd, each on a port of its own.
//!
//! - `antispider replay` of generated service traffic with `dataflows/service.toml` and the
//!   `service_anomalies` topic, the `cat_result_data` table and the `cat_feedback` reader
//!   switched on by `ANTISPIDER__…` environment overrides: the topic and the table must hold
//!   exactly the results of `service_anomalies.jsonl`, and the operator feedback read from
//!   MySQL must reach the forest (it finds episodes the normal rule cannot label, which a run
//!   without that feedback misses); unusable feedback rows are dead-lettered.
//! - The `cat_feedback` reader on its own: rows already in the table, rows inserted later,
//!   an id that commits late, a superseded verdict, bad rows, and a MySQL restart.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use antispider::anomaly::feedback::{MysqlFeedbackReader, FEEDBACK_DEADLETTER_FILE};
use antispider::anomaly::gen::{generate, EpisodeKind, ServiceGenOptions, ServiceTraffic};
use antispider::anomaly::{is_normal, AnomalyHub, NormalRule};
use antispider::config::MysqlConfig;
use antispider::dataprocess::{MaskMode, Masker};

use support::tansu::read_topic_keyed as read_topic;
use support::tansu::Tansu;
use support::MariaDb;

const BIN: &str = env!("CARGO_BIN_EXE_antispider");
const DAY: i64 = 86_400_000;
const TOPIC: &str = "service_anomalies";

fn write_traffic(dir: &Path) -> (ServiceTraffic, PathBuf) {
    let traffic = generate(&ServiceGenOptions {
        seed: 5,
        apps: 2,
        days: 2,
        ..Default::default()
    });
    let path = dir.join("service.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    traffic.write_samples_jsonl(&mut f).unwrap();
    std::io::Write::flush(&mut f).unwrap();
    (traffic, path)
}

/// `antispider replay --config dataflows/service.toml --service-samples SAMPLES --out OUT`
/// with `env`; returns stderr.
fn replay(samples: &Path, out: &Path, env: &[(&str, String)]) -> String {
    let mut c = Command::new(BIN);
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_LOG", "antispider=warn")
        .args(["replay", "--config", "dataflows/service.toml"])
        .arg("--service-samples")
        .arg(samples)
        .arg("--out")
        .arg(out);
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "replay failed:\n{err}");
    err
}

fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `(appid, algorithm) -> (anomalous minutes, scored minutes)` from the replay's summary.
fn summary_counts(stderr: &str) -> BTreeMap<(String, String), (usize, usize)> {
    stderr
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.first() == Some(&"app") && w.get(4) == Some(&"minutes")).then(|| {
                (
                    (w[1].to_string(), w[2].to_string()),
                    (w[5].parse().unwrap(), w[7].parse().unwrap()),
                )
            })
        })
        .collect()
}

/// Day-1 episodes whose every sample the normal rule calls normal: only feedback can teach a
/// forest what they look like.
fn rule_normal_episodes(traffic: &ServiceTraffic, from: i64) -> Vec<(String, i64, i64)> {
    let rule = NormalRule::default();
    traffic
        .episodes
        .iter()
        .filter(|e| e.start_ms >= from && e.kind != EpisodeKind::ErrorBurst)
        .filter(|e| {
            traffic
                .samples
                .iter()
                .filter(|s| e.contains(s))
                .all(|s| is_normal(s, &rule))
        })
        .map(|e| (e.appid.clone(), e.start_ms, e.end_ms))
        .collect()
}

/// Of `episodes`, those with an out-of-sample forest `add` in `lines`.
fn forest_found(lines: &[serde_json::Value], episodes: &[(String, i64, i64)]) -> usize {
    let flagged: BTreeSet<(String, i64)> = lines
        .iter()
        .filter(|v| v["algorithm"] == "random_forest" && v["action"] == "add")
        .filter(|v| v["model_trained_at"].as_i64().unwrap() <= v["time_ms"].as_i64().unwrap())
        .map(|v| {
            (
                v["appid"].as_str().unwrap().to_string(),
                v["time_ms"].as_i64().unwrap(),
            )
        })
        .collect();
    episodes
        .iter()
        .filter(|(app, from, to)| {
            flagged
                .range((app.clone(), *from)..(app.clone(), *to))
                .next()
                .is_some()
        })
        .count()
}

#[test]
fn service_anomalies_reach_kafka_and_cat_result_data_and_feedback_comes_from_mysql() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = Tansu::start();
    let db = MariaDb::start();
    let (traffic, samples) = write_traffic(dir.path());
    let day1 = traffic.samples[0].time_ms + DAY;

    // Operator verdicts in MySQL before the run: every sample of the day-0 episodes was an
    // anomaly; plus three rows the engine cannot use.
    let mut sql = String::from("INSERT INTO cat_feedback (appid, sample_time_ms, label) VALUES ");
    let mut rows = Vec::new();
    for s in traffic.samples.iter().filter(|s| s.time_ms < day1) {
        if traffic.episode_of(s).is_some() {
            // Any millisecond inside the minute names the sample.
            rows.push(format!(
                "('{}', {}, 'anomalous')",
                s.appid,
                s.time_ms + 1234
            ));
        }
    }
    let good = rows.len();
    assert!(good > 50, "{good}");
    rows.push("('1001', 1767225600000, 'maybe')".into());
    rows.push("('', 1767225600000, 'normal')".into());
    rows.push("('1002', -60000, 'normal')".into());
    sql.push_str(&rows.join(",\n"));
    db.sql_in("antispider", &sql);

    let out = dir.path().join("out");
    let env = vec![
        ("ANTISPIDER__KAFKA__BROKERS", kafka.brokers()),
        (
            "ANTISPIDER__KAFKA__SERVICE_ANOMALIES_TOPIC",
            TOPIC.to_string(),
        ),
        ("ANTISPIDER__KAFKA__OUTPUT_PARTITIONS", "2".to_string()),
        ("ANTISPIDER__MYSQL__URL", db.url()),
        ("ANTISPIDER__MYSQL__BLACKLIST", "true".to_string()),
        ("ANTISPIDER__MYSQL__FEEDBACK", "true".to_string()),
        ("ANTISPIDER__MYSQL__POLL_INTERVAL_MS", "200".to_string()),
        ("ANTISPIDER_MYSQL_PASSWORD", MariaDb::PASSWORD.to_string()),
    ];
    let err = replay(&samples, &out, &env);
    eprintln!("{err}");
    assert!(err.contains("service samples 5760 (bad 0)"), "{err}");
    assert!(
        err.contains(&format!(
            "feedback from MySQL cat_feedback: rows {}  applied {good}  superseded 0  dead-lettered 3",
            good + 3
        )),
        "{err}"
    );

    // service_anomalies.jsonl: the reference.
    let jsonl = json_lines(&out.join("service_anomalies.jsonl"));
    assert!(jsonl.len() > 100, "{}", jsonl.len());
    let algorithms: BTreeSet<&str> = jsonl
        .iter()
        .map(|v| v["algorithm"].as_str().unwrap())
        .collect();
    assert_eq!(algorithms, BTreeSet::from(["kmeans", "random_forest"]));

    // The topic holds exactly the lines of the file (each once), keyed by the app.
    let messages = read_topic(&kafka.brokers(), TOPIC);
    let mut want: BTreeMap<String, usize> = BTreeMap::new();
    for l in std::fs::read_to_string(out.join("service_anomalies.jsonl"))
        .unwrap()
        .lines()
    {
        *want.entry(l.to_string()).or_default() += 1;
    }
    let mut have: BTreeMap<String, usize> = BTreeMap::new();
    for (key, payload) in &messages {
        let v: serde_json::Value = serde_json::from_str(payload).unwrap();
        assert_eq!(v["appid"], key.as_str(), "{payload}");
        assert_eq!(
            v["id"],
            format!("{key}:{}", v["time_ms"].as_i64().unwrap()).as_str()
        );
        *have.entry(payload.clone()).or_default() += 1;
    }
    assert_eq!(messages.len(), jsonl.len());
    assert!(
        have == want,
        "the topic differs from service_anomalies.jsonl"
    );

    // cat_result_data: a row per (sample, algorithm, model version) scored. Its anomalous rows
    // are exactly the adds of the file, with the same cluster, distance and score.
    let table = db.sql_in(
        "antispider",
        "SELECT appid, sample_time_ms, algorithm, model_version, is_anomaly, \
         IFNULL(cluster, 'NULL'), IFNULL(distance, 'NULL'), score FROM cat_result_data",
    );
    type Key = (String, i64, String, u64);
    let mut anomalous: BTreeMap<Key, (String, Option<f64>, f64)> = BTreeMap::new();
    let mut scored: BTreeSet<(String, i64, String)> = BTreeSet::new();
    let mut flagged: BTreeSet<(String, i64, String)> = BTreeSet::new();
    for line in table.lines() {
        let c: Vec<&str> = line.split('\t').collect();
        assert_eq!(c.len(), 8, "{line}");
        let (app, t, alg) = (c[0].to_string(), c[1].parse().unwrap(), c[2].to_string());
        scored.insert((app.clone(), t, alg.clone()));
        if c[4] == "1" {
            flagged.insert((app.clone(), t, alg.clone()));
            anomalous.insert(
                (app, t, alg, c[3].parse().unwrap()),
                (c[5].to_string(), c[6].parse().ok(), c[7].parse().unwrap()),
            );
        }
    }
    let mut adds: BTreeMap<Key, &serde_json::Value> = BTreeMap::new();
    for v in jsonl.iter().filter(|v| v["action"] == "add") {
        let key = (
            v["appid"].as_str().unwrap().to_string(),
            v["time_ms"].as_i64().unwrap(),
            v["algorithm"].as_str().unwrap().to_string(),
            v["model_version"].as_u64().unwrap(),
        );
        adds.insert(key, v);
    }
    assert_eq!(
        anomalous.keys().collect::<Vec<_>>(),
        adds.keys().collect::<Vec<_>>(),
        "anomalous cat_result_data rows differ from the adds of service_anomalies.jsonl"
    );
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(1.0);
    for (key, (cluster, distance, score)) in &anomalous {
        let v = adds[key];
        let want_cluster = v["cluster"]
            .as_u64()
            .map_or("NULL".to_string(), |c| c.to_string());
        assert_eq!(cluster, &want_cluster, "{key:?}");
        assert!(close(*score, v["score"].as_f64().unwrap()), "{key:?}");
        match (distance, v["distance"].as_f64()) {
            (Some(d), Some(w)) => assert!(close(*d, w), "{key:?}"),
            (None, None) => {}
            other => panic!("{key:?}: distance {other:?}"),
        }
        if key.2 == "kmeans" {
            assert!(*score > 1.0, "{key:?}: k-means anomaly score {score}");
        } else {
            assert!(*score > 0.5, "{key:?}: forest P(anomaly) {score}");
        }
    }
    // Every scored minute of every app and algorithm is in the table (normal ones too).
    let counts = summary_counts(&err);
    assert_eq!(counts.len(), 4, "{err}");
    for ((app, alg), (n_flagged, n_scored)) in &counts {
        let rows = |set: &BTreeSet<(String, i64, String)>| {
            set.iter().filter(|(a, _, g)| a == app && g == alg).count()
        };
        assert_eq!(rows(&scored), *n_scored, "{app} {alg}");
        assert_eq!(rows(&flagged), *n_flagged, "{app} {alg}");
    }

    // The unusable feedback rows, with their reasons.
    let dead = json_lines(&out.join(FEEDBACK_DEADLETTER_FILE));
    let reasons: Vec<&str> = dead.iter().map(|d| d["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["bad_label", "missing_appid", "bad_sample_time"]);
    assert!(dead[0]["detail"]
        .as_str()
        .unwrap()
        .contains(&format!("cat_feedback row id = {}", good + 1)));
    assert!(dead[0]["line"].as_str().unwrap().contains("maybe"));

    // The feedback reached the forest: the day-1 episodes the normal rule calls normal are
    // found with it ...
    let episodes = rule_normal_episodes(&traffic, day1);
    assert!(episodes.len() >= 6, "{episodes:?}");
    let with = forest_found(&jsonl, &episodes);
    // ... and missed by the same replay without it (the forest then only knows the rule).
    let control = dir.path().join("control");
    let err = replay(&samples, &control, &[]);
    assert!(!err.contains("feedback from MySQL"), "{err}");
    let without = forest_found(
        &json_lines(&control.join("service_anomalies.jsonl")),
        &episodes,
    );
    eprintln!(
        "rule-normal day-1 episodes found by the forest: {with} of {} with the MySQL feedback, {without} without",
        episodes.len()
    );
    assert!(
        with * 10 >= episodes.len() * 8,
        "{with} of {}",
        episodes.len()
    );
    assert!(without * 4 <= episodes.len(), "{without}");
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn drain(hub: &AnomalyHub) -> Vec<(String, bool)> {
    std::mem::take(&mut *hub.feedback_inbox.lock().unwrap())
}

#[test]
fn cat_feedback_reader_takes_new_late_and_bad_rows_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = MariaDb::start();
    std::env::set_var("ANTISPIDER_MYSQL_PASSWORD", MariaDb::PASSWORD);
    let cfg = MysqlConfig {
        url: db.url(),
        feedback: true,
        poll_interval_ms: 100,
        ..Default::default()
    };
    let ins = |rows: &str| {
        db.sql_in(
            "antispider",
            &format!("INSERT INTO cat_feedback (id, appid, sample_time_ms, label) VALUES {rows}"),
        )
    };
    ins("(1, '1001', 60000, 'anomalous'), (2, '1001', 120001, 'normal'), (3, '1001', 0, 'maybe')");

    let hub = Arc::new(AnomalyHub::default());
    let dead = dir.path().join(FEEDBACK_DEADLETTER_FILE);
    let reader = MysqlFeedbackReader::start(
        &cfg,
        hub.clone(),
        &dead,
        Masker::new(MaskMode::Hmac, b"test"),
    )
    .unwrap();
    assert!(
        reader.wait_loaded(Duration::from_secs(20)),
        "{:?}",
        reader.stats()
    );
    assert_eq!(
        drain(&hub),
        [
            ("1001:60000".to_string(), true),
            ("1001:120000".to_string(), false)
        ]
    );
    let s = reader.stats();
    assert_eq!(
        (s.rows, s.applied, s.dead_lettered, s.last_id),
        (3, 2, 1, 3)
    );

    // New rows are read as they come, bad ones dead-lettered.
    ins("(4, '1002', 180000, 'Anomaly'), (5, '', 0, 'normal'), (6, '1002', -1, 'normal')");
    wait_for("rows 4-6", Duration::from_secs(10), || {
        reader.stats().rows == 6
    });
    assert_eq!(drain(&hub), [("1002:180000".to_string(), true)]);

    // Id 10 commits before ids 7-9: 8 commits later (within the grace period) and is read;
    // 9, for the same sample as 10 but older, is superseded by 10.
    ins("(10, '1003', 600000, 'normal')");
    wait_for("row 10", Duration::from_secs(10), || {
        reader.stats().rows == 7
    });
    ins("(8, '1003', 540000, 'anomalous'), (9, '1003', 600000, 'anomalous')");
    wait_for("rows 8 and 9", Duration::from_secs(10), || {
        reader.stats().rows == 9
    });
    assert_eq!(
        drain(&hub),
        [
            ("1003:600000".to_string(), false),
            ("1003:540000".to_string(), true)
        ]
    );
    let s = reader.stats();
    assert_eq!(
        (s.applied, s.superseded, s.dead_lettered, s.last_id),
        (5, 1, 3, 10)
    );

    // A MySQL restart: the reader resumes after the last id.
    db.stop();
    wait_for("the reader to notice", Duration::from_secs(20), || {
        !reader.stats().connected
    });
    db.start_again();
    db.sql_in(
        "antispider",
        "INSERT INTO cat_feedback (appid, sample_time_ms, label) VALUES ('1001', 660000, 'normal')",
    );
    wait_for("the row after the restart", Duration::from_secs(30), || {
        reader.stats().rows == 10
    });
    assert_eq!(drain(&hub), [("1001:660000".to_string(), false)]);
    assert!(reader.stats().connected);
    drop(reader);

    let lines = json_lines(&dead);
    let got: Vec<(u64, &str)> = lines
        .iter()
        .map(|d| {
            (
                d["line_no"].as_u64().unwrap(),
                d["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (3, "bad_label"),
            (5, "missing_appid"),
            (6, "bad_sample_time")
        ]
    );
    assert!(lines[2]["detail"].as_str().unwrap().contains("-1"));
}
