//! Connected mode against real servers on 127.0.0.1: a Kafka-protocol broker (Tansu),
//! redis-server and mariadbd. Generated traffic goes into a topic, `antispider run` reads it;
//! its blacklist topic, Redis keys and `nh_ip_blacklist` rows must agree with each other and
//! with a `replay` of the same file, also across a SIGKILL and restart, a rule change made in
//! MySQL, and a Redis outage.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::tansu::read_topic;
use support::tansu::Tansu;
use support::{MariaDb, RedisServer};

const BIN: &str = env!("CARGO_BIN_EXE_antispider");

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")
}

fn antispider(args: &[&str]) -> std::process::Output {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "antispider {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Generated traffic: 12 minutes of event time.
fn generate(dir: &Path, lines: u64) -> PathBuf {
    let log = dir.join("traffic.cs.log");
    antispider(&[
        "gen",
        "--lines",
        &lines.to_string(),
        "--minutes",
        "12",
        "-o",
        log.to_str().unwrap(),
    ]);
    log
}

/// (ip, flow id, event time) of every `add` in JSON decision lines.
fn adds<'a>(lines: impl IntoIterator<Item = &'a str>) -> BTreeSet<(String, String, String)> {
    lines
        .into_iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["action"] == "add")
        .map(|v| {
            (
                v["ip"].as_str().unwrap().to_string(),
                v["flow_id"].as_str().unwrap().to_string(),
                v["event_time"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn replay_adds(dir: &Path, log: &Path) -> BTreeSet<(String, String, String)> {
    let out = dir.join("replay");
    antispider(&[
        "replay",
        log.to_str().unwrap(),
        "--rules",
        rules_dir().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    adds(
        std::fs::read_to_string(out.join("blacklist.jsonl"))
            .unwrap()
            .lines(),
    )
}

fn write_config(dir: &Path, group: &str) -> PathBuf {
    let p = dir.join("kafka-test.toml");
    std::fs::write(
        &p,
        format!(
            r#"
[source]
kind = "kafka"
[rules]
dir = "{rules}"
watch = false
[output]
dir = "{out}"
[kafka]
group_id = "{group}"
source_topics = [{{ name = "logs", format = "cs" }}]
commit_interval_ms = 200
blacklist_topic = "blacklist"
processed_query_topic = "processedQuery"
deadletter_topic = "deadletter"
"#,
            rules = rules_dir().display(),
            out = dir.join("engine-out").display(),
        ),
    )
    .unwrap();
    p
}

/// The environment that points the engine at the test's Redis and MySQL.
fn servers_env(c: &mut Command, redis: &RedisServer, db: &MariaDb, dir: &Path) {
    c.env("ANTISPIDER__REDIS__ENABLED", "true")
        .env("ANTISPIDER__REDIS__URL", redis.url())
        .env("ANTISPIDER__REDIS__RESTORE_CHECK_SECS", "1")
        .env("ANTISPIDER__REDIS__MONITOR_INTERVAL_SECS", "1")
        .env(
            "ANTISPIDER__REDIS__BACKUP_PATH",
            dir.join("redis_backup.jsonl").to_str().unwrap(),
        )
        .env("ANTISPIDER__MYSQL__URL", db.url())
        .env("ANTISPIDER__MYSQL__RULES", "true")
        .env("ANTISPIDER__MYSQL__BLACKLIST", "true")
        .env("ANTISPIDER__MYSQL__POLL_INTERVAL_MS", "200")
        .env("ANTISPIDER_MYSQL_PASSWORD", MariaDb::PASSWORD);
}

/// Every key of the Redis blacklist: key → (value, TTL in seconds).
fn redis_blacklist(redis: &RedisServer) -> std::collections::BTreeMap<String, (String, i64)> {
    let mut conn = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("CSANTI_ANTI_BLACK*")
        .query(&mut conn)
        .unwrap();
    keys.into_iter()
        .map(|k| {
            let v: String = redis::cmd("GET").arg(&k).query(&mut conn).unwrap();
            let ttl: i64 = redis::cmd("TTL").arg(&k).query(&mut conn).unwrap();
            (k, (v, ttl))
        })
        .collect()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn engine(config: &Path, brokers: &str, stop_at_end: bool) -> Command {
    let mut c = Command::new(BIN);
    c.args(["run", "--config", config.to_str().unwrap(), "-w", "2"])
        .env("ANTISPIDER__KAFKA__BROKERS", brokers)
        .env("ANTISPIDER__KAFKA__STOP_AT_END", stop_at_end.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn produce(log: &Path, brokers: &str, rate: u64) -> std::process::Child {
    produce_into(log, brokers, rate, 2)
}

fn produce_into(log: &Path, brokers: &str, rate: u64, partitions: u32) -> std::process::Child {
    Command::new(BIN)
        .args(["produce", log.to_str().unwrap(), "--brokers", brokers])
        .args(["--topic", "logs", "--partitions", &partitions.to_string()])
        .args(["--rate", &rate.to_string()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn kafka_in_blacklist_topic_redis_and_mysql_out_agree_with_replay() {
    let dir = tempfile::tempdir().unwrap();
    let log = generate(dir.path(), 30_000);
    let expected = replay_adds(dir.path(), &log);
    assert!(
        expected.len() >= 5,
        "the generated crawlers are blacklisted: {expected:?}"
    );

    let kafka = Tansu::start();
    let redis = RedisServer::start();
    let db = MariaDb::start();
    // 4 partitions over 2 workers: each worker reads two, one possibly far ahead of the other.
    let p = produce_into(&log, &kafka.brokers(), 0, 4)
        .wait_with_output()
        .unwrap();
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    let seeded = db.sql_in("antispider", "SELECT ip_name FROM nh_ip_blacklist");

    // The shipped production config, pointed at the test's servers from the environment.
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows/kafka.toml");
    let shipped = |c: &mut Command| {
        servers_env(c, &redis, &db, dir.path());
        c.current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("ANTISPIDER__KAFKA__GROUP_ID", "e2e")
            .env(
                "ANTISPIDER__KAFKA__SOURCE_TOPICS",
                r#"[{ name = "logs", format = "cs" }]"#,
            )
            .env("ANTISPIDER__KAFKA__COMMIT_INTERVAL_MS", "200")
            .env(
                "ANTISPIDER__OUTPUT__DIR",
                dir.path().join("engine-out").to_str().unwrap(),
            )
            .env("ANTISPIDER__ENGINE__BATCH_LINES", "8192")
            .env("ANTISPIDER__MYSQL__RULES", "true");
    };
    let mut run = engine(&config, &kafka.brokers(), true);
    shipped(&mut run);
    let out = run.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "engine failed:\n{stderr}");
    assert!(
        stderr.contains("rules reloaded") || !stderr.contains("gave no rule tables"),
        "{stderr}"
    );

    // The blacklist topic and file equal the replay.
    let topic = read_topic(&kafka.brokers(), "blacklist");
    assert_eq!(adds(topic.iter().map(String::as_str)), expected, "{stderr}");
    let file = std::fs::read_to_string(dir.path().join("engine-out/blacklist.jsonl")).unwrap();
    assert_eq!(adds(file.lines()), expected);
    let processed = read_topic(&kafka.brokers(), "processedQuery");
    let replayed = std::fs::read_to_string(dir.path().join("replay/processed_query.cs")).unwrap();
    assert_eq!(processed.len(), replayed.lines().count());

    // Redis: one key per blacklisted (IP, flow), value score|strategy|rule ids|time, TTL ~1 h.
    let keys = redis_blacklist(&redis);
    let want_keys: BTreeSet<String> = expected
        .iter()
        .map(|(ip, flow, _)| format!("CSANTI_ANTI_BLACK{ip}:{flow}"))
        .collect();
    assert_eq!(keys.keys().cloned().collect::<BTreeSet<_>>(), want_keys);
    let time = regex::Regex::new(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$").unwrap();
    for (k, (v, ttl)) in &keys {
        let f: Vec<&str> = v.split('|').collect();
        assert_eq!(f.len(), 4, "{k} = {v}");
        assert!(
            f[0].parse::<f64>().unwrap() > 20.0,
            "score above the threshold: {v}"
        );
        assert_eq!(f[1], "flow-anticrawler-1", "{v}");
        assert!(
            !f[2].is_empty() && f[2].split(',').all(|id| !id.is_empty()),
            "{v}"
        );
        assert!(time.is_match(f[3]), "{v}");
        assert!((3500..=3600).contains(ttl), "{k} TTL {ttl}");
    }
    // The value's score is the newest decision's for that key in the topic.
    for line in &topic {
        let d: serde_json::Value = serde_json::from_str(line).unwrap();
        let key = format!(
            "CSANTI_ANTI_BLACK{}:{}",
            d["ip"].as_str().unwrap(),
            d["flow_id"].as_str().unwrap()
        );
        assert!(keys.contains_key(&key), "{key} missing");
    }

    // The admin UI's monitoring records (SPEC §3.1, §7).
    let mut conn = redis.conn();
    let dp: String = redis::cmd("GET")
        .arg("CSANTI_MONITOR_DP_LAST")
        .query(&mut conn)
        .unwrap();
    let dp: serde_json::Value = serde_json::from_str(&dp).unwrap();
    for field in [
        "endTime",
        "applicationUniqueName",
        "applicationId",
        "sourceCount",
        "costTime",
        "countPerMillis",
        "serversCountMap",
    ] {
        assert!(dp.get(field).is_some(), "{field} missing in {dp}");
    }
    let _: String = redis::cmd("GET")
        .arg("CSANTI_MONITOR_QUERY_LAST")
        .query(&mut conn)
        .unwrap();
    let lp: Vec<String> = redis::cmd("KEYS")
        .arg("CSANTI_MONITOR_LP*")
        .query(&mut conn)
        .unwrap();
    assert!(!lp.is_empty(), "no link statistics");
    // Periods with traffic count requests per server_addr (an idle period has empty maps).
    let records: Vec<serde_json::Value> = lp
        .iter()
        .map(|k| {
            let v: String = redis::cmd("GET").arg(k).query(&mut conn).unwrap();
            serde_json::from_str(&v).unwrap()
        })
        .collect();
    let busy: u64 = records
        .iter()
        .flat_map(|v| v["serversCountMap"].as_object().unwrap().values())
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert!(busy > 0, "{records:?}");
    assert!(records.iter().all(|v| v["activeNumMap"].is_object()));
    let ttl: i64 = redis::cmd("TTL").arg(&lp[0]).query(&mut conn).unwrap();
    assert!(ttl > 80_000, "monitor TTL {ttl}");

    // MySQL: every blacklisted IP inserted once, next to the seeded rows.
    let rows = db.sql_in("antispider", "SELECT ip_name FROM nh_ip_blacklist");
    let seeded: BTreeSet<&str> = seeded.lines().collect();
    let inserted: Vec<&str> = rows.lines().filter(|r| !seeded.contains(r)).collect();
    let want_ips: BTreeSet<&str> = expected.iter().map(|(ip, _, _)| ip.as_str()).collect();
    assert_eq!(inserted.iter().copied().collect::<BTreeSet<_>>(), want_ips);
    assert_eq!(
        inserted.len(),
        want_ips.len(),
        "inserted once: {inserted:?}"
    );

    // A second run of the same group has nothing new: it rebuilds the window from the
    // committed replay position and writes no decision again.
    let mut again = engine(&config, &kafka.brokers(), true);
    shipped(&mut again);
    let again = again.output().unwrap();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(stderr.contains("window rebuilt"), "{stderr}");
    assert_eq!(
        read_topic(&kafka.brokers(), "blacklist").len(),
        topic.len(),
        "{stderr}"
    );
}

#[test]
fn rule_change_in_mysql_applies_live_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let log = generate(dir.path(), 30_000);
    let kafka = Tansu::start();
    let redis = RedisServer::start();
    let db = MariaDb::start();
    let p = produce(&log, &kafka.brokers(), 0)
        .wait_with_output()
        .unwrap();
    assert!(p.status.success());

    let config = write_config(dir.path(), "rules");
    let mut run = engine(&config, &kafka.brokers(), false);
    servers_env(&mut run, &redis, &db, dir.path());
    let mut child = run.spawn().unwrap();
    let count_adds = || {
        adds(
            read_topic(&kafka.brokers(), "blacklist")
                .iter()
                .map(String::as_str),
        )
        .len()
    };
    // Everything read: the adds stop changing.
    let mut last = usize::MAX;
    wait_for(
        "the first decisions to settle",
        Duration::from_secs(60),
        || {
            let n = count_adds();
            let settled = n == last && n > 0;
            last = n;
            std::thread::sleep(Duration::from_secs(1));
            settled
        },
    );
    // The admin UI lowers the flow's threshold and raises the flag: IPs still in the live
    // window cross it at once, with no restart.
    db.sql_in(
        "antispider",
        "UPDATE nh_strategy SET crawler_blacklist_thresholds = 1 WHERE id = 'flow-anticrawler-1'",
    );
    let mut conn = redis.conn();
    let _: () = redis::cmd("SET")
        .arg("ProcessChangeFlag")
        .arg("true")
        .query(&mut conn)
        .unwrap();
    wait_for(
        "the lowered threshold to add IPs",
        Duration::from_secs(30),
        || count_adds() > last,
    );
    let flag: String = redis::cmd("GET")
        .arg("ProcessChangeFlag")
        .query(&mut conn)
        .unwrap();
    assert_eq!(flag, "false", "the flag is reset after the re-read");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn redis_outage_under_load_loses_no_key_and_flushall_is_restored() {
    let dir = tempfile::tempdir().unwrap();
    let log = generate(dir.path(), 40_000);
    let expected = replay_adds(dir.path(), &log);
    let kafka = Tansu::start();
    let mut redis = RedisServer::start();
    let db = MariaDb::start();
    let config = write_config(dir.path(), "outage");

    // ~10 s of input; Redis is down from about 1 s to 11 s.
    let producer = produce(&log, &kafka.brokers(), 4_000);
    let mut run = engine(&config, &kafka.brokers(), false);
    servers_env(&mut run, &redis, &db, dir.path());
    let mut child = run.spawn().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    redis.stop();
    std::thread::sleep(Duration::from_secs(10));
    redis.start_again(); // empty: everything written before the outage is gone too
    assert!(producer.wait_with_output().unwrap().status.success());

    let want: BTreeSet<String> = expected
        .iter()
        .map(|(ip, flow, _)| format!("CSANTI_ANTI_BLACK{ip}:{flow}"))
        .collect();
    let keys_now = || {
        redis_blacklist(&redis)
            .keys()
            .cloned()
            .collect::<BTreeSet<_>>()
    };
    wait_for(
        "every blacklist key after the outage",
        Duration::from_secs(60),
        || keys_now() == want,
    );
    let mut conn = redis.conn();
    let _: () = redis::cmd("FLUSHALL").query(&mut conn).unwrap();
    wait_for(
        "the restore from the backup after FLUSHALL",
        Duration::from_secs(30),
        || keys_now() == want,
    );
    for (k, (_, ttl)) in redis_blacklist(&redis) {
        assert!((3000..=3600).contains(&ttl), "{k} restored with TTL {ttl}");
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn sigkill_mid_stream_then_restart_loses_and_adds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = generate(dir.path(), 40_000);
    let expected = replay_adds(dir.path(), &log);
    let kafka = Tansu::start();
    let config = write_config(dir.path(), "crash");

    // Lines arrive over ~5 s; the engine is killed after ~2.5 s.
    let producer = produce(&log, &kafka.brokers(), 8_000);
    let mut first = engine(&config, &kafka.brokers(), false).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    first.kill().unwrap(); // SIGKILL: no chance to flush or commit
    let first = first.wait_with_output().unwrap();
    let before = read_topic(&kafka.brokers(), "blacklist");
    let p = producer.wait_with_output().unwrap();
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));

    let second = engine(&config, &kafka.brokers(), true).output().unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "restart failed:\n{stderr}");
    let all = read_topic(&kafka.brokers(), "blacklist");
    assert_eq!(
        adds(all.iter().map(String::as_str)),
        expected,
        "first run wrote {} decisions before SIGKILL\nfirst:\n{}\nsecond:\n{stderr}",
        before.len(),
        String::from_utf8_lossy(&first.stderr)
    );
    // At-least-once for the per-line outputs too: nothing processed is missing.
    let processed = read_topic(&kafka.brokers(), "processedQuery");
    let replayed = std::fs::read_to_string(dir.path().join("replay/processed_query.cs")).unwrap();
    // Field 7 (highFrqIPGroup) depends on when a decision lands relative to the line, which a
    // live run and a replay order differently; every other field must match.
    let without_tag = |l: &str| {
        let mut f: Vec<&str> = l.trim_end().split("#CS#").collect();
        f[7] = "";
        f.join("#CS#")
    };
    let want: BTreeSet<String> = replayed.lines().map(without_tag).collect();
    let got: BTreeSet<String> = processed.iter().map(|l| without_tag(l)).collect();
    let missing: Vec<_> = want.difference(&got).take(3).collect();
    assert!(
        missing.is_empty(),
        "processed lines lost across the restart, e.g. {missing:?}"
    );
    assert!(processed.len() >= replayed.lines().count());
}
