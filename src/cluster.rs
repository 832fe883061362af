//! Several worker threads and several processes (SPEC §7): the timely configuration, the
//! workers' shared view of each other, and the control dataflow that keeps it up to date
//! across processes.
//!
//! Every worker of every process runs the same dataflow; worker `index` of `peers` (global
//! numbers: process `p` has workers `p * threads .. (p + 1) * threads`) reads every
//! `peers`-th line of a file, or the Kafka partitions `j` with `j % peers == index`, and the
//! dataflow exchanges by IP. What the workers need to know of each other is a handful of
//! monotone facts, one [`Slot`] per worker in a process-wide [`View`]:
//!
//! - done reading, and the newest tick read then (the end of a replay: every worker done, the
//!   final tick is the maximum over all of them — exact, since a worker's tick is final once it
//!   reports done and both travel in one message);
//! - its input time (workers with nothing to read follow the newest one);
//! - the tick before which it has written every decision (Kafka commits wait for all workers);
//! - whether it is still re-reading input an earlier run committed, and the tick from which
//!   its decisions are new (decisions are held until every worker has finished re-reading);
//! - whether it is stopping (Ctrl-C on one process stops the whole cluster).
//!
//! A worker writes its own slot directly; the other workers of its process read it at once.
//! With several processes each worker also sends its slot, whenever it changes, through a
//! small second timely dataflow (the control plane) to the first worker of every other process,
//! which merges it into that process's view. Every field only grows (or only shrinks), so
//! merging is a maximum (minimum) and the order and repetition of messages do not matter.
//!
//! The same control dataflow carries the blacklist decisions (IP added or removed) to the other
//! processes, so the high-frequency tag of a line (SPEC §3.7) sees the decisions of the whole
//! cluster, not only of the workers in its process.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::{anyhow, Context};
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::{vec::Map, Exchange, Input, Inspect};
use timely::dataflow::InputHandle;
use timely::worker::Worker;

use crate::config::EngineConfig;

/// The first port of the default addresses (`127.0.0.1:2101`, `:2102`, ...), as timely's.
pub const DEFAULT_BASE_PORT: u16 = 2101;

/// Where this process sits in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// Worker threads per process (every process runs the same number).
    pub threads: usize,
    pub processes: usize,
    /// This process, `0..processes`.
    pub process: usize,
    /// `host:port` of every process, in process order (empty for one process).
    pub addresses: Vec<String>,
    /// `engine.merge_effort` (see [`worker_config`]).
    pub merge_effort: usize,
}

impl Cluster {
    /// From `[engine]`: `workers` threads per process, `processes`, `process` and `hostfile`
    /// (one `host:port` per line, the first `processes` lines are used, as timely's `-h`;
    /// without it `127.0.0.1:2101`, `127.0.0.1:2102`, ...).
    pub fn from_config(engine: &EngineConfig) -> anyhow::Result<Cluster> {
        let processes = engine.processes.max(1);
        if engine.process >= processes {
            return Err(anyhow!(
                "engine.process ({}) must be below engine.processes ({processes})",
                engine.process
            ));
        }
        let addresses = if processes == 1 {
            Vec::new()
        } else if let Some(path) = &engine.hostfile {
            read_hostfile(path, processes)?
        } else {
            (0..processes)
                .map(|i| format!("127.0.0.1:{}", DEFAULT_BASE_PORT as usize + i))
                .collect()
        };
        Ok(Cluster {
            threads: engine.workers.max(1),
            processes,
            process: engine.process,
            addresses,
            merge_effort: engine.merge_effort,
        })
    }

    /// Workers in the whole cluster.
    pub fn peers(&self) -> usize {
        self.threads * self.processes
    }

    /// The process of a (global) worker index.
    pub fn process_of(&self, worker: usize) -> usize {
        worker / self.threads
    }

