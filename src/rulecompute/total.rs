//! A reduce for totally ordered times: the per-key aggregates of the window (the gather of an
//! IP's indicators, the summary of an interval bucket) without differential's general `reduce`.
//!
//! Differential's `reduce` works for partially ordered times: for every changed key it reads
//! the input *and* its own output trace, and replays their histories to find the times at which
//! the output may change. With one totally ordered time, as here, the output at each time
//! follows from the input alone: accumulate the key's input from the trace up to the batch,
//! then apply the batch's updates in time order and emit the difference each time the result
//! changes. This is how differential's `count_total` and `threshold_total` work; this operator
//! does it for any value type and any logic. It keeps no state of its own: the input lives in
//! its arrangement, and the output is a collection (arrange it where it is read).

use differential_dataflow::trace::cursor::{cursor_list, Cursor};
use differential_dataflow::trace::TraceReader;
use differential_dataflow::{AsCollection, ExchangeData};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::CapabilitySet;
use timely::progress::frontier::Antichain;
use timely::progress::Timestamp;

use super::{ArrangedByKey, Coll, Time};

/// For every key and every time its input changes, `logic(key, input)` over the key's values
/// with their (non-zero) multiplicities, sorted by value; the output holds the result while it
/// is `Some`. `logic` is never called with an empty input (an absent key has no output).
///
/// The arrangement's trace must be read by this operator only: it compacts the trace up to
/// what it has processed.
pub fn reduce_total<'s, K, V, O, L>(
    arranged: ArrangedByKey<'s, K, V>,
    name: &str,
    mut logic: L,
) -> Coll<'s, (K, O)>
where
    K: ExchangeData,
    V: ExchangeData,
    O: ExchangeData,
    L: FnMut(&K, &[(&V, isize)]) -> Option<O> + 'static,
{
    let mut trace = arranged.trace.clone();
    arranged
        .stream
        .unary_frontier(Pipeline, name, move |_, _| {
            // The times of the batches processed so far are those before `upper`.
            let mut lower = Antichain::from_elem(Time::minimum());
            let mut upper = Antichain::from_elem(Time::minimum());
            // Reused across keys: the key's input (by value) and the batch's updates of it.
            let mut changes: Vec<(Time, usize, isize)> = Vec::new();
            move |(input, _frontier), output| {
                lower.clone_from(&upper);
                let mut batches = Vec::new();
                let mut caps = CapabilitySet::new();
                input.for_each(|capability, data| {
                    for capability in capability.retain_stamp(0).iter() {
                        caps.insert(capability.clone());
                    }
                    for batch in data.drain(..) {
                        // Batches arrive in order: the last one's upper bounds them all.
                        upper.clone_from(batch.upper());
                        batches.push(batch);
                    }
                });
                if !caps.is_empty() {
                    let mut session = output.session(&caps);
                    let (mut batch_cursor, batch_storage) =
                        cursor_list(batches.into_iter().filter_map(|b| b.inner).collect());
                    let (mut trace_cursor, trace_storage) = cursor_list(
                        trace
                            .batches_through(lower.borrow())
                            .expect("the trace is compacted only up to what was processed"),
                    );
                    let mut state: Vec<(&V, isize)> = Vec::new();
                    let mut batch_vals: Vec<&V> = Vec::new();
                    while let Some(key) = batch_cursor.get_key(&batch_storage) {
                        // The key's input before this batch (every time in the trace is
                        // before `lower`), sorted by value as the cursor yields them.
                        state.clear();
                        trace_cursor.seek_key(&trace_storage, key);
                        if trace_cursor.get_key(&trace_storage) == Some(key) {
                            while let Some(val) = trace_cursor.get_val(&trace_storage) {
                                let mut n = 0isize;
                                trace_cursor.map_times(&trace_storage, |_, r| n += *r);
                                if n != 0 {
                                    state.push((val, n));
                                }
                                trace_cursor.step_val(&trace_storage);
                            }
                        }
                        // The batch's updates of the key, in time order (by value within a
                        // time, as the sort is stable).
                        changes.clear();
                        batch_vals.clear();
                        while let Some(val) = batch_cursor.get_val(&batch_storage) {
                            let i = batch_vals.len();
                            batch_vals.push(val);
                            batch_cursor
                                .map_times(&batch_storage, |t, r| changes.push((*t, i, *r)));
                            batch_cursor.step_val(&batch_storage);
                        }
                        changes.sort_by_key(|(t, _, _)| *t);

                        let mut before = (!state.is_empty()).then(|| logic(key, &state)).flatten();
                        let mut at = 0;
                        while at < changes.len() {
                            let t = changes[at].0;
                            while at < changes.len() && changes[at].0 == t {
                                let (_, i, r) = changes[at];
                                apply(&mut state, batch_vals[i], r);
                                at += 1;
                            }
                            let after = (!state.is_empty()).then(|| logic(key, &state)).flatten();
                            if after != before {
                                if let Some(old) = before.take() {
                                    session.give(((key.clone(), old), t, -1));
                                }
                                if let Some(new) = after.as_ref() {
                                    session.give(((key.clone(), new.clone()), t, 1));
                                }
                                before = after;
                            }
                        }
                        batch_cursor.step_key(&batch_storage);
                    }
                }
                // Nothing before `upper` will be read again: let the trace compact it.
                trace.advance_upper(&mut upper);
                trace.set_logical_compaction(upper.borrow());
                trace.set_physical_compaction(upper.borrow());
            }
        })
        .as_collection()
}

