//! rulecompute (SPEC §4): the 8 per-IP indicators over an exact sliding event-time window.
//!
//! Every function takes collections and returns collections. The window is expressed in the
//! data: an event at time `t` is inserted at tick `⌈t/S⌉·S` and retracted at that tick plus
//! `W` ([`window`], which holds each retraction until the input reaches its time). Every
//! indicator below is then an ordinary incremental aggregate, and a rule change (e.g. a new
//! critical page) re-evaluates the live window at once.
//!
//! Cost notes (see rust-stack.md): counts are carried in the diff (a request is one unit
//! record of the gather, see [`Part`]); distinct counts are one shared `distinct_total` whose
//! output is again unit records; the two interval indicators are pre-aggregated per (IP, 10 s
//! bucket) so the per-IP step reads at most W/10 s + 1 summaries, never every event of a hot
//! IP.

pub mod batcher;
mod block;
mod critical;
mod intervals;
mod total;

pub use block::{block_indicator, block_level, BlockCountSpine, BlockCounts, BlockIndicator};
pub use critical::critical_events;
pub use intervals::{interval_parts, BucketSummary};
pub use total::reduce_total;

use std::net::IpAddr;

use differential_dataflow::operators::ThresholdTotal;
use differential_dataflow::{AsCollection, VecCollection};

use serde::{Deserialize, Serialize};

/// Event time and dataflow timestamp: milliseconds since the Unix epoch.
pub type Time = u64;
/// A collection with counting diffs, the only kind this engine uses.
pub type Coll<'s, D> = VecCollection<'s, Time, D, isize>;

/// Number of partitions used to spread small "broadcast" collections (rules) over workers,
/// so that joins of per-IP data against them are not funnelled through one worker.
pub const PARTITIONS: u64 = 64;

/// One small collection (rule rows) as a single sorted list, on every one of the
/// [`PARTITIONS`], for a `join_core` with data keyed by partition (e.g. [`block_partition`]): each changed
/// record meets the whole list in one lookup, and a rule change re-evaluates everything in the
/// window at once. The list exists only while `rows` is not empty.
pub type ListPerPartition<'s, T> = differential_dataflow::operators::arrange::Arranged<
    's,
    differential_dataflow::operators::arrange::TraceAgent<
        differential_dataflow::trace::implementations::ValSpine<u64, Vec<T>, Time, isize>,
    >,
>;

pub fn list_per_partition<'s, T: differential_dataflow::ExchangeData>(
    rows: Coll<'s, T>,
    name: &str,
) -> ListPerPartition<'s, T> {
    one_list(rows, name)
        .flat_map(|list| (0..PARTITIONS).map(move |p| (p, list.clone())))
        .arrange_by_key()
}

/// One small collection (rule rows) as a single sorted list (absent while `rows` is empty).
pub fn one_list<'s, T: differential_dataflow::ExchangeData>(
    rows: Coll<'s, T>,
    name: &str,
) -> Coll<'s, Vec<T>> {
    rows.map(|row| ((), row))
        .reduce_named(name, |_unit, input, output| {
            let list: Vec<T> = input.iter().map(|(row, _)| (*row).clone()).collect();
            output.push((list, 1isize));
        })
        .map(|((), list)| list)
}

/// SPEC §4's indicator names, in rule-number order 0..=7 (`rule_real_name`).
pub const INDICATOR_NAMES: [&str; 8] = [
    "ip",
    "criticalPages",
    "userAgent",
    "criticalPagesAccTime",
    "criticalPagesLessThanDefault",
    "criticalCookies",
    "flightQuery",
    "ipBlock",
];

/// Window length and slide, both in milliseconds; the length is a multiple of the slide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSpec {
    pub length_ms: u64,
    pub slide_ms: u64,
}

impl Default for WindowSpec {
    fn default() -> Self {
        WindowSpec {
            length_ms: 300_000,
            slide_ms: 1_000,
        }
    }
}

impl WindowSpec {
    /// The first tick whose window `(T − W, T]` contains an event at `t_ms`.
    pub fn tick_of(&self, t_ms: u64) -> Time {
        t_ms.div_ceil(self.slide_ms) * self.slide_ms
    }
}

/// The latest event time the engine accepts: 3000-01-01T00:00:00Z. Later lines are
/// dead-lettered as `bad_time` (a clock or parsing fault, not traffic); the window's interval
/// buckets number time in 32 bits.
pub const LATEST_EVENT_TIME_MS: u64 = 32_503_680_000_000;

/// A processed request as rulecompute sees it: only what the indicators need.
///
/// The user agent, JSESSIONID and journey are hashed: the indicators only count distinct
/// values, and 8-byte keys keep the window's arrangements small.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WinEvent {
    pub ip: IpAddr,
    /// Exact event time in ms (the dataflow time is this rounded up to the slide).
    pub t_ms: u64,
    /// Hash of `request`, the join key for critical pages.
    pub request_hash: u64,
    /// The full request line, matched against the critical-page rules.
    pub request: RequestLine,
    pub ua_hash: u64,
    /// Hash of the masked JSESSIONID; [`ABSENT`] when the cookie has none (counts as one value).
    pub cookie_hash: u64,
    /// Hash of (depCity, arrCity, flightDate) when the request carried a parsed query.
    pub journey_hash: Option<u64>,
}

