//! The HTTP API (SPEC §7), loopback by default: health and the service-anomaly endpoints
//! (SPEC §6), compatible with the original's `cat_resource` / `cat_result` JSON.
//!
//! axum runs on its own thread with a single-threaded tokio runtime; handlers only touch the
//! shared [`AnomalyHub`] (a result store fed by the dataflow's captured results, and inboxes the
//! leader worker drains), so the timely workers never wait for HTTP.
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `GET /health` | | `{"status":"ok","engine_running":…,"completed_ms":…,"results":…}` |
//! | `GET /metrics` | | Prometheus metrics (OpenMetrics text), see [`crate::ops::metrics`] |
//! | `GET /blacklist[?flow_id=F]` | | `{"count","entries":[…]}`: the (flow, IP) pairs on the blacklist now |
//! | `GET /explain/{ip}` | | the IP's indicators and, per flow, each rule's value, hit and the score |
//! | `GET /rules[/{table}]` | | `{"version","source","tables":{…}}` or `{"table","version","rows"}` |
//! | `PUT /rules/{table}` | `[rows]` or `{"rows":[…]}`; `Authorization: Bearer <token>` | `{"table","rows","version"}` |
//! | `GET /link_stats` | | requests and active connections per `server_addr`: the last period and since the start |
//! | `POST /api_v1/nt_app/cat_resource` | `{"appid","response_time","request_count","fail_count"[,"create_time"]}` | `{"id"}` |
//! | `POST /api_v1/nt_spark/cat_result` | `{"appid","start_time","end_time","algorithm_name"}` | per-sample results |
//! | `POST /api_v1/nt_spark/feedback` | `{"id"` or `"appid","time"`, `"anomalous"` or `"label"}` | `{"id","anomalous","retrain"}` |
//! | `POST /api_v1/nt_spark/retrain` | `{["appid"],["algorithm_name"]}` | `{"queued"}` |
//! | `GET /api_v1/nt_spark/models` | | the model versions in force |
//!
//! Errors are HTTP 400 (422 never) with `{"detail": "...", "error": 1}`; a refused rule edit
//! is 401 (no or wrong token), 403 (edits are off: no token configured) or 409 (the rules
//! come from MySQL, or this is not process 0 of a cluster); explain is 404 for an IP held by another process of a cluster and 503
//! while no engine runs.
//!
//! In a cluster every process serves its own share: the blacklist entries decided by its
//! workers, and explain for the IPs they hold.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::anomaly::hub::{FeedbackItem, RetrainRequest};
use crate::anomaly::model::Algorithm;
use crate::anomaly::{AnomalyHub, ServiceSample};
use crate::format::time::format_iso8601;
use crate::ops::{AskError, OpsHub};
use crate::rules::feed::EditError;

/// The `[api]` section of a pipeline config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Serve the API (`antispider replay --api ADDR` turns it on for a replay).
    pub enabled: bool,
    /// Address to listen on; loopback by default.
    pub listen: String,
    /// Environment variable holding the bearer token that rule edits (`PUT /rules/…`) must
    /// send; while it is unset or empty, rule edits are refused.
    pub token_env: String,
}

impl ApiConfig {
    /// The rule-edit token, from the environment variable `token_env`.
    pub fn token(&self) -> Option<String> {
        std::env::var(&self.token_env)
            .ok()
            .filter(|t| !t.trim().is_empty())
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: false,
            listen: "127.0.0.1:8080".into(),
            token_env: "ANTISPIDER_API_TOKEN".into(),
        }
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub anomaly: Arc<AnomalyHub>,
    pub ops: Arc<OpsHub>,
    /// The bearer token rule edits must carry (`None`: rule edits are off).
    pub token: Option<Arc<str>>,
    /// The environment variable the token comes from, for the error that says how to set it.
    pub token_env: String,
    /// UTC offset (minutes) for rendered times.
    pub utc_offset_minutes: i32,
}

