//! A minimal HTTP/1.1 client for the API tests: one request per connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Sends a request with a JSON body; returns (status, JSON body or `Null`).
pub fn call(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, text) = call_with(addr, method, path, &[], body);
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Sends a request with extra headers; returns (status, body text).
pub fn call_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, rest) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    // The body may be chunked.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut r = rest;
        loop {
            let (len, tail) = r.split_once("\r\n").unwrap();
            let n = usize::from_str_radix(len.trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            r = &tail[n + 2..];
        }
        out
    } else {
        rest.to_string()
    };
    (status, body)
}

/// Polls `f` every 100 ms until it holds; fails the test after 120 s.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An engine running live in a thread, with the HTTP API over it on a free loopback port.
pub struct LiveEngine {
    pub addr: SocketAddr,
    pub server: antispider::api::ApiHandle,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    engine: std::thread::JoinHandle<anyhow::Result<antispider::engine::Summary>>,
}

impl LiveEngine {
    /// Starts the API with `state` and the engine with `config`, sharing the state's hubs.
    pub fn start(config: antispider::config::Config, state: antispider::api::ApiState) -> Self {
        let (anomaly, ops) = (state.anomaly.clone(), state.ops.clone());
        let server = antispider::api::start("127.0.0.1:0", state).unwrap();
        let addr = server.addr;
        assert!(addr.ip().is_loopback());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let engine = std::thread::spawn(move || {
            antispider::engine::run_with(
                antispider::engine::RunOptions {
                    config,
                    live: true,
                    progress: false,
                },
                s,
                anomaly,
                ops,
            )
        });
        LiveEngine {
            addr,
            server,
            stop,
            engine,
        }
    }

    /// Stops the engine (as Ctrl-C does) and returns its summary; the API keeps answering.
    pub fn stop(self) -> (antispider::api::ApiHandle, antispider::engine::Summary) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let summary = self.engine.join().unwrap().unwrap();
        (self.server, summary)
    }
}
