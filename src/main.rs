//! `antispider`: run the engine, replay a log, generate synthetic traffic, benchmark tools.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use antispider::anomaly::AnomalyHub;
use antispider::config::{Config, SourceKind};
use antispider::engine::{self, RunOptions, Summary};
use antispider::format::LogFormat;
use antispider::ops::OpsHub;

/// The dataflow allocates and frees many small batches; mimalloc is markedly faster at that
/// than the system allocator (see BENCHMARKS.md). Its settings: `antispider::alloc`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "antispider",
    version,
    about = "Real-time anti-crawler engine on differential dataflow"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Timely's cluster flags (`-n N -p I -h hostfile`, with `-w` threads per process); they
/// override `[engine] processes / process / hostfile`. `-h` is the hostfile, as in timely, so
/// help is `--help` only on the commands that take these flags.
#[derive(clap::Args, Clone, Debug, Default)]
struct ClusterArgs {
    /// Processes in the cluster (default 1; see README "Cluster").
    #[arg(short = 'n', long)]
    processes: Option<usize>,
    /// This process's index, 0..N.
    #[arg(short = 'p', long)]
    process: Option<usize>,
    /// The processes' addresses: one host:port per line, in process order.
    #[arg(short = 'h', long, value_name = "FILE")]
    hostfile: Option<PathBuf>,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

impl ClusterArgs {
    fn apply(self, engine: &mut antispider::config::EngineConfig) {
        if let Some(n) = self.processes {
            engine.processes = n;
        }
        if let Some(p) = self.process {
            engine.process = p;
        }
        if self.hostfile.is_some() {
            engine.hostfile = self.hostfile;
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the main job: read the configured source live, print decisions, write `out/`.
    #[command(disable_help_flag = true)]
    Run {
        /// Pipeline config (see README "Configuration").
        #[arg(long, default_value = "dataflows/local.toml")]
        config: PathBuf,
        /// Stop at the end of the input instead of following it.
        #[arg(long)]
        once: bool,
        /// Worker threads (overrides engine.workers).
        #[arg(short = 'w', long)]
        workers: Option<usize>,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Replay a log in event time as fast as possible and write the results to OUT/.
    #[command(disable_help_flag = true)]
    Replay {
        /// The log (`-` = stdin); optional with --service-samples.
        file: Option<PathBuf>,
        /// Service samples (cat_resource JSON lines, by time) replayed with the log.
        #[arg(long, value_name = "FILE")]
        service_samples: Option<PathBuf>,
        /// Operator feedback for the anomaly models (JSON lines: id, anomalous, at).
        #[arg(long, value_name = "FILE")]
        feedback: Option<PathBuf>,
        /// Serve the HTTP API on ADDR (e.g. 127.0.0.1:8080); it keeps answering after the
        /// replay until Ctrl-C.
        #[arg(long, value_name = "ADDR")]
        api: Option<String>,
        #[arg(long, value_enum, default_value = "cs")]
        format: LogFormat,
        #[arg(long, default_value = "rules")]
        rules: PathBuf,
        #[arg(long, default_value = "out")]
        out: PathBuf,
        #[arg(short = 'w', long, default_value_t = 1)]
        workers: usize,
        /// Optional config for the other settings (window, masking, ...).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Send a log file (or stdin) to a Kafka topic, one message per line.
    Produce {
        /// Log file, `-` for stdin.
        file: PathBuf,
        #[arg(
            long,
            env = "ANTISPIDER__KAFKA__BROKERS",
            default_value = "127.0.0.1:9092"
        )]
        brokers: String,
        #[arg(long)]
        topic: String,
        /// Create the topic with this many partitions if it does not exist.
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        /// Lines per second (0 = as fast as possible).
        #[arg(long, default_value_t = 0)]
        rate: u64,
    },
    /// Write deterministic synthetic traffic and its ground truth (ip,label,kind).
    Gen {
        #[arg(long, default_value_t = 200_000)]
        lines: u64,
        #[arg(long, value_enum, default_value = "cs")]
        format: LogFormat,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Simulated duration in minutes.
        #[arg(long, default_value_t = 60)]
        minutes: i64,
        /// Log output file (optional with --service).
        #[arg(long, short = 'o')]
        out: Option<PathBuf>,
        /// Also write service samples (cat_resource JSON lines) with labelled anomaly episodes
        /// to this file, the episodes to FILE.episodes.csv, simulated operator feedback to
        /// FILE.feedback.jsonl.
        #[arg(long, value_name = "FILE")]
        service: Option<PathBuf>,
        /// Simulated days of service samples.
        #[arg(long, default_value_t = 3)]
        days: usize,
        /// Apps (services) of the service samples.
        #[arg(long, default_value_t = 3)]
        apps: usize,
        /// Anomaly episodes of each kind per app per day.
        #[arg(long, default_value_t = 2)]
        episodes_per_kind: usize,
        /// Ground-truth CSV (default: OUT with extension .truth.csv).
        #[arg(long)]
        truth: Option<PathBuf>,
        /// IP churn traffic: LINES query requests at a steady rate over MINUTES, every one
        /// from a new IP (no malformed lines).
        #[arg(long)]
        churn: bool,
    },
    /// Parse-only floor: read FILE and parse every line (no dataflow), print lines/s.
    Parse {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "cs")]
        format: LogFormat,
        /// Threads, each reading the file and keeping every N-th line (as the file source).
        #[arg(short = 'w', long, default_value_t = 1)]
        workers: usize,
        /// Also run dataprocess (filter, mask, classify, body parsing) on every record.
        #[arg(long)]
        process: bool,
        /// Rules directory (with --process).
        #[arg(long, default_value = "rules")]
        rules: PathBuf,
        /// Config for masking, cookie names and the line limit (default: built-in + env).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Append the lines of FILE to OUT at a fixed rate (for the live-latency benchmark).
    Feed {
        file: PathBuf,
        /// The file to append to (the engine follows it).
        #[arg(long, value_name = "OUT")]
        to: PathBuf,
        /// Lines per second.
        #[arg(long)]
        rate: f64,
        /// Stop after S seconds, reading FILE again from the start when it runs out (default:
        /// one pass over FILE).
        #[arg(long, value_name = "S")]
        seconds: Option<f64>,
        /// Rewrite each line's event time to the wall clock when it is written.
        #[arg(long)]
        retime: bool,
        /// Format of FILE (for --retime).
        #[arg(long, value_enum, default_value = "cs")]
        format: LogFormat,
        /// Empty OUT first instead of appending.
        #[arg(long)]
        truncate: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    antispider::alloc::tune();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "antispider=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if let Err(e) = real_main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// A flag set by SIGINT/SIGTERM; the engine finishes the current tick and writes its results.
/// A second signal exits at once.
fn stop_flag() -> Arc<AtomicBool> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        // Order matters: the conditional exit checks the flag before the second handler sets it.
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, stop.clone());
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    stop
}

fn real_main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run {
            config,
            once,
            workers,
            cluster,
        } => {
            let mut cfg = Config::load(&config)?;
            if let Some(w) = workers {
                cfg.engine.workers = w;
            }
            cluster.apply(&mut cfg.engine);
            if cfg.source.kind == SourceKind::Generator {
                eprintln!(
                    "antispider: reading {} (generated sample traffic), rules from {}, results in {}",
                    cfg.source.path.display(),
                    cfg.rules.dir.display(),
                    cfg.output.dir.display()
                );
            }
            let live = !once;
            if live {
                eprintln!(
                    "antispider: live; edit {}/*.toml to change rules; Ctrl-C to stop",
                    cfg.rules.dir.display()
                );
            }
            let hub = Arc::new(AnomalyHub::default());
            let ops = Arc::new(OpsHub::default());
            let _api = if cfg.api.enabled {
                let listen = cfg.api.listen.clone();
                Some(start_api(&listen, &hub, &ops, &cfg)?)
            } else {
                None
            };
            let offset = cfg.output.utc_offset_minutes;
            let summary = engine::run_with(
                RunOptions {
                    config: cfg,
                    live,
                    progress: false,
                },
                stop_flag(),
                hub.clone(),
                ops,
            )?;
            print_summary(&summary, false);
            print_service_summary(&hub, offset);
        }
        Command::Replay {
            file,
            service_samples,
            feedback,
            api,
            format,
            rules,
            out,
            workers,
            config,
            json,
            cluster,
        } => {
            let mut cfg = match config {
                Some(p) => Config::load(&p)?,
                None => Config::from_env()?,
            };
            cfg.source.kind = SourceKind::File;
            if file.is_none() && service_samples.is_none() {
                anyhow::bail!("replay needs a log FILE, --service-samples FILE, or both");
            }
            // No log: an empty path (service samples only).
            cfg.source.path = file.unwrap_or_default();
            if service_samples.is_some() {
                cfg.anomaly.samples_file = service_samples;
            }
            if feedback.is_some() {
                cfg.anomaly.feedback_file = feedback;
            }
            cfg.source.format = format;
            cfg.source.follow = false;
            cfg.rules.dir = rules;
            cfg.rules.watch = false;
            cfg.output.dir = out;
            cfg.engine.workers = workers;
            cluster.apply(&mut cfg.engine);
            let progress = std::io::stderr().is_terminal();
            let hub = Arc::new(AnomalyHub::default());
            let ops = Arc::new(OpsHub::default());
            // The engine keeps link statistics for the API too.
            cfg.api.enabled = api.is_some();
            let api = match api {
                Some(addr) => Some(start_api(&addr, &hub, &ops, &cfg)?),
                None => None,
            };
            let offset = cfg.output.utc_offset_minutes;
            let stop = stop_flag();
            let summary = engine::run_with(
                RunOptions {
                    config: cfg,
                    live: false,
                    progress,
                },
                stop.clone(),
                hub.clone(),
                ops,
            )?;
            print_summary(&summary, json);
            print_service_summary(&hub, offset);
            if let Some(api) = api {
                eprintln!(
                    "antispider: replay done; the API keeps answering on http://{} until Ctrl-C",
                    api.addr
                );
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                api.shutdown();
            }
        }
        Command::Produce {
            file,
            brokers,
            topic,
            partitions,
            rate,
        } => {
            use antispider::sink::kafka::{create_topic, produce_lines};
            let kafka = antispider::config::KafkaConfig {
                brokers,
                ..Default::default()
            };
            create_topic(&kafka, &topic, partitions)?;
            let input: Box<dyn std::io::BufRead> = if file == std::path::Path::new("-") {
                Box::new(std::io::stdin().lock())
            } else {
                Box::new(std::io::BufReader::new(
                    std::fs::File::open(&file)
                        .with_context(|| format!("{}: cannot open", file.display()))?,
                ))
            };
            let n = produce_lines(&kafka, &topic, partitions, input, rate)?;
            eprintln!("sent {n} lines to {topic} ({partitions} partitions)");
        }
        Command::Gen {
            lines,
            format,
            seed,
            minutes,
            out,
            truth,
            service,
            days,
            apps,
            episodes_per_kind,
            churn,
        } => {
            if let Some(path) = &service {
                let traffic = antispider::anomaly::gen::generate(
                    &antispider::anomaly::gen::ServiceGenOptions {
                        seed,
                        apps,
                        days,
                        episodes_per_kind,
                        ..Default::default()
                    },
                );
                let (episodes, feedback) = traffic.write_files(path)?;
                eprintln!(
                    "wrote {} service samples ({} apps, {} days) to {}, {} anomaly episodes to {}, operator feedback to {}",
                    traffic.samples.len(),
                    apps,
                    days,
                    path.display(),
                    traffic.episodes.len(),
                    episodes.display(),
                    feedback.display()
                );
            }
            let Some(out) = out else {
                if service.is_none() {
                    anyhow::bail!("gen needs -o FILE (a log), --service FILE, or both");
                }
                return Ok(());
            };
            let opts = antispider::gen::GenOptions {
                lines,
                format,
                seed,
                duration_ms: minutes * 60_000,
                churn,
                ..Default::default()
            };
            let truth = truth.unwrap_or_else(|| out.with_extension("truth.csv"));
            let mut log = std::io::BufWriter::new(
                std::fs::File::create(&out)
                    .with_context(|| format!("{}: cannot create", out.display()))?,
            );
            let mut t = std::io::BufWriter::new(
                std::fs::File::create(&truth)
                    .with_context(|| format!("{}: cannot create", truth.display()))?,
            );
            let s = antispider::gen::generate(&opts, &mut log, &mut t)?;
            eprintln!(
                "wrote {} lines ({} malformed) to {}, ground truth to {}; IPs per kind: {:?}",
                s.lines,
                s.malformed,
                out.display(),
                truth.display(),
                s.ips_by_kind
            );
        }
        Command::Parse {
            file,
            format,
            workers,
            process,
            rules,
            config,
            json,
        } => {
            use antispider::bench;
            let cfg = match config {
                Some(p) => Config::load(&p)?,
                None => Config::from_env()?,
            };
            let stage = if process {
                Some(bench::ProcessStage {
                    rules: antispider::dataprocess::DataRules::load_dir(&rules)?,
                    masker: antispider::dataprocess::Masker::new(
                        cfg.masking.mode,
                        &cfg.mask_secret(),
                    ),
                    cookies: antispider::dataprocess::CookieNames {
                        jsessionid: cfg.cookies.jsessionid.clone(),
                        user_id: cfg.cookies.user_id.clone(),
                    },
                })
            } else {
                None
            };
            let limits = antispider::format::ParseLimits {
                max_line_bytes: cfg.source.max_line_bytes,
            };
            let s = bench::parse_floor(&file, format, workers, limits, stage.as_ref())?;
            if s.parsed == 0 && s.lines > 0 {
                eprintln!("antispider: no line parsed as {format}; is --format right?");
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                let dp = if process {
                    format!("  filtered {}  processed {}", s.filtered, s.processed)
                } else {
                    String::new()
                };
                println!(
                    "{}: lines {}  parsed {}  errors {}{dp}  {:.2} s  {:.0} lines/s  workers {}",
                    s.stage,
                    s.lines,
                    s.parsed,
                    s.errors,
                    s.elapsed_secs,
                    s.lines_per_sec,
                    s.workers
                );
            }
        }
        Command::Feed {
            file,
            to,
            rate,
            seconds,
            retime,
            format,
            truncate,
            json,
        } => {
            use antispider::bench;
            let opts = bench::FeedOptions {
                input: file,
                output: to,
                rate,
                seconds,
                retime: retime.then_some(format),
                truncate,
            };
            if !retime && seconds.is_some() {
                eprintln!(
                    "antispider: without --retime, a second pass over the file repeats old event times"
                );
            }
            let s = bench::feed(&opts, &stop_flag())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                eprintln!(
                    "fed {} lines ({} bytes, {} passes, {} not retimed) to {} in {:.2} s: {:.0} lines/s (target {:.0}, at most {} lines behind)",
                    s.lines,
                    s.bytes,
                    s.passes,
                    s.not_retimed,
                    opts.output.display(),
                    s.elapsed_secs,
                    s.achieved_rate,
                    s.target_rate,
                    s.max_behind_lines
                );
            }
        }
    }
    Ok(())
}

