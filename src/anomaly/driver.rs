//! The driver side of service anomaly detection (SPEC §6), one per timely worker.
//!
//! Every worker maps its own log lines to apps ([`super::wire::ServiceInputs::request`]). The
//! *leader* (worker 0) also:
//! - feeds external samples (a replayed `cat_resource` JSON-lines file, samples posted to the
//!   API) into the dataflow;
//! - applies operator feedback (a replayed feedback file; the API and, with `[mysql] feedback
//!   = true`, the MySQL table `cat_feedback`, both through the hub's feedback inbox) to the
//!   training labels, and retrains the forest of an app that got feedback;
//! - drains the captured samples and results whose time the dataflow has completed: samples
//!   into the training history, results into the [`ResultStore`] of the API and into the
//!   [`ResultSink`]s (`OUT/service_anomalies.jsonl`; Kafka and MySQL plug in here);
//! - trains models outside the dataflow — at the daily schedule points (event time), when an
//!   app without a model has enough samples, and on demand (API) — and installs them in the
//!   `models` input collection, which re-scores the live samples.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;

use super::config::AnomalyConfig;
use super::feedback::{
    FeedbackReaderStats, MysqlFeedbackReader, FEEDBACK_DEADLETTER_FILE, FEEDBACK_TABLE,
};
use super::hub::{AnomalyHub, FeedbackItem, RetrainRequest, StoredResult};
use super::model::{Algorithm, Feedback, ForestModel, KMeansModel, Model};
use super::normal::NormalRule;
use super::sample::{AppRules, ServiceSample, BUCKET_MS};
use super::score::{ModelKey, ScoredRow};
use crate::dataflow::Pipeline;
use crate::format::time::format_iso8601;
use crate::rulecompute::Time;
use crate::rules::RuleTables;

/// File name of the anomaly change log in the output directory.
pub const ANOMALIES_FILE: &str = "service_anomalies.jsonl";
/// How far ahead of the input time the leader feeds a replayed samples file per step.
const FEED_CHUNK_MS: u64 = 30 * 60_000;

/// Whether a result became (or stopped being) part of the current results.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeAction {
    Add,
    Remove,
}

/// A consumer of result changes. Every change is offered (normal and anomalous results, of
/// both algorithms); a sink keeps what it needs. A `Remove` means the sample was re-scored
/// (new model version, or late data changed it), never that it aged out of the live window.
///
/// The Kafka `service_anomalies` topic and the MySQL `cat_result_data` table are sinks too,
/// added with [`AnomalyDriver::add_sink`].
pub trait ResultSink: Send {
    fn change(&mut self, action: ChangeAction, r: &StoredResult) -> anyhow::Result<()>;
    fn flush(&mut self) -> anyhow::Result<()>;
}

/// `OUT/service_anomalies.jsonl`: the change log of the *anomalous* results, one JSON object
/// per line (`action` add/remove, the result, the sample's values, times rendered with the
/// output UTC offset). The anomalies in force are the adds not followed by a remove of the
/// same `(id, algorithm, model_version)`.
pub struct JsonlSink {
    out: std::io::BufWriter<std::fs::File>,
    utc_offset_minutes: i32,
}

impl JsonlSink {
    pub fn create(path: &std::path::Path, utc_offset_minutes: i32) -> anyhow::Result<Self> {
        let f = std::fs::File::create(path)
            .with_context(|| format!("{}: cannot create", path.display()))?;
        Ok(JsonlSink {
            out: std::io::BufWriter::new(f),
            utc_offset_minutes,
        })
    }
}

/// The JSON of one result change (shared by the sinks).
pub fn change_json(action: ChangeAction, r: &StoredResult, utc_offset_minutes: i32) -> String {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.insert(
            "action".into(),
            serde_json::to_value(action).unwrap_or_default(),
        );
        m.insert(
            "time".into(),
            format_iso8601(r.result.time_ms, utc_offset_minutes).into(),
        );
        m.insert(
            "algorithm_name".into(),
            r.result.algorithm.name().to_string().into(),
        );
    }
    v.to_string()
}