    /// Starts `work` on this process's workers: on one thread, on threads of one process, or
    /// as this process's part of a cluster.
    ///
    /// A cluster's connections are made here rather than by timely: timely's own scheme
    /// (process `i` connects to every lower one and accepts every higher one) with a check
    /// added. Both ends of a connection exchange their [`Agreement`] and refuse to start if it
    /// differs; timely does not check this, and processes with different worker counts panic
    /// inside its network threads.
    pub fn execute<T, F>(
        &self,
        window: &crate::config::WindowConfig,
        work: F,
    ) -> anyhow::Result<timely::communication::WorkerGuards<T>>
    where
        T: Send + 'static,
        F: Fn(&mut Worker) -> T + Send + Sync + 'static,
    {
        use timely::CommunicationConfig;
        let started = if self.processes > 1 {
            let ours = Agreement {
                threads: self.threads as u64,
                processes: self.processes as u64,
                window_length_ms: window.length_ms,
                window_slide_ms: window.slide_ms,
                allowed_lateness_ms: window.allowed_lateness_ms,
            };
            let (allocators, network) = self.connect(ours)?;
            timely::execute::execute_from(
                allocators,
                network,
                worker_config(self.merge_effort),
                work,
            )
        } else {
            let communication = if self.threads > 1 {
                CommunicationConfig::Process(self.threads)
            } else {
                CommunicationConfig::Thread
            };
            let config = timely::Config {
                communication,
                worker: worker_config(self.merge_effort),
            };
            timely::execute(config, work)
        };
        started.map_err(|e| anyhow!("cannot start timely workers: {e}"))
    }

    /// Connects this process to the others of the cluster (see [`Cluster::execute`]) and
    /// builds timely's allocators over those connections.
    fn connect(
        &self,
        ours: Agreement,
    ) -> anyhow::Result<(
        Vec<timely::communication::AllocatorBuilder>,
        Box<dyn std::any::Any + Send>,
    )> {
        use timely::communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;
        use timely::communication::allocator::ProcessBuilder;
        use timely::communication::{AllocatorBuilder, Hooks};

        let me = self.process;
        let lower: Vec<String> = self.addresses[..me].to_vec();
        let connecting = std::thread::spawn(move || -> anyhow::Result<Vec<_>> {
            lower
                .iter()
                .enumerate()
                .map(|(peer, address)| connect_to(address, peer, me, ours).map(Some))
                .collect()
        });
        let mut higher = accept_from(&self.addresses[me], me, self.processes, ours)?;
        let mut sockets = connecting
            .join()
            .map_err(|_| anyhow!("the thread connecting to the other processes panicked"))??;
        sockets.push(None);
        sockets.append(&mut higher);

        let hooks = Hooks::default();
        let process_allocators = ProcessBuilder::new_typed_vector(
            self.threads,
            hooks.refill.clone(),
            hooks.spill.clone(),
        );
        let (builders, guard) = initialize_networking_from_sockets(
            process_allocators,
            sockets,
            me,
            self.threads,
            hooks,
        )
        .context("cannot start timely's network threads")?;
        Ok((
            builders.into_iter().map(AllocatorBuilder::Tcp).collect(),
            Box::new(guard),
        ))
    }

    /// The path of an output file of this process: `dir/name` for a single process,
    /// `dir/<stem>.p<I>.<ext>` for process I of a cluster (so that processes sharing a
    /// directory do not overwrite each other; the union of the files is the whole output).
    pub fn output_path(&self, dir: &Path, name: &str) -> PathBuf {
        if self.processes <= 1 {
            return dir.join(name);
        }
        match name.split_once('.') {
            Some((stem, ext)) => dir.join(format!("{stem}.p{}.{ext}", self.process)),
            None => dir.join(format!("{name}.p{}", self.process)),
        }
    }
}

