//! A real Kafka-protocol broker for tests: Tansu with in-memory storage on 127.0.0.1.
//!
//! `scripts/test.sh` builds it once into the tools cache (`$ANTISPIDER_TOOLS_DIR/bin`, by
//! default `~/.cache/antispider-tools/bin`) and puts that on the PATH.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Tansu {
    child: Child,
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return p.into();
    }
    let tools = std::env::var("ANTISPIDER_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let cache = std::env::var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache"));
            cache.join("antispider-tools")
        });
    let cached = tools.join("bin/tansu");
    if cached.exists() {
        return cached;
    }
    PathBuf::from("tansu")
}

impl Tansu {
    pub fn start() -> Tansu {
        let dir = tempfile::tempdir().unwrap();
        let port = super::free_port();
        let log = dir.path().join("tansu.log");
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("tansu.err")).unwrap(),
            ))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start the Kafka broker {:?}: {e}; scripts/test.sh builds it \
                     (cargo install tansu --features dynostore into the tools cache)",
                    binary()
                )
            });
        let t = Tansu {
            child,
            port,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                panic!(
                    "tansu did not listen on 127.0.0.1:{port} within 20 s; log:\n{}",
                    std::fs::read_to_string(&t.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        t
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every message of `topic` (all partitions) as (key, payload), from the beginning up to the
/// end-of-partition signal of every partition and then [`QUIET`] without a message; a topic
/// never written has none. Call it once the writers have flushed and stopped.
///
/// Reads to the signal, not to the high watermark: Tansu 0.6 reports a stale one for
/// ListOffsets (the base offset of the last batch), so `fetch_watermarks` would stop early.
/// The quiet time guards against the same staleness in the signal: a message that arrives
/// after a partition's signal takes it off the list of partitions at their end.
pub fn read_topic_keyed(brokers: &str, topic: &str) -> Vec<(String, String)> {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::error::KafkaError;
    use rdkafka::{Message, Offset, TopicPartitionList};

    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "test-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let partitions = md.topics()[0].partitions().len();
    if partitions == 0 {
        return Vec::new();
    }
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p as i32, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut at_end = std::collections::BTreeSet::new();
    // When every partition was last seen at its end with no message since.
    let mut all_at_end_since: Option<Instant> = None;
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "no end of {topic} after {} messages",
            out.len()
        );
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                all_at_end_since = None;
                out.push((
                    String::from_utf8(m.key().unwrap_or_default().to_vec()).unwrap(),
                    String::from_utf8(m.payload().unwrap().to_vec()).unwrap(),
                ));
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
        if at_end.len() == partitions {
            let since = *all_at_end_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= QUIET {
                return out;
            }
        }
    }
}

/// How long [`read_topic_keyed`] waits for more messages once every partition is at its end.
pub const QUIET: Duration = Duration::from_millis(1500);

/// The payloads of [`read_topic_keyed`].
pub fn read_topic(brokers: &str, topic: &str) -> Vec<String> {
    read_topic_keyed(brokers, topic)
        .into_iter()
        .map(|(_, payload)| payload)
        .collect()
}
