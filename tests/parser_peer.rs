//! Peer test: the crowdsec hub's nginx parser test corpus
//! (`reference/peer-tests/crowdsec/nginx_http-logs/`) through our `combined` parser.
//!
//! Every access-log line must parse to what crowdsec's parsers extracted (verb, path + args,
//! status, client IP, user agent, timestamp, virtual host); the nginx error-log line must be
//! rejected with a reason.

use std::path::PathBuf;

use antispider::format::time::parse_iso8601;
use antispider::format::{parse_line, LogFormat, ParseErrorKind, ParseLimits};
use serde_json::Value;

fn corpus_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/reference/peer-tests/crowdsec/nginx_http-logs");
    assert!(
        dir.is_dir(),
        "peer-test corpus missing: {} does not exist (expected the crowdsec nginx_http-logs \
         test folder from the shared reference material)",
        dir.display()
    );
    dir
}

fn read(dir: &std::path::Path, name: &str) -> Vec<u8> {
    let path = dir.join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn field<'a>(exp: &'a Value, key: &str) -> Option<&'a str> {
    exp.get(key).and_then(Value::as_str)
}

#[test]
fn crowdsec_nginx_http_logs() {
    let dir = corpus_dir();
    let log = read(&dir, "nginx_http-logs.log");
    let summary: Value = serde_json::from_slice(&read(&dir, "expected_summary.json"))
        .expect("expected_summary.json is not valid JSON");
    let expected = summary["http_logs_parsed"]
        .as_array()
        .expect("expected_summary.json has no http_logs_parsed array");

    let lines: Vec<&[u8]> = log
        .split(|&c| c == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .collect();
    assert_eq!(
        lines.len(),
        summary["log_lines"].as_u64().expect("log_lines") as usize,
        "line count differs from expected_summary.json"
    );
    assert_eq!(lines.len(), expected.len(), "one expectation per line");

    let limits = ParseLimits::default();
    let (mut access, mut errors) = (0, 0);
    for (i, (line, exp)) in lines.iter().zip(expected).enumerate() {
        let n = i + 1;
        let parsed = parse_line(LogFormat::Combined, line, &limits);
        match field(exp, "m:log_type") {
            Some("http_access-log") => {
                access += 1;
                let r = parsed.unwrap_or_else(|e| panic!("line {n}: {e}"));
                assert_eq!(
                    Some(&*r.request_method),
                    field(exp, "p:verb"),
                    "line {n} verb"
                );
                let mut words = r.request.split(' ');
                let (_, uri, proto) = (words.next(), words.next(), words.next());
                let uri = uri.unwrap_or_else(|| panic!("line {n}: request has no URI"));
                let mut want = field(exp, "p:request").expect("p:request").to_string();
                if let Some(args) = field(exp, "p:http_args") {
                    want = format!("{want}?{args}");
                }
                assert_eq!(uri, want, "line {n} path + args");
                assert_eq!(Some(uri), field(exp, "m:http_path"), "line {n} http_path");
                if let Some(v) = field(exp, "p:http_version") {
                    assert_eq!(
                        proto,
                        Some(format!("HTTP/{v}").as_str()),
                        "line {n} version"
                    );
                }
                let status = field(exp, "p:status").map(|s| s.parse::<u16>().unwrap());
                assert_eq!(r.status, status, "line {n} status");
                assert_eq!(
                    Some(&*r.remote_addr),
                    field(exp, "p:remote_addr"),
                    "line {n} remote_addr"
                );
                assert_eq!(
                    Some(&*r.http_user_agent),
                    field(exp, "p:http_user_agent"),
                    "line {n} user agent"
                );
                let ts = field(exp, "m:timestamp").expect("m:timestamp");
                assert_eq!(Some(r.time_ms), parse_iso8601(ts), "line {n} timestamp");
                assert_eq!(
                    parse_iso8601(&r.time_iso8601),
                    Some(r.time_ms),
                    "line {n} iso"
                );
                assert_eq!(
                    r.host,
                    field(exp, "p:target_fqdn").unwrap_or(""),
                    "line {n} target_fqdn"
                );
                assert!(r.body_bytes_sent.is_some(), "line {n} body_bytes_sent");
                assert_eq!(r.http_referer, "", "line {n}: referer \"-\" means empty");
            }
            Some("http_error-log") => {
                errors += 1;
                let e = match parsed {
                    Ok(r) => panic!("line {n}: error-log line parsed as access log: {r:?}"),
                    Err(e) => e,
                };
                assert!(
                    matches!(
                        e.kind,
                        ParseErrorKind::NotAccessLog | ParseErrorKind::FieldCount
                    ),
                    "line {n}: unexpected error kind {e}"
                );
                assert!(!e.detail.is_empty(), "line {n}: error without a reason");
                // The reason must not echo the line.
                assert!(!e.detail.contains("172.17.0.1"), "line {n}: {}", e.detail);
            }
            other => panic!("line {n}: unknown m:log_type {other:?}"),
        }
    }
    assert_eq!((access, errors), (8, 1));
}
