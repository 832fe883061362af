//! The live rule tables of one process: from the `rules/` directory (watched for edits) or
//! from MySQL (re-read when the admin UI sets a Redis change flag, SPEC §2.2).
//!
//! One feed per process, polled by worker 0; every worker picks up a new version with
//! [`RuleFeed::newer_than`], so a MySQL change flag is taken once, not once per worker.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::mysql::MysqlRuleFeed;
use super::{RuleTables, RuleWatcher};
use crate::config::Config;
use crate::sink::redis::RedisChangeFlags;

enum Origin {
    Dir(Option<RuleWatcher>),
    Mysql(MysqlRuleFeed),
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
            origin: Mutex::new(Origin::Dir(cfg.rules.watch.then(|| RuleWatcher::new(dir)))),
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
            Origin::Dir(Some(w)) => w.poll(),
            Origin::Dir(None) => None,
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
}