impl ResultSink for JsonlSink {
    fn change(&mut self, action: ChangeAction, r: &StoredResult) -> anyhow::Result<()> {
        use std::io::Write;
        if r.result.anomaly {
            writeln!(
                self.out,
                "{}",
                change_json(action, r, self.utc_offset_minutes)
            )?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        use std::io::Write;
        self.out.flush()?;
        Ok(())
    }
}

/// The file sink of the leader: `OUT/service_anomalies.jsonl`. The Kafka topic and the MySQL
/// table are added by the engine with [`AnomalyDriver::add_sink`] (their sinks live with their
/// connectors: `sink/kafka.rs`, `sink/mysql.rs`).
pub fn default_sinks(cfg: &crate::config::Config) -> anyhow::Result<Vec<Box<dyn ResultSink>>> {
    let path = cfg.output.dir.join(ANOMALIES_FILE);
    Ok(vec![Box::new(JsonlSink::create(
        &path,
        cfg.output.utc_offset_minutes,
    )?)])
}

/// How long start-up waits for the first read of `cat_feedback` (then it goes on, and the
/// reader keeps trying in the background).
const FEEDBACK_FIRST_LOAD: std::time::Duration = std::time::Duration::from_secs(15);

/// Starts the `cat_feedback` reader and waits (up to [`FEEDBACK_FIRST_LOAD`]) until the rows
/// already in the table are in the hub, so that the first models are trained with them.
fn start_feedback_reader(
    cfg: &crate::config::Config,
    hub: &Arc<AnomalyHub>,
) -> anyhow::Result<MysqlFeedbackReader> {
    let masker = crate::dataprocess::Masker::new(cfg.masking.mode, &cfg.mask_secret());
    let path = cfg.output.dir.join(FEEDBACK_DEADLETTER_FILE);
    let reader = MysqlFeedbackReader::start(&cfg.mysql, hub.clone(), &path, masker)?;
    if !reader.wait_loaded(FEEDBACK_FIRST_LOAD) {
        tracing::error!(
            "MySQL gave no {FEEDBACK_TABLE} rows within {} s: starting without them; they apply when MySQL answers",
            FEEDBACK_FIRST_LOAD.as_secs()
        );
    }
    Ok(reader)
}

/// Per app and algorithm: what the run found (printed at the end of a replay).
#[derive(Clone, Debug, Default, Serialize)]
pub struct AppSummary {
    pub samples: usize,
    pub anomalous_samples: usize,
    /// The first anomalous minutes (ms), at most 5.
    pub first_anomalies: Vec<i64>,
    pub model_versions: u64,
}

/// What the service-anomaly part did, per `(appid, algorithm)`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ServiceSummary {
    pub samples_in: u64,
    pub bad_samples: u64,
    pub models_trained: u64,
    pub apps: BTreeMap<String, BTreeMap<String, AppSummary>>,
    /// The `cat_feedback` reader, when `[mysql] feedback = true`.
    pub mysql_feedback: Option<FeedbackReaderStats>,
}

impl ServiceSummary {
    /// Human-readable lines: count per app and algorithm, first anomalous minutes.
    pub fn render(&self, utc_offset_minutes: i32) -> String {
        let mut s = format!(
            "service samples {} (bad {})  models trained {}\n",
            self.samples_in, self.bad_samples, self.models_trained
        );
        if let Some(f) = &self.mysql_feedback {
            s.push_str(&format!(
                "feedback from MySQL {FEEDBACK_TABLE}: rows {}  applied {}  superseded {}  dead-lettered {}{}\n",
                f.rows,
                f.applied,
                f.superseded,
                f.dead_lettered,
                if f.loaded { "" } else { "  (never read: MySQL unreachable)" }
            ));
        }
        for (app, algs) in &self.apps {
            for (alg, a) in algs {
                let first: Vec<String> = a
                    .first_anomalies
                    .iter()
                    .map(|t| format_iso8601(*t, utc_offset_minutes))
                    .collect();
                s.push_str(&format!(
                    "  app {app:<8} {alg:<13} anomalous minutes {:>5} of {:>6}  models {}  first: {}\n",
                    a.anomalous_samples,
                    a.samples,
                    a.model_versions,
                    if first.is_empty() { "-".to_string() } else { first.join(" ") }
                ));
            }
        }
        s
    }
}

