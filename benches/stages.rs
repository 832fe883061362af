//! Criterion benchmarks of the hot per-line stages and of the windowed dataflow.
//!
//! `cargo bench --bench stages`. Whole-pipeline throughput and memory are measured by
//! `scripts/bench-replay.sh` on the release binary (see BENCHMARKS.md).

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use antispider::dataprocess::{self, CookieNames, DataRules, MaskMode, Masker};
use antispider::format::{parse_line, LogFormat, ParseLimits};
use antispider::gen::{generate, GenOptions};
use antispider::harness::{self, Scenario};
use antispider::rulecompute::WindowSpec;
use antispider::rules::RuleTables;

fn sample_lines(format: LogFormat, n: u64) -> Vec<Vec<u8>> {
    let opts = GenOptions {
        lines: n,
        format,
        malformed_per_mille: 0,
        ..Default::default()
    };
    let (mut log, mut truth) = (Vec::new(), Vec::new());
    generate(&opts, &mut log, &mut truth).expect("generate");
    log.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

fn rules() -> RuleTables {
    RuleTables::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")).expect("rules")
}

fn per_line(c: &mut Criterion) {
    let limits = ParseLimits::default();
    let tables = rules();
    let data_rules = DataRules::compile(&tables.filter, &tables.classify, &tables.analyze).unwrap();
    let masker = Masker::new(MaskMode::Hmac, b"bench");
    let cookies = CookieNames::default();
    for format in [LogFormat::Cs, LogFormat::Combined, LogFormat::Json] {
        let lines = sample_lines(format, 20_000);
        let mut g = c.benchmark_group(format!("per_line/{format}"));
        g.throughput(Throughput::Elements(lines.len() as u64));
        g.bench_function("parse", |b| {
            b.iter(|| {
                lines
                    .iter()
                    .filter(|l| parse_line(format, l, &limits).is_ok())
                    .count()
            })
        });
        let records: Vec<_> = lines
            .iter()
            .filter_map(|l| parse_line(format, l, &limits).ok())
            .collect();
        g.bench_function("dataprocess", |b| {
            b.iter(|| {
                records
                    .iter()
                    .filter(|r| {
                        matches!(
                            dataprocess::process(&data_rules, &masker, &cookies, (*r).clone()),
                            dataprocess::Outcome::Processed(_)
                        )
                    })
                    .count()
            })
        });
        // The service samples' app of each record (`rules/service_app_rule.toml`): every
        // line is mapped, and a single `RegexSet` here once cost 9 % of a replay.
        let mut apps =
            antispider::anomaly::AppRules::new(tables.service_app.clone()).expect("app rules");
        g.bench_function("service_app", |b| {
            b.iter(|| {
                records
                    .iter()
                    .filter(|r| apps.request_by_rule(r).is_some())
                    .count()
            })
        });
        g.finish();
    }
}

fn windowed_dataflow(c: &mut Criterion) {
    let tables = rules();
    let data_rules = DataRules::compile(&tables.filter, &tables.classify, &tables.analyze).unwrap();
    let masker = Masker::new(MaskMode::Hmac, b"bench");
    let cookies = CookieNames::default();
    let limits = ParseLimits::default();
    let events: Vec<_> = sample_lines(LogFormat::Cs, 40_000)
        .iter()
        .filter_map(|l| parse_line(LogFormat::Cs, l, &limits).ok())
        .filter_map(
            |r| match dataprocess::process(&data_rules, &masker, &cookies, r) {
                dataprocess::Outcome::Processed(p) if p.behavior_type.id() == 0 => Some(p),
                _ => None,
            },
        )
        .map(|p| {
            let ip = p.remote_addr.parse().unwrap();
            antispider::engine::win_event(ip, p)
        })
        .collect();
    let last = events.iter().map(|e| e.t_ms).max().unwrap_or(0);
    let spec = WindowSpec::default();
    let mut g = c.benchmark_group("dataflow");
    g.sample_size(10);
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("window_indicators_scores", |b| {
        b.iter(|| {
            harness::run(Scenario {
                spec,
                rules: tables.clone(),
                events: events.clone(),
                ticks: vec![spec.tick_of(last)],
                workers: 1,
                ..Default::default()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, per_line, windowed_dataflow);
criterion_main!(benches);
