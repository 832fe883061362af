//! Body / URL parsing with the `analyzerule` table (SPEC §3.6).
//!
//! The rule for a record is the LAST candidate (rules ordered by id) whose `request_method`
//! equals the record's method ignoring case (an empty method matches any), whose
//! `behavior_type` and `flight_type` equal the classified ones, and whose
//! `request_match_expression` fully matches the (masked) request line.
//!
//! Field specs depend on the rule's body kind:
//! - `form`, `get`: a parameter name (URL-decoded; a repeated name gives a list, the last one
//!   is the scalar value);
//! - `json`, `json_in_form`: a JSONPath subset: `$`, `.name`, `['name']`, `[N]`, `[*]`, `.*`
//!   and `..name` (recursive descent). A `.name` step applied to an array applies to each
//!   element (so `$.a` works on `[{"a":..}]`). An array at the end of a path is flattened.
//! - `xml`, `xml_in_form`: an XPath subset: `/a/b` (children from the document root), `//a`
//!   (descendants), `*`, a final `text()` (ignored, text is the default) or `@attr`. The text
//!   of an element is the concatenation of its descendant text, trimmed. Namespace prefixes
//!   are ignored (local names match).
//!
//! Paths are compiled with the rule, so a bad path is a rule error, not a per-record failure.
//! A body that does not parse (invalid JSON/XML, missing form field) yields no data; nginx's
//! `\xHH` log escaping of bodies is undone when the raw body does not parse.
//!
//! `query_travel_type` names a field holding a travel type (`0`/`1`, `S`/`R`, `OW`/`RT`,
//! `OneWay`/`RoundTrip`); it is honoured for book rules too (e.g. `//SEGTYPE`).

use std::borrow::Cow;

use anyhow::anyhow;
use regex::Regex;

use super::classify::compile_full;
use super::json_doc::JsonDoc;
use super::mask::Masker;
use crate::event::{BehaviorType, BookRequestData, FlightType, QueryRequestData, TravelType};
use crate::rules::tables::{AnalyzeRule, BodyKind};

const TABLE: &str = "analyzerule";

// ---------------------------------------------------------------------------------------------
// JSON paths

#[derive(Clone, Debug, PartialEq, Eq)]
enum JsonStep {
    Field(String),
    Descendant(String),
    Index(usize),
    Wildcard,
}

/// A compiled JSONPath (subset, see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonPath(Vec<JsonStep>);

fn is_name_char(c: char) -> bool {
    !matches!(c, '.' | '[' | ']' | '\'' | '"') && !c.is_whitespace()
}

