//! The original OpenResty format (reference §1): fields joined by the literal `#CS#`.
//!
//! Field order: `time_local, request, request_method, content_type, request_body, http_referer,
//! remote_addr, http_user_agent, time_iso8601, server_addr, http_cookie, connections_active`.
//! Eleven-field lines (no `connections_active`) are accepted. The format has no escaping, so a
//! field containing `#CS#` shifts the count and the line is rejected with `FieldCount`.
//!
//! Fields are kept verbatim (no trimming) except `remote_addr` (normalized IP) and
//! `connections_active` (a `u32`; empty or non-numeric → `None`, the line still parses).
//! `request_method` is taken from its own field, as the collector logged it.

use super::{find2, normalize_ip, resolve_time, ParseError, ParseErrorKind};
use std::borrow::Cow;

use crate::event::LogRecord;

/// The field separator.
pub const SEP: &str = "#CS#";

/// Number of fields of a full line.
pub const FIELDS: usize = 12;

/// Splits `line` on `#CS#` into at most [`FIELDS`] slices; returns them and the true count.
fn split(line: &str) -> ([&str; FIELDS], usize) {
    let b = line.as_bytes();
    let mut fields = [""; FIELDS];
    let mut n = 0;
    let mut start = 0;
    let mut i = 0;
    while let Some(j) = find2(b, i, b'#', b'#') {
        if b[j..].starts_with(b"#CS#") {
            if n < FIELDS {
                fields[n] = &line[start..j];
            }
            n += 1;
            start = j + 4;
            i = start;
        } else {
            i = j + 1;
        }
    }
    if n < FIELDS {
        fields[n] = &line[start..];
    }
    (fields, n + 1)
}

pub(crate) fn parse(line: &str) -> Result<LogRecord<'_>, ParseError> {
    let (f, n) = split(line);
    if n != FIELDS && n != FIELDS - 1 {
        return Err(ParseError::new(
            ParseErrorKind::FieldCount,
            format!("expected 11 or 12 #CS# fields, found {n}"),
        ));
    }
    let remote_addr = normalize_ip(f[6])?;
    let (time_ms, rendered_iso) = resolve_time(f[8], f[0])?;
    let connections_active = if n == FIELDS {
        f[11].trim().parse::<u32>().ok()
    } else {
        None
    };
    Ok(LogRecord {
        time_ms,
        time_iso8601: rendered_iso.map_or(Cow::Borrowed(f[8]), Cow::Owned),
        time_local: f[0].into(),
        request: f[1].into(),
        request_method: f[2].into(),
        content_type: f[3].into(),
        request_body: f[4].into(),
        http_referer: f[5].into(),
        remote_addr,
        http_user_agent: f[7].into(),
        server_addr: f[9].into(),
        host: Cow::Borrowed(""),
        http_cookie: f[10].into(),
        connections_active,
        status: None,
        body_bytes_sent: None,
        request_time: None,
    })
}

/// Renders a full 12-field line (`connections_active` empty when `None`). The format has no
/// `host`, `status`, `body_bytes_sent` or `request_time`: they are dropped. Fields are written
/// verbatim, so values must not contain `#CS#` or a newline.
pub(crate) fn render(r: &LogRecord) -> String {
    let conn = r
        .connections_active
        .map(|c| c.to_string())
        .unwrap_or_default();
    let parts: [&str; FIELDS] = [
        &r.time_local,
        &r.request,
        &r.request_method,
        &r.content_type,
        &r.request_body,
        &r.http_referer,
        &r.remote_addr,
        &r.http_user_agent,
        &r.time_iso8601,
        &r.server_addr,
        &r.http_cookie,
        &conn,
    ];
    parts.join(SEP)
}

#[cfg(test)]
mod tests {
    use super::super::{parse_line, render_line, time, LogFormat, ParseLimits};
    use super::*;
    use proptest::prelude::*;

