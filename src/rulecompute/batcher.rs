//! The batcher of the window's arrangements: updates wait unsorted until the input frontier
//! moves, then one sort orders them.
//!
//! differential's `MergeBatcher` sorts every ~8 KiB of input into a chunk and merges chunks
//! pairwise as they come, so each update is copied through a merge once per doubling of the
//! updates held: ~8 merge passes for one step of a replay (tens of thousands of updates per
//! arrangement). Under callgrind those merges were 12 % of a replay's instructions. Here the
//! updates of a step are sorted once, when the arrangement asks for a batch, and merged once
//! with the updates kept from the last batch (those at or after its upper frontier).
//!
//! The sort itself orders `(prefix word, index)` pairs ([`SortPrefix`]) by radix, not the
//! updates by comparison: an update of the gather is 80 bytes and its comparison walks two
//! enums, and a step's ~25k of them took ~15 comparisons and moves each (0.29 s of a 1M-line
//! replay's 0.64 s of batcher sorting, 1 worker). Only the updates whose words are equal are
//! compared in full (a long run of them is first sorted by [`SortPrefix::tie_word`]s where
//! the records have them), and each update is moved once, into its place. Under callgrind
//! (300k lines, 1 worker) a replay ran 6.3 % fewer instructions.
//!
//! Memory: what waits is at most one step's input, unconsolidated (a replay's steps carry
//! ~20 % more updates than they consolidate to; a live engine steps every batch of lines).
//! Should many updates pile up with the frontier standing still, they are consolidated into
//! the kept updates every [`CONSOLIDATE_AT`] updates, as the merge batcher consolidates as it
//! goes. The step-sized buffers are freed after each batch; the allocator keeps some of that
//! memory for the next step, which shows as 5–7 % more peak RSS in a replay (none with
//! `MIMALLOC_PURGE_DELAY=0`). The word sort moves the updates into a second buffer of their
//! size, with 16 bytes of word and index per update beside it, while it runs: at most ~100 MB for a
//! [`CONSOLIDATE_AT`] pile of the gather's 80-byte updates, a few MB for a replay's step (its
//! peak RSS did not move: 452 MiB against 446–464 MiB, 5M cs, 2 workers).

use std::marker::PhantomData;

use differential_dataflow::batcher::merge::Sealer;
use differential_dataflow::batcher::{Batcher, Extract};
use differential_dataflow::consolidation::consolidate_updates;
use differential_dataflow::logging::Logger;
use timely::progress::frontier::{Antichain, AntichainRef};

use super::Time;

/// Updates waiting unsorted before they are consolidated into the kept ones.
const CONSOLIDATE_AT: usize = 1 << 20;

/// Below this many updates the updates are sorted directly (the word sort's two passes and
/// allocations do not pay).
const SORT_DIRECTLY_BELOW: usize = 64;

/// A word that orders an arrangement's records as far as it goes: `a <= b` implies
/// `a.sort_prefix() <= b.sort_prefix()` (a constant would do, slowly). Records with equal
/// words are compared in full; a word that tells most records apart makes the sort cheap.
pub trait SortPrefix {
    fn sort_prefix(&self) -> u64;

    /// Whether [`Self::tie_word`] tells records apart (the default, 0 for all, does not).
    const TIE_WORDS: bool = false;

    /// A second word for records whose [`Self::sort_prefix`] words are equal, ordering them
    /// as far as it goes: for such records `a <= b` implies `a.tie_word() <= b.tie_word()`.
    /// For keys that are a word and values that are many per key (the events of one request
    /// line): a long run of equal words is then sorted by radix too, not by comparison.
    fn tie_word(&self) -> u64 {
        0
    }
}

/// Checks the [`SortPrefix`] contract on `records`: sorted by their order, their words do not
/// go down, nor do the tie words of records with equal words.
#[cfg(test)]
pub(crate) fn assert_words_follow_order<D: Ord + SortPrefix + std::fmt::Debug>(
    mut records: Vec<D>,
) {
    records.sort();
    for pair in records.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let words = [
            (a.sort_prefix(), b.sort_prefix()),
            (a.tie_word(), b.tie_word()),
        ];
        // The tie words count only between records of equal words.
        let checked = if words[0].0 == words[0].1 { 2 } else { 1 };
        for (name, (x, y)) in ["word", "tie word"].iter().zip(words).take(checked) {
            assert!(
                x <= y,
                "{a:?} sorts before {b:?} but its {name} {x:#x} is above {y:#x}"
            );
        }
    }
}

/// Keyed by a word (a hash or a partition): the key is the word.
impl<V> SortPrefix for (u64, V) {
    fn sort_prefix(&self) -> u64 {
        self.0
    }
}

