//! Deterministic synthetic access-log traffic with ground truth.
//!
//! [`generate`] writes `opts.lines` access-log lines (in [`GenOptions::format`]) for an airline
//! booking site, and a CSV ground-truth file `ip,label,kind` with one row per client IP that
//! appears in the log. The same options always give byte-identical output: every random choice
//! comes from one `ChaCha8Rng` seeded with `opts.seed`, and actors are merged in a fixed order.
//!
//! The traffic is a merge of *actors* by the time of their next request (a binary heap keyed by
//! `(time, sequence number)`), so lines are streamed in event-time order and memory stays
//! bounded by the number of concurrently active actors. A few lines (about 0.3 %) are logged up
//! to 2 s earlier than their position, as a real collector would; disorder never exceeds 2 s.
//!
//! Actors (roughly 70 % of the lines are human, 30 % crawler; the numbers of actors scale with
//! `opts.lines`):
//! - `human`: one visitor on its own IP: a stable browser UA and cookie
//!   (`JSESSIONID=<32 hex>; userId4logCookie=<phone>; language=zh_CN`, the userId only when
//!   logged in), 1–3 journeys each made of the search page, 3–8 static assets, 1–4 queries of
//!   that journey (referer = the search page), sometimes (5 %) a booking; 3–40 s think times.
//!   At most 4 distinct (dep, arr, date) triples and ~15 critical requests per visitor.
//! - `human_nat`: 2–4 such visitors sharing one IP concurrently.
//! - `aggressive`: 3–10 queries/s, fixed (often script) UA and cookie, enumerating routes and
//!   dates.
//! - `ua_rotating` / `cookie_rotating`: 0.7–1.5 queries/s with a new UA / JSESSIONID on most
//!   requests.
//! - `distributed`: many IPs of `61.135.0.0/16`, each one query every 10–30 s, together a high
//!   rate on the block.
//! - `slow_regular`: one query every 8–12 s with ±3 % jitter for the whole period, enumerating.
//!
//! Kinds live in disjoint address ranges: crawlers in a few dedicated /16s (47.x, 8.x, 139.x,
//! 61.135, 129.x) that no human uses, humans spread over many other /16s.
//!
//! `malformed_per_mille` of the lines are broken (they still count toward `opts.lines`):
//! truncated (wrong field count / cut JSON), bad time, invalid UTF-8, a bad `remote_addr`, and
//! at most two oversized (> 64 KiB) lines per file.
//!
//! The run stops at exactly `opts.lines` lines, near the end of the period with the default
//! scaling. Each crawler kind has a minimum population (5 IPs, 100 for `distributed`, 3 for
//! `slow_regular`), so in runs below ~100k lines crawlers take a larger share and the lines may
//! end before the period does; when the actors produce too few lines (e.g. a small
//! `opts.humans`), human arrivals continue past the end of the period.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet, VecDeque};
use std::io::{self, BufWriter, Write};
use std::net::Ipv4Addr;
use std::sync::OnceLock;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::event::LogRecord;
use crate::format::time::{civil_from_days, days_from_civil, format_iso8601, format_time_local};
use crate::format::{render_line, LogFormat};

/// Options of [`generate`].
#[derive(Clone, Debug)]
pub struct GenOptions {
    /// Seed of the random generator; same options → same bytes.
    pub seed: u64,
    /// Exact number of log lines to write (malformed ones included).
    pub lines: u64,
    /// Start of the generated period, ms since the Unix epoch.
    pub start_ms: i64,
    /// Length of the generated period, ms. Traffic rates are chosen so that `lines` lines
    /// span about this long.
    pub duration_ms: i64,
    /// Output log format.
    pub format: LogFormat,
    /// Number of human visitors over the period; 0 = scale with `lines` (~70 % human lines).
    pub humans: usize,
    /// Malformed lines per 1000 lines.
    pub malformed_per_mille: u32,
    /// Offset of the rendered times, minutes east of UTC.
    pub tz_offset_minutes: i32,
    /// IP churn traffic instead of the actors: `lines` query requests at a steady rate over
    /// the period, each from a new IP (see [`churn_ip`]); no malformed lines. The truth lists
    /// every IP as `human`.
    pub churn: bool,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            seed: 42,
            lines: 200_000,
            // 2026-11-22T08:00:00+08:00
            start_ms: days_from_civil(2026, 11, 22) * 86_400_000,
            duration_ms: 3_600_000,
            format: LogFormat::Cs,
            humans: 0,
            malformed_per_mille: 1,
            tz_offset_minutes: 480,
            churn: false,
        }
    }
}

/// What [`generate`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GenSummary {
    /// Lines written to the log (always `opts.lines`).
    pub lines: u64,
    /// How many of them are malformed.
    pub malformed: u64,
    /// Truth rows per kind (every kind is listed, possibly with 0).
    pub ips_by_kind: BTreeMap<String, usize>,
}

/// The ground-truth kinds, in the order of [`Kind`].
pub const KINDS: [&str; 7] = [
    "human",
    "human_nat",
    "aggressive",
    "ua_rotating",
    "cookie_rotating",
    "distributed",
    "slow_regular",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Human,
    HumanNat,
    Aggressive,
    UaRotating,
    CookieRotating,
    Distributed,
    SlowRegular,
}

impl Kind {
    fn name(self) -> &'static str {
        KINDS[self as usize]
    }
    fn label(self) -> &'static str {
        match self {
            Kind::Human | Kind::HumanNat => "human",
            _ => "crawler",
        }
    }
    fn is_human(self) -> bool {
        matches!(self, Kind::Human | Kind::HumanNat)
    }
}

// ---------------------------------------------------------------------------------------------
// Static data.

const HOST: &str = "b2c.csair.com";
const SERVERS: [&str; 4] = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"];
const SITE: &str = "http://b2c.csair.com";
const SEARCH_PATH: &str = "/B2C40/modules/bookingnew/main/flightSelectDirect.html";
const FORM_CT: &str = "application/x-www-form-urlencoded; charset=UTF-8";

const DOMESTIC: [&str; 40] = [
    "CAN", "PEK", "PKX", "SHA", "PVG", "SZX", "CTU", "TFU", "CKG", "KMG", "XIY", "HGH", "WUH",
    "CSX", "NKG", "XMN", "TAO", "DLC", "SHE", "HRB", "CGO", "TSN", "URC", "HAK", "SYX", "KWE",
    "NNG", "FOC", "LHW", "TYN", "HET", "KWL", "CGQ", "NGB", "WNZ", "HFE", "KHN", "INC", "XNN",
    "SJW",
];

/// International destinations and their country code; departures are the first 8 domestic.
const INTL: [(&str, &str); 20] = [
    ("LAX", "US"),
    ("SFO", "US"),
    ("JFK", "US"),
    ("YVR", "CA"),
    ("YYZ", "CA"),
    ("SYD", "AU"),
    ("MEL", "AU"),
    ("AKL", "NZ"),
    ("LHR", "GB"),
    ("CDG", "FR"),
    ("FRA", "DE"),
    ("AMS", "NL"),
    ("NRT", "JP"),
    ("KIX", "JP"),
    ("ICN", "KR"),
    ("SIN", "SG"),
    ("BKK", "TH"),
    ("KUL", "MY"),
    ("SGN", "VN"),
    ("DXB", "AE"),
];

/// Static resources loaded after the search page (filtered by the engine).
const ASSETS: [&str; 10] = [
    "/B2C40/dist/main/css/flight.css",
    "/B2C40/dist/main/css/common.css",
    "/B2C40/dist/main/modules/common/requireConfig.js",
    "/B2C40/dist/main/modules/bookingnew/main/flightSelectDirect.js?v=123",
    "/B2C40/dist/main/lib/jquery.min.js?v=123",
    "/B2C40/dist/main/images/common.png",
    "/B2C40/dist/main/images/banner/banner01.jpg",
    "/B2C40/dist/main/images/airline/cz.gif",
    "/favicon.ico",
    "/B2C40/dist/main/fonts/iconfont.woff2",
];

