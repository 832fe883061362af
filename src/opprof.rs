//! Time spent per dataflow operator, for profiling (`ANTISPIDER_PROFILE_OPS=1`).
//!
//! Registers a timely logger that sums each operator's scheduled time; the totals are printed
//! to stderr, worst first, when the returned guard is dropped at the end of the worker.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use timely::logging::{StartStop, TimelyEvent, TimelyEventBuilder};
use timely::worker::Worker;

#[derive(Default)]
struct Totals {
    names: HashMap<usize, String>,
    started: HashMap<usize, Duration>,
    spent: HashMap<usize, Duration>,
}

/// Prints the totals when dropped.
pub struct OperatorProfile {
    worker: usize,
    totals: Rc<RefCell<Totals>>,
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
    })
}

impl Drop for OperatorProfile {
    fn drop(&mut self) {
        let t = self.totals.borrow();
        let mut rows: Vec<_> = t.spent.iter().collect();
        rows.sort_by(|a, b| b.1.cmp(a.1));
        let mut report = format!("operator time, worker {}:\n", self.worker);
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
