//! Indicators 3 (`criticalPagesAccTime`) and 4 (`criticalPagesLessThanDefault`).
//!
//! Both depend on the gaps between consecutive critical requests of an IP. The gaps of the
//! window are the gaps inside each time bucket plus the gaps between neighbouring non-empty
//! buckets, whatever the buckets' length. So the work is split in two steps:
//! 1. a reduce per (IP, bucket): the number of critical requests, first and last time,
//!    smallest inner gap, and the number of inner gaps below each threshold
//!    ([`BucketSummary`]);
//! 2. the IP's ≤ W/B bucket summaries are folded in time order by [`super::gather`], which
//!    reads every part of the IP anyway ([`fold_buckets`]).
//!
//! The buckets' request counts are indicator 1 (`criticalPages`) as well: a unit part per
//! critical request would put two more updates per request into the gather.
//!
//! A bucket holds the events of the live window in [`BUCKET_MS`] of event time, not one slide:
//! with 1 s buckets a hot IP's per-IP fold re-read 300 summaries at every tick; with 10 s
//! buckets it reads ≤ 31, and the bucket's own fold reads ≤ 10 s of that IP's events.
//!
//! Indicator 4 depends on the rule's interval (`arg0`): the sorted list of the thresholds in
//! force is the side value of the per-bucket reduce (see [`super::reduce_total`]), and each
//! bucket's summary counts its gaps below every one of them. A threshold change re-sums every
//! bucket in the window at once.

use std::net::IpAddr;

use super::{Coll, CriticalEvent, GatherKey, LessThan, Part, Time};
use serde::{Deserialize, Serialize};

/// Length of a time bucket of the first reduce (see the module notes).
pub const BUCKET_MS: u64 = 10_000;
// Times and gaps inside a bucket are kept as u16 and bucket numbers as u32 (the parts of every
// IP stay small): event times past the latest the engine accepts are dead-lettered at ingest.
const _: () = assert!(BUCKET_MS <= u16::MAX as u64);
const _: () = assert!(super::LATEST_EVENT_TIME_MS / BUCKET_MS <= u32::MAX as u64);

/// The bucket of an event time (see [`super::LATEST_EVENT_TIME_MS`]).
fn bucket_of(t_ms: u64) -> u32 {
    u32::try_from(t_ms / BUCKET_MS).unwrap_or(u32::MAX)
}

/// Summarises the sorted times (with multiplicities) of one IP's critical requests in bucket
/// `bucket`, for the thresholds in force (sorted; 0 and below count nothing and are left
/// out). One pass, no list of gaps: the reduce calls this for every changed bucket.
fn summarize<'a>(
    bucket: u32,
    times: impl Iterator<Item = (&'a u64, isize)>,
    thresholds: &[i64],
) -> Option<BucketSummary> {
    let mut out: Option<BucketSummary> = None;
    for (&t, n) in times {
        let t = (t % BUCKET_MS) as u16;
        for _ in 0..n.max(0) {
            match out.as_mut() {
                None => {
                    out = Some(BucketSummary {
                        bucket,
                        requests: 1,
                        first: t,
                        last: t,
                        min_gap: None,
                        gaps_below: thresholds
                            .iter()
                            .filter(|a| **a > 0)
                            .map(|&a| (a, 0))
                            .collect(),
                    })
                }
                Some(s) => {
                    let gap = t - s.last;
                    s.requests += 1;
                    s.min_gap = Some(s.min_gap.map_or(gap, |m| m.min(gap)));
                    for (a, below) in s.gaps_below.iter_mut() {
                        *below += u32::from(i64::from(gap) < *a);
                    }
                    s.last = t;
                }
            }
        }
    }
    out
}

/// One bucket of an IP's critical requests, as [`fold_buckets`] reads it: the bucket number
/// (first, so that summaries sort in time order), how many, first and last time (ms after the
/// bucket's start), the smallest inner gap, and per threshold (ascending) the number of inner
/// gaps below it. Small and inline: the gather arrangement holds one per (IP, bucket), and
/// every part of an IP is as large as this one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BucketSummary {
    bucket: u32,
    requests: u32,
    first: u16,
    last: u16,
    min_gap: Option<u16>,
    gaps_below: smallvec::SmallVec<[(i64, u32); 1]>,
}

/// An IP's bucket, the key of the per-bucket reduce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct IpBucket {
    ip: IpAddr,
    bucket: u32,
}

