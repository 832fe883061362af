//! The driver: reads lines, runs dataprocess, feeds the dataflow in event time, writes sinks.
//!
//! Each timely worker runs [`worker_main`]. Workers read disjoint shares of the input (every
//! `peers`-th line), so parsing scales with workers; the dataflow exchanges by IP. The input
//! time of a worker is the newest tick it has seen minus the allowed lateness; an event whose
//! tick is already behind it is late and dead-lettered.
//!
//! The workers may be spread over several processes (`cluster`): `index` and `peers` are then
//! the cluster's, and what the workers need to know of each other is in `Shared::view`.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::config::{Config, ProcessedFormat, SourceKind, WindowInput};
use crate::dataflow::{self, Pipeline};
use crate::dataprocess::{self, CookieNames, DataRules, Masker, Outcome};
use crate::deadletter::DeadLetter;
use crate::event::{BehaviorType, ProcessedData};
use crate::format::{parse_line, ParseLimits};
use crate::opprof::Phase;
use crate::rulecompute::{stable_hash, Indicators, Time, WinEvent, ABSENT, LATEST_EVENT_TIME_MS};
use crate::rules::feed::RuleFeed;
use crate::rules::{IpMatcher, RuleTables};
use crate::sink::blacklist::{self, Action};
use crate::sink::files::{BackgroundFile, Batched, SharedFile};
use crate::sink::kafka::{KafkaSink, Topic};
use crate::sink::mysql::MysqlBlacklistSink;
use crate::sink::redis::{blacklist_value, RedisSink};
use crate::source::kafka::Position;
use crate::source::{FileSource, KafkaSource, LineSource, Poll, RawLine, SharedLog};

/// Counts of what happened to the input, summed over workers.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counters {
    pub lines_read: u64,
    pub parsed: u64,
    pub filtered: u64,
    pub processed_query: u64,
    pub processed_book: u64,
    pub processed_other: u64,
    pub dead_lettered: u64,
    /// Dead letters by reason (`late`, `bad_time`, the parse error kinds, ...).
    pub dead_lettered_by_reason: std::collections::BTreeMap<&'static str, u64>,
    pub late: u64,
    pub windowed: u64,
    pub decisions_add: u64,
    pub decisions_remove: u64,
    /// Lines re-read after a restart to rebuild the window (their outputs were written before).
    pub replayed: u64,
    /// Decisions recomputed while rebuilding the window (written before the restart).
    pub decisions_replayed: u64,
    pub kafka_commits: u64,
}

impl Counters {
    fn add(&mut self, o: &Counters) {
        self.lines_read += o.lines_read;
        self.parsed += o.parsed;
        self.filtered += o.filtered;
        self.processed_query += o.processed_query;
        self.processed_book += o.processed_book;
        self.processed_other += o.processed_other;
        self.dead_lettered += o.dead_lettered;
        for (reason, n) in &o.dead_lettered_by_reason {
            *self.dead_lettered_by_reason.entry(reason).or_default() += n;
        }
        self.late += o.late;
        self.windowed += o.windowed;
        self.decisions_add += o.decisions_add;
        self.decisions_remove += o.decisions_remove;
        self.replayed += o.replayed;
        self.decisions_replayed += o.decisions_replayed;
        self.kafka_commits += o.kafka_commits;
    }
}

/// What a run reports at the end.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub counters: Counters,
    /// Distinct IPs that were added to the blacklist by any flow.
    pub ips_blacklisted: usize,
    pub final_tick: Option<Time>,
    pub elapsed_secs: f64,
    pub lines_per_sec: f64,
    pub workers: usize,
    /// Line read → decision written (see `latency`).
    pub latency: crate::latency::LatencySummary,
}

/// How the engine runs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub config: Config,
    /// Keep running after the end of the input (follow the file, watch rules) until `stop`.
    pub live: bool,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// State shared by the workers of this process.
struct Shared {
    /// The log file (or stdin) this process reads, once for all its workers.
    log: Option<Arc<SharedLog>>,
    blacklist: SharedFile,
    processed_query: BackgroundFile,
    processed_book: BackgroundFile,
    deadletter: BackgroundFile,
    indicators_path: std::path::PathBuf,
    /// This process's place in the cluster (one process: the only one).
    cluster: crate::cluster::Cluster,
    /// What the workers of the whole cluster know of each other: done reading and the final
    /// tick, input times (followed by workers that have nothing to read: stdin is read by the
    /// first process; Kafka may have fewer partitions than workers), written decisions, re-reading
    /// after a restart (see `cluster`).
    view: Arc<crate::cluster::View>,
    lines_read: AtomicU64,
    stop: Arc<AtomicBool>,
    /// (flow, IP) pairs this engine has blacklisted now, for the high-frequency tag (SPEC §3.7).
    /// Only the sink writes it; the tag of a line reads it, so a decision tags the lines that
    /// follow it, in every worker of the process.
    /// With several processes, the decisions of the others are merged in (`cluster`).
    self_blacklisted: Arc<crate::cluster::SelfBlacklist>,
    kafka: Option<Arc<KafkaSink>>,
    /// The live rule tables (directory or MySQL), polled by the first worker of the process
    /// (and edited through the API).
    rules: Arc<RuleFeed>,
    /// `CSANTI_ANTI_BLACK<ip>:<flowId>` keys (SPEC §5) and their backup.
    redis: Option<RedisSink>,
    /// Blacklisted IPs into `nh_ip_blacklist`, once.
    mysql: Option<Arc<MysqlBlacklistSink>>,
    /// Service anomalies: results and inboxes shared with the API, models and captures.
    anomaly: Arc<crate::anomaly::AnomalyHub>,
    service: crate::anomaly::wire::ServiceShared,
    latency: crate::latency::LatencyRecorder,
    /// Link statistics and monitor records for Redis and the API (when either is on).
    monitor: Option<crate::monitor::Monitor>,
    /// Metrics, the blacklist and explain requests for the API.
    ops: Arc<crate::ops::OpsHub>,
}

