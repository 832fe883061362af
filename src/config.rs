//! Pipeline configuration: the TOML files under `dataflows/`.
//!
//! Every key has a default, so a config file only names what differs. Errors name the file and
//! the key (from the TOML parser) and say how to fix it.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use serde::{Deserialize, Serialize};

use crate::dataprocess::MaskMode;
use crate::format::LogFormat;
use crate::rulecompute::WindowSpec;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub source: SourceConfig,
    pub rules: RulesConfig,
    pub window: WindowConfig,
    pub masking: MaskingConfig,
    pub cookies: CookieConfig,
    pub output: OutputConfig,
    pub engine: EngineConfig,
    pub kafka: KafkaConfig,
    pub redis: RedisConfig,
    pub mysql: MysqlConfig,
    /// Service anomaly detection (SPEC §6), see `anomaly::config`.
    pub anomaly: crate::anomaly::AnomalyConfig,
    /// The HTTP API (SPEC §7), see `api`.
    pub api: crate::api::ApiConfig,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A file (or `-` for stdin).
    File,
    /// The built-in generator writes `path` first if it does not exist, then reads it.
    Generator,
    /// The `[kafka]` section's `source_topics`.
    Kafka,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceConfig {
    pub kind: SourceKind,
    /// Path of the log file; `-` reads stdin.
    pub path: PathBuf,
    pub format: LogFormat,
    /// Keep reading as the file grows (`tail -f`).
    pub follow: bool,
    /// Lines the generator writes (kind = "generator").
    pub generator_lines: u64,
    /// Longest accepted line in bytes; longer lines are dead-lettered.
    pub max_line_bytes: usize,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            kind: SourceKind::File,
            path: PathBuf::from("-"),
            format: LogFormat::Cs,
            follow: false,
            generator_lines: 200_000,
            max_line_bytes: 64 * 1024,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RulesConfig {
    /// Directory of the rule tables (`<mysql table>.toml`).
    pub dir: PathBuf,
    /// Reload edited rule files while running.
    pub watch: bool,
    /// How often to look for edits, in ms.
    pub watch_interval_ms: u64,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            dir: PathBuf::from("rules"),
            watch: true,
            watch_interval_ms: 250,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WindowConfig {
    pub length_ms: u64,
    pub slide_ms: u64,
    /// Events whose tick is this far behind the newest tick seen are late (dead-lettered).
    pub allowed_lateness_ms: u64,
    /// While the input is idle, event time follows the wall clock, held back by this much
    /// (lines in transit, e.g. a Kafka fetch, must not find their ticks already closed).
    pub idle_grace_ms: u64,
    /// `query` (SPEC default: processed Query requests) or `all` processed requests.
    pub input: WindowInput,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowInput {
    Query,
    All,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            length_ms: 300_000,
            slide_ms: 1_000,
            allowed_lateness_ms: 10_000,
            idle_grace_ms: 500,
            input: WindowInput::Query,
        }
    }
}

impl WindowConfig {
    pub fn spec(&self) -> WindowSpec {
        WindowSpec {
            length_ms: self.length_ms,
            slide_ms: self.slide_ms,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaskingConfig {
    pub mode: MaskMode,
    /// Environment variable holding the HMAC secret.
    pub secret_env: String,
}

impl Default for MaskingConfig {
    fn default() -> Self {
        MaskingConfig {
            mode: MaskMode::Hmac,
            secret_env: "ANTISPIDER_MASK_SECRET".into(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CookieConfig {
    pub jsessionid: String,
    pub user_id: String,
}

impl Default for CookieConfig {
    fn default() -> Self {
        CookieConfig {
            jsessionid: "JSESSIONID".into(),
            user_id: "userId4logCookie".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessedFormat {
    /// The original 19 `#CS#`-joined fields.
    Cs,
    Json,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputConfig {
    /// Directory of the result files.
    pub dir: PathBuf,
    pub processed_format: ProcessedFormat,
    /// Print each blacklist decision on stdout as it happens.
    pub print_decisions: bool,
    /// UTC offset (minutes) used to render times in outputs (+480 = China Standard Time).
    pub utc_offset_minutes: i32,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            dir: PathBuf::from("out"),
            processed_format: ProcessedFormat::Cs,
            print_decisions: false,
            utc_offset_minutes: 480,
        }
    }
}

/// Kafka: the log topics read when `source.kind = "kafka"`, and the output topics (each one
/// written when its name is not empty).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port,host:port`.
    pub brokers: String,
    /// Consumer group whose committed offsets mark what has been fully processed.
    pub group_id: String,
    pub source_topics: Vec<KafkaTopic>,
    /// Where to start a partition that has no committed offset: `earliest` or `latest`.
    pub start: KafkaStart,
    /// Stop when every partition reaches the end it had at start-up (a bounded backfill);
    /// otherwise keep consuming until stopped.
    pub stop_at_end: bool,
    /// Commit offsets (of input whose outputs are all written) at most this often.
    pub commit_interval_ms: u64,
    /// After a restart, re-read at most this many messages per partition before the committed
    /// offset when the commit carries no replay position (written by another tool).
    pub rewind_messages: i64,
    pub processed_query_topic: String,
    pub processed_book_topic: String,
    pub blacklist_topic: String,
    pub deadletter_topic: String,
    pub service_anomalies_topic: String,
    /// Partitions of an output topic the engine creates (when it does not exist yet).
    pub output_partitions: i32,
    /// Extra librdkafka properties for the consumer and producer (e.g. security settings).
    pub client: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaTopic {
    pub name: String,
    #[serde(default = "default_format")]
    pub format: LogFormat,
}

fn default_format() -> LogFormat {
    LogFormat::Cs
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KafkaStart {
    Earliest,
    Latest,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            group_id: "antispider".into(),
            source_topics: Vec::new(),
            start: KafkaStart::Earliest,
            stop_at_end: false,
            commit_interval_ms: 1000,
            rewind_messages: 2_000_000,
            processed_query_topic: String::new(),
            processed_book_topic: String::new(),
            blacklist_topic: String::new(),
            deadletter_topic: String::new(),
            service_anomalies_topic: String::new(),
            output_partitions: 1,
            client: Default::default(),
        }
    }
}

impl KafkaConfig {
    /// True when any output topic is configured.
    pub fn produces(&self) -> bool {
        [
            &self.processed_query_topic,
            &self.processed_book_topic,
            &self.blacklist_topic,
            &self.deadletter_topic,
            &self.service_anomalies_topic,
        ]
        .iter()
        .any(|t| !t.is_empty())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Worker threads in this process (every process of a cluster runs as many).
    pub workers: usize,
    /// Lines each worker reads per poll of its source (a file's in slices of 256, each
    /// processed before the next is read); live input steps the dataflow after each poll.
    pub batch_lines: usize,
    /// Lines each worker reads between dataflow steps while the input is bounded (a replay,
    /// a Kafka backfill with `stop_at_end`), and at most a fifth of the window in event
    /// time: larger steps make fewer, larger batches for the arrangements to merge, at the
    /// cost of more data in flight.
    pub step_lines: usize,
    /// On a bounded input (a replay, a Kafka backfill with `stop_at_end`): merge work each
    /// arrangement does whenever it is scheduled and its trace is not yet one batch
    /// (differential's idle merge effort, in updates; 0 = merge only as new batches arrive).
    /// Merging ahead keeps the window's traces in fewer, consolidated batches: the joins and
    /// reduces read fewer batches and retractions cancel their insertions sooner. Live input
    /// always merges only as batches arrive: there, merging ahead raised the peak RSS of a
    /// full window by 500 MB and doubled the p99 latency (BENCHMARKS.md, session 19).
    pub merge_effort: usize,
    /// Processes in the cluster (1: this process alone), see `cluster`.
    pub processes: usize,
    /// This process, `0..processes`.
    pub process: usize,
    /// The cluster's addresses: one `host:port` per line, in process order (timely's
    /// hostfile). Default with several processes: `127.0.0.1:2101`, `127.0.0.1:2102`, ...
    pub hostfile: Option<PathBuf>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workers: 1,
            batch_lines: 8192,
            step_lines: 32768,
            merge_effort: 10_000,
            processes: 1,
            process: 0,
            hostfile: None,
        }
    }
}

/// Redis (SPEC §2.2, §5, §7): the blacklist keys, the monitoring records and the rule-table
/// change flags. Nothing is written unless `enabled`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    pub enabled: bool,
    /// `redis://host:port/db`; no password in it, see `password_env`.
    pub url: String,
    /// Environment variable holding the Redis password (used when set and not empty).
    pub password_env: String,
    /// TTL of `CSANTI_ANTI_BLACK<ip>:<flowId>`.
    pub blacklist_ttl_secs: u64,
    /// How often a key is re-written with a fresh TTL while its IP stays blacklisted
    /// (0 = ttl / 4).
    pub refresh_secs: u64,
    /// TTL of the `CSANTI_MONITOR_*` records.
    pub monitor_ttl_secs: u64,
    /// How often the link statistics and monitor records are published (0 = never).
    pub monitor_interval_secs: u64,
    /// Writes kept while Redis is unreachable; beyond it the oldest monitor records are
    /// dropped first (blacklist keys are restored from the backup file).
    pub buffer_limit: usize,
    /// JSON-lines backup of every blacklist write, restored into Redis at start-up and after
    /// an outage. Empty = no backup.
    pub backup_path: PathBuf,
    /// DEL the key when an IP leaves the blacklist (default: let it expire, as the original).
    pub delete_on_remove: bool,
    /// How often to check that Redis still holds the sink's marker key (a flushed or restarted
    /// Redis is restored from the backup).
    pub restore_check_secs: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            enabled: false,
            url: "redis://127.0.0.1:6379/0".into(),
            password_env: "ANTISPIDER_REDIS_PASSWORD".into(),
            blacklist_ttl_secs: 3600,
            refresh_secs: 0,
            monitor_ttl_secs: 86_400,
            monitor_interval_secs: 60,
            buffer_limit: 100_000,
            backup_path: PathBuf::from("out/redis_backup.jsonl"),
            delete_on_remove: false,
            restore_check_secs: 10,
        }
    }
}

/// MySQL (SPEC §2.2, §5, §6): the rule tables (re-read when a Redis change flag is set), the
/// `nh_ip_blacklist` feedback and the anomaly results.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MysqlConfig {
    /// `mysql://user@host:port/database`; no password in it, see `password_env`.
    pub url: String,
    /// Environment variable holding the password (merged into `url` when set and not empty).
    pub password_env: String,
    /// Load the rule tables from MySQL instead of `rules.dir` (needs `[redis]` for the flags).
    pub rules: bool,
    /// Insert blacklisted IPs into `nh_ip_blacklist` (insert-once).
    pub blacklist: bool,
    /// Read operator feedback on service samples from `cat_feedback` (all rows at start, then
    /// new rows every `poll_interval_ms`), see `anomaly::feedback`.
    pub feedback: bool,
    /// How often the change flags (and new `cat_feedback` rows) are checked, in ms.
    pub poll_interval_ms: u64,
    /// Rows kept while MySQL is unreachable.
    pub buffer_limit: usize,
}

impl Default for MysqlConfig {
    fn default() -> Self {
        MysqlConfig {
            url: "mysql://antispider@127.0.0.1:3306/antispider".into(),
            password_env: "ANTISPIDER_MYSQL_PASSWORD".into(),
            rules: false,
            blacklist: false,
            feedback: false,
            poll_interval_ms: 1000,
            buffer_limit: 100_000,
        }
    }
}

impl Config {
    /// Reads a config file; relative paths in it are taken relative to the working directory.
    /// Reads a config file, then applies `ANTISPIDER__SECTION__KEY` environment overrides.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read config file", path.display()))?;
        Self::from_toml(&text, &path.display().to_string(), std::env::vars())
    }

    /// The defaults with the environment overrides applied (no config file).
    pub fn from_env() -> anyhow::Result<Config> {
        Self::from_toml("", "(defaults)", std::env::vars())
    }

    /// Parses `text` (named `origin` in errors) with `vars` as environment overrides: a variable
    /// `ANTISPIDER__KAFKA__BROKERS=h:9092` sets `[kafka] brokers`; the value is read as a TOML
    /// value when it parses as one (numbers, booleans, arrays), else as a string.
    pub fn from_toml(
        text: &str,
        origin: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Config> {
        let fix = "fix: see the config reference in README.md (section \"Configuration\")";
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            anyhow!("{origin}: {}\n  {fix}", e.to_string().trim_end())
        })?;
        let mut overridden = Vec::new();
        for (name, value) in vars {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let keys: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            if keys.iter().any(String::is_empty) {
                return Err(anyhow!(
                    "environment variable {name}: empty key; use {ENV_PREFIX}SECTION__KEY"
                ));
            }
            set_path(&mut table, &keys, parse_env_value(&value))
                .map_err(|e| anyhow!("environment variable {name}: {e}"))?;
            overridden.push(name);
        }
        let cfg: Config = table.try_into().map_err(|e: toml::de::Error| {
            let from_env = if overridden.is_empty() {
                String::new()
            } else {
                format!(" (with overrides from {})", overridden.join(", "))
            };
            anyhow!("{origin}{from_env}: {}\n  {fix}", e.to_string().trim_end())
        })?;
        cfg.validate().map_err(|e| anyhow!("{origin}: {e}"))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        self.anomaly.validate().map_err(|e| anyhow!(e))?;
        let w = &self.window;
        if w.slide_ms == 0 || w.length_ms == 0 || !w.length_ms.is_multiple_of(w.slide_ms) {
            return Err(anyhow!(
                "window.length_ms ({}) must be a positive multiple of window.slide_ms ({})",
                w.length_ms,
                w.slide_ms
            ));
        }
        if self.engine.workers == 0 {
            return Err(anyhow!("engine.workers must be at least 1"));
        }
        if self.engine.batch_lines == 0 {
            return Err(anyhow!(
                "engine.batch_lines must be at least 1 (default 8192)"
            ));
        }
        if self.engine.processes == 0 || self.engine.process >= self.engine.processes {
            return Err(anyhow!(
                "engine.process ({}) must be below engine.processes ({}, at least 1)",
                self.engine.process,
                self.engine.processes
            ));
        }
        if self.source.kind == SourceKind::Kafka && self.kafka.source_topics.is_empty() {
            return Err(anyhow!(
                "source.kind = \"kafka\" needs at least one [[kafka.source_topics]] entry (name, format)"
            ));
        }
        Ok(())
    }

    /// The masking secret: from the configured environment variable, else a fixed development
    /// secret (with a warning, since hashes are then guessable for known numbers).
    pub fn mask_secret(&self) -> Vec<u8> {
        match std::env::var(&self.masking.secret_env) {
            Ok(s) if !s.is_empty() => s.into_bytes(),
            _ => {
                if self.masking.mode == MaskMode::Hmac {
                    tracing::warn!(
                        "{} is not set: masking with the built-in development secret; set it in production",
                        self.masking.secret_env
                    );
                }
                b"antispider-development-secret".to_vec()
            }
        }
    }
}

/// Environment variables starting with this override config keys (`__` separates the keys).
pub const ENV_PREFIX: &str = "ANTISPIDER__";

fn parse_env_value(value: &str) -> toml::Value {
    let doc = format!("v = {value}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(value.into())),
        Err(_) => toml::Value::String(value.into()),
    }
}

fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) -> anyhow::Result<()> {
    let (last, parents) = keys.split_last().expect("at least one key");
    let mut t = table;
    for k in parents {
        let entry = t
            .entry(k.clone())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        t = entry
            .as_table_mut()
            .ok_or_else(|| anyhow!("{k} is not a section"))?;
    }
    t.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_configs_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows");
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "toml") {
                Config::load(&p).unwrap();
            }
        }
    }

    #[test]
    fn environment_overrides_keys() {
        let vars = [
            ("ANTISPIDER__KAFKA__BROKERS", "10.0.0.1:9092"),
            ("ANTISPIDER__WINDOW__SLIDE_MS", "500"),
            ("ANTISPIDER__OUTPUT__PRINT_DECISIONS", "true"),
            ("ANTISPIDER__SOURCE__PATH", "/var/log/nginx/access.log"),
            ("UNRELATED", "x"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let cfg = Config::from_toml("[window]\nslide_ms = 1000\n", "t.toml", vars).unwrap();
        assert_eq!(cfg.kafka.brokers, "10.0.0.1:9092");
        assert_eq!(cfg.window.slide_ms, 500);
        assert!(cfg.output.print_decisions);
        assert_eq!(cfg.source.path, Path::new("/var/log/nginx/access.log"));
        let bad = [(
            "ANTISPIDER__WINDOW__SLIDE_MS".to_string(),
            "fast".to_string(),
        )];
        let e = format!("{:#}", Config::from_toml("", "t.toml", bad).unwrap_err());
        assert!(
            e.contains("ANTISPIDER__WINDOW__SLIDE_MS") && e.contains("slide_ms"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, "[window]\nslide_ms = 'fast'\n").unwrap();
        let e = format!("{:#}", Config::load(&p).unwrap_err());
        assert!(e.contains("bad.toml") && e.contains("slide_ms"), "{e}");
        std::fs::write(&p, "[window]\nlength_ms = 1000\nslide_ms = 300\n").unwrap();
        let e = format!("{:#}", Config::load(&p).unwrap_err());
        assert!(e.contains("multiple"), "{e}");
        std::fs::write(&p, "[windw]\n").unwrap();
        assert!(format!("{:#}", Config::load(&p).unwrap_err()).contains("windw"));
    }
}