/// A request line as the window and the critical-page match hold it: shared, so that the
/// arrangements of distinct lines copy a pointer, not the line, each time they merge batches
/// (cloning `String`s there took ~2.5 % of a replay), and the event stream's two consumers
/// share one copy.
pub type RequestLine = std::sync::Arc<str>;

/// What the window keeps of a [`WinEvent`]: fixed-size and `Copy`, so the many arrangements
/// of the window never clone a request line (those go to [`critical`] once, keyed by hash).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WinRecord {
    pub ip: IpAddr,
    pub t_ms: u64,
    pub request_hash: u64,
    pub ua_hash: u64,
    pub cookie_hash: u64,
    /// [`NO_JOURNEY`] when the request carried no query: a plain `u64` keeps the record at
    /// 64 bytes (an `Option` made it 72), and the window holds one per event for `W`.
    pub journey_hash: u64,
}

/// [`WinRecord::journey_hash`] of a request without a journey ([`stable_hash`] never gives 0).
pub const NO_JOURNEY: u64 = 0;

impl From<&WinEvent> for WinRecord {
    fn from(e: &WinEvent) -> Self {
        WinRecord {
            ip: e.ip,
            t_ms: e.t_ms,
            request_hash: e.request_hash,
            ua_hash: e.ua_hash,
            cookie_hash: e.cookie_hash,
            // A journey hashed to 0 (only a hand-made event can have one) stays a journey.
            journey_hash: e.journey_hash.map_or(NO_JOURNEY, |j| j.max(1)),
        }
    }
}

/// Hash value standing for "no JSESSIONID".
pub const ABSENT: u64 = 0;

/// A deterministic 64-bit hash (same value in every worker and process of one build).
///
/// foldhash with a fixed seed, as differential's own exchange hash: every event hashes its
/// request line, user agent and cookie, and SipHash cost ~4 % of a replay's parse + process.
pub fn stable_hash<T: std::hash::Hash + ?Sized>(value: &T) -> u64 {
    use std::hash::BuildHasher;
    foldhash::quality::FixedState::with_seed(0)
        .hash_one(value)
        .max(1)
}

/// The /16 an address belongs to: first two IPv4 octets, or first two IPv6 hextets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Block {
    V4(u8, u8),
    V6(u16, u16),
}

/// Blocks in their order: IPv4 below 2^16, IPv6 from 2^32 up.
impl batcher::SortPrefix for (Block, ()) {
    fn sort_prefix(&self) -> u64 {
        self.0.sort_bits()
    }
}

impl Block {
    /// The block's place in the order of blocks, in 33 bits (see [`batcher::SortPrefix`]).
    pub(crate) fn sort_bits(&self) -> u64 {
        match *self {
            Block::V4(a, b) => (u64::from(a) << 8) | u64::from(b),
            Block::V6(a, b) => (1 << 32) | (u64::from(a) << 16) | u64::from(b),
        }
    }
}

/// A [`batcher::SortPrefix`] word for records ordered by a second enum variant holding an IP
/// (the first variant's word is 0), then by `low` (30 bits, kept for IPv4 only, whose address
/// leaves room; saturated): bit 63 set, bit 62 for IPv6, then the address (IPv6: its top 62
/// bits).
pub(crate) fn ip_sort_word(ip: &IpAddr, low: u64) -> u64 {
    match ip {
        IpAddr::V4(v4) => (1 << 63) | (u64::from(v4.to_bits()) << 30) | low.min((1 << 30) - 1),
        IpAddr::V6(v6) => (1 << 63) | (1 << 62) | (v6.to_bits() >> 66) as u64,
    }
}

pub fn block_of(ip: &IpAddr) -> Block {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            Block::V4(o[0], o[1])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            Block::V6(s[0], s[1])
        }
    }
}

/// Partition of a /16 block (and of every IP in it) for the joins that need the block.
pub fn block_partition(block: &Block) -> u64 {
    stable_hash(block) % PARTITIONS
}

/// Puts every event in the window: inserted at its tick, retracted `W` later.
///
/// The retractions are held here, each under a capability for its time, and sent on only once
/// the input frontier has reached that time. Sent at once, they would wait in the batcher of
/// every arrangement downstream, and a batcher re-merges all the updates it holds each time
/// its frontier moves: a whole window of retractions copied at every tick (live, with a 100 ms
/// slide, 3000 times over for each event).
pub fn window<'s, D: differential_dataflow::Data>(
    events: Coll<'s, D>,
    spec: WindowSpec,
) -> Coll<'s, D> {
    window_with(events, spec, false)
}

/// [`window`] for records that repeat within a tick (the request lines: a few hundred pages
/// and queries, requested many times a second): each tick's records are consolidated before
/// they enter the window, so what comes after gets one insertion and one retraction per
/// distinct record and tick, not per event. The insertions of a tick leave when the input
/// frontier has passed it, as the arrangements downstream would take them.
pub fn window_consolidated<'s, D: differential_dataflow::Data>(
    events: Coll<'s, D>,
    spec: WindowSpec,
) -> Coll<'s, D> {
    window_with(events, spec, true)
}