    const SAMPLE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/reference/data/sample_raw_log_line.normalized.txt"
    );

    fn p(line: &str) -> Result<LogRecord<'static>, ParseError> {
        parse_line(LogFormat::Cs, line.as_bytes(), &ParseLimits::default())
            .map(LogRecord::into_owned)
    }

    fn line(fields: &[&str]) -> String {
        fields.join(SEP)
    }

    fn base_fields() -> Vec<&'static str> {
        vec![
            "03/Apr/2020:16:39:49 +0800",
            "GET /a?b=1 HTTP/1.1",
            "GET",
            "",
            "",
            "http://x/",
            "10.0.0.1",
            "UA/1.0",
            "2020-04-03T16:39:49+08:00",
            "10.0.0.2",
            "JSESSIONID=abc",
            "7",
        ]
    }

    #[test]
    fn real_sample_line() {
        let raw = std::fs::read(SAMPLE)
            .unwrap_or_else(|e| panic!("cannot read the reference sample line {SAMPLE}: {e}"));
        let r = parse_line(LogFormat::Cs, &raw, &ParseLimits::default()).unwrap();
        assert_eq!(
            r.request,
            "POST /B2C40/dist/main/modules/common/requireConfig.js HTTP/1.1"
        );
        assert_eq!(r.request_method, "POST");
        assert_eq!(
            r.content_type,
            "application/x-www-form-urlencoded; charset=UTF-8"
        );
        assert!(r.request_body.starts_with("json=%7B%22depcity%22"));
        assert!(r.http_referer.starts_with("http://b2c.csair.com/B2C40/"));
        assert_eq!(r.remote_addr, "192.168.8.1");
        assert!(r
            .http_user_agent
            .starts_with("Mozilla/5.0 (Windows NT 10.0"));
        assert_eq!(r.server_addr, "192.168.8.103");
        assert_eq!(r.connections_active, Some(3));
        assert_eq!(r.time_iso8601, "2020-04-03T16:39:49+08:00");
        assert_eq!(r.time_local, "03/Apr/2020:16:39:49 +0800");
        assert_eq!(
            r.time_ms,
            time::parse_iso8601("2020-04-03T16:39:49+08:00").unwrap()
        );
        assert!(r
            .http_cookie
            .starts_with("JSESSIONID=11010119900307387X; sid="));
        assert!(r.http_cookie.ends_with("WT.al_orgdate1(2018-01-17)"));
        assert_eq!(r.host, "");
        assert_eq!(
            (r.status, r.body_bytes_sent, r.request_time),
            (None, None, None)
        );
        // And it renders back to the same bytes.
        let text = std::str::from_utf8(&raw)
            .unwrap()
            .trim_end_matches(['\r', '\n']);
        assert_eq!(render_line(LogFormat::Cs, &r), text);
    }

    #[test]
    fn text_fields_borrow_from_the_line() {
        // A line the filter drops must cost no allocation: every text field it holds as is
        // stays a slice of the line.
        let text = line(&base_fields());
        let r = parse_line(LogFormat::Cs, text.as_bytes(), &ParseLimits::default()).unwrap();
        for (name, field) in [
            ("time_local", &r.time_local),
            ("time_iso8601", &r.time_iso8601),
            ("request", &r.request),
            ("request_method", &r.request_method),
            ("http_referer", &r.http_referer),
            ("remote_addr", &r.remote_addr),
            ("http_user_agent", &r.http_user_agent),
            ("server_addr", &r.server_addr),
            ("http_cookie", &r.http_cookie),
        ] {
            assert!(matches!(field, Cow::Borrowed(_)), "{name} was copied");
        }
    }

    #[test]
    fn eleven_fields_and_connections() {
        let mut f = base_fields();
        let r = p(&line(&f)).unwrap();
        assert_eq!(r.connections_active, Some(7));
        f[11] = "";
        assert_eq!(p(&line(&f)).unwrap().connections_active, None);
        f[11] = "n/a";
        assert_eq!(p(&line(&f)).unwrap().connections_active, None);
        f[11] = " 12 ";
        assert_eq!(p(&line(&f)).unwrap().connections_active, Some(12));
        f.pop();
        let r = p(&line(&f)).unwrap();
        assert_eq!(r.connections_active, None);
        assert_eq!(r.http_cookie, "JSESSIONID=abc");
        // CRLF terminator.
        let r2 = p(&format!("{}\r\n", line(&f))).unwrap();
        assert_eq!(r, r2);
    }

    #[test]
    fn field_count() {
        let f = base_fields();
        for n in [1, 7, 10] {
            let e = p(&line(&f[..n])).unwrap_err();
            assert_eq!(e.kind, ParseErrorKind::FieldCount);
            assert_eq!(
                e.detail,
                format!("expected 11 or 12 #CS# fields, found {n}")
            );
        }
        let mut more = f.clone();
        more.push("x");
        more.push("y");
        let e = p(&line(&more)).unwrap_err();
        assert_eq!(e.detail, "expected 11 or 12 #CS# fields, found 14");
        // A `#CS#` inside a field shifts the count.
        let mut f2 = f.clone();
        f2[4] = "a#CS#b";
        assert_eq!(p(&line(&f2)).unwrap_err().kind, ParseErrorKind::FieldCount);
        // Lone '#' and partial separators are plain text.
        let mut f3 = f.clone();
        f3[4] = "#a#C S# CS";
        assert_eq!(p(&line(&f3)).unwrap().request_body, "#a#C S# CS");
    }

    #[test]
    fn times() {
        let mut f = base_fields();
        let ms = time::parse_iso8601("2020-04-03T16:39:49+08:00").unwrap();
        f[8] = "2020-04-03T08:39:49.250Z";
        let r = p(&line(&f)).unwrap();
        assert_eq!(r.time_ms, ms + 250);
        assert_eq!(r.time_iso8601, "2020-04-03T08:39:49.250Z");
        // time_iso8601 missing → time_local, rendered with its offset.
        f[8] = "";
        let r = p(&line(&f)).unwrap();
        assert_eq!(r.time_ms, ms);
        assert_eq!(r.time_iso8601, "2020-04-03T16:39:49+08:00");
        f[0] = "bad";
        let e = p(&line(&f)).unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::BadTime);
        assert!(!e.detail.contains("bad"));
        f[8] = "2020-04-03T16:39:49+08:00";
        assert_eq!(p(&line(&f)).unwrap().time_ms, ms);
    }

    #[test]
    fn remote_addr() {
        let mut f = base_fields();
        f[6] = " 2001:DB8::1 ";
        assert_eq!(p(&line(&f)).unwrap().remote_addr, "2001:db8::1");
        for bad in ["", "13818791413", "host.example"] {
            f[6] = bad;
            let e = p(&line(&f)).unwrap_err();
            assert_eq!(e.kind, ParseErrorKind::BadRemoteAddr);
            assert!(bad.is_empty() || !e.detail.contains(bad));
        }
    }

    fn text() -> impl Strategy<Value = String> {
        // Anything but '#' (so no `#CS#`), CR or LF.
        "[^#\r\n]{0,24}"
    }

    proptest! {
        #[test]
        fn round_trip(
            secs in 0i64..4_000_000_000,
            millis in 0i64..1000,
            off in prop::sample::select(vec![-300, 0, 330, 480]),
            s in prop::collection::vec(text(), 8),
            ip in any::<u32>(),
            ip6 in any::<u128>(),
            v6 in any::<bool>(),
            conn in any::<Option<u32>>(),
        ) {
            let ms = secs * 1000 + millis;
            let remote_addr = if v6 {
                std::net::Ipv6Addr::from(ip6).to_string()
            } else {
                std::net::Ipv4Addr::from(ip).to_string()
            };
            let rec = LogRecord {
                time_ms: ms,
                time_iso8601: time::format_iso8601(ms, off).into(),
                time_local: time::format_time_local(ms, off).into(),
                request: s[0].clone().into(),
                request_method: s[1].clone().into(),
                content_type: s[2].clone().into(),
                request_body: s[3].clone().into(),
                http_referer: s[4].clone().into(),
                remote_addr: remote_addr.into(),
                http_user_agent: s[5].clone().into(),
                server_addr: s[6].clone().into(),
                host: String::new().into(),
                http_cookie: s[7].clone().into(),
                connections_active: conn,
                status: None,
                body_bytes_sent: None,
                request_time: None,
            };
            let line = render_line(LogFormat::Cs, &rec);
            prop_assert_eq!(p(&line).unwrap(), rec);
        }
    }
}