/// What every process of a cluster must agree on, exchanged when the processes connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Agreement {
    /// Worker threads per process (`-w`, `engine.workers`).
    threads: u64,
    /// Processes in the cluster (`-n`, `engine.processes`).
    processes: u64,
    /// `window.length_ms`, `window.slide_ms` and `window.allowed_lateness_ms`: every process
    /// must close the same ticks.
    window_length_ms: u64,
    window_slide_ms: u64,
    allowed_lateness_ms: u64,
}

/// Marks an antispider handshake (a timely process from elsewhere sends only its index).
const HANDSHAKE_MAGIC: u64 = 0x616e_7469_7370_6964; // "antispid"
/// How long either end waits for the other's half of the handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Agreement {
    fn to_words(self) -> [u64; 5] {
        [
            self.threads,
            self.processes,
            self.window_length_ms,
            self.window_slide_ms,
            self.allowed_lateness_ms,
        ]
    }

    fn from_words(w: [u64; 5]) -> Agreement {
        Agreement {
            threads: w[0],
            processes: w[1],
            window_length_ms: w[2],
            window_slide_ms: w[3],
            allowed_lateness_ms: w[4],
        }
    }

    /// Why `self` (this process) and `peer`'s values cannot run together, naming the setting.
    fn mismatch(&self, peer: usize, theirs: &Agreement) -> Option<String> {
        let names = [
            "workers per process (-w, engine.workers)",
            "processes (-n, engine.processes)",
            "window.length_ms",
            "window.slide_ms",
            "window.allowed_lateness_ms",
        ];
        let diffs: Vec<String> = names
            .iter()
            .zip(self.to_words().iter().zip(theirs.to_words()))
            .filter(|(_, (a, b))| *a != b)
            .map(|(name, (a, b))| format!("{name}: {a} here, {b} in process {peer}"))
            .collect();
        (!diffs.is_empty()).then(|| {
            format!(
                "the processes of the cluster disagree on {}; start every process with the same \
                 settings",
                diffs.join(", ")
            )
        })
    }
}

fn write_words(stream: &mut std::net::TcpStream, words: &[u64]) -> std::io::Result<()> {
    use std::io::Write;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    stream.write_all(&bytes)
}

fn read_words<const N: usize>(stream: &mut std::net::TcpStream) -> std::io::Result<[u64; N]> {
    use std::io::Read;
    let mut out = [0u64; N];
    for w in out.iter_mut() {
        let mut b = [0u8; 8];
        stream.read_exact(&mut b)?;
        *w = u64::from_le_bytes(b);
    }
    Ok(out)
}