fn window_with<'s, D: differential_dataflow::Data>(
    events: Coll<'s, D>,
    spec: WindowSpec,
    consolidate: bool,
) -> Coll<'s, D> {
    use std::collections::BTreeMap;
    use timely::dataflow::channels::pact::Pipeline;
    use timely::dataflow::operators::generic::Operator;
    use timely::dataflow::operators::Capability;

    type Updates<D> = Vec<(D, Time, isize)>;
    /// A chunk of retractions: the records of events that entered with diff 1 (the usual
    /// case; held without a time and diff, 64 bytes per `WinRecord` instead of 80, for all
    /// of `W`), or any other updates as they are sent.
    enum Expiring<D> {
        Units(Vec<D>),
        Updates(Updates<D>),
    }
    /// The retractions of one time: a capability for it, and the chunks (one per message that
    /// held events of that tick, allocated to size).
    type Held<D> = (Capability<Time>, Vec<Expiring<D>>);
    /// Adds the retractions of time `at` of a chunk of updates to those held for it.
    fn stash<D: Clone>(
        held: &mut BTreeMap<Time, Held<D>>,
        capability: &Capability<Time>,
        at: Time,
        updates: &[(D, Time, isize)],
        w: Time,
    ) {
        let chunk = if updates.iter().all(|u| u.2 == 1) {
            Expiring::Units(updates.iter().map(|u| u.0.clone()).collect())
        } else {
            Expiring::Updates(
                updates
                    .iter()
                    .map(|(e, t, r)| (e.clone(), t + w, -r))
                    .collect(),
            )
        };
        held.entry(at)
            .or_insert_with(|| (capability.delayed(&at), Vec::new()))
            .1
            .push(chunk);
    }

    let w = spec.length_ms;
    events
        .inner
        .unary_frontier(Pipeline, "Window", move |_capability, _info| {
            // Retractions not yet due, by their time, each time with its capability.
            let mut due: BTreeMap<Time, Held<D>> = BTreeMap::new();
            // Insertions not consolidated yet (`consolidate` only), by their time.
            let mut pending: BTreeMap<Time, (Capability<Time>, Updates<D>)> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each(|stamp, data| {
                    let Some(capability) = stamp.retain_least(0) else {
                        return;
                    };
                    if consolidate {
                        // Held (moved, not copied) until their tick is complete.
                        let mut updates = data.drain(..).peekable();
                        while let Some(first) = updates.next() {
                            let t = first.1;
                            let held = &mut pending
                                .entry(t)
                                .or_insert_with(|| (capability.delayed(&t), Vec::new()))
                                .1;
                            held.push(first);
                            held.extend(std::iter::from_fn(|| updates.next_if(|u| u.1 == t)));
                        }
                        return;
                    }
                    // The events of a message mostly share a tick: one chunk per run of a
                    // tick, sized exactly.
                    let mut start = 0;
                    while start < data.len() {
                        let t = data[start].1;
                        let len = data[start..].iter().take_while(|u| u.1 == t).count();
                        stash(&mut due, &capability, t + w, &data[start..start + len], w);
                        start += len;
                    }
                    output.session(&capability).give_container(data);
                });
                // Every tick the input has passed: no more events of it can come.
                while let Some(entry) = pending.first_entry() {
                    if frontier.less_equal(entry.key()) {
                        break;
                    }
                    let t = *entry.key();
                    let (capability, mut updates) = entry.remove();
                    differential_dataflow::consolidation::consolidate_updates(&mut updates);
                    stash(&mut due, &capability, t + w, &updates, w);
                    output.session(&capability).give_container(&mut updates);
                }
                // Every input time before an expiry has passed: no later event can still be
                // retracted earlier, so the retractions of that time go out now, together
                // with that tick's own events. All that are due go under the earliest one's
                // capability.
                let mut capability: Option<Capability<Time>> = None;
                let mut released: Vec<(Time, Vec<Expiring<D>>)> = Vec::new();
                while let Some(entry) = due.first_entry() {
                    if frontier.less_than(entry.key()) {
                        break;
                    }
                    let at = *entry.key();
                    let (held, chunks) = entry.remove();
                    capability.get_or_insert(held);
                    released.push((at, chunks));
                }
                if let Some(capability) = capability {
                    let mut session = output.session(&capability);
                    for (at, chunks) in released {
                        for chunk in chunks {
                            let mut updates = match chunk {
                                Expiring::Units(records) => {
                                    records.into_iter().map(|d| (d, at, -1)).collect()
                                }
                                Expiring::Updates(updates) => updates,
                            };
                            session.give_container(&mut updates);
                        }
                    }
                }
            }
        })
        .as_collection()
}

/// Indicator 4's (threshold, count) pairs, for the thresholds above 0 (0 counts nothing): inline
/// for one (the usual single flow's rule 4), so the indicator record, built and copied at every
/// change of an IP, does not allocate, and stays small in the arrangements that hold it.
pub type LessThan = smallvec::SmallVec<[(i64, i64); 1]>;

