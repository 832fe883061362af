//! One JSON object per line, keyed by nginx variable names — what Vector, Fluent Bit or
//! Filebeat produce, or nginx itself with `log_format ... escape=json`.
//!
//! Keys read: `time_iso8601`, `time_local`, `remote_addr`, `request`, `request_method`,
//! `content_type`, `request_body`, `http_referer`, `http_user_agent`, `http_cookie`,
//! `server_addr`, `host`, `status`, `body_bytes_sent`, `request_time`, `connections_active`.
//! Other keys are ignored. A missing or `null` string key is empty; numbers may be JSON numbers
//! or strings (`"0.123"`, `"200"`), and a missing, `null`, `"-"` or non-numeric value is `None`.
//! A missing `request_method` is the request's first word (see `method_of`). Anything that is
//! not a JSON object, or a string key holding a non-string, → `BadJson`.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use super::{method_of_cow, normalize_ip, resolve_time, ParseError, ParseErrorKind};
use crate::event::LogRecord;

/// A number given as a JSON number or a string.
enum Loose<'a> {
    U(u64),
    I(i64),
    F(f64),
    S(Cow<'a, str>),
}

impl<'de: 'a, 'a> Deserialize<'de> for Loose<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Loose<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number or a string holding one")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Loose<'a>, E> {
                Ok(Loose::U(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Loose<'a>, E> {
                Ok(Loose::I(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Loose<'a>, E> {
                Ok(Loose::F(v))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Loose<'a>, E> {
                Ok(Loose::S(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Loose<'a>, E> {
                Ok(Loose::S(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl Loose<'_> {
    fn to_u64(&self) -> Option<u64> {
        match self {
            Loose::U(v) => Some(*v),
            Loose::I(v) => u64::try_from(*v).ok(),
            Loose::F(v) if v.is_finite() && *v >= 0.0 && v.fract() == 0.0 && *v < 1.8e19 => {
                Some(*v as u64)
            }
            Loose::F(_) => None,
            Loose::S(s) => s.trim().parse().ok(),
        }
    }
    fn to_f64(&self) -> Option<f64> {
        match self {
            Loose::U(v) => Some(*v as f64),
            Loose::I(v) => Some(*v as f64),
            Loose::F(v) => Some(*v),
            Loose::S(s) => s.trim().parse::<f64>().ok(),
        }
        .filter(|v| v.is_finite())
    }
}

fn loose_u64(v: &Option<Loose<'_>>) -> Option<u64> {
    v.as_ref().and_then(Loose::to_u64)
}

type Str<'a> = Option<Cow<'a, str>>;

/// A string field, borrowed from the line when the line holds it unescaped: serde's `borrow`
/// borrows only a bare `Cow`, and decodes one inside an `Option` into a new `String`.
fn borrowed<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Str<'de>, D::Error> {
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    Option::<Borrowed<'de>>::deserialize(d).map(|v| v.map(|b| b.0))
}

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow, default, deserialize_with = "borrowed")]
    time_iso8601: Str<'a>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    time_local: Str<'a>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    remote_addr: Str<'a>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    request: Str<'a>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    request_method: Str<'a>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    content_type: Str<'a>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    request_body: Str<'a>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    http_referer: Str<'a>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    http_user_agent: Str<'a>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    http_cookie: Str<'a>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    server_addr: Str<'a>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    host: Str<'a>,
    #[serde(borrow, default)]
    status: Option<Loose<'a>>,
    #[serde(borrow, default)]
    body_bytes_sent: Option<Loose<'a>>,
    #[serde(borrow, default)]
    request_time: Option<Loose<'a>>,
    #[serde(borrow, default)]
    connections_active: Option<Loose<'a>>,
}

fn text(v: Str<'_>) -> Cow<'_, str> {
    v.unwrap_or(Cow::Borrowed(""))
}

fn json_err(e: serde_json::Error) -> ParseError {
    // serde_json's messages can quote values (`invalid type: string "13818791413"`): report
    // only the category and position.
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Io => "I/O error",
        Category::Syntax => "syntax error",
        Category::Data => "a value has the wrong type (or the line is not an object)",
        Category::Eof => "unexpected end of input",
    };
    ParseError::new(
        ParseErrorKind::BadJson,
        format!("invalid JSON log line: {what} at column {}", e.column()),
    )
}

pub(crate) fn parse(line: &str) -> Result<LogRecord<'_>, ParseError> {
    let raw: Raw<'_> = serde_json::from_str(line).map_err(json_err)?;
    let remote_addr = match &raw.remote_addr {
        Some(Cow::Borrowed(addr)) => normalize_ip(addr)?,
        other => Cow::Owned(normalize_ip(other.as_deref().unwrap_or(""))?.into_owned()),
    };
    let iso = raw.time_iso8601.as_deref().unwrap_or("");
    let local = raw.time_local.as_deref().unwrap_or("");
    let (time_ms, rendered_iso) = resolve_time(iso, local)?;
    let request = text(raw.request);
    let request_method = match raw.request_method {
        Some(m) => m,
        None => method_of_cow(&request),
    };
    Ok(LogRecord {
        time_ms,
        time_iso8601: rendered_iso.map_or_else(|| text(raw.time_iso8601), Cow::Owned),
        time_local: text(raw.time_local),
        request,
        request_method,
        content_type: text(raw.content_type),
        request_body: text(raw.request_body),
        http_referer: text(raw.http_referer),
        remote_addr,
        http_user_agent: text(raw.http_user_agent),
        server_addr: text(raw.server_addr),
        host: text(raw.host),
        http_cookie: text(raw.http_cookie),
        connections_active: loose_u64(&raw.connections_active).and_then(|v| v.try_into().ok()),
        status: loose_u64(&raw.status).and_then(|v| v.try_into().ok()),
        body_bytes_sent: loose_u64(&raw.body_bytes_sent),
        request_time: raw.request_time.as_ref().and_then(Loose::to_f64),
    })
}

#[derive(Serialize)]
struct Out<'a> {
    time_iso8601: &'a str,
    time_local: &'a str,
    remote_addr: &'a str,
    request: &'a str,
    request_method: &'a str,
    content_type: &'a str,
    request_body: &'a str,
    http_referer: &'a str,
    http_user_agent: &'a str,
    http_cookie: &'a str,
    server_addr: &'a str,
    host: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_bytes_sent: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_time: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connections_active: Option<u32>,
}

/// Renders every string field (empty ones too) and the numbers that are set (a non-finite
/// `request_time` is dropped). Round-trips records whose `time_iso8601` is valid and is
/// `time_ms`, and whose `remote_addr` is a normalized IP.
pub(crate) fn render(r: &LogRecord) -> String {
    let out = Out {
        time_iso8601: &r.time_iso8601,
        time_local: &r.time_local,
        remote_addr: &r.remote_addr,
        request: &r.request,
        request_method: &r.request_method,
        content_type: &r.content_type,
        request_body: &r.request_body,
        http_referer: &r.http_referer,
        http_user_agent: &r.http_user_agent,
        http_cookie: &r.http_cookie,
        server_addr: &r.server_addr,
        host: &r.host,
        status: r.status,
        body_bytes_sent: r.body_bytes_sent,
        request_time: r.request_time.filter(|v| v.is_finite()),
        connections_active: r.connections_active,
    };
    serde_json::to_string(&out).expect("serializing plain strings and numbers cannot fail")
}

#[cfg(test)]
mod tests {
    use super::super::{parse_line, render_line, time, LogFormat, ParseLimits};
    use super::*;
    use proptest::prelude::*;

    fn p(line: &str) -> Result<LogRecord<'static>, ParseError> {
        parse_line(LogFormat::Json, line.as_bytes(), &ParseLimits::default())
            .map(LogRecord::into_owned)
    }

    #[test]
    fn unescaped_text_fields_borrow_from_the_line() {
        let text = r#"{"time_iso8601":"2020-04-03T16:39:49+08:00","remote_addr":"1.2.3.4","request":"GET /a HTTP/1.1","http_user_agent":"UA \"q\"","http_cookie":"JSESSIONID=abc"}"#;
        let r = parse_line(LogFormat::Json, text.as_bytes(), &ParseLimits::default()).unwrap();
        assert!(matches!(r.request, Cow::Borrowed("GET /a HTTP/1.1")));
        assert!(matches!(r.remote_addr, Cow::Borrowed("1.2.3.4")));
        assert!(matches!(r.http_cookie, Cow::Borrowed("JSESSIONID=abc")));
        assert!(matches!(r.time_iso8601, Cow::Borrowed(_)));
        // A value with escapes is decoded into its own string.
        assert!(matches!(&r.http_user_agent, Cow::Owned(ua) if ua == "UA \"q\""));
    }

    #[test]
    fn full_object() {
        let l = r#"{"time_iso8601":"2020-04-03T16:39:49+08:00","time_local":"03/Apr/2020:16:39:49 +0800","remote_addr":"192.168.8.1","request":"POST /B2C40/query.ao HTTP/1.1","request_method":"POST","content_type":"application/x-www-form-urlencoded","request_body":"json=%7B%7D","http_referer":"http://b2c/","http_user_agent":"Mozilla/5.0 \"x\"","http_cookie":"JSESSIONID=A","server_addr":"192.168.8.103","host":"b2c.example","status":200,"body_bytes_sent":"512","request_time":"0.123","connections_active":3,"extra":{"nested":[1,2]}}"#;
        let r = p(l).unwrap();
        assert_eq!(
            r.time_ms,
            time::parse_iso8601("2020-04-03T16:39:49+08:00").unwrap()
        );
        assert_eq!(r.remote_addr, "192.168.8.1");
        assert_eq!(r.request_method, "POST");
        assert_eq!(r.http_user_agent, "Mozilla/5.0 \"x\"");
        assert_eq!(r.host, "b2c.example");
        assert_eq!(r.status, Some(200));
        assert_eq!(r.body_bytes_sent, Some(512));
        assert_eq!(r.request_time, Some(0.123));
        assert_eq!(r.connections_active, Some(3));
        assert_eq!(p(&render_line(LogFormat::Json, &r)).unwrap(), r);
    }

    #[test]
    fn minimal_and_loose_values() {
        let l = r#"{"time_local":"03/Apr/2020:16:39:49 +0800","remote_addr":" ::FFFF:10.0.0.1 ","request":"GET /x HTTP/1.1","status":"-","request_time":0.5,"body_bytes_sent":null,"connections_active":"n/a","server_addr":null}"#;
        let r = p(l).unwrap();
        assert_eq!(r.request_method, "GET");
        assert_eq!(r.remote_addr, "::ffff:10.0.0.1");
        assert_eq!(r.time_iso8601, "2020-04-03T16:39:49+08:00");
        assert_eq!(r.status, None);
        assert_eq!(r.request_time, Some(0.5));
        assert_eq!(r.body_bytes_sent, None);
        assert_eq!(r.connections_active, None);
        assert_eq!(r.server_addr, "");
        assert_eq!(r.http_cookie, "");
        // Explicit empty request_method is kept; garbage request → empty method.
        let l2 = r#"{"time_iso8601":"2020-04-03T16:39:49Z","remote_addr":"1.2.3.4","request":"GET / HTTP/1.1","request_method":""}"#;
        assert_eq!(p(l2).unwrap().request_method, "");
        let l3 = r#"{"time_iso8601":"2020-04-03T16:39:49Z","remote_addr":"1.2.3.4","request":"-","status":70000,"body_bytes_sent":1e3,"request_time":-1}"#;
        let r3 = p(l3).unwrap();
        assert_eq!((&*r3.request_method, r3.status), ("", None));
        assert_eq!(r3.body_bytes_sent, Some(1000));
        assert_eq!(r3.request_time, Some(-1.0));
    }

    #[test]
    fn errors() {
        let cases = [
            ("{", ParseErrorKind::BadJson),
            ("not json", ParseErrorKind::BadJson),
            ("[1,2]", ParseErrorKind::BadJson),
            (r#"{"remote_addr":13818791413}"#, ParseErrorKind::BadJson),
            (
                r#"{"remote_addr":"1.2.3.4","status":true}"#,
                ParseErrorKind::BadJson,
            ),
            (
                r#"{"remote_addr":"1.2.3.4"} trailing"#,
                ParseErrorKind::BadJson,
            ),
            (
                r#"{"time_iso8601":"2020-04-03T16:39:49Z"}"#,
                ParseErrorKind::BadRemoteAddr,
            ),
            (
                r#"{"time_iso8601":"2020-04-03T16:39:49Z","remote_addr":"13818791413"}"#,
                ParseErrorKind::BadRemoteAddr,
            ),
            (r#"{"remote_addr":"1.2.3.4"}"#, ParseErrorKind::BadTime),
            (
                r#"{"remote_addr":"1.2.3.4","time_iso8601":"yesterday"}"#,
                ParseErrorKind::BadTime,
            ),
        ];
        for (l, kind) in cases {
            let e = p(l).unwrap_err();
            assert_eq!(e.kind, kind, "{l}: {e}");
            assert!(!e.detail.contains("13818791413"), "{}", e.detail);
            assert!(!e.detail.contains("yesterday"), "{}", e.detail);
        }
    }

    proptest! {
        #[test]
        fn round_trip(
            secs in 0i64..4_000_000_000,
            millis in 0i64..1000,
            off in prop::sample::select(vec![-300, 0, 330, 480]),
            s in prop::collection::vec(".{0,16}", 10),
            ip in any::<u32>(),
            ip6 in any::<u128>(),
            v6 in any::<bool>(),
            status in any::<Option<u16>>(),
            bytes in any::<Option<u64>>(),
            rt in prop::option::of(0u32..10_000_000),
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
                time_local: s[0].clone().into(),
                request: s[1].clone().into(),
                request_method: s[2].clone().into(),
                content_type: s[3].clone().into(),
                request_body: s[4].clone().into(),
                http_referer: s[5].clone().into(),
                remote_addr: remote_addr.into(),
                http_user_agent: s[6].clone().into(),
                server_addr: s[7].clone().into(),
                host: s[8].clone().into(),
                http_cookie: s[9].clone().into(),
                connections_active: conn,
                status,
                body_bytes_sent: bytes,
                request_time: rt.map(|v| v as f64 / 1000.0),
            };
            let line = render_line(LogFormat::Json, &rec);
            prop_assert!(!line.contains('\n'));
            prop_assert_eq!(p(&line).unwrap(), rec);
        }
    }
}
