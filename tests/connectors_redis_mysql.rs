//! The Redis and MySQL connectors against real servers (started by `support`): blacklist keys
//! and their TTL refresh, the change-flag protocol, outages with buffering and restore from the
//! backup, the MySQL schema and seed, the rule feed and the insert-once blacklist.

mod support;

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use antispider::config::{MysqlConfig, RedisConfig};
use antispider::rules::mysql::{load_tables, mysql_opts, MysqlRuleFeed};
use antispider::rules::RuleTables;
use antispider::sink::backup::{Backup, BackupRecord};
use antispider::sink::mysql::{CatResultRow, MysqlBlacklistSink};
use antispider::sink::redis::{
    blacklist_key, blacklist_value, LinkStats, MonitorRecord, RedisChangeFlags, RedisSink,
    CHANGE_FLAGS,
};
use redis::Commands;
use support::{MariaDb, RedisServer};

const PASSWORD_ENV: &str = "ANTISPIDER_TEST_MYSQL_PASSWORD";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn redis_cfg(server: &RedisServer, dir: &Path) -> RedisConfig {
    RedisConfig {
        enabled: true,
        url: server.url(),
        backup_path: dir.join("redis_backup.jsonl"),
        restore_check_secs: 1,
        ..Default::default()
    }
}

fn mysql_cfg(db: &MariaDb) -> MysqlConfig {
    std::env::set_var(PASSWORD_ENV, MariaDb::PASSWORD);
    MysqlConfig {
        url: db.url(),
        password_env: PASSWORD_ENV.into(),
        rules: true,
        blacklist: true,
        poll_interval_ms: 100,
        ..Default::default()
    }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

fn ip(i: u32) -> IpAddr {
    IpAddr::V4(std::net::Ipv4Addr::from(0x0A00_0000 + i))
}

fn sorted(mut t: RuleTables) -> RuleTables {
    t.filter.sort();
    t.classify.sort();
    t.analyze.sort();
    t.critical_pages.sort();
    t.ip_blacklist.sort();
    t.process_info.sort();
    t.strategy.sort();
    t.rule.sort();
    t.maintenance.sort();
    t.service_app.sort_by_key(|r| r.id);
    t.service_normal.sort_by_key(|r| r.id);
    t
}

fn rule_files() -> RuleTables {
    sorted(RuleTables::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")).unwrap())
}

/// The servers' ports come from below the kernel's ephemeral range (where no outgoing
/// connection can take them before the server binds) and no two are alike in one run.
#[test]
fn test_server_ports_are_outside_the_ephemeral_range_and_distinct() {
    let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .map(|s| s.split_whitespace().next().unwrap().parse().unwrap())
        .unwrap_or(32768);
    let ports: Vec<u16> = (0..200).map(|_| support::free_port()).collect();
    for p in &ports {
        assert!((10000..ephemeral_low).contains(p), "port {p}");
    }
    let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
    assert_eq!(distinct.len(), ports.len());
}

#[test]
fn blacklist_key_ttl_refresh_clear_and_monitor_records() {
    let server = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = RedisConfig {
        refresh_secs: 1,
        ..redis_cfg(&server, tmp.path())
    };
    let sink = RedisSink::start(&cfg).unwrap();
    let mut con = server.conn();
    let t0 = now_ms();
    let value = blacklist_value(16.875, "flow-1", &["r1", "r2"], t0, 480);
    let a: IpAddr = "192.168.56.1".parse().unwrap();
    sink.blacklist_set(a, "flow-1", value.clone());
    assert!(
        sink.wait_idle(Duration::from_secs(10)),
        "{:?}",
        sink.stats()
    );
    let key = "CSANTI_ANTI_BLACK192.168.56.1:flow-1";
    assert_eq!(blacklist_key(a, "flow-1"), key);
    let got: String = con.get(key).unwrap();
    assert_eq!(got, value);
    assert!(got.starts_with("16.875|flow-1|r1,r2|"), "{got}");
    let ttl: i64 = con.ttl(key).unwrap();
    assert!((3598..=3600).contains(&ttl), "ttl {ttl}");

    // Refreshed (every second here) while blacklisted: after 3 s the TTL is back near 3600.
    std::thread::sleep(Duration::from_millis(3200));
    let pttl: i64 = con.pttl(key).unwrap();
    assert!(pttl > 3_598_500, "not refreshed: pttl {pttl}");

    // Cleared: no more refreshes, the key runs down and expires by itself.
    sink.blacklist_clear(a, "flow-1");
    assert!(sink.wait_idle(Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(300));
    let p1: i64 = con.pttl(key).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let p2: i64 = con.pttl(key).unwrap();
    assert!(p1 - p2 >= 2000, "still refreshed after clear: {p1} -> {p2}");

    // Monitor records.
    let mut ls = LinkStats::default();
    ls.servers_count_map.insert("192.168.8.103".into(), 12);
    ls.active_num_map.insert("192.168.8.103".into(), 3);
    sink.publish_link_stats(1_700_000_000_000, &ls);
    let rec = MonitorRecord {
        end_time_ms: 1_700_000_001_000,
        utc_offset_minutes: 480,
        application_unique_name: "antispider_dataprocess".into(),
        application_id: "local".into(),
        source_count: 100,
        cost_time_ms: 50,
        servers_count_map: ls.servers_count_map.clone(),
    };
    sink.publish_dataprocess(&rec);
    sink.publish_rulecompute(&MonitorRecord {
        application_unique_name: "antispider_rulecompute".into(),
        servers_count_map: Default::default(),
        ..rec.clone()
    });
    assert!(sink.wait_idle(Duration::from_secs(10)));
    let lp: String = con.get("CSANTI_MONITOR_LP1700000000000").unwrap();
    assert_eq!(
        lp,
        r#"{"serversCountMap":{"192.168.8.103":12},"activeNumMap":{"192.168.8.103":3}}"#
    );
    let ttl: i64 = con.ttl("CSANTI_MONITOR_LP1700000000000").unwrap();
    assert!((86_390..=86_400).contains(&ttl), "monitor ttl {ttl}");
    for k in [
        "CSANTI_MONITOR_DP1700000001000",
        "CSANTI_MONITOR_DP_LAST",
        "CSANTI_MONITOR_QUERY1700000001000",
        "CSANTI_MONITOR_QUERY_LAST",
    ] {
        let v: String = con.get(k).unwrap();
        let j: serde_json::Value = serde_json::from_str(&v).unwrap();
        assert_eq!(j["sourceCount"], "100", "{k}: {v}");
        assert_eq!(j["countPerMillis"], "2", "{k}: {v}");
        assert_eq!(j["endTime"], "2023-11-15 06:13:21", "{k}: {v}");
        let ttl: i64 = con.ttl(k).unwrap();
        assert!(ttl > 86_000, "{k} ttl {ttl}");
    }
    let q: String = con.get("CSANTI_MONITOR_QUERY_LAST").unwrap();
    assert!(q.contains(r#""serversCountMap":{}"#), "{q}");
    let s = sink.stats();
    assert_eq!((s.pending, s.dropped), (0, 0), "{s:?}");
    assert!(s.written >= 8 && s.connected, "{s:?}");

    // delete_on_remove: the key goes at once.
    drop(sink);
    let sink = RedisSink::start(&RedisConfig {
        delete_on_remove: true,
        ..cfg.clone()
    })
    .unwrap();
    let b: IpAddr = "2001:db8::7".parse().unwrap();
    sink.blacklist_set(b, "flow-1", "1.0|flow-1|r1|2026-01-01 00:00:00".into());
    assert!(sink.wait_idle(Duration::from_secs(10)));
    assert!(con.exists::<_, bool>(blacklist_key(b, "flow-1")).unwrap());
    sink.blacklist_clear(b, "flow-1");
    assert!(sink.wait_idle(Duration::from_secs(10)));
    assert!(!con.exists::<_, bool>(blacklist_key(b, "flow-1")).unwrap());
}

#[test]
fn change_flags_are_taken_and_reset_atomically() {
    let server = RedisServer::start();
    let cfg = RedisConfig {
        url: server.url(),
        ..Default::default()
    };
    let mut flags = RedisChangeFlags::new(&cfg).unwrap();
    let mut con = server.conn();
    // Nothing set (keys absent): nothing taken, nothing created.
    assert!(!flags.take().unwrap().any());
    assert!(!con.exists::<_, bool>("FilterChangeFlag").unwrap());

    let _: () = con.set("FilterChangeFlag", "true").unwrap();
    let _: () = con.set("ProcessChangeFlag", " TRUE ").unwrap();
    let _: () = con.set("ClassifyRuleChangeFlag", "false").unwrap();
    let f = flags.take().unwrap();
    assert!(f.filter && f.process, "{f:?}");
    assert!(!f.classify && !f.analyze && !f.ip_black && !f.query_critical_pages);
    assert_eq!(f.names(), vec!["FilterChangeFlag", "ProcessChangeFlag"]);
    for k in [
        "FilterChangeFlag",
        "ProcessChangeFlag",
        "ClassifyRuleChangeFlag",
    ] {
        let v: String = con.get(k).unwrap();
        assert_eq!(v, "false", "{k}");
    }
    assert!(!flags.take().unwrap().any());

    // The sink's own take_change_flags is the same protocol.
    let tmp = tempfile::tempdir().unwrap();
    let sink = RedisSink::start(&redis_cfg(&server, tmp.path())).unwrap();
    let _: () = con.set("QueryCriticalPagesChangeFlag", "true").unwrap();
    let f = sink.take_change_flags().unwrap();
    assert!(f.query_critical_pages && !f.filter, "{f:?}");

    // A setter racing with a taker: every set is reported by some take (none is lost between
    // a read and a reset).
    let taken: Arc<Vec<AtomicU64>> = Arc::new((0..6).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let taker = {
        let (taken, stop, cfg) = (taken.clone(), stop.clone(), cfg.clone());
        std::thread::spawn(move || {
            let mut flags = RedisChangeFlags::new(&cfg).unwrap();
            while !stop.load(Ordering::SeqCst) {
                let f = flags.take().unwrap();
                let a = [
                    f.filter,
                    f.classify,
                    f.analyze,
                    f.ip_black,
                    f.query_critical_pages,
                    f.process,
                ];
                for (i, set) in a.iter().enumerate() {
                    if *set {
                        taken[i].fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        })
    };
    for round in 0..300 {
        let i = round % 6;
        let before = taken[i].load(Ordering::SeqCst);
        let _: () = con.set(CHANGE_FLAGS[i], "true").unwrap();
        wait_for(
            &format!("round {round}: {} to be taken", CHANGE_FLAGS[i]),
            Duration::from_secs(5),
            || taken[i].load(Ordering::SeqCst) > before,
        );
    }
    stop.store(true, Ordering::SeqCst);
    taker.join().unwrap();
    let total: u64 = taken.iter().map(|c| c.load(Ordering::SeqCst)).sum();
    assert_eq!(total, 300);
}

#[test]
fn outage_writes_are_buffered_and_flushall_is_restored_from_the_backup() {
    let mut server = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = redis_cfg(&server, tmp.path());
    let sink = RedisSink::start(&cfg).unwrap();
    sink.blacklist_set(ip(0), "flow-1", "first".into());
    assert!(sink.wait_idle(Duration::from_secs(10)));
    assert!(sink.stats().connected);

    server.stop();
    for i in 1..=100 {
        sink.blacklist_set(ip(i), "flow-1", format!("v{i}"));
    }
    sink.publish_link_stats(42, &LinkStats::default());
    // Nothing blocks; the writes wait in the buffer.
    std::thread::sleep(Duration::from_millis(500));
    let s = sink.stats();
    assert!(s.pending >= 100, "{s:?}");
    assert!(!s.connected, "{s:?}");

    server.start_again();
    let mut con = server.conn();
    wait_for(
        "the buffered keys after the outage",
        Duration::from_secs(20),
        || {
            (0..=100).all(|i| {
                con.exists::<_, bool>(blacklist_key(ip(i), "flow-1"))
                    .unwrap()
            })
        },
    );
    let v: String = con.get(blacklist_key(ip(7), "flow-1")).unwrap();
    assert_eq!(v, "v7");
    assert!(con.exists::<_, bool>("CSANTI_MONITOR_LP42").unwrap());
    // ip(0) was written before the outage and lost with the restart: restored from the backup.
    let s = sink.stats();
    assert!(s.reconnects >= 1, "{s:?}");
    assert!(s.restored >= 1, "{s:?}");

    // FLUSHALL: the marker key is gone, so the sink restores every unexpired key.
    let restored_before = sink.stats().restored;
    let _: () = redis::cmd("FLUSHALL").query(&mut con).unwrap();
    wait_for(
        "the keys restored after FLUSHALL",
        Duration::from_secs(20),
        || {
            (0..=100).all(|i| {
                con.exists::<_, bool>(blacklist_key(ip(i), "flow-1"))
                    .unwrap()
            })
        },
    );
    for i in [0, 50, 100] {
        let ttl: i64 = con.ttl(blacklist_key(ip(i), "flow-1")).unwrap();
        assert!((3500..=3600).contains(&ttl), "ttl {ttl}");
    }
    let v: String = con.get(blacklist_key(ip(50), "flow-1")).unwrap();
    assert_eq!(v, "v50");
    assert!(
        sink.stats().restored >= restored_before + 101,
        "{:?}",
        sink.stats()
    );
}

#[test]
fn startup_restore_skips_expired_backup_records_and_full_buffer_drops_monitors_first() {
    let mut server = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = RedisConfig {
        buffer_limit: 10,
        ..redis_cfg(&server, tmp.path())
    };
    let now = now_ms();
    {
        let mut b = Backup::open(&cfg.backup_path).unwrap();
        let rec = |k: &str, v: Option<&str>, at: i64| BackupRecord {
            key: k.into(),
            value: v.map(String::from),
            expire_at: at,
        };
        b.append(rec(
            "CSANTI_ANTI_BLACK10.9.9.1:f",
            Some("live"),
            now + 100_000,
        ))
        .unwrap();
        b.append(rec("CSANTI_ANTI_BLACK10.9.9.2:f", Some("old"), now - 1_000))
            .unwrap();
        b.append(rec("CSANTI_ANTI_BLACK10.9.9.3:f", Some("x"), now + 100_000))
            .unwrap();
        b.append(rec("CSANTI_ANTI_BLACK10.9.9.3:f", None, 0))
            .unwrap();
        b.sync().unwrap();
    }
    let mut con = server.conn();
    let _: () = con
        .set_ex("CSANTI_ANTI_BLACK10.9.9.4:f", "newer", 500)
        .unwrap();
    {
        let mut b = Backup::open(&cfg.backup_path).unwrap();
        b.append(BackupRecord {
            key: "CSANTI_ANTI_BLACK10.9.9.4:f".into(),
            value: Some("older".into()),
            expire_at: now + 100_000,
        })
        .unwrap();
        b.sync().unwrap();
    }
    let sink = RedisSink::start(&cfg).unwrap();
    wait_for("the startup restore", Duration::from_secs(10), || {
        sink.stats().restored >= 1
    });
    assert!(sink.wait_idle(Duration::from_secs(10)));
    let v: String = con.get("CSANTI_ANTI_BLACK10.9.9.1:f").unwrap();
    assert_eq!(v, "live");
    let ttl: i64 = con.ttl("CSANTI_ANTI_BLACK10.9.9.1:f").unwrap();
    assert!((95..=100).contains(&ttl), "remaining ttl kept: {ttl}");
    assert!(!con
        .exists::<_, bool>("CSANTI_ANTI_BLACK10.9.9.2:f")
        .unwrap());
    assert!(!con
        .exists::<_, bool>("CSANTI_ANTI_BLACK10.9.9.3:f")
        .unwrap());
    // A key Redis still has is left alone (NX).
    let v: String = con.get("CSANTI_ANTI_BLACK10.9.9.4:f").unwrap();
    assert_eq!(v, "newer");
    assert_eq!(sink.stats().restored, 1);

    // Outage with a buffer of 10: 20 monitor records then 5 blacklist keys; the monitor
    // records are dropped first and every blacklist key arrives.
    server.stop();
    for i in 0..20 {
        sink.publish_link_stats(i, &LinkStats::default());
    }
    for i in 0..5 {
        sink.blacklist_set(ip(200 + i), "f", format!("b{i}"));
    }
    std::thread::sleep(Duration::from_millis(300));
    let s = sink.stats();
    assert!(s.dropped >= 15, "{s:?}");
    assert!(s.pending <= 10, "{s:?}");
    server.start_again();
    let mut con = server.conn();
    wait_for(
        "the blacklist keys after the outage",
        Duration::from_secs(20),
        || {
            (0..5).all(|i| {
                con.exists::<_, bool>(blacklist_key(ip(200 + i), "f"))
                    .unwrap()
            })
        },
    );
    assert!(!con.exists::<_, bool>("CSANTI_MONITOR_LP0").unwrap());
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn mysql_schema_seed_load_tables_and_insert_once() {
    let db = MariaDb::start();
    let cfg = mysql_cfg(&db);
    let tables = block_on(async {
        let pool = mysql_async::Pool::new(mysql_opts(&cfg).unwrap());
        let t = load_tables(&pool).await;
        pool.disconnect().await.unwrap();
        t
    })
    .unwrap();
    assert_eq!(sorted(tables), rule_files());

    // Insert-once, also across sink instances and for IPs of the seed.
    let sink = MysqlBlacklistSink::start(&cfg).unwrap();
    let x: IpAddr = "203.0.113.9".parse().unwrap();
    sink.insert_ip(x);
    sink.insert_ip(x);
    sink.insert_ip("192.0.2.66".parse().unwrap());
    sink.insert_cat_results(vec![
        CatResultRow {
            appid: "app-1".into(),
            sample_time_ms: 1_700_000_040_000,
            cluster: Some(2),
            distance: Some(3.5),
            score: Some(1.7),
            anomaly: true,
            algorithm: "kmeans".into(),
            model_version: "v1".into(),
        },
        CatResultRow {
            appid: "app-1".into(),
            sample_time_ms: 1_700_000_040_000,
            cluster: None,
            distance: None,
            score: Some(0.2),
            anomaly: false,
            algorithm: "random_forest".into(),
            model_version: "v1".into(),
        },
    ]);
    assert!(
        sink.wait_idle(Duration::from_secs(20)),
        "{:?}",
        sink.stats()
    );
    drop(sink);
    let sink = MysqlBlacklistSink::start(&cfg).unwrap();
    sink.insert_ip(x);
    assert!(
        sink.wait_idle(Duration::from_secs(20)),
        "{:?}",
        sink.stats()
    );
    let s = sink.stats();
    assert!(s.connected && s.dropped == 0, "{s:?}");
    let count = |ip: &str| {
        db.sql_in(
            "antispider",
            &format!("SELECT COUNT(*) FROM nh_ip_blacklist WHERE ip_name = '{ip}'"),
        )
        .trim()
        .to_string()
    };
    assert_eq!(count("203.0.113.9"), "1");
    assert_eq!(count("192.0.2.66"), "1");
    let rows = db.sql_in(
        "antispider",
        "SELECT appid, sample_time_ms, IFNULL(cluster, 'NULL'), is_anomaly, algorithm FROM cat_result_data ORDER BY algorithm",
    );
    assert_eq!(
        rows,
        "app-1\t1700000040000\t2\t1\tkmeans\napp-1\t1700000040000\tNULL\t0\trandom_forest\n"
    );

    // A bad row is reported with its table and id.
    db.sql_in(
        "antispider",
        "INSERT INTO nh_filter_rule (id, value) VALUES (99, '(unclosed')",
    );
    let e = block_on(async {
        let pool = mysql_async::Pool::new(mysql_opts(&cfg).unwrap());
        let t = load_tables(&pool).await;
        pool.disconnect().await.unwrap();
        t
    })
    .unwrap_err();
    let e = format!("{e:#}");
    assert!(e.contains("MySQL table nh_filter_rule: row id = 99"), "{e}");
}

fn poll_until(
    feed: &mut MysqlRuleFeed,
    what: &str,
    timeout: Duration,
    mut accept: impl FnMut(&anyhow::Result<RuleTables>) -> bool,
) -> anyhow::Result<RuleTables> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(r) = feed.poll() {
            if accept(&r) {
                return r;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

fn arg0_of(t: &RuleTables, id: &str) -> f64 {
    t.rule.iter().find(|r| r.id == id).unwrap().arg0.0
}

#[test]
fn mysql_rule_feed_follows_change_flags_and_survives_mysql_outage() {
    let redis = RedisServer::start();
    let mut db = MariaDb::start();
    let cfg = mysql_cfg(&db);
    let redis_cfg = RedisConfig {
        url: redis.url(),
        ..Default::default()
    };
    let flags = RedisChangeFlags::new(&redis_cfg).unwrap();
    let mut feed = MysqlRuleFeed::start(&cfg, Box::new(flags)).unwrap();
    let first = poll_until(
        &mut feed,
        "the initial tables",
        Duration::from_secs(15),
        |r| r.is_ok(),
    )
    .unwrap();
    assert_eq!(sorted(first), rule_files());

    // An edit without a flag is not picked up; with the flag it is, and the flag is reset.
    db.sql_in(
        "antispider",
        "UPDATE nh_rule SET arg0 = 999 WHERE id = 'r0-ip'",
    );
    std::thread::sleep(Duration::from_millis(700));
    assert!(feed.poll().is_none());
    let mut con = redis.conn();
    let _: () = con.set("ProcessChangeFlag", "true").unwrap();
    let t = poll_until(
        &mut feed,
        "the edited nh_rule row",
        Duration::from_secs(5),
        |r| r.is_ok(),
    )
    .unwrap();
    assert_eq!(arg0_of(&t, "r0-ip"), 999.0);
    let flag: String = con.get("ProcessChangeFlag").unwrap();
    assert_eq!(flag, "false");

    // MySQL down: the flag is taken, the read fails (reported once, no panic), the last tables
    // stay in force, and once MySQL is back the edit made before the outage arrives.
    db.sql_in(
        "antispider",
        "UPDATE nh_rule SET arg0 = 777 WHERE id = 'r0-ip'",
    );
    db.stop();
    let _: () = con.set("ProcessChangeFlag", "true").unwrap();
    wait_for("the flag to be taken", Duration::from_secs(5), || {
        con.get::<_, String>("ProcessChangeFlag").unwrap() == "false"
    });
    let e = poll_until(
        &mut feed,
        "the MySQL error",
        Duration::from_secs(20),
        |_| true,
    );
    assert!(e.is_err(), "expected an error while MySQL is down");
    std::thread::sleep(Duration::from_millis(500));
    db.start_again();
    let t = poll_until(
        &mut feed,
        "the tables after the outage",
        Duration::from_secs(20),
        |r| r.is_ok(),
    )
    .unwrap();
    assert_eq!(arg0_of(&t, "r0-ip"), 777.0);
    drop(feed);
}

#[test]
fn redis_and_mysql_config_sections_parse() {
    let cfg: antispider::config::Config = toml::from_str(
        "[redis]\nenabled = true\nurl = 'redis://10.0.0.5:6380/2'\nrefresh_secs = 60\n\
         [mysql]\nrules = true\npoll_interval_ms = 500\n",
    )
    .unwrap();
    assert!(cfg.redis.enabled && cfg.mysql.rules && !cfg.mysql.blacklist);
    assert_eq!(cfg.redis.blacklist_ttl_secs, 3600);
    assert_eq!(cfg.redis.monitor_ttl_secs, 86_400);
    assert_eq!(cfg.mysql.poll_interval_ms, 500);
    assert!(toml::from_str::<antispider::config::Config>("[redis]\nttl = 1\n").is_err());
    // The password comes from the environment, never from the file.
    std::env::set_var("ANTISPIDER_TEST_PW_MERGE", "s3cret");
    let opts = mysql_opts(&MysqlConfig {
        url: "mysql://u@127.0.0.1:3306/antispider".into(),
        password_env: "ANTISPIDER_TEST_PW_MERGE".into(),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(opts.pass(), Some("s3cret"));
    assert_eq!(opts.user(), Some("u"));
}