/// Connects to the lower process `peer` (retrying until it listens), sends this process's
/// index and agreement, and checks the agreement it answers with.
fn connect_to(
    address: &str,
    peer: usize,
    me: usize,
    ours: Agreement,
) -> anyhow::Result<std::net::TcpStream> {
    let mut waited = 0u64;
    let mut stream = loop {
        match std::net::TcpStream::connect(address) {
            Ok(s) => break s,
            Err(e) => {
                if waited.is_multiple_of(10) {
                    tracing::info!("waiting for process {peer} at {address}: {e}");
                }
                waited += 1;
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
    };
    stream.set_nodelay(true)?;
    let mut hello = vec![HANDSHAKE_MAGIC, me as u64];
    hello.extend(ours.to_words());
    write_words(&mut stream, &hello)
        .with_context(|| format!("cannot greet process {peer} at {address}"))?;
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let theirs = read_words::<5>(&mut stream).with_context(|| {
        format!(
            "process {peer} at {address} did not answer the handshake (is it this same \
             antispider build, with this hostfile?)"
        )
    })?;
    stream.set_read_timeout(None)?;
    if let Some(why) = ours.mismatch(peer, &Agreement::from_words(theirs)) {
        return Err(anyhow!(why));
    }
    Ok(stream)
}

/// Accepts the processes above `me`, checks each one's agreement and answers with ours.
fn accept_from(
    address: &str,
    me: usize,
    processes: usize,
    ours: Agreement,
) -> anyhow::Result<Vec<Option<std::net::TcpStream>>> {
    let mut streams: Vec<Option<std::net::TcpStream>> = (me + 1..processes).map(|_| None).collect();
    if streams.is_empty() {
        return Ok(streams);
    }
    let listener = std::net::TcpListener::bind(address)
        .with_context(|| format!("cannot listen on {address} (this process's hostfile line)"))?;
    while streams.iter().any(Option::is_none) {
        let (mut stream, from) = listener.accept()?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let Ok([magic, index, a, b, c, d, e]) = read_words::<7>(&mut stream) else {
            tracing::warn!("{from} connected to the cluster port without a handshake; ignored");
            continue;
        };
        let index = index as usize;
        if magic != HANDSHAKE_MAGIC || index <= me || index >= processes {
            tracing::warn!("{from} connected to the cluster port with a bad handshake; ignored");
            continue;
        }
        stream.set_read_timeout(None)?;
        write_words(&mut stream, &ours.to_words())?;
        if let Some(why) = ours.mismatch(index, &Agreement::from_words([a, b, c, d, e])) {
            return Err(anyhow!(why));
        }
        streams[index - me - 1] = Some(stream);
    }
    Ok(streams)
}

/// Reads a timely hostfile: one `host:port` per line; blank lines and `#` comments are
/// skipped; the first `processes` addresses are used.
pub fn read_hostfile(path: &Path, processes: usize) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the hostfile", path.display()))?;
    let addresses: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .take(processes)
        .map(str::to_string)
        .collect();
    if addresses.len() < processes {
        return Err(anyhow!(
            "{}: {} addresses for {processes} processes (one host:port per line)",
            path.display(),
            addresses.len()
        ));
    }
    for a in &addresses {
        if a.rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(anyhow!(
                "{}: `{a}` is not host:port (one address per line)",
                path.display()
            ));
        }
    }
    Ok(addresses)
}

/// What a worker knows of one worker (see the module docs). Every field is monotone.
#[derive(Debug)]
pub struct Slot {
    done: AtomicBool,
    max_tick: AtomicU64,
    time: AtomicU64,
    written_below: AtomicU64,
    live: AtomicBool,
    resume: AtomicU64,
    stop: AtomicBool,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            done: AtomicBool::new(false),
            max_tick: AtomicU64::new(0),
            time: AtomicU64::new(0),
            written_below: AtomicU64::new(0),
            // Until a worker says otherwise it may be re-reading committed input.
            live: AtomicBool::new(false),
            resume: AtomicU64::new(u64::MAX),
            stop: AtomicBool::new(false),
        }
    }
}

/// A worker's slot as a message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Status {
    pub done: bool,
    pub max_tick: u64,
    pub time: u64,
    pub written_below: u64,
    pub live: bool,
    pub resume: u64,
    pub stop: bool,
}

impl Slot {
    fn merge(&self, s: &Status) {
        // The tick first: whoever sees `done` sees the final tick.
        self.max_tick.fetch_max(s.max_tick, Ordering::AcqRel);
        self.time.fetch_max(s.time, Ordering::AcqRel);
        self.written_below
            .fetch_max(s.written_below, Ordering::AcqRel);
        self.resume.fetch_min(s.resume, Ordering::AcqRel);
        if s.live {
            self.live.store(true, Ordering::Release);
        }
        if s.stop {
            self.stop.store(true, Ordering::Release);
        }
        if s.done {
            self.done.store(true, Ordering::Release);
        }
    }

    fn status(&self) -> Status {
        Status {
            done: self.done.load(Ordering::Acquire),
            max_tick: self.max_tick.load(Ordering::Acquire),
            time: self.time.load(Ordering::Acquire),
            written_below: self.written_below.load(Ordering::Acquire),
            live: self.live.load(Ordering::Acquire),
            resume: self.resume.load(Ordering::Acquire),
            stop: self.stop.load(Ordering::Acquire),
        }
    }
}

/// The process-wide view of every worker of the cluster.
#[derive(Debug)]
pub struct View {
    slots: Vec<Slot>,
}

