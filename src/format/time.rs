//! Event-time parsing and rendering for nginx's `$time_iso8601` and `$time_local`.
//!
//! Hand-written rather than chrono's format strings: these two fixed layouts are parsed once
//! per line on the hot path, and a direct parser is several times faster. Times are
//! milliseconds since the Unix epoch, UTC.

/// Days from 1970-01-01 to the civil date (proleptic Gregorian), Howard Hinnant's algorithm.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// The civil date `(year, month, day)` of a day count since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0u32, |a, &c| a * 10 + (c - b'0') as u32))
}

fn check_ranges(mo: u32, d: u32, h: u32, mi: u32, s: u32) -> bool {
    (1..=12).contains(&mo) && (1..=31).contains(&d) && h < 24 && mi < 60 && s < 61
}

/// Parses an offset `Z`, `+08:00`, `+0800`, `-05:00`; returns minutes east of UTC.
fn parse_offset(b: &[u8]) -> Option<i32> {
    if b == b"Z" || b == b"z" {
        return Some(0);
    }
    let sign = match b.first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let rest = &b[1..];
    let (h, m) = match rest.len() {
        5 if rest[2] == b':' => (digits(&rest[..2])?, digits(&rest[3..])?),
        4 => (digits(&rest[..2])?, digits(&rest[2..])?),
        2 => (digits(rest)?, 0),
        _ => return None,
    };
    if h > 23 || m > 59 {
        return None;
    }
    Some(sign * (h as i32 * 60 + m as i32))
}

/// Parses `yyyy-MM-ddTHH:mm:ss[.fff][Z|±hh:mm|±hhmm]` (a space may replace `T`; no offset
/// means UTC). Fractions of any length are accepted; milliseconds are kept.
pub fn parse_iso8601(s: &str) -> Option<i64> {
    let b = s.trim().as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || (b[10] != b'T' && b[10] != b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let y = digits(&b[0..4])? as i64;
    let (mo, d) = (digits(&b[5..7])?, digits(&b[8..10])?);
    let (h, mi, sec) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    if !check_ranges(mo, d, h, mi, sec) {
        return None;
    }
    let mut rest = &b[19..];
    let mut millis = 0i64;
    if rest.first() == Some(&b'.') || rest.first() == Some(&b',') {
        let n = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        let frac = &rest[1..1 + n];
        for i in 0..3 {
            millis = millis * 10 + frac.get(i).map_or(0, |c| (c - b'0') as i64);
        }
        rest = &rest[1 + n..];
    }
    let offset = if rest.is_empty() {
        0
    } else {
        parse_offset(rest)?
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86400 + (h * 3600 + mi * 60 + sec) as i64 - offset as i64 * 60;
    Some(secs * 1000 + millis)
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Parses nginx `$time_local`: `dd/Mon/yyyy:HH:mm:ss ±hhmm`.
pub fn parse_time_local(s: &str) -> Option<i64> {
    let b = s.trim().as_bytes();
    if b.len() < 20 || b[2] != b'/' || b[6] != b'/' || b[11] != b':' {
        return None;
    }
    let d = digits(&b[0..2])?;
    let mon = std::str::from_utf8(&b[3..6]).ok()?;
    let mo = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(mon))? as u32 + 1;
    let y = digits(&b[7..11])? as i64;
    if b[14] != b':' || b[17] != b':' {
        return None;
    }
    let (h, mi, sec) = (
        digits(&b[12..14])?,
        digits(&b[15..17])?,
        digits(&b[18..20])?,
    );
    if !check_ranges(mo, d, h, mi, sec) {
        return None;
    }
    let rest = std::str::from_utf8(&b[20..]).ok()?.trim();
    let offset = if rest.is_empty() {
        0
    } else {
        parse_offset(rest.as_bytes())?
    };
    let secs =
        days_from_civil(y, mo, d) * 86400 + (h * 3600 + mi * 60 + sec) as i64 - offset as i64 * 60;
    Some(secs * 1000)
}

fn split_local(ms: i64, offset_minutes: i32) -> (i64, u32, u32, i64, i64, i64, i64) {
    let local = ms + offset_minutes as i64 * 60_000;
    let days = local.div_euclid(86_400_000);
    let rem = local.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    (
        y,
        m,
        d,
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000,
    )
}

fn offset_string(offset_minutes: i32, colon: bool) -> String {
    let sign = if offset_minutes < 0 { '-' } else { '+' };
    let a = offset_minutes.unsigned_abs();
    if colon {
        format!("{sign}{:02}:{:02}", a / 60, a % 60)
    } else {
        format!("{sign}{:02}{:02}", a / 60, a % 60)
    }
}

/// Renders `yyyy-MM-ddTHH:mm:ss[.fff]±hh:mm`; milliseconds only when non-zero.
pub fn format_iso8601(ms: i64, offset_minutes: i32) -> String {
    let (y, mo, d, h, mi, s, milli) = split_local(ms, offset_minutes);
    let off = offset_string(offset_minutes, true);
    if milli == 0 {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{off}")
    } else {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}{off}")
    }
}

/// Renders nginx `$time_local`: `dd/Mon/yyyy:HH:mm:ss ±hhmm` (seconds precision).
pub fn format_time_local(ms: i64, offset_minutes: i32) -> String {
    let (y, mo, d, h, mi, s, _) = split_local(ms, offset_minutes);
    let mon = MONTHS[mo as usize - 1];
    let off = offset_string(offset_minutes, false);
    format!("{d:02}/{mon}/{y:04}:{h:02}:{mi:02}:{s:02} {off}")
}

/// Renders `yyyy-MM-dd HH:mm:ss`, the original's Redis/blacklist time format.
pub fn format_ymd_hms(ms: i64, offset_minutes: i32) -> String {
    let (y, mo, d, h, mi, s, _) = split_local(ms, offset_minutes);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_variants() {
        let base = parse_iso8601("2020-04-03T08:39:49Z").unwrap();
        assert_eq!(base, 1_585_903_189_000);
        assert_eq!(parse_iso8601("2020-04-03T16:39:49+08:00"), Some(base));
        assert_eq!(parse_iso8601("2020-04-03T16:39:49+0800"), Some(base));
        assert_eq!(parse_iso8601("2020-04-03T03:39:49-05:00"), Some(base));
        assert_eq!(
            parse_iso8601("2020-04-03T16:39:49.250+08:00"),
            Some(base + 250)
        );
        assert_eq!(parse_iso8601("2020-04-03 08:39:49.5"), Some(base + 500));
        assert_eq!(parse_iso8601("2020-13-03T08:39:49Z"), None);
        assert_eq!(parse_iso8601("garbage"), None);
        assert_eq!(parse_iso8601("2020-04-03T08:39:49+8"), None);
    }

    #[test]
    fn time_local_and_round_trips() {
        let base = parse_iso8601("2020-04-03T16:39:49+08:00").unwrap();
        assert_eq!(parse_time_local("03/Apr/2020:16:39:49 +0800"), Some(base));
        assert_eq!(parse_time_local("03/Apr/2020:08:39:49 +0000"), Some(base));
        assert_eq!(format_time_local(base, 480), "03/Apr/2020:16:39:49 +0800");
        assert_eq!(format_iso8601(base, 480), "2020-04-03T16:39:49+08:00");
        assert_eq!(
            format_iso8601(base + 7, -330),
            "2020-04-03T03:09:49.007-05:30"
        );
        assert_eq!(format_ymd_hms(base, 480), "2020-04-03 16:39:49");
        assert_eq!(parse_time_local("32/Apr/2020:16:39:49 +0800"), None);
        for days in [-1000, 0, 18000, 20000, 60000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
