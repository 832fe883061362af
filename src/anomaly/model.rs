//! Per-app models (SPEC §6): standardised features, k-means and a random forest (smartcore),
//! versioned so that a newer model replaces an older one, and per-sample results.
//!
//! Features: `[response_time, request_count, fail_rate]`, standardised with the training set's
//! mean and (population) standard deviation; a feature with standard deviation 0 is divided by
//! 1 instead.
//!
//! k-means (default k = 3, seed 42) is trained on the *normal* samples of a time range (the last
//! 24 h by default): normal by the rule table, unless operator feedback says otherwise. A
//! sample is anomalous when its distance to the nearest centroid exceeds the `quantile`
//! (default 0.99) of the training distances; its score is `distance / threshold`.
//!
//! Optional features (`FeatureSpec`): the time of day, log request counts, and the deviations
//! from the app's daily profile ([`DailyProfile`], fitted per model on its normal training
//! samples).
//!
//! The random forest is trained on *all* samples of the range, labelled by the normal rule
//! with operator feedback overriding — except the samples younger than the review delay
//! (`review_delay_ms`, 1 h by default) that have no feedback yet: their only label would be
//! the rule's "normal", which for an anomaly the operators have not flagged *yet* is wrong, and
//! a forest learns such a mislabelled episode as a normal region. It reports P(anomaly) as the
//! share of trees voting "anomaly". smartcore's `RandomForestClassifier` only exposes the majority vote, so the
//! forest is built as `n_trees` one-tree smartcore forests with seeds `seed, seed+1, …` (each
//! one a bootstrap sample and a random-feature tree, exactly a random forest's member).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use smartcore::cluster::kmeans::{KMeans, KMeansParameters};
use smartcore::ensemble::random_forest_classifier::{
    RandomForestClassifier, RandomForestClassifierParameters,
};
use smartcore::linalg::basic::matrix::DenseMatrix;

use super::normal::{is_normal, rule_for, NormalRule};
use super::sample::ServiceSample;

/// Number of base features.
pub const NF: usize = 3;
/// One feature vector: `[response_time, request_count, fail_rate]`, then (optionally) the
/// time-of-day features of [`FeatureSpec`].
pub type Features = Vec<f64>;
/// Operator feedback: sample id → `true` when the sample was an anomaly, `false` when normal.
pub type Feedback = BTreeMap<String, bool>;

/// The raw (unscaled) base features of a sample.
pub fn features(s: &ServiceSample) -> Features {
    vec![s.response_time, s.request_count as f64, s.fail_rate()]
}

/// Optional time-of-day features: `sin` and `cos` of the sample's local minute of day, so that
/// a model can tell night traffic from day traffic (off by default: SPEC §6's features are the
/// three base ones).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimeOfDay {
    /// Weight of the two features after standardisation (1 = as much as a base feature).
    pub weight: f64,
    /// Offset of the app's local time from UTC, in minutes.
    #[serde(default)]
    pub utc_offset_minutes: i64,
}

/// Which features a model uses.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FeatureSpec {
    #[serde(default)]
    pub time_of_day: Option<TimeOfDay>,
    /// Uses `ln(1 + request_count)` instead of `request_count`, so that a drop to 20 % weighs
    /// the same at night as at the daily peak (off by default).
    #[serde(default)]
    pub log_count: bool,
    /// Adds the deviations of the sample from the app's daily profile (see [`DailyProfile`]).
    #[serde(default)]
    pub seasonal: Option<Seasonal>,
}

/// Settings of the daily-profile features.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Seasonal {
    /// Offset of the app's local time from UTC, in minutes.
    #[serde(default)]
    pub utc_offset_minutes: i64,
    /// Number of daily harmonics of the profile (1 = one sine a day).
    #[serde(default = "default_harmonics")]
    pub harmonics: usize,
    /// Weight of the two features after standardisation (1 = as much as a base feature).
    #[serde(default = "default_weight")]
    pub weight: f64,
}

fn default_harmonics() -> usize {
    2
}

fn default_weight() -> f64 {
    1.0
}

impl Default for Seasonal {
    fn default() -> Self {
        Seasonal {
            utc_offset_minutes: 0,
            harmonics: default_harmonics(),
            weight: default_weight(),
        }
    }
}

/// Response times are compared on a log scale from this floor (1 ms), so that an idle minute
/// (response time 0) stays finite.
const RT_FLOOR: f64 = 1e-3;

/// The daily profile of an app's normal traffic: least-squares fits of `ln(1 + request_count)`
/// and `ln(response_time + 1 ms)` on a Fourier basis of the local minute of day (`1, sin kθ,
/// cos kθ` for `k = 1..=harmonics`), over the training samples labelled normal.
///
/// Its features are the deviations of a sample from the profile at the sample's minute of day
/// (log ratios: `-1.6` is a fifth of the usual traffic, `+1.1` three times the usual response
/// time). They let a model see a drop at the daily peak or a surge at night directly, on one
/// axis, instead of as an unusual *combination* of count and time of day — which a model can
/// only learn for the times of day where it has seen such an anomaly before.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DailyProfile {
    pub utc_offset_minutes: i64,
    pub harmonics: usize,
    pub count: Vec<f64>,
    pub rt: Vec<f64>,
}

