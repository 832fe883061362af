//! Service anomaly detection (SPEC §6, issue 4).
//!
//! - [`sample`]: per-app per-minute service samples, from the access logs (a differential
//!   aggregate) or posted in the original's `cat_resource` shape; the app-mapping rule table;
//! - [`normal`]: the normal-sample rule table;
//! - [`model`]: standardisation, per-app k-means and a random forest (smartcore), model
//!   versions and per-sample results;
//! - [`score`]: models as a collection: scoring the live samples in the dataflow, re-scoring
//!   them when a model version changes;
//! - [`gen`]: deterministic multi-day service traffic with labelled anomaly episodes;
//! - [`config`]: the `[anomaly]` config section;
//! - [`wire`]: the service part of the one dataflow (sample parts and model keys in, samples
//!   and scored rows captured out);
//! - [`hub`]: the result store and inboxes shared with the HTTP API;
//! - [`feedback`]: operator feedback from the MySQL table `cat_feedback`;
//! - [`driver`]: per worker, feeds samples, trains and installs models, drains the results.

pub mod config;
pub mod driver;
pub mod feedback;
pub mod gen;
pub mod hub;
pub mod model;
pub mod normal;
pub mod sample;
pub mod score;
pub mod wire;

pub use config::AnomalyConfig;
pub use driver::{AnomalyDriver, ResultSink, ServiceSummary};
pub use hub::AnomalyHub;
pub use model::{AnomalyResult, ModelVersion};
pub use normal::{is_normal, NormalRule};
pub use sample::{
    service_samples, AppRule, AppRules, BucketKey, BucketSums, Request, ServiceSample,
};
pub use score::{score_samples, ModelKey, ModelStore, ScoredRow};
