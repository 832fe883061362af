//! dataprocess (SPEC §3 steps 2–6 and 8): filter, mask, cookies, classify, travel type, body
//! parsing, and the `ProcessedData` output formats.
//!
//! [`process`] is a pure function of one [`LogRecord`] and the compiled rule tables
//! ([`DataRules`]); the dataflow calls it per record and sets the high-frequency IP tag
//! (SPEC §3.7) itself. Link statistics (step 1) are computed by the dataflow on raw records.
//!
//! Order per record: the filter sees the raw request line; then every string field is masked
//! ([`mask`]); the cookie ids, the class, the travel type and the parsed body are all derived
//! from the masked text, and every parsed value is masked again, so no raw phone or ID number
//! can reach a `ProcessedData`.

pub mod analyze;
pub mod classify;
pub mod cookie;
pub mod json_doc;
pub mod line_rules;
pub mod mask;
pub mod processed;
pub mod travel;

use std::borrow::Cow;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use analyze::Analyzer;
pub use classify::{Classifier, Filter};
pub use cookie::cookie_value;
pub use line_rules::LineRules;
pub use mask::{MaskMode, Masker};
pub use processed::{to_cs_line, to_json_line};
pub use travel::travel_type;

use crate::event::{BehaviorType, LogRecord, ProcessedData};
use crate::rules::tables::{AnalyzeRule, ClassifyRule, FilterRule};

/// File names of the three tables under the rules directory.
pub const FILTER_FILE: &str = "nh_filter_rule.toml";
pub const CLASSIFY_FILE: &str = "nh_classify_rule.toml";
pub const ANALYZE_FILE: &str = "analyzerule.toml";

/// The compiled `nh_filter_rule`, `nh_classify_rule` and `analyzerule` tables.
#[derive(Clone, Debug)]
pub struct DataRules {
    pub filter: Filter,
    pub classifier: Classifier,
    pub analyzer: Analyzer,
    /// The request-line regexes of all three, for one search per record.
    pub lines: LineRules,
}

impl DataRules {
    /// Compiles the three tables. A bad row (regex, path, type values) is an error naming
    /// the table, the row id and the problem.
    pub fn compile(
        filter: &[FilterRule],
        classify: &[ClassifyRule],
        analyze: &[AnalyzeRule],
    ) -> anyhow::Result<DataRules> {
        let filter = Filter::compile(filter)?;
        let classifier = Classifier::compile(classify)?;
        let analyzer = Analyzer::compile(analyze)?;
        let lines = LineRules::new(&filter, &classifier, &analyzer)?;
        Ok(DataRules {
            filter,
            classifier,
            analyzer,
            lines,
        })
    }

    /// No rules: nothing is filtered, everything is Other.
    pub fn empty() -> DataRules {
        DataRules::compile(&[], &[], &[]).expect("empty rules compile")
    }

    /// Loads and compiles `nh_filter_rule.toml`, `nh_classify_rule.toml` and
    /// `analyzerule.toml` from `dir` (e.g. the repository's `rules/`).
    pub fn load_dir(dir: &Path) -> anyhow::Result<DataRules> {
        use crate::rules::load::load_table;
        let filter: Vec<FilterRule> = load_table(&dir.join(FILTER_FILE))?;
        let classify: Vec<ClassifyRule> = load_table(&dir.join(CLASSIFY_FILE))?;
        let analyze: Vec<AnalyzeRule> = load_table(&dir.join(ANALYZE_FILE))?;
        DataRules::compile(&filter, &classify, &analyze)
    }
}

/// Names of the cookies holding the session id and the user id (configurable).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CookieNames {
    pub jsessionid: String,
    pub user_id: String,
}

impl Default for CookieNames {
    fn default() -> Self {
        CookieNames {
            jsessionid: "JSESSIONID".into(),
            user_id: "userId4logCookie".into(),
        }
    }
}

/// What [`process`] made of a record.
// Not boxed: the record is moved out at once, a box would be one more allocation per record.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Dropped by a filter rule.
    Filtered,
    Processed(ProcessedData),
}

/// The method of a record: `request_method`, else the first word of the request line.
fn method_of<'r>(rec: &'r LogRecord<'_>) -> &'r str {
    let m = rec.request_method.trim();
    if m.is_empty() {
        rec.request.split_ascii_whitespace().next().unwrap_or("")
    } else {
        m
    }
}