impl Shared {
    /// Every worker has written its decisions before this tick.
    fn all_written_below(&self) -> Time {
        self.view.all_written_below()
    }

    /// Decisions at `tick` were already written by the run before a restart.
    fn already_written(&self, tick: Time) -> bool {
        if !self.view.all_live() {
            return true;
        }
        self.view.resume_tick().is_some_and(|resume| tick < resume)
    }
}

/// Runs the engine to the end of its input (or until `stop`), and returns the summary.
pub fn run(opts: RunOptions, stop: Arc<AtomicBool>) -> anyhow::Result<Summary> {
    run_with(opts, stop, Default::default(), Default::default())
}

/// [`run`], sharing the service-anomaly results and inboxes with `anomaly`, and the metrics,
/// blacklist, explain requests and rule feed with `ops` (the HTTP API).
pub fn run_with(
    opts: RunOptions,
    stop: Arc<AtomicBool>,
    anomaly: Arc<crate::anomaly::AnomalyHub>,
    ops: Arc<crate::ops::OpsHub>,
) -> anyhow::Result<Summary> {
    let mut opts = opts;
    if opts.config.source.kind == SourceKind::Kafka && opts.config.kafka.stop_at_end {
        // A bounded backfill: the end of the partitions is the end of the input.
        opts.live = false;
    }
    let cfg = opts.config.clone();
    cfg.validate()?;
    // Fail early, naming the source, if the rules do not load or compile.
    let rules = Arc::new(RuleFeed::start(&cfg)?);
    let (_, tables) = rules.current();
    DataRules::compile(&tables.filter, &tables.classify, &tables.analyze)
        .with_context(|| format!("{}: rule tables do not compile", rules.name))?;
    let out = &cfg.output.dir;
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    if cfg.source.kind == SourceKind::Generator && !cfg.source.path.exists() {
        generate_sample(&cfg)?;
    }

    let workers = cfg.engine.workers;
    // Several processes: each writes its share of the outputs to files of its own
    // (`blacklist.p1.jsonl`, ...); see `cluster::Cluster::output_path`.
    let mut cluster = crate::cluster::Cluster::from_config(&cfg.engine)?;
    if opts.live {
        // Merging ahead pays on a bounded input only (see `engine.merge_effort`).
        let default = crate::config::EngineConfig::default().merge_effort;
        if cluster.merge_effort != 0 && cluster.merge_effort != default {
            tracing::warn!(
                "engine.merge_effort = {} is not used for live input (only replays and Kafka \
                 backfills with stop_at_end merge ahead); remove the key or set it to 0",
                cluster.merge_effort
            );
        }
        cluster.merge_effort = 0;
    }
    let ext = match cfg.output.processed_format {
        ProcessedFormat::Cs => "cs",
        ProcessedFormat::Json => "jsonl",
    };
    let stdin = cfg.source.path == Path::new("-");
    let log = if cfg.source.kind == SourceKind::Kafka
        || cfg.source.path.as_os_str().is_empty()
        || (stdin && cluster.process != 0)
    {
        None
    } else {
        let follow = cfg.source.follow && opts.live;
        Some(
            SharedLog::open(&cfg.source.path, follow, cluster.threads)
                .with_context(|| format!("{}: cannot open log", cfg.source.path.display()))?,
        )
    };
    let shared = Arc::new(Shared {
        log,
        blacklist: SharedFile::create(&cluster.output_path(out, "blacklist.jsonl"))?,
        processed_query: BackgroundFile::create(
            &cluster.output_path(out, &format!("processed_query.{ext}")),
        )?,
        processed_book: BackgroundFile::create(
            &cluster.output_path(out, &format!("processed_book.{ext}")),
        )?,
        deadletter: BackgroundFile::create(&cluster.output_path(out, "deadletter.jsonl"))?,
        indicators_path: cluster.output_path(out, "indicators.jsonl"),
        view: Arc::new(crate::cluster::View::new(cluster.peers())),
        self_blacklisted: Arc::new(crate::cluster::SelfBlacklist::new(&cluster)),
        cluster: cluster.clone(),
        lines_read: AtomicU64::new(0),
        stop,
        rules,
        redis: if cfg.redis.enabled {
            Some(RedisSink::start(&cfg.redis)?)
        } else {
            None
        },
        mysql: if cfg.mysql.blacklist {
            Some(Arc::new(MysqlBlacklistSink::start(&cfg.mysql)?))
        } else {
            None
        },
        kafka: if cfg.kafka.produces() {
            Some(Arc::new(KafkaSink::new(&cfg.kafka)?))
        } else {
            None
        },
        anomaly,
        service: Default::default(),
        latency: crate::latency::LatencyRecorder::observed_by(&ops.metrics),
        monitor: ((cfg.redis.enabled || cfg.api.enabled) && cfg.redis.monitor_interval_secs > 0)
            .then(|| {
                crate::monitor::Monitor::new(
                    cfg.redis.monitor_interval_secs * 1000,
                    "antispider",
                    cfg.output.utc_offset_minutes,
                )
            }),
        ops: ops.clone(),
    });
    ops.attach(shared.rules.clone(), cluster.clone());
    // The workers are gone once this returns, however it returns.
    struct Detach(Arc<crate::ops::OpsHub>);
    impl Drop for Detach {
        fn drop(&mut self) {
            self.0.detach();
        }
    }
    let _detach = Detach(ops);

    let started = Instant::now();
    let progress = opts.progress.then(|| progress_bar(shared.clone()));
    if cluster.processes > 1 {
        tracing::info!(
            "process {} of {}, {} workers each; connecting to {}",
            cluster.process,
            cluster.processes,
            cluster.threads,
            cluster.addresses.join(", ")
        );
    }
    let live = opts.live;
    let shared_w = shared.clone();
    let window = cfg.window.clone();
    let guards = cluster.execute(&window, move |worker| {
        worker_main(worker, &cfg, live, &shared_w)
    })?;

    let mut counters = Counters::default();
    let mut ips = BTreeSet::new();
    let mut indicators = Vec::new();
    let mut final_tick = None;
    for result in guards.join() {
        let r = result.map_err(|e| anyhow::anyhow!("worker failed: {e}"))??;
        counters.add(&r.counters);
        ips.extend(r.blacklisted_ips);
        indicators.extend(r.indicators);
        final_tick = final_tick.max(r.final_tick);
    }
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    write_indicators(&shared.indicators_path, indicators)?;
    if let Some(m) = shared.monitor.as_ref() {
        // The last, partial period: a run shorter than the interval publishes its counts
        // too (the admin UI reads `_LAST`, the API may keep answering: `replay --api`).
        if let Some(rest) = m.take_rest() {
            end_period(&shared, m, &rest);
        }
    }
    shared.blacklist.flush()?;
    for f in [
        &shared.processed_query,
        &shared.processed_book,
        &shared.deadletter,
    ] {
        f.flush()?;
    }
    // Let the Redis and MySQL sinks deliver what they hold (they keep retrying in the
    // background; the Redis keys are in the backup file either way).
    if let Some(r) = &shared.redis {
        if !r.wait_idle(Duration::from_secs(10)) {
            tracing::warn!("redis: stopping with {} writes pending", r.stats().pending);
        }
    }
    if let Some(m) = &shared.mysql {
        if !m.wait_idle(Duration::from_secs(10)) {
            tracing::warn!("mysql: stopping with {} rows pending", m.stats().pending);
        }
    }
    if let Some(k) = &shared.kafka {
        while !k.flush(Duration::from_secs(5)) {
            tracing::warn!(
                "kafka: {} messages not delivered yet; waiting for the broker",
                k.pending()
            );
            if shared.stop.load(Ordering::Relaxed) && k.pending() > 0 {
                tracing::error!("kafka: stopping with {} undelivered messages", k.pending());
                break;
            }
        }
    }
    publish_sink_metrics(&shared);
    let elapsed = started.elapsed().as_secs_f64();
    Ok(Summary {
        lines_per_sec: counters.lines_read as f64 / elapsed.max(1e-9),
        counters,
        ips_blacklisted: ips.len(),
        final_tick,
        elapsed_secs: elapsed,
        workers,
        latency: shared.latency.summary(),
    })
}

