//! The normal-sample rule (SPEC §6) as a rule table.
//!
//! A sample is *normal* when `response_time < response_time_max` and
//! `fail_count / request_count < fail_rate_max`.
//!
//! Zero counts, unlike the original (which replaced a zero `request_count` *and* a zero
//! `fail_count` by 1, so that a sample with no failures and ≤ 5 requests was never normal):
//! - `fail_count == 0` means no failures: fail rate 0;
//! - `request_count == 0` (an idle minute) has no fail rate. It is normal only when it is
//!   consistent — no failures and a response time of 0 (nothing was measured). Whether an idle
//!   minute is *unusual* for that app is the models' question, not the rule's: a zero-traffic
//!   minute of a busy app lies far from its centroids, of a rarely used app it does not.

use serde::{Deserialize, Serialize};

use super::sample::ServiceSample;

/// A row of the normal-sample rule table. `appid: None` is the default for every app; a row
/// naming an app overrides it for that app.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NormalRule {
    pub id: u64,
    #[serde(default)]
    pub appid: Option<String>,
    #[serde(default = "default_rt_max")]
    pub response_time_max: f64,
    #[serde(default = "default_fail_rate_max")]
    pub fail_rate_max: f64,
}

fn default_rt_max() -> f64 {
    1.2
}

fn default_fail_rate_max() -> f64 {
    0.2
}

impl Default for NormalRule {
    fn default() -> Self {
        NormalRule {
            id: 0,
            appid: None,
            response_time_max: default_rt_max(),
            fail_rate_max: default_fail_rate_max(),
        }
    }
}

/// Whether `s` is a normal sample under `rule` (see the module docs for zero counts).
pub fn is_normal(s: &ServiceSample, rule: &NormalRule) -> bool {
    if s.request_count == 0 {
        return s.fail_count == 0 && s.response_time == 0.0;
    }
    if s.fail_count > s.request_count || !s.response_time.is_finite() {
        return false;
    }
    s.response_time < rule.response_time_max
        && (s.fail_count as f64 / s.request_count as f64) < rule.fail_rate_max
}

/// The rule in force for `appid`: the lowest-id row naming it, else the lowest-id default row,
/// else [`NormalRule::default`].
pub fn rule_for<'a>(rules: &'a [NormalRule], appid: &str) -> std::borrow::Cow<'a, NormalRule> {
    let pick = |f: &dyn Fn(&NormalRule) -> bool| rules.iter().filter(|r| f(r)).min_by_key(|r| r.id);
    pick(&|r| r.appid.as_deref() == Some(appid))
        .or_else(|| pick(&|r| r.appid.is_none()))
        .map(std::borrow::Cow::Borrowed)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(rt: f64, n: u64, f: u64) -> ServiceSample {
        ServiceSample::new("a", 0, rt, n, f)
    }

    #[test]
    fn thresholds() {
        let r = NormalRule::default();
        assert!(is_normal(&s(0.3, 100, 5), &r));
        assert!(!is_normal(&s(1.2, 100, 5), &r), "rt bound is strict");
        assert!(
            !is_normal(&s(0.3, 100, 20), &r),
            "fail-rate bound is strict"
        );
        assert!(is_normal(&s(0.3, 100, 19), &r));
        assert!(!is_normal(&s(f64::NAN, 100, 0), &r));
    }

    #[test]
    fn zero_counts() {
        let r = NormalRule::default();
        // No failures with few requests is normal (the original excluded it).
        assert!(is_normal(&s(0.2, 1, 0), &r));
        assert!(is_normal(&s(0.2, 3, 0), &r));
        // An idle minute: normal only if consistent.
        assert!(is_normal(&s(0.0, 0, 0), &r));
        assert!(!is_normal(&s(0.5, 0, 0), &r));
        assert!(!is_normal(&s(0.0, 0, 1), &r));
        // One failure of one request.
        assert!(!is_normal(&s(0.2, 1, 1), &r));
    }

    #[test]
    fn per_app_override() {
        let rules = vec![
            NormalRule {
                id: 5,
                appid: Some("slow".into()),
                response_time_max: 5.0,
                fail_rate_max: 0.2,
            },
            NormalRule {
                id: 1,
                ..Default::default()
            },
        ];
        assert_eq!(rule_for(&rules, "slow").response_time_max, 5.0);
        assert_eq!(rule_for(&rules, "other").response_time_max, 1.2);
        assert_eq!(rule_for(&[], "x").fail_rate_max, 0.2);
        let json: NormalRule = serde_json::from_str(r#"{"id": 3}"#).unwrap();
        assert_eq!(json.response_time_max, 1.2);
        assert_eq!(json.fail_rate_max, 0.2);
    }
}