/// The 8 indicator values of one IP at one tick (SPEC §4).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Indicators {
    /// 0 `ip`: requests from the IP.
    pub ip: i64,
    /// 1 `criticalPages`: critical-page requests.
    pub critical_pages: i64,
    /// 2 `userAgent`: distinct user agents.
    pub user_agent: i64,
    /// 3 `criticalPagesAccTime`: smallest interval (ms) between consecutive critical requests.
    pub critical_pages_acc_time: Option<i64>,
    /// 4 `criticalPagesLessThanDefault`: per interval threshold (ms), the number of
    /// consecutive critical intervals shorter than it.
    pub critical_pages_less_than: LessThan,
    /// 5 `criticalCookies`: distinct JSESSIONIDs on critical requests (absent = one value).
    pub critical_cookies: i64,
    /// 6 `flightQuery`: distinct (depCity, arrCity, flightDate) queried.
    pub flight_query: i64,
    /// 7 `ipBlock`: requests from the IP's /16. Not set by the gather: scoring uses the
    /// block's [`block_level`] ([`block`]); [`crate::dataflow::Pipeline::indicators_at`]
    /// and the blacklist entries carry the exact count.
    pub ip_block: i64,
}

impl Indicators {
    /// Indicator 4 for one interval threshold (0 when the threshold is not tracked).
    pub fn less_than(&self, threshold_ms: i64) -> i64 {
        self.critical_pages_less_than
            .iter()
            .find(|(t, _)| *t == threshold_ms)
            .map_or(0, |(_, c)| *c)
    }

    /// Value of indicator `kind` (0..=7) for rule comparison; `None` when undefined (kind 3
    /// with fewer than two critical requests). `lt_threshold` selects indicator 4's threshold.
    pub fn value(&self, kind: usize, lt_threshold: i64) -> Option<i64> {
        Some(match kind {
            0 => self.ip,
            1 => self.critical_pages,
            2 => self.user_agent,
            3 => return self.critical_pages_acc_time,
            4 => self.less_than(lt_threshold),
            5 => self.critical_cookies,
            6 => self.flight_query,
            7 => self.ip_block,
            _ => return None,
        })
    }

    /// The 8 SPEC names → values, as JSON (indicator 3 is `null` when undefined; indicator 4
    /// is given for `lt_threshold`).
    pub fn to_json(&self, lt_threshold: i64) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (kind, name) in INDICATOR_NAMES.iter().enumerate() {
            let v = self.value(kind, lt_threshold);
            m.insert(
                (*name).to_string(),
                v.map_or(serde_json::Value::Null, Into::into),
            );
        }
        serde_json::Value::Object(m)
    }
}

/// One indicator value of one IP, before they are gathered into [`Indicators`].
///
/// The counting indicators are unit parts whose multiplicity (the diff) is the count: one
/// `Request` per request in the window, one `UserAgent` per distinct user agent, and so on.
/// Counting in the diff needs no counting operator: each request changes one record of the
/// gather's input, not an arrangement of counts plus a retraction and insertion of its count.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Part {
    /// 0: a request of the IP.
    Request,
    /// 2: a distinct user agent of the IP.
    UserAgent,
    /// One 10 s bucket of the IP's critical requests (indicators 1, 3 and 4, see [`intervals`]).
    /// Summaries sort by bucket number: the parts of an IP come sorted, so its buckets come in
    /// time order.
    IntervalBucket(BucketSummary),
    /// 5: a distinct JSESSIONID on the IP's critical requests.
    CriticalCookie,
    /// 6: a distinct journey of the IP.
    FlightQuery,
    /// The flow rules, under [`GatherKey::Rules`] only (see [`gather`]).
    FlowRules(Vec<crate::scoring::FlowRule>),
}

/// What one shared `distinct_total` makes distinct: the values the distinct indicators count,
/// as three words, so that sorting and merging them compares words, not enums of byte arrays.
/// The first word is the value's hash, mixed with the IP (see [`Distinct::new`]), shifted left
/// by three bits, which hold the kind and whether the IP is IPv6 (61 bits of hash are plenty
/// to tell one IP's values apart, and small values, such as [`ABSENT`], stay apart). It
/// decides nearly every comparison by itself (an IP's values share the IP, so IP first made
/// most comparisons read 3 words). The IP's 128 bits follow as two `u64`s, not a `u128`,
/// whose 16-byte alignment made the record 32 bytes: 40 bytes per update with time and diff,
/// not 48.
///
/// Hashed as its IP alone (see the `Hash` impl): the distinct values of an IP are counted on
/// the worker that gathers the IP, so they reach the gather without crossing workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Distinct {
    tagged_value: u64,
    ip_high: u64,
    ip_low: u64,
}

/// The indicator a [`Distinct`] value counts for; its number is kept in the value's tag bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DistinctKind {
    UserAgent = 0,
    CriticalCookie = 1,
    Journey = 2,
}

/// The IP's hash: differential exchanges a key by its hash, and the gather's input is
/// exchanged by the hash of the `IpAddr`. Equal values have equal IPs, so `Hash` agrees
/// with `Eq`.
impl std::hash::Hash for Distinct {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.ip().hash(state);
    }
}

