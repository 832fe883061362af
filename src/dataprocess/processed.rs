//! Serialization of [`ProcessedData`] for the `processedQuery` / `processedBook` outputs
//! (SPEC §3.8, reference §3.9).

use crate::event::{ProcessedData, QueryRequestData};

/// Number of fields of a `#CS#` line.
pub const CS_FIELDS: usize = 19;

/// Makes a value safe inside a `#CS#` line: every `#CS` becomes `#cs` (so neither a `#CS#`
/// inside the value nor a value ending in `#CS` next to the separator can create an extra
/// separator), and CR/LF become spaces (one record per line). Empty → `NULL`.
fn cs_value(v: &str) -> String {
    if v.is_empty() {
        return "NULL".to_string();
    }
    let mut s = if v.contains("#CS") {
        v.replace("#CS", "#cs")
    } else {
        v.to_string()
    };
    if s.contains(['\n', '\r']) {
        s = s.replace(['\n', '\r'], " ");
    }
    s
}

/// Whether `v` holds a `#CS`, CR or LF ([`cs_value`]). One pass over the bytes: this runs for
/// every field of every output record.
fn needs_cs_escape(v: &str) -> bool {
    let b = v.as_bytes();
    memchr::memchr3_iter(b'#', b'\n', b'\r', b)
        .any(|i| b[i] != b'#' || b[i + 1..].starts_with(b"CS"))
}

/// The original's 19 fields joined by `#CS#`, every empty value as `NULL`:
/// `sourceData(NULL), requestMethod, request, remoteAddr, httpUserAgent, timeIso8601,
/// serverAddr, highFrqIPGroup, flightType, behaviorType, travelType, flightDate, depCity,
/// arrCity, JSESSIONID, userId, QueryRequestData JSON, BookRequestData JSON, httpReferrer`.
///
/// Escaping: a `#CS` inside a value is written `#cs` and CR/LF as spaces, so the line always
/// splits into exactly 19 fields.
pub fn to_cs_line(p: &ProcessedData) -> String {
    let query = p.query.as_ref().map(query_json);
    let book = p.book.as_ref().and_then(|b| serde_json::to_string(b).ok());
    let fields: [&str; CS_FIELDS] = [
        "",
        &p.request_method,
        &p.request,
        &p.remote_addr,
        &p.http_user_agent,
        &p.time_iso8601,
        &p.server_addr,
        if p.high_frq_ip_group { "true" } else { "false" },
        p.flight_type.name(),
        p.behavior_type.name(),
        p.travel_type.name(),
        &p.flight_date,
        &p.dep_city,
        &p.arr_city,
        p.jsessionid.as_deref().unwrap_or_default(),
        p.user_id.as_deref().unwrap_or_default(),
        query.as_deref().unwrap_or_default(),
        book.as_deref().unwrap_or_default(),
        &p.http_referer,
    ];
    // Written in place: this runs once per output record, so no per-field copies. Sized for
    // each field's separator and an empty field's `NULL` (a query line has several): one
    // allocation, not a reallocation copying the line.
    let mut line = String::with_capacity(fields.iter().map(|f| f.len().max(4) + 4).sum());
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            line.push_str("#CS#");
        }
        if f.is_empty() {
            line.push_str("NULL");
        } else if needs_cs_escape(f) {
            line.push_str(&cs_value(f));
        } else {
            line.push_str(f);
        }
    }
    line
}

/// `serde_json::to_string(q)`, written field by field: every processed query line carries
/// this JSON, and serde's generic serializer (escaping the constant keys too) was a tenth of
/// a line's processing.
fn query_json(q: &QueryRequestData) -> String {
    let mut out = String::with_capacity(
        160 + q.dep_city.len() + q.arr_city.len() + q.flight_date.len() + q.country.len(),
    );
    let mut int = itoa::Buffer::new();
    out.push_str("{\"flightType\":");
    out.push_str(int.format(q.flight_type));
    for (key, value) in [
        (",\"depCity\":", &q.dep_city),
        (",\"arrCity\":", &q.arr_city),
        (",\"flightDate\":", &q.flight_date),
        (",\"adultNum\":", &q.adult_num),
        (",\"childNum\":", &q.child_num),
        (",\"infantNum\":", &q.infant_num),
        (",\"country\":", &q.country),
    ] {
        out.push_str(key);
        push_json_str(&mut out, value);
    }
    out.push_str(",\"travelType\":");
    out.push_str(int.format(q.travel_type));
    out.push('}');
    out
}

/// A JSON string literal as serde_json writes it: verbatim between quotes unless it holds a
/// quote, a backslash or a control character, which serde_json itself then escapes.
fn push_json_str(out: &mut String, s: &str) {
    if s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
    } else {
        out.push('"');
        out.push_str(s);
        out.push('"');
    }
}