impl JsonPath {
    pub fn parse(path: &str) -> Result<JsonPath, String> {
        let p = path.trim();
        let Some(mut rest) = p.strip_prefix('$') else {
            return Err(format!("JSON path `{path}` must start with `$`"));
        };
        let mut steps = Vec::new();
        let take_name = |s: &str| -> (String, usize) {
            let n: String = s.chars().take_while(|&c| is_name_char(c)).collect();
            let len = n.len();
            (n, len)
        };
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix("..") {
                let (name, len) = take_name(r);
                if name.is_empty() || name == "*" {
                    return Err(format!(
                        "JSON path `{path}`: `..` must be followed by a name"
                    ));
                }
                steps.push(JsonStep::Descendant(name));
                rest = &r[len..];
            } else if let Some(r) = rest.strip_prefix('.') {
                let (name, len) = take_name(r);
                if name.is_empty() {
                    return Err(format!("JSON path `{path}`: empty name after `.`"));
                }
                steps.push(if name == "*" {
                    JsonStep::Wildcard
                } else {
                    JsonStep::Field(name)
                });
                rest = &r[len..];
            } else if let Some(r) = rest.strip_prefix('[') {
                let Some(close) = r.find(']') else {
                    return Err(format!("JSON path `{path}`: unclosed `[`"));
                };
                let inner = r[..close].trim();
                let step = if inner == "*" {
                    JsonStep::Wildcard
                } else if let Ok(i) = inner.parse::<usize>() {
                    JsonStep::Index(i)
                } else if inner.len() >= 2
                    && ((inner.starts_with('\'') && inner.ends_with('\''))
                        || (inner.starts_with('"') && inner.ends_with('"')))
                {
                    JsonStep::Field(inner[1..inner.len() - 1].to_string())
                } else {
                    return Err(format!(
                        "JSON path `{path}`: unsupported `[{inner}]` (use [N], [*] or ['name'])"
                    ));
                };
                steps.push(step);
                rest = &r[close + 1..];
            } else {
                return Err(format!("JSON path `{path}`: unexpected `{rest}`"));
            }
        }
        Ok(JsonPath(steps))
    }

    /// All values the path selects: array elements in order, object members in key order
    /// (as serde_json's sorted map).
    pub fn eval<'d, 'v>(&self, root: &'d JsonDoc<'v>) -> Vec<&'d JsonDoc<'v>> {
        let mut cur = vec![root];
        for step in &self.0 {
            let mut next = Vec::new();
            for v in cur {
                match step {
                    JsonStep::Field(n) => match v {
                        JsonDoc::Object(_) => next.extend(v.get(n)),
                        JsonDoc::Array(a) => next.extend(a.iter().filter_map(|e| e.get(n))),
                        _ => {}
                    },
                    JsonStep::Index(i) => {
                        if let JsonDoc::Array(a) = v {
                            next.extend(a.get(*i));
                        }
                    }
                    JsonStep::Wildcard => match v {
                        JsonDoc::Object(_) => next.extend(v.members().into_iter().map(|(_, c)| c)),
                        JsonDoc::Array(a) => next.extend(a.iter()),
                        _ => {}
                    },
                    JsonStep::Descendant(n) => descendants(v, n, &mut next),
                }
            }
            cur = next;
        }
        cur
    }

    /// The selected values as strings; arrays at the end of the path are flattened.
    pub fn strings(&self, root: &JsonDoc) -> Vec<String> {
        let mut out = Vec::new();
        for v in self.eval(root) {
            match v {
                JsonDoc::Array(a) => out.extend(a.iter().map(JsonDoc::to_field)),
                v => out.push(v.to_field()),
            }
        }
        out
    }

    /// The first of [`JsonPath::strings`]. A path of object members only (`$.a.b`, the usual
    /// query field) is walked without collecting what it selects.
    pub fn scalar(&self, root: &JsonDoc) -> Option<String> {
        let mut v = root;
        for step in &self.0 {
            match (step, v) {
                (JsonStep::Field(n), JsonDoc::Object(_)) => v = v.get(n)?,
                _ => return self.strings(root).into_iter().next(),
            }
        }
        match v {
            JsonDoc::Array(a) => a.first().map(JsonDoc::to_field),
            v => Some(v.to_field()),
        }
    }
}

