//! Deterministic synthetic service traffic with labelled anomaly episodes.
//!
//! [`generate`] produces one [`ServiceSample`] per app per minute over `opts.days` simulated
//! days, and the list of anomaly [`Episode`]s it injected. Every random choice comes from one
//! `ChaCha8Rng` seeded with `opts.seed`, so the same options give the same output.
//!
//! Normal traffic of app `i` (profiles cycle over three services: a busy API, a mid-sized web
//! app, a small internal service):
//! - requests per minute: `base_rate · season(t)` with a daily sine (peak 14:00, trough 02:00,
//!   amplitude ±60 %), Poisson-like noise (`√λ`) and 3 % extra jitter;
//! - response time: `base_rt · (1 + 0.15 · (load − 1))` (slightly slower under load) times
//!   log-normal noise (σ = 0.06);
//! - failures: binomial-like around a base fail rate (0.1–0.4 %) with log-normal jitter.
//!
//! Episodes (`opts.episodes_per_kind` of each kind per app per day, non-overlapping: each
//! day is cut into equal slots and each slot holds one episode at a random offset), lasting
//! 3–30 minutes:
//! - `latency_spike`: response time × 3–8 (usually still below the 1.2 s normal rule);
//! - `error_burst`: fail rate + 5–40 %;
//! - `traffic_drop`: requests × 2–25 %;
//! - `traffic_surge`: requests × 2.5–4 (latency follows the load as in normal traffic).

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::sample::{ServiceSample, BUCKET_MS};

/// Kinds of injected anomaly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EpisodeKind {
    LatencySpike,
    ErrorBurst,
    TrafficDrop,
    TrafficSurge,
}

impl EpisodeKind {
    pub const ALL: [EpisodeKind; 4] = [
        EpisodeKind::LatencySpike,
        EpisodeKind::ErrorBurst,
        EpisodeKind::TrafficDrop,
        EpisodeKind::TrafficSurge,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EpisodeKind::LatencySpike => "latency_spike",
            EpisodeKind::ErrorBurst => "error_burst",
            EpisodeKind::TrafficDrop => "traffic_drop",
            EpisodeKind::TrafficSurge => "traffic_surge",
        }
    }
}

/// One injected anomaly: minutes `[start_ms, end_ms)` of one app.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    pub appid: String,
    pub kind: EpisodeKind,
    pub start_ms: i64,
    pub end_ms: i64,
    /// The factor (latency, traffic) or added fail rate (errors) applied.
    pub magnitude: f64,
}

impl Episode {
    pub fn contains(&self, s: &ServiceSample) -> bool {
        s.appid == self.appid && s.time_ms >= self.start_ms && s.time_ms < self.end_ms
    }
}

/// Generator options.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceGenOptions {
    pub seed: u64,
    pub apps: usize,
    pub days: usize,
    /// Start of day 0 (ms since the epoch; a UTC midnight by default: 2026-01-01).
    pub start_ms: i64,
    /// Episodes of each kind per app per day.
    pub episodes_per_kind: usize,
}

impl Default for ServiceGenOptions {
    fn default() -> Self {
        ServiceGenOptions {
            seed: 1,
            apps: 3,
            days: 3,
            start_ms: 1_767_225_600_000,
            episodes_per_kind: 2,
        }
    }
}

/// Generated samples (ordered by time, then app) and the episodes (ordered by start).
#[derive(Clone, Debug, Default)]
pub struct ServiceTraffic {
    pub samples: Vec<ServiceSample>,
    pub episodes: Vec<Episode>,
}

impl ServiceTraffic {
    /// The episode a sample belongs to, if any.
    pub fn episode_of(&self, s: &ServiceSample) -> Option<&Episode> {
        self.episodes.iter().find(|e| e.contains(s))
    }

