//! Indicator 7 (`ipBlock`): the requests of an IP's /16 block in the window.
//!
//! One operator per block does both jobs: it counts the block's requests, and it compares the
//! count with the thresholds of the running `ipBlock` rules (a side value, on every worker, of
//! [`reduce_total`]), so a rule change re-levels every block at once. Scoring reads only the
//! [`block_level`], which changes when the count crosses a threshold; the reports read the
//! exact count, kept as its changes in a small arrangement on every worker.

use differential_dataflow::hashable::Hashable;
use differential_dataflow::AsCollection;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Exchange;

use super::{arranged_here, broadcast_collection, one_list, reduce_total, Block, Coll, Time};
use crate::rules::OrdF64;

/// The key of the per-block count: a block's requests, or the `ipBlock` thresholds (every
/// worker holds them, the side value of the count).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum BlockKey {
    Thresholds,
    Block(Block),
}

/// By block, then part.
impl super::batcher::SortPrefix for (BlockKey, BlockPart) {
    fn sort_prefix(&self) -> u64 {
        let part = match self.1 {
            BlockPart::Request => 0,
            BlockPart::Thresholds(_) => 1,
        };
        match &self.0 {
            BlockKey::Thresholds => part,
            BlockKey::Block(block) => (1 << 63) | (block.sort_bits() << 1) | part,
        }
    }
}

/// A request of the block (its multiplicity is the count), or the threshold list.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum BlockPart {
    Request,
    Thresholds(Vec<OrdF64>),
}

/// Requests per /16 block in the window, on every worker, as changes of the count: the
/// multiplicity of a block accumulated up to a tick is its count at that tick (one update
/// per changed block and tick, not a retraction and an insertion of its count).
pub type BlockCountSpine =
    differential_dataflow::trace::implementations::ValSpine<Block, (), Time, isize>;
pub type BlockCounts<'s> = differential_dataflow::operators::arrange::Arranged<
    's,
    differential_dataflow::operators::arrange::TraceAgent<BlockCountSpine>,
>;

/// Indicator 7 of every block in the window.
pub struct BlockIndicator<'s> {
    /// The exact counts, on every worker, so that any worker can put them next to its own
    /// IPs in a report.
    pub counts: BlockCounts<'s>,
    /// `(block, level)` for the blocks whose [`block_level`] is above 0 (any other block's
    /// level is 0), on the block's worker.
    pub levels: Coll<'s, (Block, i64)>,
}

/// Counts the windowed requests per block (`requests`: the block of each) and levels them
/// under `thresholds` (the `arg0` of the running `ipBlock` rules).
pub fn block_indicator<'s>(
    requests: Coll<'s, Block>,
    thresholds: Coll<'s, OrdF64>,
) -> BlockIndicator<'s> {
    let requests = requests
        .inner
        .exchange(|(block, _, _): &(Block, Time, isize)| block.hashed())
        .as_collection()
        .map(|block| (BlockKey::Block(block), BlockPart::Request));
    let thresholds = one_list(thresholds, "BlockThresholdList")
        .map(|list| (BlockKey::Thresholds, BlockPart::Thresholds(list)));
    let arranged = arranged_here(
        requests.concat(broadcast_collection(thresholds)),
        "Arrange: RequestsPerBlock",
    );
    let counted = reduce_total(
        arranged,
        "RequestsPerBlock",
        Some(BlockKey::Thresholds),
        |_block, input, side| {
            let count: i64 = input.iter().map(|&(_, n)| n as i64).sum();
            let thresholds = match side {
                Some(BlockPart::Thresholds(list)) => list.as_slice(),
                _ => &[],
            };
            Some((count, block_level(count, thresholds)))
        },
    );
    let levels = counted.clone().flat_map(|(key, (_, level))| match key {
        BlockKey::Block(block) if level > 0 => Some((block, level)),
        _ => None,
    });
    let counts = arranged_here(
        broadcast_collection(count_changes(counted)).map(|block| (block, ())),
        "Arrange: BlockCounts (every worker)",
    );
    BlockIndicator { counts, levels }
}

/// The changes of the blocks' counts as multiplicities: a block's `(count, _)` retracted at a
/// tick and its new one inserted become one update of `new − old`.
fn count_changes<'s>(counted: Coll<'s, (BlockKey, (i64, i64))>) -> Coll<'s, Block> {
    counted
        .inner
        .unary(Pipeline, "BlockCountChanges", |_, _| {
            move |input, output| {
                input.for_each(|capability, data| {
                    let mut changes: Vec<(Block, Time, isize)> = Vec::with_capacity(data.len());
                    for ((key, (count, _)), t, r) in data.drain(..) {
                        let BlockKey::Block(block) = key else {
                            continue;
                        };
                        let change = r * count as isize;
                        // The reduce gives a block's retraction and insertion one after the other.
                        match changes.last_mut() {
                            Some((b, at, n)) if *b == block && *at == t => *n += change,
                            _ => changes.push((block, t, change)),
                        }
                    }
                    changes.retain(|(_, _, n)| *n != 0);
                    output.session(&capability).give_container(&mut changes);
                });
            }
        })
        .as_collection()
}

/// The smallest value (≥ 0) that is above exactly the thresholds `count` is above, so that
/// every rule `value > arg0` hits for it iff it hits for `count`. A busy /16 changes its
/// count at every tick; its level changes only when the count crosses a rule's threshold,
/// so the IPs of the block are re-scored only then.
pub fn block_level(count: i64, thresholds: &[OrdF64]) -> i64 {
    thresholds
        .iter()
        .filter(|a| count as f64 > a.0)
        .map(|a| (a.0.floor() as i64).saturating_add(1))
        .fold(0, i64::max)
}

#[cfg(test)]
mod tests {
    use super::super::batcher::assert_words_follow_order;
    use super::super::{block_of, tests::some_ip};
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn block_part_words_follow_their_order(
            records in proptest::collection::vec(
                (proptest::option::of(some_ip()), any::<bool>()),
                0..60,
            ),
        ) {
            assert_words_follow_order(
                records
                    .into_iter()
                    .map(|(ip, request)| {
                        let key = ip.map_or(BlockKey::Thresholds, |ip| BlockKey::Block(block_of(&ip)));
                        let part = if request {
                            BlockPart::Request
                        } else {
                            BlockPart::Thresholds(vec![OrdF64(1.0)])
                        };
                        (key, part)
                    })
                    .collect(),
            );
        }
    }

    #[test]
    fn block_level_hits_exactly_the_rules_the_count_hits() {
        let thresholds = [OrdF64(-2.0), OrdF64(10.0), OrdF64(10.5), OrdF64(40.0)];
        assert_eq!(block_level(5, &[]), 0);
        for count in 1..60 {
            let level = block_level(count, &thresholds);
            assert!((0..=count).contains(&level), "{count} → {level}");
            for a in &thresholds {
                assert_eq!(level as f64 > a.0, count as f64 > a.0, "{count} vs {}", a.0);
            }
        }
        // Counts between two thresholds share one level, so they do not re-score the IPs.
        assert_eq!(block_level(12, &thresholds), block_level(39, &thresholds));
    }
}
