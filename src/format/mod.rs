//! Access-log formats (SPEC §2.1): `cs`, `combined` and `json` → [`crate::event::LogRecord`].
//!
//! [`parse_line`] turns one raw line into a [`LogRecord`] or a [`ParseError`] whose
//! [`ParseErrorKind`] is a metric label and whose `detail` describes the problem without
//! quoting the line (it may hold phone or ID numbers). [`render_line`] is the inverse, used by
//! the synthetic-traffic generator.
//!
//! Common rules for all formats:
//! - one trailing `\n`, `\r\n` (any trailing run of `\r`/`\n`) is stripped;
//! - empty or whitespace-only → [`ParseErrorKind::Empty`]; longer than
//!   [`ParseLimits::max_line_bytes`] → `Oversize`; not UTF-8 → `InvalidUtf8`;
//! - `remote_addr` must be an IPv4/IPv6 address (surrounding whitespace allowed) and is stored
//!   normalized (`IpAddr`'s `Display`), else `BadRemoteAddr`;
//! - event time from `time_iso8601`, else `time_local`, else `BadTime`. When `time_iso8601` is
//!   missing or invalid, `LogRecord::time_iso8601` is rendered from the event time with
//!   `time_local`'s offset.
//!
//! Formats:
//! - [`cs`]: the original OpenResty `#CS#`-joined line (11 or 12 fields);
//! - [`combined`]: nginx `combined`, optionally extended; the `log_format` to configure is
//!   [`combined::NGINX_LOG_FORMAT`];
//! - [`json`]: one JSON object per line keyed by nginx variable names.

pub mod combined;
pub mod cs;
pub mod json;
pub mod time;

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::event::LogRecord;

/// Input log format of a source.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// The original OpenResty format: fields joined by the literal `#CS#`.
    Cs,
    /// nginx `combined`, optionally followed by `$request_time "$http_cookie"`.
    Combined,
    /// One JSON object per line with nginx variable names.
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Cs => "cs",
            LogFormat::Combined => "combined",
            LogFormat::Json => "json",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error of [`LogFormat::from_str`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownLogFormat(pub String);

impl fmt::Display for UnknownLogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown log format {:?} (expected cs, combined or json)",
            self.0
        )
    }
}

impl std::error::Error for UnknownLogFormat {}

impl FromStr for LogFormat {
    type Err = UnknownLogFormat;

    /// Accepts `cs`, `combined`, `json` (ASCII case-insensitive, surrounding spaces ignored).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        [LogFormat::Cs, LogFormat::Combined, LogFormat::Json]
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(t))
            .ok_or_else(|| UnknownLogFormat(t.to_string()))
    }
}

/// Why a line could not be parsed. `as_str` is the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ParseErrorKind {
    Empty,
    Oversize,
    InvalidUtf8,
    FieldCount,
    BadTime,
    BadRemoteAddr,
    BadJson,
    BadRequestLine,
    NotAccessLog,
}

impl ParseErrorKind {
    /// All kinds, e.g. to pre-register metric labels.
    pub const ALL: [ParseErrorKind; 9] = [
        ParseErrorKind::Empty,
        ParseErrorKind::Oversize,
        ParseErrorKind::InvalidUtf8,
        ParseErrorKind::FieldCount,
        ParseErrorKind::BadTime,
        ParseErrorKind::BadRemoteAddr,
        ParseErrorKind::BadJson,
        ParseErrorKind::BadRequestLine,
        ParseErrorKind::NotAccessLog,
    ];

    /// The snake_case name, as serialized; used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ParseErrorKind::Empty => "empty",
            ParseErrorKind::Oversize => "oversize",
            ParseErrorKind::InvalidUtf8 => "invalid_utf8",
            ParseErrorKind::FieldCount => "field_count",
            ParseErrorKind::BadTime => "bad_time",
            ParseErrorKind::BadRemoteAddr => "bad_remote_addr",
            ParseErrorKind::BadJson => "bad_json",
            ParseErrorKind::BadRequestLine => "bad_request_line",
            ParseErrorKind::NotAccessLog => "not_access_log",
        }
    }
}

