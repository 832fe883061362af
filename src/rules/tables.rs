//! Row types of the rule tables (SPEC §2.2), named after their MySQL tables.
//!
//! Every row type is `Ord + Hash + serde` so that a table can be a differential input
//! collection: a changed row is the retraction of the old row plus the insertion of the new.
//! Floats are stored as [`OrdF64`] so rows stay totally ordered.

use serde::{Deserialize, Serialize};

/// An `f64` that is `Ord`, `Eq` and `Hash` (by `total_cmp` / bit pattern), for rule arguments.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrdF64(pub f64);

impl PartialEq for OrdF64 {
    fn eq(&self, other: &Self) -> bool {
        self.0.total_cmp(&other.0).is_eq()
    }
}
impl Eq for OrdF64 {}
impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}
impl std::hash::Hash for OrdF64 {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state)
    }
}

/// `nh_filter_rule`: a request line that fully matches `value` is dropped.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FilterRule {
    pub id: i64,
    pub value: String,
}

/// `nh_classify_rule`: `flight_type` 0 domestic / 1 international; `operation_type` 0 query / 1 book.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClassifyRule {
    pub id: i64,
    pub expression: String,
    pub flight_type: i32,
    pub operation_type: i32,
}

/// How the body (or the query string) of a request is encoded, for [`AnalyzeRule`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyKind {
    /// `a=1&b=2` form body.
    Form,
    /// A form field (`form_data_field`) whose URL-decoded value is JSON.
    JsonInForm,
    /// The body is JSON.
    Json,
    /// The body is XML.
    Xml,
    /// A form field whose URL-decoded value is XML.
    XmlInForm,
    /// Parameters of the URL query string.
    Get,
}

/// `analyzerule`: how to parse the query/book body of matching requests (SPEC §3.6).
///
/// A field value is a form key (form/get), a JSON path like `$.a.b` / `$.psg[*].name`
/// (JSON kinds) or an XPath-like path like `//SEGTYPE` or `/page/a/b` (XML kinds).
/// Empty strings mean "not extracted".
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct AnalyzeRule {
    pub id: i64,
    /// 0 domestic / 1 international.
    pub flight_type: i32,
    /// 0 query / 1 book.
    pub behavior_type: i32,
    /// Regex that must fully match the request line.
    pub request_match_expression: String,
    /// `GET` or `POST` (case-insensitive).
    pub request_method: String,
    pub body_kind: Option<BodyKind>,
    pub form_data_field: String,
    pub query_dep_city: String,
    pub query_arr_city: String,
    pub query_flight_date: String,
    pub query_adult_num: String,
    pub query_child_num: String,
    pub query_infant_num: String,
    pub query_country: String,
    pub query_travel_type: String,
    pub book_book_user_id: String,
    pub book_book_un_user_id: String,
    pub book_psg_name: String,
    pub book_psg_fir_name: String,
    pub book_psg_type: String,
    pub book_id_type: String,
    pub book_id_card: String,
    pub book_contract_name: String,
    pub book_contract_phone: String,
    pub book_dep_city: String,
    pub book_arr_city: String,
    pub book_flight_date: String,
    pub book_flight_no: String,
    pub book_cabin: String,
}

/// `nh_query_critical_pages`: requests fully matching the expression are critical pages.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CriticalPage {
    pub id: i64,
    #[serde(
        rename = "criticalPageMatchExpression",
        alias = "critical_page_match_expression"
    )]
    pub critical_page_match_expression: String,
}

/// `nh_ip_blacklist`: historical crawler IPs; `ip_name` may also be a CIDR block.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IpBlacklistRow {
    pub id: i64,
    pub ip_name: String,
}

/// `nh_process_info`: a flow; `status` 0 = running.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub id: String,
    pub process_name: String,
    pub status: i32,
}

/// `nh_strategy`: the per-flow blacklist threshold (same id as the flow).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Strategy {
    pub id: String,
    pub crawler_blacklist_thresholds: OrdF64,
    #[serde(default)]
    pub occ_blacklist_thresholds: OrdF64,
}

/// `nh_rule`: one rule of a flow. `status` 0 = enabled; `crawler_type` 0 = anti-crawler.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Rule {
    pub id: String,
    pub process_id: String,
    /// Rule number 0..=7, mapped to an indicator name by `nh_rules_maintenance_table`.
    pub rule_name: i32,
    pub arg0: OrdF64,
    #[serde(default)]
    pub arg1: OrdF64,
    pub score: i32,
    pub status: i32,
    #[serde(default)]
    pub crawler_type: i32,
    #[serde(default)]
    pub rule_type: i32,
}

/// `nh_rules_maintenance_table`: rule number → indicator name (SPEC §4 `rule_real_name`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RuleMaintenance {
    pub rule_name: i32,
    pub rule_real_name: String,
}
