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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A file (or `-` for stdin).
    File,
    /// The built-in generator writes `path` first if it does not exist, then reads it.
    Generator,
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

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Worker threads in this process.
    pub workers: usize,
    /// Lines each worker reads between dataflow steps.
    pub batch_lines: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workers: 1,
            batch_lines: 8192,
        }
    }
}

impl Config {
    /// Reads a config file; relative paths in it are taken relative to the working directory.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read config file", path.display()))?;
        let cfg: Config = toml::from_str(&text).map_err(|e| {
            anyhow!(
                "{}: {}\n  fix: see the config reference in README.md (section \"Configuration\")",
                path.display(),
                e.to_string().trim_end()
            )
        })?;
        cfg.validate()
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
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
