//! State shared between the engine's leader worker and the HTTP API (SPEC §6 results).
//!
//! - [`ResultStore`]: every per-sample result the dataflow produced, as of the last completed
//!   time, keyed by `(appid, algorithm, minute)`: what `cat_result` answers from. It is fed by
//!   the capture of the dataflow's scored rows (insertions and retractions, so a re-scored
//!   sample shows its newest result), never by a cached answer. A retraction that only means
//!   "the sample left the live window" keeps the result.
//! - an inbox of posted samples (`cat_resource`), operator feedback and on-demand retraining
//!   requests, which the leader worker drains on its next step;
//! - the versions of the models in force.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, RwLock};

use serde::{Deserialize, Serialize};

use super::model::{Algorithm, AnomalyResult, ModelVersion};
use super::sample::ServiceSample;

/// One stored result with the sample it scored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredResult {
    #[serde(flatten)]
    pub result: AnomalyResult,
    /// The minute's values, when known.
    pub response_time: Option<f64>,
    pub request_count: Option<u64>,
    pub fail_count: Option<u64>,
    /// When the model that produced the result was trained (ms since the epoch).
    pub model_trained_at: Option<i64>,
    /// Event time (dataflow time, ms) at which the result was produced.
    pub emitted_at: u64,
}

/// Results by `(appid, algorithm, minute)`.
#[derive(Debug, Default)]
pub struct ResultStore {
    rows: BTreeMap<(String, Algorithm, i64), StoredResult>,
}

impl ResultStore {
    pub fn insert(&mut self, r: StoredResult) {
        let key = (r.result.appid.clone(), r.result.algorithm, r.result.time_ms);
        self.rows.insert(key, r);
    }

    /// Removes the result of `r`'s sample if it is exactly `r` (same model version).
    pub fn retract(&mut self, r: &AnomalyResult) {
        let key = (r.appid.clone(), r.algorithm, r.time_ms);
        if self
            .rows
            .get(&key)
            .is_some_and(|s| s.result.model_version == r.model_version)
        {
            self.rows.remove(&key);
        }
    }

    /// Results of `appid` and `algorithm` with `start_ms <= time <= end_ms`, by time.
    pub fn range(
        &self,
        appid: &str,
        algorithm: Algorithm,
        start_ms: i64,
        end_ms: i64,
    ) -> Vec<StoredResult> {
        if start_ms > end_ms {
            return Vec::new();
        }
        let lo = (appid.to_string(), algorithm, start_ms);
        let hi = (appid.to_string(), algorithm, end_ms);
        self.rows.range(lo..=hi).map(|(_, r)| r.clone()).collect()
    }

    /// Drops the results of samples older than `before_ms`.
    pub fn prune(&mut self, before_ms: i64) {
        self.rows.retain(|(_, _, t), _| *t >= before_ms);
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Apps with at least one result.
    pub fn apps(&self) -> Vec<String> {
        let mut apps: Vec<String> = self.rows.keys().map(|(a, _, _)| a.clone()).collect();
        apps.dedup();
        apps
    }
}

/// Operator feedback on one sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeedbackItem {
    /// Sample id (`appid:minute-ms`); or give `appid` and `time`.
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub appid: Option<serde_json::Value>,
    #[serde(default, alias = "time_ms", alias = "create_time")]
    pub time: Option<i64>,
    /// `true`: the sample was an anomaly; `false`: it was normal. `label` = "anomaly" |
    /// "normal" is accepted instead.
    #[serde(default)]
    pub anomalous: Option<bool>,
    #[serde(default)]
    pub label: Option<String>,
    /// Event time (ms) from which the feedback is known (replayed feedback files); absent =
    /// at once.
    #[serde(default)]
    pub at: Option<i64>,
}

impl FeedbackItem {
    /// `(sample id, anomalous)`, or why the item is unusable.
    pub fn resolve(&self) -> Result<(String, bool), String> {
        let anomalous = match (self.anomalous, self.label.as_deref()) {
            (Some(a), _) => a,
            (None, Some("anomaly" | "anomalous" | "abnormal")) => true,
            (None, Some("normal")) => false,
            (None, Some(other)) => {
                return Err(format!("label `{other}` must be \"anomaly\" or \"normal\""))
            }
            (None, None) => return Err("`anomalous` (true/false) or `label` is required".into()),
        };
        if !self.id.is_empty() {
            return Ok((self.id.clone(), anomalous));
        }
        let appid = match &self.appid {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => return Err("`id`, or `appid` and `time`, are required".into()),
        };
        let Some(t) = self.time else {
            return Err("`id`, or `appid` and `time`, are required".into());
        };
        let minute = t.div_euclid(super::sample::BUCKET_MS) * super::sample::BUCKET_MS;
        Ok((ServiceSample::make_id(&appid, minute), anomalous))
    }
}

