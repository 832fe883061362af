//! The live rule tables of one process: from the `rules/` directory (watched for edits) or
//! from MySQL (re-read when the admin UI sets a Redis change flag, SPEC §2.2).
//!
//! One feed per process, polled by worker 0; every worker picks up a new version with
//! [`RuleFeed::newer_than`], so a MySQL change flag is taken once, not once per worker.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::mysql::MysqlRuleFeed;
use super::{edit, RuleTables, RuleWatcher};
use crate::config::Config;
use crate::sink::redis::RedisChangeFlags;

enum Origin {
    Dir {
        dir: PathBuf,
        watcher: Option<RuleWatcher>,
    },
    Mysql(MysqlRuleFeed),
}

/// Why a rule edit was refused.
#[derive(Debug)]
pub enum EditError {
    /// The table name or its rows are wrong (the message says which and how).
    Invalid(String),
    /// The tables come from MySQL: edits go there.
    NotHere(String),
    /// The rule file could not be written.
    Io(String),
}

impl std::fmt::Display for EditError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EditError::Invalid(m) | EditError::NotHere(m) | EditError::Io(m) => f.write_str(m),
        }
    }
}

pub struct RuleFeed {
    origin: Mutex<Origin>,
    current: RwLock<(u64, Arc<RuleTables>)>,
    /// Where the tables come from, for log lines.
    pub name: String,
}

/// How long start-up waits for MySQL before it falls back to the directory.
const FIRST_LOAD: Duration = Duration::from_secs(15);

impl RuleFeed {
    /// Loads the first tables: from MySQL when `[mysql] rules = true` (falling back to
    /// `rules.dir` with an error if MySQL does not answer in time), else from `rules.dir`.
    pub fn start(cfg: &Config) -> anyhow::Result<RuleFeed> {
        let dir = &cfg.rules.dir;
        if cfg.mysql.rules {
            let flags = RedisChangeFlags::new(&cfg.redis)
                .context("[mysql] rules = true reads the change flags from [redis] url")?;
            let mut feed = MysqlRuleFeed::start(&cfg.mysql, Box::new(flags))?;
            let deadline = Instant::now() + FIRST_LOAD;
            let first = loop {
                match feed.poll() {
                    Some(Ok(t)) => break Some(t),
                    Some(Err(e)) => tracing::warn!("rules from MySQL: {e:#} (retrying)"),
                    None => {}
                }
                if Instant::now() > deadline {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            let tables = match first {
                Some(t) => t,
                None => {
                    tracing::error!(
                        "MySQL gave no rule tables within {} s: starting with {} until it does",
                        FIRST_LOAD.as_secs(),
                        dir.display()
                    );
                    RuleTables::load_dir(dir)?
                }
            };
            return Ok(RuleFeed {
                origin: Mutex::new(Origin::Mysql(feed)),
                current: RwLock::new((0, Arc::new(tables))),
                name: "MySQL".into(),
            });
        }
        let tables = RuleTables::load_dir(dir)?;
        Ok(RuleFeed {
            origin: Mutex::new(Origin::Dir {
                dir: dir.clone(),
                watcher: cfg.rules.watch.then(|| RuleWatcher::new(dir)),
            }),
            current: RwLock::new((0, Arc::new(tables))),
            name: dir.display().to_string(),
        })
    }

    /// The tables now and their version.
    pub fn current(&self) -> (u64, Arc<RuleTables>) {
        let c = self.current.read().expect("rule feed lock");
        (c.0, c.1.clone())
    }

    /// The tables, if a version newer than `seen` exists.
    pub fn newer_than(&self, seen: u64) -> Option<(u64, Arc<RuleTables>)> {
        let c = self.current.read().expect("rule feed lock");
        (c.0 > seen).then(|| (c.0, c.1.clone()))
    }

    /// Looks for new tables (worker 0 calls this); a new version is published to all workers.
    /// An error leaves the previous tables in force and is returned for the log.
    pub fn poll(&self) -> anyhow::Result<()> {
        let news = match &mut *self.origin.lock().expect("rule feed lock") {
            Origin::Dir {
                watcher: Some(w), ..
            } => w.poll(),
            Origin::Dir { watcher: None, .. } => None,
            Origin::Mysql(f) => f.poll(),
        };
        match news {
            None => Ok(()),
            Some(Err(e)) => Err(e),
            Some(Ok(tables)) => {
                let mut c = self.current.write().expect("rule feed lock");
                *c = (c.0 + 1, Arc::new(tables));
                Ok(())
            }
        }
    }

    /// Replaces table `name` (e.g. `nh_rule`) with `rows` (JSON, see [`edit::with_table`]):
    /// checks the new tables as a load from files would, writes the table's rule file (its
    /// comment header kept) and publishes the new version to every worker. Returns the
    /// version and the table's row count.
    pub fn replace_table(
        &self,
        name: &str,
        rows: serde_json::Value,
    ) -> Result<(u64, usize), EditError> {
        let Some(file) = edit::file_of(name) else {
            return Err(EditError::Invalid(edit::unknown_table(name)));
        };
        // Edits and polls take turns: a poll never publishes tables older than an edit.
        let mut origin = self.origin.lock().expect("rule feed lock");
        let (dir, watcher) =
            match &mut *origin {
                Origin::Mysql(_) => return Err(EditError::NotHere(
                    "the rule tables come from MySQL (`[mysql] rules = true`): edit them there; \
                     the admin UI's Redis change flag makes the engine re-read them"
                        .into(),
                )),
                Origin::Dir { dir, watcher } => (dir.clone(), watcher),
            };
        let (_, current) = self.current();
        let new = edit::with_table(&current, file, rows)
            .map_err(|e| EditError::Invalid(format!("{name}: {e:#}")))?;
        new.validate(&dir)
            .map_err(|e| EditError::Invalid(format!("{e:#}")))?;
        crate::dataprocess::DataRules::compile(&new.filter, &new.classify, &new.analyze)
            .map_err(|e| EditError::Invalid(format!("{name}: {e:#}")))?;

        let path = dir.join(file);
        let header = std::fs::read_to_string(&path)
            .map(|t| edit::comment_header(&t))
            .unwrap_or_default();
        let text = edit::table_toml(&new, file, &header)
            .map_err(|e| EditError::Invalid(format!("{e:#}")))?;
        // Written whole under another name, then renamed: a reader never sees half a file.
        let tmp = dir.join(format!(".{file}.edit"));
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| EditError::Io(format!("{}: cannot write: {e}", path.display())))?;
        if let Some(w) = watcher {
            w.mark_seen();
        }
        let rows = edit::table_json(&new, file)
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or(0);
        let mut c = self.current.write().expect("rule feed lock");
        *c = (c.0 + 1, Arc::new(new));
        Ok((c.0, rows))
    }
}