const BROWSER_UAS: [&str; 30] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/129.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:132.0) Gecko/20100101 Firefox/132.0",
    "Mozilla/5.0 (Windows NT 6.1; WOW64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/109.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; WOW64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/108.0.5359.95 Safari/537.36 QIHU 360SE",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/123.0.0.0 Safari/537.36 Core/1.94.253.400 QQBrowser/12.5.5582.400",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/116.0.0.0 Safari/537.36 SE 2.X MetaSr 1.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Safari/605.1.15",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.7; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.50(0x1800323d) NetType/WIFI Language/zh_CN",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 16_7_10 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (iPad; CPU OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; 23127PN0CC Build/UKQ1.230804.001; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/122.0.6261.120 Mobile Safari/537.36 XWEB/1220133 MMWEBSDK/20240404 MMWEBID/8391 MicroMessenger/8.0.49.2600(0x28003133) WeChat/arm64 Weixin NetType/WIFI Language/zh_CN ABI/arm64",
    "Mozilla/5.0 (Linux; Android 14; V2309A) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/118.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; PHB110) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/115.0.5790.168 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; U; Android 12; zh-cn; M2102K1C Build/SKQ1.211006.001) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/100.0.4896.127 Mobile Safari/537.36 XiaoMi/MiuiBrowser/17.7.150505",
    "Mozilla/5.0 (Linux; Android 12; NOH-AN00 Build/HUAWEINOH-AN00) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/99.0.4844.88 Mobile Safari/537.36 HuaweiBrowser/14.0.5.302",
    "Mozilla/5.0 (Linux; U; Android 11; zh-CN; PDEM30 Build/RKQ1.200903.002) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/100.0.4896.58 UCBrowser/16.6.8.1312 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 10; HMA-AL00) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/83.0.4103.106 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 14; SM-S9180) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.81 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/63.0.3239.132 Safari/537.36",
    "Mozilla/5.0 (Windows NT 6.1; Trident/7.0; rv:11.0) like Gecko",
];

const SCRIPT_UAS: [&str; 12] = [
    "python-requests/2.31.0",
    "python-requests/2.28.2",
    "python-urllib3/1.26.18",
    "Go-http-client/1.1",
    "Go-http-client/2.0",
    "curl/7.81.0",
    "curl/8.4.0",
    "Java/1.8.0_381",
    "okhttp/4.9.3",
    "Apache-HttpClient/4.5.14 (Java/17.0.8)",
    "Scrapy/2.11.0 (+https://scrapy.org)",
    "axios/1.6.2",
];

const UA_OS: [&str; 8] = [
    "Windows NT 10.0; Win64; x64",
    "Windows NT 6.1; Win64; x64",
    "Windows NT 6.3; WOW64",
    "Macintosh; Intel Mac OS X 10_15_7",
    "Macintosh; Intel Mac OS X 13_6_1",
    "X11; Linux x86_64",
    "Linux; Android 13; Pixel 7",
    "Linux; Android 12; SM-G9910",
];

const SURNAMES: [(&str, &str); 20] = [
    ("张", "ZHANG"),
    ("王", "WANG"),
    ("李", "LI"),
    ("刘", "LIU"),
    ("陈", "CHEN"),
    ("杨", "YANG"),
    ("黄", "HUANG"),
    ("赵", "ZHAO"),
    ("吴", "WU"),
    ("周", "ZHOU"),
    ("徐", "XU"),
    ("孙", "SUN"),
    ("马", "MA"),
    ("朱", "ZHU"),
    ("胡", "HU"),
    ("郭", "GUO"),
    ("何", "HE"),
    ("林", "LIN"),
    ("罗", "LUO"),
    ("高", "GAO"),
];

const GIVEN_NAMES: [(&str, &str); 24] = [
    ("伟", "WEI"),
    ("芳", "FANG"),
    ("娜", "NA"),
    ("敏", "MIN"),
    ("静", "JING"),
    ("磊", "LEI"),
    ("洋", "YANG"),
    ("艳", "YAN"),
    ("勇", "YONG"),
    ("杰", "JIE"),
    ("军", "JUN"),
    ("强", "QIANG"),
    ("婷", "TING"),
    ("丽", "LI"),
    ("涛", "TAO"),
    ("明", "MING"),
    ("超", "CHAO"),
    ("霞", "XIA"),
    ("平", "PING"),
    ("刚", "GANG"),
    ("子涵", "ZIHAN"),
    ("思远", "SIYUAN"),
    ("欣怡", "XINYI"),
    ("浩然", "HAORAN"),
];

const ID_REGIONS: [&str; 12] = [
    "440106", "440304", "420102", "110105", "310115", "510104", "500103", "330106", "320102",
    "430104", "350203", "610113",
];

const ENTRY_REFERERS: [&str; 4] = [
    "",
    "http://b2c.csair.com/B2C40/index.html",
    "https://www.csair.com/cn/",
    "https://www.baidu.com/link?url=Xz3kQm9aPb7Lw2Ne",
];

/// First octets of human addresses; none of them is used by a crawler range.
const HUMAN_FIRST_OCTETS: [u32; 40] = [
    14, 27, 36, 39, 42, 49, 58, 59, 60, 101, 103, 106, 110, 111, 112, 113, 114, 115, 116, 117, 118,
    119, 120, 121, 122, 123, 124, 125, 171, 175, 180, 182, 183, 202, 210, 211, 218, 219, 220, 223,
];

/// Crawler /16s per kind (first two octets); disjoint from [`HUMAN_FIRST_OCTETS`].
fn crawler_blocks(kind: Kind) -> &'static [(u32, u32)] {
    match kind {
        Kind::Aggressive => &[
            (47, 92),
            (47, 94),
            (47, 96),
            (47, 100),
            (47, 101),
            (47, 102),
        ],
        Kind::UaRotating => &[(8, 210), (8, 218)],
        Kind::CookieRotating => &[(139, 224), (139, 196)],
        Kind::Distributed => &[(61, 135)],
        Kind::SlowRegular => &[(129, 204), (129, 211)],
        Kind::Human | Kind::HumanNat => &[],
    }
}

// ---------------------------------------------------------------------------------------------
// Small random helpers.

type Rand = ChaCha8Rng;

fn pick<'a, T>(rng: &mut Rand, s: &'a [T]) -> &'a T {
    &s[rng.random_range(0..s.len())]
}

fn unit(rng: &mut Rand) -> f64 {
    rng.random::<f64>()
}

fn phone(rng: &mut Rand) -> String {
    format!(
        "1{}{:09}",
        rng.random_range(3..=9u32),
        rng.random_range(0..1_000_000_000u32)
    )
}

fn hex32(rng: &mut Rand) -> String {
    format!("{:016X}{:016X}", rng.random::<u64>(), rng.random::<u64>())
}

/// A synthetic 18-digit resident ID number with a valid ISO 7064 check character.
fn id_card(rng: &mut Rand) -> String {
    const W: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const C: &[u8; 11] = b"10X98765432";
    let day = days_from_civil(1955, 1, 1) + rng.random_range(0..18_250i64);
    let (y, m, d) = civil_from_days(day);
    let mut s = format!(
        "{}{y:04}{m:02}{d:02}{:03}",
        pick(rng, &ID_REGIONS),
        rng.random_range(0..1000u32)
    );
    let sum: u32 = s.bytes().zip(W).map(|(c, w)| (c - b'0') as u32 * w).sum();
    s.push(C[(sum % 11) as usize] as char);
    s
}

fn synth_ua(rng: &mut Rand) -> String {
    let os = pick(rng, &UA_OS);
    let major = rng.random_range(90..=131u32);
    let build = rng.random_range(1000..7000u32);
    let patch = rng.random_range(0..200u32);
    if rng.random_bool(0.15) {
        let ff = rng.random_range(90..=133u32);
        format!("Mozilla/5.0 ({os}; rv:{ff}.0) Gecko/20100101 Firefox/{ff}.0")
    } else {
        format!(
            "Mozilla/5.0 ({os}) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{major}.0.{build}.{patch} Safari/537.36"
        )
    }
}

/// `(yyyyMMdd, yyyy-MM-dd)` of a day count.
fn dates(day: i64) -> (String, String) {
    let (y, m, d) = civil_from_days(day);
    (
        format!("{y:04}{m:02}{d:02}"),
        format!("{y:04}-{m:02}-{d:02}"),
    )
}

fn compact_date(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{y:04}{m:02}{d:02}")
}

fn ip_text(ip: u32) -> String {
    Ipv4Addr::from(ip).to_string()
}

// ---------------------------------------------------------------------------------------------
// Requests.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Query,
    LowFare,
    Calendar,
    Intl,
}

#[derive(Clone, Copy, Debug)]
struct Journey {
    dep: &'static str,
    arr: &'static str,
    /// Country of an international destination; `""` when domestic.
    country: &'static str,
    day: i64,
    ret_day: Option<i64>,
    adults: u8,
    children: u8,
}

impl Journey {
    fn intl(&self) -> bool {
        !self.country.is_empty()
    }

    /// Path and query of the search page for this journey.
    fn search_url(&self) -> String {
        let (_, d1) = dates(self.day);
        let t = if self.ret_day.is_some() { 'R' } else { 'S' };
        let d2 = self
            .ret_day
            .map(|r| format!("&d2={}", dates(r).1))
            .unwrap_or_default();
        format!(
            "{SEARCH_PATH}?t={t}&c1={}&c2={}&d1={d1}{d2}&at={}&ct={}&it=0",
            self.dep, self.arr, self.adults, self.children
        )
    }
}