/// A running API server.
pub struct ApiHandle {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApiHandle {
    /// Stops the server and waits for its thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ApiHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds `listen` (errors name the address) and serves [`router`] on a new thread.
pub fn start(listen: &str, state: ApiState) -> anyhow::Result<ApiHandle> {
    let listener = std::net::TcpListener::bind(listen)
        .map_err(|e| anyhow::anyhow!("api: cannot listen on {listen}: {e}"))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let app = router(state);
    let thread = std::thread::Builder::new()
        .name("antispider-api".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("api: cannot start the runtime: {e}");
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("api: {e}");
                        return;
                    }
                };
                let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                    let _ = rx.await;
                });
                if let Err(e) = serve.await {
                    tracing::error!("api: {e}");
                }
            });
        })?;
    tracing::info!("api: listening on http://{addr}");
    Ok(ApiHandle {
        addr,
        shutdown: Some(tx),
        thread: Some(thread),
    })
}

/// The routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/api_v1/nt_app/cat_resource", post(cat_resource))
        .route("/api_v1/nt_spark/cat_result", post(cat_result))
        .route("/api_v1/nt_spark/feedback", post(feedback))
        .route("/api_v1/nt_spark/retrain", post(retrain))
        .route("/api_v1/nt_spark/models", get(models))
        .route("/metrics", get(metrics))
        .route("/blacklist", get(blacklist))
        .route("/explain/{ip}", get(explain))
        .route("/rules", get(rules))
        .route("/rules/{table}", get(rule_table).put(edit_rule_table))
        .route("/link_stats", get(link_stats))
        .with_state(state)
}

/// A 400 with the original's error shape (but a real error status).
struct ApiError(String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        Refused(StatusCode::BAD_REQUEST, self.0).into_response()
    }
}

fn parse_body(body: &Bytes) -> Result<serde_json::Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Default::default());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError("the body must be a JSON object".into())),
        Err(e) => Err(ApiError(format!("the body is not valid JSON: {e}"))),
    }
}

/// An integer given as a JSON number or a string of digits.
fn int_field(m: &serde_json::Map<String, Value>, name: &str) -> Result<Option<i64>, ApiError> {
    match m.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| ApiError(format!("`{name}` must be an integer"))),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| ApiError(format!("`{name}` must be an integer, not `{s}`"))),
        Some(_) => Err(ApiError(format!("`{name}` must be an integer"))),
    }
}

fn appid_field(m: &serde_json::Map<String, Value>) -> Result<Option<String>, ApiError> {
    match m.get("appid") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
        Some(_) => Err(ApiError("`appid` must be an integer or a string".into())),
    }
}

fn algorithm_field(m: &serde_json::Map<String, Value>) -> Result<Option<Algorithm>, ApiError> {
    match m.get("algorithm_name") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Algorithm::parse(s).map(Some).ok_or_else(|| {
            ApiError(format!(
                "algorithm_name `{s}` does not exist: use \"kmeans\" or \"random_forest\""
            ))
        }),
        Some(_) => Err(ApiError(
            "algorithm_name must be \"kmeans\" or \"random_forest\"".into(),
        )),
    }
}

async fn health(State(s): State<ApiState>) -> Json<Value> {
    let results = s.anomaly.store.read().map(|st| st.len()).unwrap_or(0);
    let completed = s
        .anomaly
        .completed_ms
        .load(std::sync::atomic::Ordering::Relaxed);
    Json(json!({
        "status": "ok",
        "engine_running": s.ops.running(),
        "completed_ms": completed,
        "results": results,
    }))
}

async fn cat_resource(State(s): State<ApiState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let m = parse_body(&body)?;
    let missing: Vec<&str> = ["appid", "response_time", "request_count", "fail_count"]
        .into_iter()
        .filter(|k| m.get(*k).is_none_or(Value::is_null))
        .collect();
    if !missing.is_empty() {
        return Err(ApiError(format!(
            "missing required parameter(s): {}",
            missing.join(", ")
        )));
    }
    let mut sample: ServiceSample = serde_json::from_value(Value::Object(m.clone()))
        .map_err(|e| ApiError(format!("bad sample: {e}")))?;
    if m.get("create_time").is_none() && m.get("time_ms").is_none() {
        sample.time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
    }
    let sample = sample.normalize().map_err(ApiError)?;
    let id = sample.id.clone();
    let time_ms = sample.time_ms;
    s.anomaly.post_sample(sample);
    Ok(Json(json!({"id": id, "time_ms": time_ms})))
}