impl View {
    pub fn new(peers: usize) -> View {
        View {
            slots: (0..peers).map(|_| Slot::default()).collect(),
        }
    }

    /// Worker `w` is done reading; `max_tick` is the newest tick it read.
    pub fn set_done(&self, w: usize, max_tick: u64) {
        self.slots[w].merge(&Status {
            done: true,
            max_tick,
            ..self.floor()
        });
    }

    pub fn set_time(&self, w: usize, time: u64) {
        self.slots[w].time.fetch_max(time, Ordering::AcqRel);
    }

    pub fn set_written_below(&self, w: usize, t: u64) {
        self.slots[w].written_below.fetch_max(t, Ordering::AcqRel);
    }

    /// Worker `w` has finished re-reading committed input; `resume` is the tick from which
    /// its decisions are new (`None`: it re-read nothing).
    pub fn set_live(&self, w: usize, resume: Option<u64>) {
        self.slots[w].merge(&Status {
            live: true,
            resume: resume.unwrap_or(u64::MAX),
            ..self.floor()
        });
    }

    pub fn set_stop(&self, w: usize) {
        self.slots[w].stop.store(true, Ordering::Release);
    }

    /// The neutral element of [`Slot::merge`].
    fn floor(&self) -> Status {
        Status {
            resume: u64::MAX,
            ..Status::default()
        }
    }

    /// Every worker is done reading.
    pub fn all_done(&self) -> bool {
        self.slots.iter().all(|s| s.done.load(Ordering::Acquire))
    }

    /// The newest tick any worker read (final once [`View::all_done`]).
    pub fn final_tick(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.max_tick.load(Ordering::Acquire))
            .max()
            .unwrap_or(0)
    }

    /// The newest input time of any worker.
    pub fn max_time(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.time.load(Ordering::Acquire))
            .max()
            .unwrap_or(0)
    }

    /// Every worker has written its decisions before this tick.
    pub fn all_written_below(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.written_below.load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
    }

    /// Every worker has finished re-reading what an earlier run committed.
    pub fn all_live(&self) -> bool {
        self.slots.iter().all(|s| s.live.load(Ordering::Acquire))
    }

    /// Decisions before this tick were written by the run before a restart: the latest of the
    /// workers' resume ticks. (A worker that committed input read up to tick `t` had every
    /// decision before `t` minus the allowed lateness written by all workers, and its resume
    /// tick is at most that; see `engine::commit_offsets`.) `None`: nothing was re-read.
    pub fn resume_tick(&self) -> Option<u64> {
        self.slots
            .iter()
            .map(|s| s.resume.load(Ordering::Acquire))
            .filter(|r| *r != u64::MAX)
            .max()
    }

    /// Some worker (of any process) is stopping.
    pub fn stopping(&self) -> bool {
        self.slots.iter().any(|s| s.stop.load(Ordering::Acquire))
    }

    pub fn status(&self, w: usize) -> Status {
        self.slots[w].status()
    }

    fn merge(&self, w: usize, s: &Status) {
        if let Some(slot) = self.slots.get(w) {
            slot.merge(s);
        }
    }
}

/// The IPs this engine has blacklisted now, by the number of flows (SPEC §3.7), shared by the
/// workers of a process; with several processes the decisions of the others are merged in
/// through the control dataflow.
#[derive(Debug, Default)]
pub struct SelfBlacklist {
    /// Net adds per IP; signed, so that an add and its remove may arrive in either order.
    counts: RwLock<HashMap<IpAddr, i64>>,
    /// Decisions of this process not sent to the others yet (`None`: one process).
    outbox: Option<Mutex<Vec<(IpAddr, bool)>>>,
}

impl SelfBlacklist {
    pub fn new(cluster: &Cluster) -> SelfBlacklist {
        SelfBlacklist {
            counts: Default::default(),
            outbox: (cluster.processes > 1).then(Default::default),
        }
    }

