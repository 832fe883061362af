//! Kafka source: one consumer per timely worker, reading its share of the log topics'
//! partitions (partition `j` of the sorted list goes to worker `j % workers`, across all
//! processes of a cluster).
//!
//! At-least-once with an exact window after restarts (SPEC §7):
//! - the engine commits an offset only after every output derived from the lines before it is
//!   written ([`KafkaSource::commit`]);
//! - the commit's metadata carries `replay_from=<offset>`: the oldest message that can still
//!   matter to the window at the committed position. After a restart the partition is re-read
//!   from there; lines before the committed offset come out flagged `replay`, so the engine
//!   rebuilds the window from them without writing their outputs again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::{LineSource, Poll, RawLine};
use crate::config::{KafkaConfig, KafkaStart};
use crate::format::LogFormat;

const METADATA_KEY: &str = "replay_from=";
const TIMEOUT: Duration = Duration::from_secs(10);

/// One assigned partition.
#[derive(Debug)]
struct Partition {
    topic: String,
    partition: i32,
    format: LogFormat,
    /// Next offset to read (-1 until the first message when starting at `latest`).
    next: i64,
    /// Messages below this offset were processed and committed by an earlier run.
    resume: i64,
    /// Where this run started reading (the replay position of commits before any checkpoint).
    started_at: i64,
    /// High watermark at start-up, for `stop_at_end`.
    end: i64,
    /// Since when the broker has said there is nothing after `next` (reset by a message).
    eof: Option<Instant>,
    /// Newest event time seen (ms).
    max_ms: u64,
    /// (newest event time of all messages before `offset`, offset), oldest first.
    checkpoints: VecDeque<(u64, i64)>,
}

/// How long a partition must stay at its end before it counts as caught up: some brokers
/// (Tansu 0.6) signal the end at a stale high watermark while more messages follow at once.
const SETTLE: Duration = Duration::from_millis(500);

impl Partition {
    fn settled_at_end(&self) -> bool {
        self.eof.is_some_and(|t| t.elapsed() >= SETTLE)
    }
}

/// Where each partition stands, to commit later.
#[derive(Clone, Debug, Default)]
pub struct Position(Vec<i64>);

pub struct KafkaSource {
    consumer: BaseConsumer,
    parts: Vec<Partition>,
    stop_at_end: bool,
    /// How far behind the frontier a message can still matter: window + lateness + a slide.
    lookback_ms: u64,
    last_error: Option<Instant>,
    commits: u64,
    /// How long a poll may wait for the broker when nothing is queued (see [`Self::set_max_wait`]).
    max_wait: Duration,
}

/// A client config with the common settings and the user's extra properties.
pub fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    for (k, v) in &cfg.client {
        c.set(k, v);
    }
    c
}