impl fmt::Display for ParseErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A line that could not be parsed. `detail` describes the problem and never contains the
/// line's text or any field value.
#[derive(Clone, Debug, PartialEq)]
pub struct ParseError {
    pub kind: ParseErrorKind,
    pub detail: String,
}

impl ParseError {
    pub fn new(kind: ParseErrorKind, detail: impl Into<String>) -> Self {
        ParseError {
            kind,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

impl std::error::Error for ParseError {}

/// Limits applied before any format-specific parsing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseLimits {
    /// Longest accepted line, in bytes, after stripping the line terminator.
    pub max_line_bytes: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        ParseLimits {
            max_line_bytes: 64 * 1024,
        }
    }
}

/// Parses one access-log line (with or without its trailing newline).
pub fn parse_line<'a>(
    format: LogFormat,
    line: &'a [u8],
    limits: &ParseLimits,
) -> Result<LogRecord<'a>, ParseError> {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    let line = &line[..end];
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err(ParseError::new(
            ParseErrorKind::Empty,
            "empty or whitespace-only line",
        ));
    }
    if line.len() > limits.max_line_bytes {
        return Err(ParseError::new(
            ParseErrorKind::Oversize,
            format!(
                "line is {} bytes, limit is {} bytes",
                line.len(),
                limits.max_line_bytes
            ),
        ));
    }
    let line = std::str::from_utf8(line).map_err(|e| {
        ParseError::new(
            ParseErrorKind::InvalidUtf8,
            format!("invalid UTF-8 at byte offset {}", e.valid_up_to()),
        )
    })?;
    if line.trim().is_empty() {
        return Err(ParseError::new(
            ParseErrorKind::Empty,
            "empty or whitespace-only line",
        ));
    }
    match format {
        LogFormat::Cs => cs::parse(line),
        LogFormat::Combined => combined::parse(line),
        LogFormat::Json => json::parse(line),
    }
}

/// Writes `rec` as one line (without a newline) of `format`. Fields the format lacks are
/// dropped; `parse_line(format, render_line(format, r))` gives `r` back for records whose
/// fields fit the format (see each module's `render`).
pub fn render_line(format: LogFormat, rec: &LogRecord) -> String {
    match format {
        LogFormat::Cs => cs::render(rec),
        LogFormat::Combined => combined::render(rec),
        LogFormat::Json => json::render(rec),
    }
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// High bit set in each zero byte of `x` (plus possibly bytes above the first zero).
#[inline]
fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(LO) & !x & HI
}

