//! nginx `combined` access logs, optionally extended with `$request_time "$http_cookie"`.
//!
//! Accepted shape (hand-written byte scanner, no regex: this is the hot path):
//!
//! ```text
//! [$host[:port] ]$remote_addr - [$remote_user ][$time_local] "$request" $status
//!     $body_bytes_sent "$http_referer" "$http_user_agent"[ $request_time "$http_cookie"]
//! ```
//!
//! - the leading virtual host is stored without its port in `LogRecord::host`;
//! - `$remote_user` may be `-`, a name, or missing altogether;
//! - quoted fields may contain `\"` and `\\` escapes (decoded); any other backslash sequence,
//!   such as nginx's default `\x22`, is kept as is;
//! - `"-"` for referer, user agent and cookie means empty; `-` for status, bytes and
//!   request_time means `None`;
//! - the request is kept as given; `request_method` is its first word when it looks like
//!   `METHOD URI PROTO`, else empty (nginx logs `-` for an empty request, and garbage for TLS
//!   handshakes sent to a plain-HTTP port: those lines still parse);
//! - after the user agent, a token that is not a number or `-` (or a quoted field such as the
//!   `"$http_x_forwarded_for"` of nginx's stock `main` format) ends the parsed part: the rest of
//!   the line is ignored;
//! - nginx error-log lines (`yyyy/mm/dd HH:MM:SS [level] ...`) → `NotAccessLog`.
//!
//! `time_iso8601` is rendered from the event time with `$time_local`'s offset.

use std::borrow::Cow;

use super::{
    find2, method_of_cow, normalize_ip, time, time_local_offset, time_local_to_iso8601, ParseError,
    ParseErrorKind,
};
use crate::event::LogRecord;

/// The nginx `log_format` that produces the full extended form this module reads and writes.
pub const NGINX_LOG_FORMAT: &str = "log_format antispider '$remote_addr - $remote_user \
[$time_local] \"$request\" $status $body_bytes_sent \"$http_referer\" \"$http_user_agent\" \
$request_time \"$http_cookie\"';";

fn err(kind: ParseErrorKind, detail: &str) -> ParseError {
    ParseError::new(kind, detail)
}

fn field_err(detail: &str) -> ParseError {
    err(ParseErrorKind::FieldCount, detail)
}

/// `yyyy/mm/dd HH:MM:SS [` — the start of an nginx error-log line.
fn is_error_log(b: &[u8]) -> bool {
    const PAT: &[u8] = b"dddd/dd/dd dd:dd:dd [";
    b.len() >= PAT.len()
        && PAT.iter().zip(b).all(|(&p, &c)| {
            if p == b'd' {
                c.is_ascii_digit()
            } else {
                p == c
            }
        })
}

/// Reads a `"..."` field starting at `b[start] == b'"'`; returns the decoded value and the
/// index just after the closing quote.
fn quoted<'a>(
    line: &'a str,
    start: usize,
    name: &'static str,
) -> Result<(Cow<'a, str>, usize), ParseError> {
    let b = line.as_bytes();
    if b.get(start) != Some(&b'"') {
        return Err(ParseError::new(
            ParseErrorKind::FieldCount,
            format!("expected a quoted {name}"),
        ));
    }
    let mut i = start + 1;
    let mut escaped = false;
    while let Some(j) = find2(b, i, b'"', b'\\') {
        i = j;
        if b[j] == b'"' {
            break;
        }
        escaped = true;
        i += 2;
    }
    if i >= b.len() || b[i] != b'"' {
        return Err(ParseError::new(
            ParseErrorKind::FieldCount,
            format!("unterminated quoted {name}"),
        ));
    }
    let raw = &line[start + 1..i];
    let value = if escaped {
        Cow::Owned(unescape(raw))
    } else {
        Cow::Borrowed(raw)
    };
    Ok((value, i + 1))
}

