//! Time spent per dataflow operator, for profiling (`ANTISPIDER_PROFILE_OPS=1`).
//!
//! Registers a timely logger that sums each operator's scheduled time; the totals are printed
//! to stderr, worst first, when the returned guard is dropped at the end of the worker. The
//! worker loop also reports where its own time went ([`Phase`]): reading and processing lines,
//! stepping the dataflow, or parked waiting for the other workers.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use timely::logging::{StartStop, TimelyEvent, TimelyEventBuilder};
use timely::worker::Worker;

#[derive(Default)]
struct Totals {
    names: HashMap<usize, String>,
    started: HashMap<usize, Duration>,
    spent: HashMap<usize, Duration>,
}

/// Where a worker loop's time goes, as [`OperatorProfile::lap`] splits it.
#[derive(Clone, Copy, Debug)]
pub enum Phase {
    /// Polling the source and processing its lines (parse, dataprocess, outputs).
    Ingest,
    /// Stepping the dataflow for the lines fed.
    Step,
    /// Stepping and parking until the dataflow has caught up (with the other workers too),
    /// and the park at the end of an idle loop.
    /// Step plus wait, less the `Dataflow` operator's time, is how long the worker sat idle.
    Wait,
    /// Everything else: decisions, rules, metrics.
    Other,
}

/// The phases' names, in `Phase` order.
const PHASE_NAMES: [&str; 4] = ["ingest", "step", "wait", "other"];

/// Prints the totals when dropped.
pub struct OperatorProfile {
    worker: usize,
    totals: Rc<RefCell<Totals>>,
    lap_start: Instant,
    phases: [Duration; 4],
}

impl OperatorProfile {
    /// Books the time since the previous lap to `phase`.
    pub fn lap(&mut self, phase: Phase) {
        let now = Instant::now();
        self.phases[phase as usize] += now - self.lap_start;
        self.lap_start = now;
    }
}

/// [`OperatorProfile::lap`] when profiling.
pub fn lap(profile: &mut Option<OperatorProfile>, phase: Phase) {
    if let Some(p) = profile.as_mut() {
        p.lap(phase);
    }
}

/// Starts profiling on this worker when `ANTISPIDER_PROFILE_OPS` is set.
pub fn start(worker: &mut Worker) -> Option<OperatorProfile> {
    std::env::var_os("ANTISPIDER_PROFILE_OPS")?;
    let totals = Rc::new(RefCell::new(Totals::default()));
    let sink = totals.clone();
    worker
        .log_register()?
        .insert::<TimelyEventBuilder, _>("timely", move |_time, data| {
            let Some(events) = data else { return };
            let mut t = sink.borrow_mut();
            for (at, event) in events.iter() {
                match event {
                    TimelyEvent::Operates(op) => {
                        t.names.insert(op.id, op.name.clone());
                    }
                    TimelyEvent::Schedule(s) => match s.start_stop {
                        StartStop::Start => {
                            t.started.insert(s.id, *at);
                        }
                        StartStop::Stop => {
                            if let Some(begin) = t.started.remove(&s.id) {
                                *t.spent.entry(s.id).or_default() += at.saturating_sub(begin);
                            }
                        }
                    },
                    _ => {}
                }
            }
        });
    Some(OperatorProfile {
        worker: worker.index(),
        totals,
        lap_start: Instant::now(),
        phases: [Duration::ZERO; 4],
    })
}

impl Drop for OperatorProfile {
    fn drop(&mut self) {
        let t = self.totals.borrow();
        let mut rows: Vec<_> = t.spent.iter().collect();
        rows.sort_by(|a, b| b.1.cmp(a.1));
        let mut report = format!("worker {} loop:", self.worker);
        for (name, spent) in PHASE_NAMES.iter().zip(self.phases) {
            let spent = spent.as_secs_f64();
            report.push_str(&format!(" {name} {spent:.3} s"));
        }
        report.push_str(&format!("\noperator time, worker {}:\n", self.worker));
        for (id, spent) in rows.into_iter().take(25) {
            let name = t.names.get(id).map_or("?", String::as_str);
            report.push_str(&format!(
                "  {:>9.3} s  {id:>4} {name}\n",
                spent.as_secs_f64()
            ));
        }
        eprint!("{report}");
    }
}
