//! Service samples (SPEC §6): one row per app per 1-minute bucket, `[response_time,
//! request_count, fail_count]`, either derived from the access logs or posted from outside in
//! the original's `cat_resource` JSON shape.

use differential_dataflow::operators::CountTotal;
use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize};

use crate::event::LogRecord;
use crate::memo::{LineMemo, PatternBits};
use crate::rulecompute::Coll;

/// Length of a sample bucket: one minute, in milliseconds.
pub const BUCKET_MS: i64 = 60_000;

/// One monitoring sample of one service (app) over one minute.
///
/// JSON field names follow the original's `cat_resource` (`appid`, `response_time`,
/// `request_count`, `fail_count`; the original's `create_time` is accepted for `time_ms`).
/// `appid` is an integer in the original; both a JSON number and a string are accepted and it
/// is kept as a string.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceSample {
    #[serde(deserialize_with = "appid_from_int_or_string")]
    pub appid: String,
    /// Start of the minute bucket, ms since the Unix epoch.
    #[serde(default, alias = "create_time")]
    pub time_ms: i64,
    /// Mean response time over the bucket's requests, in seconds (0 when there were none).
    pub response_time: f64,
    pub request_count: u64,
    pub fail_count: u64,
    /// Stable id, `appid:minute-start-ms` by default (see [`ServiceSample::make_id`]).
    #[serde(default)]
    pub id: String,
}

fn appid_from_int_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum IntOrString {
        Int(i64),
        Str(String),
    }
    Ok(match IntOrString::deserialize(d)? {
        IntOrString::Int(i) => i.to_string(),
        IntOrString::Str(s) => s,
    })
}

impl ServiceSample {
    /// A sample with its default id.
    pub fn new(
        appid: impl Into<String>,
        time_ms: i64,
        response_time: f64,
        request_count: u64,
        fail_count: u64,
    ) -> Self {
        let appid = appid.into();
        let id = Self::make_id(&appid, time_ms);
        ServiceSample {
            appid,
            time_ms,
            response_time,
            request_count,
            fail_count,
            id,
        }
    }

    /// The default id of the sample of `appid` at `time_ms`: `"appid:time_ms"`.
    pub fn make_id(appid: &str, time_ms: i64) -> String {
        format!("{appid}:{time_ms}")
    }

    /// Builds a sample from the aggregates of [`service_samples`].
    pub fn from_sums(appid: &str, minute_ms: u64, sum_us: u64, count: u64, fails: u64) -> Self {
        let rt = if count == 0 {
            0.0
        } else {
            sum_us as f64 / count as f64 / 1e6
        };
        Self::new(appid, minute_ms as i64, rt, count, fails)
    }

    /// Fills a missing id and rounds `time_ms` down to its minute; rejects what the original
    /// rejected (`fail_count > request_count`) and non-finite or negative response times.
    pub fn normalize(mut self) -> Result<Self, String> {
        if self.fail_count > self.request_count {
            return Err("fail_count must not exceed request_count".into());
        }
        if !self.response_time.is_finite() || self.response_time < 0.0 {
            return Err("response_time must be a finite, non-negative number".into());
        }
        if self.appid.is_empty() {
            return Err("appid is required".into());
        }
        self.time_ms = self.time_ms.div_euclid(BUCKET_MS) * BUCKET_MS;
        if self.id.is_empty() {
            self.id = Self::make_id(&self.appid, self.time_ms);
        }
        Ok(self)
    }

    /// Failures per request; 0 for a minute without requests (see `normal` for how such a
    /// minute is judged).
    pub fn fail_rate(&self) -> f64 {
        if self.request_count == 0 {
            0.0
        } else {
            self.fail_count as f64 / self.request_count as f64
        }
    }
}

/// A row of the app-mapping rule table: which requests belong to which app.
///
/// Empty patterns match anything. `server_addr` and `host` are exact matches, or prefix
/// matches when they end with `*` (`"10.1.*"`). `url_regex` is searched in the request line
/// (`METHOD URI PROTOCOL`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AppRule {
    pub id: u64,
    pub appid: String,
    #[serde(default)]
    pub server_addr: String,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub url_regex: String,
}

/// The app rules, compiled and ordered by id; the first matching rule wins.
#[derive(Clone, Debug, Default)]
pub struct AppRules {
    /// Each rule with its `url_regex`, tested one by one. Not one `RegexSet`: the usual
    /// patterns are anchored prefixes (`^\S+ /B2C40/query/`) that a lone `is_match` decides in
    /// a few bytes, where a set must report every match and so scans the whole line (and
    /// the empty pattern matches at every position of it): 10 % more instructions per replay.
    rules: Vec<(AppRule, Option<Regex>)>,
    /// Per recent request line, which rules' `url_regex` it matches (bit `i` for the rule at
    /// position `i`; a rule without one always matches): every request is tested, and the
    /// regex searches were ~1.7 % of a replay's instructions.
    url_matches: LineMemo<PatternBits>,
}