impl KafkaSource {
    /// Opens the consumer of worker `index` of `workers` (all processes).
    pub fn open(
        cfg: &KafkaConfig,
        index: usize,
        workers: usize,
        lookback_ms: u64,
    ) -> anyhow::Result<KafkaSource> {
        let consumer: BaseConsumer = client_config(cfg)
            .set("group.id", &cfg.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            // A broker holds a fetch up to this long waiting for data (librdkafka's default
            // is 500 ms, which would add up to that much to every decision); `client` may
            // set another value.
            .set(
                "fetch.wait.max.ms",
                cfg.client
                    .get("fetch.wait.max.ms")
                    .map_or("20", String::as_str),
            )
            .set(
                "auto.offset.reset",
                match cfg.start {
                    KafkaStart::Earliest => "earliest",
                    KafkaStart::Latest => "latest",
                },
            )
            .create()
            .with_context(|| format!("kafka: cannot create a consumer for {}", cfg.brokers))?;

        // Every (topic, partition), in one order all workers agree on.
        let mut all = Vec::new();
        for t in &cfg.source_topics {
            let n = partition_count(&consumer, &t.name)
                .with_context(|| format!("kafka ({}): topic {}", cfg.brokers, t.name))?;
            all.extend((0..n).map(|p| (t.name.clone(), p, t.format)));
        }
        all.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        let mine: Vec<_> = all
            .into_iter()
            .enumerate()
            .filter(|(j, _)| j % workers == index)
            .map(|(_, p)| p)
            .collect();

        let mut tpl = TopicPartitionList::new();
        for (topic, p, _) in &mine {
            tpl.add_partition(topic, *p);
        }
        let committed = if mine.is_empty() {
            TopicPartitionList::new()
        } else {
            consumer
                .committed_offsets(tpl, TIMEOUT)
                .context("kafka: cannot read the committed offsets")?
        };

        let mut parts = Vec::new();
        let mut assign = TopicPartitionList::new();
        for (topic, partition, format) in mine {
            let (low, high) = consumer
                .fetch_watermarks(&topic, partition, TIMEOUT)
                .with_context(|| format!("kafka: watermarks of {topic}/{partition}"))?;
            let elem = committed.find_partition(&topic, partition);
            let (resume, start) = match elem.as_ref().map(|e| (e.offset(), e.metadata())) {
                Some((Offset::Offset(c), meta)) => {
                    let from = meta
                        .strip_prefix(METADATA_KEY)
                        .and_then(|s| s.parse::<i64>().ok())
                        .unwrap_or(c - cfg.rewind_messages);
                    (c, from.clamp(low, c))
                }
                _ => match cfg.start {
                    KafkaStart::Earliest => (low, low),
                    KafkaStart::Latest => (high, high),
                },
            };
            tracing::info!(
                "kafka: worker {index} reads {topic}/{partition} from offset {start} \
                 (committed {resume}, end {high})"
            );
            assign
                .add_partition_offset(&topic, partition, Offset::Offset(start))
                .context("kafka: bad offset")?;
            parts.push(Partition {
                topic,
                partition,
                format,
                next: start,
                resume,
                started_at: start,
                end: high,
                eof: None,
                max_ms: 0,
                checkpoints: VecDeque::new(),
            });
        }
        consumer
            .assign(&assign)
            .context("kafka: cannot assign partitions")?;
        Ok(KafkaSource {
            consumer,
            parts,
            stop_at_end: cfg.stop_at_end,
            lookback_ms,
            last_error: None,
            commits: 0,
            max_wait: Self::IDLE_WAIT,
        })
    }

    /// True while some partition is still re-reading lines an earlier run already processed.
    pub fn replaying(&self) -> bool {
        self.parts.iter().any(|p| p.next < p.resume)
    }

    /// Records the event time of a line this source handed out (for the replay position).
    pub fn note_event_time(&mut self, line: &RawLine, t_ms: u64) {
        let p = &mut self.parts[line.slot as usize];
        // A checkpoint per second of event time is plenty (≈ lookback/1000 entries).
        if t_ms / 1000 > p.max_ms / 1000 {
            p.checkpoints.push_back((p.max_ms, line.no as i64));
        }
        p.max_ms = p.max_ms.max(t_ms);
    }

    /// How long a poll waits for the broker while the engine has nothing else to do.
    pub const IDLE_WAIT: Duration = Duration::from_millis(50);

    /// How long the next polls may block waiting for the broker. The engine sets 0 while its
    /// dataflow is busy: a worker blocked here does not step, and the other workers' progress
    /// waits for its steps (blocking in every loop added about 300 ms to every decision).
    pub fn set_max_wait(&mut self, wait: Duration) {
        self.max_wait = wait;
    }

    /// Whether this worker was given any partition.
    pub fn has_partitions(&self) -> bool {
        !self.parts.is_empty()
    }

    /// Per slot: true while the partition may deliver more now (not at its end).
    pub fn active_slots(&self, out: &mut Vec<bool>) {
        out.resize(self.parts.len().max(out.len()), true);
        for (o, p) in out.iter_mut().zip(&self.parts) {
            *o = !p.settled_at_end();
        }
    }

    /// Where every partition stands now.
    pub fn position(&self) -> Position {
        Position(self.parts.iter().map(|p| p.next).collect())
    }

    /// Commits `pos` (taken when the engine's input frontier was `frontier_ms`), whose outputs
    /// the caller has written.
    pub fn commit(&mut self, pos: &Position, frontier_ms: u64) {
        let mut tpl = TopicPartitionList::new();
        let horizon = frontier_ms.saturating_sub(self.lookback_ms);
        for (p, &next) in self.parts.iter_mut().zip(&pos.0) {
            if next < 0 || next <= p.resume && next == p.started_at {
                continue;
            }
            // The newest checkpoint before which everything is older than the horizon.
            while p.checkpoints.len() > 1
                && p.checkpoints[1].0 < horizon
                && p.checkpoints[1].1 <= next
            {
                p.checkpoints.pop_front();
            }
            let from = match p.checkpoints.front() {
                Some(&(m, o)) if m < horizon && o <= next => o,
                _ => p.started_at,
            };
            p.started_at = from;
            if let Ok(mut e) = tpl
                .add_partition_offset(&p.topic, p.partition, Offset::Offset(next))
                .map(|_| {
                    tpl.find_partition(&p.topic, p.partition)
                        .expect("just added")
                })
            {
                e.set_metadata(format!("{METADATA_KEY}{from}"));
            }
        }
        if tpl.count() == 0 {
            return;
        }
        match self
            .consumer
            .commit(&tpl, rdkafka::consumer::CommitMode::Async)
        {
            Ok(()) => self.commits += 1,
            Err(e) => self.log_error(&e),
        }
    }

    fn log_error(&mut self, e: &KafkaError) {
        // Broker outages repeat the same error many times a second; say it every 10 s.
        if self
            .last_error
            .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
        {
            tracing::warn!("kafka source: {e} (retrying)");
            self.last_error = Some(Instant::now());
        }
    }

    fn at_end(&self) -> bool {
        // Both: the watermark read at start-up, and the broker's end-of-partition signal (some
        // brokers report a stale watermark while a produce is settling).
        self.stop_at_end
            && self
                .parts
                .iter()
                .all(|p| p.settled_at_end() && p.next >= p.end)
    }
}

fn partition_count(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<i32> {
    // A topic that is being created may report no partitions for a moment.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let md = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
        if let Some(t) = md.topics().iter().find(|t| t.name() == topic) {
            if t.error().is_none() && !t.partitions().is_empty() {
                return Ok(t.partitions().len() as i32);
            }
        }
        if Instant::now() > deadline {
            return Err(anyhow!(
                "does not exist or has no partitions (create it, e.g. with `antispider produce --partitions N`)"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        for p in &self.parts {
            tracing::info!(
                "kafka: stopped reading {}/{} at offset {} (end at start-up {}, {} commits)",
                p.topic,
                p.partition,
                p.next,
                p.end,
                self.commits
            );
        }
    }
}

impl LineSource for KafkaSource {
    fn poll(&mut self, buf: &mut Vec<RawLine>, max: usize) -> std::io::Result<Poll> {
        if self.at_end() {
            return Ok(Poll::Eof);
        }
        if self.parts.is_empty() {
            return Ok(Poll::Idle);
        }
        let mut got = 0;
        let mut timeout = self.max_wait;
        while got < max {
            let Some(result) = self.consumer.poll(timeout) else {
                break;
            };
            timeout = Duration::ZERO;
            let msg = match result {
                Ok(m) => m,
                Err(KafkaError::PartitionEOF(partition)) => {
                    // The error names no topic: with several topics, mark the partition of
                    // every topic whose position is at or past its start-up end.
                    for p in self.parts.iter_mut().filter(|p| p.partition == partition) {
                        if p.next >= p.end {
                            p.eof.get_or_insert_with(Instant::now);
                        }
                    }
                    continue;
                }
                Err(e) => {
                    self.log_error(&e);
                    break;
                }
            };
            let Some(slot) = self
                .parts
                .iter()
                .position(|p| p.partition == msg.partition() && p.topic == msg.topic())
            else {
                continue;
            };
            let p = &mut self.parts[slot];
            let offset = msg.offset();
            p.next = offset + 1;
            p.eof = None;
            buf.push(RawLine {
                no: offset as u64,
                bytes: bytes::Bytes::copy_from_slice(msg.payload().unwrap_or_default()),
                format: p.format,
                replay: offset < p.resume,
                slot: slot as u32,
            });
            got += 1;
        }
        Ok(if got > 0 {
            Poll::Data
        } else if self.at_end() {
            Poll::Eof
        } else {
            Poll::Idle
        })
    }
}