    /// Writes the samples as JSON lines in the `cat_resource` shape.
    pub fn write_samples_jsonl(&self, mut w: impl std::io::Write) -> std::io::Result<()> {
        for s in &self.samples {
            serde_json::to_writer(&mut w, s)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    }

    /// Writes simulated operator feedback as JSON lines: every sample of every episode marked
    /// anomalous, known (`at`) `delay_ms` after its episode ended.
    pub fn write_feedback_jsonl(
        &self,
        mut w: impl std::io::Write,
        delay_ms: i64,
    ) -> std::io::Result<()> {
        for s in &self.samples {
            if let Some(e) = self.episode_of(s) {
                let line = serde_json::json!({
                    "id": s.id,
                    "anomalous": true,
                    "at": e.end_ms + delay_ms,
                });
                writeln!(w, "{line}")?;
            }
        }
        Ok(())
    }

    /// Writes the samples to `path`, the episodes to `path` with extension `episodes.csv` and
    /// the feedback (30 minutes after each episode) to `feedback.jsonl`; returns those paths.
    pub fn write_files(
        &self,
        path: &std::path::Path,
    ) -> std::io::Result<(std::path::PathBuf, std::path::PathBuf)> {
        use std::io::Write;
        let create = |p: &std::path::Path| {
            std::fs::File::create(p)
                .map(std::io::BufWriter::new)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))
        };
        let episodes = path.with_extension("episodes.csv");
        let feedback = path.with_extension("feedback.jsonl");
        let mut w = create(path)?;
        self.write_samples_jsonl(&mut w)?;
        w.flush()?;
        let mut w = create(&episodes)?;
        self.write_episodes_csv(&mut w)?;
        w.flush()?;
        let mut w = create(&feedback)?;
        self.write_feedback_jsonl(&mut w, 30 * 60_000)?;
        w.flush()?;
        Ok((episodes, feedback))
    }

    /// Writes the episodes as CSV: `appid,kind,start_ms,end_ms,magnitude`.
    pub fn write_episodes_csv(&self, mut w: impl std::io::Write) -> std::io::Result<()> {
        writeln!(w, "appid,kind,start_ms,end_ms,magnitude")?;
        for e in &self.episodes {
            writeln!(
                w,
                "{},{},{},{},{:.4}",
                e.appid,
                e.kind.name(),
                e.start_ms,
                e.end_ms,
                e.magnitude
            )?;
        }
        Ok(())
    }
}

struct Profile {
    appid: String,
    rate: f64,
    rt: f64,
    fail: f64,
}