fn descendants<'d, 'v>(v: &'d JsonDoc<'v>, name: &str, out: &mut Vec<&'d JsonDoc<'v>>) {
    match v {
        JsonDoc::Object(_) => {
            for (k, c) in v.members() {
                if k == name {
                    out.push(c);
                }
                descendants(c, name, out);
            }
        }
        JsonDoc::Array(a) => a.iter().for_each(|c| descendants(c, name, out)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// XML paths

#[derive(Clone, Debug, PartialEq, Eq)]
struct XmlStep {
    descendant: bool,
    /// Local name, or `*`.
    name: String,
}

/// A compiled XPath (subset, see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XmlPath {
    steps: Vec<XmlStep>,
    attribute: Option<String>,
}

impl XmlPath {
    pub fn parse(path: &str) -> Result<XmlPath, String> {
        let p = path.trim();
        if !p.starts_with('/') {
            return Err(format!("XML path `{path}` must start with `/` or `//`"));
        }
        let mut steps = Vec::new();
        let mut attribute = None;
        let mut rest = p;
        while !rest.is_empty() {
            if attribute.is_some() {
                return Err(format!("XML path `{path}`: `@attr` must be the last step"));
            }
            let descendant = rest.starts_with("//");
            rest = &rest[if descendant { 2 } else { 1 }..];
            let end = rest.find('/').unwrap_or(rest.len());
            let name = &rest[..end];
            rest = &rest[end..];
            if name.is_empty() {
                return Err(format!("XML path `{path}`: empty step"));
            }
            if name == "text()" {
                if !rest.is_empty() || descendant {
                    return Err(format!("XML path `{path}`: `text()` must be the last step"));
                }
            } else if let Some(a) = name.strip_prefix('@') {
                if a.is_empty() || descendant {
                    return Err(format!("XML path `{path}`: bad attribute step `{name}`"));
                }
                attribute = Some(a.to_string());
            } else if name == "*"
                || name
                    .chars()
                    .all(|c| c.is_alphanumeric() || "_-.:".contains(c))
            {
                let local = name.rsplit(':').next().unwrap_or(name);
                steps.push(XmlStep {
                    descendant,
                    name: local.to_string(),
                });
            } else {
                return Err(format!("XML path `{path}`: unsupported step `{name}`"));
            }
        }
        if steps.is_empty() {
            return Err(format!("XML path `{path}` selects no element"));
        }
        Ok(XmlPath { steps, attribute })
    }

    /// The text (or attribute value) of every selected element, in document order.
    pub fn strings(&self, doc: &roxmltree::Document) -> Vec<String> {
        let named = |n: &roxmltree::Node, name: &str| {
            n.is_element() && (name == "*" || n.tag_name().name() == name)
        };
        let mut cur = vec![doc.root()];
        for step in &self.steps {
            let mut next: Vec<roxmltree::Node> = Vec::new();
            for n in &cur {
                if step.descendant {
                    next.extend(n.descendants().skip(1).filter(|c| named(c, &step.name)));
                } else {
                    next.extend(n.children().filter(|c| named(c, &step.name)));
                }
            }
            if step.descendant {
                next.sort_by_key(|n| n.id().get());
                next.dedup_by_key(|n| n.id());
            }
            cur = next;
        }
        match &self.attribute {
            Some(a) => cur
                .iter()
                .filter_map(|n| {
                    n.attributes()
                        .find(|x| x.name() == a)
                        .map(|x| x.value().to_string())
                })
                .collect(),
            None => cur
                .iter()
                .map(|n| {
                    let t: String = n
                        .descendants()
                        .filter(|d| d.is_text())
                        .filter_map(|d| d.text())
                        .collect();
                    t.trim().to_string()
                })
                .collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Compiled rules

/// One compiled field spec.
#[derive(Clone, Debug, PartialEq, Eq)]
enum FieldPath {
    None,
    Key(String),
    Json(JsonPath),
    Xml(XmlPath),
}

impl FieldPath {
    fn compile(kind: BodyKind, spec: &str) -> Result<FieldPath, String> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Ok(FieldPath::None);
        }
        Ok(match kind {
            BodyKind::Form | BodyKind::Get => FieldPath::Key(spec.to_string()),
            BodyKind::Json | BodyKind::JsonInForm => FieldPath::Json(JsonPath::parse(spec)?),
            BodyKind::Xml | BodyKind::XmlInForm => FieldPath::Xml(XmlPath::parse(spec)?),
        })
    }
}

macro_rules! field_set {
    ($name:ident { $($f:ident <- $col:ident),* $(,)? }) => {
        #[derive(Clone, Debug)]
        struct $name { $($f: FieldPath),* }
        impl $name {
            fn compile(kind: BodyKind, r: &AnalyzeRule) -> anyhow::Result<$name> {
                Ok($name { $($f: FieldPath::compile(kind, &r.$col).map_err(|e| {
                    anyhow!("{TABLE}: row id {}: {}: {e}", r.id, stringify!($col))
                })?),* })
            }
        }
    };
}

field_set!(QueryPaths {
    dep_city <- query_dep_city,
    arr_city <- query_arr_city,
    flight_date <- query_flight_date,
    adult_num <- query_adult_num,
    child_num <- query_child_num,
    infant_num <- query_infant_num,
    country <- query_country,
    travel_type <- query_travel_type,
});

field_set!(BookPaths {
    book_user_id <- book_book_user_id,
    book_un_user_id <- book_book_un_user_id,
    psg_name <- book_psg_name,
    psg_fir_name <- book_psg_fir_name,
    psg_type <- book_psg_type,
    id_type <- book_id_type,
    id_card <- book_id_card,
    contract_name <- book_contract_name,
    contract_phone <- book_contract_phone,
    dep_city <- book_dep_city,
    arr_city <- book_arr_city,
    flight_date <- book_flight_date,
    flight_no <- book_flight_no,
    cabin <- book_cabin,
});

/// One compiled `analyzerule` row.
#[derive(Clone, Debug)]
pub struct CompiledRule {
    pub id: i64,
    flight_type: i32,
    behavior_type: i32,
    method: String,
    re: Regex,
    kind: BodyKind,
    form_field: String,
    query: QueryPaths,
    book: BookPaths,
}

/// Compiled `analyzerule` table.
#[derive(Clone, Debug, Default)]
pub struct Analyzer {
    /// Ordered by id (stable), so "last candidate" does not depend on the input order.
    rules: Vec<CompiledRule>,
}

impl Analyzer {
    pub fn compile(rows: &[AnalyzeRule]) -> anyhow::Result<Analyzer> {
        let mut rows: Vec<&AnalyzeRule> = rows.iter().collect();
        rows.sort_by_key(|r| r.id);
        let rules = rows
            .into_iter()
            .map(CompiledRule::compile)
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Analyzer { rules })
    }

    /// The rule for a record (see the module docs), if any.
    pub fn find(
        &self,
        method: &str,
        flight: FlightType,
        behavior: BehaviorType,
        request: &str,
    ) -> Option<&CompiledRule> {
        self.find_with(method, flight, behavior, |i| {
            self.rules[i].re.is_match(request)
        })
    }

    /// [`Analyzer::find`] with the regex test given: `line_matches(i)` says whether the
    /// request line fully matches the expression of the `i`-th of [`Analyzer::expressions`].
    pub fn find_with(
        &self,
        method: &str,
        flight: FlightType,
        behavior: BehaviorType,
        line_matches: impl Fn(usize) -> bool,
    ) -> Option<&CompiledRule> {
        self.rules
            .iter()
            .enumerate()
            .rev()
            .find(|(i, r)| {
                r.behavior_type == behavior.id()
                    && r.flight_type == flight.id()
                    && (r.method.is_empty() || r.method.eq_ignore_ascii_case(method))
                    && line_matches(*i)
            })
            .map(|(_, r)| r)
    }

    /// The full-match request expressions of the rules, in rule order.
    pub fn expressions(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.re.as_str())
    }
}

impl CompiledRule {
    fn compile(r: &AnalyzeRule) -> anyhow::Result<CompiledRule> {
        let err = |m: String| anyhow!("{TABLE}: row id {}: {m}", r.id);
        if !(0..=1).contains(&r.flight_type) || !(0..=1).contains(&r.behavior_type) {
            return Err(err(format!(
                "flight_type ({}) and behavior_type ({}) must be 0 or 1",
                r.flight_type, r.behavior_type
            )));
        }
        let kind = r.body_kind.ok_or_else(|| {
            err("body_kind missing (form, json_in_form, json, xml, xml_in_form or get)".into())
        })?;
        let form_field = r.form_data_field.trim().to_string();
        if matches!(kind, BodyKind::JsonInForm | BodyKind::XmlInForm) && form_field.is_empty() {
            return Err(err(format!("body_kind {kind:?} needs form_data_field")));
        }
        Ok(CompiledRule {
            id: r.id,
            flight_type: r.flight_type,
            behavior_type: r.behavior_type,
            method: r.request_method.trim().to_string(),
            re: compile_full(TABLE, r.id, &r.request_match_expression)?,
            kind,
            form_field,
            query: QueryPaths::compile(kind, r)?,
            book: BookPaths::compile(kind, r)?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing

/// A parsed body.
enum Doc<'a> {
    /// Decoded pairs, borrowed from the text when they hold no escapes.
    Form(Vec<(Cow<'a, str>, Cow<'a, str>)>),
    Json(JsonDoc<'a>),
    Xml(roxmltree::Document<'a>),
}

impl Doc<'_> {
    /// The values of the form fields named `k`, in order (none for another kind of body).
    fn form_values<'d>(&'d self, k: &'d str) -> impl DoubleEndedIterator<Item = &'d str> + 'd {
        let pairs = match self {
            Doc::Form(pairs) => pairs.as_slice(),
            _ => &[],
        };
        pairs
            .iter()
            .filter(move |(pk, _)| pk == k)
            .map(|(_, v)| &**v)
    }

    fn strings(&self, path: &FieldPath) -> Vec<String> {
        match (self, path) {
            (Doc::Form(_), FieldPath::Key(k)) => self.form_values(k).map(str::to_owned).collect(),
            (Doc::Json(v), FieldPath::Json(p)) => p.strings(v),
            (Doc::Xml(d), FieldPath::Xml(p)) => p.strings(d),
            _ => Vec::new(),
        }
    }

    /// The scalar value: the last form value, else the first selected value.
    fn scalar(&self, path: &FieldPath) -> String {
        match (self, path) {
            (Doc::Form(_), FieldPath::Key(k)) => self
                .form_values(k)
                .next_back()
                .unwrap_or_default()
                .to_owned(),
            (Doc::Form(_), _) => String::new(),
            (Doc::Json(v), FieldPath::Json(p)) => p.scalar(v).unwrap_or_default(),
            _ => self.strings(path).into_iter().next().unwrap_or_default(),
        }
    }
}

/// The decoded `application/x-www-form-urlencoded` pairs of `s`, as `form_urlencoded::parse`
/// gives them.
fn form_pairs(s: &str) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
    raw_form_pairs(s)
        .map(|(k, v)| (decode_form_component(k), decode_form_component(v)))
        .collect()
}

/// The pairs of a form body, not decoded: pieces between `&` (empty ones skipped), split at
/// their first `=` (no `=`: an empty value).
fn raw_form_pairs(s: &str) -> impl DoubleEndedIterator<Item = (&str, &str)> {
    s.split('&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| piece.split_once('=').unwrap_or((piece, "")))
}

/// One form component decoded as `form_urlencoded` does (`+` is a space, `%XX` a byte, a `%`
/// without two hex digits stays, invalid UTF-8 is replaced), in one pass and one allocation;
/// borrowed when it has no escapes. The query bodies are one long escaped JSON field, which
/// `form_urlencoded` copied three times over.
fn decode_form_component(s: &str) -> Cow<'_, str> {
    let b = s.as_bytes();
    let Some(first) = memchr::memchr2(b'+', b'%', b) else {
        return Cow::Borrowed(s);
    };
    // Decoded is never longer: written by index into a buffer of the input's length (a
    // `push` per byte checked the capacity each time), then cut to what was written.
    let mut out = vec![0u8; b.len()];
    out[..first].copy_from_slice(&b[..first]);
    let (mut i, mut o) = (first, first);
    while i < b.len() {
        let (byte, used) = match b[i] {
            b'+' => (b' ', 1),
            b'%' => hex_byte(b, i + 1).map_or((b'%', 1), |byte| (byte, 3)),
            c => (c, 1),
        };
        out[o] = byte;
        o += 1;
        i += used;
    }
    out.truncate(o);
    Cow::Owned(match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// The value of each byte as a hex digit, or [`NOT_HEX`].
const HEX_DIGIT: [u8; 256] = {
    let mut t = [NOT_HEX; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = match c as u8 {
            d @ b'0'..=b'9' => d - b'0',
            d @ b'a'..=b'f' => d - b'a' + 10,
            d @ b'A'..=b'F' => d - b'A' + 10,
            _ => NOT_HEX,
        };
        c += 1;
    }
    t
};
const NOT_HEX: u8 = 0xFF;

/// The byte written as two hex digits at `b[at..at + 2]`, if they are there.
fn hex_byte(b: &[u8], at: usize) -> Option<u8> {
    let pair = b.get(at..at + 2)?;
    let (hi, lo) = (HEX_DIGIT[pair[0] as usize], HEX_DIGIT[pair[1] as usize]);
    (hi != NOT_HEX && lo != NOT_HEX).then_some(hi << 4 | lo)
}

/// Undoes nginx's `\xHH` escaping of logged bodies; `None` when there is none.
fn unescape_nginx(s: &str) -> Option<String> {
    if !s.contains("\\x") {
        return None;
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') {
            if let Some(byte) = hex_byte(b, i + 2) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// What a rule extracted from one record.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parsed {
    pub query: Option<QueryRequestData>,
    pub book: Option<BookRequestData>,
    /// A travel type read from the body (`query_travel_type`), if the rule names one.
    pub body_travel_type: Option<TravelType>,
}

/// Reads a travel type value from a body field.
pub fn parse_travel_value(v: &str) -> Option<TravelType> {
    match v.trim().to_ascii_uppercase().as_str() {
        "0" | "S" | "OW" | "ONEWAY" | "ONE_WAY" => Some(TravelType::OneWay),
        "1" | "R" | "RT" | "ROUNDTRIP" | "ROUND_TRIP" => Some(TravelType::RoundTrip),
        _ => None,
    }
}

/// The query string of a request line `METHOD URI PROTOCOL` (after the first `?`, before `#`).
fn uri_query(request: &str) -> &str {
    let mut parts = request.split_ascii_whitespace();
    let first = parts.next().unwrap_or("");
    // A bare URI (no method) is tolerated.
    let uri = if first.starts_with('/') || first.contains("://") {
        first
    } else {
        parts.next().unwrap_or("")
    };
    let q = uri.split_once('?').map_or("", |(_, q)| q);
    q.split_once('#').map_or(q, |(q, _)| q)
}

impl CompiledRule {
    /// Applies the rule to a (masked) request line and body. Every extracted string is masked
    /// again (URL/JSON decoding may have revealed digits), ID numbers and the contact phone
    /// are hashed whatever their format.
    pub fn parse(
        &self,
        masker: &Masker,
        request: &str,
        body: &str,
        flight: FlightType,
        referer_travel: TravelType,
    ) -> Parsed {
        // The text to parse: the body, a form field of it, or the URL's query string.
        let text: Cow<str> = match self.kind {
            BodyKind::Get => Cow::Borrowed(uri_query(request)),
            BodyKind::Form | BodyKind::Json | BodyKind::Xml => Cow::Borrowed(body),
            BodyKind::JsonInForm | BodyKind::XmlInForm => {
                // The last pair of that name; only its value is decoded.
                match raw_form_pairs(body)
                    .rev()
                    .find(|(k, _)| decode_form_component(k) == self.form_field)
                {
                    Some((_, v)) => decode_form_component(v),
                    None => return Parsed::default(),
                }
            }
        };
        if text.trim().is_empty() {
            // Nothing to parse (no body, or a body-less log format such as `combined`).
            return Parsed::default();
        }
        match self.kind {
            BodyKind::Get | BodyKind::Form => self.extract(
                masker,
                &Doc::Form(form_pairs(&text)),
                flight,
                referer_travel,
            ),
            BodyKind::Json | BodyKind::JsonInForm => {
                if let Some(doc) = JsonDoc::parse(text.trim()) {
                    return self.extract(masker, &Doc::Json(doc), flight, referer_travel);
                }
                let unescaped = unescape_nginx(&text);
                match unescaped.as_deref().and_then(|u| JsonDoc::parse(u.trim())) {
                    Some(doc) => self.extract(masker, &Doc::Json(doc), flight, referer_travel),
                    None => Parsed::default(),
                }
            }
            BodyKind::Xml | BodyKind::XmlInForm => {
                let t = text.trim();
                if let Ok(d) = roxmltree::Document::parse(t) {
                    return self.extract(masker, &Doc::Xml(d), flight, referer_travel);
                }
                match unescape_nginx(t) {
                    Some(u) => match roxmltree::Document::parse(u.trim()) {
                        Ok(d) => self.extract(masker, &Doc::Xml(d), flight, referer_travel),
                        Err(_) => Parsed::default(),
                    },
                    None => Parsed::default(),
                }
            }
        }
    }

    fn extract(
        &self,
        masker: &Masker,
        doc: &Doc,
        flight: FlightType,
        referer_travel: TravelType,
    ) -> Parsed {
        // Moved, not copied, when clean (nearly always: a city code, a date).
        let m = |s: String| match masker.mask(&s) {
            Cow::Owned(o) => o,
            Cow::Borrowed(_) => s,
        };
        let scalar = |p: &FieldPath| m(doc.scalar(p));
        let list = |p: &FieldPath| doc.strings(p).into_iter().map(m).collect::<Vec<_>>();
        // ID numbers and phones in any format (spaces, passports, +86 …) are hashed.
        let hash_always = |s: String| {
            if s.is_empty() || masker.looks_hashed(&s) {
                s
            } else {
                masker.hash(&s)
            }
        };
        if self.behavior_type == BehaviorType::Query.id() {
            let q = &self.query;
            let body_travel = parse_travel_value(&doc.scalar(&q.travel_type));
            let query = QueryRequestData {
                flight_type: flight.id(),
                dep_city: scalar(&q.dep_city),
                arr_city: scalar(&q.arr_city),
                flight_date: scalar(&q.flight_date),
                adult_num: scalar(&q.adult_num),
                child_num: scalar(&q.child_num),
                infant_num: scalar(&q.infant_num),
                country: scalar(&q.country),
                travel_type: body_travel.unwrap_or(referer_travel).id(),
            };
            Parsed {
                query: Some(query),
                book: None,
                body_travel_type: body_travel,
            }
        } else {
            let b = &self.book;
            let body_travel = parse_travel_value(&doc.scalar(&self.query.travel_type));
            let mut psg_name = list(&b.psg_name);
            if b.psg_fir_name != FieldPath::None {
                let fir = list(&b.psg_fir_name);
                let n = fir.len().max(psg_name.len());
                psg_name = (0..n)
                    .map(|i| {
                        let f = fir.get(i).map_or("", String::as_str);
                        let l = psg_name.get(i).map_or("", String::as_str);
                        format!("{f}{l}")
                    })
                    .collect();
            }
            let contract_name = scalar(&b.contract_name);
            let contract_name = contract_name.split('|').next().unwrap_or("").to_string();
            let contract_phone = scalar(&b.contract_phone);
            let contract_phone = hash_always(
                contract_phone
                    .split('/')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string(),
            );
            let book = BookRequestData {
                flight_type: flight.id(),
                travel_type: body_travel.unwrap_or(referer_travel).id(),
                book_user_id: scalar(&b.book_user_id),
                book_un_user_id: scalar(&b.book_un_user_id),
                psg_name,
                psg_type: list(&b.psg_type),
                id_type: list(&b.id_type),
                id_card: list(&b.id_card)
                    .into_iter()
                    .map(|s| hash_always(s.trim().to_string()))
                    .collect(),
                contract_name,
                contract_phone,
                dep_city: list(&b.dep_city),
                arr_city: list(&b.arr_city),
                flight_date: list(&b.flight_date),
                flight_no: list(&b.flight_no),
                cabin: list(&b.cabin),
            };
            Parsed {
                query: None,
                book: Some(book),
                body_travel_type: body_travel,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn js(path: &str, v: &serde_json::Value) -> Vec<String> {
        let text = v.to_string();
        let doc = JsonDoc::parse(&text).unwrap();
        let p = JsonPath::parse(path).unwrap();
        let all = p.strings(&doc);
        // The scalar is the first of them, whichever way it is found.
        assert_eq!(p.scalar(&doc), all.first().cloned(), "{path}");
        all
    }

    proptest::proptest! {
        /// The one-pass decoding gives what `form_urlencoded::parse` gives.
        #[test]
        fn form_bodies_decode_as_form_urlencoded_does(
            body in "[a=&+%0-9a-fA-FGgé\\x{80}]{0,24}",
            extra in proptest::collection::vec(0u8..=255, 0..4),
        ) {
            // Percent-escapes of arbitrary bytes too (invalid UTF-8 included).
            let escaped: String = extra.iter().map(|b| format!("%{b:02X}")).collect();
            let body = format!("{body}{escaped}");
            let ours = form_pairs(&body);
            let theirs: Vec<_> = form_urlencoded::parse(body.as_bytes()).collect();
            proptest::prop_assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn json_paths() {
        let v = json!({
            "a": {"b": "x", "n": 12, "t": true, "z": null},
            "list": [{"k": "1"}, {"k": "2"}, {"other": 3}],
            "ids": ["p", "q"],
            "deep": {"x": {"k": "d"}},
            "we.ird": "w"
        });
        assert_eq!(js("$.a.b", &v), ["x"]);
        assert_eq!(js("$.a.n", &v), ["12"]);
        assert_eq!(js("$.a.t", &v), ["true"]);
        assert_eq!(js("$.a.z", &v), [""]);
        assert_eq!(js("$.a.missing", &v), Vec::<String>::new());
        assert_eq!(js("$.list[0].k", &v), ["1"]);
        assert_eq!(js("$.list[5].k", &v), Vec::<String>::new());
        assert_eq!(js("$.list[*].k", &v), ["1", "2"]);
        assert_eq!(
            js("$.list.k", &v),
            ["1", "2"],
            "field step maps over arrays"
        );
        assert_eq!(js("$.ids", &v), ["p", "q"], "final arrays flattened");
        assert_eq!(js("$.ids[1]", &v), ["q"]);
        assert_eq!(
            js("$..k", &v),
            ["d", "1", "2"],
            "object members in key order"
        );
        assert_eq!(js("$['we.ird']", &v), ["w"]);
        assert_eq!(js("$[\"a\"]['b']", &v), ["x"]);
        assert_eq!(js("$.deep.*.k", &v), ["d"]);
        assert_eq!(js("$.deep.x", &v), [r#"{"k":"d"}"#]);
        // An array of one object at the top (the original stripped the brackets).
        let arr = json!([{"depcity": "CAN"}]);
        assert_eq!(js("$.depcity", &arr), ["CAN"]);
        assert_eq!(js("$[0].depcity", &arr), ["CAN"]);
        for bad in ["a.b", "$.", "$.a[", "$.a[x]", "$..", "$ .a", "$.a]"] {
            assert!(JsonPath::parse(bad).is_err(), "{bad}");
        }
    }

    fn xs(path: &str, xml: &str) -> Vec<String> {
        let d = roxmltree::Document::parse(xml).unwrap();
        XmlPath::parse(path).unwrap().strings(&d)
    }

    #[test]
    fn xml_paths() {
        let x = "<page><P><NAME>a</NAME><ID>1</ID></P><P><NAME> b </NAME></P>\
                 <C><NAME>c<i>d</i></NAME></C><SEGTYPE>S</SEGTYPE><S k=\"v\"/></page>";
        assert_eq!(xs("//NAME", x), ["a", "b", "cd"]);
        assert_eq!(xs("/page/P/NAME", x), ["a", "b"]);
        assert_eq!(xs("/page/C/NAME", x), ["cd"]);
        assert_eq!(xs("/page/P/NAME/text()", x), ["a", "b"]);
        assert_eq!(xs("//SEGTYPE", x), ["S"]);
        assert_eq!(
            xs("/P/NAME", x),
            Vec::<String>::new(),
            "absolute from the root"
        );
        assert_eq!(xs("/page/*/NAME", x), ["a", "b", "cd"]);
        assert_eq!(xs("//page//NAME", x), ["a", "b", "cd"], "no duplicates");
        assert_eq!(xs("/page/S/@k", x), ["v"]);
        assert_eq!(xs("//P/ID", x), ["1"]);
        let ns = "<p:page xmlns:p=\"urn:x\"><p:NAME>n</p:NAME></p:page>";
        assert_eq!(xs("/page/NAME", ns), ["n"]);
        assert_eq!(xs("/p:page/p:NAME", ns), ["n"]);
        for bad in [
            "NAME",
            "/",
            "//",
            "/a//",
            "/a/[1]",
            "/@x",
            "/a/@x/b",
            "/a/text()/b",
        ] {
            assert!(XmlPath::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn travel_values() {
        for (v, t) in [
            ("S", Some(TravelType::OneWay)),
            ("r", Some(TravelType::RoundTrip)),
            ("0", Some(TravelType::OneWay)),
            ("1", Some(TravelType::RoundTrip)),
            (" RoundTrip ", Some(TravelType::RoundTrip)),
            ("", None),
            ("-1", None),
            ("x", None),
        ] {
            assert_eq!(parse_travel_value(v), t, "{v}");
        }
    }

    #[test]
    fn uri_query_and_unescape() {
        assert_eq!(uri_query("GET /a?b=1&c=2 HTTP/1.1"), "b=1&c=2");
        assert_eq!(uri_query("GET /a?b=1#f HTTP/1.1"), "b=1");
        assert_eq!(uri_query("GET /a HTTP/1.1"), "");
        assert_eq!(uri_query("/a?x=1"), "x=1");
        assert_eq!(uri_query(""), "");
        assert_eq!(
            unescape_nginx("a\\x22b\\x5C\\xZZ\\x+F\\x2").as_deref(),
            Some("a\"b\\\\xZZ\\x+F\\x2")
        );
        assert_eq!(unescape_nginx("plain"), None);
    }
}
