//! Critical pages (`nh_query_critical_pages`), evaluated retroactively over the live window.
//!
//! The rule table is folded into one value (the sorted pattern list) and broadcast over
//! [`PARTITIONS`]; every distinct request line in the window is matched against it with one
//! `RegexSet` pass. When a rule is added or removed, the pattern list changes, every distinct
//! request is matched again, and the critical events already in the window follow.

use super::{
    arranged_here, broadcast_arranged, list_per_partition, Coll, CriticalEvent, RequestLine,
    WinRecord, PARTITIONS,
};
use differential_dataflow::operators::ThresholdTotal;
use regex::RegexSet;
use serde::{Deserialize, Serialize};

/// A compiled pattern list; the last few are cached because a rule change briefly needs both
/// the old list (to retract) and the new one.
struct MatcherCache {
    entries: Vec<(Vec<(i64, String)>, RegexSet)>,
}

impl MatcherCache {
    fn matcher(&mut self, patterns: &[(i64, String)]) -> &RegexSet {
        if let Some(pos) = self.entries.iter().position(|(p, _)| p == patterns) {
            return &self.entries[pos].1;
        }
        // Rules are validated when loaded; an invalid one that slips through matches nothing.
        let valid: Vec<String> = patterns
            .iter()
            .map(|(_, p)| format!("^(?:{p})$"))
            .filter(|p| regex::Regex::new(p).is_ok())
            .collect();
        let set = RegexSet::new(valid).unwrap_or_else(|_| RegexSet::empty());
        if self.entries.len() >= 4 {
            self.entries.remove(0);
        }
        self.entries.push((patterns.to_vec(), set));
        &self.entries.last().expect("just pushed").1
    }
}

/// Request hashes (in the window) whose request line fully matches a critical-page rule.
/// `request_lines` are the windowed `(request hash, request line)` of the events.
pub fn critical_requests<'s>(
    request_lines: Coll<'s, (u64, RequestLine)>,
    rules: Coll<'s, (i64, String)>,
) -> Coll<'s, u64> {
    let pattern_list = list_per_partition(rules, "CriticalPatternList");

    let mut cache = MatcherCache {
        entries: Vec::new(),
    };
    request_lines
        .distinct_total()
        .map(|(h, request)| (h % PARTITIONS, (h, request)))
        .join_core(pattern_list, move |_p, (h, request), list| {
            cache.matcher(list).is_match(request).then_some(*h)
        })
}

/// The critical requests of the window, as `(ip, t_ms, cookie hash)`.
///
/// The events are joined where they were read, with the critical request lines arranged on
/// every worker: exchanged by request line, a few hot lines (an API's POST endpoint) would
/// put most events' join on one worker.
pub fn critical_events<'s>(
    events: Coll<'s, WinRecord>,
    request_lines: Coll<'s, (u64, RequestLine)>,
    rules: Coll<'s, (i64, String)>,
) -> Coll<'s, CriticalEvent> {
    let critical = critical_requests(request_lines, rules).map(|h| (LineKey(h), ()));
    let events_by_request = arranged_here(
        events.map(|e| (LineKey(e.request_hash), LineEvent::new(&e))),
        "Arrange: Events by request line (here)",
    );
    let critical = broadcast_arranged(critical, "Arrange: Critical request lines (every worker)");
    events_by_request.join_core(critical, |_h, e, ()| Some((e.ip(), e.t_ms(), e.cookie)))
}

/// A request line's hash as the key of the events by request line: its own type, so that its
/// events sort by their time as well as by the key (see [`LineEvent`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct LineKey(u64);

/// The events of one request line (an API's POST endpoint: most of a step's events) are a
/// run of equal words; their times tell them apart, so that run is sorted by radix too.
impl super::batcher::SortPrefix for (LineKey, LineEvent) {
    fn sort_prefix(&self) -> u64 {
        self.0 .0
    }
    const TIE_WORDS: bool = true;
    fn tie_word(&self) -> u64 {
        self.1.t_v6
    }
}

impl super::batcher::SortPrefix for (LineKey, ()) {
    fn sort_prefix(&self) -> u64 {
        self.0 .0
    }
}

/// An event as the arrangement by request line holds it (every event of the window): four
/// words, 32 bytes, where `(t_ms, IpAddr, cookie)` took 40. Time first, shifted left by one
/// bit for the IPv6 flag (event times are below 2^45 ms, see
/// [`super::LATEST_EVENT_TIME_MS`]): the events of one request line are told apart by it in
/// one comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct LineEvent {
    t_v6: u64,
    ip_high: u64,
    ip_low: u64,
    cookie: u64,
}

impl LineEvent {
    fn new(e: &WinRecord) -> LineEvent {
        let (v6, ip_high, ip_low) = super::ip_words(e.ip);
        LineEvent {
            t_v6: (e.t_ms << 1) | u64::from(v6),
            ip_high,
            ip_low,
            cookie: e.cookie_hash,
        }
    }

    fn t_ms(&self) -> u64 {
        self.t_v6 >> 1
    }

    fn ip(&self) -> std::net::IpAddr {
        super::ip_from_words(self.t_v6 & 1 != 0, self.ip_high, self.ip_low)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The words of the events by request line follow their order: the key's, then among
        /// one key's events the times'.
        #[test]
        fn line_event_words_follow_their_order(
            records in proptest::collection::vec(
                (0u64..4, 0u64..8, 0u64..3, 0u64..3, 0u64..3),
                0..64,
            ),
        ) {
            let records: Vec<(LineKey, LineEvent)> = records
                .into_iter()
                .map(|(key, t_v6, ip_high, ip_low, cookie)| {
                    (LineKey(key), LineEvent { t_v6, ip_high, ip_low, cookie })
                })
                .collect();
            crate::rulecompute::batcher::assert_words_follow_order(records);
        }
    }

    #[test]
    fn line_events_stay_small_and_keep_their_fields() {
        // The arrangement by request line holds one per event of the window.
        assert!(std::mem::size_of::<LineEvent>() <= 32);
        for ip in ["10.1.2.3", "2001:db8::1", "::ffff:10.1.2.3"] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            let record = WinRecord {
                ip,
                t_ms: super::super::LATEST_EVENT_TIME_MS,
                request_hash: 1,
                ua_hash: 2,
                cookie_hash: 3,
                journey_hash: 4,
            };
            let e = LineEvent::new(&record);
            assert_eq!((e.ip(), e.t_ms(), e.cookie), (ip, record.t_ms, 3));
        }
    }
}