type Update<D> = (D, Time, isize);

/// The batcher of a `(key, value)` arrangement (differential's `ValBatcher`).
pub type ValSortBatcher<K, V> = SortBatcher<
    (K, V),
    differential_dataflow::trace::implementations::ValBuilder<K, V, Time, isize>,
>;
/// The batcher of a key-only arrangement (differential's `KeyBatcher`).
pub type KeySortBatcher<K> =
    SortBatcher<(K, ()), differential_dataflow::trace::implementations::KeyBuilder<K, Time, isize>>;

/// A [`Batcher`] of `(data, time, diff)` updates that sorts what it was given when a batch is
/// extracted; `S` builds the batch (differential's `ValBuilder` or `KeyBuilder`).
pub struct SortBatcher<D, S> {
    /// Inserted since the last extraction, in arrival order.
    pending: Vec<Update<D>>,
    /// How many updates the last extraction found pending: the next step's buffer is
    /// allocated at that size, not grown by doubling (each doubling copies it).
    expected: usize,
    /// Sorted and consolidated; every time at or after the last extraction's upper frontier.
    kept: Vec<Update<D>>,
    /// The least time in `kept`, reported as the lower bound of what is held.
    frontier: Antichain<Time>,
    _sealer: PhantomData<S>,
}

impl<D, S> SortBatcher<D, S> {
    /// For `arrange_core`, which passes a logger and the operator's id (unused: no size
    /// accounting).
    pub fn new(_logger: Option<Logger>, _operator: usize) -> Self {
        SortBatcher {
            pending: Vec::new(),
            expected: 0,
            kept: Vec::new(),
            frontier: Antichain::new(),
            _sealer: PhantomData,
        }
    }
}

impl<D: Ord + Clone + SortPrefix + 'static, S> SortBatcher<D, S> {
    /// Sorts and consolidates the pending updates and merges them into `kept`.
    fn consolidate_pending(&mut self) {
        sort_and_consolidate(&mut self.pending);
        if self.kept.is_empty() {
            std::mem::swap(&mut self.kept, &mut self.pending);
        } else {
            let kept = std::mem::take(&mut self.kept);
            let mut merged = Vec::with_capacity(kept.len() + self.pending.len());
            merge_into(kept, self.pending.drain(..), |u| merged.push(u));
            self.kept = merged;
        }
    }
}

/// Sorts updates by (data, time), adds up the diffs of equal ones and drops those that add up
/// to zero, as differential's `consolidate_updates` does, by sorting their [`SortPrefix`]
/// words (see the module notes).
fn sort_and_consolidate<D: Ord + SortPrefix>(updates: &mut Vec<Update<D>>) {
    if updates.len() < SORT_DIRECTLY_BELOW || u32::try_from(updates.len()).is_err() {
        consolidate_updates(updates);
        return;
    }
    let mut order: Vec<(u64, u32)> = updates
        .iter()
        .zip(0u32..)
        .map(|((data, _, _), i)| (data.sort_prefix(), i))
        .collect();
    // Radix: a comparison sort's branches mispredict on every other comparison of random words.
    radsort::sort_by_key(&mut order, |o| o.0);
    for_runs_of_equal_words(&mut order, |run| sort_run(run, updates, D::TIE_WORDS));
    let mut sorted: Vec<Update<D>> = Vec::with_capacity(updates.len());
    let mut source = std::mem::take(updates);
    let base = source.as_ptr();
    // SAFETY: `order` holds each index below the length once, so each update is read out of
    // `source` exactly once. The length is set to 0 first, so `source` drops only its buffer
    // (and, should anything below panic, leaks the updates not read yet rather than dropping
    // any twice). `sorted` has room for every update, so `push` does not reallocate.
    unsafe {
        source.set_len(0);
        for &(_, i) in &order {
            let update = std::ptr::read(base.add(i as usize));
            match sorted.last_mut() {
                Some(last) if last.0 == update.0 && last.1 == update.1 => last.2 += update.2,
                _ => sorted.push(update),
            }
        }
    }
    sorted.retain(|u| u.2 != 0);
    *updates = sorted;
}

/// Calls `sort` on each run (longer than one) of `(word, index)` pairs with equal words.
fn for_runs_of_equal_words(order: &mut [(u64, u32)], mut sort: impl FnMut(&mut [(u64, u32)])) {
    let mut start = 0;
    while start < order.len() {
        let word = order[start].0;
        let run = order[start..].iter().take_while(|o| o.0 == word).count();
        if run > 1 {
            sort(&mut order[start..start + run]);
        }
        start += run;
    }
}