async fn cat_result(State(s): State<ApiState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let m = parse_body(&body)?;
    let appid = appid_field(&m)?;
    let start = int_field(&m, "start_time")?;
    let end = int_field(&m, "end_time")?;
    let algorithm = algorithm_field(&m)?;
    let mut missing = Vec::new();
    for (name, present) in [
        ("appid", appid.is_some()),
        ("start_time", start.is_some()),
        ("end_time", end.is_some()),
        ("algorithm_name", algorithm.is_some()),
    ] {
        if !present {
            missing.push(name);
        }
    }
    let (Some(appid), Some(start), Some(end), Some(algorithm)) = (appid, start, end, algorithm)
    else {
        return Err(ApiError(format!(
            "missing required parameter(s): {}",
            missing.join(", ")
        )));
    };
    if start > end {
        return Err(ApiError(format!(
            "start_time ({start}) is after end_time ({end})"
        )));
    }
    let rows = s.anomaly.query(&appid, algorithm, start, end);
    let result_data: Vec<Value> = rows
        .iter()
        .map(|r| match algorithm {
            Algorithm::KMeans => json!(r.result.cluster),
            Algorithm::RandomForest => json!(r.result.anomaly as u8),
        })
        .collect();
    let anomalies = rows.iter().filter(|r| r.result.anomaly).count();
    let model = s
        .anomaly
        .models
        .read()
        .ok()
        .and_then(|m| m.get(&(appid.clone(), algorithm)).cloned());
    let results: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert(
                    "time".into(),
                    format_iso8601(r.result.time_ms, s.utc_offset_minutes).into(),
                );
            }
            v
        })
        .collect();
    Ok(Json(json!({
        "appid": appid,
        "algorithm_name": algorithm.name(),
        "start_time": start,
        "end_time": end,
        "count": rows.len(),
        "anomalies": anomalies,
        "model": model,
        "result_data": result_data,
        "results": results,
    })))
}

async fn feedback(State(s): State<ApiState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let m = parse_body(&body)?;
    let item: FeedbackItem = serde_json::from_value(Value::Object(m))
        .map_err(|e| ApiError(format!("bad feedback: {e}")))?;
    let (id, anomalous) = item.resolve().map_err(ApiError)?;
    if !id.contains(':') {
        return Err(ApiError(format!(
            "sample id `{id}` is not of the form appid:minute-ms"
        )));
    }
    s.anomaly.post_feedback(id.clone(), anomalous);
    Ok(Json(
        json!({"id": id, "anomalous": anomalous, "retrain": "random_forest"}),
    ))
}

async fn retrain(State(s): State<ApiState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let m = parse_body(&body)?;
    let r = RetrainRequest {
        appid: appid_field(&m)?,
        algorithm: algorithm_field(&m)?,
    };
    s.anomaly.request_retrain(r.clone());
    Ok(Json(json!({"queued": r})))
}

async fn models(State(s): State<ApiState>) -> Json<Value> {
    let list: Vec<Value> = s
        .anomaly
        .models
        .read()
        .map(|m| m.values().map(|v| json!(v)).collect())
        .unwrap_or_default();
    Json(json!({ "models": list }))
}

/// An error answer with its status and the original's error shape (every error of the API,
/// [`ApiError`] included, goes out through this).
struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let mut r = (self.0, Json(json!({"detail": self.1, "error": 1}))).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

async fn metrics(State(s): State<ApiState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.ops.metrics.render(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct BlacklistQuery {
    flow_id: Option<String>,
}

async fn blacklist(State(s): State<ApiState>, Query(q): Query<BlacklistQuery>) -> Json<Value> {
    let entries = s.ops.blacklist(q.flow_id.as_deref());
    Json(json!({"count": entries.len(), "entries": entries}))
}

/// How long explain waits for the worker (it answers between two steps of its loop).
const EXPLAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

async fn explain(
    State(s): State<ApiState>,
    Path(ip): Path<String>,
) -> Result<Json<Value>, Refused> {
    let addr: std::net::IpAddr = ip.trim().parse().map_err(|_| {
        Refused(
            StatusCode::BAD_REQUEST,
            format!("`{ip}` is not an IPv4 or IPv6 address"),
        )
    })?;
    let answer = match s.ops.ask_explain(addr) {
        Ok(answer) => answer,
        Err(AskError::NotRunning) => {
            return Err(Refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "no engine is running in this process (the run has ended)".into(),
            ))
        }
        Err(AskError::Elsewhere { process, worker }) => {
            return Err(Refused(
                StatusCode::NOT_FOUND,
                format!(
                "{addr} is held by worker {worker} of process {process}: ask that process's API"
            ),
            ))
        }
    };
    match tokio::time::timeout(EXPLAIN_WAIT, answer).await {
        Ok(Ok(v)) => Ok(Json(v)),
        Ok(Err(_)) => Err(Refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "the engine stopped before answering".into(),
        )),
        Err(_) => Err(Refused(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the worker did not answer within {} s (busy catching up?)",
                EXPLAIN_WAIT.as_secs()
            ),
        )),
    }
}

