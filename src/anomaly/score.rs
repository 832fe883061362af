//! Models as a collection (SPEC §6): scoring the live samples in the dataflow.
//!
//! Trained models live in a shared, append-only [`ModelStore`] under immutable keys
//! `(appid, algorithm, version)`; the dataflow only carries those keys, as the collection
//! `models`. Installing a new version = putting it in the store, then retracting the old key
//! and inserting the new one: the join in [`score_samples`] then re-scores exactly the live
//! samples of that app (retracting their old results), incrementally. New samples are scored
//! by the models in force.
//!
//! Two rules keep retractions exact: a stored model is never changed, and never removed while
//! its key (or results computed with it) may still be retracted. Scoring is deterministic, so a
//! retraction recomputes the very row that was inserted.
//!
//! The cost of a model change is one scoring per live sample of the app, so the `sums` fed in
//! should be windowed to the samples worth re-scoring (e.g. the last days).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use super::model::{Algorithm, AnomalyResult, Model};
use super::sample::{BucketKey, BucketSums, ServiceSample};
use crate::rulecompute::Coll;

/// Key of a stored model.
pub type ModelKey = (String, Algorithm, u64);

/// Shared, append-only store of trained models (cheap to clone; shared by all workers).
#[derive(Clone, Debug, Default)]
pub struct ModelStore(Arc<RwLock<BTreeMap<ModelKey, Arc<Model>>>>);

impl ModelStore {
    /// Stores `model` under its `(appid, algorithm, version)` and returns that key. A key that
    /// is already present keeps its model (stored models are immutable).
    pub fn put(&self, model: Model) -> ModelKey {
        let v = model.version();
        let key = (v.appid.clone(), v.algorithm, v.version);
        self.0
            .write()
            .expect("model store lock")
            .entry(key.clone())
            .or_insert_with(|| Arc::new(model));
        key
    }

    pub fn get(&self, key: &ModelKey) -> Option<Arc<Model>> {
        self.0.read().expect("model store lock").get(key).cloned()
    }

    /// Drops models for which `keep` is false (only once nothing can retract their results).
    pub fn retain(&self, mut keep: impl FnMut(&ModelKey) -> bool) {
        self.0
            .write()
            .expect("model store lock")
            .retain(|k, _| keep(k));
    }
}

/// An [`AnomalyResult`] in a form a collection can hold (totally ordered: floats as bits).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ScoredRow {
    pub appid: String,
    pub minute_ms: u64,
    pub algorithm: Algorithm,
    pub model_version: u64,
    pub anomaly: bool,
    pub cluster: Option<u32>,
    pub distance_bits: Option<u64>,
    pub score_bits: u64,
}

impl ScoredRow {
    pub fn from_result(r: &AnomalyResult) -> Self {
        ScoredRow {
            appid: r.appid.clone(),
            minute_ms: r.time_ms.max(0) as u64,
            algorithm: r.algorithm,
            model_version: r.model_version,
            anomaly: r.anomaly,
            cluster: r.cluster,
            distance_bits: r.distance.map(f64::to_bits),
            score_bits: r.score.to_bits(),
        }
    }

    pub fn to_result(&self) -> AnomalyResult {
        AnomalyResult {
            id: ServiceSample::make_id(&self.appid, self.minute_ms as i64),
            appid: self.appid.clone(),
            time_ms: self.minute_ms as i64,
            cluster: self.cluster,
            distance: self.distance_bits.map(f64::from_bits),
            score: f64::from_bits(self.score_bits),
            anomaly: self.anomaly,
            algorithm: self.algorithm,
            model_version: self.model_version,
        }
    }
}