/// `ProcessedData` as one JSON object (serde field names; no newline inside).
pub fn to_json_line(p: &ProcessedData) -> String {
    serde_json::to_string(p).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::*;

    proptest::proptest! {
        /// The query JSON is byte for byte what serde_json writes.
        #[test]
        fn query_json_is_serde_json(
            strings in proptest::collection::vec("(\\PC|[\"\\\\\u{0}-\u{1f}\u{7f}é#])*", 7),
            flight_type: i32,
            travel_type: i32,
        ) {
            let q = QueryRequestData {
                flight_type,
                dep_city: strings[0].clone(),
                arr_city: strings[1].clone(),
                flight_date: strings[2].clone(),
                adult_num: strings[3].clone(),
                child_num: strings[4].clone(),
                infant_num: strings[5].clone(),
                country: strings[6].clone(),
                travel_type,
            };
            proptest::prop_assert_eq!(query_json(&q), serde_json::to_string(&q).unwrap());
        }
    }

    fn sample() -> ProcessedData {
        ProcessedData {
            time_ms: 1_585_903_189_000,
            request_method: "POST".into(),
            request: "POST /B2C40/query/jaxb/direct/query.ao HTTP/1.1".into(),
            remote_addr: "192.168.8.1".into(),
            http_user_agent: String::new(),
            time_iso8601: "2020-04-03T16:39:49+08:00".into(),
            server_addr: "192.168.8.103".into(),
            high_frq_ip_group: false,
            flight_type: FlightType::National,
            behavior_type: BehaviorType::Query,
            travel_type: TravelType::OneWay,
            flight_date: "20180220".into(),
            dep_city: "CAN".into(),
            arr_city: "WUH".into(),
            jsessionid: None,
            user_id: Some("abc".into()),
            query: Some(QueryRequestData {
                flight_type: 0,
                dep_city: "CAN".into(),
                ..Default::default()
            }),
            book: None,
            http_referer: String::new(),
            status: Some(200),
            request_time: Some(0.25),
        }
    }

    #[test]
    fn nineteen_fields_with_nulls() {
        let line = to_cs_line(&sample());
        let f: Vec<&str> = line.split("#CS#").collect();
        assert_eq!(f.len(), 19, "{line}");
        assert_eq!(f[0], "NULL");
        assert_eq!(f[1], "POST");
        assert_eq!(f[2], "POST /B2C40/query/jaxb/direct/query.ao HTTP/1.1");
        assert_eq!(f[3], "192.168.8.1");
        assert_eq!(f[4], "NULL");
        assert_eq!(f[5], "2020-04-03T16:39:49+08:00");
        assert_eq!(f[7], "false");
        assert_eq!((f[8], f[9], f[10]), ("National", "Query", "OneWay"));
        assert_eq!((f[11], f[12], f[13]), ("20180220", "CAN", "WUH"));
        assert_eq!((f[14], f[15]), ("NULL", "abc"));
        let q: serde_json::Value = serde_json::from_str(f[16]).unwrap();
        assert_eq!(q["depCity"], "CAN");
        assert_eq!(q["flightType"], 0);
        assert_eq!(q["travelType"], 0);
        assert_eq!(f[17], "NULL");
        assert_eq!(f[18], "NULL");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn separator_inside_values_is_escaped() {
        let mut p = sample();
        p.http_user_agent = "a#CS#b#CS#CS#c\nd".into();
        p.http_referer = "x#CS".into();
        p.request = "#CS#".into();
        p.dep_city = "#CS#CS#CS#".into();
        let line = to_cs_line(&p);
        let f: Vec<&str> = line.split("#CS#").collect();
        assert_eq!(f.len(), 19, "{line}");
        assert_eq!(f[2], "#cs#");
        assert_eq!(f[4], "a#cs#b#cs#cs#c d");
        assert_eq!(f[12], "#cs#cs#cs#");
        assert_eq!(f[18], "x#cs");
        // JSON fields stay valid JSON after escaping.
        let q: serde_json::Value = serde_json::from_str(f[16]).unwrap();
        assert!(q.is_object());
    }

    #[test]
    fn escape_check_agrees_with_the_plain_one() {
        // Every string of up to 5 characters over the alphabet that matters.
        let alphabet = ['#', 'C', 'S', 'a', '\n', '\r'];
        let mut strings = vec![String::new()];
        for _ in 0..5 {
            let longer: Vec<String> = strings
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            strings.extend(longer);
        }
        strings.sort();
        strings.dedup();
        for v in &strings {
            let plain = v.contains("#CS") || v.contains(['\n', '\r']);
            assert_eq!(needs_cs_escape(v), plain, "{v:?}");
        }
    }

    #[test]
    fn json_line_roundtrips() {
        let p = sample();
        let line = to_json_line(&p);
        assert!(!line.contains('\n'));
        let back: ProcessedData = serde_json::from_str(&line).unwrap();
        assert_eq!(back, p);
    }
}