/// The tagged value decides nearly every comparison (see [`Distinct`]).
impl batcher::SortPrefix for (Distinct, ()) {
    fn sort_prefix(&self) -> u64 {
        self.0.tagged_value
    }
}

impl Distinct {
    const V6_BIT: u64 = 0b001;
    const KIND_SHIFT: u32 = 1;
    const TAG_WIDTH: u32 = 3;

    fn new(ip: IpAddr, kind: DistinctKind, value: u64) -> Distinct {
        let (v6, ip_high, ip_low) = ip_words(ip);
        // The value XOR a multiple of the IP: still one word per value for a given IP (a
        // bijection), but a popular user agent no longer sorts as one long run of equal words
        // across all IPs, which the batcher would have to compare in full.
        let value = value
            ^ ip_low.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ ip_high.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        Distinct {
            tagged_value: (value << Self::TAG_WIDTH)
                | ((kind as u64) << Self::KIND_SHIFT)
                | if v6 { Self::V6_BIT } else { 0 },
            ip_high,
            ip_low,
        }
    }

    fn kind(&self) -> DistinctKind {
        match (self.tagged_value >> Self::KIND_SHIFT) & 0b11 {
            0 => DistinctKind::UserAgent,
            1 => DistinctKind::CriticalCookie,
            _ => DistinctKind::Journey,
        }
    }

    fn ip(&self) -> IpAddr {
        ip_from_words(
            self.tagged_value & Self::V6_BIT != 0,
            self.ip_high,
            self.ip_low,
        )
    }
}

/// An IP as two 64-bit words and whether it is IPv6: for records that sort and copy words
/// (an `IpAddr` is 17 bytes, which pads a record to the next 8, and a `u128` is 16-byte
/// aligned). The flag goes wherever a record has a spare bit.
fn ip_words(ip: IpAddr) -> (bool, u64, u64) {
    let (v6, bits) = match ip {
        IpAddr::V4(v4) => (false, u128::from(v4.to_bits())),
        IpAddr::V6(v6) => (true, v6.to_bits()),
    };
    (v6, (bits >> 64) as u64, bits as u64)
}

/// The IP of [`ip_words`].
fn ip_from_words(v6: bool, high: u64, low: u64) -> IpAddr {
    let bits = (u128::from(high) << 64) | u128::from(low);
    if v6 {
        IpAddr::V6(std::net::Ipv6Addr::from_bits(bits))
    } else {
        IpAddr::V4(std::net::Ipv4Addr::from_bits(bits as u32))
    }
}

/// A critical request as the critical indicators see it: IP, time (ms) and cookie hash (see
/// [`critical_events`]).
pub type CriticalEvent = (IpAddr, u64 /* t_ms */, u64 /* cookie hash */);

/// Indicators 0, 2, 5 and 6 for every IP in the window as [`Part`]s, and the /16 block of
/// each request (for indicator 7, see [`block`]).
///
/// Indicator 0 is the requests themselves as unit [`Part`]s (indicator 1 comes with the
/// interval buckets). The distinct ones share one `distinct_total`, whose output (each
/// distinct value once) is again a unit part per IP.
pub fn count_indicators<'s>(
    events: Coll<'s, WinRecord>,
    critical: Coll<'s, CriticalEvent>,
) -> (Coll<'s, (GatherKey, Part)>, Coll<'s, Block>) {
    let distinct = events
        .clone()
        .flat_map(|e| {
            let journey = (e.journey_hash != NO_JOURNEY)
                .then(|| Distinct::new(e.ip, DistinctKind::Journey, e.journey_hash));
            std::iter::once(Distinct::new(e.ip, DistinctKind::UserAgent, e.ua_hash)).chain(journey)
        })
        .concat(
            critical
                .clone()
                .map(|(ip, _, c)| Distinct::new(ip, DistinctKind::CriticalCookie, c)),
        );
    let distinct = arranged_by_self(distinct, "Arrange: DistinctValues").distinct_total();

    let blocks = events.clone().map(|e| block_of(&e.ip));

    let parts = events
        .map(|e| (GatherKey::Ip(e.ip), Part::Request))
        .concat(distinct.map(|d| {
            let part = match d.kind() {
                DistinctKind::UserAgent => Part::UserAgent,
                DistinctKind::CriticalCookie => Part::CriticalCookie,
                DistinctKind::Journey => Part::FlightQuery,
            };
            (GatherKey::Ip(d.ip()), part)
        }));
    (parts, blocks)
}

/// A `(key, value)` collection arranged by key.
pub type ArrangedByKey<'s, K, V> = differential_dataflow::operators::arrange::Arranged<
    's,
    differential_dataflow::operators::arrange::TraceAgent<
        differential_dataflow::trace::implementations::ValSpine<K, V, Time, isize>,
    >,
>;