/// The key of the per-bucket reduce: an IP's bucket, or the interval thresholds (on every
/// worker: the side value of every bucket's summary, so a threshold change sums every bucket
/// up again at once).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum BucketKey {
    Thresholds,
    Bucket(IpBucket),
}

/// A bucket's requests by IP and bucket (IPv4; an IPv6 address fills the word).
impl super::batcher::SortPrefix for (BucketKey, BucketInput) {
    fn sort_prefix(&self) -> u64 {
        match &self.0 {
            BucketKey::Thresholds => 0,
            BucketKey::Bucket(b) => super::ip_sort_word(&b.ip, u64::from(b.bucket)),
        }
    }
}

/// A critical request's time in its bucket, or the interval thresholds in force (ms,
/// ascending). The list is boxed: each critical request of the window is one value of the
/// arrangement, 16 bytes (a list inline made every one of them 32).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum BucketInput {
    Time(u64),
    Thresholds(Box<[i64]>),
}

/// `Part::IntervalBucket` for every (IP with critical requests, bucket of 10 s), with gaps
/// counted below every one of `thresholds` (the distinct `arg0` of the running rule 4s).
pub fn interval_parts<'s>(
    critical: Coll<'s, CriticalEvent>,
    thresholds: Coll<'s, i64>,
) -> Coll<'s, (GatherKey, Part)> {
    use differential_dataflow::hashable::Hashable;
    use differential_dataflow::AsCollection;
    use timely::dataflow::operators::Exchange;
    // By the hash of the IP, as the gather: the buckets of an IP are summed up on the worker
    // that gathers the IP, and their summaries reach the gather without crossing workers.
    let by_bucket = critical
        .inner
        .exchange(|((ip, _, _), _, _): &(CriticalEvent, Time, isize)| ip.hashed())
        .as_collection()
        .map(|(ip, t, _)| {
            let key = IpBucket {
                ip,
                bucket: bucket_of(t),
            };
            (BucketKey::Bucket(key), BucketInput::Time(t))
        });
    let thresholds = super::one_list(thresholds, "IntervalThresholdList").map(|list| {
        (
            BucketKey::Thresholds,
            BucketInput::Thresholds(list.into_boxed_slice()),
        )
    });
    let by_bucket = super::arranged_here(
        by_bucket.concat(super::broadcast_collection(thresholds)),
        "Arrange: IntervalBuckets",
    );
    super::reduce_total(
        by_bucket,
        "IntervalBuckets",
        Some(BucketKey::Thresholds),
        |key, input, side| {
            let BucketKey::Bucket(key) = key else {
                return None;
            };
            let thresholds = match side {
                Some(BucketInput::Thresholds(list)) => &list[..],
                _ => &[],
            };
            let times = input.iter().filter_map(|&(v, n)| match v {
                BucketInput::Time(t) => Some((t, n)),
                BucketInput::Thresholds(_) => None,
            });
            summarize(key.bucket, times, thresholds)
        },
    )
    .flat_map(|(key, summary)| match key {
        BucketKey::Bucket(key) => Some((GatherKey::Ip(key.ip), Part::IntervalBucket(summary))),
        BucketKey::Thresholds => None,
    })
}

/// Indicators 1, 3 and 4 of one IP from its bucket summaries in time order: the number of
/// critical requests, and the gaps of the window, which are the buckets' inner gaps plus the
/// gaps between neighbouring buckets.
pub fn fold_buckets<'a>(
    buckets: impl Iterator<Item = &'a BucketSummary>,
) -> (i64, Option<i64>, LessThan) {
    let mut requests = 0i64;
    let mut min_gap: Option<u64> = None;
    let mut below = LessThan::new();
    let mut previous_last: Option<u64> = None;
    for s in buckets {
        if below.is_empty() {
            below = s.gaps_below.iter().map(|&(a, _)| (a, 0)).collect();
        }
        requests += i64::from(s.requests);
        let start = u64::from(s.bucket) * BUCKET_MS;
        let mut smallest = s.min_gap.map(u64::from);
        let cross = previous_last.map(|prev| start + u64::from(s.first) - prev);
        if let Some(gap) = cross {
            smallest = Some(smallest.map_or(gap, |m| m.min(gap)));
        }
        if let Some(g) = smallest {
            min_gap = Some(min_gap.map_or(g, |m| m.min(g)));
        }
        for ((a, n), (_, inner)) in below.iter_mut().zip(&s.gaps_below) {
            *n += i64::from(*inner) + i64::from(cross.is_some_and(|gap| gap < *a as u64));
        }
        previous_last = Some(start + u64::from(s.last));
    }
    (requests, min_gap.map(|g| g as i64), below)
}

