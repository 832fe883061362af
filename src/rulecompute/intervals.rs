//! Indicators 3 (`criticalPagesAccTime`) and 4 (`criticalPagesLessThanDefault`).
//!
//! Both depend on the gaps between consecutive critical requests of an IP. The gaps of the
//! window are the gaps inside each time bucket plus the gaps between neighbouring non-empty
//! buckets, whatever the buckets' length. So the work is split in two reduces:
//! 1. per (IP, bucket): first and last time and the sorted inner gaps ([`BucketGaps`]);
//! 2. per (IP, threshold): fold the ≤ W/B bucket summaries in time order.
//!
//! A bucket holds the events of the live window in [`BUCKET_MS`] of event time, not one slide:
//! with 1 s buckets a hot IP's per-IP fold re-read 300 summaries at every tick; with 10 s
//! buckets it reads ≤ 31, and the bucket's own fold reads ≤ 10 s of that IP's events.
//!
//! Indicator 4 depends on the rule's interval (`arg0`), so the bucket summaries (not the
//! events: one reduce per bucket serves every threshold) are joined with the set of thresholds
//! in force; threshold 0 is always present and carries indicator 3.

use std::net::IpAddr;

use super::{partition_of, Coll, CriticalEvent, Part, PARTITIONS};
use serde::{Deserialize, Serialize};

/// Length of a time bucket of the first reduce (see the module notes).
pub const BUCKET_MS: u64 = 10_000;

/// The critical requests of one IP in one bucket: first and last time, and the gaps between
/// consecutive ones, sorted.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct BucketGaps {
    first: u64,
    last: u64,
    gaps: Vec<u64>,
}

impl BucketGaps {
    /// Summarises the sorted times (with multiplicities) of one bucket.
    fn of<'a>(times: impl Iterator<Item = (&'a u64, isize)>) -> Option<BucketGaps> {
        let mut out: Option<BucketGaps> = None;
        for (&t, n) in times {
            for _ in 0..n.max(0) {
                match out.as_mut() {
                    None => {
                        out = Some(BucketGaps {
                            first: t,
                            last: t,
                            gaps: Vec::new(),
                        })
                    }
                    Some(b) => {
                        b.gaps.push(t - b.last);
                        b.last = t;
                    }
                }
            }
        }
        if let Some(b) = out.as_mut() {
            b.gaps.sort_unstable();
        }
        out
    }

    /// The bucket as the fold for one threshold needs it.
    fn summary(&self, threshold: u64) -> BucketSummary {
        BucketSummary {
            first: self.first,
            last: self.last,
            min_gap: self.gaps.first().copied(),
            gaps_below: self.gaps.partition_point(|g| *g < threshold) as i64,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct BucketSummary {
    first: u64,
    last: u64,
    min_gap: Option<u64>,
    gaps_below: i64,
}

/// `Part::Intervals` for every (IP with critical requests, threshold in force).
pub fn interval_indicators<'s>(
    critical: Coll<'s, CriticalEvent>,
    thresholds: Coll<'s, i64>,
) -> Coll<'s, (IpAddr, Part)> {
    let thresholds = thresholds
        .flat_map(|a| (0..PARTITIONS).map(move |p| (p, a)))
        .arrange_by_key();
    critical
        .map(|(ip, t, _)| ((ip, t / BUCKET_MS), t))
        .reduce_named("IntervalBuckets", |_key, input, output| {
            if let Some(b) = BucketGaps::of(input.iter().map(|(t, n)| (*t, *n))) {
                output.push((b, 1));
            }
        })
        .map(|((ip, bucket), gaps)| (partition_of(&ip), (ip, bucket, gaps)))
        .join_core(thresholds, |_p, (ip, bucket, gaps), &a| {
            let summary = gaps.summary(a.max(0) as u64);
            Some(((*ip, a), (*bucket, summary)))
        })
        .reduce_named("IntervalsPerIp", |&(_, a), input, output| {
            let threshold = a.max(0) as u64;
            let mut min_gap: Option<u64> = None;
            let mut below = 0i64;
            let mut previous_last: Option<u64> = None;
            for ((_, s), _) in input {
                let mut smallest = s.min_gap;
                if let Some(prev) = previous_last {
                    let gap = s.first - prev;
                    smallest = Some(smallest.map_or(gap, |m| m.min(gap)));
                    below += i64::from(gap < threshold);
                }
                if let Some(g) = smallest {
                    min_gap = Some(min_gap.map_or(g, |m| m.min(g)));
                }
                below += s.gaps_below;
                previous_last = Some(s.last);
            }
            output.push(((min_gap.map(|g| g as i64), below), 1));
        })
        .map(|((ip, a), (min_ms, less_than))| {
            (
                ip,
                Part::Intervals {
                    threshold_ms: a,
                    min_ms,
                    less_than,
                },
            )
        })
}