    /// A flow added `ip`.
    pub fn add(&self, ip: IpAddr) {
        self.apply(ip, true);
        if let Some(o) = &self.outbox {
            o.lock().unwrap_or_else(|p| p.into_inner()).push((ip, true));
        }
    }

    /// A flow removed `ip`.
    pub fn remove(&self, ip: IpAddr) {
        self.apply(ip, false);
        if let Some(o) = &self.outbox {
            o.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((ip, false));
        }
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.counts
            .read()
            .is_ok_and(|m| m.get(ip).is_some_and(|n| *n > 0))
    }

    fn apply(&self, ip: IpAddr, add: bool) {
        let mut m = self.counts.write().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_default();
        *n += if add { 1 } else { -1 };
        if *n == 0 {
            m.remove(&ip);
        }
    }

    fn take_outbox(&self) -> Vec<(IpAddr, bool)> {
        self.outbox.as_ref().map_or_else(Vec::new, |o| {
            std::mem::take(&mut *o.lock().unwrap_or_else(|p| p.into_inner()))
        })
    }
}

/// A control message.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Msg {
    /// The slot of worker `.0`.
    Status(usize, Status),
    /// A blacklist decision of another process: IP added (true) or removed.
    Blacklist(IpAddr, bool),
}

/// One worker's end of the control dataflow (only built with several processes).
pub struct Control {
    input: InputHandle<u64, timely::container::CapacityContainerBuilder<Vec<(usize, Msg)>>>,
    index: usize,
    /// The first worker of every other process.
    targets: Vec<usize>,
    sent: Option<Status>,
}

impl Control {
    /// Builds the control dataflow on this worker (every worker must, in the same order
    /// relative to the other dataflows). Messages go to the first worker of each other
    /// process, which merges them into `view` and `blacklist`, shared with its process.
    pub fn build(
        worker: &mut Worker,
        cluster: &Cluster,
        view: Arc<View>,
        blacklist: Arc<SelfBlacklist>,
    ) -> Control {
        let index = worker.index();
        let input = worker.dataflow::<u64, _, _>(|scope| {
            let mut input = InputHandle::new();
            scope
                .input_from(&mut input)
                .exchange(|(target, _): &(usize, Msg)| *target as u64)
                .map(|(_, msg)| msg)
                .inspect(move |msg: &Msg| match msg {
                    Msg::Status(w, s) => view.merge(*w, s),
                    Msg::Blacklist(ip, add) => blacklist.apply(*ip, *add),
                });
            input
        });
        let me = cluster.process_of(index);
        Control {
            input,
            index,
            targets: (0..cluster.processes)
                .filter(|p| *p != me)
                .map(|p| p * cluster.threads)
                .collect(),
            sent: None,
        }
    }

    /// Sends this worker's slot if it changed, and the process's new blacklist decisions.
    pub fn publish(&mut self, view: &View, blacklist: &SelfBlacklist) {
        let mut any = false;
        let status = view.status(self.index);
        if self.sent != Some(status) {
            self.sent = Some(status);
            for t in &self.targets {
                self.input.send((*t, Msg::Status(self.index, status)));
            }
            any = true;
        }
        for (ip, add) in blacklist.take_outbox() {
            for t in &self.targets {
                self.input.send((*t, Msg::Blacklist(ip, add)));
            }
            any = true;
        }
        if any {
            // Closing the epoch is what makes the exchange send what it holds.
            let next = self.input.time() + 1;
            self.input.advance_to(next);
        }
    }
}