fn rule_feed(s: &ApiState) -> Result<Arc<crate::rules::feed::RuleFeed>, Refused> {
    s.ops.rules().ok_or_else(|| {
        Refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "no engine is running in this process (the run has ended)".into(),
        )
    })
}

async fn rules(State(s): State<ApiState>) -> Result<Json<Value>, Refused> {
    let feed = rule_feed(&s)?;
    let (version, tables) = feed.current();
    let mut all = serde_json::Map::new();
    for name in crate::rules::edit::table_names() {
        let file = crate::rules::edit::file_of(name).unwrap_or_default();
        all.insert(
            name.to_string(),
            crate::rules::edit::table_json(&tables, file).unwrap_or_default(),
        );
    }
    Ok(Json(
        json!({"version": version, "source": feed.name, "tables": all}),
    ))
}

fn table_file(table: &str) -> Result<&'static str, Refused> {
    crate::rules::edit::file_of(table).ok_or_else(|| {
        Refused(
            StatusCode::NOT_FOUND,
            crate::rules::edit::unknown_table(table),
        )
    })
}

async fn rule_table(
    State(s): State<ApiState>,
    Path(table): Path<String>,
) -> Result<Json<Value>, Refused> {
    let file = table_file(&table)?;
    let (version, tables) = rule_feed(&s)?.current();
    let rows = crate::rules::edit::table_json(&tables, file).unwrap_or_default();
    Ok(Json(
        json!({"table": table, "version": version, "rows": rows}),
    ))
}

/// Whether the request carries the rule-edit token (compared in constant time).
fn authorize(s: &ApiState, headers: &HeaderMap) -> Result<(), Refused> {
    let Some(token) = s.token.as_deref() else {
        return Err(Refused(
            StatusCode::FORBIDDEN,
            format!(
                "rule edits are off: set a token in the environment variable {} (the [api] \
                 token_env key names it) and send it as `Authorization: Bearer <token>`",
                s.token_env
            ),
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .trim();
    let same = given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(Refused(
            StatusCode::UNAUTHORIZED,
            "rule edits need `Authorization: Bearer <token>` with the configured token".into(),
        ))
    }
}

async fn edit_rule_table(
    State(s): State<ApiState>,
    Path(table): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, Refused> {
    authorize(&s, &headers)?;
    table_file(&table)?;
    let rows: Value = serde_json::from_slice(&body).map_err(|e| {
        Refused(
            StatusCode::BAD_REQUEST,
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    let feed = rule_feed(&s)?;
    if let Some((process, processes)) = s.ops.place().filter(|(p, _)| *p != 0) {
        return Err(Refused(
            StatusCode::CONFLICT,
            format!(
                "this is process {process} of {processes}: the rule tables enter the dataflow \
                 from process 0, so edit them through process 0's API (and keep rules/ the same \
                 on every machine)"
            ),
        ));
    }
    match feed.replace_table(&table, rows) {
        Ok((version, rows)) => {
            tracing::info!("api: rule table {table} replaced ({rows} rows), version {version}");
            Ok(Json(
                json!({"table": table, "rows": rows, "version": version}),
            ))
        }
        Err(e) => {
            let status = match e {
                EditError::Invalid(_) => StatusCode::BAD_REQUEST,
                EditError::NotHere(_) => StatusCode::CONFLICT,
                EditError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            Err(Refused(status, e.to_string()))
        }
    }
}

async fn link_stats(State(s): State<ApiState>) -> Json<Value> {
    Json(s.ops.links().unwrap_or_else(
        || json!({"detail": "no period has ended yet (see [redis] monitor_interval_secs)"}),
    ))
}