fn route(rng: &mut Rand, intl: bool) -> (&'static str, &'static str, &'static str) {
    if intl {
        let dep = DOMESTIC[rng.random_range(0..8)];
        let (arr, country) = *pick(rng, &INTL);
        (dep, arr, country)
    } else {
        let dep = *pick(rng, &DOMESTIC);
        let mut arr = *pick(rng, &DOMESTIC);
        while arr == dep {
            arr = *pick(rng, &DOMESTIC);
        }
        (dep, arr, "")
    }
}

/// A request's method, request line, content type and body.
struct Req {
    method: &'static str,
    request: String,
    content_type: &'static str,
    body: String,
}

impl Req {
    /// This request's record at `t` (`times`: its `time_iso8601` and `time_local`) on
    /// `server`, the client's fields left for the caller.
    fn record(
        self,
        t: i64,
        times: (String, String),
        server: usize,
        format: LogFormat,
    ) -> LogRecord<'static> {
        LogRecord {
            time_ms: t,
            time_iso8601: times.0.into(),
            time_local: times.1.into(),
            request: self.request.into(),
            request_method: self.method.into(),
            content_type: self.content_type.into(),
            request_body: self.body.into(),
            server_addr: SERVERS[server].into(),
            // Combined lines follow `combined::NGINX_LOG_FORMAT` exactly (no leading $host).
            host: if format == LogFormat::Combined {
                ""
            } else {
                HOST
            }
            .into(),
            ..LogRecord::default()
        }
    }
}

/// The JSON of a `query.ao` request, in the style of the reference line (`", "` separators).
/// [`query_ao_body`] is its fast encoded form.
#[cfg(test)]
fn query_ao_json(dep: &str, arr: &str, date: &str, a: u8, c: u8) -> String {
    format!(
        "{{\"depcity\":\"{dep}\", \"arrcity\":\"{arr}\", \"flightdate\":\"{date}\", \
         \"adultnum\":\"{a}\", \"childnum\":\"{c}\", {QUERY_AO_TAIL}"
    )
}

const QUERY_AO_TAIL: &str = "\"infantnum\":\"0\", \"cabinorder\":\"0\", \"airline\":\"1\", \
     \"flytype\":\"0\", \"international\":\"0\", \"action\":\"0\", \"segtype\":\"1\", \
     \"cache\":\"0\", \"preUrl\":\"\", \"isMember\":\"\"}";

/// `json=` + `form_urlencoded::byte_serialize(query_ao_json(..))`, fast: the values are
/// alphanumeric (the encoding keeps them as they are), so only the constant parts are encoded,
/// once.
fn query_ao_body(dep: &str, arr: &str, date: &str, a: u8, c: u8) -> String {
    static PARTS: OnceLock<[String; 6]> = OnceLock::new();
    let p = PARTS.get_or_init(|| {
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        [
            enc("{\"depcity\":\""),
            enc("\", \"arrcity\":\""),
            enc("\", \"flightdate\":\""),
            enc("\", \"adultnum\":\""),
            enc("\", \"childnum\":\""),
            enc(&format!("\", {QUERY_AO_TAIL}")),
        ]
    });
    debug_assert!([dep, arr, date]
        .iter()
        .all(|v| v.bytes().all(|b| b.is_ascii_alphanumeric())));
    let mut body = String::with_capacity(340);
    body.push_str("json=");
    for (part, value) in p[..5].iter().zip([dep, arr, date]) {
        body.push_str(part);
        body.push_str(value);
    }
    body.push_str(&p[3]);
    body.push((b'0' + a) as char);
    body.push_str(&p[4]);
    body.push((b'0' + c) as char);
    body.push_str(&p[5]);
    body
}

fn query_req(ep: Endpoint, j: &Journey, ret: bool) -> Req {
    let (dep, arr, day) = match (ret, j.ret_day) {
        (true, Some(r)) => (j.arr, j.dep, r),
        _ => (j.dep, j.arr, j.day),
    };
    let date = compact_date(day);
    let (a, c) = (j.adults, j.children);
    match ep {
        Endpoint::Query => Req {
            method: "POST",
            request: "POST /B2C40/query/jaxb/direct/query.ao HTTP/1.1".into(),
            content_type: FORM_CT,
            body: query_ao_body(dep, arr, &date, a, c),
        },
        Endpoint::LowFare => Req {
            method: "POST",
            request: "POST /B2C40/query/jaxb/direct/lowfare.ao HTTP/1.1".into(),
            content_type: FORM_CT,
            body: format!(
                "depCity={dep}&arrCity={arr}&flightDate={date}&adultNum={a}&childNum={c}&infantNum=0"
            ),
        },
        Endpoint::Calendar => Req {
            method: "GET",
            request: format!(
                "GET /B2C40/query/jaxb/direct/calendar.ao?depCity={dep}&arrCity={arr}&flightDate={date} HTTP/1.1"
            ),
            content_type: "",
            body: String::new(),
        },
        Endpoint::Intl => Req {
            method: "POST",
            request: "POST /ita/intl/zh/shop/query HTTP/1.1".into(),
            content_type: "application/json",
            body: format!(
                "{{\"depCity\":\"{dep}\",\"arrCity\":\"{arr}\",\"flightDate\":\"{date}\",\
                 \"adultNum\":\"{a}\",\"childNum\":\"{c}\",\"infantNum\":\"0\",\"country\":\"{}\"}}",
                if j.country.is_empty() { "CN" } else { j.country }
            ),
        },
    }
}