fn profile(i: usize) -> Profile {
    let (rate, rt, fail) = [
        (2000.0, 0.12, 0.002),
        (600.0, 0.35, 0.004),
        (150.0, 0.05, 0.001),
    ][i % 3];
    let scale = 1.0 + (i / 3) as f64 * 0.5;
    Profile {
        appid: (1001 + i).to_string(),
        rate: rate * scale,
        rt,
        fail,
    }
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Daily load factor at `minute_of_day`: 1 ± 0.6, peak at 14:00.
pub fn season(minute_of_day: i64) -> f64 {
    let x = (minute_of_day - 8 * 60) as f64 / 1440.0;
    1.0 + 0.6 * (std::f64::consts::TAU * x).sin()
}

/// Generates the traffic described in the module docs.
pub fn generate(opts: &ServiceGenOptions) -> ServiceTraffic {
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let profiles: Vec<Profile> = (0..opts.apps).map(profile).collect();
    // Episodes first, so that the noise does not depend on them.
    let mut episodes = Vec::new();
    let per_day = opts.episodes_per_kind * EpisodeKind::ALL.len();
    if per_day > 0 {
        let slot = 1440 / per_day as i64;
        for day in 0..opts.days as i64 {
            for p in &profiles {
                let mut kinds: Vec<EpisodeKind> = EpisodeKind::ALL
                    .iter()
                    .flat_map(|&k| std::iter::repeat_n(k, opts.episodes_per_kind))
                    .collect();
                kinds.shuffle(&mut rng);
                for (j, kind) in kinds.into_iter().enumerate() {
                    let len = rng.random_range(3..=30i64).min(slot - 2);
                    let offset = rng.random_range(1..=(slot - len - 1).max(1));
                    let start = opts.start_ms + (day * 1440 + j as i64 * slot + offset) * BUCKET_MS;
                    let magnitude = match kind {
                        EpisodeKind::LatencySpike => rng.random_range(3.0..8.0),
                        EpisodeKind::ErrorBurst => rng.random_range(0.05..0.4),
                        EpisodeKind::TrafficDrop => rng.random_range(0.02..0.25),
                        EpisodeKind::TrafficSurge => rng.random_range(2.5..4.0),
                    };
                    episodes.push(Episode {
                        appid: p.appid.clone(),
                        kind,
                        start_ms: start,
                        end_ms: start + len * BUCKET_MS,
                        magnitude,
                    });
                }
            }
        }
    }
    episodes.sort_by(|a, b| (a.start_ms, &a.appid).cmp(&(b.start_ms, &b.appid)));

    let minutes = opts.days as i64 * 1440;
    let mut samples = Vec::with_capacity(minutes as usize * profiles.len());
    for m in 0..minutes {
        let t = opts.start_ms + m * BUCKET_MS;
        for p in &profiles {
            let ep = episodes
                .iter()
                .find(|e| e.appid == p.appid && t >= e.start_ms && t < e.end_ms);
            let mut load = season(m % 1440);
            match ep.map(|e| (e.kind, e.magnitude)) {
                Some((EpisodeKind::TrafficDrop, f)) | Some((EpisodeKind::TrafficSurge, f)) => {
                    load *= f
                }
                _ => {}
            }
            let lambda = p.rate * load;
            let count =
                (lambda + lambda.sqrt() * normal(&mut rng) + 0.03 * lambda * normal(&mut rng))
                    .round()
                    .max(0.0) as u64;
            let mut rt = p.rt * (1.0 + 0.15 * (load - 1.0)) * (0.06 * normal(&mut rng)).exp();
            let mut fail_p = p.fail * (0.3 * normal(&mut rng)).exp();
            match ep.map(|e| (e.kind, e.magnitude)) {
                Some((EpisodeKind::LatencySpike, f)) => rt *= f,
                Some((EpisodeKind::ErrorBurst, f)) => fail_p += f,
                _ => {}
            }
            let mu = count as f64 * fail_p.min(1.0);
            let fails = (mu + mu.sqrt() * normal(&mut rng))
                .round()
                .clamp(0.0, count as f64) as u64;
            let rt = if count == 0 { 0.0 } else { rt };
            samples.push(ServiceSample::new(p.appid.clone(), t, rt, count, fails));
        }
    }
    ServiceTraffic { samples, episodes }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_labelled() {
        let opts = ServiceGenOptions {
            days: 1,
            ..Default::default()
        };
        let a = generate(&opts);
        let b = generate(&opts);
        assert_eq!(a.samples, b.samples);
        assert_eq!(a.episodes, b.episodes);
        assert_eq!(a.samples.len(), 3 * 1440);
        assert_eq!(a.episodes.len(), 3 * 4 * opts.episodes_per_kind);
        // Episodes of one app never overlap.
        for w in a.episodes.windows(2) {
            if w[0].appid == w[1].appid {
                assert!(w[0].end_ms <= w[1].start_ms);
            }
        }
        // Every sample is valid; error bursts have a high fail rate.
        for s in &a.samples {
            assert!(s.clone().normalize().is_ok());
            if let Some(e) = a.episode_of(s) {
                if e.kind == EpisodeKind::ErrorBurst {
                    assert!(s.fail_rate() > 0.02, "{s:?}");
                }
            }
        }
        let mut out = Vec::new();
        a.write_samples_jsonl(&mut out).unwrap();
        let first: ServiceSample =
            serde_json::from_str(std::str::from_utf8(&out).unwrap().lines().next().unwrap())
                .unwrap();
        assert_eq!(first, a.samples[0]);
        let other = generate(&ServiceGenOptions {
            seed: 2,
            days: 1,
            ..Default::default()
        });
        assert_ne!(a.samples, other.samples);
    }
}