/// Reads a `cat_resource` JSON-lines file in order.
struct SampleFeeder {
    lines: std::io::Lines<std::io::BufReader<std::fs::File>>,
    path: PathBuf,
    line_no: u64,
    next: Option<ServiceSample>,
    bad: u64,
}

impl SampleFeeder {
    fn open(path: &std::path::Path) -> anyhow::Result<Self> {
        let f = std::fs::File::open(path)
            .with_context(|| format!("{}: cannot open service samples", path.display()))?;
        let mut s = SampleFeeder {
            lines: std::io::BufReader::new(f).lines(),
            path: path.to_path_buf(),
            line_no: 0,
            next: None,
            bad: 0,
        };
        s.advance()?;
        Ok(s)
    }

    fn advance(&mut self) -> anyhow::Result<()> {
        self.next = None;
        for line in self.lines.by_ref() {
            let line = line.with_context(|| format!("{}: read error", self.path.display()))?;
            self.line_no += 1;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<ServiceSample>(&line)
                .map_err(|e| e.to_string())
                .and_then(ServiceSample::normalize)
            {
                Ok(s) => {
                    self.next = Some(s);
                    return Ok(());
                }
                Err(e) => {
                    self.bad += 1;
                    if self.bad <= 5 {
                        tracing::warn!(
                            "{}: line {}: bad service sample skipped: {e}",
                            self.path.display(),
                            self.line_no
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// The close time (ms) of the next sample.
    fn next_close(&self) -> Option<u64> {
        self.next
            .as_ref()
            .map(|s| s.time_ms.max(0) as u64 + BUCKET_MS as u64)
    }
}

/// One worker's service-anomaly driver (see the module docs).
pub struct AnomalyDriver {
    leader: bool,
    live: bool,
    cfg: AnomalyConfig,
    hub: Arc<AnomalyHub>,
    lateness_ms: u64,
    slide_ms: u64,
    normal_rules: Vec<NormalRule>,
    feeder: Option<SampleFeeder>,
    feedback: Feedback,
    /// Replayed feedback not yet known: `(at, id, anomalous)`, by `at` descending.
    future_feedback: Vec<(i64, String, bool)>,
    history: BTreeMap<(String, i64), ServiceSample>,
    in_force: BTreeMap<(String, Algorithm), ModelKey>,
    last_version: BTreeMap<(String, Algorithm), u64>,
    retired: Vec<(ModelKey, Time)>,
    trained_at: BTreeMap<ModelKey, i64>,
    next_retrain: Option<i64>,
    sinks: Vec<Box<dyn ResultSink>>,
    summary: ServiceSummary,
    seen: BTreeSet<(String, Algorithm, i64)>,
    flagged: BTreeSet<(String, Algorithm, i64)>,
    idle: bool,
    /// The leader's `cat_feedback` reader (`[mysql] feedback = true`).
    mysql_feedback: Option<MysqlFeedbackReader>,
}

/// Takes the captured updates of times before `done`.
fn take_done<D>(
    cap: &std::sync::Mutex<Vec<(D, Time, isize)>>,
    done: Time,
) -> Vec<(D, Time, isize)> {
    let mut v = cap.lock().expect("capture");
    let (ready, pending): (Vec<_>, Vec<_>) = v.drain(..).partition(|(_, t, _)| *t < done);
    *v = pending;
    ready
}

fn completed(pipeline: &Pipeline) -> Time {
    pipeline
        .probe
        .with_frontier(|f| f.iter().next().copied().unwrap_or(Time::MAX))
}

impl AnomalyDriver {
    /// Adds a sink of result changes (only the leader has sinks; elsewhere this drops it).
    pub fn add_sink(&mut self, sink: Box<dyn ResultSink>) {
        if self.leader {
            self.sinks.push(sink);
        }
    }

    /// Sets up the worker's service inputs; the leader also opens the replayed inputs and the
    /// sinks.
    pub fn new(
        cfg: &crate::config::Config,
        tables: &RuleTables,
        hub: Arc<AnomalyHub>,
        leader: bool,
        live: bool,
        pipeline: &mut Pipeline,
    ) -> anyhow::Result<Self> {
        let a = cfg.anomaly.clone();
        a.validate().map_err(|e| anyhow::anyhow!(e))?;
        let app_rules = AppRules::new(tables.service_app.clone()).map_err(|e| {
            anyhow::anyhow!(
                "{}: {e}",
                cfg.rules.dir.join(crate::rules::SERVICE_APP).display()
            )
        })?;
        pipeline
            .service
            .configure(app_rules, a.enabled, a.live_ms());
        let mut d = AnomalyDriver {
            leader,
            live,
            hub,
            lateness_ms: cfg.window.allowed_lateness_ms,
            slide_ms: cfg.window.slide_ms.max(1),
            normal_rules: tables.service_normal.clone(),
            feeder: None,
            feedback: Feedback::new(),
            future_feedback: Vec::new(),
            history: BTreeMap::new(),
            in_force: BTreeMap::new(),
            last_version: BTreeMap::new(),
            retired: Vec::new(),
            trained_at: BTreeMap::new(),
            next_retrain: None,
            sinks: Vec::new(),
            summary: ServiceSummary::default(),
            seen: BTreeSet::new(),
            flagged: BTreeSet::new(),
            idle: false,
            mysql_feedback: None,
            cfg: a,
        };
        if leader && d.cfg.enabled {
            if let Some(p) = &d.cfg.samples_file {
                d.feeder = Some(SampleFeeder::open(p)?);
            }
            if let Some(p) = d.cfg.feedback_file.clone() {
                d.load_feedback(&p)?;
            }
            d.sinks = default_sinks(cfg)?;
            if cfg.mysql.feedback {
                d.mysql_feedback = Some(start_feedback_reader(cfg, &d.hub)?);
            }
        }
        Ok(d)
    }

    fn load_feedback(&mut self, path: &std::path::Path) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read feedback", path.display()))?;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let item: FeedbackItem = serde_json::from_str(line)
                .map_err(|e| e.to_string())
                .and_then(|f: FeedbackItem| f.resolve().map(|_| f))
                .map_err(|e| anyhow::anyhow!("{}: line {}: {e}", path.display(), i + 1))?;
            let (id, anomalous) = item.resolve().map_err(|e| anyhow::anyhow!(e))?;
            match item.at {
                Some(at) => self.future_feedback.push((at, id, anomalous)),
                None => {
                    self.feedback.insert(id, anomalous);
                }
            }
        }
        self.future_feedback.sort_by_key(|f| std::cmp::Reverse(f.0));
        Ok(())
    }

    /// A new snapshot of the rule tables (the app rules apply to the following lines, the
    /// normal rules to the following trainings).
    pub fn rules_changed(&mut self, tables: &RuleTables, pipeline: &mut Pipeline) {
        match AppRules::new(tables.service_app.clone()) {
            Ok(r) => pipeline.service.app_rules = r,
            Err(e) => tracing::error!("service app rules not reloaded: {e}"),
        }
        self.normal_rules = tables.service_normal.clone();
    }

    /// Whether the external inputs are exhausted (always, except on the leader while a samples
    /// file remains, or while live).
    pub fn input_done(&self) -> bool {
        !self.leader
            || !self.cfg.enabled
            || (!self.live && self.feeder.as_ref().is_none_or(|f| f.next.is_none()))
    }

    /// Whether the last step had nothing to do (the engine may park).
    pub fn idle(&self) -> bool {
        self.idle
    }

    /// One step, before the engine advances its input: drain completed results, train what is
    /// due, feed external samples. `max_tick` is the engine's newest event time; when the log
    /// is done (or absent) the external samples drive it.
    pub fn step(
        &mut self,
        pipeline: &mut Pipeline,
        max_tick: &mut u64,
        log_done: bool,
    ) -> anyhow::Result<()> {
        if !self.leader || !self.cfg.enabled {
            self.idle = true;
            return Ok(());
        }
        let done = completed(pipeline);
        self.drain(pipeline, done)?;
        self.train_due(pipeline, done)?;
        let fed = self.feed(pipeline, max_tick, log_done)?;
        self.idle = !fed && self.feeder.as_ref().is_none_or(|f| f.next.is_none());
        Ok(())
    }

    /// Drains the captured updates of times before `done` (complete) into the history, the
    /// store and the sinks.
    fn drain(&mut self, pipeline: &Pipeline, done: Time) -> anyhow::Result<()> {
        let live = pipeline.service.live_ms();
        let mut samples = take_done(&pipeline.service.captures.samples, done);
        samples.sort_by_key(|(_, t, d)| (*t, *d));
        let expiry = |minute: u64, t: Time| t >= minute + BUCKET_MS as u64 + live;
        for (((app, minute), (sum, n, f)), t, d) in samples {
            let s = ServiceSample::from_sums(&app, minute, sum, n, f);
            let key = (app, minute as i64);
            if d > 0 {
                self.summary.samples_in += 1;
                self.history.insert(key, s);
            } else if !expiry(minute, t) && self.history.get(&key) == Some(&s) {
                self.history.remove(&key);
            }
        }
        let mut results = take_done(&pipeline.service.captures.results, done);
        results.sort_by_key(|(_, t, d)| (*t, *d));
        if results.is_empty() {
            self.hub.completed_ms.store(done, Ordering::Relaxed);
            return Ok(());
        }
        let mut store = self.hub.store.write().expect("result store");
        for (row, t, d) in results {
            let r = row.to_result();
            if d < 0 {
                if expiry(row.minute_ms, t) {
                    continue;
                }
                store.retract(&r);
                let stored = self.stored(&row, r, t);
                for s in &mut self.sinks {
                    s.change(ChangeAction::Remove, &stored)?;
                }
                continue;
            }
            let stored = self.stored(&row, r, t);
            let key = (row.appid.clone(), row.algorithm, row.minute_ms as i64);
            let a = self
                .summary
                .apps
                .entry(row.appid.clone())
                .or_default()
                .entry(row.algorithm.name().to_string())
                .or_default();
            if self.seen.insert(key.clone()) {
                a.samples += 1;
            }
            if stored.result.anomaly && self.flagged.insert(key) {
                a.anomalous_samples += 1;
                if a.first_anomalies.len() < 5 {
                    a.first_anomalies.push(row.minute_ms as i64);
                }
            }
            for s in &mut self.sinks {
                s.change(ChangeAction::Add, &stored)?;
            }
            store.insert(stored);
        }
        if let Some(newest) = self.history.keys().map(|(_, t)| *t).max() {
            let keep = (self.cfg.retention_days * 86_400_000.0) as i64;
            store.prune(newest - keep);
        }
        drop(store);
        for s in &mut self.sinks {
            s.flush()?;
        }
        self.hub.completed_ms.store(done, Ordering::Relaxed);
        Ok(())
    }

    fn stored(
        &self,
        row: &ScoredRow,
        result: super::model::AnomalyResult,
        t: Time,
    ) -> StoredResult {
        let sample = self.history.get(&(row.appid.clone(), row.minute_ms as i64));
        let key = (row.appid.clone(), row.algorithm, row.model_version);
        StoredResult {
            result,
            response_time: sample.map(|s| s.response_time),
            request_count: sample.map(|s| s.request_count),
            fail_count: sample.map(|s| s.fail_count),
            model_trained_at: self.trained_at.get(&key).copied(),
            emitted_at: t,
        }
    }

    /// Trains what is due at the completed time `done`: the daily schedule point, apps that
    /// have no model yet, and on-demand requests (API, feedback).
    fn train_due(&mut self, pipeline: &mut Pipeline, done: Time) -> anyhow::Result<()> {
        if done == 0 || done == Time::MAX {
            return Ok(());
        }
        let through = done as i64 - 1;
        // Feedback known by now.
        while self
            .future_feedback
            .last()
            .is_some_and(|(at, _, _)| *at <= through)
        {
            let (_, id, a) = self.future_feedback.pop().expect("non-empty");
            self.feedback.insert(id, a);
        }
        let mut requests: Vec<RetrainRequest> =
            std::mem::take(&mut *self.hub.retrain.lock().expect("retrain queue"));
        for (id, a) in std::mem::take(&mut *self.hub.feedback_inbox.lock().expect("feedback")) {
            // Feedback retrains the forest of that app on demand.
            let appid = id.rsplit_once(':').map(|(app, _)| app.to_string());
            self.feedback.insert(id, a);
            requests.push(RetrainRequest {
                appid,
                algorithm: Some(Algorithm::RandomForest),
            });
        }
        let Some(first) = self.history.keys().map(|(_, t)| *t).min() else {
            return Ok(());
        };
        let schedule = self.cfg.schedule.clone();
        let next = *self
            .next_retrain
            .get_or_insert_with(|| schedule.next_after(first));
        let now_minute = through.div_euclid(BUCKET_MS) * BUCKET_MS;
        let apps: BTreeSet<String> = self.history.keys().map(|(a, _)| a.clone()).collect();
        let mut jobs: Vec<(String, Algorithm, i64)> = Vec::new();
        if next <= through {
            for app in &apps {
                for alg in [Algorithm::KMeans, Algorithm::RandomForest] {
                    jobs.push((app.clone(), alg, next));
                }
            }
            self.next_retrain = Some(schedule.next_after(next.max(through)));
        }
        for app in &apps {
            for alg in [Algorithm::KMeans, Algorithm::RandomForest] {
                if !self.in_force.contains_key(&(app.clone(), alg))
                    && !jobs.iter().any(|(a, g, _)| a == app && *g == alg)
                {
                    jobs.push((app.clone(), alg, now_minute));
                }
            }
        }
        for r in requests {
            for app in apps
                .iter()
                .filter(|a| r.appid.as_ref().is_none_or(|x| x == *a))
            {
                for alg in [Algorithm::KMeans, Algorithm::RandomForest] {
                    if r.algorithm.is_none_or(|g| g == alg)
                        && !jobs.iter().any(|(a, g, _)| a == app && *g == alg)
                    {
                        jobs.push((app.clone(), alg, now_minute));
                    }
                }
            }
        }
        for (app, alg, at) in jobs {
            self.train(pipeline, &app, alg, at);
        }
        // Models nobody can retract results of any more.
        let (gone, keep): (Vec<_>, Vec<_>) = self.retired.drain(..).partition(|(_, t)| *t < done);
        self.retired = keep;
        if !gone.is_empty() {
            let gone: BTreeSet<ModelKey> = gone.into_iter().map(|(k, _)| k).collect();
            self.trained_at.retain(|k, _| !gone.contains(k));
            pipeline.service.store.retain(|k| !gone.contains(k));
        }
        // History older than any training window is not needed.
        if let Some(newest) = self.history.keys().map(|(_, t)| *t).max() {
            let keep_from = newest - self.cfg.window_ms() - 2 * 86_400_000;
            self.history.retain(|(_, t), _| *t >= keep_from);
        }
        Ok(())
    }

    /// Trains one model at `at` on the history and installs it (a new model version re-scores
    /// the live samples of the app). Too little data keeps the model in force.
    fn train(&mut self, pipeline: &mut Pipeline, app: &str, alg: Algorithm, at: i64) {
        let from = at - self.cfg.window_ms();
        let samples: Vec<ServiceSample> = self
            .history
            .range((app.to_string(), from)..(app.to_string(), at))
            .map(|(_, s)| s.clone())
            .collect();
        if samples.len() < self.cfg.min_train_samples.max(1) {
            return;
        }
        let key = (app.to_string(), alg);
        let version = self.last_version.get(&key).copied().unwrap_or(0) + 1;
        let model = match alg {
            Algorithm::KMeans => KMeansModel::train(
                app,
                &samples,
                &self.normal_rules,
                &self.feedback,
                at,
                version,
                &self.cfg.kmeans_config(),
            )
            .map(Model::KMeans),
            Algorithm::RandomForest => ForestModel::train(
                app,
                &samples,
                &self.normal_rules,
                &self.feedback,
                at,
                version,
                &self.cfg.forest_config(),
            )
            .map(Model::Forest),
        };
        let model = match model {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("app {app}: {} not trained: {e}", alg.name());
                return;
            }
        };
        let info = model.version().clone();
        tracing::debug!(
            "app {app}: {} version {version} trained at {at} on {} samples",
            alg.name(),
            info.n_train
        );
        let new_key = pipeline.service.store.put(model);
        self.trained_at.insert(new_key.clone(), info.trained_at);
        let now = *pipeline.service.models.time();
        if let Some(old) = self.in_force.insert(key.clone(), new_key.clone()) {
            pipeline.service.models.remove(old.clone());
            self.retired.push((old, now));
        }
        pipeline.service.models.insert(new_key);
        self.last_version.insert(key.clone(), version);
        self.summary.models_trained += 1;
        let a = self
            .summary
            .apps
            .entry(app.to_string())
            .or_default()
            .entry(alg.name().to_string())
            .or_default();
        a.model_versions = version;
        self.hub
            .models
            .write()
            .expect("model versions")
            .insert(key, info);
    }

    /// Feeds posted samples and the replayed samples file; returns whether anything was fed.
    fn feed(
        &mut self,
        pipeline: &mut Pipeline,
        max_tick: &mut u64,
        log_done: bool,
    ) -> anyhow::Result<bool> {
        let mut fed = false;
        let bump = self.lateness_ms + self.slide_ms;
        let posted: Vec<ServiceSample> = self.hub.inbox.lock().expect("inbox").drain(..).collect();
        for s in posted {
            let close = s.time_ms.max(0) as u64 + BUCKET_MS as u64;
            pipeline.service.sample(&s);
            fed = true;
            if log_done {
                *max_tick = (*max_tick).max(close + bump);
            }
        }
        let Some(feeder) = self.feeder.as_mut() else {
            return Ok(fed);
        };
        let Some(first) = feeder.next_close() else {
            self.summary.bad_samples = feeder.bad;
            return Ok(fed);
        };
        let horizon = if log_done {
            // Feed a chunk ahead of the input time, but not past a schedule point that has
            // not been trained yet (its model must score what follows it).
            let mut h = pipeline.time().max(first) + FEED_CHUNK_MS;
            if let Some(t) = self.next_retrain {
                if t as u64 >= pipeline.time() {
                    h = h.min((t as u64).max(first));
                }
            }
            h
        } else {
            max_tick.saturating_sub(self.lateness_ms)
        };
        let mut last = None;
        while let Some(close) = feeder.next_close() {
            if close > horizon {
                break;
            }
            let s = feeder.next.take().expect("peeked");
            pipeline.service.sample(&s);
            last = Some(close);
            fed = true;
            feeder.advance()?;
        }
        self.summary.bad_samples = feeder.bad;
        if log_done {
            let through = if feeder.next.is_some() {
                Some(horizon)
            } else {
                last
            };
            if let Some(t) = through {
                *max_tick = (*max_tick).max(t + bump);
            }
        }
        Ok(fed)
    }

    /// After the last step: drains everything through `final_tick`, flushes the sinks, and
    /// leaves the summary in the hub.
    pub fn finish(&mut self, pipeline: &Pipeline, final_tick: Time) -> anyhow::Result<()> {
        if !self.leader || !self.cfg.enabled {
            return Ok(());
        }
        self.drain(pipeline, final_tick + 1)?;
        for s in &mut self.sinks {
            s.flush()?;
        }
        self.summary.mysql_feedback = self.mysql_feedback.as_ref().map(|r| r.stats());
        *self.hub.summary.lock().expect("summary") = Some(self.summary.clone());
        Ok(())
    }
}