/// SPEC §3 steps 2–6 and 8 for one record. `high_frq_ip_group` is left `false`.
pub fn process(
    rules: &DataRules,
    masker: &Masker,
    cookies: &CookieNames,
    rec: LogRecord,
) -> Outcome {
    // 2. Filter on the raw request line. One search answers steps 2, 4 and 6 (see
    // `line_rules`), unless masking changes the line.
    let raw_matches = rules.lines.matches(&rec.request);
    if rules.lines.is_filtered(&raw_matches) {
        return Outcome::Filtered;
    }
    // 3. Mask every string that can reach an output (moved, not copied, when clean).
    let m = |s: Cow<str>| match masker.mask(&s) {
        Cow::Owned(o) => o,
        Cow::Borrowed(_) => s.into_owned(),
    };
    let method = masker.mask(method_of(&rec)).into_owned();
    let LogRecord {
        time_ms,
        time_iso8601,
        request,
        request_body,
        http_referer,
        remote_addr,
        http_user_agent,
        server_addr,
        http_cookie,
        status,
        request_time,
        ..
    } = rec;
    let (request, line) = match masker.mask(&request) {
        Cow::Borrowed(_) => (request.into_owned(), raw_matches),
        Cow::Owned(masked) => {
            let line = rules.lines.matches(&masked);
            (masked, line)
        }
    };
    let body = masker.mask(&request_body);
    let referer = m(http_referer);
    let cookie = masker.mask(&http_cookie);
    let cookie_id = |name: &str| {
        cookie_value(&cookie, name)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let jsessionid = cookie_id(&cookies.jsessionid);
    let user_id = cookie_id(&cookies.user_id);
    // 4. Classify.
    let (flight, behavior) = rules.lines.classify(&rules.classifier, &line);
    // 5. Travel type from the referer.
    let referer_travel = travel_type(&referer);
    // 6. Parse the body.
    let parsed = if behavior == BehaviorType::Other {
        analyze::Parsed::default()
    } else {
        rules
            .analyzer
            .find_with(&method, flight, behavior, |i| {
                rules.lines.analyze_matches(&line, i)
            })
            .map(|r| r.parse(masker, &request, &body, flight, referer_travel))
            .unwrap_or_default()
    };
    // A travel type read from the body (rule field `query_travel_type`) wins over the referer.
    let travel = parsed.body_travel_type.unwrap_or(referer_travel);
    // Core params: query values, else the book lists joined with `,`.
    let core = |q: Option<&String>, b: Option<&Vec<String>>| match q {
        Some(q) if !q.is_empty() => q.clone(),
        _ => b.map(|b| b.join(",")).unwrap_or_default(),
    };
    let (q, b) = (parsed.query.as_ref(), parsed.book.as_ref());
    let flight_date = core(q.map(|q| &q.flight_date), b.map(|b| &b.flight_date));
    let dep_city = core(q.map(|q| &q.dep_city), b.map(|b| &b.dep_city));
    let arr_city = core(q.map(|q| &q.arr_city), b.map(|b| &b.arr_city));
    // 8. ProcessedData.
    Outcome::Processed(ProcessedData {
        time_ms,
        request_method: method,
        request,
        remote_addr: m(remote_addr),
        http_user_agent: m(http_user_agent),
        time_iso8601: m(time_iso8601),
        server_addr: m(server_addr),
        high_frq_ip_group: false,
        flight_type: flight,
        behavior_type: behavior,
        travel_type: travel,
        flight_date,
        dep_city,
        arr_city,
        jsessionid,
        user_id,
        query: parsed.query,
        book: parsed.book,
        http_referer: referer,
        status,
        request_time,
    })
}

#[cfg(test)]
mod tests {
    use super::mask::contains_sensitive;
    use super::*;
    use crate::event::{FlightType, TravelType};
    use crate::rules::tables::BodyKind;

    fn rules() -> DataRules {
        DataRules::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")).unwrap()
    }

    fn md5() -> Masker {
        Masker::new(MaskMode::Md5, b"")
    }

    fn rec<'a>(request: &'a str, content_type: &'a str, body: &'a str) -> LogRecord<'a> {
        LogRecord {
            time_ms: 1_585_903_189_000,
            time_iso8601: "2020-04-03T16:39:49+08:00".into(),
            request: request.into(),
            request_method: request.split(' ').next().unwrap().into(),
            content_type: content_type.into(),
            request_body: body.into(),
            http_referer: "http://b2c.csair.com/B2C40/modules/bookingnew/main/flightSelectDirect.html?t=S&c1=CAN&c2=WUH&d1=2026-11-25".into(),
            remote_addr: "192.168.8.1".into(),
            http_user_agent: "Mozilla/5.0".into(),
            server_addr: "192.168.8.103".into(),
            http_cookie: "JSESSIONID=ABC123; userId4logCookie=u1".into(),
            status: Some(200),
            request_time: Some(0.1),
            ..Default::default()
        }
    }

    fn processed(o: Outcome) -> ProcessedData {
        match o {
            Outcome::Processed(p) => p,
            Outcome::Filtered => panic!("filtered"),
        }
    }

    fn run(r: LogRecord) -> ProcessedData {
        processed(process(&rules(), &md5(), &CookieNames::default(), r))
    }

    /// Every string of the output, for leak checks.
    fn all_text(p: &ProcessedData) -> String {
        format!("{}\n{}", to_cs_line(p), to_json_line(p))
    }

    #[test]
    fn default_filter_rules() {
        let r = rules();
        for req in [
            "GET /B2C40/dist/main/css/flight.css HTTP/1.1",
            "GET /B2C40/dist/main/modules/common/requireConfig.js HTTP/1.1",
            "POST /B2C40/dist/main/modules/common/requireConfig.js HTTP/1.1",
            "GET /B2C40/dist/main/images/common.png HTTP/1.1",
            "GET /B2C40/dist/main/images/banner.jpg HTTP/1.1",
            "GET /B2C40/dist/main/images/loading.gif HTTP/1.1",
            "GET /B2C40/dist/main/images/icon.ico HTTP/1.1",
            "GET /B2C40/dist/main/fonts/iconfont.woff2 HTTP/1.1",
            "GET /B2C40/dist/main/images/logo.svg HTTP/1.1",
            "GET /favicon.ico HTTP/1.1",
            "GET /B2C40/static/app.js?v=123 HTTP/1.1",
            "GET /B2C40/static/app.css?v=123 HTTP/1.0",
            "GET /B2C40/static/APP.CSS",
        ] {
            assert!(r.filter.is_filtered(req), "{req}");
            assert_eq!(
                process(&r, &md5(), &CookieNames::default(), rec(req, "", "")),
                Outcome::Filtered
            );
        }
        for req in [
            "POST /B2C40/query/jaxb/direct/query.ao HTTP/1.1",
            "GET /B2C40/query/jaxb/direct/calendar.ao?depCity=CAN&x=a.js HTTP/1.1",
            "GET /B2C40/index.html HTTP/1.1",
            "GET /B2C40/modules/bookingnew/main/flightSelectDirect.html?t=S&c1=CAN&c2=WUH&d1=2026-11-25 HTTP/1.1",
            "GET /B2C40/data.json HTTP/1.1",
        ] {
            assert!(!r.filter.is_filtered(req), "{req}");
        }
    }

    #[test]
    fn default_classify_rules() {
        let r = rules();
        use BehaviorType as B;
        use FlightType as F;
        let c = |s: &str| r.classifier.classify(s);
        assert_eq!(
            c("POST /B2C40/query/jaxb/direct/query.ao HTTP/1.1"),
            (F::National, B::Query)
        );
        assert_eq!(
            c("POST /B2C40/query/jaxb/direct/lowfare.ao HTTP/1.1"),
            (F::National, B::Query)
        );
        assert_eq!(
            c("GET /B2C40/query/jaxb/direct/calendar.ao?depCity=CAN&arrCity=PEK&flightDate=20261125 HTTP/1.1"),
            (F::National, B::Query)
        );
        assert_eq!(
            c("POST /ita/intl/zh/shop/query HTTP/1.1"),
            (F::International, B::Query)
        );
        assert_eq!(
            c("POST /B2C40/bookingnew/order/create.ao HTTP/1.1"),
            (F::National, B::Book)
        );
        assert_eq!(
            c("POST /ita/intl/zh/passengers/submit HTTP/1.1"),
            (F::International, B::Book)
        );
        for other in [
            "GET /B2C40/modules/bookingnew/main/flightSelectDirect.html?t=S&c1=CAN&c2=WUH&d1=2026-11-25 HTTP/1.1",
            "GET /B2C40/index.html HTTP/1.1",
            "GET /B2C40/member/login.html HTTP/1.1",
            "POST /B2C40/member/login.ao HTTP/1.1",
        ] {
            assert_eq!(c(other), (F::Other, B::Other), "{other}");
        }
    }

    #[test]
    fn json_in_form_query_sample_body() {
        // The body of the real sample line (URL-encoded JSON in field `json`, `+` = space).
        let body = "json=%7B%22depcity%22%3A%22CAN%22%2C+%22arrcity%22%3A%22WUH%22%2C+%22flightdate%22%3A%2220180220%22%2C+%22adultnum%22%3A%221%22%2C+%22childnum%22%3A%220%22%2C+%22infantnum%22%3A%220%22%2C+%22cabinorder%22%3A%220%22%2C+%22airline%22%3A%221%22%2C+%22flytype%22%3A%220%22%2C+%22international%22%3A%220%22%2C+%22action%22%3A%220%22%2C+%22segtype%22%3A%221%22%2C+%22cache%22%3A%220%22%2C+%22preUrl%22%3A%22%22%2C+%22isMember%22%3A%22%22%7D";
        let p = run(rec(
            "POST /B2C40/query/jaxb/direct/query.ao HTTP/1.1",
            "application/x-www-form-urlencoded; charset=UTF-8",
            body,
        ));
        assert_eq!(
            (p.flight_type, p.behavior_type, p.travel_type),
            (
                FlightType::National,
                BehaviorType::Query,
                TravelType::OneWay
            )
        );
        let q = p.query.clone().unwrap();
        assert_eq!(
            q,
            crate::event::QueryRequestData {
                flight_type: 0,
                dep_city: "CAN".into(),
                arr_city: "WUH".into(),
                flight_date: "20180220".into(),
                adult_num: "1".into(),
                child_num: "0".into(),
                infant_num: "0".into(),
                country: String::new(),
                travel_type: 0,
            }
        );
        assert_eq!(
            (
                p.flight_date.as_str(),
                p.dep_city.as_str(),
                p.arr_city.as_str()
            ),
            ("20180220", "CAN", "WUH")
        );
        assert_eq!(p.jsessionid.as_deref(), Some("ABC123"));
        assert_eq!(p.user_id.as_deref(), Some("u1"));
        assert!(p.book.is_none());
        assert_eq!(p.status, Some(200));
        assert_eq!(p.request_time, Some(0.1));
        assert_eq!(p.time_ms, 1_585_903_189_000);
        assert!(!p.high_frq_ip_group);
    }

    #[test]
    fn form_query() {
        let p = run(rec(
            "POST /B2C40/query/jaxb/direct/lowfare.ao HTTP/1.1",
            "application/x-www-form-urlencoded",
            "depCity=CAN&arrCity=PEK&flightDate=20261125&adultNum=1&childNum=0&infantNum=0",
        ));
        let q = p.query.unwrap();
        assert_eq!(
            (
                q.dep_city.as_str(),
                q.arr_city.as_str(),
                q.flight_date.as_str()
            ),
            ("CAN", "PEK", "20261125")
        );
        assert_eq!(
            (
                q.adult_num.as_str(),
                q.child_num.as_str(),
                q.infant_num.as_str()
            ),
            ("1", "0", "0")
        );
        assert_eq!(p.dep_city, "CAN");
    }

    #[test]
    fn get_query() {
        let p = run(rec(
            "GET /B2C40/query/jaxb/direct/calendar.ao?depCity=CAN&arrCity=P%45K&flightDate=20261125 HTTP/1.1",
            "",
            "",
        ));
        let q = p.query.unwrap();
        assert_eq!(
            (
                q.dep_city.as_str(),
                q.arr_city.as_str(),
                q.flight_date.as_str()
            ),
            ("CAN", "PEK", "20261125")
        );
        assert_eq!(q.adult_num, "");
        assert_eq!(q.flight_type, 0);
    }

    #[test]
    fn json_international_query() {
        let mut r = rec(
            "POST /ita/intl/zh/shop/query HTTP/1.1",
            "application/json",
            r#"{"depCity":"CAN","arrCity":"LHR","flightDate":"20261201","adultNum":2,"childNum":"1","infantNum":"0","country":"GB"}"#,
        );
        r.http_referer =
            "http://b2c.csair.com/ita/intl/zh/shop/?d1=2026-12-01&d2=2026-12-09".into();
        let p = run(r);
        assert_eq!(
            (p.flight_type, p.behavior_type, p.travel_type),
            (
                FlightType::International,
                BehaviorType::Query,
                TravelType::RoundTrip
            )
        );
        let q = p.query.unwrap();
        // flight_type is the classified flight type (the original put the behaviour id here).
        assert_eq!(q.flight_type, 1);
        assert_eq!(q.travel_type, 1);
        assert_eq!(
            (q.dep_city.as_str(), q.arr_city.as_str(), q.country.as_str()),
            ("CAN", "LHR", "GB")
        );
        assert_eq!(q.adult_num, "2", "numbers are rendered as text");
    }

    const PHONE: &str = "13812345678";
    const ID1: &str = "11010119900307387X";
    const ID2: &str = "440101199001011234";

    #[test]
    fn json_domestic_book_no_raw_numbers() {
        let body = format!(
            r#"{{"bookUserId":"{PHONE}","passengers":[{{"firstName":"Zhang","name":"San","type":"ADT","idType":"NI","idCard":"{ID1}"}},{{"firstName":"Li","name":"Si","type":"CHD","idType":"NI","idCard":"{ID2}"}},{{"firstName":"Wang","name":"Wu","type":"ADT","idType":"PP","idCard":"E12345678"}}],"contact":{{"name":"Zhang San|x","phone":"{PHONE}/010-1234"}},"segments":[{{"depCity":"CAN","arrCity":"PEK","flightDate":"20261125","flightNo":"CZ3101","cabin":"Y"}},{{"depCity":"PEK","arrCity":"CAN","flightDate":"20261130","flightNo":"CZ3102","cabin":"J"}}]}}"#
        );
        let mut r = rec(
            "POST /B2C40/bookingnew/order/create.ao HTTP/1.1",
            "application/json",
            &body,
        );
        r.http_cookie = format!("JSESSIONID={ID1}; userId4logCookie={PHONE}").into();
        r.http_referer = format!(
            "http://b2c.csair.com/B2C40/bookingnew/?phone={PHONE}&d1=2026-11-25&d2=2026-11-30"
        )
        .into();
        let m = md5();
        let p = processed(process(&rules(), &m, &CookieNames::default(), r));
        assert_eq!(
            (p.flight_type, p.behavior_type, p.travel_type),
            (
                FlightType::National,
                BehaviorType::Book,
                TravelType::RoundTrip
            )
        );
        let b = p.book.clone().unwrap();
        assert_eq!(b.flight_type, 0);
        assert_eq!(b.travel_type, 1);
        assert_eq!(b.book_user_id, m.hash(PHONE));
        assert_eq!(b.psg_name, ["ZhangSan", "LiSi", "WangWu"]);
        assert_eq!(b.psg_type, ["ADT", "CHD", "ADT"]);
        assert_eq!(b.id_type, ["NI", "NI", "PP"]);
        // Hashed once, like everywhere else; the passport (not a number pattern) is hashed too.
        assert_eq!(b.id_card, [m.hash(ID1), m.hash(ID2), m.hash("E12345678")]);
        assert_eq!(b.contract_name, "Zhang San");
        assert_eq!(b.contract_phone, m.hash(PHONE));
        assert_eq!(b.dep_city, ["CAN", "PEK"]);
        assert_eq!(b.arr_city, ["PEK", "CAN"]);
        assert_eq!(b.flight_date, ["20261125", "20261130"]);
        assert_eq!(b.flight_no, ["CZ3101", "CZ3102"]);
        assert_eq!(b.cabin, ["Y", "J"]);
        // Core params from the book lists (the original overwrote them with empty query values).
        assert_eq!(
            (
                p.flight_date.as_str(),
                p.dep_city.as_str(),
                p.arr_city.as_str()
            ),
            ("20261125,20261130", "CAN,PEK", "PEK,CAN")
        );
        assert_eq!(p.jsessionid, Some(m.hash(ID1)));
        assert_eq!(p.user_id, Some(m.hash(PHONE)));
        let text = all_text(&p);
        for raw in [
            PHONE,
            ID1,
            ID2,
            "E12345678",
            "3812345678",
            "1101011990030738",
        ] {
            assert!(!text.contains(raw), "{raw} leaked: {text}");
        }
        assert!(!contains_sensitive(&text));
        assert_eq!(to_cs_line(&p).split("#CS#").count(), 19);
    }

    #[test]
    fn xml_international_book() {
        let body = format!(
            "<page><BOOKUSERID>u-77</BOOKUSERID>\
             <PASSENGER><NAME>ZHANG/SAN</NAME><TYPE>ADT</TYPE><IDTYPE>NI</IDTYPE><IDNO>{ID1}</IDNO></PASSENGER>\
             <PASSENGER><NAME>LI/SI</NAME><TYPE>ADT</TYPE><IDTYPE>NI</IDTYPE><IDNO>{ID2}</IDNO></PASSENGER>\
             <CONTACT><NAME>Zhang San</NAME><PHONE>+86 138 1234 5678</PHONE></CONTACT>\
             <SEGMENT><DEPCITY>CAN</DEPCITY><ARRCITY>LHR</ARRCITY><DATE>2026-12-01</DATE><FLIGHTNO>CZ303</FLIGHTNO><CABIN>Y</CABIN></SEGMENT>\
             <SEGTYPE>S</SEGTYPE></page>"
        );
        let mut r = rec(
            "POST /ita/intl/zh/passengers/submit HTTP/1.1",
            "text/xml",
            &body,
        );
        r.http_referer =
            "http://b2c.csair.com/ita/intl/zh/passengers/?d1=2026-12-01&d2=2026-12-09".into();
        let m = md5();
        let p = processed(process(&rules(), &m, &CookieNames::default(), r));
        assert_eq!(
            (p.flight_type, p.behavior_type),
            (FlightType::International, BehaviorType::Book)
        );
        // The rule reads the travel type from //SEGTYPE: it wins over the referer's 2 dates.
        assert_eq!(p.travel_type, TravelType::OneWay);
        let b = p.book.clone().unwrap();
        assert_eq!(b.flight_type, 1);
        assert_eq!(b.travel_type, 0);
        assert_eq!(b.book_user_id, "u-77");
        assert_eq!(
            b.psg_name,
            ["ZHANG/SAN", "LI/SI"],
            "CONTACT/NAME does not collide"
        );
        assert_eq!(b.id_card, [m.hash(ID1), m.hash(ID2)]);
        assert_eq!(b.contract_name, "Zhang San");
        assert_eq!(b.contract_phone, m.hash("+86 138 1234 5678"));
        assert_eq!(
            (
                b.dep_city.clone(),
                b.arr_city.clone(),
                b.flight_date.clone()
            ),
            (
                vec!["CAN".to_string()],
                vec!["LHR".to_string()],
                vec!["2026-12-01".to_string()]
            )
        );
        assert_eq!(
            (p.dep_city.as_str(), p.flight_date.as_str()),
            ("CAN", "2026-12-01")
        );
        let text = all_text(&p);
        assert!(!text.contains(ID1) && !text.contains(ID2) && !contains_sensitive(&text));
    }

    #[test]
    fn xml_in_form_custom_rule() {
        let analyze = [AnalyzeRule {
            id: 1,
            flight_type: 1,
            behavior_type: 1,
            request_match_expression: r"POST /ita/intl/zh/passengers/submit\S*( HTTP/1\.1)?".into(),
            request_method: "post".into(),
            body_kind: Some(BodyKind::XmlInForm),
            form_data_field: "xml".into(),
            book_psg_name: "//PASSENGER/NAME".into(),
            book_id_card: "//IDNO".into(),
            book_contract_phone: "/page/CONTACT/PHONE/text()".into(),
            book_cabin: "/page/SEGMENT/@cabin".into(),
            ..Default::default()
        }];
        let classify = [ClassifyRule {
            id: 1,
            expression: r"POST /ita/\S* HTTP/1\.1".into(),
            flight_type: 1,
            operation_type: 1,
        }];
        let rules = DataRules::compile(&[], &classify, &analyze).unwrap();
        let xml = format!("<page><PASSENGER><NAME>A</NAME><IDNO>{ID1}</IDNO></PASSENGER><CONTACT><NAME>C</NAME><PHONE>{PHONE}/1</PHONE></CONTACT><SEGMENT cabin=\"F\"/></page>");
        let body: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("a", "1")
            .append_pair("xml", &xml)
            .finish();
        let m = Masker::new(MaskMode::Hmac, b"k");
        let p = processed(process(
            &rules,
            &m,
            &CookieNames::default(),
            rec(
                "POST /ita/intl/zh/passengers/submit HTTP/1.1",
                "application/x-www-form-urlencoded",
                &body,
            ),
        ));
        let b = p.book.unwrap();
        assert_eq!(b.psg_name, ["A"]);
        assert_eq!(b.id_card, [m.hash(ID1)]);
        assert_eq!(b.contract_phone, m.hash(PHONE));
        assert_eq!(b.cabin, ["F"]);
    }

    #[test]
    fn bad_bodies_still_emitted() {
        for (req, ct, body) in [
            (
                "POST /ita/intl/zh/shop/query HTTP/1.1",
                "application/json",
                "{not json",
            ),
            (
                "POST /B2C40/query/jaxb/direct/query.ao HTTP/1.1",
                "application/x-www-form-urlencoded",
                "json=%7Bbroken",
            ),
            (
                "POST /B2C40/query/jaxb/direct/query.ao HTTP/1.1",
                "application/x-www-form-urlencoded",
                "other=1",
            ),
            (
                "POST /ita/intl/zh/passengers/submit HTTP/1.1",
                "text/xml",
                "<page><unclosed></page>",
            ),
            (
                "POST /ita/intl/zh/passengers/submit HTTP/1.1",
                "text/xml",
                "<!DOCTYPE x [<!ENTITY e 'x'>]><page/>",
            ),
            (
                "POST /B2C40/bookingnew/order/create.ao HTTP/1.1",
                "application/json",
                "",
            ),
            (
                "POST /B2C40/query/jaxb/direct/lowfare.ao HTTP/1.1",
                "application/x-www-form-urlencoded",
                "",
            ),
            ("GET /B2C40/query/jaxb/direct/calendar.ao HTTP/1.1", "", ""),
        ] {
            let p = run(rec(req, ct, body));
            assert_ne!(p.behavior_type, BehaviorType::Other, "{req}");
            assert!(p.query.is_none() && p.book.is_none(), "{req} {body}");
            assert_eq!(p.dep_city, "");
            assert_eq!(to_cs_line(&p).split("#CS#").count(), 19);
        }
    }

    #[test]
    fn nginx_escaped_json_body() {
        let p = run(rec(
            "POST /ita/intl/zh/shop/query HTTP/1.1",
            "application/json",
            r#"{\x22depCity\x22:\x22CAN\x22,\x22arrCity\x22:\x22LHR\x22,\x22country\x22:\x22\xE8\x8B\xB1\x22}"#,
        ));
        let q = p.query.unwrap();
        assert_eq!(
            (q.dep_city.as_str(), q.arr_city.as_str(), q.country.as_str()),
            ("CAN", "LHR", "英")
        );
    }

    #[test]
    fn other_pages_and_no_rule() {
        let p = run(rec(
            "POST /B2C40/member/login.ao HTTP/1.1",
            "application/x-www-form-urlencoded",
            &format!("user={PHONE}&pwd=x"),
        ));
        assert_eq!(
            (p.flight_type, p.behavior_type),
            (FlightType::Other, BehaviorType::Other)
        );
        assert!(p.query.is_none() && p.book.is_none());
        assert_eq!(p.travel_type, TravelType::OneWay);
        // Classified as a query but no analyze rule (method mismatch): no data, still emitted.
        let p = run(rec(
            "GET /B2C40/query/jaxb/direct/query.ao HTTP/1.1",
            "",
            "",
        ));
        assert_eq!(p.behavior_type, BehaviorType::Query);
        assert!(p.query.is_none());
    }

    #[test]
    fn cookies_masked_and_missing() {
        let m = md5();
        let mut r = rec("GET /B2C40/index.html HTTP/1.1", "", "");
        r.http_cookie = crate::dataprocess::mask::tests::SAMPLE_COOKIE.into();
        let p = processed(process(&rules(), &m, &CookieNames::default(), r.clone()));
        assert_eq!(
            p.jsessionid.as_deref(),
            Some("782121159357B98CA6112554CF44321E")
        );
        assert_eq!(
            p.user_id,
            Some("D1279C812D20ABDB6612BA7AF1C5D13C".to_string())
        );
        // A JSESSIONID that is an ID number is masked, like the sample's first one.
        r.http_cookie = format!("JSESSIONID={ID1}").into();
        let p = processed(process(&rules(), &m, &CookieNames::default(), r.clone()));
        assert_eq!(
            p.jsessionid.as_deref(),
            Some("8BA9FAB520C2EF5620BC5303B2CA7978")
        );
        assert_eq!(p.user_id, None);
        r.http_cookie = "JSESSIONID=; sid=1".into();
        let p = processed(process(&rules(), &m, &CookieNames::default(), r.clone()));
        assert_eq!(p.jsessionid, None, "empty value = absent");
        let names = CookieNames {
            jsessionid: "sid".into(),
            user_id: "uid".into(),
        };
        let p = processed(process(&rules(), &m, &names, r));
        assert_eq!(p.jsessionid.as_deref(), Some("1"));
        assert_eq!(to_cs_line(&p).split("#CS#").nth(15), Some("NULL"));
    }

    #[test]
    fn every_output_field_masked() {
        let request = format!("GET /B2C40/index.html?m={PHONE} HTTP/1.1");
        let mut r = rec(&request, "", "");
        r.http_user_agent = format!("UA {ID2}").into();
        r.http_referer = format!("http://x/?id={ID1}").into();
        r.remote_addr = PHONE.into();
        let p = run(r);
        let text = all_text(&p);
        assert!(
            !text.contains(PHONE) && !text.contains(ID1) && !text.contains(ID2),
            "{text}"
        );
    }

    #[test]
    fn last_analyze_rule_wins_and_compile_errors() {
        let base = AnalyzeRule {
            flight_type: 0,
            behavior_type: 0,
            request_method: "POST".into(),
            request_match_expression: "POST /q".into(),
            body_kind: Some(BodyKind::Form),
            query_dep_city: "a".into(),
            ..Default::default()
        };
        let r2 = AnalyzeRule {
            id: 2,
            query_dep_city: "b".into(),
            ..base.clone()
        };
        let r1 = AnalyzeRule {
            id: 1,
            ..base.clone()
        };
        // A rule for another flight type is not a candidate.
        let r3 = AnalyzeRule {
            id: 3,
            flight_type: 1,
            query_dep_city: "c".into(),
            ..base.clone()
        };
        let classify = [ClassifyRule {
            id: 1,
            expression: "POST /q".into(),
            flight_type: 0,
            operation_type: 0,
        }];
        let rules = DataRules::compile(&[], &classify, &[r3, r2, r1]).unwrap();
        let mut rec = rec("POST /q", "", "a=1&b=2&c=3");
        rec.request_method = "post".into();
        let p = processed(process(&rules, &md5(), &CookieNames::default(), rec));
        assert_eq!(p.query.unwrap().dep_city, "2");

        let bad = |r: AnalyzeRule| DataRules::compile(&[], &[], &[r]).unwrap_err().to_string();
        let e = bad(AnalyzeRule {
            id: 7,
            request_match_expression: "(".into(),
            ..base.clone()
        });
        assert!(
            e.contains("analyzerule: row id 7") && e.contains("regex"),
            "{e}"
        );
        let e = bad(AnalyzeRule {
            id: 8,
            body_kind: None,
            ..base.clone()
        });
        assert!(e.contains("row id 8") && e.contains("body_kind"), "{e}");
        let e = bad(AnalyzeRule {
            id: 9,
            body_kind: Some(BodyKind::Json),
            query_dep_city: "depCity".into(),
            ..base.clone()
        });
        assert!(
            e.contains("row id 9")
                && e.contains("query_dep_city")
                && e.contains("must start with `$`"),
            "{e}"
        );
        let e = bad(AnalyzeRule {
            id: 10,
            body_kind: Some(BodyKind::JsonInForm),
            query_dep_city: "$.a".into(),
            ..base.clone()
        });
        assert!(e.contains("form_data_field"), "{e}");
        let e = bad(AnalyzeRule {
            id: 11,
            body_kind: Some(BodyKind::Xml),
            query_dep_city: "/page/[x]".into(),
            ..base
        });
        assert!(e.contains("row id 11"), "{e}");
    }

    #[test]
    fn empty_rules() {
        let p = processed(process(
            &DataRules::empty(),
            &md5(),
            &CookieNames::default(),
            rec("GET /a.css HTTP/1.1", "", ""),
        ));
        assert_eq!(p.behavior_type, BehaviorType::Other);
    }
}