/// Decodes `\"` and `\\`; other backslash sequences are kept verbatim.
fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n @ ('"' | '\\')) => out.push(n),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `"-"` means empty.
fn dash_empty(v: Cow<'_, str>) -> Cow<'_, str> {
    if v == "-" {
        Cow::Borrowed("")
    } else {
        v
    }
}

/// The next space-delimited token at `pos`; returns it and the index after it.
fn token(line: &str, pos: usize) -> (&str, usize) {
    let b = line.as_bytes();
    let end = b[pos..]
        .iter()
        .position(|&c| c == b' ')
        .map_or(b.len(), |o| pos + o);
    (&line[pos..end], end)
}

/// Skips exactly one space, required between fields.
fn space(b: &[u8], pos: usize, after: &str) -> Result<usize, ParseError> {
    if b.get(pos) == Some(&b' ') {
        Ok(pos + 1)
    } else if pos >= b.len() {
        Err(ParseError::new(
            ParseErrorKind::FieldCount,
            format!("line ends after {after}"),
        ))
    } else {
        Err(ParseError::new(
            ParseErrorKind::FieldCount,
            format!("expected a space after {after}"),
        ))
    }
}

/// `$host` without a `:port` (`[v6]:port` → `[v6]`; a bare IPv6 literal is kept).
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    match host.rsplit_once(':') {
        Some((h, port))
            if !h.contains(':') && !port.is_empty() && port.bytes().all(|c| c.is_ascii_digit()) =>
        {
            h
        }
        _ => host,
    }
}

fn parse_num<T: std::str::FromStr>(tok: &str, name: &str) -> Result<Option<T>, ParseError> {
    if tok == "-" {
        return Ok(None);
    }
    if tok.is_empty() || !tok.bytes().all(|c| c.is_ascii_digit()) {
        return Err(ParseError::new(
            ParseErrorKind::FieldCount,
            format!("{name} is not a number or '-'"),
        ));
    }
    tok.parse::<T>().map(Some).map_err(|_| {
        ParseError::new(
            ParseErrorKind::FieldCount,
            format!("{name} is out of range"),
        )
    })
}