fn generate_sample(cfg: &Config) -> anyhow::Result<()> {
    let path = &cfg.source.path;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let opts = crate::gen::GenOptions {
        lines: cfg.source.generator_lines,
        format: cfg.source.format,
        ..Default::default()
    };
    let mut log = std::io::BufWriter::new(std::fs::File::create(path)?);
    let truth_path = path.with_extension("truth.csv");
    let mut truth = std::io::BufWriter::new(std::fs::File::create(&truth_path)?);
    crate::gen::generate(&opts, &mut log, &mut truth)
        .with_context(|| format!("{}: cannot generate sample traffic", path.display()))?;
    tracing::info!(
        "generated {} sample lines into {} (ground truth: {})",
        opts.lines,
        path.display(),
        truth_path.display()
    );
    Ok(())
}

fn progress_bar(shared: Arc<Shared>) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .expect("valid template"),
    );
    let b = bar.clone();
    std::thread::spawn(move || {
        let start = Instant::now();
        while !b.is_finished() {
            let n = shared.lines_read.load(Ordering::Relaxed);
            let rate = n as f64 / start.elapsed().as_secs_f64().max(1e-3);
            b.set_message(format!("{n} lines read, {rate:.0} lines/s"));
            b.tick();
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    bar
}

fn write_indicators(path: &Path, mut rows: Vec<(IpAddr, Indicators)>) -> anyhow::Result<()> {
    rows.sort();
    let mut out = Batched::new(BackgroundFile::create(path)?);
    for (ip, ind) in rows {
        let lt: serde_json::Map<String, serde_json::Value> = ind
            .critical_pages_less_than
            .iter()
            .map(|(t, n)| (t.to_string(), (*n).into()))
            .collect();
        let line = serde_json::json!({
            "ip": ip.to_string(),
            "indicators": ind.to_json(ind.critical_pages_less_than.first().map_or(0, |(t, _)| *t)),
            "criticalPagesLessThanDefault_by_interval_ms": lt,
        });
        out.line(&line.to_string())?;
    }
    out.flush()?;
    Ok(())
}

/// What one worker hands back.
struct WorkerResult {
    counters: Counters,
    blacklisted_ips: BTreeSet<IpAddr>,
    indicators: Vec<(IpAddr, Indicators)>,
    final_tick: Option<Time>,
}

/// Per-worker state of the ingest loop.
struct Ingest<'a> {
    cfg: &'a Config,
    rules: DataRules,
    ip_matcher: IpMatcher,
    masker: Masker,
    cookies: CookieNames,
    limits: ParseLimits,
    counters: Counters,
    max_tick: Time,
    processed_query: Batched,
    processed_book: Batched,
    deadletter: Batched,
    kafka: Option<&'a KafkaSink>,
    /// Newest tick among the lines re-read after a restart.
    replay_max_tick: Time,
    /// Per source slot (Kafka partition): newest tick read, and whether more is expected now
    /// (a partition at its end does not hold the others back).
    slot_max: Vec<Time>,
    slot_active: Vec<bool>,
    /// Link statistics of this worker, merged into `Shared::monitor` per batch.
    tally: Option<crate::monitor::Tally>,
}

impl Ingest<'_> {
    fn dead_letter(
        &mut self,
        raw: &RawLine,
        reason: &'static str,
        detail: &str,
    ) -> std::io::Result<()> {
        if raw.replay {
            return Ok(());
        }
        self.counters.dead_lettered += 1;
        *self
            .counters
            .dead_lettered_by_reason
            .entry(reason)
            .or_default() += 1;
        let d = DeadLetter::new(raw.no, reason, detail, &raw.bytes, &self.masker);
        let line = d.to_json_line();
        if let Some(k) = &self.kafka {
            k.send(Topic::DeadLetter, reason, line.as_bytes());
        }
        self.deadletter.line(&line)
    }

    /// SPEC §2–§3 for one line; the windowed event (if any) goes into `pipeline`. Returns the
    /// event time of a line that parsed.
    fn line(
        &mut self,
        pipeline: &mut Pipeline,
        shared: &Shared,
        raw: &RawLine,
    ) -> std::io::Result<Option<u64>> {
        self.counters.lines_read += 1;
        if raw.replay {
            self.counters.replayed += 1;
        }
        let rec = match parse_line(raw.format, &raw.bytes, &self.limits) {
            Ok(rec) => rec,
            Err(e) => {
                return self
                    .dead_letter(raw, e.kind.as_str(), &e.detail)
                    .map(|_| None)
            }
        };
        self.counters.parsed += 1;
        if rec.time_ms < 0 {
            return self
                .dead_letter(raw, "bad_time", "event time before 1970")
                .map(|_| None);
        }
        if rec.time_ms as u64 > LATEST_EVENT_TIME_MS {
            return self
                .dead_letter(raw, "bad_time", "event time after 2999")
                .map(|_| None);
        }
        pipeline.service.request(&rec);
        let t_ms = rec.time_ms as u64;
        if let (Some(t), false) = (self.tally.as_mut(), raw.replay) {
            t.line(&rec.server_addr, rec.connections_active);
        }
        let mut p = match dataprocess::process(&self.rules, &self.masker, &self.cookies, rec) {
            Outcome::Filtered => {
                self.counters.filtered += 1;
                return Ok(Some(t_ms));
            }
            Outcome::Processed(p) => p,
        };
        let Ok(ip) = p.remote_addr.parse::<IpAddr>() else {
            self.dead_letter(raw, "bad_remote_addr", "remote_addr is not an IP")?;
            return Ok(Some(t_ms));
        };
        let spec = self.cfg.window.spec();
        let tick = spec.tick_of(t_ms);
        // The frontier is the newest tick this worker has seen minus the allowed lateness, judged
        // line by line (not per batch), so lateness does not depend on the batch size.
        let lateness = self.cfg.window.allowed_lateness_ms;
        let frontier = (self.watermark().saturating_sub(lateness) / spec.slide_ms * spec.slide_ms)
            .max(pipeline.time());
        if tick < frontier {
            if !raw.replay {
                self.counters.late += 1;
            }
            let detail = format!(
                "event tick {tick} is behind the input frontier {frontier} (allowed lateness {lateness} ms)"
            );
            self.dead_letter(raw, "late", &detail)?;
            return Ok(Some(t_ms));
        }
        p.high_frq_ip_group =
            self.ip_matcher.contains(&ip) || shared.self_blacklisted.contains(&ip);
        let windowed = match p.behavior_type {
            BehaviorType::Query => true,
            BehaviorType::Book => self.cfg.window.input == WindowInput::All,
            BehaviorType::Other => self.cfg.window.input == WindowInput::All,
        };
        if !raw.replay {
            self.write_processed(&p)?;
        }
        if windowed {
            self.counters.windowed += 1;
            if tick > self.max_tick {
                shared.latency.seen(tick);
            }
            if let (Some(t), false) = (self.tally.as_mut(), raw.replay) {
                t.query();
            }
            self.max_tick = self.max_tick.max(tick);
            let slot = raw.slot as usize;
            if slot >= self.slot_max.len() {
                self.slot_max.resize(slot + 1, 0);
                self.slot_active.resize(slot + 1, true);
            }
            self.slot_max[slot] = self.slot_max[slot].max(tick);
            if raw.replay {
                self.replay_max_tick = self.replay_max_tick.max(tick);
            }
            pipeline.events.update_at(win_event(ip, p), tick, 1);
        }
        Ok(Some(t_ms))
    }

    /// Newest tick the input has reached: the oldest newest-tick of the slots still delivering
    /// (like a Kafka Streams watermark), so a partition read ahead of another does not make
    /// the other's lines late; a partition that has delivered nothing yet (and is not at its
    /// end) holds time at 0. One slot (a file) is just its newest tick.
    fn watermark(&self) -> Time {
        let active = self
            .slot_max
            .iter()
            .zip(&self.slot_active)
            .filter(|(_, a)| **a)
            .map(|(m, _)| *m)
            .min();
        active.unwrap_or(self.max_tick)
    }

    /// The `processedQuery` / `processedBook` outputs (SPEC §3.8); Other is not sent.
    fn write_processed(&mut self, p: &ProcessedData) -> std::io::Result<()> {
        let (file, topic) = match p.behavior_type {
            BehaviorType::Query => {
                self.counters.processed_query += 1;
                (&mut self.processed_query, Topic::ProcessedQuery)
            }
            BehaviorType::Book => {
                self.counters.processed_book += 1;
                (&mut self.processed_book, Topic::ProcessedBook)
            }
            BehaviorType::Other => {
                self.counters.processed_other += 1;
                return Ok(());
            }
        };
        let line = match self.cfg.output.processed_format {
            ProcessedFormat::Cs => dataprocess::to_cs_line(p),
            ProcessedFormat::Json => dataprocess::to_json_line(p),
        };
        if let Some(k) = &self.kafka {
            k.send(topic, &p.remote_addr, line.as_bytes());
        }
        file.line(&line)
    }

    /// Hands the outputs' lines to their files once the oldest has waited a while (live).
    fn hand_over_old(&mut self) -> std::io::Result<()> {
        self.processed_query.hand_over_if_old()?;
        self.processed_book.hand_over_if_old()?;
        self.deadletter.hand_over_if_old()
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.processed_query.flush()?;
        self.processed_book.flush()?;
        self.deadletter.flush()
    }
}

