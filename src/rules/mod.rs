//! Rule tables (SPEC §2.2): row types, loading from `rules/`, and watching for edits.
//!
//! Each table lives in `rules/<mysql table name>.toml`. [`RuleTables`] is one snapshot of all
//! of them; [`RuleWatcher`] notices edited files and yields the new snapshot, which the engine
//! diffs into the dataflow's rule input collections (a changed row = retraction + insertion).

pub mod edit;
pub mod feed;
pub mod load;
pub mod mysql;
pub mod tables;
pub use tables::*;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{anyhow, Context};

/// File names of the rule tables, named after their MySQL tables.
pub const FILTER: &str = "nh_filter_rule.toml";
pub const CLASSIFY: &str = "nh_classify_rule.toml";
pub const ANALYZE: &str = "analyzerule.toml";
pub const CRITICAL_PAGES: &str = "nh_query_critical_pages.toml";
pub const IP_BLACKLIST: &str = "nh_ip_blacklist.toml";
pub const PROCESS_INFO: &str = "nh_process_info.toml";
pub const STRATEGY: &str = "nh_strategy.toml";
pub const RULE: &str = "nh_rule.toml";
pub const MAINTENANCE: &str = "nh_rules_maintenance_table.toml";
/// Service anomalies (SPEC §6): which requests belong to which app, and the normal-sample rule.
pub const SERVICE_APP: &str = "service_app_rule.toml";
pub const SERVICE_NORMAL: &str = "service_normal_rule.toml";

pub const ALL_FILES: [&str; 11] = [
    FILTER,
    CLASSIFY,
    ANALYZE,
    CRITICAL_PAGES,
    IP_BLACKLIST,
    PROCESS_INFO,
    STRATEGY,
    RULE,
    MAINTENANCE,
    SERVICE_APP,
    SERVICE_NORMAL,
];

/// One snapshot of every rule table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuleTables {
    pub filter: Vec<FilterRule>,
    pub classify: Vec<ClassifyRule>,
    pub analyze: Vec<AnalyzeRule>,
    pub critical_pages: Vec<CriticalPage>,
    pub ip_blacklist: Vec<IpBlacklistRow>,
    pub process_info: Vec<ProcessInfo>,
    pub strategy: Vec<Strategy>,
    pub rule: Vec<Rule>,
    pub maintenance: Vec<RuleMaintenance>,
    pub service_app: Vec<crate::anomaly::AppRule>,
    pub service_normal: Vec<crate::anomaly::NormalRule>,
}

impl RuleTables {
    /// Loads every table from `dir`. A missing file is an error naming it: an empty table must
    /// be an explicit empty file, so a typo in a path never silently disables rules.
    pub fn load_dir(dir: &Path) -> anyhow::Result<RuleTables> {
        let f = |name: &str| dir.join(name);
        let tables = RuleTables {
            filter: load::load_table(&f(FILTER))?,
            classify: load::load_table(&f(CLASSIFY))?,
            analyze: load::load_table(&f(ANALYZE))?,
            critical_pages: load::load_table(&f(CRITICAL_PAGES))?,
            ip_blacklist: load::load_table(&f(IP_BLACKLIST))?,
            process_info: load::load_table(&f(PROCESS_INFO))?,
            strategy: load::load_table(&f(STRATEGY))?,
            rule: load::load_table(&f(RULE))?,
            maintenance: load::load_table(&f(MAINTENANCE))?,
            service_app: load::load_table(&f(SERVICE_APP))?,
            service_normal: load::load_table(&f(SERVICE_NORMAL))?,
        };
        tables.validate(dir)?;
        Ok(tables)
    }

