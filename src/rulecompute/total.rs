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

/// For every key and every time its input changes, `logic(key, input, side)` over the key's
/// values with their (non-zero) multiplicities, sorted by value; the output holds the result
/// while it is `Some`. `logic` is never called with an empty input (an absent key has no
/// output).
///
/// `side`, if given, is a key whose value every other key's result depends on (a rule list,
/// on every worker): `logic` gets its value at that time (`None` while it has none), and it
/// has no output of its own. A change of the side value re-evaluates every key at its time,
/// in the same pass as the keys' own changes; at any other time only the changed keys are
/// read. So a result that depends on the rules (which rules an IP's indicators hit) changes
/// only when it really changes, and a rule edit applies at once to everything arranged.
///
/// The arrangement's trace must be read by this operator only: it compacts the trace up to
/// what it has processed.
pub fn reduce_total<'s, K, V, O, L>(
    arranged: ArrangedByKey<'s, K, V>,
    name: &str,
    side: Option<K>,
    mut logic: L,
) -> Coll<'s, (K, O)>
where
    K: ExchangeData,
    V: ExchangeData,
    O: ExchangeData,
    L: FnMut(&K, &[(&V, isize)], Option<&V>) -> Option<O> + 'static,
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
                    // The side value before this batch and at each time the batch changes it.
                    let mut side_state: Vec<(&V, isize)> = Vec::new();
                    let mut side_times: Vec<(Time, Option<&V>)> = Vec::new();
                    let mut side_before = None;
                    // Reused across keys: the values of the batch's updates of a key.
                    let mut batch_vals: Vec<&V> = Vec::new();
                    if let Some(side) = side.as_ref() {
                        read_input(&mut trace_cursor, &trace_storage, side, &mut side_state);
                        side_before = side_value(&side_state);
                        batch_changes(
                            &mut batch_cursor,
                            &batch_storage,
                            side,
                            &mut batch_vals,
                            &mut changes,
                        );
                        let mut at = 0;
                        while at < changes.len() {
                            let t = changes[at].0;
                            while at < changes.len() && changes[at].0 == t {
                                let (_, i, r) = changes[at];
                                apply(&mut side_state, batch_vals[i], r);
                                at += 1;
                            }
                            side_times.push((t, side_value(&side_state)));
                        }
                        // Every key replays the side changes from the start of the batch.
                        batch_cursor.rewind_keys(&batch_storage);
                        trace_cursor.rewind_keys(&trace_storage);
                    }
                    // A changed side value re-evaluates every key of the trace too.
                    let every_key = !side_times.is_empty();
                    let mut state: Vec<(&V, isize)> = Vec::new();
                    loop {
                        let batch_key = batch_cursor.get_key(&batch_storage);
                        let trace_key = if every_key {
                            trace_cursor.get_key(&trace_storage)
                        } else {
                            None
                        };
                        let key = match (batch_key, trace_key) {
                            (Some(b), Some(t)) => b.min(t),
                            (Some(k), None) | (None, Some(k)) => k,
                            (None, None) => break,
                        };
                        let in_batch = batch_key == Some(key);
                        if side.as_ref() != Some(key) {
                            // The key's input before this batch (every time in the trace is
                            // before `lower`), sorted by value as the cursor yields them.
                            read_input(&mut trace_cursor, &trace_storage, key, &mut state);
                            if in_batch {
                                batch_changes(
                                    &mut batch_cursor,
                                    &batch_storage,
                                    key,
                                    &mut batch_vals,
                                    &mut changes,
                                );
                            } else {
                                changes.clear();
                            }
                            let eval = |state: &[(&V, isize)], side, logic: &mut L| {
                                (!state.is_empty())
                                    .then(|| logic(key, state, side))
                                    .flatten()
                            };
                            let mut side_now = side_before;
                            let mut before = eval(&state, side_now, &mut logic);
                            let (mut at, mut side_at) = (0, 0);
                            loop {
                                // The next time the key's input or the side value changes.
                                let t = match (changes.get(at), side_times.get(side_at)) {
                                    (Some(c), Some(s)) => c.0.min(s.0),
                                    (Some(c), None) => c.0,
                                    (None, Some(s)) => s.0,
                                    (None, None) => break,
                                };
                                while at < changes.len() && changes[at].0 == t {
                                    let (_, i, r) = changes[at];
                                    apply(&mut state, batch_vals[i], r);
                                    at += 1;
                                }
                                if side_at < side_times.len() && side_times[side_at].0 == t {
                                    side_now = side_times[side_at].1;
                                    side_at += 1;
                                }
                                let after = eval(&state, side_now, &mut logic);
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
                        }
                        if in_batch {
                            batch_cursor.step_key(&batch_storage);
                        }
                        if every_key && trace_cursor.get_key(&trace_storage) == Some(key) {
                            trace_cursor.step_key(&trace_storage);
                        }
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

/// The accumulated input of `key` in a trace cursor (empty when it has none), by value.
fn read_input<'a, C: Cursor<Time = Time, Diff = isize>>(
    cursor: &mut C,
    storage: &'a C::Storage,
    key: C::Key<'a>,
    state: &mut Vec<(C::Val<'a>, isize)>,
) where
    C::Key<'a>: PartialEq,
{
    state.clear();
    cursor.seek_key(storage, key);
    if cursor.get_key(storage) == Some(key) {
        while let Some(val) = cursor.get_val(storage) {
            let mut n = 0isize;
            cursor.map_times(storage, |_, r| n += C::owned_diff(r));
            if n != 0 {
                state.push((val, n));
            }
            cursor.step_val(storage);
        }
    }
}

/// The updates of `key` in a batch cursor: its values into `vals`, and in time order (by value
/// within a time, as the sort is stable) (time, index into `vals`, diff) into `changes`.
fn batch_changes<'a, C: Cursor<Time = Time, Diff = isize>>(
    cursor: &mut C,
    storage: &'a C::Storage,
    key: C::Key<'a>,
    vals: &mut Vec<C::Val<'a>>,
    changes: &mut Vec<(Time, usize, isize)>,
) where
    C::Key<'a>: PartialEq,
{
    changes.clear();
    vals.clear();
    cursor.seek_key(storage, key);
    if cursor.get_key(storage) == Some(key) {
        while let Some(val) = cursor.get_val(storage) {
            let i = vals.len();
            vals.push(val);
            cursor.map_times(storage, |t, r| {
                changes.push((C::owned_time(t), i, C::owned_diff(r)))
            });
            cursor.step_val(storage);
        }
    }
    changes.sort_by_key(|(t, _, _)| *t);
}

/// The side key's value: the one with a positive multiplicity (a list made by one reduce).
fn side_value<'a, V>(state: &[(&'a V, isize)]) -> Option<&'a V> {
    state.iter().find(|(_, r)| *r > 0).map(|(v, _)| *v)
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
    type Pairs<'s> = Coll<'s, (u8, u8)>;

    /// One round: updates of (key, value) pairs (a removal of a pair not present is skipped),
    /// a new value of key 0, the side key (`Some(None)` removes it), and whether the worker
    /// runs before the next round (if not, the rounds' times reach the operator in one batch).
    type Round = (Vec<(u8, u8, bool)>, Option<Option<u8>>, bool);

    /// Feeds round i's updates at time i into `build`, which returns our operator's output and
    /// differential's for the same input; both consolidated.
    fn run<F>(rounds: Vec<Round>, build: F) -> (Vec<Update>, Vec<Update>)
    where
        F: for<'s> FnOnce(Pairs<'s>) -> (Pairs<'s>, Pairs<'s>) + Send + Sync + 'static,
    {
        timely::execute_directly(move |worker| {
            let ours: Rc<RefCell<Vec<Update>>> = Rc::default();
            let theirs: Rc<RefCell<Vec<Update>>> = Rc::default();
            let (o, t) = (ours.clone(), theirs.clone());
            let (mut input, probe) = worker.dataflow::<Time, _, _>(|scope| {
                let (input, pairs) = scope.new_collection::<(u8, u8), isize>();
                let (a, b) = build(pairs);
                let probe = a.inner.inspect(move |u| o.borrow_mut().push(*u)).probe().0;
                b.inner
                    .inspect(move |u| t.borrow_mut().push(*u))
                    .probe_with(&probe);
                (input, probe)
            });
            let mut present: Vec<(u8, u8)> = Vec::new();
            let mut side: Option<u8> = None;
            for (round, (ops, new_side, run)) in rounds.into_iter().enumerate() {
                for (k, v, insert) in ops {
                    let pair = (k, v);
                    if insert {
                        input.insert(pair);
                        present.push(pair);
                    } else if let Some(pos) = present.iter().position(|p| *p == pair) {
                        input.remove(pair);
                        present.swap_remove(pos);
                    }
                }
                if let Some(new_side) = new_side {
                    if let Some(old) = side.take() {
                        input.remove((0, old));
                    }
                    if let Some(new) = new_side {
                        input.insert((0, new));
                        side = Some(new);
                    }
                }
                input.advance_to(round as Time + 1);
                input.flush();
                while run && probe.less_than(input.time()) {
                    worker.step();
                }
            }
            input.close();
            while worker.step() {}
            let mut a = ours.take();
            let mut b = theirs.take();
            differential_dataflow::consolidation::consolidate_updates(&mut a);
            differential_dataflow::consolidation::consolidate_updates(&mut b);
            (a, b)
        })
    }

    /// `reduce_total` without a side key and differential's `reduce`, keys 0..4, each round run to completion.
    fn both(rounds: Vec<Vec<(u8, u8, bool)>>) -> (Vec<Update>, Vec<Update>) {
        // Sum of the distinct values present, or nothing when it is even (so that the output
        // appears, changes and disappears while the input stays).
        fn logic(vals: &[(&u8, isize)]) -> Option<u8> {
            let sum: u32 = vals.iter().map(|(v, _)| u32::from(**v)).sum();
            (sum % 2 == 1).then_some((sum % 256) as u8)
        }
        let rounds = rounds
            .into_iter()
            .map(|ops| {
                let ops = ops.into_iter().map(|(k, v, i)| (k % 4, v % 8, i)).collect();
                (ops, None, true)
            })
            .collect();
        run(rounds, |pairs| {
            let ours = reduce_total(
                pairs.clone().arrange_by_key(),
                "Test",
                None,
                |_, vals, _| logic(vals),
            );
            let theirs = pairs.reduce(|_, input, output| {
                let vals: Vec<(&u8, isize)> = input.iter().map(|(v, r)| (*v, *r)).collect();
                if let Some(x) = logic(&vals) {
                    output.push((x, 1));
                }
            });
            (ours, theirs)
        })
    }

    /// `reduce_total` with side key 0 (, keys 1..=4), and the same computed by
    /// differential: each key's input collected by `reduce`, crossed with the side value by
    /// `join` (or `antijoin` while there is none).
    fn with_side(rounds: Vec<Round>) -> (Vec<Update>, Vec<Update>) {
        fn logic(vals: &[(&u8, isize)], side: Option<&u8>) -> Option<u8> {
            let sum: u32 = vals.iter().map(|(v, r)| u32::from(**v) * *r as u32).sum();
            match side {
                Some(s) => (!(sum + u32::from(*s)).is_multiple_of(3))
                    .then_some(((sum * 7 + u32::from(*s)) % 256) as u8),
                None => (sum % 2 == 1).then_some((sum % 256) as u8),
            }
        }
        fn collected(vals: &[(u8, isize)]) -> Vec<(&u8, isize)> {
            vals.iter().map(|(v, r)| (v, *r)).collect()
        }
        let rounds = rounds
            .into_iter()
            .map(|(ops, side, run)| {
                let ops = ops
                    .into_iter()
                    .map(|(k, v, i)| (k % 4 + 1, v % 8, i))
                    .collect();
                (ops, side.map(|s| s.map(|v| v % 8)), run)
            })
            .collect();
        run(rounds, |pairs| {
            let ours = reduce_total(
                pairs.clone().arrange_by_key(),
                "Test",
                Some(0),
                |_, vals, side| logic(vals, side),
            );
            let groups = pairs
                .clone()
                .filter(|(k, _)| *k != 0)
                .reduce(|_, input, output| {
                    let vals: Vec<(u8, isize)> = input.iter().map(|(v, r)| (**v, *r)).collect();
                    output.push((vals, 1));
                })
                .map(|(k, vals)| ((), (k, vals)));
            let side = pairs.filter(|(k, _)| *k == 0).map(|(_, v)| ((), v));
            let with = groups
                .clone()
                .join(side.clone())
                .flat_map(|((), ((k, vals), s))| {
                    logic(&collected(&vals), Some(&s)).map(|x| (k, x))
                });
            let without = groups
                .antijoin(side.map(|((), _)| ()).distinct())
                .flat_map(|((), (k, vals))| logic(&collected(&vals), None).map(|x| (k, x)));
            (ours, with.concat(without))
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

        #[test]
        fn with_side_agrees_with_differentials_join(
            rounds in proptest::collection::vec(
                (
                    proptest::collection::vec((0u8..4, 0u8..8, proptest::bool::weighted(0.6)), 0..8),
                    proptest::option::weighted(0.3, proptest::option::weighted(0.8, 0u8..8)),
                    proptest::bool::weighted(0.6),
                ),
                1..14,
            )
        ) {
            let (ours, theirs) = with_side(rounds);
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