/// Adds `r` copies of `val` to a key's input (sorted by value, no zero multiplicities).
fn apply<'a, V: Ord>(state: &mut Vec<(&'a V, isize)>, val: &'a V, r: isize) {
    match state.binary_search_by(|(v, _)| (*v).cmp(val)) {
        Ok(pos) => {
            state[pos].1 += r;
            if state[pos].1 == 0 {
                state.remove(pos);
            }
        }
        Err(pos) => state.insert(pos, (val, r)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use differential_dataflow::input::Input;
    use proptest::prelude::*;
    use std::cell::RefCell;
    use std::rc::Rc;
    use timely::dataflow::operators::{Inspect, Probe};

    type Update = ((u8, u8), Time, isize);

    /// The output of `reduce_total` and of differential's `reduce`, consolidated per time,
    /// for the same input (round i's updates at time i, each round flushed separately).
    fn both(rounds: Vec<Vec<(u8, u8, bool)>>) -> (Vec<Update>, Vec<Update>) {
        timely::execute_directly(move |worker| {
            let ours: Rc<RefCell<Vec<Update>>> = Rc::default();
            let theirs: Rc<RefCell<Vec<Update>>> = Rc::default();
            let (o, t) = (ours.clone(), theirs.clone());
            let (mut input, probe) = worker.dataflow::<Time, _, _>(|scope| {
                let (input, pairs) = scope.new_collection::<(u8, u8), isize>();
                // Sum of the distinct values present, or nothing when it is even (so that the
                // output appears, changes and disappears while the input stays).
                let logic = |vals: &[(&u8, isize)]| {
                    let sum: u32 = vals.iter().map(|(v, _)| u32::from(**v)).sum();
                    (sum % 2 == 1).then_some((sum % 256) as u8)
                };
                let probe = reduce_total(pairs.clone().arrange_by_key(), "Test", move |_, vals| {
                    logic(vals)
                })
                .inner
                .inspect(move |u| o.borrow_mut().push(*u))
                .probe()
                .0;
                pairs
                    .reduce(move |_, input, output| {
                        let vals: Vec<(&u8, isize)> = input.iter().map(|(v, r)| (*v, *r)).collect();
                        if let Some(x) = logic(&vals) {
                            output.push((x, 1));
                        }
                    })
                    .inner
                    .inspect(move |u| t.borrow_mut().push(*u))
                    .probe_with(&probe);
                (input, probe)
            });
            let mut present: Vec<(u8, u8)> = Vec::new();
            for (round, ops) in rounds.into_iter().enumerate() {
                for (k, v, insert) in ops {
                    let pair = (k % 4, v % 8);
                    if insert {
                        input.insert(pair);
                        present.push(pair);
                    } else if let Some(pos) = present.iter().position(|p| *p == pair) {
                        input.remove(pair);
                        present.swap_remove(pos);
                    }
                }
                input.advance_to(round as Time + 1);
                input.flush();
                while probe.less_than(input.time()) {
                    worker.step();
                }
            }
            let mut a = ours.take();
            let mut b = theirs.take();
            differential_dataflow::consolidation::consolidate_updates(&mut a);
            differential_dataflow::consolidation::consolidate_updates(&mut b);
            (a, b)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn agrees_with_differentials_reduce(
            rounds in proptest::collection::vec(
                proptest::collection::vec((0u8..4, 0u8..8, proptest::bool::weighted(0.6)), 0..12),
                1..12,
            )
        ) {
            let (ours, theirs) = both(rounds);
            prop_assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn output_follows_insertions_and_retractions() {
        let (ours, theirs) = both(vec![
            vec![(0, 1, true), (1, 2, true)],
            vec![(0, 2, true)],
            vec![(0, 1, false), (1, 3, true)],
            vec![(0, 2, false)],
        ]);
        assert_eq!(ours, theirs);
        // Key 0: {1} → 1, then {1,2} → 3, then {2} → none; key 1: {2} → none, {2,3} → 5.
        assert_eq!(
            ours,
            vec![
                ((0, 1), 0, 1),
                ((0, 1), 1, -1),
                ((0, 3), 1, 1),
                ((0, 3), 2, -1),
                ((1, 5), 2, 1),
            ]
        );
    }
}