impl DailyProfile {
    fn basis(&self, time_ms: i64) -> Vec<f64> {
        let minute = (time_ms / 60_000 + self.utc_offset_minutes).rem_euclid(1440);
        let angle = std::f64::consts::TAU * minute as f64 / 1440.0;
        let mut b = Vec::with_capacity(1 + 2 * self.harmonics);
        b.push(1.0);
        for k in 1..=self.harmonics {
            let a = angle * k as f64;
            b.extend([a.sin(), a.cos()]);
        }
        b
    }

    fn targets(s: &ServiceSample) -> [f64; 2] {
        [
            (s.request_count as f64).ln_1p(),
            (s.response_time + RT_FLOOR).ln(),
        ]
    }

    /// Fits the profile on `samples` (the normal ones of a training set). With fewer samples
    /// than twice the basis, only the means are fitted; without any, the profile is flat at 0.
    pub fn fit(spec: &Seasonal, samples: &[&ServiceSample]) -> Self {
        let mut p = DailyProfile {
            utc_offset_minutes: spec.utc_offset_minutes,
            harmonics: spec.harmonics,
            count: Vec::new(),
            rt: Vec::new(),
        };
        let nb = 1 + 2 * spec.harmonics;
        if samples.len() < 2 * nb {
            p.harmonics = 0;
        }
        let nb = 1 + 2 * p.harmonics;
        let mut xtx = vec![vec![0.0; nb]; nb];
        let mut xty = [vec![0.0; nb], vec![0.0; nb]];
        for s in samples {
            let b = p.basis(s.time_ms);
            let y = Self::targets(s);
            for i in 0..nb {
                for j in 0..nb {
                    xtx[i][j] += b[i] * b[j];
                }
                for (t, yt) in y.iter().enumerate() {
                    xty[t][i] += b[i] * yt;
                }
            }
        }
        // A touch of ridge keeps the system regular when the samples cover little of the day.
        let ridge = 1e-6 * samples.len().max(1) as f64;
        for (i, row) in xtx.iter_mut().enumerate() {
            row[i] += ridge;
        }
        let [yc, yr] = xty;
        p.count = solve(xtx.clone(), yc);
        p.rt = solve(xtx, yr);
        p
    }

    /// The deviations of `s` from the profile: `[count, response time]`, as log ratios.
    pub fn deviations(&self, s: &ServiceSample) -> [f64; 2] {
        let b = self.basis(s.time_ms);
        let dot = |c: &[f64]| c.iter().zip(&b).map(|(c, b)| c * b).sum::<f64>();
        let [c, r] = Self::targets(s);
        [c - dot(&self.count), r - dot(&self.rt)]
    }
}

/// Solves `a x = b` (Gaussian elimination with partial pivoting); a singular column gives 0.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap_or(col);
        a.swap(col, pivot);
        b.swap(col, pivot);
        if a[col][col].abs() < 1e-12 {
            continue;
        }
        for row in col + 1..n {
            let f = a[row][col] / a[col][col];
            let (top, bottom) = a.split_at_mut(row);
            for (x, p) in bottom[0][col..].iter_mut().zip(&top[col][col..]) {
                *x -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for col in (0..n).rev() {
        if a[col][col].abs() < 1e-12 {
            continue;
        }
        let s: f64 = (col + 1..n).map(|k| a[col][k] * x[k]).sum();
        x[col] = (b[col] - s) / a[col][col];
    }
    x
}

impl FeatureSpec {
    /// The raw features of `s`; `profile` is the model's daily profile (required for the
    /// seasonal features, ignored otherwise).
    pub fn raw(&self, s: &ServiceSample, profile: Option<&DailyProfile>) -> Features {
        let mut f = features(s);
        if self.log_count {
            f[1] = f[1].ln_1p();
        }
        if let Some(tod) = &self.time_of_day {
            let minute = (s.time_ms / 60_000 + tod.utc_offset_minutes).rem_euclid(1440);
            let angle = std::f64::consts::TAU * minute as f64 / 1440.0;
            f.extend([angle.sin(), angle.cos()]);
        }
        if self.seasonal.is_some() {
            f.extend(profile.map_or([0.0; 2], |p| p.deviations(s)));
        }
        f
    }

    /// The daily profile of a model with this spec, fitted on its normal training samples.
    pub fn profile(&self, normal: &[&ServiceSample]) -> Option<DailyProfile> {
        self.seasonal.as_ref().map(|s| DailyProfile::fit(s, normal))
    }

    /// Per-feature weights applied after standardisation.
    pub fn weights(&self) -> Vec<f64> {
        let mut w = vec![1.0; NF];
        if let Some(tod) = &self.time_of_day {
            w.extend([tod.weight, tod.weight]);
        }
        if let Some(s) = &self.seasonal {
            w.extend([s.weight, s.weight]);
        }
        w
    }

    /// A scaler fitted on `rows` (raw features of this spec).
    pub fn scaler(&self, rows: &[Features]) -> Scaler {
        let mut sc = Scaler::fit(rows);
        for (s, w) in sc.std.iter_mut().zip(self.weights()) {
            *s /= w.max(1e-12);
        }
        sc
    }
}

/// Whether `s` is labelled anomalous: operator feedback if any, else "not normal" by the rule
/// for its app.
pub fn label(s: &ServiceSample, rules: &[NormalRule], feedback: &Feedback) -> bool {
    match feedback.get(&s.id) {
        Some(&anomalous) => anomalous,
        None => !is_normal(s, &rule_for(rules, &s.appid)),
    }
}

/// Per-feature standardisation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scaler {
    pub mean: Features,
    pub std: Features,
}