/// What rulecompute keeps of a processed request.
pub fn win_event(ip: IpAddr, p: ProcessedData) -> WinEvent {
    let journey = (!p.dep_city.is_empty() || !p.arr_city.is_empty() || !p.flight_date.is_empty())
        .then(|| stable_hash(&(&p.dep_city, &p.arr_city, &p.flight_date)));
    WinEvent {
        ip,
        t_ms: p.time_ms as u64,
        request_hash: stable_hash(&p.request),
        ua_hash: stable_hash(&p.http_user_agent),
        cookie_hash: p.jsessionid.as_deref().map_or(ABSENT, stable_hash),
        journey_hash: journey,
        request: p.request.into(),
    }
}

fn worker_main(
    worker: &mut timely::worker::Worker,
    cfg: &Config,
    live: bool,
    shared: &Shared,
) -> anyhow::Result<WorkerResult> {
    let index = worker.index();
    let peers = worker.peers();
    let spec = cfg.window.spec();
    let mut profile = crate::opprof::start(worker);
    let mut pipeline = dataflow::build_with(
        worker,
        spec,
        shared.service.clone(),
        shared.ops.metrics.window_gauges(),
    );
    // What this worker's counters had added to the metrics.
    let mut published = Counters::default();
    let mut sinks_published = Instant::now();
    // With several processes: the workers' status and blacklist decisions to the other
    // processes (see `cluster`).
    let mut control = (shared.cluster.processes > 1).then(|| {
        crate::cluster::Control::build(
            worker,
            &shared.cluster,
            shared.view.clone(),
            shared.self_blacklisted.clone(),
        )
    });
    // The first worker of each process polls the rule source for its process.
    let local_first = index.is_multiple_of(shared.cluster.threads.max(1));

    let (mut rules_version, tables) = shared.rules.current();
    let mut tables = RuleTables::clone(&tables);
    if index == 0 {
        pipeline.rules.apply(&RuleTables::default(), &tables);
    }
    let mut anomaly = crate::anomaly::AnomalyDriver::new(
        cfg,
        &tables,
        shared.anomaly.clone(),
        index == 0,
        live,
        &mut pipeline,
    )?;
    if let Some(k) = &shared.kafka {
        if k.wants(Topic::ServiceAnomalies) {
            anomaly.add_sink(Box::new(crate::sink::kafka::AnomalyTopic {
                sink: k.clone(),
                utc_offset_minutes: cfg.output.utc_offset_minutes,
            }));
        }
    }
    if let Some(m) = &shared.mysql {
        anomaly.add_sink(Box::new(crate::sink::mysql::CatResultTable(m.clone())));
    }
    let mut last_watch = Instant::now();

    let stdin = cfg.source.kind != SourceKind::Kafka && cfg.source.path == Path::new("-");
    // Stdin is the first process's (`run_with` opens it there only): its workers share it.
    let reader = !stdin || shared.log.is_some();
    if !reader {
        shared.view.set_done(index, 0);
    }
    let local = index % shared.cluster.threads;
    let mut source = if cfg.source.kind != SourceKind::Kafka {
        // No log when the path is empty (service samples only).
        let shard = if stdin {
            (local, shared.cluster.threads)
        } else {
            (index, peers)
        };
        shared.log.as_ref().map(|log| {
            Source::File(FileSource::reading(
                log.clone(),
                local,
                cfg.source.format,
                shard,
            ))
        })
    } else if cfg.source.path.as_os_str().is_empty() {
        None
    } else {
        let lookback = cfg.window.length_ms + cfg.window.allowed_lateness_ms + cfg.window.slide_ms;
        Some(Source::Kafka(KafkaSource::open(
            &cfg.kafka, index, peers, lookback,
        )?))
    };
    let mut replaying = true;
    // Offsets read (and the input time then), waiting for their outputs to be written.
    let mut to_commit: std::collections::VecDeque<(Position, Time)> = Default::default();
    let mut last_commit = Instant::now();

    let mut ingest = Ingest {
        cfg,
        rules: DataRules::compile(&tables.filter, &tables.classify, &tables.analyze)?,
        ip_matcher: IpMatcher::new(&tables.ip_blacklist),
        masker: Masker::new(cfg.masking.mode, &cfg.mask_secret()),
        cookies: CookieNames {
            jsessionid: cfg.cookies.jsessionid.clone(),
            user_id: cfg.cookies.user_id.clone(),
        },
        limits: ParseLimits {
            max_line_bytes: cfg.source.max_line_bytes,
        },
        counters: Counters::default(),
        max_tick: 0,
        processed_query: Batched::new(shared.processed_query.clone()),
        processed_book: Batched::new(shared.processed_book.clone()),
        deadletter: Batched::new(shared.deadletter.clone()),
        kafka: shared.kafka.as_deref(),
        replay_max_tick: 0,
        slot_max: Vec::new(),
        slot_active: Vec::new(),
        tally: shared.monitor.as_ref().map(|_| Default::default()),
    };
    if let Some(Source::Kafka(k)) = source.as_ref() {
        // Every partition holds time back until it has delivered (or reached its end), also
        // within the first batch.
        k.active_slots(&mut ingest.slot_active);
        ingest.slot_max.resize(ingest.slot_active.len(), 0);
    }
    let mut blacklisted = BTreeSet::new();
    let lateness = cfg.window.allowed_lateness_ms;
    let slide = cfg.window.slide_ms;
    // Event time vs wall clock at the last event, to let time pass while a followed file is idle.
    let mut skew: Option<i64> = None;
    let mut buf: Vec<RawLine> = Vec::with_capacity(cfg.engine.batch_lines);
    let mut done_reading = false;
    let mut unstepped = 0usize;
    let mut stepped_at: Time = 0;
    let max_step_ms = max_step_event_ms(&cfg.window);

    loop {
        crate::opprof::lap(&mut profile, Phase::Other);
        // While the dataflow has work in flight, a poll must not block on the broker: this
        // worker's steps move the whole cluster's progress along.
        let busy = pipeline.completed() < pipeline.time();
        if let Some(Source::Kafka(k)) = source.as_mut() {
            k.set_max_wait(if busy {
                Duration::ZERO
            } else {
                KafkaSource::IDLE_WAIT
            });
        }
        // Up to `batch_lines` lines, read and processed a slice at a time (see `Source::slice`).
        let mut batch_n = 0;
        let status = match source.as_mut() {
            Some(s) if !done_reading => loop {
                let rest = cfg.engine.batch_lines - batch_n;
                let slice = s.slice();
                let status = s.poll(&mut buf, slice.map_or(rest, |n| rest.min(n)))?;
                batch_n += buf.len();
                for raw in buf.drain(..) {
                    let t_ms = ingest.line(&mut pipeline, shared, &raw)?;
                    if let (Source::Kafka(k), Some(t)) = (&mut *s, t_ms) {
                        k.note_event_time(&raw, t);
                    }
                }
                if status != Poll::Data || batch_n >= cfg.engine.batch_lines || slice.is_none() {
                    break if batch_n > 0 { Poll::Data } else { status };
                }
            },
            _ => Poll::Eof,
        };
        shared
            .lines_read
            .fetch_add(batch_n as u64, Ordering::Relaxed);
        if live {
            ingest.hand_over_old()?;
        }
        crate::opprof::lap(&mut profile, Phase::Ingest);
        if let (Some(m), Some(t)) = (&shared.monitor, ingest.tally.as_mut()) {
            m.merge(t);
            if let Some(done) = (index == 0).then(|| m.take_due()).flatten() {
                end_period(shared, m, &done);
            }
        }

        anomaly.step(&mut pipeline, &mut ingest.max_tick, status == Poll::Eof)?;
        // Advance event time: newest tick minus the allowed lateness, on the slide grid.
        if let Some(Source::Kafka(k)) = source.as_ref() {
            k.active_slots(&mut ingest.slot_active);
            let n = ingest.slot_active.len().max(ingest.slot_max.len());
            ingest.slot_max.resize(n, 0);
            ingest.slot_active.resize(n, true);
        }
        let mut target = ingest.watermark().saturating_sub(lateness) / slide * slide;
        if status == Poll::Data {
            skew = Some(now_ms() - ingest.max_tick as i64);
        } else if status == Poll::Idle && live {
            // Live input: time passes while nothing arrives. A bounded input (a replay, a
            // Kafka backfill) is history: its time moves only with its lines.
            if let Some(s) = skew {
                let by_clock = (now_ms() - s - cfg.window.idle_grace_ms as i64).max(0) as u64;
                target = target.max(by_clock.saturating_sub(lateness) / slide * slide);
            }
        }
        // Workers with nothing (more) to read follow the others. A Kafka worker whose
        // partitions have not delivered yet must not: its lines would arrive late.
        let nothing_to_read = match source.as_ref() {
            Some(Source::Kafka(k)) => !k.has_partitions(),
            Some(Source::File(_)) => ingest.max_tick == 0 && status != Poll::Data,
            None => true,
        };
        if !reader || done_reading || nothing_to_read {
            target = target.max(shared.view.max_time());
        }
        pipeline.advance_to(target);
        shared.view.set_time(index, pipeline.time());
        if replaying && !source.as_ref().is_some_and(Source::replaying) {
            // Done re-reading what an earlier run processed: decisions from here on are new.
            replaying = false;
            let mut resume = None;
            if ingest.counters.replayed > 0 {
                // The input frontier the earlier run had when it committed what was re-read:
                // it wrote every decision before it (see commit_offsets).
                let r = ingest.replay_max_tick.saturating_sub(lateness);
                resume = Some(r);
                tracing::info!(
                    "worker {index}: window rebuilt from {} re-read lines; resuming at tick {r}",
                    ingest.counters.replayed,
                );
            }
            shared.view.set_live(index, resume);
        }

        // Live input steps the dataflow at every batch (latency). A bounded input (a replay, a
        // Kafka backfill) steps every `step_lines`, or once a step spans a fifth of the window
        // in event time if that comes first (see `max_step_event_ms`).
        unstepped += batch_n;
        if live
            || status != Poll::Data
            || unstepped >= cfg.engine.step_lines
            || pipeline.time() >= stepped_at + max_step_ms
        {
            unstepped = 0;
            stepped_at = pipeline.time();
            crate::opprof::lap(&mut profile, Phase::Other);
            worker.step();
            crate::opprof::lap(&mut profile, Phase::Step);
            // Bound the backlog: do not read far ahead of what the dataflow has completed.
            let lag_limit = pipeline.time().saturating_sub(10 * slide.max(1000));
            while pipeline.probe.less_than(&lag_limit) {
                // Waiting for the other workers: park (their messages wake it) rather than
                // spin, leaving the core to the writer threads.
                worker.step_or_park(Some(Duration::from_millis(1)));
            }
            crate::opprof::lap(&mut profile, Phase::Wait);
        }
        // Decisions wait until every worker of the cluster has finished re-reading what an
        // earlier run committed: then it is known which of them were written back then.
        if shared.view.all_live() {
            let written_below = pipeline.completed();
            emit_decisions(
                &mut pipeline,
                cfg,
                shared,
                &mut ingest.counters,
                &mut blacklisted,
                None,
            )?;
            shared.view.set_written_below(index, written_below);
            if index == 0 {
                shared
                    .latency
                    .written_below(shared.all_written_below(), !replaying);
            }
        }
        if let Some(Source::Kafka(k)) = source.as_mut() {
            if !replaying {
                commit_offsets(k, &mut ingest, shared, &mut to_commit, &mut last_commit)?;
            }
        }

        if local_first && last_watch.elapsed() >= Duration::from_millis(cfg.rules.watch_interval_ms)
        {
            last_watch = Instant::now();
            if let Err(e) = shared.rules.poll() {
                tracing::error!("rule reload failed, previous rules stay in force: {e:#}");
            }
        }
        if let Some((version, new)) = shared.rules.newer_than(rules_version) {
            rules_version = version;
            match DataRules::compile(&new.filter, &new.classify, &new.analyze) {
                Ok(rules) => {
                    let new = RuleTables::clone(&new);
                    if index == 0 {
                        pipeline.rules.apply(&tables, &new);
                        pipeline.flush();
                        tracing::info!("rules reloaded from {}", shared.rules.name);
                    }
                    ingest.rules = rules;
                    ingest.ip_matcher = IpMatcher::new(&new.ip_blacklist);
                    anomaly.rules_changed(&new, &mut pipeline);
                    tables = new;
                }
                Err(e) => {
                    if index == 0 {
                        tracing::error!("rule reload failed, previous rules stay in force: {e:#}");
                    }
                }
            }
        }

        shared.ops.metrics.publish(&ingest.counters, &mut published);
        if local_first && sinks_published.elapsed() >= Duration::from_millis(250) {
            sinks_published = Instant::now();
            publish_sink_metrics(shared);
        }
        shared
            .ops
            .metrics
            .progress(index, pipeline.time(), pipeline.completed());
        for ask in shared.ops.take_explains(index) {
            let answer =
                crate::ops::explain::answer(&mut pipeline, ask.ip, cfg.output.utc_offset_minutes);
            // The asker may have given up waiting.
            let _ = ask.reply.send(answer);
        }

        let mut stopping = shared.view.stopping();
        if shared.stop.load(Ordering::Relaxed) {
            // Ctrl-C on any process stops the whole cluster.
            shared.view.set_stop(index);
            stopping = true;
        }
        if reader && !done_reading && ((status == Poll::Eof && anomaly.input_done()) || stopping) {
            done_reading = true;
            shared.view.set_done(index, ingest.max_tick);
            ingest.flush()?;
        }
        if let Some(c) = control.as_mut() {
            c.publish(&shared.view, &shared.self_blacklisted);
        }
        if shared.view.all_done() {
            break;
        }
        if status == Poll::Idle
            || (!reader)
            || done_reading
            || (status == Poll::Eof && anomaly.idle())
        {
            // A park ends early on the other workers' messages, not on the broker's: with
            // Kafka, come back soon to poll it again.
            let park = match source.as_ref() {
                Some(Source::Kafka(_)) if busy => Duration::from_millis(2),
                _ => Duration::from_millis(20),
            };
            crate::opprof::lap(&mut profile, Phase::Other);
            worker.step_or_park(Some(park));
            crate::opprof::lap(&mut profile, Phase::Wait);
        }
    }

    // Complete the final tick everywhere, read the results as of it, and drop the rest (the
    // window expirations after the end of the input are not decisions anyone asked for).
    let final_tick = shared.view.final_tick();
    pipeline.advance_to(final_tick + 1);
    while !pipeline.done_through(final_tick) {
        worker.step();
    }
    emit_decisions(
        &mut pipeline,
        cfg,
        shared,
        &mut ingest.counters,
        &mut blacklisted,
        Some(final_tick),
    )?;
    let indicators = pipeline.indicators_at(final_tick);
    ingest.flush()?;
    shared.ops.metrics.publish(&ingest.counters, &mut published);
    if let Some(Source::Kafka(k)) = source.as_mut() {
        // Everything read is processed and its decisions are emitted; commit once the Kafka
        // and MySQL outputs are delivered (the Redis keys are in the backup file).
        let delivered = shared
            .kafka
            .as_ref()
            .is_none_or(|s| s.flush(Duration::from_secs(30)))
            && shared
                .mysql
                .as_ref()
                .is_none_or(|m| m.wait_idle(Duration::from_secs(10)));
        if delivered {
            k.commit(&k.position(), final_tick + 1);
            ingest.counters.kafka_commits += 1;
        }
    }
    anomaly.finish(&pipeline, final_tick)?;
    pipeline.shutdown(worker);
    crate::opprof::lap(&mut profile, Phase::Other);
    drop(profile);
    Ok(WorkerResult {
        counters: ingest.counters,
        blacklisted_ips: blacklisted,
        indicators,
        final_tick: (final_tick > 0).then_some(final_tick),
    })
}