/// Arranges by key where the updates are, without exchanging them: for data already on the
/// worker that reads it (e.g. derived from an arrangement by the same key), or to be joined
/// there with a [`broadcast_arranged`] collection.
pub fn arranged_here<'s, K, V>(updates: Coll<'s, (K, V)>, name: &str) -> ArrangedByKey<'s, K, V>
where
    K: differential_dataflow::ExchangeData,
    V: differential_dataflow::ExchangeData,
    (K, V): batcher::SortPrefix,
{
    use differential_dataflow::operators::arrange::arrangement::arrange_core;
    use differential_dataflow::trace::implementations::ValSpine;
    use timely::dataflow::channels::pact::Pipeline;
    arrange_core::<_, _, _, ValSpine<K, V, Time, isize>>(
        updates.inner,
        Pipeline,
        name,
        batcher::ValSortBatcher::<K, V>::new,
    )
}

/// Arranges by key, exchanged by the key's hash (differential's `arrange_by_key`, with the
/// window's [`batcher::SortBatcher`]).
pub fn arranged_by_key<'s, K, V>(updates: Coll<'s, (K, V)>, name: &str) -> ArrangedByKey<'s, K, V>
where
    K: differential_dataflow::ExchangeData + differential_dataflow::hashable::Hashable,
    V: differential_dataflow::ExchangeData,
    (K, V): batcher::SortPrefix,
{
    updates.arrange_named(name, batcher::ValSortBatcher::<K, V>::new)
}

/// A collection arranged by its records (no values).
pub type ArrangedBySelf<'s, K> = differential_dataflow::operators::arrange::Arranged<
    's,
    differential_dataflow::operators::arrange::TraceAgent<
        differential_dataflow::trace::implementations::KeySpine<K, Time, isize>,
    >,
>;

/// Arranges records by themselves, exchanged by their hash (differential's
/// `arrange_by_self`, with the window's [`batcher::SortBatcher`]).
pub fn arranged_by_self<'s, K>(records: Coll<'s, K>, name: &str) -> ArrangedBySelf<'s, K>
where
    K: differential_dataflow::ExchangeData + differential_dataflow::hashable::Hashable,
    (K, ()): batcher::SortPrefix,
{
    records
        .map(|k| (k, ()))
        .arrange_named(name, batcher::KeySortBatcher::<K>::new)
}

/// Arranges a small collection by key on every worker (each holds all of it).
pub fn broadcast_arranged<'s, K, V>(
    updates: Coll<'s, (K, V)>,
    name: &str,
) -> ArrangedByKey<'s, K, V>
where
    K: differential_dataflow::ExchangeData,
    V: differential_dataflow::ExchangeData,
    (K, V): batcher::SortPrefix,
{
    arranged_here(broadcast_collection(updates), name)
}

/// The key of the gather arrangement: an IP's parts, or the flow rules its indicators are
/// scored against (on every worker; see [`gather`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum GatherKey {
    Rules,
    Ip(IpAddr),
}

/// An IP's parts by kind (IPv4; an IPv6 address fills the word), so that the records compared
/// in full are one IP's parts of one kind.
impl batcher::SortPrefix for (GatherKey, Part) {
    fn sort_prefix(&self) -> u64 {
        match &self.0 {
            GatherKey::Rules => 0,
            GatherKey::Ip(ip) => ip_sort_word(ip, self.1.rank()),
        }
    }
}

impl Part {
    /// The variant's place in `Part`'s order.
    fn rank(&self) -> u64 {
        match self {
            Part::Request => 0,
            Part::UserAgent => 1,
            Part::IntervalBucket(_) => 2,
            Part::CriticalCookie => 3,
            Part::FlightQuery => 4,
            Part::FlowRules(_) => 5,
        }
    }
}

/// The trace type of the gather arrangement.
pub type GatherSpine =
    differential_dataflow::trace::implementations::ValSpine<GatherKey, Part, Time, isize>;
/// Every IP's [`Part`]s in the window, by IP, on the worker of the IP, next to the flow rules.
pub type Gathered<'s> = differential_dataflow::operators::arrange::Arranged<
    's,
    differential_dataflow::operators::arrange::TraceAgent<GatherSpine>,
>;

/// Gathers the per-indicator parts of each IP (keyed [`GatherKey::Ip`]) in one arrangement, with the list
/// of flow rules (`rule_list`, one value) under [`GatherKey::Rules`] on every worker.
///
/// The group of an IP holds at most 5 unit parts plus its ≤ W/10 s + 1 interval buckets, so
/// folding it ([`fold_parts`]) is cheap however hot the IP is. Scoring folds an IP's group
/// each time it changes and keeps only which rules it hits (see
/// [`crate::scoring::rule_hits_per_ip`]); the reports (explain, the final indicators) fold
/// the group at the time they need from this arrangement's trace.
pub fn gather<'s>(
    parts: Coll<'s, (GatherKey, Part)>,
    rule_list: Coll<'s, Vec<crate::scoring::FlowRule>>,
) -> Gathered<'s> {
    use differential_dataflow::hashable::Hashable;
    use timely::dataflow::operators::Exchange;
    // By the hash of the IP, as differential's `arrange_by_key` of `(IpAddr, _)` would: the
    // distinct values and interval buckets of an IP were made on that worker already, and
    // the decisions are sent there to be explained.
    let by_ip = parts
        .inner
        .exchange(
            |((key, _), _, _): &((GatherKey, Part), Time, isize)| match key {
                GatherKey::Ip(ip) => ip.hashed(),
                GatherKey::Rules => 0,
            },
        )
        .as_collection();
    let rules = rule_list.map(|list| (GatherKey::Rules, Part::FlowRules(list)));
    arranged_here(
        by_ip.concat(broadcast_collection(rules)),
        "Arrange: GatherIndicators",
    )
}