impl Scaler {
    /// Mean and population standard deviation of each feature; a std of 0 (or an empty set)
    /// becomes 1 so that the feature is only centred. An empty set gives the identity on the
    /// base features.
    pub fn fit(rows: &[Features]) -> Self {
        let nf = rows.first().map_or(NF, |r| r.len());
        let n = rows.len().max(1) as f64;
        let mut mean = vec![0.0; nf];
        for r in rows {
            for j in 0..nf {
                mean[j] += r[j] / n;
            }
        }
        let mut var = vec![0.0; nf];
        for r in rows {
            for j in 0..nf {
                var[j] += (r[j] - mean[j]).powi(2) / n;
            }
        }
        let std = var
            .into_iter()
            .map(|v| {
                let s = v.sqrt();
                if s > 1e-12 && s.is_finite() {
                    s
                } else {
                    1.0
                }
            })
            .collect();
        Scaler { mean, std }
    }

    pub fn transform(&self, x: &Features) -> Features {
        x.iter()
            .zip(self.mean.iter().zip(&self.std))
            .map(|(v, (m, s))| (v - m) / s)
            .collect()
    }
}

/// The algorithms, named as in the API (`algorithm_name`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    #[serde(rename = "kmeans")]
    KMeans,
    #[serde(rename = "random_forest")]
    RandomForest,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::KMeans => "kmeans",
            Algorithm::RandomForest => "random_forest",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "kmeans" => Some(Algorithm::KMeans),
            "random_forest" => Some(Algorithm::RandomForest),
            _ => None,
        }
    }
}

/// Identity of a trained model. For one `(appid, algorithm)`, a model with a greater
/// `(version, trained_at)` replaces the installed one (see [`ModelRegistry::install`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelVersion {
    pub appid: String,
    pub version: u64,
    /// When the model was trained (ms since the epoch); also the end of its training range.
    pub trained_at: i64,
    pub algorithm: Algorithm,
    /// Training range `[train_from, train_to)` in ms and the number of training samples.
    pub train_from: i64,
    pub train_to: i64,
    pub n_train: usize,
}

impl ModelVersion {
    /// The version record of a model trained at `trained_at` on `training`.
    fn of_training(
        appid: &str,
        version: u64,
        trained_at: i64,
        algorithm: Algorithm,
        training: &[&ServiceSample],
    ) -> ModelVersion {
        ModelVersion {
            appid: appid.to_string(),
            version,
            trained_at,
            algorithm,
            train_from: training.iter().map(|s| s.time_ms).min().unwrap_or(0),
            train_to: training.iter().map(|s| s.time_ms).max().unwrap_or(0) + 1,
            n_train: training.len(),
        }
    }

    fn key(&self) -> (u64, i64) {
        (self.version, self.trained_at)
    }
}

/// The result of scoring one sample with one model (a `cat_result_data` row).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnomalyResult {
    pub id: String,
    pub appid: String,
    pub time_ms: i64,
    /// Index of the nearest centroid (k-means only).
    pub cluster: Option<u32>,
    /// Standardised distance to the nearest centroid (k-means only).
    pub distance: Option<f64>,
    /// k-means: `distance / threshold` (> 1 is anomalous); random forest: P(anomaly).
    pub score: f64,
    pub anomaly: bool,
    /// `"kmeans"` or `"random_forest"`.
    pub algorithm: Algorithm,
    pub model_version: u64,
}

/// k-means settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KMeansConfig {
    pub k: usize,
    pub max_iter: usize,
    pub seed: u64,
    /// Quantile of the training distances above which a sample is anomalous.
    pub quantile: f64,
    /// Length of the training range ending at the training time (24 h by default).
    pub window_ms: i64,
    #[serde(default)]
    pub features: FeatureSpec,
}

impl Default for KMeansConfig {
    fn default() -> Self {
        KMeansConfig {
            k: 3,
            max_iter: 100,
            seed: 42,
            quantile: 0.99,
            window_ms: 24 * 3_600_000,
            features: FeatureSpec::default(),
        }
    }
}

/// A trained per-app k-means model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KMeansModel {
    pub version: ModelVersion,
    pub features: FeatureSpec,
    /// The daily profile of the seasonal features (fitted on the training set).
    pub profile: Option<DailyProfile>,
    pub scaler: Scaler,
    /// Centroids in standardised space.
    pub centroids: Vec<Features>,
    /// Distance threshold: the configured quantile of the training distances.
    pub threshold: f64,
}

fn dist(a: &Features, b: &Features) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

fn matrix(rows: &[Features]) -> Result<DenseMatrix<f64>, String> {
    DenseMatrix::from_2d_vec(&rows.to_vec()).map_err(|e| e.to_string())
}