fn book_req(rng: &mut Rand, j: &Journey, phone_no: &str) -> Req {
    let date = compact_date(j.day);
    let n = j.adults.max(1) as usize;
    let (cs, cp) = *pick(rng, &SURNAMES);
    let (cg, cgp) = *pick(rng, &GIVEN_NAMES);
    if !j.intl() {
        let flight = format!("CZ{}", rng.random_range(3101..3999u32));
        let mut pax = Vec::with_capacity(n);
        for i in 0..n {
            let (s, g) = if i == 0 {
                (cs, cg)
            } else {
                (pick(rng, &SURNAMES).0, pick(rng, &GIVEN_NAMES).0)
            };
            pax.push(format!(
                "{{\"firstName\":\"{s}\",\"name\":\"{g}\",\"type\":\"ADT\",\"idType\":\"NI\",\"idCard\":\"{}\"}}",
                id_card(rng)
            ));
        }
        let cabin = *pick(rng, &["Y", "Y", "Y", "B", "M", "J"]);
        Req {
            method: "POST",
            request: "POST /B2C40/bookingnew/order/create.ao HTTP/1.1".into(),
            content_type: "application/json",
            body: format!(
                "{{\"bookUserId\":\"{phone_no}\",\"passengers\":[{}],\"contact\":{{\"name\":\"{cs}{cg}\",\"phone\":\"{phone_no}\"}},\
                 \"segments\":[{{\"depCity\":\"{}\",\"arrCity\":\"{}\",\"flightDate\":\"{date}\",\"flightNo\":\"{flight}\",\"cabin\":\"{cabin}\"}}]}}",
                pax.join(","),
                j.dep,
                j.arr
            ),
        }
    } else {
        let flight = format!("CZ{}", rng.random_range(301..399u32));
        let mut body = format!("<page><BOOKUSERID>{phone_no}</BOOKUSERID>");
        for i in 0..n {
            let (sp, gp) = if i == 0 {
                (cp, cgp)
            } else {
                (pick(rng, &SURNAMES).1, pick(rng, &GIVEN_NAMES).1)
            };
            let (idtype, idno) = if rng.random_bool(0.25) {
                ("NI", id_card(rng))
            } else {
                ("PP", format!("E{:08}", rng.random_range(0..100_000_000u32)))
            };
            body.push_str(&format!(
                "<PASSENGER><NAME>{sp}/{gp}</NAME><TYPE>ADT</TYPE><IDTYPE>{idtype}</IDTYPE><IDNO>{idno}</IDNO></PASSENGER>"
            ));
        }
        body.push_str(&format!(
            "<CONTACT><NAME>{cs}{cg}</NAME><PHONE>{phone_no}</PHONE></CONTACT>\
             <SEGMENT><DEPCITY>{}</DEPCITY><ARRCITY>{}</ARRCITY><DATE>{date}</DATE><FLIGHTNO>{flight}</FLIGHTNO><CABIN>Y</CABIN></SEGMENT>\
             <SEGTYPE>{}</SEGTYPE></page>",
            j.dep,
            j.arr,
            if j.ret_day.is_some() { "R" } else { "S" }
        ));
        Req {
            method: "POST",
            request: "POST /ita/intl/zh/passengers/submit HTTP/1.1".into(),
            content_type: "text/xml",
            body,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Actors.

#[derive(Clone, Copy, Debug)]
enum What {
    Search,
    Asset(u8),
    Query { ep: Endpoint, ret: bool },
    Book,
}

struct Actor {
    kind: Kind,
    ip: u32,
    ip_text: String,
    ua: String,
    cookie: String,
    /// Logged-in user's phone (humans), also the booking user.
    phone: Option<String>,
    journey: Journey,
    /// Full URL of the current search page (humans): the referer of its assets and queries.
    search_ref: String,
    /// Referer of the next search page (humans); fixed referer (aggressive).
    referer: String,
    pending: VecDeque<(i64, What)>,
    journeys_left: u8,
    queries_left: u8,
    book_pending: bool,
    ret_counted: bool,
    /// Distinct (dep, arr, date) triples queried so far (humans, upper bound).
    triples: u8,
    /// Crawlers: last time of activity, interval bounds, preferred endpoint, enumeration state.
    end_ms: i64,
    interval_ms: f64,
    pref_ep: Endpoint,
    route: (&'static str, &'static str, &'static str),
    route_ep: Endpoint,
    enum_day: i64,
    emitted: bool,
}

const NO_JOURNEY: Journey = Journey {
    dep: "",
    arr: "",
    country: "",
    day: 0,
    ret_day: None,
    adults: 1,
    children: 0,
};

impl Actor {
    fn blank(kind: Kind, ip: u32) -> Actor {
        Actor {
            kind,
            ip,
            ip_text: ip_text(ip),
            ua: String::new(),
            cookie: String::new(),
            phone: None,
            journey: NO_JOURNEY,
            search_ref: String::new(),
            referer: String::new(),
            pending: VecDeque::new(),
            journeys_left: 0,
            queries_left: 0,
            book_pending: false,
            ret_counted: false,
            triples: 0,
            end_ms: i64::MAX,
            interval_ms: 1000.0,
            pref_ep: Endpoint::Query,
            route: ("", "", ""),
            route_ep: Endpoint::Query,
            enum_day: i64::MAX,
            emitted: false,
        }
    }

    fn new_human(rng: &mut Rand, kind: Kind, ip: u32, t: i64, base_day: i64) -> Actor {
        let mut a = Actor::blank(kind, ip);
        a.ua = pick(rng, &BROWSER_UAS).to_string();
        let logged_in = rng.random_bool(0.45);
        a.phone = logged_in.then(|| phone(rng));
        a.cookie = match &a.phone {
            Some(p) => format!(
                "JSESSIONID={}; userId4logCookie={p}; language=zh_CN",
                hex32(rng)
            ),
            None => format!("JSESSIONID={}; language=zh_CN", hex32(rng)),
        };
        a.referer = pick(rng, &ENTRY_REFERERS).to_string();
        a.journeys_left = rng.random_range(1..=3);
        a.start_journey(rng, t, base_day);
        a
    }

    /// Human: plans the search page, its assets and the first query at `t`.
    fn start_journey(&mut self, rng: &mut Rand, t: i64, base_day: i64) {
        let intl = rng.random_bool(0.15);
        let (dep, arr, country) = route(rng, intl);
        let u = unit(rng);
        let day = base_day + 1 + (59.0 * u * u) as i64;
        let ret_day = rng
            .random_bool(0.3)
            .then(|| day + rng.random_range(2..=10i64));
        let adults = *pick(rng, &[1u8, 1, 1, 1, 1, 1, 1, 2, 2, 3]);
        let children = if rng.random_bool(0.1) { 1 } else { 0 };
        self.journey = Journey {
            dep,
            arr,
            country,
            day,
            ret_day,
            adults,
            children,
        };
        if !self.search_ref.is_empty() {
            self.referer = std::mem::take(&mut self.search_ref);
        }
        self.search_ref = format!("{SITE}{}", self.journey.search_url());
        self.triples += 1;
        self.ret_counted = false;
        self.journeys_left -= 1;
        self.queries_left = rng.random_range(0..=3);
        self.book_pending = rng.random_bool(0.05);

        self.pending.push_back((t, What::Search));
        let mut ta = t + rng.random_range(60..250i64);
        // 3–8 distinct assets.
        let mut loaded = 0u32;
        for _ in 0..rng.random_range(3..=8) {
            let mut i = rng.random_range(0..ASSETS.len());
            while loaded & (1 << i) != 0 {
                i = (i + 1) % ASSETS.len();
            }
            loaded |= 1 << i;
            self.pending.push_back((ta, What::Asset(i as u8)));
            ta += rng.random_range(10..300i64);
        }
        let ep = if intl {
            Endpoint::Intl
        } else {
            Endpoint::Query
        };
        let tq = ta + rng.random_range(200..1500i64);
        self.pending.push_back((tq, What::Query { ep, ret: false }));
    }

    /// Plans the next request after `now`; false when the actor is done.
    fn plan(&mut self, rng: &mut Rand, now: i64, base_day: i64) -> bool {
        if self.kind.is_human() {
            self.plan_human(rng, now, base_day)
        } else {
            self.plan_crawler(rng, now, base_day)
        }
    }

    fn plan_human(&mut self, rng: &mut Rand, now: i64, base_day: i64) -> bool {
        let think = |rng: &mut Rand| {
            let u = unit(rng);
            3000 + (37_000.0 * u * u) as i64
        };
        if self.queries_left > 0 {
            self.queries_left -= 1;
            let j = self.journey;
            let mut ret = false;
            if j.ret_day.is_some() && rng.random_bool(0.4) {
                if self.ret_counted {
                    ret = true;
                } else if self.triples < 4 {
                    self.triples += 1;
                    self.ret_counted = true;
                    ret = true;
                }
            }
            let ep = if j.intl() {
                Endpoint::Intl
            } else {
                match rng.random_range(0..4) {
                    0 => Endpoint::LowFare,
                    1 => Endpoint::Calendar,
                    _ => Endpoint::Query,
                }
            };
            let t = now + think(rng);
            self.pending.push_back((t, What::Query { ep, ret }));
        } else if self.book_pending {
            self.book_pending = false;
            let t = now + think(rng);
            self.pending.push_back((t, What::Book));
        } else if self.journeys_left > 0 {
            let t = now + think(rng);
            self.start_journey(rng, t, base_day);
        } else {
            return false;
        }
        true
    }

    fn plan_crawler(&mut self, rng: &mut Rand, now: i64, base_day: i64) -> bool {
        let gap = match self.kind {
            Kind::Aggressive => self.interval_ms * (0.3 + 1.4 * unit(rng)),
            Kind::UaRotating | Kind::CookieRotating => self.interval_ms * (0.5 + unit(rng)),
            Kind::Distributed => {
                (self.interval_ms * (0.7 + 0.6 * unit(rng))).clamp(10_000.0, 30_000.0)
            }
            _ => self.interval_ms * (0.97 + 0.06 * unit(rng)),
        };
        let t = now + (gap as i64).max(1);
        if t > self.end_ms {
            return false;
        }
        let ep = self.next_crawler_journey(rng, base_day);
        self.pending.push_back((t, What::Query { ep, ret: false }));
        true
    }

    fn crawler_ep(&self, rng: &mut Rand) -> Endpoint {
        if rng.random_bool(0.75) {
            self.pref_ep
        } else {
            *pick(
                rng,
                &[
                    Endpoint::Query,
                    Endpoint::LowFare,
                    Endpoint::Calendar,
                    Endpoint::Intl,
                ],
            )
        }
    }

    /// Chooses the journey of the crawler's next query; returns its endpoint.
    fn next_crawler_journey(&mut self, rng: &mut Rand, base_day: i64) -> Endpoint {
        let adults = 1;
        match self.kind {
            Kind::Aggressive | Kind::SlowRegular => {
                self.enum_day = self.enum_day.saturating_add(1);
                if self.enum_day > 60 || rng.random_bool(0.01) {
                    self.route_ep = self.crawler_ep(rng);
                    self.route = route(rng, self.route_ep == Endpoint::Intl);
                    self.enum_day = 1;
                }
                let (dep, arr, country) = self.route;
                self.journey = Journey {
                    dep,
                    arr,
                    country,
                    day: base_day + self.enum_day,
                    ret_day: None,
                    adults,
                    children: 0,
                };
                self.route_ep
            }
            _ => {
                let ep = self.crawler_ep(rng);
                let (dep, arr, country) = route(rng, ep == Endpoint::Intl);
                self.journey = Journey {
                    dep,
                    arr,
                    country,
                    day: base_day + rng.random_range(1..=60i64),
                    ret_day: None,
                    adults,
                    children: 0,
                };
                ep
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Crawler population.

struct CrawlerPlan {
    kind: Kind,
    /// Share of `lines`.
    share: f64,
    min_ips: usize,
    max_ips: usize,
    /// Rates in requests per second.
    r_min: f64,
    r_nom: f64,
    r_max: f64,
    /// Active time in seconds (`None` = the whole period).
    dur: Option<(f64, f64)>,
}

const CRAWLER_PLANS: [CrawlerPlan; 5] = [
    CrawlerPlan {
        kind: Kind::Aggressive,
        share: 0.12,
        min_ips: 5,
        max_ips: 5000,
        r_min: 3.0,
        r_nom: 6.5,
        r_max: 10.0,
        dur: Some((600.0, 1200.0)),
    },
    CrawlerPlan {
        kind: Kind::UaRotating,
        share: 0.05,
        min_ips: 5,
        max_ips: 5000,
        r_min: 0.7,
        r_nom: 1.1,
        r_max: 1.5,
        dur: Some((600.0, 2400.0)),
    },
    CrawlerPlan {
        kind: Kind::CookieRotating,
        share: 0.05,
        min_ips: 5,
        max_ips: 5000,
        r_min: 0.7,
        r_nom: 1.1,
        r_max: 1.5,
        dur: Some((600.0, 2400.0)),
    },
    CrawlerPlan {
        kind: Kind::Distributed,
        share: 0.06,
        min_ips: 100,
        max_ips: 50_000,
        r_min: 1.0 / 30.0,
        r_nom: 1.0 / 20.0,
        r_max: 1.0 / 10.0,
        dur: Some((600.0, 1800.0)),
    },
    CrawlerPlan {
        kind: Kind::SlowRegular,
        share: 0.02,
        min_ips: 3,
        max_ips: 5000,
        r_min: 1.0 / 12.0,
        r_nom: 1.0 / 10.0,
        r_max: 1.0 / 8.0,
        dur: None,
    },
];

/// Expected lines of one human visitor (2 journeys × (page + 5.5 assets + 2.5 queries + 0.05
/// bookings)), measured ≈ 18.
const LINES_PER_HUMAN: f64 = 18.1;
/// Humans per IP arrival: 93 % single, 7 % NAT groups of 2–4.
const NAT_SHARE: f64 = 0.07;
const HUMANS_PER_ARRIVAL: f64 = (1.0 - NAT_SHARE) + NAT_SHARE * 3.0;
/// Human arrivals begin this long before the start, so the period starts in a steady state.
const WARMUP_MS: i64 = 300_000;
const SPAWNER: usize = usize::MAX;
const OVERSIZE_MAX: u32 = 2;

/// `format_iso8601` and `format_time_local` of consecutive times, rendered once per second.
struct TimeCache {
    offset: i32,
    sec: i64,
    local: String,
    /// `format_iso8601` of the whole second, split before its 6-character `±hh:mm` offset.
    iso_head: String,
    iso_offset: String,
}

impl TimeCache {
    fn new(offset: i32) -> TimeCache {
        TimeCache {
            offset,
            sec: i64::MIN,
            local: String::new(),
            iso_head: String::new(),
            iso_offset: String::new(),
        }
    }

    /// `(format_iso8601(ms, offset), format_time_local(ms, offset))`.
    fn get(&mut self, ms: i64) -> (String, String) {
        let sec = ms.div_euclid(1000);
        if sec != self.sec {
            self.sec = sec;
            self.local = format_time_local(sec * 1000, self.offset);
            let mut iso = format_iso8601(sec * 1000, self.offset);
            self.iso_offset = iso.split_off(iso.len() - 6);
            self.iso_head = iso;
        }
        let milli = ms.rem_euclid(1000) as u32;
        let mut iso = String::with_capacity(self.iso_head.len() + 10);
        iso.push_str(&self.iso_head);
        if milli != 0 {
            iso.push('.');
            for d in [milli / 100, milli / 10 % 10, milli % 10] {
                iso.push(char::from(b'0' + d as u8));
            }
        }
        iso.push_str(&self.iso_offset);
        (iso, self.local.clone())
    }
}

// ---------------------------------------------------------------------------------------------
// The generator.

struct Gen<'o> {
    opts: &'o GenOptions,
    rng: Rand,
    actors: Vec<Actor>,
    free: Vec<usize>,
    heap: BinaryHeap<Reverse<(i64, u64, usize)>>,
    seq: u64,
    used_ips: HashSet<u32>,
    seen: Vec<(u32, Kind)>,
    base_day: i64,
    conns: [u32; 4],
    times: TimeCache,
    arrival_mean_ms: f64,
    oversize: u32,
}

impl<'o> Gen<'o> {
    fn new(opts: &'o GenOptions) -> Gen<'o> {
        let local = opts.start_ms + opts.tz_offset_minutes as i64 * 60_000;
        let mut g = Gen {
            opts,
            rng: ChaCha8Rng::seed_from_u64(opts.seed),
            actors: Vec::new(),
            free: Vec::new(),
            heap: BinaryHeap::new(),
            seq: 0,
            used_ips: HashSet::new(),
            seen: Vec::new(),
            base_day: local.div_euclid(86_400_000),
            conns: [120, 140, 100, 160],
            times: TimeCache::new(opts.tz_offset_minutes),
            arrival_mean_ms: 1000.0,
            oversize: 0,
        };
        let crawler_lines = g.plan_crawlers();
        let lines = opts.lines as f64;
        let dur = opts.duration_ms.max(1000) as f64;
        let visitors = if opts.humans > 0 {
            opts.humans as f64
        } else {
            let budget = (1.02 * lines - crawler_lines).max(0.4 * lines).max(1.0);
            budget / LINES_PER_HUMAN
        };
        g.arrival_mean_ms = (dur / (visitors / HUMANS_PER_ARRIVAL)).max(1.0);
        let first = opts.start_ms - WARMUP_MS;
        g.push(first, SPAWNER);
        g
    }

    fn push(&mut self, t: i64, slot: usize) {
        self.seq += 1;
        self.heap.push(Reverse((t, self.seq, slot)));
    }

    fn add_actor(&mut self, a: Actor) {
        let t = a
            .pending
            .front()
            .map(|p| p.0)
            .expect("a new actor has a request");
        let slot = match self.free.pop() {
            Some(s) => {
                self.actors[s] = a;
                s
            }
            None => {
                self.actors.push(a);
                self.actors.len() - 1
            }
        };
        self.push(t, slot);
    }

    fn alloc_ip(&mut self, kind: Kind) -> u32 {
        loop {
            let ip = if kind.is_human() {
                let a = *pick(&mut self.rng, &HUMAN_FIRST_OCTETS);
                (a << 24) | self.rng.random_range(0..1u32 << 24)
            } else {
                let (a, b) = *pick(&mut self.rng, crawler_blocks(kind));
                (a << 24) | (b << 16) | self.rng.random_range(0..1u32 << 16)
            };
            let last = ip & 0xff;
            if last != 0 && last != 255 && self.used_ips.insert(ip) {
                return ip;
            }
        }
    }

    /// Creates every crawler; returns their expected number of lines.
    fn plan_crawlers(&mut self) -> f64 {
        let lines = self.opts.lines as f64;
        let start = self.opts.start_ms;
        let d = self.opts.duration_ms.max(1000) as f64 / 1000.0;
        let mut expected = 0.0;
        for p in &CRAWLER_PLANS {
            let budget = lines * p.share;
            let per_ip_nominal = p.r_nom * p.dur.map_or(0.95 * d, |(a, b)| (a + b) / 2.0);
            let n = ((budget / per_ip_nominal).round() as usize).clamp(p.min_ips, p.max_ips);
            let target = budget / n as f64;
            // The distributed campaign runs in [0.1 d, 0.7 d] (or all of a short period).
            let (w0, w1) = match p.kind {
                Kind::Distributed => (0.1 * d, (0.1 * d + (0.6 * d).max(1500.0)).min(d)),
                _ => (0.0, 0.85 * d),
            };
            let w0 = if w1 - w0 < 600.0 { 0.0 } else { w0 };
            for _ in 0..n {
                let rng = &mut self.rng;
                let (t0, secs, rate) = match p.dur {
                    Some((lo, hi)) => {
                        let fit = (target / p.r_nom).clamp(lo, hi);
                        let secs = (fit * (0.9 + 0.4 * unit(rng))).clamp(lo, hi).min(d);
                        let rate =
                            (target / secs * (0.85 + 0.3 * unit(rng))).clamp(p.r_min, p.r_max);
                        let room = (w1 - secs - w0).max(0.0);
                        (w0 + room * unit(rng), secs, rate)
                    }
                    None => {
                        let t0 = 0.05 * d * unit(rng);
                        let rate = p.r_min + (p.r_max - p.r_min) * unit(rng);
                        (t0, d - t0, rate)
                    }
                };
                expected += secs * rate;
                let ip = self.alloc_ip(p.kind);
                let mut a = self.new_crawler(p.kind, ip, rate);
                let t = start + (t0 * 1000.0) as i64;
                a.end_ms = t + (secs * 1000.0) as i64;
                let ep = a.next_crawler_journey(&mut self.rng, self.base_day);
                a.pending.push_back((t, What::Query { ep, ret: false }));
                self.add_actor(a);
            }
        }
        expected
    }

    fn new_crawler(&mut self, kind: Kind, ip: u32, rate: f64) -> Actor {
        let rng = &mut self.rng;
        let mut a = Actor::blank(kind, ip);
        a.interval_ms = 1000.0 / rate;
        a.pref_ep = *pick(
            rng,
            &[
                Endpoint::Query,
                Endpoint::Query,
                Endpoint::Query,
                Endpoint::LowFare,
                Endpoint::Calendar,
                Endpoint::Intl,
            ],
        );
        match kind {
            Kind::Aggressive => {
                a.ua = if rng.random_bool(0.7) {
                    pick(rng, &SCRIPT_UAS).to_string()
                } else {
                    pick(rng, &BROWSER_UAS).to_string()
                };
                a.cookie = if rng.random_bool(0.6) {
                    format!("JSESSIONID={}", hex32(rng))
                } else {
                    String::new()
                };
                a.referer = if rng.random_bool(0.5) {
                    format!("{SITE}{SEARCH_PATH}")
                } else {
                    String::new()
                };
            }
            Kind::UaRotating => {
                a.ua = synth_ua(rng);
                a.cookie = format!("JSESSIONID={}; language=zh_CN", hex32(rng));
            }
            Kind::CookieRotating => {
                a.ua = pick(rng, &BROWSER_UAS).to_string();
                a.cookie = format!("JSESSIONID={}; language=zh_CN", hex32(rng));
            }
            Kind::Distributed => {
                a.ua = if rng.random_bool(0.8) {
                    pick(rng, &BROWSER_UAS).to_string()
                } else {
                    synth_ua(rng)
                };
                a.cookie = if rng.random_bool(0.7) {
                    format!("JSESSIONID={}; language=zh_CN", hex32(rng))
                } else {
                    String::new()
                };
            }
            _ => {
                a.ua = pick(rng, &BROWSER_UAS).to_string();
                a.cookie = format!("JSESSIONID={}; language=zh_CN", hex32(rng));
            }
        }
        a
    }

    /// Spawns the next human arrival (one visitor, or a NAT group) at `t`.
    fn spawn(&mut self, t: i64) {
        let group = if self.rng.random_bool(NAT_SHARE) {
            self.rng.random_range(2..=4)
        } else {
            1
        };
        let kind = if group > 1 {
            Kind::HumanNat
        } else {
            Kind::Human
        };
        let ip = self.alloc_ip(kind);
        for i in 0..group {
            let ti = if i == 0 {
                t
            } else {
                t + self.rng.random_range(0..120_000i64)
            };
            let a = Actor::new_human(&mut self.rng, kind, ip, ti, self.base_day);
            self.add_actor(a);
        }
        let u = unit(&mut self.rng);
        let gap = (-(1.0 - u).ln() * self.arrival_mean_ms).max(1.0) as i64;
        self.push(t + gap, SPAWNER);
    }

    /// Builds the record of `what` by actor `slot` at time `t`.
    fn record(&mut self, slot: usize, what: What, t: i64) -> LogRecord<'static> {
        let rng = &mut self.rng;
        let a = &mut self.actors[slot];
        // Per-request identity changes of the rotating crawlers.
        match a.kind {
            Kind::UaRotating if rng.random_bool(0.85) => a.ua = synth_ua(rng),
            Kind::CookieRotating if rng.random_bool(0.9) => {
                a.cookie = format!("JSESSIONID={}; language=zh_CN", hex32(rng))
            }
            _ => {}
        }
        let human = a.kind.is_human();
        let (req, referer, status, bytes, rt_ms) = match what {
            What::Search => {
                let req = Req {
                    method: "GET",
                    request: format!("GET {} HTTP/1.1", &a.search_ref[SITE.len()..]),
                    content_type: "",
                    body: String::new(),
                };
                let status = if rng.random_bool(0.05) { 302 } else { 200 };
                (
                    req,
                    a.referer.clone(),
                    status,
                    rng.random_range(8_000..60_000u64),
                    rng.random_range(20..300u32),
                )
            }
            What::Asset(i) => {
                let path = ASSETS[i as usize];
                let req = Req {
                    method: "GET",
                    request: format!("GET {path} HTTP/1.1"),
                    content_type: "",
                    body: String::new(),
                };
                let x = rng.random_range(0..100u32);
                let status = if x < 85 {
                    200
                } else if x < 98 {
                    304
                } else {
                    404
                };
                let bytes = if status == 200 {
                    rng.random_range(300..150_000u64)
                } else {
                    0
                };
                (
                    req,
                    a.search_ref.clone(),
                    status,
                    bytes,
                    rng.random_range(5..60u32),
                )
            }
            What::Query { ep, ret } => {
                let req = query_req(ep, &a.journey, ret);
                let referer = if human {
                    a.search_ref.clone()
                } else if a.kind == Kind::Aggressive {
                    a.referer.clone()
                } else {
                    format!("{SITE}{}", a.journey.search_url())
                };
                let x = rng.random_range(0..1000u32);
                let status = match x {
                    0..940 => 200,
                    940..960 => 302,
                    960..975 => 404,
                    975..993 => 500,
                    _ => 502,
                };
                (
                    req,
                    referer,
                    status,
                    rng.random_range(1_500..45_000u64),
                    rng.random_range(50..800u32),
                )
            }
            What::Book => {
                let p = a.phone.clone().unwrap_or_else(|| phone(rng));
                let req = book_req(rng, &a.journey, &p);
                let referer = if a.journey.intl() {
                    format!("{SITE}/ita/intl/zh/passengers")
                } else {
                    format!("{SITE}/B2C40/modules/bookingnew/main/passengerInfo.html")
                };
                let status = if rng.random_bool(0.97) { 200 } else { 500 };
                (
                    req,
                    referer,
                    status,
                    rng.random_range(300..3_000u64),
                    rng.random_range(100..800u32),
                )
            }
        };
        let server = rng.random_range(0..4usize);
        let c = &mut self.conns[server];
        *c = (*c as i64 + rng.random_range(-8..=8i64)).clamp(1, 500) as u32;
        LogRecord {
            http_referer: referer.into(),
            remote_addr: a.ip_text.clone().into(),
            http_user_agent: a.ua.clone().into(),
            http_cookie: a.cookie.clone().into(),
            connections_active: Some(*c),
            status: Some(status),
            body_bytes_sent: Some(bytes),
            request_time: Some(rt_ms as f64 / 1000.0),
            ..req.record(t, self.times.get(t), server, self.opts.format)
        }
    }

    /// Renders `rec` broken in one of several ways; returns the line bytes.
    fn malformed(&mut self, mut rec: LogRecord<'static>) -> (Vec<u8>, bool) {
        let format = self.opts.format;
        let mut variant = self.rng.random_range(0..100u32);
        if variant >= 96 && self.oversize >= OVERSIZE_MAX {
            variant = self.rng.random_range(0..96);
        }
        match variant {
            // Truncated line.
            0..30 => {
                let line = render_line(format, &rec);
                let cut = match format {
                    LogFormat::Cs => {
                        let keep = self.rng.random_range(2..=9);
                        let fields: Vec<&str> = line.split("#CS#").take(keep).collect();
                        return (fields.join("#CS#").into_bytes(), true);
                    }
                    LogFormat::Combined => {
                        // Cut inside the quoted request line.
                        let q = line.find('"').map_or(line.len() / 2, |q| q + 1);
                        q + self.rng.random_range(0..rec.request.len().max(1))
                    }
                    LogFormat::Json => line.len() / 4 + self.rng.random_range(0..line.len() / 2),
                };
                let mut cut = cut.min(line.len() - 1);
                while !line.is_char_boundary(cut) {
                    cut -= 1;
                }
                (line.as_bytes()[..cut].to_vec(), true)
            }
            // Bad time: both time fields unparseable.
            30..50 => {
                let bad_iso = *pick(
                    &mut self.rng,
                    &[
                        "2026-11-22T25:61:00+08:00",
                        "2026-13-01T08:00:00+08:00",
                        "2026/11/22 08:00:00",
                        "1795312800",
                    ],
                );
                let bad_local = *pick(
                    &mut self.rng,
                    &[
                        "22/Nov/2026:25:61:00 +0800",
                        "22/Foo/2026:08:00:00 +0800",
                        "2026-11-22 08:00:00",
                    ],
                );
                let line = render_line(format, &rec)
                    .replacen(&*rec.time_iso8601, bad_iso, 1)
                    .replacen(&*rec.time_local, bad_local, 1);
                (line.into_bytes(), true)
            }
            // Invalid UTF-8 inside the user agent.
            50..72 => {
                let line = render_line(format, &rec);
                let at = match line.find(&*rec.http_user_agent) {
                    Some(p) if !rec.http_user_agent.is_empty() => p + 1,
                    _ => line.len() / 2,
                };
                let mut at = at.min(line.len());
                while !line.is_char_boundary(at) {
                    at -= 1;
                }
                const BAD: [&[u8]; 3] = [b"\xff\xfe", b"\xc3\x28", b"\xe4\xb8"];
                let bad = *pick(&mut self.rng, &BAD);
                let mut out = Vec::with_capacity(line.len() + 2);
                out.extend_from_slice(&line.as_bytes()[..at]);
                out.extend_from_slice(bad);
                out.extend_from_slice(&line.as_bytes()[at..]);
                (out, true)
            }
            // Bad remote_addr: the line does not name a real client.
            72..96 => {
                rec.remote_addr = Cow::Borrowed(*pick(
                    &mut self.rng,
                    &["999.1.1.1", "61.135.300.7", "unknown", "1.2.3", "-"],
                ));
                (render_line(format, &rec).into_bytes(), false)
            }
            // Oversized line (> 64 KiB).
            _ => {
                self.oversize += 1;
                let pad = 66_000 + self.rng.random_range(0..4_000usize);
                // In the cookie: every format writes it (combined drops the body).
                let cookie = rec.http_cookie.to_mut();
                cookie.push_str("; _pad=");
                cookie.extend(std::iter::repeat_n('A', pad));
                (render_line(format, &rec).into_bytes(), true)
            }
        }
    }

    fn run(&mut self, log: &mut dyn Write) -> io::Result<(u64, u64)> {
        let mut out = BufWriter::with_capacity(1 << 16, log);
        let (mut written, mut malformed) = (0u64, 0u64);
        let start = self.opts.start_ms;
        let p_bad = self.opts.malformed_per_mille.min(1000) as f64 / 1000.0;
        while written < self.opts.lines {
            let Some(Reverse((t, _, slot))) = self.heap.pop() else {
                break; // unreachable: the spawner never stops
            };
            if slot == SPAWNER {
                self.spawn(t);
                continue;
            }
            let (pt, what) = self.actors[slot]
                .pending
                .pop_front()
                .expect("a scheduled actor has a request");
            debug_assert_eq!(pt, t);
            if t >= start {
                let logged = if self.rng.random_bool(0.003) {
                    (t - self.rng.random_range(100..=2000i64)).max(start)
                } else {
                    t
                };
                let rec = self.record(slot, what, logged);
                let bad = p_bad > 0.0 && self.rng.random_bool(p_bad);
                let keeps_ip = if bad {
                    malformed += 1;
                    let (bytes, keeps_ip) = self.malformed(rec);
                    out.write_all(&bytes)?;
                    keeps_ip
                } else {
                    out.write_all(render_line(self.opts.format, &rec).as_bytes())?;
                    true
                };
                out.write_all(b"\n")?;
                written += 1;
                let a = &mut self.actors[slot];
                if keeps_ip && !a.emitted {
                    a.emitted = true;
                    self.seen.push((a.ip, a.kind));
                }
            }
            let base_day = self.base_day;
            let a = &mut self.actors[slot];
            if a.pending.is_empty() {
                a.plan(&mut self.rng, t, base_day);
            }
            match a.pending.front() {
                Some(&(next, _)) => self.push(next, slot),
                None => {
                    // Release the slot's memory; the slot is reused by the next actor.
                    *a = Actor::blank(a.kind, 0);
                    self.free.push(slot);
                }
            }
        }
        out.flush()?;
        Ok((written, malformed))
    }
}

// ---------------------------------------------------------------------------------------------
// IP churn.

/// Churn addresses: 16.0.0.0/4 (2^28 addresses, 4096 /16s).
const CHURN_BASE: u32 = 0x1000_0000;
const CHURN_BITS: u32 = 28;

/// The address of the `i`-th churn request: `i` times an odd constant modulo 2^28 (a bijection,
/// so the first 2^28 requests all have distinct addresses), spread over the /16s of
/// 16.0.0.0/4.
pub fn churn_ip(i: u64) -> u32 {
    let mask = (1u64 << CHURN_BITS) - 1;
    CHURN_BASE | ((i.wrapping_mul(0x9E37_79B1) & mask) as u32)
}

/// Writes `opts.lines` query requests at a steady rate over `opts.duration_ms`, the `i`-th one
/// at `start + i * duration / lines` from [`churn_ip`]`(i)`; returns the lines and the IPs.
fn churn(opts: &GenOptions, log: &mut dyn Write) -> io::Result<(u64, Vec<(u32, Kind)>)> {
    if opts.lines > 1 << CHURN_BITS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("churn traffic has at most 2^{CHURN_BITS} distinct IPs (lines)"),
        ));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut times = TimeCache::new(opts.tz_offset_minutes);
    let local = opts.start_ms + opts.tz_offset_minutes as i64 * 60_000;
    let base_day = local.div_euclid(86_400_000);
    let dur = opts.duration_ms.max(1) as i128;
    let n = opts.lines.max(1) as i128;
    let mut out = BufWriter::with_capacity(1 << 16, log);
    let mut seen = Vec::with_capacity(opts.lines as usize);
    for i in 0..opts.lines {
        let t = opts.start_ms + (i as i128 * dur / n) as i64;
        let ip = churn_ip(i);
        let (dep, arr, country) = route(&mut rng, false);
        let journey = Journey {
            dep,
            arr,
            country,
            day: base_day + rng.random_range(1..=60i64),
            ret_day: None,
            adults: 1,
            children: 0,
        };
        let req = query_req(Endpoint::Query, &journey, false);
        let server = rng.random_range(0..4usize);
        let rec = LogRecord {
            http_referer: format!("{SITE}{}", journey.search_url()).into(),
            remote_addr: ip_text(ip).into(),
            http_user_agent: (*pick(&mut rng, &BROWSER_UAS)).into(),
            http_cookie: format!("JSESSIONID={}; language=zh_CN", hex32(&mut rng)).into(),
            connections_active: Some(rng.random_range(50..300u32)),
            status: Some(200),
            body_bytes_sent: Some(rng.random_range(1_500..45_000u64)),
            request_time: Some(rng.random_range(50..800u32) as f64 / 1000.0),
            ..req.record(t, times.get(t), server, opts.format)
        };
        out.write_all(render_line(opts.format, &rec).as_bytes())?;
        out.write_all(b"\n")?;
        seen.push((ip, Kind::Human));
    }
    out.flush()?;
    Ok((opts.lines, seen))
}

/// Writes `opts.lines` synthetic access-log lines to `log` and the ground truth
/// (`ip,label,kind`, one row per client IP of the log, sorted by address) to `truth`.
pub fn generate(
    opts: &GenOptions,
    log: &mut dyn Write,
    truth: &mut dyn Write,
) -> io::Result<GenSummary> {
    let (lines, malformed, mut seen) = if opts.churn {
        let (lines, seen) = churn(opts, log)?;
        (lines, 0, seen)
    } else {
        let mut g = Gen::new(opts);
        let (lines, malformed) = g.run(log)?;
        (lines, malformed, std::mem::take(&mut g.seen))
    };
    seen.sort_unstable();
    seen.dedup();
    let mut ips_by_kind: BTreeMap<String, usize> =
        KINDS.iter().map(|k| (k.to_string(), 0)).collect();
    let mut t = BufWriter::new(truth);
    t.write_all(b"ip,label,kind\n")?;
    for (ip, kind) in &seen {
        writeln!(
            t,
            "{},{},{}",
            Ipv4Addr::from(*ip),
            kind.label(),
            kind.name()
        )?;
        *ips_by_kind.get_mut(kind.name()).expect("known kind") += 1;
    }
    t.flush()?;
    Ok(GenSummary {
        lines,
        malformed,
        ips_by_kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{parse_line, ParseLimits};
    use std::collections::{BTreeSet, HashMap};

    fn run(opts: &GenOptions) -> (Vec<u8>, String, GenSummary) {
        let (mut log, mut truth) = (Vec::new(), Vec::new());
        let s = generate(opts, &mut log, &mut truth).unwrap();
        (log, String::from_utf8(truth).unwrap(), s)
    }

    fn opts(lines: u64, format: LogFormat) -> GenOptions {
        GenOptions {
            lines,
            format,
            malformed_per_mille: 5,
            ..GenOptions::default()
        }
    }

    fn truth_map(truth: &str) -> BTreeMap<String, (String, String)> {
        let mut rows = truth.lines();
        assert_eq!(rows.next(), Some("ip,label,kind"));
        rows.map(|r| {
            let v: Vec<&str> = r.split(',').collect();
            assert_eq!(v.len(), 3, "{r}");
            let label = if v[2].starts_with("human") {
                "human"
            } else {
                "crawler"
            };
            assert_eq!(v[1], label, "{r}");
            assert!(KINDS.contains(&v[2]), "{r}");
            (v[0].to_string(), (v[1].to_string(), v[2].to_string()))
        })
        .collect()
    }

    fn lines_of(log: &[u8]) -> Vec<&[u8]> {
        assert_eq!(log.last(), Some(&b'\n'));
        log[..log.len() - 1].split(|&c| c == b'\n').collect()
    }

    #[test]
    fn deterministic_and_exact() {
        let o = opts(20_000, LogFormat::Cs);
        let (l1, t1, s1) = run(&o);
        let (l2, t2, s2) = run(&o);
        assert!(l1 == l2 && t1 == t2 && s1 == s2);
        assert_eq!(lines_of(&l1).len(), 20_000);
        assert_eq!(s1.lines, 20_000);
        let (l3, _, _) = run(&GenOptions { seed: 7, ..o });
        assert_ne!(l1, l3);
        for n in [0u64, 1, 17, 1000] {
            let (l, t, s) = run(&opts(n, LogFormat::Json));
            assert_eq!(s.lines, n);
            assert_eq!(l.iter().filter(|&&c| c == b'\n').count() as u64, n);
            assert!(t.starts_with("ip,label,kind\n"));
        }
    }

    /// Parses every line back: valid lines parse, malformed ones fail, IPs are all in the
    /// truth, time disorder stays within 5 s. Returns the parsed records and the truth.
    fn check(
        format: LogFormat,
        lines: u64,
    ) -> (Vec<LogRecord<'static>>, BTreeMap<String, (String, String)>) {
        let o = opts(lines, format);
        let (log, truth, s) = run(&o);
        let truth = truth_map(&truth);
        let lim = ParseLimits::default();
        let mut recs = Vec::new();
        let mut failed = 0u64;
        let mut max_t = i64::MIN;
        for line in lines_of(&log) {
            match parse_line(format, line, &lim) {
                Ok(r) => {
                    assert!(
                        truth.contains_key(&*r.remote_addr),
                        "{} not in truth",
                        r.remote_addr
                    );
                    assert!(r.time_ms >= max_t.saturating_sub(5_000), "disorder > 5 s");
                    assert!(r.time_ms >= o.start_ms);
                    max_t = max_t.max(r.time_ms);
                    recs.push(r.into_owned());
                }
                Err(_) => failed += 1,
            }
        }
        assert_eq!(
            failed, s.malformed,
            "{format}: only the malformed lines fail"
        );
        assert!(s.malformed > 0);
        let kinds: usize = s.ips_by_kind.values().sum();
        assert_eq!(kinds, truth.len());
        (recs, truth)
    }

    #[test]
    fn parses_back_cs() {
        let (recs, truth) = check(LogFormat::Cs, 50_000);
        // Every distributed IP is in 61.135.0.0/16, and no other kind uses that /16.
        let mut blocks: HashMap<String, BTreeSet<&str>> = HashMap::new();
        for (ip, (_, kind)) in &truth {
            let b16: Vec<&str> = ip.split('.').take(2).collect();
            blocks.entry(b16.join(".")).or_default().insert(kind);
            if kind == "distributed" {
                assert!(ip.starts_with("61.135."), "{ip}");
            }
        }
        for (b, kinds) in &blocks {
            let human = kinds.iter().any(|k| k.starts_with("human"));
            let crawler = kinds.iter().any(|k| !k.starts_with("human"));
            assert!(!(human && crawler), "/16 {b} mixes humans and crawlers");
        }
        assert_eq!(blocks["61.135"].len(), 1);
        // Human /16s are many.
        let human_blocks = blocks
            .values()
            .filter(|k| k.iter().all(|k| k.starts_with("human")))
            .count();
        assert!(human_blocks > 500, "{human_blocks}");
        // Sanity of a few fields.
        assert!(recs.iter().all(|r| r.connections_active.is_some()));
        assert!(recs
            .iter()
            .any(|r| r.request_body.starts_with("json=%7B%22depcity%22")));
        assert!(recs
            .iter()
            .any(|r| r.request.contains("/ita/intl/zh/shop/query")));
    }

    #[test]
    fn parses_back_combined_and_json() {
        check(LogFormat::Combined, 20_000);
        check(LogFormat::Json, 20_000);
    }

    #[test]
    fn all_kinds_in_200k() {
        let (_, truth, s) = run(&GenOptions::default());
        for k in KINDS {
            assert!(s.ips_by_kind[k] > 0, "{k} missing: {s:?}");
        }
        let t = truth_map(&truth);
        assert_eq!(t.len(), s.ips_by_kind.values().sum::<usize>());
        assert!(s.ips_by_kind["distributed"] >= 100);
        for k in ["aggressive", "ua_rotating", "cookie_rotating"] {
            assert!(s.ips_by_kind[k] >= 5, "{k}: {s:?}");
        }
    }

    #[test]
    fn all_kinds_in_50k() {
        let (_, _, s) = run(&opts(50_000, LogFormat::Cs));
        for k in KINDS {
            assert!(s.ips_by_kind[k] > 0, "{k} missing: {s:?}");
        }
        assert!(s.ips_by_kind["distributed"] >= 100, "{s:?}");
        for k in ["aggressive", "ua_rotating", "cookie_rotating"] {
            assert!(s.ips_by_kind[k] >= 5, "{k}: {s:?}");
        }
    }

    #[test]
    fn fast_paths_match_the_reference_renderings() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for off in [480, 0, -330] {
            let mut c = TimeCache::new(off);
            let mut t = GenOptions::default().start_ms;
            for _ in 0..2000 {
                t += rng.random_range(-1500..3000i64);
                let (iso, local) = c.get(t);
                assert_eq!(iso, format_iso8601(t, off));
                assert_eq!(local, format_time_local(t, off));
            }
        }
        let body = query_ao_body("CAN", "WUH", "20261125", 2, 1);
        let json = query_ao_json("CAN", "WUH", "20261125", 2, 1);
        let slow: String = form_urlencoded::byte_serialize(json.as_bytes()).collect();
        assert_eq!(body, format!("json={slow}"));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["flightdate"], "20261125");
        assert_eq!(v["adultnum"], "2");
        assert!(body.starts_with("json=%7B%22depcity%22%3A%22CAN%22%2C+%22arrcity%22"));
    }

    #[test]
    fn churn_every_line_a_new_ip() {
        let o = GenOptions {
            lines: 20_000,
            duration_ms: 600_000,
            churn: true,
            ..GenOptions::default()
        };
        let (log, truth, s) = run(&o);
        let lines = lines_of(&log);
        assert_eq!(lines.len(), 20_000);
        assert_eq!(s.malformed, 0);
        let lim = ParseLimits::default();
        let recs: Vec<LogRecord> = lines
            .iter()
            .map(|l| parse_line(LogFormat::Cs, l, &lim).unwrap())
            .collect();
        let ips: HashSet<&str> = recs.iter().map(|r| &*r.remote_addr).collect();
        assert_eq!(ips.len(), lines.len(), "distinct IPs == lines");
        assert_eq!(truth_map(&truth).len(), lines.len());
        assert_eq!(s.ips_by_kind["human"], 20_000);
        // Steady rate over the period, in order: 20 000 lines in 600 s = one per 30 ms.
        assert_eq!(recs[0].time_ms, o.start_ms);
        assert!(recs.windows(2).all(|w| w[1].time_ms - w[0].time_ms == 30));
        assert!(recs.iter().all(|r| r.request.contains("query.ao")));
        let (again, _, _) = run(&o);
        assert!(again == log, "deterministic");
        let j = run(&GenOptions {
            format: LogFormat::Json,
            lines: 1000,
            ..o
        });
        assert_eq!(lines_of(&j.0).len(), 1000);
    }

    #[test]
    fn synthetic_ids() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..100 {
            let p = phone(&mut rng);
            assert_eq!(p.len(), 11);
            assert!(p.starts_with('1') && (b'3'..=b'9').contains(&p.as_bytes()[1]));
            let id = id_card(&mut rng);
            assert_eq!(id.len(), 18);
            assert!(id[..17].bytes().all(|c| c.is_ascii_digit()));
            assert_eq!(hex32(&mut rng).len(), 32);
        }
    }
}
