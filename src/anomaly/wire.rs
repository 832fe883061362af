//! The service-anomaly part of the one dataflow (SPEC §6): sample parts in, scored rows out.
//!
//! Inputs (each an input collection of the dataflow built by [`crate::dataflow::build`]):
//! - `parts`: contributions to a sample, `(appid, minute, sum of request_time µs, requests,
//!   failures)`. Requests of the access logs are summed per app and minute in the driver
//!   between two advances of the input ([`ServiceInputs::request`]); an external sample
//!   (`cat_resource`) is one part ([`ServiceInputs::sample`]). A part is inserted when its
//!   minute closes (`minute + 1 min`, or the input time if later) and retracted `live_minutes`
//!   later: the samples collection holds the *live* samples only.
//! - `models`: the keys of the models in force (see [`super::score`]).
//!
//! Outputs, captured for the driver (all workers push, the leader drains what is complete):
//! - the samples `((appid, minute), (sum µs, requests, failures))`;
//! - the scored rows, one per live sample and model in force.

use std::sync::{Arc, Mutex};

use differential_dataflow::input::InputSession;
use differential_dataflow::operators::CountTotal;
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::probe::Handle as ProbeHandle;

use super::sample::{AppRules, BucketKey, BucketSums, ServiceSample, BUCKET_MS};
use super::score::{score_samples, ModelKey, ModelStore, ScoredRow};
use crate::event::LogRecord;
use crate::rulecompute::{Coll, Time};

/// A contribution to one sample: `(appid, minute start ms, sum of request_time µs, requests,
/// failures)`.
pub type Part = (String, u64, u64, u64, u64);
/// Updates captured from the dataflow, shared by the workers of a process.
pub type SharedCapture<D> = Arc<Mutex<Vec<(D, Time, isize)>>>;

/// A key that differential routes to worker 0 (the leader): the service part of the dataflow
/// is small (one sample per app and minute), and the leader of the cluster holds the trained
/// models and drains the captures, also when the workers are spread over several processes.
/// (No `Hash`, so that this `Hashable` applies instead of the blanket one.)
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OnLeader<K>(pub K);

impl<K> differential_dataflow::Hashable for OnLeader<K> {
    type Output = u64;
    fn hashed(&self) -> u64 {
        0
    }
}

/// Per app per minute: the sum of the parts, on the leader. A part with zero requests (an idle
/// minute posted from outside) still makes a sample: the fourth component counts parts.
pub fn service_sums<'s>(parts: Coll<'s, Part>) -> Coll<'s, (BucketKey, BucketSums)> {
    parts
        .explode(|(app, minute, us, n, fails)| {
            Some((
                OnLeader((app, minute)),
                (us as isize, n as isize, fails as isize, 1isize),
            ))
        })
        .count_total()
        .map(|(OnLeader(key), (sum, count, fails, _parts))| {
            (
                key,
                (sum.max(0) as u64, count.max(0) as u64, fails.max(0) as u64),
            )
        })
}

/// The captures of the service dataflow (shared by the workers of a process).
#[derive(Clone, Debug, Default)]
pub struct ServiceCaptures {
    pub samples: SharedCapture<(BucketKey, BucketSums)>,
    pub results: SharedCapture<ScoredRow>,
}

/// What the workers of one process share: the trained models and the captures.
#[derive(Clone, Debug, Default)]
pub struct ServiceShared {
    pub store: ModelStore,
    pub captures: ServiceCaptures,
}

/// Builds the service part of the dataflow from its two input collections; its outputs are
/// captured into `captures` and probed with `probe`.
pub fn build<'s>(
    parts: Coll<'s, Part>,
    models: Coll<'s, ModelKey>,
    store: ModelStore,
    captures: &ServiceCaptures,
    probe: &ProbeHandle<Time>,
) {
    let sums = service_sums(parts);
    let sink = captures.samples.clone();
    let sums = sums.inspect_batch(move |_, updates| {
        sink.lock()
            .expect("samples capture")
            .extend(updates.iter().cloned())
    });
    let sink = captures.results.clone();
    score_samples(sums.clone(), models, store)
        .inspect_batch(move |_, updates| {
            sink.lock()
                .expect("results capture")
                .extend(updates.iter().cloned())
        })
        .probe_with(probe);
    sums.probe_with(probe);
}