/// Puts a run of `(word, index)` pairs whose words are equal in the (data, time) order of
/// the updates they index. `tie`: the records have [`SortPrefix::tie_word`]s; a long run is
/// then sorted by them first (the words of the run's pairs are overwritten with them).
fn sort_run<D: Ord + SortPrefix>(run: &mut [(u64, u32)], updates: &[Update<D>], tie: bool) {
    let first = &updates[run[0].1 as usize].0;
    if run[1..].iter().all(|o| updates[o.1 as usize].0 == *first) {
        // One record at several times (an IP's requests, a value seen again): the times
        // alone order it.
        run.sort_unstable_by_key(|o| updates[o.1 as usize].1);
    } else if tie && run.len() >= SORT_DIRECTLY_BELOW {
        for o in run.iter_mut() {
            o.0 = updates[o.1 as usize].0.tie_word();
        }
        radsort::sort_by_key(run, |o| o.0);
        for_runs_of_equal_words(run, |ties| sort_run(ties, updates, false));
    } else {
        run.sort_unstable_by(|a, b| {
            let (x, y) = (&updates[a.1 as usize], &updates[b.1 as usize]);
            (&x.0, x.1).cmp(&(&y.0, y.1))
        });
    }
}

/// Merges two sorted, consolidated update lists into `push`, adding up the diffs of equal
/// (data, time) and dropping those that add up to zero.
fn merge_into<D: Ord>(
    a: Vec<Update<D>>,
    b: impl Iterator<Item = Update<D>>,
    mut push: impl FnMut(Update<D>),
) {
    let mut a = a.into_iter().peekable();
    let mut b = b.peekable();
    loop {
        let order = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => (&x.0, x.1).cmp(&(&y.0, y.1)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => return,
        };
        match order {
            std::cmp::Ordering::Less => push(a.next().expect("peeked")),
            std::cmp::Ordering::Greater => push(b.next().expect("peeked")),
            std::cmp::Ordering::Equal => {
                let (d, t, r) = a.next().expect("peeked");
                let (_, _, s) = b.next().expect("peeked");
                if r + s != 0 {
                    push((d, t, r + s));
                }
            }
        }
    }
}

impl<D, S> Batcher<Vec<Update<D>>> for SortBatcher<D, S>
where
    D: Ord + Clone + SortPrefix + 'static,
    S: Sealer<Vec<Update<D>>>,
{
    fn insert(&mut self, container: &mut Vec<Update<D>>) {
        if self.pending.capacity() == 0 {
            let size = self.expected.max(container.len()).min(CONSOLIDATE_AT);
            self.pending.reserve(size);
        }
        self.pending.append(container);
        if self.pending.len() >= CONSOLIDATE_AT {
            self.consolidate_pending();
        }
    }
}

