//! Kafka sinks: `processedQuery`, `processedBook`, `blacklist`, `deadletter` and
//! `service_anomalies` topics (each written when its name is configured).
//!
//! One producer per process, shared by the workers. librdkafka buffers and retries by itself;
//! messages never time out (`message.timeout.ms = 0`), so a broker outage delays output but
//! loses none. When its queue is full the caller waits (back-pressure reaches the source).
//! [`KafkaSink::flush`] tells whether everything sent so far is delivered, which gates the
//! source's offset commits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::config::KafkaConfig;
use crate::source::kafka::client_config;

/// Which output a message goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topic {
    ProcessedQuery,
    ProcessedBook,
    Blacklist,
    DeadLetter,
    ServiceAnomalies,
}

/// Delivery counters, readable while the engine runs.
#[derive(Debug, Default)]
pub struct KafkaStats {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub queue_full_waits: AtomicU64,
}

struct Context_(Arc<KafkaStats>);

impl ClientContext for Context_ {}

impl ProducerContext for Context_ {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.0.delivered.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                // One line per failure would flood the log in an outage: the first, then every
                // 1000th.
                let n = self.0.failed.fetch_add(1, Ordering::Relaxed);
                if n.is_multiple_of(1000) {
                    tracing::error!("kafka sink: {} message(s) not delivered: {e}", n + 1);
                }
                n
            }
        };
    }
}

pub struct KafkaSink {
    producer: ThreadedProducer<Context_>,
    topics: [String; 5],
    pub stats: Arc<KafkaStats>,
}

impl KafkaSink {
    pub fn new(cfg: &KafkaConfig) -> anyhow::Result<KafkaSink> {
        let stats = Arc::new(KafkaStats::default());
        let producer = client_config(cfg)
            .set("message.timeout.ms", "0")
            .set("linger.ms", "20")
            .set("queue.buffering.max.messages", "1000000")
            .create_with_context(Context_(stats.clone()))
            .with_context(|| format!("kafka: cannot create a producer for {}", cfg.brokers))?;
        // Brokers that do not create topics on first use would reject every message.
        for topic in [
            &cfg.processed_query_topic,
            &cfg.processed_book_topic,
            &cfg.blacklist_topic,
            &cfg.deadletter_topic,
            &cfg.service_anomalies_topic,
        ] {
            if !topic.is_empty() {
                create_topic(cfg, topic, cfg.output_partitions)?;
            }
        }
        Ok(KafkaSink {
            producer,
            topics: [
                cfg.processed_query_topic.clone(),
                cfg.processed_book_topic.clone(),
                cfg.blacklist_topic.clone(),
                cfg.deadletter_topic.clone(),
                cfg.service_anomalies_topic.clone(),
            ],
            stats,
        })
    }

    fn name(&self, topic: Topic) -> &str {
        &self.topics[topic as usize]
    }

    /// True when `topic` is configured.
    pub fn wants(&self, topic: Topic) -> bool {
        !self.name(topic).is_empty()
    }

    /// Queues one message (keyed, so one IP's decisions stay in order in one partition).
    /// Waits while the producer's queue is full.
    pub fn send(&self, topic: Topic, key: &str, payload: &[u8]) {
        let name = self.name(topic);
        if name.is_empty() {
            return;
        }
        let mut record = BaseRecord::to(name).key(key).payload(payload);
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    self.stats.queue_full_waits.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                    record = r;
                }
                Err((e, _)) => {
                    // Not retriable (e.g. message too large): count it, never panic.
                    tracing::error!("kafka sink: cannot queue a message for {name}: {e}");
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }

    /// Waits up to `timeout` for everything queued to be delivered; true when it was.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.producer.flush(timeout).is_ok() && self.producer.in_flight_count() == 0
    }

    /// Messages queued but not yet delivered.
    pub fn pending(&self) -> i32 {
        self.producer.in_flight_count()
    }
}

/// Creates `topic` with `partitions` partitions unless it exists (`antispider produce`).
pub fn create_topic(cfg: &KafkaConfig, topic: &str, partitions: i32) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = client_config(cfg)
        .create()
        .with_context(|| format!("kafka: cannot create an admin client for {}", cfg.brokers))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = rt
        .block_on(admin.create_topics([&new], &opts))
        .with_context(|| format!("kafka ({}): cannot create topic {topic}", cfg.brokers))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => anyhow::bail!("kafka ({}): cannot create topic {t}: {e}", cfg.brokers),
        }
    }
    Ok(())
}

/// Sends every line of `input` to `topic`, line `n` to partition `n % partitions`, at most
/// `rate` lines per second (0 = as fast as possible). Returns the number of lines sent.
pub fn produce_lines(
    cfg: &KafkaConfig,
    topic: &str,
    partitions: i32,
    input: impl std::io::BufRead,
    rate: u64,
) -> anyhow::Result<u64> {
    let stats = Arc::new(KafkaStats::default());
    let producer: ThreadedProducer<Context_> = client_config(cfg)
        .set("message.timeout.ms", "0")
        .set("linger.ms", "5")
        .create_with_context(Context_(stats.clone()))?;
    let start = std::time::Instant::now();
    let mut n = 0u64;
    for line in input.split(b'\n') {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        let mut record = BaseRecord::<(), [u8]>::to(topic)
            .payload(&line[..])
            .partition((n % partitions.max(1) as u64) as i32);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    std::thread::sleep(Duration::from_millis(5));
                    record = r;
                }
                Err((e, _)) => anyhow::bail!("kafka: cannot send to {topic}: {e}"),
            }
        }
        n += 1;
        if rate > 0 && n.is_multiple_of(100) {
            let due = Duration::from_secs_f64(n as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    while producer.flush(Duration::from_secs(10)).is_err() {
        tracing::warn!(
            "kafka: {} messages not delivered yet",
            producer.in_flight_count()
        );
    }
    let failed = stats.failed.load(Ordering::Relaxed);
    if failed > 0 {
        anyhow::bail!("kafka: {failed} of {n} messages were not delivered to {topic}");
    }
    Ok(n)
}

/// Anomalous service results to the `service_anomalies` topic: the same JSON lines as
/// `service_anomalies.jsonl` (an `add`, and a `remove` when a newer model re-scores the sample).
pub struct AnomalyTopic {
    pub sink: Arc<KafkaSink>,
    pub utc_offset_minutes: i32,
}

impl crate::anomaly::driver::ResultSink for AnomalyTopic {
    fn change(
        &mut self,
        action: crate::anomaly::driver::ChangeAction,
        r: &crate::anomaly::hub::StoredResult,
    ) -> anyhow::Result<()> {
        if r.result.anomaly {
            let line = crate::anomaly::driver::change_json(action, r, self.utc_offset_minutes);
            self.sink
                .send(Topic::ServiceAnomalies, &r.result.appid, line.as_bytes());
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}