/// A request to retrain now: one app (or all) and one algorithm (or both).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RetrainRequest {
    pub appid: Option<String>,
    pub algorithm: Option<Algorithm>,
}

/// What the API and the leader worker share.
#[derive(Debug, Default)]
pub struct AnomalyHub {
    pub store: RwLock<ResultStore>,
    /// Posted samples waiting to enter the dataflow.
    pub inbox: Mutex<VecDeque<ServiceSample>>,
    /// Feedback waiting to be applied (the leader owns the applied feedback).
    pub feedback_inbox: Mutex<Vec<(String, bool)>>,
    pub retrain: Mutex<Vec<RetrainRequest>>,
    /// Models in force, by `(appid, algorithm)`.
    pub models: RwLock<BTreeMap<(String, Algorithm), ModelVersion>>,
    /// The dataflow's completed time (ms), for `/health`.
    pub completed_ms: std::sync::atomic::AtomicU64,
    /// What the run found, left by the leader when it finishes.
    pub summary: Mutex<Option<super::driver::ServiceSummary>>,
}

impl AnomalyHub {
    /// Queues a posted sample; it enters the dataflow on the leader's next step.
    pub fn post_sample(&self, s: ServiceSample) {
        self.inbox.lock().expect("inbox").push_back(s);
    }

    pub fn post_feedback(&self, id: String, anomalous: bool) {
        self.feedback_inbox
            .lock()
            .expect("feedback inbox")
            .push((id, anomalous));
    }

    pub fn request_retrain(&self, r: RetrainRequest) {
        self.retrain.lock().expect("retrain queue").push(r);
    }

    pub fn query(
        &self,
        appid: &str,
        algorithm: Algorithm,
        start_ms: i64,
        end_ms: i64,
    ) -> Vec<StoredResult> {
        self.store
            .read()
            .expect("result store")
            .range(appid, algorithm, start_ms, end_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(app: &str, t: i64, v: u64, anomaly: bool) -> StoredResult {
        StoredResult {
            result: AnomalyResult {
                id: ServiceSample::make_id(app, t),
                appid: app.into(),
                time_ms: t,
                cluster: Some(1),
                distance: Some(0.5),
                score: 0.5,
                anomaly,
                algorithm: Algorithm::KMeans,
                model_version: v,
            },
            response_time: None,
            request_count: None,
            fail_count: None,
            model_trained_at: None,
            emitted_at: 0,
        }
    }

    #[test]
    fn store_keeps_newest_version_and_answers_ranges() {
        let mut s = ResultStore::default();
        s.insert(result("a", 0, 1, false));
        s.insert(result("a", 60_000, 1, false));
        s.insert(result("b", 0, 1, false));
        // Re-scoring by version 2: insertion and retraction may come in either order.
        s.insert(result("a", 0, 2, true));
        s.retract(&result("a", 0, 1, false).result);
        assert_eq!(
            s.range("a", Algorithm::KMeans, 0, 0)[0]
                .result
                .model_version,
            2
        );
        s.retract(&result("a", 60_000, 1, false).result);
        assert_eq!(s.range("a", Algorithm::KMeans, 0, 120_000).len(), 1);
        assert!(s.range("a", Algorithm::RandomForest, 0, 120_000).is_empty());
        assert!(s.range("a", Algorithm::KMeans, 10, 0).is_empty());
        assert_eq!(s.apps(), ["a", "b"]);
    }

    #[test]
    fn feedback_items() {
        let f: FeedbackItem = serde_json::from_str(r#"{"id": "x:0", "label": "normal"}"#).unwrap();
        assert_eq!(f.resolve().unwrap(), ("x:0".into(), false));
        let f: FeedbackItem =
            serde_json::from_str(r#"{"appid": 1001, "time": 90000, "anomalous": true}"#).unwrap();
        assert_eq!(f.resolve().unwrap(), ("1001:60000".into(), true));
        let f: FeedbackItem = serde_json::from_str(r#"{"appid": 1001}"#).unwrap();
        assert!(f.resolve().is_err());
        let f: FeedbackItem = serde_json::from_str(r#"{"id": "x", "label": "odd"}"#).unwrap();
        assert!(f.resolve().unwrap_err().contains("odd"));
    }
}