impl<D, S> Extract for SortBatcher<D, S>
where
    D: Ord + Clone + SortPrefix + 'static,
    S: Sealer<Vec<Update<D>>>,
{
    type Time = Time;
    type Output = S::Output;

    fn extract<'a>(
        &'a mut self,
        upper: AntichainRef<'_, Time>,
    ) -> (Option<S::Output>, AntichainRef<'a, Time>) {
        if !self.pending.is_empty() {
            self.expected = self.pending.len();
        }
        sort_and_consolidate(&mut self.pending);
        // The step's capacity is not kept between steps (the spine holds the batch).
        let pending = std::mem::take(&mut self.pending);
        let kept = std::mem::take(&mut self.kept);
        let before_upper = |u: &Update<D>| !upper.less_equal(&u.1);
        let ready = if kept.is_empty() && pending.iter().all(before_upper) {
            // The usual case past the window's first arrangements: all of it, sealed as is.
            pending
        } else {
            // Both sides sized once (at most what each can get): `kept` grown push by push
            // re-allocated and page-faulted its way up at every extraction.
            let later = kept
                .iter()
                .chain(&pending)
                .filter(|u| !before_upper(u))
                .count();
            let mut ready = Vec::with_capacity(kept.len() + pending.len() - later);
            let keep = &mut self.kept;
            keep.reserve_exact(later);
            merge_into(kept, pending.into_iter(), |u| {
                if before_upper(&u) {
                    ready.push(u);
                } else {
                    keep.push(u);
                }
            });
            ready
        };
        self.frontier = self.kept.iter().map(|u| u.1).min().into_iter().collect();
        (S::seal(&mut vec![ready]), self.frontier.borrow())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A sealer that hands the sealed updates back as they are.
    struct Collect;
    impl Sealer<Vec<Update<u8>>> for Collect {
        type Output = Vec<Update<u8>>;
        fn seal(chain: &mut Vec<Vec<Update<u8>>>) -> Option<Self::Output> {
            let all: Vec<_> = chain.drain(..).flatten().collect();
            (!all.is_empty()).then_some(all)
        }
    }

    /// A coarse word (two records per word), so that the sort must compare equal words' records.
    impl SortPrefix for u8 {
        fn sort_prefix(&self) -> u64 {
            u64::from(*self / 2)
        }
    }

    /// A record with few words (four, so that runs of equal words are long) and tie words
    /// that leave ties of their own (three records per tie word), so that every path of the
    /// word sort is taken.
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
    struct Tied(u8, u8);
    impl SortPrefix for Tied {
        fn sort_prefix(&self) -> u64 {
            u64::from(self.0 / 64)
        }
        const TIE_WORDS: bool = true;
        fn tie_word(&self) -> u64 {
            (u64::from(self.0) << 8 | u64::from(self.1)) / 3
        }
    }

    proptest! {
        /// The word sort with tie words gives what differential's sort and consolidation give.
        #[test]
        fn sorts_long_runs_by_tie_words_as_differential_does(
            updates in proptest::collection::vec(
                ((0u8..=255, 0u8..4), 0u64..6, -2isize..3),
                0..600,
            ),
        ) {
            let updates: Vec<Update<Tied>> =
                updates.into_iter().map(|((a, b), t, r)| (Tied(a, b), t, r)).collect();
            assert_words_follow_order(updates.iter().map(|u| u.0.clone()).collect());
            let mut ours = updates.clone();
            sort_and_consolidate(&mut ours);
            let mut theirs = updates;
            consolidate_updates(&mut theirs);
            prop_assert_eq!(ours, theirs);
        }

        /// The word sort gives what differential's sort and consolidation give.
        #[test]
        fn sorts_and_consolidates_as_differential_does(
            updates in proptest::collection::vec((0u8..40, 0u64..6, -2isize..3), 0..400),
        ) {
            let mut ours = updates.clone();
            sort_and_consolidate(&mut ours);
            let mut theirs = updates;
            consolidate_updates(&mut theirs);
            prop_assert_eq!(ours, theirs);
        }

        /// Whatever is inserted, and wherever the frontier moves, every extraction gives
        /// exactly the consolidated updates before its upper frontier (sorted), and reports the
        /// least time of what it keeps.
        #[test]
        fn extracts_the_consolidated_updates_before_the_frontier(
            steps in proptest::collection::vec(
                (proptest::collection::vec((0u8..6, 0u64..8, -2isize..3), 0..150), 0u64..4),
                1..8,
            ),
        ) {
            let mut batcher = SortBatcher::<u8, Collect>::new(None, 0);
            let mut all: Vec<Update<u8>> = Vec::new();
            let mut upper = 0;
            for (updates, advance) in steps {
                let mut input: Vec<_> = updates.into_iter().map(|(d, t, r)| (d, upper + t, r)).collect();
                all.extend(input.iter().cloned());
                batcher.insert(&mut input);
                let lower = upper;
                upper += advance;
                let (batch, frontier) = batcher.extract(AntichainRef::new(&[upper]));
                let frontier = frontier.to_owned();
                let mut expected: Vec<_> = all.iter().filter(|u| u.1 >= lower && u.1 < upper).cloned().collect();
                consolidate_updates(&mut expected);
                prop_assert_eq!(batch.unwrap_or_default(), expected);
                let mut later: Vec<_> = all.iter().filter(|u| u.1 >= upper).cloned().collect();
                consolidate_updates(&mut later);
                let least: Antichain<Time> = later.iter().map(|u| u.1).min().into_iter().collect();
                prop_assert_eq!(frontier, least);
            }
        }
    }

    #[test]
    fn many_updates_with_a_standing_frontier_are_consolidated_as_they_come() {
        let mut batcher = SortBatcher::<u8, Collect>::new(None, 0);
        let messages = 3 * CONSOLIDATE_AT / 1000;
        for _ in 0..messages {
            let mut input: Vec<_> = (0..1000).map(|i| ((i % 2) as u8, 5, 1)).collect();
            batcher.insert(&mut input);
        }
        assert!(batcher.pending.len() < CONSOLIDATE_AT);
        assert!(batcher.kept.len() <= 2);
        let (batch, _) = batcher.extract(AntichainRef::new(&[6]));
        let total: isize = batch.unwrap().iter().map(|u| u.2).sum();
        assert_eq!(total, messages as isize * 1000);
    }
}