#[cfg(test)]
mod tests {
    use super::super::batcher::assert_words_follow_order;
    use super::super::tests::some_ip;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bucket_inputs_stay_small() {
        // The arrangement holds one per critical request in the window.
        let size = std::mem::size_of::<BucketInput>();
        assert!(size <= 16, "BucketInput is {size} bytes");
    }

    fn some_summary() -> impl Strategy<Value = BucketSummary> {
        (
            0u32..3,
            1u32..4,
            0u16..3,
            proptest::option::of(0u16..3),
            0u32..3,
        )
            .prop_map(|(bucket, requests, first, min_gap, below)| BucketSummary {
                bucket: 179_530_000 + bucket,
                requests,
                first,
                last: first + 1,
                min_gap,
                gaps_below: smallvec::smallvec![(500, below)],
            })
    }

    fn some_part() -> impl Strategy<Value = Part> {
        prop_oneof![
            Just(Part::Request),
            Just(Part::UserAgent),
            some_summary().prop_map(Part::IntervalBucket),
            Just(Part::CriticalCookie),
            Just(Part::FlightQuery),
            Just(Part::FlowRules(Vec::new())),
        ]
    }

    proptest! {
        #[test]
        fn gather_words_follow_their_order(
            records in proptest::collection::vec(
                (proptest::option::of(some_ip()), some_part()),
                0..60,
            ),
        ) {
            assert_words_follow_order(
                records
                    .into_iter()
                    .map(|(ip, part)| (ip.map_or(GatherKey::Rules, GatherKey::Ip), part))
                    .collect(),
            );
        }

        #[test]
        fn bucket_words_follow_their_order(
            records in proptest::collection::vec(
                (proptest::option::of((some_ip(), 0u32..3)), 0u64..4),
                0..60,
            ),
        ) {
            // Bucket numbers both below and above the word's 30 bits.
            assert_words_follow_order(
                records
                    .into_iter()
                    .map(|(key, t)| match key {
                        None => (
                            BucketKey::Thresholds,
                            BucketInput::Thresholds(vec![t as i64].into()),
                        ),
                        Some((ip, b)) => {
                            let bucket = [7, (1 << 30) - 1, u32::MAX][b as usize];
                            (BucketKey::Bucket(IpBucket { ip, bucket }), BucketInput::Time(t))
                        }
                    })
                    .collect(),
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Bucket summaries folded in time order give the count and the gaps of the whole
        /// sequence, for any number of thresholds (more than the one kept inline).
        #[test]
        fn folded_buckets_give_the_gaps_of_the_whole_sequence(
            mut times in proptest::collection::vec(0u64..40_000, 1..80),
            mut thresholds in proptest::collection::vec(1i64..20_000, 0..4),
        ) {
            times.sort_unstable();
            // Thresholds equal to some gaps too (a gap equal to the threshold is not below it).
            thresholds.extend(times.windows(2).take(3).map(|w| (w[1] - w[0]) as i64));
            thresholds.push(0);
            thresholds.sort_unstable();
            thresholds.dedup();
            let mut summaries = Vec::new();
            for bucket in times.iter().map(|t| bucket_of(*t)).collect::<std::collections::BTreeSet<_>>() {
                let mut counted: Vec<(u64, isize)> = Vec::new();
                for &t in times.iter().filter(|t| bucket_of(**t) == bucket) {
                    match counted.last_mut() {
                        Some((last, n)) if *last == t => *n += 1,
                        _ => counted.push((t, 1)),
                    }
                }
                let times = counted.iter().map(|(t, n)| (t, *n));
                summaries.push(summarize(bucket, times, &thresholds).unwrap());
            }
            let (requests, min_gap, below) = fold_buckets(summaries.iter());
            prop_assert_eq!(requests, times.len() as i64);

            let gaps: Vec<i64> = times.windows(2).map(|w| (w[1] - w[0]) as i64).collect();
            prop_assert_eq!(min_gap, gaps.iter().copied().min());
            let expected: Vec<(i64, i64)> = thresholds
                .iter()
                .filter(|a| **a > 0)
                .map(|&a| (a, gaps.iter().filter(|g| **g < a).count() as i64))
                .collect();
            prop_assert_eq!(below.to_vec(), expected);
        }
    }
}
