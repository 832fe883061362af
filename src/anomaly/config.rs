//! The `[anomaly]` section of a pipeline config: model settings, the retraining schedule, the
//! live window and optional inputs (SPEC §6).
//!
//! Every key has a default (SPEC §6's: k = 3, seed 42, quantile 0.99, the three base features,
//! training on the last 24 h, daily retraining at 00:01), so a config names only what differs:
//!
//! ```toml
//! [anomaly]
//! train_window_hours = 48
//! kmeans = { k = 12, quantile = 0.995 }
//! features = { time_of_day = true, log_count = true }
//! schedule = { minute_of_day = 1, utc_offset_minutes = 480 }
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::model::{FeatureSpec, ForestConfig, KMeansConfig, RetrainSchedule, Seasonal, TimeOfDay};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnomalyConfig {
    /// Derive samples from the access logs, train, score and write `service_anomalies.jsonl`.
    pub enabled: bool,
    /// Models train on the samples of the last `train_window_hours` before the training time.
    pub train_window_hours: f64,
    /// An app gets a model (of either kind) only with at least this many samples in the
    /// training window; an app without any model is trained as soon as it has them.
    pub min_train_samples: usize,
    /// Samples stay in the dataflow this long after their minute closes; a new model version
    /// re-scores exactly these "live" samples. Results of older samples are kept (API, files).
    pub live_minutes: u64,
    /// Daily retraining time (local to `utc_offset_minutes`).
    pub schedule: RetrainSchedule,
    pub kmeans: KMeansSettings,
    pub forest: ForestSettings,
    pub features: FeatureSettings,
    /// Results kept for the API, in days of sample time (older ones are dropped).
    pub retention_days: f64,
    /// External samples (cat_resource JSON lines, ordered by time) replayed with the logs.
    pub samples_file: Option<PathBuf>,
    /// Operator feedback JSON lines (`{"id": "...", "anomalous": true, "at": ms}`).
    pub feedback_file: Option<PathBuf>,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        AnomalyConfig {
            enabled: true,
            train_window_hours: 24.0,
            min_train_samples: 360,
            live_minutes: 60,
            schedule: RetrainSchedule::default(),
            kmeans: KMeansSettings::default(),
            forest: ForestSettings::default(),
            features: FeatureSettings::default(),
            retention_days: 30.0,
            samples_file: None,
            feedback_file: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KMeansSettings {
    pub k: usize,
    pub max_iter: usize,
    pub seed: u64,
    /// Quantile of the training distances above which a sample is anomalous.
    pub quantile: f64,
}

impl Default for KMeansSettings {
    fn default() -> Self {
        let d = KMeansConfig::default();
        KMeansSettings {
            k: d.k,
            max_iter: d.max_iter,
            seed: d.seed,
            quantile: d.quantile,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForestSettings {
    pub n_trees: u16,
    pub max_depth: Option<u16>,
    pub min_samples_leaf: usize,
    pub seed: u64,
    /// P(anomaly) above which a sample is flagged.
    pub threshold: f64,
    /// Minutes operators take to review a sample: younger training samples without feedback
    /// are left out of the forest's training set.
    pub review_delay_minutes: u64,
}

impl Default for ForestSettings {
    fn default() -> Self {
        let d = ForestConfig::default();
        ForestSettings {
            n_trees: d.n_trees,
            max_depth: d.max_depth,
            min_samples_leaf: d.min_samples_leaf,
            seed: d.seed,
            threshold: d.threshold,
            review_delay_minutes: (d.review_delay_ms / 60_000) as u64,
        }
    }
}

/// Features beyond SPEC §6's three (`[response_time, request_count, fail_rate]`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeatureSettings {
    /// Adds `sin`/`cos` of the local minute of day (offset `schedule.utc_offset_minutes`).
    pub time_of_day: bool,
    /// Weight of the two time-of-day features (default 1).
    pub time_of_day_weight: Option<f64>,
    /// Uses `ln(1 + request_count)`.
    pub log_count: bool,
    /// Adds the deviations of `ln(1 + request_count)` and `ln(response_time)` from the app's
    /// daily profile (fitted per model on its normal training samples; local time offset
    /// `schedule.utc_offset_minutes`).
    pub seasonal: bool,
    /// Daily harmonics of the profile (default 2).
    pub seasonal_harmonics: Option<usize>,
    /// Weight of the two seasonal features (default 1).
    pub seasonal_weight: Option<f64>,
}

impl AnomalyConfig {
    pub fn window_ms(&self) -> i64 {
        (self.train_window_hours * 3_600_000.0).round() as i64
    }

    pub fn live_ms(&self) -> u64 {
        self.live_minutes * 60_000
    }

    pub fn feature_spec(&self) -> FeatureSpec {
        FeatureSpec {
            time_of_day: self.features.time_of_day.then(|| TimeOfDay {
                weight: self.features.time_of_day_weight.unwrap_or(1.0),
                utc_offset_minutes: self.schedule.utc_offset_minutes,
            }),
            log_count: self.features.log_count,
            seasonal: self.features.seasonal.then(|| Seasonal {
                utc_offset_minutes: self.schedule.utc_offset_minutes,
                harmonics: self.features.seasonal_harmonics.unwrap_or(2),
                weight: self.features.seasonal_weight.unwrap_or(1.0),
            }),
        }
    }

    pub fn kmeans_config(&self) -> KMeansConfig {
        KMeansConfig {
            k: self.kmeans.k,
            max_iter: self.kmeans.max_iter,
            seed: self.kmeans.seed,
            quantile: self.kmeans.quantile,
            window_ms: self.window_ms(),
            features: self.feature_spec(),
        }
    }

    pub fn forest_config(&self) -> ForestConfig {
        ForestConfig {
            n_trees: self.forest.n_trees,
            max_depth: self.forest.max_depth,
            min_samples_leaf: self.forest.min_samples_leaf,
            seed: self.forest.seed,
            threshold: self.forest.threshold,
            window_ms: self.window_ms(),
            review_delay_ms: self.forest.review_delay_minutes as i64 * 60_000,
            features: self.feature_spec(),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.train_window_hours.is_nan() || self.train_window_hours <= 0.0 {
            return Err("anomaly.train_window_hours must be positive".into());
        }
        if self.kmeans.k == 0 {
            return Err("anomaly.kmeans.k must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.kmeans.quantile) {
            return Err("anomaly.kmeans.quantile must be within 0..=1".into());
        }
        if !(0.0..=1.0).contains(&self.forest.threshold) {
            return Err("anomaly.forest.threshold must be within 0..=1".into());
        }
        if self.forest.n_trees == 0 {
            return Err("anomaly.forest.n_trees must be at least 1".into());
        }
        if self.features.seasonal_harmonics.is_some_and(|h| h > 12) {
            return Err("anomaly.features.seasonal_harmonics must be at most 12".into());
        }
        if self.live_minutes == 0 {
            return Err("anomaly.live_minutes must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_partial_tables() {
        let c: AnomalyConfig = toml::from_str("").unwrap();
        assert_eq!(c, AnomalyConfig::default());
        assert_eq!(c.kmeans_config(), KMeansConfig::default());
        let c: AnomalyConfig = toml::from_str(
            "train_window_hours = 48\nkmeans = { k = 12 }\nfeatures = { time_of_day = true }\n",
        )
        .unwrap();
        assert_eq!(c.kmeans.k, 12);
        assert_eq!(c.kmeans.seed, 42);
        assert_eq!(c.window_ms(), 48 * 3_600_000);
        assert!(c.feature_spec().time_of_day.is_some());
        assert!(toml::from_str::<AnomalyConfig>("kmeans = { kk = 1 }").is_err());
        // The daily-profile features take the schedule's UTC offset; the forest's review
        // delay is an hour unless set.
        let c: AnomalyConfig = toml::from_str(
            "features = { seasonal = true }\nschedule = { utc_offset_minutes = 480 }\n",
        )
        .unwrap();
        let s = c.feature_spec().seasonal.unwrap();
        assert_eq!((s.utc_offset_minutes, s.harmonics, s.weight), (480, 2, 1.0));
        assert_eq!(c.forest_config().review_delay_ms, 3_600_000);
        let c: AnomalyConfig = toml::from_str("forest = { review_delay_minutes = 0 }").unwrap();
        assert_eq!(c.forest_config().review_delay_ms, 0);
        let bad = AnomalyConfig {
            kmeans: KMeansSettings {
                quantile: 1.5,
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }
}
