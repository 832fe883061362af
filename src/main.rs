//! `antispider`: run the engine, replay a log, or generate synthetic traffic.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use antispider::config::{Config, SourceKind};
use antispider::engine::{self, RunOptions, Summary};
use antispider::format::LogFormat;

/// The dataflow allocates and frees many small batches; mimalloc is markedly faster at that
/// than the system allocator (see BENCHMARKS.md).
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

#[derive(Subcommand)]
enum Command {
    /// Run the main job: read the configured source live, print decisions, write `out/`.
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
    },
    /// Replay a log in event time as fast as possible and write the results to OUT/.
    Replay {
        file: PathBuf,
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
        /// Log output file.
        #[arg(long, short = 'o')]
        out: PathBuf,
        /// Ground-truth CSV (default: OUT with extension .truth.csv).
        #[arg(long)]
        truth: Option<PathBuf>,
    },
}

fn main() {
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
        } => {
            let mut cfg = Config::load(&config)?;
            if let Some(w) = workers {
                cfg.engine.workers = w;
            }
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
            let summary = engine::run(
                RunOptions {
                    config: cfg,
                    live,
                    progress: false,
                },
                stop_flag(),
            )?;
            print_summary(&summary, false);
        }
        Command::Replay {
            file,
            format,
            rules,
            out,
            workers,
            config,
            json,
        } => {
            let mut cfg = match config {
                Some(p) => Config::load(&p)?,
                None => Config::default(),
            };
            cfg.source.kind = SourceKind::File;
            cfg.source.path = file;
            cfg.source.format = format;
            cfg.source.follow = false;
            cfg.rules.dir = rules;
            cfg.rules.watch = false;
            cfg.output.dir = out;
            cfg.engine.workers = workers;
            let progress = std::io::stderr().is_terminal();
            let summary = engine::run(
                RunOptions {
                    config: cfg,
                    live: false,
                    progress,
                },
                stop_flag(),
            )?;
            print_summary(&summary, json);
        }
        Command::Gen {
            lines,
            format,
            seed,
            minutes,
            out,
            truth,
        } => {
            let opts = antispider::gen::GenOptions {
                lines,
                format,
                seed,
                duration_ms: minutes * 60_000,
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
    }
    Ok(())
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
}