/// A small collection on every worker (each holds all of it).
pub(crate) fn broadcast_collection<'s, D: differential_dataflow::ExchangeData>(
    rows: Coll<'s, D>,
) -> Coll<'s, D> {
    use timely::dataflow::operators::vec::Broadcast;
    rows.inner.broadcast().as_collection()
}

/// The [`Indicators`] of an IP from its parts with their multiplicities (`None` when the IP
/// has no request in the window: it is not in the window).
pub fn fold_parts<'a>(input: impl IntoIterator<Item = (&'a Part, isize)>) -> Option<Indicators> {
    let mut ind = Indicators::default();
    let mut buckets = smallvec::SmallVec::<[&BucketSummary; 32]>::new();
    for (part, count) in input {
        // The multiplicity of a unit part is its count (see `Part`).
        let count = count as i64;
        match part {
            Part::Request => ind.ip = count,
            Part::UserAgent => ind.user_agent = count,
            Part::IntervalBucket(summary) => buckets.push(summary),
            Part::CriticalCookie => ind.critical_cookies = count,
            Part::FlightQuery => ind.flight_query = count,
            Part::FlowRules(_) => {}
        }
    }
    if !buckets.is_empty() {
        let (critical, min_ms, less_than) = intervals::fold_buckets(buckets.into_iter());
        ind.critical_pages = critical;
        ind.critical_pages_acc_time = min_ms;
        ind.critical_pages_less_than = less_than;
    }
    // An IP is in the window iff it has requests; the other parts follow from those.
    (ind.ip > 0).then_some(ind)
}

/// The requests in the window: each from its tick to `W` later (see [`window`]).
pub struct Windowed<'s> {
    /// What the indicators need of each request.
    pub records: Coll<'s, WinRecord>,
    /// Each request's line by its hash, for the critical-page rules.
    pub request_lines: Coll<'s, (u64, RequestLine)>,
}

/// Puts the processed requests (at their tick) in the window.
pub fn windowed<'s>(events: Coll<'s, WinEvent>, spec: WindowSpec) -> Windowed<'s> {
    Windowed {
        request_lines: window_consolidated(
            events.clone().map(|e| (e.request_hash, e.request)),
            spec,
        ),
        records: window(events.map(|e| WinRecord::from(&e)), spec),
    }
}