/// Index of the first byte equal to `a` or `b` in `hay[from..]` (absolute index).
///
/// Scans eight bytes at a time (SWAR): the hot loops of the parsers are searches for `#`,
/// `"` and `\` over lines of a few hundred to a few thousand bytes.
#[inline]
pub(crate) fn find2(hay: &[u8], from: usize, a: u8, b: u8) -> Option<usize> {
    let mut i = from;
    let (ra, rb) = (LO * a as u64, LO * b as u64);
    while i + 8 <= hay.len() {
        let mut w = [0u8; 8];
        w.copy_from_slice(&hay[i..i + 8]);
        let w = u64::from_le_bytes(w);
        // Bytes above the first true match may be flagged too; the lowest flag is exact.
        let m = zero_bytes(w ^ ra) | zero_bytes(w ^ rb);
        if m != 0 {
            return Some(i + (m.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    hay.get(i..)?
        .iter()
        .position(|&c| c == a || c == b)
        .map(|o| i + o)
}

/// `remote_addr` (surrounding whitespace allowed) → normalized IP text, else `BadRemoteAddr`.
pub(crate) fn normalize_ip(s: &str) -> Result<Cow<'_, str>, ParseError> {
    let t = s.trim();
    match t.parse::<IpAddr>() {
        // std's IPv4 parser only accepts the canonical dotted quad (no leading zeros), so the
        // text is already what `Display` would write.
        Ok(IpAddr::V4(_)) => Ok(Cow::Borrowed(t)),
        Ok(ip) => Ok(Cow::Owned(ip.to_string())),
        Err(_) if t.is_empty() => Err(ParseError::new(
            ParseErrorKind::BadRemoteAddr,
            "remote_addr is empty",
        )),
        Err(_) => Err(ParseError::new(
            ParseErrorKind::BadRemoteAddr,
            format!(
                "remote_addr ({} bytes) is not an IPv4/IPv6 address",
                t.len()
            ),
        )),
    }
}

/// [`method_of`] a request line that may be borrowed from the log line: borrowed too then.
pub(crate) fn method_of_cow<'a>(request: &Cow<'a, str>) -> Cow<'a, str> {
    match request {
        Cow::Borrowed(r) => Cow::Borrowed(method_of(r)),
        Cow::Owned(r) => Cow::Owned(method_of(r).to_string()),
    }
}

/// The method of a request line shaped `METHOD URI [PROTO]` (METHOD = 1..=32 chars of
/// `A-Z`, `0-9`, `-`, `_`, starting with a letter), else `""` (e.g. nginx's `-` or TLS bytes).
pub(crate) fn method_of(request: &str) -> &str {
    let Some((m, rest)) = request.split_once(' ') else {
        return "";
    };
    let b = m.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_uppercase()
        && b.iter()
            .all(|&c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
        && rest.starts_with(|c: char| c != ' ');
    if ok {
        m
    } else {
        ""
    }
}

/// Offset in minutes east of UTC of a `$time_local` (`dd/Mon/yyyy:HH:mm:ss ±hhmm`); 0 if absent.
pub(crate) fn time_local_offset(time_local: &str) -> i32 {
    let t = time_local.trim().as_bytes();
    if t.len() < 5 {
        return 0;
    }
    let o = &t[t.len() - 5..];
    let sign = match o[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return 0,
    };
    if !o[1..].iter().all(u8::is_ascii_digit) {
        return 0;
    }
    let n = |i: usize| (o[i] - b'0') as i32;
    sign * ((n(1) * 10 + n(2)) * 60 + n(3) * 10 + n(4))
}

/// Offset in minutes east of UTC of an ISO-8601 time (`Z`, `±hh:mm`, `±hhmm`, `±hh`); 0 if absent.
pub(crate) fn iso8601_offset(iso: &str) -> i32 {
    let t = iso.trim();
    if t.len() <= 19 || !t.is_char_boundary(19) {
        return 0;
    }
    let tail = &t[19..];
    let Some(p) = tail.find(['+', '-']) else {
        return 0;
    };
    let sign = if tail.as_bytes()[p] == b'-' { -1 } else { 1 };
    let digits: Vec<i32> = tail[p + 1..]
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|c| (c - b'0') as i32)
        .collect();
    match digits.as_slice() {
        [h1, h2] => sign * (h1 * 10 + h2) * 60,
        [h1, h2, m1, m2] => sign * ((h1 * 10 + h2) * 60 + m1 * 10 + m2),
        _ => 0,
    }
}

/// `time_iso8601` for a `$time_local` that [`time::parse_time_local`] accepted, by moving its
/// fields around: equal to `format_iso8601(parse_time_local(t), time_local_offset(t))`, without
/// the calendar arithmetic. `None` if `t` does not have the exact layout.
pub(crate) fn time_local_to_iso8601(t: &str) -> Option<String> {
    const MONTHS: [&[u8; 3]; 12] = [
        b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov",
        b"dec",
    ];
    let b = t.trim().as_bytes();
    if b.len() < 20 || !b[..20].is_ascii() || b[18..20] == *b"60" {
        return None;
    }
    let mon = [
        b[3].to_ascii_lowercase(),
        b[4].to_ascii_lowercase(),
        b[5].to_ascii_lowercase(),
    ];
    let m = MONTHS.iter().position(|x| **x == mon)? + 1;
    let off = time_local_offset(t);
    let mut out = String::with_capacity(25);
    out.push_str(std::str::from_utf8(&b[7..11]).ok()?);
    out.push('-');
    out.push(char::from(b'0' + (m / 10) as u8));
    out.push(char::from(b'0' + (m % 10) as u8));
    out.push('-');
    out.push_str(std::str::from_utf8(&b[0..2]).ok()?);
    out.push('T');
    out.push_str(std::str::from_utf8(&b[12..20]).ok()?);
    let a = off.unsigned_abs();
    out.push(if off < 0 { '-' } else { '+' });
    for d in [a / 600, a / 60 % 10] {
        out.push(char::from(b'0' + d as u8));
    }
    out.push(':');
    for d in [a % 60 / 10, a % 10] {
        out.push(char::from(b'0' + d as u8));
    }
    Some(out)
}

/// Event time from `time_iso8601`, else `time_local`. Returns the time and, when
/// `time_iso8601` did not parse, a rendering of it with `time_local`'s offset.
pub(crate) fn resolve_time(iso: &str, local: &str) -> Result<(i64, Option<String>), ParseError> {
    if let Some(ms) = time::parse_iso8601(iso) {
        return Ok((ms, None));
    }
    if let Some(ms) = time::parse_time_local(local) {
        let rendered = time_local_to_iso8601(local)
            .unwrap_or_else(|| time::format_iso8601(ms, time_local_offset(local)));
        return Ok((ms, Some(rendered)));
    }
    let what = match (iso.trim().is_empty(), local.trim().is_empty()) {
        (true, true) => "both time_iso8601 and time_local are empty",
        (false, true) => "time_iso8601 is not a valid ISO-8601 time and time_local is empty",
        (true, false) => "time_local is not a valid nginx time and time_iso8601 is empty",
        (false, false) => "neither time_iso8601 nor time_local is a valid time",
    };
    Err(ParseError::new(ParseErrorKind::BadTime, what))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim() -> ParseLimits {
        ParseLimits::default()
    }

    #[test]
    fn log_format_names() {
        for f in [LogFormat::Cs, LogFormat::Combined, LogFormat::Json] {
            assert_eq!(f.to_string().parse::<LogFormat>(), Ok(f));
            let json = serde_json::to_string(&f).unwrap();
            assert_eq!(json, format!("\"{f}\""));
            assert_eq!(serde_json::from_str::<LogFormat>(&json).unwrap(), f);
            let pv = clap::ValueEnum::to_possible_value(&f).unwrap();
            assert_eq!(pv.get_name(), f.as_str());
        }
        assert_eq!(" JSON ".parse::<LogFormat>(), Ok(LogFormat::Json));
        let e = "xml".parse::<LogFormat>().unwrap_err();
        assert!(e.to_string().contains("xml"));
    }

    #[test]
    fn error_kind_names() {
        for k in ParseErrorKind::ALL {
            assert_eq!(
                serde_json::to_string(&k).unwrap(),
                format!("\"{}\"", k.as_str())
            );
        }
        let e = ParseError::new(ParseErrorKind::FieldCount, "x");
        assert_eq!(e.to_string(), "field_count: x");
    }

    #[test]
    fn common_errors() {
        for f in [LogFormat::Cs, LogFormat::Combined, LogFormat::Json] {
            for l in [&b""[..], b"\n", b"\r\n", b"   \t  \r\n"] {
                assert_eq!(
                    parse_line(f, l, &lim()).unwrap_err().kind,
                    ParseErrorKind::Empty
                );
            }
            let e = parse_line(f, b"ab\xffcd", &lim()).unwrap_err();
            assert_eq!(e.kind, ParseErrorKind::InvalidUtf8);
            assert_eq!(e.detail, "invalid UTF-8 at byte offset 2");
            let big = vec![b'a'; 100];
            let small = ParseLimits { max_line_bytes: 99 };
            let e = parse_line(f, &big, &small).unwrap_err();
            assert_eq!(e.kind, ParseErrorKind::Oversize);
            assert!(!e.detail.contains("aaa"));
            // Exactly at the limit is not oversize (whatever else is wrong with it).
            let e = parse_line(
                f,
                &big,
                &ParseLimits {
                    max_line_bytes: 100,
                },
            )
            .unwrap_err();
            assert_ne!(e.kind, ParseErrorKind::Oversize);
            // Non-ASCII whitespace only.
            let e = parse_line(f, "\u{3000}\n".as_bytes(), &lim()).unwrap_err();
            assert_eq!(e.kind, ParseErrorKind::Empty);
        }
    }

    #[test]
    fn helpers() {
        assert_eq!(normalize_ip(" 192.168.8.1 ").unwrap(), "192.168.8.1");
        assert_eq!(normalize_ip("2001:DB8:0:0::1").unwrap(), "2001:db8::1");
        for bad in ["", "-", "13818791413", "1.2.3.4, 5.6.7.8", "256.1.1.1"] {
            let e = normalize_ip(bad).unwrap_err();
            assert_eq!(e.kind, ParseErrorKind::BadRemoteAddr);
            if !bad.is_empty() {
                assert!(!e.detail.contains(bad), "{}", e.detail);
            }
        }
        assert_eq!(method_of("GET / HTTP/1.1"), "GET");
        assert_eq!(method_of("M-SEARCH * HTTP/1.1"), "M-SEARCH");
        assert_eq!(method_of("GET /"), "GET");
        for bad in [
            "-",
            "",
            "GET",
            "get / HTTP/1.1",
            "\\x16\\x03\\x01 x",
            "GET  /",
            " GET /",
        ] {
            assert_eq!(method_of(bad), "", "{bad:?}");
        }
        assert_eq!(time_local_offset("03/Apr/2020:16:39:49 +0800"), 480);
        assert_eq!(time_local_offset("03/Apr/2020:16:39:49 -0530"), -330);
        assert_eq!(time_local_offset("03/Apr/2020:16:39:49"), 0);
        assert_eq!(iso8601_offset("2020-04-03T16:39:49+08:00"), 480);
        assert_eq!(iso8601_offset("2020-04-03T16:39:49.123-0530"), -330);
        assert_eq!(iso8601_offset("2020-04-03T16:39:49+08"), 480);
        assert_eq!(iso8601_offset("2020-04-03T16:39:49Z"), 0);
        assert_eq!(iso8601_offset("2020-04-03T16:39:49"), 0);
    }

    #[test]
    fn find2_matches_naive() {
        let hay = b"0123456789abcdef#ghij\"klmnopqrstuvwxyz#";
        for from in 0..=hay.len() {
            for (a, b) in [(b'#', b'#'), (b'"', b'\\'), (b'z', b'0'), (b'!', b'!')] {
                let naive = hay[from..]
                    .iter()
                    .position(|&c| c == a || c == b)
                    .map(|o| from + o);
                assert_eq!(find2(hay, from, a, b), naive, "{from} {a} {b}");
            }
        }
        assert_eq!(find2(b"", 0, b'a', b'a'), None);
        assert_eq!(find2(b"abc", 5, b'a', b'a'), None);
    }

    proptest::proptest! {
        #[test]
        fn time_local_to_iso8601_matches_time_rs(
            secs in -2_000_000_000i64..8_000_000_000,
            off in -900i32..=900,
        ) {
            let ms = secs * 1000;
            let local = time::format_time_local(ms, off);
            let iso = time_local_to_iso8601(&local).unwrap();
            proptest::prop_assert_eq!(&iso, &time::format_iso8601(ms, off));
            proptest::prop_assert_eq!(time::parse_iso8601(&iso), Some(ms));
            let upper = local.to_uppercase();
            proptest::prop_assert_eq!(time_local_to_iso8601(&upper), Some(iso));
        }
    }

    #[test]
    fn time_resolution() {
        let ms = time::parse_iso8601("2020-04-03T16:39:49+08:00").unwrap();
        assert_eq!(
            resolve_time("2020-04-03T16:39:49+08:00", "").unwrap(),
            (ms, None)
        );
        assert_eq!(
            resolve_time("", "03/Apr/2020:16:39:49 +0800").unwrap(),
            (ms, Some("2020-04-03T16:39:49+08:00".to_string()))
        );
        assert_eq!(
            resolve_time("junk", "03/Apr/2020:16:39:49 +0800")
                .unwrap()
                .0,
            ms
        );
        for (i, l) in [("", ""), ("x", ""), ("", "x"), ("x", "y")] {
            assert_eq!(
                resolve_time(i, l).unwrap_err().kind,
                ParseErrorKind::BadTime
            );
        }
    }
}