/// The `q`-quantile of `xs` (nearest rank); 0 for an empty slice.
pub fn quantile(xs: &[f64], q: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// The samples of `appid` in `[from, to)` that are normal (rule, then feedback).
pub fn normal_samples<'a>(
    samples: &'a [ServiceSample],
    appid: &str,
    from: i64,
    to: i64,
    rules: &[NormalRule],
    feedback: &Feedback,
) -> Vec<&'a ServiceSample> {
    samples
        .iter()
        .filter(|s| s.appid == appid && s.time_ms >= from && s.time_ms < to)
        .filter(|s| !label(s, rules, feedback))
        .collect()
}

impl KMeansModel {
    /// Trains on exactly `training` (all of one app). Errors on an empty training set.
    pub fn fit(
        appid: &str,
        version: u64,
        trained_at: i64,
        training: &[&ServiceSample],
        cfg: &KMeansConfig,
    ) -> Result<Self, String> {
        if training.is_empty() {
            return Err(format!("app {appid}: no normal samples to train on"));
        }
        let profile = cfg.features.profile(training);
        let raw: Vec<Features> = training
            .iter()
            .map(|s| cfg.features.raw(s, profile.as_ref()))
            .collect();
        let scaler = cfg.features.scaler(&raw);
        let x: Vec<Features> = raw.iter().map(|r| scaler.transform(r)).collect();
        let nf = raw[0].len();
        let k = cfg.k.clamp(1, x.len());
        let params = KMeansParameters {
            k,
            max_iter: cfg.max_iter.max(1),
            seed: Some(cfg.seed),
        };
        let km: KMeans<f64, i32, DenseMatrix<f64>, Vec<i32>> =
            KMeans::fit(&matrix(&x)?, params).map_err(|e| e.to_string())?;
        let assign = km.predict(&matrix(&x)?).map_err(|e| e.to_string())?;
        // smartcore keeps its centroids private: recompute them as the cluster means (what
        // they are at convergence); empty clusters are dropped.
        let mut sums = vec![(vec![0.0; nf], 0usize); k];
        for (row, &c) in x.iter().zip(&assign) {
            let (sum, n) = &mut sums[c.clamp(0, k as i32 - 1) as usize];
            for j in 0..nf {
                sum[j] += row[j];
            }
            *n += 1;
        }
        let centroids: Vec<Features> = sums
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(s, n)| s.into_iter().map(|v| v / n as f64).collect())
            .collect();
        let mut model = KMeansModel {
            version: ModelVersion::of_training(
                appid,
                version,
                trained_at,
                Algorithm::KMeans,
                training,
            ),
            features: cfg.features.clone(),
            profile,
            scaler,
            centroids,
            threshold: 0.0,
        };
        let d: Vec<f64> = x.iter().map(|r| model.nearest(r).1).collect();
        model.threshold = quantile(&d, cfg.quantile).max(1e-9);
        Ok(model)
    }

    /// Trains on the normal samples of `appid` in `[now − window, now)`.
    pub fn train(
        appid: &str,
        samples: &[ServiceSample],
        rules: &[NormalRule],
        feedback: &Feedback,
        now_ms: i64,
        version: u64,
        cfg: &KMeansConfig,
    ) -> Result<Self, String> {
        let training = normal_samples(
            samples,
            appid,
            now_ms - cfg.window_ms,
            now_ms,
            rules,
            feedback,
        );
        let mut m = Self::fit(appid, version, now_ms, &training, cfg)?;
        m.version.train_from = now_ms - cfg.window_ms;
        m.version.train_to = now_ms;
        Ok(m)
    }

    /// Nearest centroid of a standardised point and the distance to it.
    fn nearest(&self, x: &Features) -> (u32, f64) {
        self.centroids
            .iter()
            .enumerate()
            .map(|(i, c)| (i as u32, dist(x, c)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or((0, f64::INFINITY))
    }

    pub fn score(&self, s: &ServiceSample) -> AnomalyResult {
        let raw = self.features.raw(s, self.profile.as_ref());
        let (cluster, distance) = self.nearest(&self.scaler.transform(&raw));
        AnomalyResult {
            id: s.id.clone(),
            appid: s.appid.clone(),
            time_ms: s.time_ms,
            cluster: Some(cluster),
            distance: Some(distance),
            score: distance / self.threshold,
            anomaly: distance > self.threshold,
            algorithm: Algorithm::KMeans,
            model_version: self.version.version,
        }
    }
}

/// Random-forest settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForestConfig {
    pub n_trees: u16,
    pub max_depth: Option<u16>,
    pub min_samples_leaf: usize,
    pub seed: u64,
    /// P(anomaly) above which a sample is flagged.
    pub threshold: f64,
    /// Length of the training range ending at the training time (24 h by default).
    pub window_ms: i64,
    /// How long operators take to review a sample: a training sample younger than this, and
    /// without feedback yet, is left out (its only label would be the normal rule's, and a
    /// sample the rule calls normal may be an anomaly nobody has flagged *yet*).
    #[serde(default)]
    pub review_delay_ms: i64,
    #[serde(default)]
    pub features: FeatureSpec,
}

impl Default for ForestConfig {
    fn default() -> Self {
        ForestConfig {
            n_trees: 50,
            max_depth: Some(10),
            min_samples_leaf: 1,
            seed: 7,
            threshold: 0.5,
            window_ms: 24 * 3_600_000,
            review_delay_ms: 60 * 60_000,
            features: FeatureSpec::default(),
        }
    }
}