/// The indicators of every IP in the window (all but 7) as [`Part`]s for [`gather`], and
/// the /16 block of each request (for indicator 7, see [`block`]).
///
/// * `window`: the requests in the window ([`windowed`]);
/// * `critical_rules`: `(rule id, regex)` rows of `nh_query_critical_pages`;
/// * `interval_thresholds`: the distinct `arg0` (ms) of the running flows' rule 4.
pub fn indicators<'s>(
    window: Windowed<'s>,
    critical_rules: Coll<'s, (i64, String)>,
    interval_thresholds: Coll<'s, i64>,
) -> (Coll<'s, (GatherKey, Part)>, Coll<'s, Block>) {
    let events = window.records;
    let critical = critical_events(events.clone(), window.request_lines, critical_rules);

    let (counts, blocks) = count_indicators(events, critical.clone());
    let buckets = interval_parts(critical, interval_thresholds);
    (counts.concat(buckets), blocks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// IPs for the sort-word tests: IPv4 and IPv6, with shared leading bits, so that words
    /// and orders are often close.
    pub(crate) fn some_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            (0u32..4, any::<u8>()).prop_map(|(a, b)| IpAddr::from([10, a as u8, 0, b])),
            any::<u32>().prop_map(|a| IpAddr::from(a.to_be_bytes())),
            (0u128..4, any::<u64>())
                .prop_map(|(a, b)| IpAddr::from((a << 120 | u128::from(b)).to_be_bytes())),
        ]
    }

    proptest! {
        #[test]
        fn distinct_words_follow_their_order(
            values in proptest::collection::vec((some_ip(), 0usize..3, 0u64..6), 0..60),
        ) {
            let kinds = [DistinctKind::UserAgent, DistinctKind::CriticalCookie, DistinctKind::Journey];
            batcher::assert_words_follow_order(
                values.into_iter().map(|(ip, k, v)| (Distinct::new(ip, kinds[k], v), ())).collect(),
            );
        }

        #[test]
        fn block_words_follow_their_order(ips in proptest::collection::vec(some_ip(), 0..60)) {
            batcher::assert_words_follow_order(ips.iter().map(|ip| (block_of(ip), ())).collect());
        }
    }

    /// An update of the window's output, with the input frontier when it left the operator.
    type Sent = ((&'static str, Time, isize), Time);

    /// What a window of length 10 and slide 1 (`consolidated` or not) sends for `updates`
    /// (`(record, time, diff)`, times ascending; each its own message, the dataflow stepped
    /// after each), while the input then advances to 20 one tick at a time.
    fn through_window(consolidated: bool, updates: Vec<(&'static str, Time, isize)>) -> Vec<Sent> {
        use std::cell::RefCell;
        use std::rc::Rc;
        use timely::dataflow::operators::{Inspect, Probe};
        let spec = WindowSpec {
            length_ms: 10,
            slide_ms: 1,
        };
        timely::execute_directly(move |worker| {
            let seen: Rc<RefCell<Vec<Sent>>> = Rc::default();
            let sink = seen.clone();
            let frontier_now = Rc::new(std::cell::Cell::new(0));
            let frontier_seen = frontier_now.clone();
            let (mut input, probe) = worker.dataflow::<Time, _, _>(|scope| {
                use differential_dataflow::input::Input;
                let (input, events) = scope.new_collection::<&'static str, isize>();
                let windowed = if consolidated {
                    window_consolidated(events, spec)
                } else {
                    window(events, spec)
                };
                let probe = windowed
                    .inner
                    .inspect(move |u| sink.borrow_mut().push((*u, frontier_seen.get())))
                    .probe()
                    .0;
                (input, probe)
            });
            for (record, t, r) in updates {
                input.advance_to(t);
                frontier_now.set(t);
                input.update(record, r);
                input.flush();
                worker.step();
            }
            for t in 5..=20 {
                input.advance_to(t);
                input.flush();
                frontier_now.set(t);
                while probe.less_than(&t) {
                    worker.step();
                }
            }
            seen.take()
        })
    }

    #[test]
    fn window_retracts_at_expiry_and_not_before_the_input_gets_there() {
        // "c" entered twice at once: held as an update, not as a unit record.
        let seen = through_window(false, vec![("a", 1, 1), ("c", 2, 2), ("b", 4, 1)]);
        let updates: Vec<_> = seen.iter().map(|(u, _)| *u).collect();
        assert_eq!(
            updates,
            vec![
                ("a", 1, 1),
                ("c", 2, 2),
                ("b", 4, 1),
                ("a", 11, -1),
                ("c", 12, -2),
                ("b", 14, -1)
            ]
        );
        // Retractions are held until the input reaches their time (they are not left waiting
        // in the batchers downstream, which would copy them at every tick).
        for ((_, t, r), frontier) in seen {
            if r < 0 {
                assert_eq!(
                    frontier, t,
                    "retraction at {t} sent at input time {frontier}"
                );
            }
        }
    }

    #[test]
    fn a_consolidated_window_sends_each_record_once_per_tick_after_the_tick() {
        let seen = through_window(
            true,
            vec![
                ("a", 1, 1),
                ("b", 1, 1),
                ("a", 1, 1),
                ("a", 1, 1),
                ("b", 1, -1),
                ("c", 4, 1),
            ],
        );
        let mut updates: Vec<_> = seen.iter().map(|(u, _)| *u).collect();
        updates.sort_by_key(|(d, t, _)| (*t, *d));
        // "b" came and went within its tick: it never enters the window.
        assert_eq!(
            updates,
            vec![("a", 1, 3), ("c", 4, 1), ("a", 11, -3), ("c", 14, -1)]
        );
        // A tick leaves once the input has passed it, its retraction once the input is there.
        for ((_, t, r), frontier) in seen {
            if r > 0 {
                assert!(
                    frontier > t,
                    "insertion at {t} sent at input time {frontier}"
                );
            } else {
                assert_eq!(
                    frontier, t,
                    "retraction at {t} sent at input time {frontier}"
                );
            }
        }
    }

    #[test]
    fn window_records_stay_small() {
        // The window holds one record per event for W (its retraction, time and diff added
        // when it falls due).
        let size = std::mem::size_of::<WinRecord>();
        assert!(size <= 64, "WinRecord is {size} bytes");
    }

    #[test]
    fn distinct_values_stay_small_and_keep_ip_and_kind() {
        // The distinct arrangement holds one per distinct value and update.
        let size = std::mem::size_of::<Distinct>();
        assert!(size <= 24, "Distinct is {size} bytes");
        let ips: [IpAddr; 3] = [
            "10.1.2.3".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
            // An IPv4-mapped IPv6 address stays IPv6: it is not the IPv4 address.
            "::ffff:10.1.2.3".parse().unwrap(),
        ];
        let kinds = [
            DistinctKind::UserAgent,
            DistinctKind::CriticalCookie,
            DistinctKind::Journey,
        ];
        let mut seen = std::collections::BTreeSet::new();
        for ip in ips {
            for kind in kinds {
                for value in [ABSENT, 1, 7, 8, u64::MAX >> 3, u64::MAX] {
                    let d = Distinct::new(ip, kind, value);
                    assert_eq!((d.ip(), d.kind()), (ip, kind));
                    seen.insert(d);
                }
            }
        }
        // Values equal but for the top three bits (of a 64-bit hash) are one value.
        assert_eq!(seen.len(), 3 * 3 * 5);
    }

    #[test]
    fn parts_stay_small() {
        // Every part of the gather arrangement is as large as the largest variant.
        let size = std::mem::size_of::<Part>();
        assert!(size <= 40, "Part is {size} bytes");
    }
}