fn glob_match(pattern: &str, value: &str) -> bool {
    if pattern.is_empty() || pattern == "*" {
        return true;
    }
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

impl AppRules {
    /// Compiles the rules; a rule with an invalid regex is an error naming its id.
    pub fn new(mut rules: Vec<AppRule>) -> Result<Self, String> {
        rules.sort_by_key(|r| r.id);
        let rules = rules
            .into_iter()
            .map(|r| {
                let re = if r.url_regex.is_empty() {
                    None
                } else {
                    Some(
                        Regex::new(&r.url_regex)
                            .map_err(|e| format!("app rule {}: bad url_regex: {e}", r.id))?,
                    )
                };
                Ok((r, re))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(AppRules {
            rules,
            url_matches: LineMemo::default(),
        })
    }

    /// The app of a request: the appid of the first (lowest id) matching rule. (The ingest
    /// reads the rule's position instead, [`AppRules::request_by_rule`].)
    #[cfg(test)]
    pub fn app_of(&mut self, server_addr: &str, host: &str, request: &str) -> Option<String> {
        self.rule_of(server_addr, host, request)
            .map(|i| self.appid(i).to_string())
    }

    /// The position of the first (lowest id) rule matching a request.
    fn rule_of(&mut self, server_addr: &str, host: &str, request: &str) -> Option<usize> {
        let rules = &self.rules;
        let url = self.url_matches.get_or_insert_with(request, || {
            let matched = rules
                .iter()
                .enumerate()
                .filter(|(_, (_, re))| re.as_ref().is_none_or(|re| re.is_match(request)));
            PatternBits::new(rules.len(), matched.map(|(i, _)| i))
        });
        rules.iter().enumerate().position(|(i, (r, _))| {
            url.contains(i) && glob_match(&r.server_addr, server_addr) && glob_match(&r.host, host)
        })
    }

    /// The appid of the rule at `index` (from [`AppRules::request_by_rule`]).
    pub fn appid(&self, index: usize) -> &str {
        &self.rules[index].0.appid
    }

    /// The input of [`service_samples`] for one log record: `(appid, minute start ms,
    /// request_time µs, failed)`; `None` when no rule maps the record to an app. A record
    /// without `request_time` counts as a request of 0 µs; a failure is a status ≥ 500.
    /// (The ingest sums by rule position, [`AppRules::request_by_rule`].)
    #[cfg(test)]
    pub fn request_of(&mut self, r: &LogRecord) -> Option<Request> {
        let (rule, minute, us, failed) = self.request_by_rule(r)?;
        Some((self.appid(rule).to_string(), minute, us, failed))
    }

    /// [`AppRules::request_of`] with the matching rule's position in place of its appid
    /// ([`AppRules::appid`]): the per-line ingest sums requests by it without allocating.
    pub fn request_by_rule(&mut self, r: &LogRecord) -> Option<(usize, u64, u64, bool)> {
        let rule = self.rule_of(&r.server_addr, &r.host, &r.request)?;
        let minute = r.time_ms.div_euclid(BUCKET_MS) * BUCKET_MS;
        let us = r
            .request_time
            .filter(|t| t.is_finite() && *t >= 0.0)
            .map(|t| (t * 1e6).round() as u64)
            .unwrap_or(0);
        let failed = r.status.is_some_and(|s| s >= 500);
        Some((rule, minute.max(0) as u64, us, failed))
    }
}

/// One request as [`service_samples`] reads it: `(appid, minute start ms, request_time µs,
/// failed)`.
pub type Request = (String, u64, u64, bool);
/// `(appid, minute start ms)`.
pub type BucketKey = (String, u64);
/// `(sum of request_time µs, requests, failures)`.
pub type BucketSums = (u64, u64, u64);

/// Per app per minute, `(sum of request_time µs, requests, failures)`.
///
/// The sums are carried in the difference type (a triple of counts, via `explode`) and
/// collapsed by `count_total`, so a new request costs one update per key, never a scan of the
/// bucket's requests. Retracting a request retracts its contribution.
pub fn service_samples<'s>(requests: Coll<'s, Request>) -> Coll<'s, (BucketKey, BucketSums)> {
    requests
        .explode(|(app, minute, us, failed)| {
            Some(((app, minute), (us as isize, 1isize, failed as isize)))
        })
        .count_total()
        .map(|(key, (sum, count, fails))| {
            (
                key,
                (sum.max(0) as u64, count.max(0) as u64, fails.max(0) as u64),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use differential_dataflow::input::Input;
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::rc::Rc;

    type Row = (BucketKey, BucketSums);

    #[test]
    fn sums_per_app_and_minute() {
        let seen = timely::execute_directly(move |worker| {
            let seen: Rc<RefCell<Vec<(Row, u64, isize)>>> = Rc::default();
            let sink = seen.clone();
            let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
                let (input, reqs) = scope.new_collection::<(String, u64, u64, bool), isize>();
                let probe = service_samples(reqs)
                    .inspect(move |u| sink.borrow_mut().push(u.clone()))
                    .probe()
                    .0;
                (input, probe)
            });
            input.advance_to(1);
            input.insert(("a".into(), 0, 100_000, false));
            input.insert(("a".into(), 0, 300_000, true));
            input.insert(("a".into(), 60_000, 50_000, false));
            input.insert(("b".into(), 0, 1_000_000, true));
            input.advance_to(2);
            // One request of app a at minute 0 is retracted, another arrives.
            input.remove(("a".into(), 0, 300_000, true));
            input.insert(("a".into(), 0, 500_000, false));
            input.advance_to(3);
            input.flush();
            while probe.less_than(&3) {
                worker.step();
            }
            seen.take()
        });
        let at = |t: u64| {
            let mut m: BTreeMap<Row, isize> = BTreeMap::new();
            for (row, time, diff) in seen.iter() {
                if *time <= t {
                    *m.entry(row.clone()).or_default() += diff;
                }
            }
            m.retain(|_, d| *d != 0);
            m
        };
        let t1 = at(1);
        assert_eq!(t1.len(), 3);
        assert_eq!(t1[&(("a".into(), 0), (400_000, 2, 1))], 1);
        assert_eq!(t1[&(("a".into(), 60_000), (50_000, 1, 0))], 1);
        assert_eq!(t1[&(("b".into(), 0), (1_000_000, 1, 1))], 1);
        let t2 = at(2);
        assert_eq!(t2.len(), 3);
        assert_eq!(t2[&(("a".into(), 0), (600_000, 2, 0))], 1);
        let s = ServiceSample::from_sums("a", 0, 600_000, 2, 0);
        assert!((s.response_time - 0.3).abs() < 1e-12);
        assert_eq!(s.id, "a:0");
    }

    #[test]
    fn cat_resource_json() {
        let s: ServiceSample = serde_json::from_str(
            r#"{"appid": 1001, "response_time": 0.5, "request_count": 10, "fail_count": 1,
                "create_time": 90000}"#,
        )
        .unwrap();
        let s = s.normalize().unwrap();
        assert_eq!(s.appid, "1001");
        assert_eq!(s.time_ms, 60_000);
        assert_eq!(s.id, "1001:60000");
        let bad: ServiceSample = serde_json::from_str(
            r#"{"appid": "x", "response_time": 0.5, "request_count": 1, "fail_count": 2}"#,
        )
        .unwrap();
        assert!(bad.normalize().is_err());
        let v = serde_json::to_value(&s).unwrap();
        for f in [
            "appid",
            "response_time",
            "request_count",
            "fail_count",
            "id",
        ] {
            assert!(v.get(f).is_some(), "{f}");
        }
    }

    #[test]
    fn app_rules_first_match() {
        let mut rules = AppRules::new(vec![
            AppRule {
                id: 2,
                appid: "web".into(),
                ..Default::default()
            },
            AppRule {
                id: 1,
                appid: "booking".into(),
                host: "www.example.com".into(),
                url_regex: r"^POST /book".into(),
                ..Default::default()
            },
            AppRule {
                id: 0,
                appid: "internal".into(),
                server_addr: "10.0.*".into(),
                ..Default::default()
            },
        ])
        .unwrap();
        // Each asked twice: the second answer comes from the memo of url matches, which
        // must not stand in for the server and host patterns.
        for _ in 0..2 {
            let mut app =
                |server: &str, host: &str, request: &str| rules.app_of(server, host, request);
            assert_eq!(app("10.0.3.4", "x", "GET /").as_deref(), Some("internal"));
            assert_eq!(
                app("1.2.3.4", "www.example.com", "POST /book/1 HTTP/1.1").as_deref(),
                Some("booking")
            );
            assert_eq!(
                app("1.2.3.4", "other.example.com", "POST /book/1 HTTP/1.1").as_deref(),
                Some("web")
            );
            assert_eq!(
                app("1.2.3.4", "www.example.com", "GET /book HTTP/1.1").as_deref(),
                Some("web")
            );
            assert_eq!(app("10.0.0.9", "x", "GET /").as_deref(), Some("internal"));
        }
        let rec = LogRecord {
            time_ms: 125_000,
            request: "GET / HTTP/1.1".into(),
            server_addr: "10.0.0.1".into(),
            status: Some(502),
            request_time: Some(0.25),
            ..Default::default()
        };
        assert_eq!(
            rules.request_of(&rec),
            Some(("internal".into(), 120_000, 250_000, true))
        );
        assert!(AppRules::new(vec![AppRule {
            url_regex: "(".into(),
            ..Default::default()
        }])
        .is_err());
    }
}