    /// Checks what the row types cannot: regexes compile, CIDRs parse, scores are 1..=10.
    pub fn validate(&self, dir: &Path) -> anyhow::Result<()> {
        let check_regex = |file: &str, id: &dyn std::fmt::Display, re: &str| {
            regex::Regex::new(&format!("^(?:{re})$")).map_err(|e| {
                anyhow!(
                    "{}: row id = {id}: invalid regex: {e}\n  fix: escape regex metacharacters or correct the pattern",
                    dir.join(file).display()
                )
            })
        };
        for r in &self.critical_pages {
            check_regex(CRITICAL_PAGES, &r.id, &r.critical_page_match_expression)?;
        }
        for r in &self.filter {
            check_regex(FILTER, &r.id, &r.value)?;
        }
        for r in &self.classify {
            check_regex(CLASSIFY, &r.id, &r.expression)?;
        }
        for r in &self.ip_blacklist {
            crate::rules::IpMatcher::parse_entry(&r.ip_name).with_context(|| {
                format!(
                    "{}: row id = {}: ip_name `{}` is neither an IP nor a CIDR block",
                    dir.join(IP_BLACKLIST).display(),
                    r.id,
                    r.ip_name
                )
            })?;
        }
        crate::anomaly::AppRules::new(self.service_app.clone())
            .map_err(|e| anyhow!("{}: {e}", dir.join(SERVICE_APP).display()))?;
        for r in &self.service_normal {
            if [r.response_time_max, r.fail_rate_max]
                .iter()
                .any(|v| v.is_nan() || *v <= 0.0)
            {
                return Err(anyhow!(
                    "{}: row id = {}: response_time_max and fail_rate_max must be positive",
                    dir.join(SERVICE_NORMAL).display(),
                    r.id
                ));
            }
        }
        for r in &self.rule {
            if !(1..=10).contains(&r.score) {
                return Err(anyhow!(
                    "{}: row id = {}: score {} is outside 1..=10",
                    dir.join(RULE).display(),
                    r.id,
                    r.score
                ));
            }
        }
        Ok(())
    }
}

/// Matches IPs against `nh_ip_blacklist` rows: exact IPs and CIDR blocks.
#[derive(Clone, Debug, Default)]
pub struct IpMatcher {
    exact: std::collections::HashSet<std::net::IpAddr>,
    blocks: Vec<(std::net::IpAddr, u8)>,
}

impl IpMatcher {
    /// Parses `a.b.c.d`, an IPv6 address, or either with `/prefix`.
    pub fn parse_entry(entry: &str) -> anyhow::Result<(std::net::IpAddr, Option<u8>)> {
        let entry = entry.trim();
        let (addr, prefix) = match entry.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().context("bad prefix length")?)),
            None => (entry, None),
        };
        let ip: std::net::IpAddr = addr.parse().context("bad address")?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if prefix.is_some_and(|p| p > max) {
            return Err(anyhow!("prefix longer than {max}"));
        }
        Ok((ip, prefix))
    }

    pub fn new(rows: &[IpBlacklistRow]) -> IpMatcher {
        let mut m = IpMatcher::default();
        for row in rows {
            match IpMatcher::parse_entry(&row.ip_name) {
                Ok((ip, None)) => {
                    m.exact.insert(ip);
                }
                Ok((ip, Some(p))) => m.blocks.push((ip, p)),
                Err(_) => {} // rejected by RuleTables::validate
            }
        }
        m
    }

    pub fn contains(&self, ip: &std::net::IpAddr) -> bool {
        self.exact.contains(ip) || self.blocks.iter().any(|(net, p)| in_block(ip, net, *p))
    }
}

fn in_block(ip: &std::net::IpAddr, net: &std::net::IpAddr, prefix: u8) -> bool {
    use std::net::IpAddr::{V4, V6};
    match (ip, net) {
        (V4(a), V4(b)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
            u32::from(*a) & mask == u32::from(*b) & mask
        }
        (V6(a), V6(b)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix)
            };
            u128::from(*a) & mask == u128::from(*b) & mask
        }
        _ => false,
    }
}

/// Polls the rule directory (every call to [`RuleWatcher::poll`]) for edited files.
///
/// Polling the modification times is enough here (9 small files, checked a few times a
/// second) and needs no platform notification API.
pub struct RuleWatcher {
    dir: PathBuf,
    stamps: Vec<Option<SystemTime>>,
}