type Tree = RandomForestClassifier<f64, i32, DenseMatrix<f64>, Vec<i32>>;

/// A trained per-app random forest.
#[derive(Debug)]
pub struct ForestModel {
    pub version: ModelVersion,
    pub features: FeatureSpec,
    /// The daily profile of the seasonal features (fitted on the normal training samples).
    pub profile: Option<DailyProfile>,
    pub scaler: Scaler,
    pub threshold: f64,
    trees: Vec<Tree>,
    /// Set when the training labels were all one class: the forest answers it always.
    constant: Option<bool>,
}

impl ForestModel {
    /// Trains on `training` with labels `anomalous` (same length).
    pub fn fit(
        appid: &str,
        version: u64,
        trained_at: i64,
        training: &[&ServiceSample],
        anomalous: &[bool],
        cfg: &ForestConfig,
    ) -> Result<Self, String> {
        if training.is_empty() || training.len() != anomalous.len() {
            return Err(format!("app {appid}: no (or mislabelled) training samples"));
        }
        let normal: Vec<&ServiceSample> = training
            .iter()
            .zip(anomalous)
            .filter(|(_, &a)| !a)
            .map(|(s, _)| *s)
            .collect();
        let profile = cfg.features.profile(&normal);
        let raw: Vec<Features> = training
            .iter()
            .map(|s| cfg.features.raw(s, profile.as_ref()))
            .collect();
        let scaler = cfg.features.scaler(&raw);
        let x: Vec<Features> = raw.iter().map(|r| scaler.transform(r)).collect();
        let y: Vec<i32> = anomalous.iter().map(|&a| a as i32).collect();
        let positives = y.iter().filter(|&&v| v == 1).count();
        let constant = if positives == 0 {
            Some(false)
        } else if positives == y.len() {
            Some(true)
        } else {
            None
        };
        let mut trees = Vec::new();
        if constant.is_none() {
            let xm = matrix(&x)?;
            for i in 0..cfg.n_trees.max(1) {
                let params = RandomForestClassifierParameters {
                    max_depth: cfg.max_depth,
                    min_samples_leaf: cfg.min_samples_leaf.max(1),
                    n_trees: 1,
                    seed: cfg
                        .seed
                        .wrapping_add(u64::from(i).wrapping_mul(0x9E37_79B9)),
                    ..Default::default()
                };
                trees.push(Tree::fit(&xm, &y, params).map_err(|e| e.to_string())?);
            }
        }
        Ok(ForestModel {
            version: ModelVersion::of_training(
                appid,
                version,
                trained_at,
                Algorithm::RandomForest,
                training,
            ),
            features: cfg.features.clone(),
            profile,
            scaler,
            threshold: cfg.threshold,
            trees,
            constant,
        })
    }

    /// Trains on every sample of `appid` in `[now − window, now)`, labelled by [`label`],
    /// leaving out those of the last `review_delay_ms` without feedback.
    pub fn train(
        appid: &str,
        samples: &[ServiceSample],
        rules: &[NormalRule],
        feedback: &Feedback,
        now_ms: i64,
        version: u64,
        cfg: &ForestConfig,
    ) -> Result<Self, String> {
        let from = now_ms - cfg.window_ms;
        let reviewed = now_ms - cfg.review_delay_ms.max(0);
        let training: Vec<&ServiceSample> = samples
            .iter()
            .filter(|s| s.appid == appid && s.time_ms >= from && s.time_ms < now_ms)
            .filter(|s| s.time_ms < reviewed || feedback.contains_key(&s.id))
            .collect();
        let labels: Vec<bool> = training.iter().map(|s| label(s, rules, feedback)).collect();
        let mut m = Self::fit(appid, version, now_ms, &training, &labels, cfg)?;
        m.version.train_from = from;
        m.version.train_to = now_ms;
        Ok(m)
    }

    /// P(anomaly) of each sample: the share of trees voting "anomaly".
    pub fn probabilities(&self, samples: &[&ServiceSample]) -> Result<Vec<f64>, String> {
        if let Some(c) = self.constant {
            return Ok(vec![if c { 1.0 } else { 0.0 }; samples.len()]);
        }
        if samples.is_empty() {
            return Ok(Vec::new());
        }
        let x: Vec<Features> = samples
            .iter()
            .map(|s| {
                self.scaler
                    .transform(&self.features.raw(s, self.profile.as_ref()))
            })
            .collect();
        let xm = matrix(&x)?;
        let mut votes = vec![0u32; samples.len()];
        for t in &self.trees {
            let p = t.predict(&xm).map_err(|e| e.to_string())?;
            for (v, c) in votes.iter_mut().zip(p) {
                *v += (c == 1) as u32;
            }
        }
        let n = self.trees.len().max(1) as f64;
        Ok(votes.into_iter().map(|v| v as f64 / n).collect())
    }

    /// Scores many samples at once (one prediction pass per tree).
    pub fn score_all(&self, samples: &[&ServiceSample]) -> Result<Vec<AnomalyResult>, String> {
        let p = self.probabilities(samples)?;
        Ok(samples
            .iter()
            .zip(p)
            .map(|(s, p)| AnomalyResult {
                id: s.id.clone(),
                appid: s.appid.clone(),
                time_ms: s.time_ms,
                cluster: None,
                distance: None,
                score: p,
                anomaly: p > self.threshold,
                algorithm: Algorithm::RandomForest,
                model_version: self.version.version,
            })
            .collect())
    }

