//! Sinks: where results leave the engine. `files` writes the embedded default's JSON lines and
//! `#CS#` files; `blacklist` turns blacklist collection changes into add/remove decisions.

pub mod backup;
pub mod blacklist;
pub mod files;
pub mod kafka;
pub mod mysql;
pub mod redis;

/// Polls `done` every 10 ms until it holds (true) or `timeout` passes (false); the Redis and
/// MySQL sinks wait for their writer threads with it.
pub fn wait_until(timeout: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