/// Starts the HTTP API on `listen` over the anomaly results of `hub` and the engine's `ops`.
fn start_api(
    listen: &str,
    hub: &Arc<AnomalyHub>,
    ops: &Arc<OpsHub>,
    cfg: &Config,
) -> anyhow::Result<antispider::api::ApiHandle> {
    let handle = antispider::api::start(
        listen,
        antispider::api::ApiState {
            anomaly: hub.clone(),
            ops: ops.clone(),
            token: cfg.api.token().map(Arc::from),
            token_env: cfg.api.token_env.clone(),
            utc_offset_minutes: cfg.output.utc_offset_minutes,
        },
    )?;
    eprintln!("antispider: API on http://{}", handle.addr);
    Ok(handle)
}

/// The per-app service anomaly summary (stderr), when there were service samples.
fn print_service_summary(hub: &AnomalyHub, utc_offset_minutes: i32) {
    if let Some(s) = hub.summary.lock().ok().and_then(|s| s.clone()) {
        if s.samples_in > 0 {
            eprint!("{}", s.render(utc_offset_minutes));
        }
    }
}

fn print_summary(s: &Summary, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(s).expect("summary serializes")
        );
        return;
    }
    let c = &s.counters;
    eprintln!(
        "lines read {}  parsed {}  filtered {}  dead-lettered {} (late {})  query {}  book {}  other {}\n\
         IPs blacklisted {}  decisions add {} remove {}  {:.1} s  {:.0} lines/s  workers {}",
        c.lines_read,
        c.parsed,
        c.filtered,
        c.dead_lettered,
        c.late,
        c.processed_query,
        c.processed_book,
        c.processed_other,
        s.ips_blacklisted,
        c.decisions_add,
        c.decisions_remove,
        s.elapsed_secs,
        s.lines_per_sec,
        s.workers
    );
    if c.replayed > 0 || c.kafka_commits > 0 {
        eprintln!(
            "kafka: re-read {} lines after a restart (decisions recomputed {}), {} commits",
            c.replayed, c.decisions_replayed, c.kafka_commits
        );
    }
    let l = &s.latency;
    if l.tick.samples > 0 {
        eprintln!(
            "latency line read → decisions written: from a tick's first line p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms ({} ticks); from its last line p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms; per decision (from its tick's first line) p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms ({} decisions)",
            l.tick.p50_ms,
            l.tick.p99_ms,
            l.tick.max_ms,
            l.tick.samples,
            l.tick_last_line.p50_ms,
            l.tick_last_line.p99_ms,
            l.tick_last_line.max_ms,
            l.decision.p50_ms,
            l.decision.p99_ms,
            l.decision.max_ms,
            l.decision.samples
        );
    }
}