    pub fn score(&self, s: &ServiceSample) -> Result<AnomalyResult, String> {
        Ok(self.score_all(&[s])?.remove(0))
    }
}

/// When models are retrained: daily at `minute_of_day` (local, `utc_offset_minutes` from UTC);
/// 00:01 by default. On-demand retraining simply trains and installs a model at any time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrainSchedule {
    pub minute_of_day: i64,
    #[serde(default)]
    pub utc_offset_minutes: i64,
}

impl Default for RetrainSchedule {
    fn default() -> Self {
        RetrainSchedule {
            minute_of_day: 1,
            utc_offset_minutes: 0,
        }
    }
}

impl RetrainSchedule {
    /// The first scheduled retraining strictly after `t_ms`.
    pub fn next_after(&self, t_ms: i64) -> i64 {
        const DAY: i64 = 86_400_000;
        let offset = self.utc_offset_minutes * 60_000;
        let local = t_ms + offset;
        let at = local.div_euclid(DAY) * DAY + self.minute_of_day.rem_euclid(1440) * 60_000;
        let next = if at > local { at } else { at + DAY };
        next - offset
    }
}

/// A trained model of either kind.
#[derive(Debug)]
pub enum Model {
    KMeans(KMeansModel),
    Forest(ForestModel),
}

impl Model {
    pub fn version(&self) -> &ModelVersion {
        match self {
            Model::KMeans(m) => &m.version,
            Model::Forest(m) => &m.version,
        }
    }

    pub fn score_all(&self, samples: &[&ServiceSample]) -> Result<Vec<AnomalyResult>, String> {
        match self {
            Model::KMeans(m) => Ok(samples.iter().map(|s| m.score(s)).collect()),
            Model::Forest(m) => m.score_all(samples),
        }
    }
}

/// The models in force, one per `(appid, algorithm)`.
#[derive(Debug, Default)]
pub struct ModelRegistry {
    models: BTreeMap<(String, Algorithm), Model>,
}

impl ModelRegistry {
    /// Installs `model` unless the installed one for its app and algorithm is as new or newer
    /// (by `(version, trained_at)`); returns whether it was installed.
    pub fn install(&mut self, model: Model) -> bool {
        let v = model.version();
        let key = (v.appid.clone(), v.algorithm);
        match self.models.get(&key) {
            Some(old) if old.version().key() >= v.key() => false,
            _ => {
                self.models.insert(key, model);
                true
            }
        }
    }

    pub fn get(&self, appid: &str, algorithm: Algorithm) -> Option<&Model> {
        self.models.get(&(appid.to_string(), algorithm))
    }

    /// The version number a new model of this app and algorithm should carry.
    pub fn next_version(&self, appid: &str, algorithm: Algorithm) -> u64 {
        self.get(appid, algorithm)
            .map_or(1, |m| m.version().version + 1)
    }

    /// Scores `samples` of `appid` with the installed model; `None` without one.
    pub fn score(
        &self,
        appid: &str,
        algorithm: Algorithm,
        samples: &[&ServiceSample],
    ) -> Option<Result<Vec<AnomalyResult>, String>> {
        self.get(appid, algorithm).map(|m| m.score_all(samples))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: i64, rt: f64, n: u64, f: u64) -> ServiceSample {
        ServiceSample::new("a", i * 60_000, rt, n, f)
    }

    /// Three well separated regimes plus a little deterministic jitter.
    fn training() -> Vec<ServiceSample> {
        (0..300)
            .map(|i| {
                let j = ((i * 7919) % 101) as f64 / 101.0 - 0.5;
                match i % 3 {
                    0 => sample(i, 0.1 + 0.01 * j, 100 + (10.0 * j) as u64, 1),
                    1 => sample(i, 0.3 + 0.01 * j, 500 + (10.0 * j) as u64, 5),
                    _ => sample(i, 0.2 + 0.01 * j, 1000 + (10.0 * j) as u64, 10),
                }
            })
            .collect()
    }

    #[test]
    fn scaler_standardises_and_handles_zero_std() {
        let rows = [vec![1.0, 10.0, 0.0], vec![3.0, 10.0, 0.0]];
        let s = Scaler::fit(&rows);
        assert_eq!(s.mean, [2.0, 10.0, 0.0]);
        assert_eq!(s.std, [1.0, 1.0, 1.0]);
        assert_eq!(s.transform(&vec![3.0, 12.0, 0.5]), [1.0, 2.0, 0.5]);
        let rows = [vec![0.0, 0.0, 0.0], vec![0.0, 100.0, 0.0]];
        let s = Scaler::fit(&rows);
        assert_eq!(s.std[1], 50.0);
        assert_eq!(s.transform(&vec![0.0, 100.0, 0.0])[1], 1.0);
        assert_eq!(Scaler::fit(&[]).std, [1.0; 3]);
        // Time-of-day features: sin/cos of the local minute, weighted after scaling.
        let spec = FeatureSpec {
            time_of_day: Some(TimeOfDay {
                weight: 2.0,
                utc_offset_minutes: 360,
            }),
            log_count: true,
            seasonal: None,
        };
        let at = |t| ServiceSample::new("a", t, 0.1, 10, 0);
        let f = spec.raw(&at(0), None);
        assert_eq!(f.len(), 5);
        assert!((f[1] - 11f64.ln()).abs() < 1e-12);
        assert!(
            (f[3] - 1.0).abs() < 1e-12 && f[4].abs() < 1e-12,
            "06:00 local"
        );
        let rows: Vec<Features> = (0..4)
            .map(|i| spec.raw(&at(i * 21_600_000), None))
            .collect();
        let sc = spec.scaler(&rows);
        let x = sc.transform(&rows[0]);
        assert!((x[3] - 2.0 * 1.0 / 0.5f64.sqrt()).abs() < 1e-9, "{x:?}");
    }