pub(crate) fn parse(line: &str) -> Result<LogRecord<'_>, ParseError> {
    let b = line.as_bytes();
    if is_error_log(b) {
        return Err(err(
            ParseErrorKind::NotAccessLog,
            "nginx error-log line (yyyy/mm/dd HH:MM:SS [level] ...), not an access-log line",
        ));
    }
    // `[time_local]`: the first " [" followed by a digit.
    let open = b
        .windows(3)
        .position(|w| w[0] == b' ' && w[1] == b'[' && w[2].is_ascii_digit())
        .map(|i| i + 1)
        .ok_or_else(|| {
            err(
                ParseErrorKind::NotAccessLog,
                "no [time_local] field: not an nginx combined access-log line",
            )
        })?;

    // Prefix: `[host ]remote_addr - [remote_user]`.
    let mut toks = line[..open - 1].split(' ').filter(|t| !t.is_empty());
    let prefix_err = || {
        err(
            ParseErrorKind::NotAccessLog,
            "expected `[host] remote_addr - [remote_user]` before [time_local]",
        )
    };
    let first = toks.next().ok_or_else(prefix_err)?;
    if first == "-" {
        return Err(err(ParseErrorKind::BadRemoteAddr, "remote_addr is '-'"));
    }
    let second = toks.next().ok_or_else(prefix_err)?;
    let (host, addr) = if second == "-" {
        ("", first)
    } else if toks.next() == Some("-") {
        (strip_port(first), second)
    } else {
        return Err(prefix_err());
    };

    let close = b[open + 1..]
        .iter()
        .position(|&c| c == b']')
        .map(|o| open + 1 + o)
        .ok_or_else(|| field_err("unterminated [time_local]"))?;
    let time_local = &line[open + 1..close];

    let pos = space(b, close + 1, "[time_local]")?;
    let (request, pos) = quoted(line, pos, "request")?;
    let pos = space(b, pos, "request")?;
    let (status_tok, pos) = token(line, pos);
    let status = parse_num::<u16>(status_tok, "status")?;
    let pos = space(b, pos, "status")?;
    let (bytes_tok, pos) = token(line, pos);
    let body_bytes_sent = parse_num::<u64>(bytes_tok, "body_bytes_sent")?;
    let pos = space(b, pos, "body_bytes_sent")?;
    let (referer, pos) = quoted(line, pos, "http_referer")?;
    let pos = space(b, pos, "http_referer")?;
    let (ua, mut pos) = quoted(line, pos, "http_user_agent")?;

    // Optional ` $request_time "$http_cookie"`.
    let mut request_time = None;
    let mut cookie = Cow::Borrowed("");
    if b.get(pos) == Some(&b' ') && b.get(pos + 1).is_some_and(|&c| c != b'"') {
        let (tok, next) = token(line, pos + 1);
        let rt = if tok == "-" {
            Some(None)
        } else {
            tok.parse::<f64>().ok().filter(|v| v.is_finite()).map(Some)
        };
        if let Some(rt) = rt {
            request_time = rt;
            pos = next;
            if b.get(pos) == Some(&b' ') && b.get(pos + 1) == Some(&b'"') {
                let (c, _) = quoted(line, pos + 1, "http_cookie")?;
                cookie = c;
            }
        }
    }

    // Validate after the structure, so a truncated line reports `FieldCount`.
    let remote_addr = normalize_ip(addr)?;
    let time_ms = time::parse_time_local(time_local).ok_or_else(|| {
        err(
            ParseErrorKind::BadTime,
            "time_local is not a valid nginx time (dd/Mon/yyyy:HH:MM:SS +hhmm)",
        )
    })?;
    let request_method = method_of_cow(&request);
    Ok(LogRecord {
        time_ms,
        time_iso8601: time_local_to_iso8601(time_local)
            .unwrap_or_else(|| time::format_iso8601(time_ms, time_local_offset(time_local)))
            .into(),
        time_local: time_local.into(),
        request,
        request_method,
        content_type: Cow::Borrowed(""),
        request_body: Cow::Borrowed(""),
        http_referer: dash_empty(referer),
        remote_addr,
        http_user_agent: dash_empty(ua),
        server_addr: Cow::Borrowed(""),
        host: host.into(),
        http_cookie: dash_empty(cookie),
        connections_active: None,
        status,
        body_bytes_sent,
        request_time,
    })
}

fn push_quoted(out: &mut String, v: &str, dash_if_empty: bool) {
    out.push('"');
    if v.is_empty() && dash_if_empty {
        out.push('-');
    } else {
        for c in v.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
    }
    out.push('"');
}

fn push_opt<T: std::fmt::Display>(out: &mut String, v: Option<T>) {
    use std::fmt::Write;
    match v {
        Some(v) => {
            let _ = write!(out, "{v}");
        }
        None => out.push('-'),
    }
}

/// Renders the extended form (with `$request_time "$http_cookie"`), preceded by `host` when
/// set. `time_local` is written as is, or rendered from `time_ms` with `time_iso8601`'s offset
/// when empty. Round-trips records whose `time_iso8601` is the rendering of `time_ms` (whole
/// seconds) with `time_local`'s offset, whose `request_method` is derived from `request`,
/// whose referer/UA/cookie are not the literal `-`, and which have no `cs`-only fields.
pub(crate) fn render(r: &LogRecord) -> String {
    let mut out = String::with_capacity(
        96 + r.request.len() + r.http_referer.len() + r.http_user_agent.len() + r.http_cookie.len(),
    );
    if !r.host.is_empty() {
        out.push_str(&r.host);
        out.push(' ');
    }
    out.push_str(&r.remote_addr);
    out.push_str(" - - [");
    if r.time_local.is_empty() {
        let off = super::iso8601_offset(&r.time_iso8601);
        out.push_str(&time::format_time_local(r.time_ms, off));
    } else {
        out.push_str(&r.time_local);
    }
    out.push_str("] ");
    push_quoted(&mut out, &r.request, false);
    out.push(' ');
    push_opt(&mut out, r.status);
    out.push(' ');
    push_opt(&mut out, r.body_bytes_sent);
    out.push(' ');
    push_quoted(&mut out, &r.http_referer, true);
    out.push(' ');
    push_quoted(&mut out, &r.http_user_agent, true);
    out.push(' ');
    push_opt(&mut out, r.request_time);
    out.push(' ');
    push_quoted(&mut out, &r.http_cookie, true);
    out
}