/// A worker's handles to the service inputs, and the per-minute sums of the log requests it
/// has read since the last advance.
pub struct ServiceInputs {
    pub parts: InputSession<Time, Part, isize>,
    pub models: InputSession<Time, ModelKey, isize>,
    pub captures: ServiceCaptures,
    pub store: ModelStore,
    /// Maps log records to apps (`rules/service_app_rule.toml`).
    pub app_rules: AppRules,
    /// Whether log requests are turned into samples.
    pub enabled: bool,
    live_ms: u64,
    /// Per (app rule's position in `app_rules`, minute): the sums of the requests read since
    /// the last advance. Keyed by position, not appid: no string is built per request.
    pending: foldhash::HashMap<(usize, u64), (u64, u64, u64)>,
    extra: Vec<Part>,
}

impl ServiceInputs {
    pub fn new(
        parts: InputSession<Time, Part, isize>,
        models: InputSession<Time, ModelKey, isize>,
        captures: ServiceCaptures,
        store: ModelStore,
    ) -> Self {
        ServiceInputs {
            parts,
            models,
            captures,
            store,
            app_rules: AppRules::default(),
            enabled: false,
            live_ms: 3_600_000,
            pending: Default::default(),
            extra: Vec::new(),
        }
    }

    /// Sets the app rules, whether log requests count, and the live window.
    pub fn configure(&mut self, app_rules: AppRules, enabled: bool, live_ms: u64) {
        // The pending sums name their apps by the current rules' positions.
        self.flush_pending();
        self.app_rules = app_rules;
        self.enabled = enabled;
        self.live_ms = live_ms.max(1);
    }

    /// One access-log request (the only call the per-line ingest makes): counted in its app's
    /// minute when a rule maps it to an app.
    pub fn request(&mut self, rec: &LogRecord) {
        if !self.enabled {
            return;
        }
        if let Some((rule, minute, us, failed)) = self.app_rules.request_by_rule(rec) {
            let e = self.pending.entry((rule, minute)).or_default();
            e.0 += us;
            e.1 += 1;
            e.2 += failed as u64;
        }
    }

    /// One external sample (already normalised).
    pub fn sample(&mut self, s: &ServiceSample) {
        let us = (s.response_time * s.request_count as f64 * 1e6)
            .round()
            .max(0.0) as u64;
        self.extra.push((
            s.appid.clone(),
            s.time_ms.max(0) as u64,
            us,
            s.request_count,
            s.fail_count,
        ));
    }

    /// Inserts the pending parts at their minute's close (never before the input time) and
    /// schedules their retraction `live_ms` later.
    pub fn flush_pending(&mut self) {
        let now = *self.parts.time();
        let apps = &self.app_rules;
        let parts = self
            .pending
            .drain()
            .map(|((rule, minute), (us, n, f))| (apps.appid(rule).to_string(), minute, us, n, f))
            .chain(self.extra.drain(..));
        for part in parts {
            let close = (part.1 + BUCKET_MS as u64).max(now);
            self.parts.update_at(part.clone(), close, 1);
            self.parts.update_at(part, close + self.live_ms, -1);
        }
    }

    /// Moves both inputs to `t` (after inserting the pending parts).
    pub fn advance_to(&mut self, t: Time) {
        self.flush_pending();
        if t > *self.parts.time() {
            self.parts.advance_to(t);
        }
        if t > *self.models.time() {
            self.models.advance_to(t);
        }
    }

    pub fn flush(&mut self) {
        self.parts.flush();
        self.models.flush();
    }

    pub fn live_ms(&self) -> u64 {
        self.live_ms
    }
}