    #[test]
    fn kmeans_is_deterministic_and_flags_outliers() {
        let data = training();
        let refs: Vec<&ServiceSample> = data.iter().collect();
        let cfg = KMeansConfig::default();
        let a = KMeansModel::fit("a", 1, 0, &refs, &cfg).unwrap();
        let b = KMeansModel::fit("a", 1, 0, &refs, &cfg).unwrap();
        assert_eq!(a, b, "same data and seed give the same model");
        assert_eq!(a.centroids.len(), 3);
        let normal = a.score(&sample(1000, 0.3, 500, 5));
        assert!(!normal.anomaly, "{normal:?}");
        let slow = a.score(&sample(1000, 2.0, 500, 5));
        assert!(slow.anomaly && slow.score > 1.0, "{slow:?}");
        assert_eq!(slow.algorithm, Algorithm::KMeans);
        assert_eq!(slow.id, "a:60000000");
        // At most ~1 % of the training set lies beyond the threshold.
        let flagged = data.iter().filter(|s| a.score(s).anomaly).count();
        assert!(flagged <= 3, "{flagged}");
    }

    #[test]
    fn kmeans_trains_on_normal_samples_of_the_window() {
        let mut data = training();
        // An abnormal sample inside the window and a normal one outside it.
        data.push(sample(10, 5.0, 100, 0));
        data.push(ServiceSample::new("a", -10 * 86_400_000, 0.1, 100, 0));
        let now = 300 * 60_000;
        let cfg = KMeansConfig::default();
        let m = KMeansModel::train("a", &data, &[], &Feedback::new(), now, 1, &cfg).unwrap();
        assert_eq!(m.version.n_train, 300);
        // Feedback can relabel the slow sample as normal.
        let mut fb = Feedback::new();
        fb.insert(ServiceSample::make_id("a", 600_000), false);
        let m = KMeansModel::train("a", &data, &[], &fb, now, 2, &cfg).unwrap();
        assert_eq!(m.version.n_train, 301);
        assert!(KMeansModel::train("b", &data, &[], &fb, now, 1, &cfg).is_err());
    }

    #[test]
    fn daily_profile_recovers_the_cycle_and_measures_deviations() {
        // Two days of a daily cycle: count 1000 · (1 + 0.5 sin θ), response time 0.2 s ·
        // (1 + 0.2 cos θ), in UTC+2.
        let spec = Seasonal {
            utc_offset_minutes: 120,
            ..Default::default()
        };
        let at = |m: i64, factor: f64, rt_factor: f64| {
            let angle = std::f64::consts::TAU * ((m + 120).rem_euclid(1440)) as f64 / 1440.0;
            let n = (1000.0 * (1.0 + 0.5 * angle.sin()) * factor).round() as u64;
            let rt = 0.2 * (1.0 + 0.2 * angle.cos()) * rt_factor;
            ServiceSample::new("a", m * 60_000, rt, n, 0)
        };
        let train: Vec<ServiceSample> = (0..2880).map(|m| at(m, 1.0, 1.0)).collect();
        let refs: Vec<&ServiceSample> = train.iter().collect();
        let p = DailyProfile::fit(&spec, &refs);
        for m in [0, 300, 777, 1439] {
            let [c, r] = p.deviations(&at(m, 1.0, 1.0));
            // ln of a sine is not exactly two harmonics: within a few percent.
            assert!(c.abs() < 0.03 && r.abs() < 0.01, "minute {m}: {c} {r}");
        }
        // A fifth of the usual traffic, at the peak as at the trough; three times the usual
        // response time.
        for m in [240, 960] {
            let [c, _] = p.deviations(&at(m, 0.2, 1.0));
            assert!((c - 0.2f64.ln()).abs() < 0.04, "minute {m}: {c}");
            let [_, r] = p.deviations(&at(m, 1.0, 3.0));
            assert!((r - 3f64.ln()).abs() < 0.02, "minute {m}: {r}");
        }
        // Too few samples: a flat profile at their mean; none: flat at 0.
        let few = DailyProfile::fit(&spec, &refs[..3]);
        assert_eq!(few.harmonics, 0);
        assert_eq!(few.count.len(), 1);
        let none = DailyProfile::fit(&spec, &[]);
        assert_eq!(none.count, [0.0]);
        // The spec adds the two deviations after the base features.
        let fspec = FeatureSpec {
            seasonal: Some(spec),
            ..Default::default()
        };
        let f = fspec.raw(&at(960, 0.2, 1.0), Some(&p));
        assert_eq!(f.len(), NF + 2);
        assert!(f[3] < -1.5 && f[4].abs() < 0.05, "{f:?}");
        assert_eq!(fspec.weights().len(), NF + 2);
    }