impl RuleWatcher {
    pub fn new(dir: &Path) -> RuleWatcher {
        let mut w = RuleWatcher {
            dir: dir.to_path_buf(),
            stamps: Vec::new(),
        };
        w.stamps = w.read_stamps();
        w
    }

    fn read_stamps(&self) -> Vec<Option<SystemTime>> {
        ALL_FILES
            .iter()
            .map(|f| {
                std::fs::metadata(self.dir.join(f))
                    .and_then(|m| m.modified())
                    .ok()
            })
            .collect()
    }

    /// Takes the files as they are now as seen (after the engine wrote one itself).
    pub fn mark_seen(&mut self) {
        self.stamps = self.read_stamps();
    }

    /// `Some(result)` when a file changed since the last poll: the new snapshot, or the error
    /// that keeps the previous rules in force.
    pub fn poll(&mut self) -> Option<anyhow::Result<RuleTables>> {
        let now = self.read_stamps();
        if now == self.stamps {
            return None;
        }
        self.stamps = now;
        Some(RuleTables::load_dir(&self.dir))
    }
}

/// The rows to retract and insert to turn table `old` into `new` (rows compared whole).
pub fn diff_rows<T: Ord + Clone>(old: &[T], new: &[T]) -> (Vec<T>, Vec<T>) {
    let old: std::collections::BTreeSet<&T> = old.iter().collect();
    let new: std::collections::BTreeSet<&T> = new.iter().collect();
    let removed = old.difference(&new).map(|r| (*r).clone()).collect();
    let added = new.difference(&old).map(|r| (*r).clone()).collect();
    (removed, added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rules_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        let t = RuleTables::load_dir(&dir).unwrap();
        assert_eq!(t.maintenance.len(), 8);
        assert_eq!(t.rule.len(), 8);
        assert!(t.process_info.iter().any(|p| p.status == 0));
        assert!(!t.critical_pages.is_empty());
        let mut apps = crate::anomaly::AppRules::new(t.service_app.clone()).unwrap();
        let mut req = |line: &str| apps.app_of("10.0.0.1", "b2c.csair.com", line);
        assert_eq!(
            req("POST /B2C40/query/jaxb/direct/query.ao HTTP/1.1").as_deref(),
            Some("2001")
        );
        assert_eq!(
            req("POST /B2C40/bookingnew/order/create.ao HTTP/1.1").as_deref(),
            Some("2002")
        );
        assert_eq!(
            req("GET /B2C40/dist/main/css/flight.css HTTP/1.1").as_deref(),
            Some("2000")
        );
        assert_eq!(
            apps.app_of("", "", "GET /x HTTP/1.1").as_deref(),
            Some("2000")
        );
        let normal = crate::anomaly::normal::rule_for(&t.service_normal, "2001");
        assert_eq!(normal.response_time_max, 1.2);
        assert_eq!(normal.fail_rate_max, 0.2);
    }

    #[test]
    fn ip_matcher_exact_and_cidr() {
        let rows = vec![
            IpBlacklistRow {
                id: 1,
                ip_name: "192.0.2.66".into(),
            },
            IpBlacklistRow {
                id: 2,
                ip_name: "198.51.100.0/24".into(),
            },
            IpBlacklistRow {
                id: 3,
                ip_name: "2001:db8::/32".into(),
            },
        ];
        let m = IpMatcher::new(&rows);
        assert!(m.contains(&"192.0.2.66".parse().unwrap()));
        assert!(!m.contains(&"192.0.2.67".parse().unwrap()));
        assert!(m.contains(&"198.51.100.200".parse().unwrap()));
        assert!(!m.contains(&"198.51.101.1".parse().unwrap()));
        assert!(m.contains(&"2001:db8:1::5".parse().unwrap()));
        assert!(IpMatcher::parse_entry("10.0.0.0/33").is_err());
        assert!(IpMatcher::parse_entry("nonsense").is_err());
    }

    #[test]
    fn diff_is_retraction_plus_insertion() {
        let (rm, add) = diff_rows(&[1, 2, 3], &[2, 3, 4]);
        assert_eq!((rm, add), (vec![1], vec![4]));
    }
}