/// A finished monitoring period to Redis (when configured) and to the operations API.
fn end_period(shared: &Shared, m: &crate::monitor::Monitor, done: &crate::monitor::FinishedPeriod) {
    if let Some(redis) = &shared.redis {
        m.publish(redis, done);
    }
    shared.ops.period_ended(done);
}

/// The most event time one dataflow step spans on a bounded input (see `step_lines`): a
/// fifth of the window, at least one slide.
///
/// Each step adds a batch to every arrangement, and the window's traces merge their batches
/// about log2(window / step) times over, so fewer, larger steps merge far less (300k cs lines,
/// 1 worker, callgrind: 20 s steps 11.13 G instructions, merges 1.79 G; 60 s steps 10.18 G,
/// merges 1.07 G). A step holds its updates in flight, so it is bounded by the window: on a
/// sparse input 32 768 lines are minutes of event time, and steps that long made the memory
/// under IP churn grow with history (BENCHMARKS.md, session 5); a fifth of the window keeps
/// it flat.
fn max_step_event_ms(window: &crate::config::WindowConfig) -> Time {
    (window.length_ms / 5).max(window.slide_ms)
}

/// The input of one worker.
enum Source {
    File(FileSource),
    Kafka(KafkaSource),
}

impl Source {
    fn poll(&mut self, buf: &mut Vec<RawLine>, max: usize) -> std::io::Result<Poll> {
        match self {
            Source::File(f) => f.poll(buf, max),
            Source::Kafka(k) => k.poll(buf, max),
        }
    }

