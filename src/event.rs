//! Record types that flow between stages.
//!
//! `LogRecord` is one parsed access-log line (SPEC §2.1), before any cleaning. `ProcessedData`
//! is what dataprocess (SPEC §3) makes of it and what rulecompute (SPEC §4) consumes.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// One access-log line split into the nginx variables the engine uses.
///
/// Every field is the raw, unmasked text of the line (masking happens in dataprocess), so a
/// `LogRecord` must never be written to an output as-is.
///
/// The text fields borrow from the line where it holds them as they are: a line the filter
/// drops (about 4 in 10) then allocates nothing, and dataprocess copies only what it keeps.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LogRecord<'a> {
    /// Event time, milliseconds since the Unix epoch (UTC), from `time_iso8601` else `time_local`.
    pub time_ms: i64,
    /// `time_iso8601` as found in the line (rendered from `time_ms` when the format lacks it).
    pub time_iso8601: Cow<'a, str>,
    /// `time_local` as found in the line (may be empty).
    pub time_local: Cow<'a, str>,
    /// The full request line, `METHOD URI PROTOCOL`.
    pub request: Cow<'a, str>,
    pub request_method: Cow<'a, str>,
    pub content_type: Cow<'a, str>,
    pub request_body: Cow<'a, str>,
    pub http_referer: Cow<'a, str>,
    pub remote_addr: Cow<'a, str>,
    pub http_user_agent: Cow<'a, str>,
    pub server_addr: Cow<'a, str>,
    /// Virtual host, when the format carries one (combined with a leading `$host`).
    pub host: Cow<'a, str>,
    pub http_cookie: Cow<'a, str>,
    pub connections_active: Option<u32>,
    pub status: Option<u16>,
    pub body_bytes_sent: Option<u64>,
    /// `$request_time` in seconds.
    pub request_time: Option<f64>,
}

impl LogRecord<'_> {
    /// The record with every text field owned (for keeping it beyond its line).
    pub fn into_owned(self) -> LogRecord<'static> {
        let own = |s: Cow<'_, str>| Cow::Owned(s.into_owned());
        LogRecord {
            time_ms: self.time_ms,
            time_iso8601: own(self.time_iso8601),
            time_local: own(self.time_local),
            request: own(self.request),
            request_method: own(self.request_method),
            content_type: own(self.content_type),
            request_body: own(self.request_body),
            http_referer: own(self.http_referer),
            remote_addr: own(self.remote_addr),
            http_user_agent: own(self.http_user_agent),
            server_addr: own(self.server_addr),
            host: own(self.host),
            http_cookie: own(self.http_cookie),
            connections_active: self.connections_active,
            status: self.status,
            body_bytes_sent: self.body_bytes_sent,
            request_time: self.request_time,
        }
    }
}

/// SPEC §3.4 flight type. Serialized by name in the `#CS#` output, as the original.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FlightType {
    National,
    International,
    Other,
}

/// SPEC §3.4 behaviour (operation) type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum BehaviorType {
    Query,
    Book,
    Other,
}

/// SPEC §3.5 travel type derived from the referer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TravelType {
    OneWay,
    RoundTrip,
    Unknown,
}

impl FlightType {
    pub fn name(self) -> &'static str {
        match self {
            FlightType::National => "National",
            FlightType::International => "International",
            FlightType::Other => "Other",
        }
    }
    /// Numeric id as in the original enums (National=0, International=1, Other=-1).
    pub fn id(self) -> i32 {
        match self {
            FlightType::National => 0,
            FlightType::International => 1,
            FlightType::Other => -1,
        }
    }
}

impl BehaviorType {
    pub fn name(self) -> &'static str {
        match self {
            BehaviorType::Query => "Query",
            BehaviorType::Book => "Book",
            BehaviorType::Other => "Other",
        }
    }
    pub fn id(self) -> i32 {
        match self {
            BehaviorType::Query => 0,
            BehaviorType::Book => 1,
            BehaviorType::Other => -1,
        }
    }
}

impl TravelType {
    pub fn name(self) -> &'static str {
        match self {
            TravelType::OneWay => "OneWay",
            TravelType::RoundTrip => "RoundTrip",
            TravelType::Unknown => "Unknown",
        }
    }
    pub fn id(self) -> i32 {
        match self {
            TravelType::OneWay => 0,
            TravelType::RoundTrip => 1,
            TravelType::Unknown => -1,
        }
    }
}

/// Parsed query body (SPEC §3.6). Field names follow the original bean so its JSON matches.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryRequestData {
    pub flight_type: i32,
    pub dep_city: String,
    pub arr_city: String,
    pub flight_date: String,
    pub adult_num: String,
    pub child_num: String,
    pub infant_num: String,
    pub country: String,
    pub travel_type: i32,
}

/// Parsed booking body (SPEC §3.6). ID numbers and the contact phone are already masked.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BookRequestData {
    pub flight_type: i32,
    pub travel_type: i32,
    pub book_user_id: String,
    pub book_un_user_id: String,
    pub psg_name: Vec<String>,
    pub psg_type: Vec<String>,
    pub id_type: Vec<String>,
    pub id_card: Vec<String>,
    pub contract_name: String,
    pub contract_phone: String,
    pub dep_city: Vec<String>,
    pub arr_city: Vec<String>,
    pub flight_date: Vec<String>,
    pub flight_no: Vec<String>,
    pub cabin: Vec<String>,
}

/// A cleaned, masked, classified and parsed request (SPEC §3.8).
///
/// Every string in here has been through masking: it is safe to write anywhere.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessedData {
    pub time_ms: i64,
    pub request_method: String,
    pub request: String,
    pub remote_addr: String,
    pub http_user_agent: String,
    pub time_iso8601: String,
    pub server_addr: String,
    /// SPEC §3.7: the IP is in the blacklist collection.
    pub high_frq_ip_group: bool,
    pub flight_type: FlightType,
    pub behavior_type: BehaviorType,
    pub travel_type: TravelType,
    /// Core params: query values, else book values (SPEC fixes the original's overwrite bug).
    pub flight_date: String,
    pub dep_city: String,
    pub arr_city: String,
    /// Masked JSESSIONID; `None` when the cookie has none.
    pub jsessionid: Option<String>,
    /// Masked userId cookie; `None` when absent.
    pub user_id: Option<String>,
    pub query: Option<QueryRequestData>,
    pub book: Option<BookRequestData>,
    pub http_referer: String,
    pub status: Option<u16>,
    pub request_time: Option<f64>,
}