    #[test]
    fn forest_leaves_out_unreviewed_recent_samples() {
        let mut data = training();
        for i in 0..30 {
            data.push(sample(400 + i, 0.2, 500, 200));
        }
        let now = 1000 * 60_000;
        // Ten minutes just before training: rule-normal, no feedback yet.
        for i in 0..10 {
            data.push(sample(990 + i, 0.2, 700, 7));
        }
        let mut fb = Feedback::new();
        fb.insert(ServiceSample::make_id("a", 995 * 60_000), true);
        let cfg = ForestConfig {
            n_trees: 5,
            review_delay_ms: 60 * 60_000,
            ..Default::default()
        };
        let m = ForestModel::train("a", &data, &[], &fb, now, 1, &cfg).unwrap();
        assert_eq!(
            m.version.n_train,
            300 + 30 + 1,
            "only the reviewed recent sample"
        );
        let all = ForestConfig {
            review_delay_ms: 0,
            ..cfg
        };
        let m = ForestModel::train("a", &data, &[], &fb, now, 1, &all).unwrap();
        assert_eq!(m.version.n_train, 300 + 30 + 10);
    }

    #[test]
    fn forest_reports_probabilities_deterministically() {
        let mut data = training();
        for i in 0..30 {
            data.push(sample(400 + i, 2.0 + 0.05 * i as f64, 500, 5));
            data.push(sample(500 + i, 0.2, 500, 200));
        }
        let now = 1000 * 60_000;
        let cfg = ForestConfig {
            n_trees: 20,
            ..Default::default()
        };
        let m = ForestModel::train("a", &data, &[], &Feedback::new(), now, 1, &cfg).unwrap();
        let m2 = ForestModel::train("a", &data, &[], &Feedback::new(), now, 1, &cfg).unwrap();
        let probe = [
            sample(2000, 0.2, 1000, 10),
            sample(2001, 3.0, 500, 5),
            sample(2002, 0.2, 500, 300),
        ];
        let refs: Vec<&ServiceSample> = probe.iter().collect();
        let r = m.score_all(&refs).unwrap();
        assert_eq!(r, m2.score_all(&refs).unwrap());
        assert!(!r[0].anomaly && r[0].score < 0.5, "{:?}", r[0]);
        assert!(r[1].anomaly && r[1].score > 0.5, "{:?}", r[1]);
        assert!(r[2].anomaly, "{:?}", r[2]);
        assert_eq!(r[1].algorithm, Algorithm::RandomForest);
        assert_eq!(
            serde_json::to_value(&r[1]).unwrap()["algorithm"],
            "random_forest"
        );
        // All-normal labels give a constant model.
        let normal: Vec<&ServiceSample> = data.iter().take(50).collect();
        let c = ForestModel::fit("a", 1, 0, &normal, &[false; 50], &cfg).unwrap();
        assert_eq!(c.score(&probe[1]).unwrap().score, 0.0);
    }

    #[test]
    fn retrain_schedule() {
        let day = 86_400_000;
        let s = RetrainSchedule::default();
        assert_eq!(s.next_after(0), 60_000);
        assert_eq!(s.next_after(60_000), day + 60_000);
        assert_eq!(s.next_after(day - 1), day + 60_000);
        // 00:01 in UTC+8 is 16:01 UTC of the previous day.
        let cn = RetrainSchedule {
            minute_of_day: 1,
            utc_offset_minutes: 480,
        };
        assert_eq!(cn.next_after(0), 16 * 3_600_000 + 60_000);
    }

    #[test]
    fn newer_model_replaces_older() {
        let data = training();
        let refs: Vec<&ServiceSample> = data.iter().collect();
        let cfg = KMeansConfig::default();
        let mut reg = ModelRegistry::default();
        assert_eq!(reg.next_version("a", Algorithm::KMeans), 1);
        let m1 = KMeansModel::fit("a", 1, 100, &refs, &cfg).unwrap();
        assert!(reg.install(Model::KMeans(m1.clone())));
        assert_eq!(reg.next_version("a", Algorithm::KMeans), 2);
        assert!(!reg.install(Model::KMeans(m1.clone())), "same version");
        let old = KMeansModel::fit("a", 0, 999, &refs, &cfg).unwrap();
        assert!(!reg.install(Model::KMeans(old)), "older version");
        let m2 = KMeansModel::fit("a", 2, 200, &refs[..150], &cfg).unwrap();
        assert!(reg.install(Model::KMeans(m2)));
        assert_eq!(
            reg.get("a", Algorithm::KMeans).unwrap().version().version,
            2
        );
        assert!(reg.get("a", Algorithm::RandomForest).is_none());
        let scored = reg
            .score("a", Algorithm::KMeans, &refs[..2])
            .unwrap()
            .unwrap();
        assert_eq!(scored[0].model_version, 2);
        assert!(reg.score("b", Algorithm::KMeans, &refs).is_none());
    }
}