/// Each worker's configuration: differential's idle merge effort (`engine.merge_effort`; 0
/// leaves differential's default, merging only as batches arrive).
///
/// Why: measured on the 5M-line replay with 2 workers, 1000–10000 took 5–15 % off the wall
/// time and 10–15 % off peak RSS (see BENCHMARKS.md, session 19). The engine leaves it off
/// for live input, where it cost memory and latency.
pub fn worker_config(merge_effort: usize) -> timely::WorkerConfig {
    let mut config = timely::WorkerConfig::default();
    if merge_effort > 0 {
        differential_dataflow::configure(
            &mut config,
            &differential_dataflow::Config::default()
                .idle_merge_effort(Some(merge_effort as isize)),
        );
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(processes: usize, process: usize) -> Cluster {
        Cluster {
            threads: 2,
            processes,
            process,
            addresses: vec![],
            merge_effort: 0,
        }
    }

    #[test]
    fn merge_effort_sets_differentials_idle_merging_and_0_leaves_it_off() {
        let on = worker_config(5000);
        assert_eq!(
            on.get::<isize>("differential/idle_merge_effort"),
            Some(&5000)
        );
        let logic = on
            .get::<differential_dataflow::trace::ExertionLogic>("differential/default_exert_logic")
            .expect("exert logic set");
        // (level, batches, updates): merge while a trace is more than one batch.
        assert_eq!(logic(&[(1, 1, 10), (0, 1, 5)]), Some(5000));
        assert_eq!(logic(&[(1, 1, 10), (0, 0, 0)]), None);
        let off = worker_config(0);
        assert!(off.get::<isize>("differential/idle_merge_effort").is_none());
        let engine = crate::config::EngineConfig::default();
        assert_eq!(Cluster::from_config(&engine).unwrap().merge_effort, 10_000);
    }

    #[test]
    fn output_paths_carry_the_process_in_a_cluster() {
        let d = Path::new("out");
        assert_eq!(
            cluster(1, 0).output_path(d, "blacklist.jsonl"),
            d.join("blacklist.jsonl")
        );
        assert_eq!(
            cluster(2, 1).output_path(d, "blacklist.jsonl"),
            d.join("blacklist.p1.jsonl")
        );
        assert_eq!(
            cluster(2, 0).output_path(d, "processed_query.cs"),
            d.join("processed_query.p0.cs")
        );
    }

    #[test]
    fn hostfile_lines_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hosts");
        std::fs::write(&p, "# cluster\n127.0.0.1:2101\n\n127.0.0.1:2102\nextra:1\n").unwrap();
        assert_eq!(
            read_hostfile(&p, 2).unwrap(),
            vec!["127.0.0.1:2101", "127.0.0.1:2102"]
        );
        assert!(read_hostfile(&p, 4).is_err());
        std::fs::write(&p, "127.0.0.1\n127.0.0.1:2\n").unwrap();
        let e = read_hostfile(&p, 2).unwrap_err().to_string();
        assert!(e.contains("host:port"), "{e}");
    }

    #[test]
    fn merging_is_monotone_and_the_end_is_exact() {
        let v = View::new(3);
        v.set_done(0, 50);
        v.merge(
            1,
            &Status {
                done: true,
                max_tick: 70,
                resume: u64::MAX,
                ..Default::default()
            },
        );
        assert!(!v.all_done());
        // A stale message changes nothing.
        v.merge(
            1,
            &Status {
                max_tick: 10,
                resume: u64::MAX,
                ..Default::default()
            },
        );
        v.set_done(2, 0);
        assert!(v.all_done());
        assert_eq!(v.final_tick(), 70);
        assert!(!v.all_live());
        v.set_live(0, Some(30));
        v.set_live(1, None);
        v.set_live(2, Some(20));
        assert!(v.all_live());
        assert_eq!(v.resume_tick(), Some(30));
    }

    #[test]
    fn self_blacklist_counts_flows_in_any_order() {
        let b = SelfBlacklist::new(&cluster(2, 0));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        b.apply(ip, false);
        assert!(!b.contains(&ip));
        b.apply(ip, true);
        assert!(!b.contains(&ip));
        b.add(ip);
        assert!(b.contains(&ip));
        assert_eq!(b.take_outbox(), vec![(ip, true)]);
        b.remove(ip);
        assert!(!b.contains(&ip));
    }
}
