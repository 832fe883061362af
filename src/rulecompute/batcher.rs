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
//! Memory: what waits is at most one step's input, unconsolidated (a replay's steps carry
//! ~20 % more updates than they consolidate to; a live engine steps every batch of lines).
//! Should many updates pile up with the frontier standing still, they are consolidated into
//! the kept updates every [`CONSOLIDATE_AT`] updates, as the merge batcher consolidates as it
//! goes. The step-sized buffers are freed after each batch; the allocator keeps some of that
//! memory for the next step, which shows as 5–7 % more peak RSS in a replay (none with
//! `MIMALLOC_PURGE_DELAY=0`).

use std::marker::PhantomData;

use differential_dataflow::batcher::merge::Sealer;
use differential_dataflow::batcher::{Batcher, Extract};
use differential_dataflow::consolidation::consolidate_updates;
use differential_dataflow::logging::Logger;
use timely::progress::frontier::{Antichain, AntichainRef};

use super::Time;

/// Updates waiting unsorted before they are consolidated into the kept ones.
const CONSOLIDATE_AT: usize = 1 << 20;

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

impl<D: Ord + Clone + 'static, S> SortBatcher<D, S> {
    /// Sorts and consolidates the pending updates and merges them into `kept`.
    fn consolidate_pending(&mut self) {
        consolidate_updates(&mut self.pending);
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
    D: Ord + Clone + 'static,
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
    D: Ord + Clone + 'static,
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
        consolidate_updates(&mut self.pending);
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

    proptest! {
        /// Whatever is inserted, and wherever the frontier moves, every extraction gives
        /// exactly the consolidated updates before its upper frontier (sorted), and reports the
        /// least time of what it keeps.
        #[test]
        fn extracts_the_consolidated_updates_before_the_frontier(
            steps in proptest::collection::vec(
                (proptest::collection::vec((0u8..6, 0u64..8, -2isize..3), 0..40), 0u64..4),
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