    fn replaying(&self) -> bool {
        matches!(self, Source::Kafka(k) if k.replaying())
    }

    /// Most lines to read before processing them, polling on while there are lines; `None`:
    /// one poll per batch.
    ///
    /// A file's worker splits its lines out of chunks it scans in full (the others' lines
    /// too): processed 256 at a time, a line is parsed while the bytes the split just scanned
    /// are still in the core's cache. 5M cs, 2 workers: 256 against 1024 lines −3.9 % wall,
    /// 1024 against 8192 −2.0 % (BENCHMARKS.md, session 27). A Kafka worker polls once, for
    /// what the consumer has fetched: a second poll may wait for the broker before the step.
    fn slice(&self) -> Option<usize> {
        match self {
            Source::File(_) => Some(FILE_SLICE_LINES),
            Source::Kafka(_) => None,
        }
    }
}

/// See [`Source::slice`].
const FILE_SLICE_LINES: usize = 256;

/// At-least-once (SPEC §7): commits the newest read position whose outputs are all written:
/// its processed lines and dead letters are flushed and delivered, and every worker has written
/// the decisions before the input time it was read at.
fn commit_offsets(
    source: &mut KafkaSource,
    ingest: &mut Ingest,
    shared: &Shared,
    to_commit: &mut std::collections::VecDeque<(Position, Time)>,
    last_commit: &mut Instant,
) -> anyhow::Result<()> {
    let interval = Duration::from_millis(ingest.cfg.kafka.commit_interval_ms);
    if last_commit.elapsed() < interval {
        return Ok(());
    }
    *last_commit = Instant::now();
    to_commit.push_back((source.position(), ingest.watermark()));
    let written = shared.all_written_below();
    let mut ready = None;
    while to_commit.front().is_some_and(|(_, t)| {
        let frontier = t.saturating_sub(ingest.cfg.window.allowed_lateness_ms);
        frontier <= written
    }) {
        ready = to_commit.pop_front();
    }
    let Some((pos, t)) = ready else {
        return Ok(());
    };
    ingest.flush()?;
    // nh_ip_blacklist rows are part of the output too (Redis keys have their durable backup).
    let mysql_pending = shared.mysql.as_ref().is_some_and(|m| m.stats().pending > 0);
    if mysql_pending {
        to_commit.push_front((pos, t));
        return Ok(());
    }
    if let Some(k) = &shared.kafka {
        if !k.flush(Duration::from_secs(5)) {
            // The broker is away: keep the position for the next try.
            to_commit.push_front((pos, t));
            return Ok(());
        }
    }
    source.commit(
        &pos,
        t.saturating_sub(ingest.cfg.window.allowed_lateness_ms),
    );
    ingest.counters.kafka_commits += 1;
    Ok(())
}