/// Scores every sample (the output of [`super::service_samples`]) with every model in force for
/// its app (one per algorithm, normally). A model key missing from `store` scores nothing.
pub fn score_samples<'s>(
    sums: Coll<'s, (BucketKey, BucketSums)>,
    models: Coll<'s, ModelKey>,
    store: ModelStore,
) -> Coll<'s, ScoredRow> {
    // Joined on the leader (worker 0), whose process holds `store` (see `wire::OnLeader`).
    use super::wire::OnLeader;
    let by_app = sums.map(|((app, minute), s)| (OnLeader(app), (minute, s)));
    let models = models.map(|(app, alg, ver)| (OnLeader(app), (alg, ver)));
    by_app.join(models).flat_map(
        move |(OnLeader(app), ((minute, (sum, count, fails)), (alg, ver)))| {
            let model = store.get(&(app.clone(), alg, ver))?;
            let sample = ServiceSample::from_sums(&app, minute, sum, count, fails);
            let result = model.score_all(&[&sample]).ok()?.pop()?;
            Some(ScoredRow::from_result(&result))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::model::{KMeansConfig, KMeansModel};
    use differential_dataflow::input::Input;
    use std::cell::RefCell;
    use std::rc::Rc;

    fn model(version: u64, rt: f64) -> Model {
        let train: Vec<ServiceSample> = (0..50)
            .map(|i| ServiceSample::new("a", i * 60_000, rt + 0.001 * (i % 5) as f64, 100, 1))
            .collect();
        let refs: Vec<&ServiceSample> = train.iter().collect();
        Model::KMeans(KMeansModel::fit("a", version, 0, &refs, &KMeansConfig::default()).unwrap())
    }

    #[test]
    fn a_new_model_rescores_live_samples() {
        let store = ModelStore::default();
        let k1 = store.put(model(1, 0.1));
        let k2 = store.put(model(2, 1.0));
        let rows = timely::execute_directly(move |worker| {
            let seen: Rc<RefCell<Vec<(ScoredRow, u64, isize)>>> = Rc::default();
            let sink = seen.clone();
            let (mut sums_in, mut models_in, probe) = worker.dataflow::<u64, _, _>(|scope| {
                let (sums_in, sums) = scope.new_collection::<(BucketKey, BucketSums), isize>();
                let (models_in, models) = scope.new_collection::<ModelKey, isize>();
                let probe = score_samples(sums, models, store)
                    .inspect(move |u| sink.borrow_mut().push(u.clone()))
                    .probe()
                    .0;
                (sums_in, models_in, probe)
            });
            sums_in.advance_to(1);
            models_in.advance_to(1);
            // One sample at 0.1 s (normal for v1), one at 1.0 s (normal for v2).
            sums_in.insert((("a".into(), 0), (10_000_000, 100, 1)));
            sums_in.insert((("a".into(), 60_000), (100_000_000, 100, 1)));
            sums_in.insert((("b".into(), 0), (10_000_000, 100, 1)));
            models_in.insert(k1.clone());
            sums_in.advance_to(2);
            models_in.advance_to(2);
            models_in.remove(k1);
            models_in.insert(k2);
            sums_in.advance_to(3);
            sums_in.flush();
            models_in.advance_to(3);
            models_in.flush();
            while probe.less_than(&3) {
                worker.step();
            }
            seen.take()
        });
        let at = |t: u64| {
            let mut m: BTreeMap<ScoredRow, isize> = BTreeMap::new();
            for (row, time, diff) in &rows {
                if *time <= t {
                    *m.entry(row.clone()).or_default() += diff;
                }
            }
            m.retain(|_, d| *d != 0);
            m.into_keys().map(|r| r.to_result()).collect::<Vec<_>>()
        };
        let t1 = at(1);
        assert_eq!(t1.len(), 2, "app b has no model: {t1:?}");
        assert!(t1.iter().all(|r| r.model_version == 1));
        assert!(!t1[0].anomaly && t1[1].anomaly, "{t1:?}");
        assert_eq!(t1[0].id, "a:0");
        let t2 = at(2);
        assert_eq!(t2.len(), 2);
        assert!(t2.iter().all(|r| r.model_version == 2));
        assert!(t2[0].anomaly && !t2[1].anomaly, "{t2:?}");
    }
}