#[cfg(test)]
mod tests {
    use super::super::{parse_line, render_line, LogFormat, ParseLimits};
    use super::*;
    use proptest::prelude::*;

    fn p(line: &str) -> Result<LogRecord<'static>, ParseError> {
        parse_line(
            LogFormat::Combined,
            line.as_bytes(),
            &ParseLimits::default(),
        )
        .map(LogRecord::into_owned)
    }

    const PLAIN: &str = r#"192.168.1.1 - - [04/Jan/2020:07:25:02 +0000] "GET /.well-known/acme-challenge/x HTTP/1.1" 404 522 "-" "Go-http-client/1.1""#;

    #[test]
    fn plain_combined() {
        let r = p(PLAIN).unwrap();
        assert_eq!(r.remote_addr, "192.168.1.1");
        assert_eq!(r.request, "GET /.well-known/acme-challenge/x HTTP/1.1");
        assert_eq!(r.request_method, "GET");
        assert_eq!(r.status, Some(404));
        assert_eq!(r.body_bytes_sent, Some(522));
        assert_eq!(r.http_referer, "");
        assert_eq!(r.http_user_agent, "Go-http-client/1.1");
        assert_eq!(r.time_local, "04/Jan/2020:07:25:02 +0000");
        assert_eq!(r.time_iso8601, "2020-01-04T07:25:02+00:00");
        assert_eq!(
            r.time_ms,
            time::parse_iso8601("2020-01-04T07:25:02Z").unwrap()
        );
        assert_eq!((&*r.host, &*r.http_cookie), ("", ""));
        assert_eq!((r.request_time, r.connections_active), (None, None));
        assert_eq!(p(&format!("{PLAIN}\r\n")).unwrap(), r);
    }

    #[test]
    fn extended_and_offsets() {
        let l = r#"10.1.2.3 - bob [03/Apr/2020:16:39:49 +0800] "POST /q.ao?x=1 HTTP/1.1" 200 15 "http://r/" "UA \"quoted\" x" 0.123 "JSESSIONID=A; userId4logCookie=1""#;
        let r = p(l).unwrap();
        assert_eq!(r.request_method, "POST");
        assert_eq!(r.http_user_agent, r#"UA "quoted" x"#);
        assert_eq!(r.request_time, Some(0.123));
        assert_eq!(r.http_cookie, "JSESSIONID=A; userId4logCookie=1");
        assert_eq!(r.time_iso8601, "2020-04-03T16:39:49+08:00");
        let dash = l
            .replace("0.123", "-")
            .replace("\"JSESSIONID=A; userId4logCookie=1\"", "\"-\"");
        let r = p(&dash).unwrap();
        assert_eq!((r.request_time, &*r.http_cookie), (None, ""));
        // nginx's stock `main` format: a quoted X-Forwarded-For after the UA is ignored.
        let main = PLAIN.to_string() + r#" "1.2.3.4, 5.6.7.8""#;
        let r = p(&main).unwrap();
        assert_eq!((r.request_time, &*r.http_cookie), (None, ""));
        assert_eq!(r.http_user_agent, "Go-http-client/1.1");
        // Some other trailing token: ignored too.
        let r = p(&(PLAIN.to_string() + " upstream=abc")).unwrap();
        assert_eq!(r.request_time, None);
        // request_time without cookie.
        assert_eq!(
            p(&(PLAIN.to_string() + " 1.5")).unwrap().request_time,
            Some(1.5)
        );
    }

    #[test]
    fn host_and_user_variants() {
        let cases = [
            ("www.crowdsec.net 192.168.1.1 - - [", "www.crowdsec.net"),
            (
                "www.crowdsec11.net:80 192.168.1.1 - - [",
                "www.crowdsec11.net",
            ),
            ("[::1]:8080 192.168.1.1 - - [", "[::1]"),
            ("192.168.1.1 - user123 [", ""),
            ("192.168.1.1 - [", ""),
            ("example.org 192.168.1.1 - [", "example.org"),
            ("192.168.1.1 -  - [", ""),
        ];
        for (prefix, host) in cases {
            let l = format!(
                "{prefix}08/Jun/2020:08:04:43 +0000] \"GET /api/test HTTP/1.1\" 200 100 \"-\" \"curl/7.68.0\""
            );
            let r = p(&l).unwrap_or_else(|e| panic!("{prefix}: {e}"));
            assert_eq!(r.host, host, "{prefix}");
            assert_eq!(r.remote_addr, "192.168.1.1");
            assert_eq!(r.request, "GET /api/test HTTP/1.1");
        }
        let v6 = PLAIN.replace("192.168.1.1", "2001:DB8::5");
        assert_eq!(p(&v6).unwrap().remote_addr, "2001:db8::5");
    }

    #[test]
    fn odd_request_lines_still_parse() {
        for (req, method) in [
            ("-", ""),
            ("", ""),
            (r"\x16\x03\x01\x00\xA5\x01\x00\x00", ""),
            ("GET /a\\x22b HTTP/1.1", "GET"),
            ("PROPFIND /dav HTTP/1.1", "PROPFIND"),
        ] {
            let l = PLAIN.replace("GET /.well-known/acme-challenge/x HTTP/1.1", req);
            let r = p(&l).unwrap_or_else(|e| panic!("{req:?}: {e}"));
            assert_eq!(r.request, req);
            assert_eq!(r.request_method, method);
        }
        let l = PLAIN
            .replace(" 404 522 ", " 400 0 ")
            .replace("GET /.well-known/acme-challenge/x HTTP/1.1", "-");
        assert_eq!(p(&l).unwrap().status, Some(400));
        // status/bytes as '-'.
        let l = PLAIN.replace(" 404 522 ", " - - ");
        let r = p(&l).unwrap();
        assert_eq!((r.status, r.body_bytes_sent), (None, None));
    }

    #[test]
    fn errors() {
        let el = r#"2021/12/01 13:53:33 [error] 31#31: *46 "/usr/share/nginx/html/market/index.html" is not found (2: No such file or directory), client: 172.17.0.1, server: localhost, request: "GET /market/ HTTP/1.1", host: "localhost""#;
        let e = p(el).unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::NotAccessLog);
        assert!(e.detail.contains("error-log"));
        let bad = [
            ("just some text", ParseErrorKind::NotAccessLog),
            ("1.2.3.4 [01/Jan/2020:00:00:00 +0000] \"GET / HTTP/1.1\" 200 1 \"-\" \"-\"", ParseErrorKind::NotAccessLog),
            ("a b c d - [01/Jan/2020:00:00:00 +0000] \"GET / HTTP/1.1\" 200 1 \"-\" \"-\"", ParseErrorKind::NotAccessLog),
            ("- - - [01/Jan/2020:00:00:00 +0000] \"GET / HTTP/1.1\" 200 1 \"-\" \"-\"", ParseErrorKind::BadRemoteAddr),
            ("13818791413 - - [01/Jan/2020:00:00:00 +0000] \"GET / HTTP/1.1\" 200 1 \"-\" \"-\"", ParseErrorKind::BadRemoteAddr),
            ("1.2.3.4 - - [01/Foo/2020:00:00:00 +0000] \"GET / HTTP/1.1\" 200 1 \"-\" \"-\"", ParseErrorKind::BadTime),
            ("1.2.3.4 - - [01/Jan/2020:00:00:00 +0000", ParseErrorKind::FieldCount),
            ("1.2.3.4 - - [01/Jan/2020:00:00:00 +0000]", ParseErrorKind::FieldCount),
            ("1.2.3.4 - - [01/Jan/2020:00:00:00 +0000] GET / HTTP/1.1 200", ParseErrorKind::FieldCount),
            ("1.2.3.4 - - [01/Jan/2020:00:00:00 +0000] \"GET / HTTP/1.1", ParseErrorKind::FieldCount),
            ("1.2.3.4 - - [01/Jan/2020:00:00:00 +0000] \"GET / HTTP/1.1\" 200 1 \"-\"", ParseErrorKind::FieldCount),
            ("1.2.3.4 - - [01/Jan/2020:00:00:00 +0000] \"GET / HTTP/1.1\" 200 1 \"-\" \"ua", ParseErrorKind::FieldCount),
            ("1.2.3.4 - - [01/Jan/2020:00:00:00 +0000] \"GET / HTTP/1.1\" OK 1 \"-\" \"-\"", ParseErrorKind::FieldCount),
            ("1.2.3.4 - - [01/Jan/2020:00:00:00 +0000] \"GET / HTTP/1.1\" 99999 1 \"-\" \"-\"", ParseErrorKind::FieldCount),
            ("1.2.3.4 - - [01/Jan/2020:00:00:00 +0000] \"GET / HTTP/1.1\" 200 1 \"-\" \"-\" 0.1 \"cookie", ParseErrorKind::FieldCount),
        ];
        for (l, kind) in bad {
            let e = p(l).unwrap_err();
            assert_eq!(e.kind, kind, "{l}: {e}");
            assert!(!e.detail.is_empty());
            assert!(!e.detail.contains("13818791413"));
        }
    }

    #[test]
    fn render_round_trip_examples() {
        let l = r#"h.example 10.1.2.3 - - [03/Apr/2020:16:39:49 +0800] "POST /q.ao?x=\"1\" HTTP/1.1" 200 15 "http://r/" "UA \\x22 \\\\ x" 0.123 "JSESSIONID=A""#;
        let r = p(l).unwrap();
        assert_eq!(r.http_user_agent, r"UA \x22 \\ x");
        assert_eq!(r.request, r#"POST /q.ao?x="1" HTTP/1.1"#);
        let out = render_line(LogFormat::Combined, &r);
        assert_eq!(out, l);
        assert_eq!(p(&out).unwrap(), r);
        // Empty time_local: rendered from time_ms with time_iso8601's offset.
        let mut r2 = r.clone();
        r2.time_local = "".into();
        assert_eq!(p(&render_line(LogFormat::Combined, &r2)).unwrap(), r);
    }

    fn text() -> impl Strategy<Value = String> {
        "[ -~é中]{0,24}".prop_filter("'-' means empty", |s| s != "-")
    }

    proptest! {
        #[test]
        fn round_trip(
            secs in 0i64..4_000_000_000,
            off in prop::sample::select(vec![-300, 0, 330, 480]),
            request in "[ -~]{0,40}",
            referer in text(),
            ua in text(),
            cookie in text(),
            host in prop::option::of("[a-z]{1,10}(\\.[a-z]{2,5})?"),
            ip in any::<u32>(),
            ip6 in any::<u128>(),
            v6 in any::<bool>(),
            status in any::<Option<u16>>(),
            bytes in any::<Option<u64>>(),
            rt in prop::option::of(0u32..10_000_000),
        ) {
            let ms = secs * 1000;
            let remote_addr = if v6 {
                std::net::Ipv6Addr::from(ip6).to_string()
            } else {
                std::net::Ipv4Addr::from(ip).to_string()
            };
            let request_method = super::super::method_of(&request).to_string();
            let rec = LogRecord {
                time_ms: ms,
                time_iso8601: time::format_iso8601(ms, off).into(),
                time_local: time::format_time_local(ms, off).into(),
                request: request.into(),
                request_method: request_method.into(),
                http_referer: referer.into(),
                remote_addr: remote_addr.into(),
                http_user_agent: ua.into(),
                host: host.unwrap_or_default().into(),
                http_cookie: cookie.into(),
                status,
                body_bytes_sent: bytes,
                request_time: rt.map(|v| v as f64 / 1000.0),
                ..LogRecord::default()
            };
            let line = render_line(LogFormat::Combined, &rec);
            prop_assert_eq!(p(&line).unwrap(), rec);
        }
    }
}