/// The output sinks' own figures into the metrics (the first worker of each process).
fn publish_sink_metrics(shared: &Shared) {
    use crate::ops::metrics::SinkFigures;
    let metrics = &shared.ops.metrics;
    if let Some(r) = &shared.redis {
        let s = r.stats();
        metrics.sink(
            "redis",
            SinkFigures {
                written: s.written,
                dropped: s.dropped,
                pending: s.pending,
                reconnects: s.reconnects,
            },
        );
    }
    if let Some(m) = &shared.mysql {
        let s = m.stats();
        metrics.sink(
            "mysql",
            SinkFigures {
                written: s.written,
                dropped: s.dropped,
                pending: s.pending,
                reconnects: s.reconnects,
            },
        );
    }
    if let Some(k) = &shared.kafka {
        metrics.sink(
            "kafka",
            SinkFigures {
                written: k.stats.delivered.load(Ordering::Relaxed),
                dropped: k.stats.failed.load(Ordering::Relaxed),
                pending: k.pending().max(0) as u64,
                reconnects: 0,
            },
        );
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The Redis key and the `nh_ip_blacklist` row of a decision. Both writes are idempotent, so
/// they are made again for decisions recomputed after a restart (which also resumes the
/// refreshing of the keys' TTL).
fn write_key_stores(shared: &Shared, d: &blacklist::DecisionEvent, utc_offset_minutes: i32) {
    let e = &d.entry;
    if let Some(redis) = &shared.redis {
        match d.action {
            Action::Add | Action::Update => {
                let value = blacklist_value(
                    e.decision.score.0,
                    &e.flow_id,
                    &e.decision.hit_rule_ids,
                    d.tick as i64,
                    utc_offset_minutes,
                );
                redis.blacklist_set(e.ip, &e.flow_id, value);
            }
            Action::Remove => redis.blacklist_clear(e.ip, &e.flow_id),
        }
    }
    if let (Some(mysql), Action::Add) = (&shared.mysql, d.action) {
        mysql.insert_ip(e.ip);
    }
}

fn emit_decisions(
    pipeline: &mut Pipeline,
    cfg: &Config,
    shared: &Shared,
    counters: &mut Counters,
    blacklisted: &mut BTreeSet<IpAddr>,
    until: Option<Time>,
) -> anyhow::Result<()> {
    let mut updates = pipeline.drain_blacklist();
    if let Some(last) = until {
        updates.retain(|(_, t, _)| *t <= last);
    }
    if updates.is_empty() {
        return Ok(());
    }
    let offset = cfg.output.utc_offset_minutes;
    let mut text = String::new();
    for d in blacklist::decisions(updates) {
        write_key_stores(shared, &d, offset);
        let json = blacklist::to_json(&d, offset, now_ms());
        shared.ops.decided(&d, &json);
        match d.action {
            Action::Add => {
                blacklisted.insert(d.entry.ip);
                shared.self_blacklisted.add(d.entry.ip);
            }
            Action::Remove => {
                shared.self_blacklisted.remove(d.entry.ip);
            }
            Action::Update => continue,
        }
        if shared.already_written(d.tick) {
            // Recomputed while rebuilding the window after a restart: written back then.
            counters.decisions_replayed += 1;
            continue;
        }
        match d.action {
            Action::Add => counters.decisions_add += 1,
            _ => counters.decisions_remove += 1,
        }
        shared.latency.decision_written(d.tick);
        if cfg.output.print_decisions {
            println!(
                "{} {} flow={} score={:.3} threshold={} hits={} at {}",
                d.action.as_str().to_uppercase(),
                d.entry.ip,
                d.entry.flow_id,
                d.entry.decision.score.0,
                d.entry.decision.threshold.0,
                d.entry.decision.hit_rule_names.join(","),
                json["event_time"].as_str().unwrap_or_default(),
            );
        }
        let line = json.to_string();
        if let Some(k) = &shared.kafka {
            k.send(Topic::Blacklist, &d.entry.ip.to_string(), line.as_bytes());
        }
        text.push_str(&line);
        text.push('\n');
    }
    if text.is_empty() {
        return Ok(());
    }
    shared.blacklist.write_all(text.as_bytes())?;
    // Decisions are rare and someone may be tailing the file: make them visible now.
    shared.blacklist.flush()?;
    Ok(())
}
