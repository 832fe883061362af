//! One-way vs round-trip from the referer (SPEC §3.5).

use crate::event::TravelType;

/// Counts the query-parameter values of `referer` that are dates `yyyy-MM-dd`:
/// 1 → OneWay, 2 → RoundTrip, anything else (0, ≥ 3, no `?`) → Unknown.
///
/// The query is the part after the first `?` (up to a `#` fragment), split on `&`; a
/// parameter's value is what follows its first `=`; parameters without `=` have no value.
pub fn travel_type(referer: &str) -> TravelType {
    // Bytes and memchr: this runs for every processed line, mostly on referers without `?`.
    let b = referer.as_bytes();
    let Some(q) = memchr::memchr(b'?', b) else {
        return TravelType::Unknown;
    };
    let query = &b[q + 1..];
    let query = memchr::memchr(b'#', query).map_or(query, |h| &query[..h]);
    let dates = query
        .split(|&c| c == b'&')
        .filter_map(|p| memchr::memchr(b'=', p).map(|eq| &p[eq + 1..]))
        .filter(|v| is_date(v))
        .count();
    match dates {
        1 => TravelType::OneWay,
        2 => TravelType::RoundTrip,
        _ => TravelType::Unknown,
    }
}

/// `yyyy-MM-dd` with month 01–12 and day 01–31 (as the original's regex; the day is not
/// checked against the month).
fn is_date(b: &[u8]) -> bool {
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if !(digits(0..4) && digits(5..7) && digits(8..10)) {
        return false;
    }
    let month = (b[5] - b'0') * 10 + (b[6] - b'0');
    let day = (b[8] - b'0') * 10 + (b[9] - b'0');
    (1..=12).contains(&month) && (1..=31).contains(&day)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "http://b2c.csair.com/B2C40/modules/bookingnew/main/flightSelectDirect.html";

    #[test]
    fn counts_dates() {
        let t = |q: &str| travel_type(&format!("{BASE}{q}"));
        assert_eq!(t(""), TravelType::Unknown, "no ?");
        assert_eq!(t("?t=S&c1=CAN&c2=WUH"), TravelType::Unknown, "0 dates");
        assert_eq!(
            t("?t=S&c1=CAN&c2=WUH&d1=2018-02-20&at=1&ct=0&it=0"),
            TravelType::OneWay
        );
        assert_eq!(
            t("?t=R&c1=CAN&c2=WUH&d1=2019-03-23&d2=2019-03-23"),
            TravelType::RoundTrip
        );
        assert_eq!(
            t("?d1=2019-03-23&d2=2019-03-24&d3=2019-03-25"),
            TravelType::Unknown,
            "3 dates"
        );
    }

    #[test]
    fn params_without_value() {
        let t = |q: &str| travel_type(&format!("{BASE}{q}"));
        assert_eq!(t("?flag&d1=2018-02-20&&x="), TravelType::OneWay);
        assert_eq!(t("?"), TravelType::Unknown);
        assert_eq!(
            t("?2018-02-20"),
            TravelType::Unknown,
            "a key is not a value"
        );
        assert_eq!(
            t("?a==2018-02-20"),
            TravelType::Unknown,
            "value is `=2018-02-20`"
        );
        assert_eq!(
            t("?d1=2018-02-20#d2=2018-02-21"),
            TravelType::OneWay,
            "fragment cut"
        );
        assert_eq!(
            t("?u=http://x/?d=2018-02-20&d1=2018-02-21"),
            TravelType::OneWay
        );
        assert_eq!(travel_type(""), TravelType::Unknown);
    }

    #[test]
    fn invalid_dates() {
        for v in [
            "2018-13-01",
            "2018-00-10",
            "2018-01-00",
            "2018-01-32",
            "2018-1-01",
            "18-01-01",
            "2018/01/01",
            "2018-01-01x",
            "２０１８-01-01",
            "2018-0a-01",
        ] {
            assert!(!is_date(v.as_bytes()), "{v}");
        }
        for v in ["2018-01-01", "2018-12-31", "0000-10-10", "2019-02-30"] {
            assert!(is_date(v.as_bytes()), "{v}");
        }
        assert_eq!(
            travel_type("/x?d1=2018-13-01&d2=2018-01-01"),
            TravelType::OneWay
        );
    }
}
