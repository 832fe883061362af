//! The HTTP API over a live engine (issue 4): the engine runs live on generated service
//! samples (no log), the API on a free loopback port; `cat_result` answers with both
//! algorithms, ids and times; posted samples (`cat_resource`) are scored; bad requests are
//! clear 400s; feedback and retraining are accepted.

use std::sync::Arc;

use antispider::anomaly::gen::{generate, ServiceGenOptions};
use antispider::anomaly::AnomalyHub;
use antispider::api::ApiState;
use antispider::config::Config;
use serde_json::{json, Value};

mod support;
use support::http::{call, wait_until, LiveEngine};

#[test]
fn cat_result_answers_with_ids_and_times() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ServiceGenOptions {
        days: 2,
        ..Default::default()
    };
    let traffic = generate(&opts);
    let samples = dir.path().join("service.jsonl");
    traffic.write_files(&samples).unwrap();
    let last = traffic.samples.iter().map(|s| s.time_ms).max().unwrap();

    let mut cfg = Config::default();
    cfg.source.path = Default::default(); // no log: service samples only
    cfg.rules.dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    cfg.rules.watch = false;
    cfg.output.dir = dir.path().join("out");
    cfg.anomaly.samples_file = Some(samples);
    let hub = Arc::new(AnomalyHub::default());
    let live = LiveEngine::start(
        cfg,
        ApiState {
            anomaly: hub.clone(),
            ops: Default::default(),
            token: None,
            token_env: "ANTISPIDER_API_TOKEN".into(),
            utc_offset_minutes: 480,
        },
    );
    let addr = live.addr;

    let (status, health) = call(addr, "GET", "/health", "");
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "ok");
    // Wait until the last generated minute is scored.
    let query = |alg: &str, start: i64, end: i64| {
        call(
            addr,
            "POST",
            "/api_v1/nt_spark/cat_result",
            &json!({"appid": 1001, "start_time": start, "end_time": end, "algorithm_name": alg})
                .to_string(),
        )
    };
    wait_until("the last sample's results", || {
        query("random_forest", last, last).1["count"] == 1
            && query("kmeans", last, last).1["count"] == 1
    });

    let (start, end) = (
        opts.start_ms + 86_400_000,
        opts.start_ms + 86_400_000 + 3_599_999,
    );
    for alg in ["kmeans", "random_forest"] {
        let (status, v) = query(alg, start, end);
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["algorithm_name"], alg);
        assert_eq!(v["appid"], "1001");
        let results = v["results"].as_array().unwrap();
        assert_eq!(results.len(), 60, "one result per minute of the hour");
        assert_eq!(v["count"], 60);
        assert_eq!(v["result_data"].as_array().unwrap().len(), 60);
        let mut prev = i64::MIN;
        for r in results {
            let t = r["time_ms"].as_i64().unwrap();
            assert!(t >= start && t <= end && t > prev, "{r}");
            prev = t;
            assert_eq!(r["id"], format!("1001:{t}"));
            assert_eq!(r["algorithm"], alg);
            assert!(r["time"].as_str().unwrap().ends_with("+08:00"), "{r}");
            assert!(r["model_version"].as_u64().unwrap() >= 1);
            assert!(r["request_count"].as_u64().is_some(), "{r}");
            assert!(r["anomaly"].is_boolean());
            if alg == "kmeans" {
                assert!(r["cluster"].as_u64().is_some() && r["distance"].as_f64().is_some());
            } else {
                let p = r["score"].as_f64().unwrap();
                assert!((0.0..=1.0).contains(&p), "{r}");
            }
        }
    }
    // Any app and range: an unknown app or an empty range is an empty answer.
    let (status, v) = call(
        addr,
        "POST",
        "/api_v1/nt_spark/cat_result",
        r#"{"appid": "nope", "start_time": 0, "end_time": 1, "algorithm_name": "kmeans"}"#,
    );
    assert_eq!((status, v["count"].clone()), (200, json!(0)));

    // Clear 400s.
    for (body, needle) in [
        (
            r#"{"appid": 1001, "start_time": 0, "end_time": 1}"#,
            "algorithm_name",
        ),
        (
            r#"{"appid": 1001, "start_time": 0, "end_time": 1, "algorithm_name": "svdd"}"#,
            "svdd",
        ),
        (
            r#"{"appid": 1001, "start_time": 5, "end_time": 1, "algorithm_name": "kmeans"}"#,
            "after",
        ),
        (
            r#"{"appid": 1001, "start_time": "x", "end_time": 1, "algorithm_name": "kmeans"}"#,
            "start_time",
        ),
        ("not json", "JSON"),
    ] {
        let (status, v) = call(addr, "POST", "/api_v1/nt_spark/cat_result", body);
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"], 1);
        assert!(
            v["detail"].as_str().unwrap().contains(needle),
            "{body}: {v}"
        );
    }
    let (status, v) = call(
        addr,
        "POST",
        "/api_v1/nt_app/cat_resource",
        r#"{"appid": 1001, "response_time": 0.1, "request_count": 1, "fail_count": 2}"#,
    );
    assert_eq!(status, 400, "{v}");
    let (status, _) = call(
        addr,
        "POST",
        "/api_v1/nt_app/cat_resource",
        r#"{"appid": 1001, "response_time": 0.1}"#,
    );
    assert_eq!(status, 400);

    // A posted sample (a latency spike, the minute after the generated traffic) is scored.
    let t = last + 60_000;
    let (status, v) = call(
        addr,
        "POST",
        "/api_v1/nt_app/cat_resource",
        &json!({"appid": 1001, "response_time": 3.0, "request_count": 1500, "fail_count": 2,
                "create_time": t})
        .to_string(),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["id"], format!("1001:{t}"));
    wait_until("the posted sample's result", || {
        query("kmeans", t, t).1["count"] == 1
    });
    let (_, v) = query("kmeans", t, t);
    assert_eq!(v["results"][0]["anomaly"], true, "{v}");
    assert_eq!(v["results"][0]["response_time"], 3.0);

    // Feedback retrains the forest on demand; retraining can also be asked for directly.
    let before = call(addr, "GET", "/api_v1/nt_spark/models", "").1;
    let rf_version = |m: &Value| {
        m["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["appid"] == "1001" && m["algorithm"] == "random_forest")
            .map(|m| m["version"].as_u64().unwrap())
    };
    let v0 = rf_version(&before).expect("a forest for app 1001");
    let (status, v) = call(
        addr,
        "POST",
        "/api_v1/nt_spark/feedback",
        &json!({"id": format!("1001:{t}"), "label": "normal"}).to_string(),
    );
    assert_eq!(status, 200, "{v}");
    wait_until("the forest retrained on feedback", || {
        rf_version(&call(addr, "GET", "/api_v1/nt_spark/models", "").1) > Some(v0)
    });
    let (status, v) = call(
        addr,
        "POST",
        "/api_v1/nt_spark/retrain",
        r#"{"appid": 1002, "algorithm_name": "kmeans"}"#,
    );
    assert_eq!(status, 200, "{v}");
    let (status, _) = call(
        addr,
        "POST",
        "/api_v1/nt_spark/feedback",
        r#"{"id": "1001:0"}"#,
    );
    assert_eq!(status, 400);

    let (server, summary) = live.stop();
    assert_eq!(summary.counters.lines_read, 0);
    // The store outlives the engine: the API still answers.
    let (status, v) = query("kmeans", start, end);
    assert_eq!((status, v["count"].clone()), (200, json!(60)));
    server.shutdown();
    assert!(dir.path().join("out/service_anomalies.jsonl").is_file());
}
