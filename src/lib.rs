//! antispider: a real-time anti-crawler engine on timely/differential dataflow.
//!
//! The modules follow SPEC's table of contents:
//! - [`format`]: the three access-log formats (SPEC §2.1) → [`event::LogRecord`];
//! - [`rules`]: the rule tables (SPEC §2.2), loaded from `rules/` and watched;
//! - [`dataprocess`]: filter, mask, classify, travel type, body parsing (SPEC §3);
//! - [`rulecompute`]: the 8 windowed per-IP indicators (SPEC §4);
//! - [`scoring`]: flow scores and the blacklist (SPEC §5);
//! - [`dataflow`]: assembles the one differential dataflow from the stages above;
//! - [`api`] and [`ops`]: the HTTP API and what it sees of the engine (SPEC §7);
//! - [`source`] and [`sink`]: connectors; [`gen`]: synthetic traffic; [`bench`]: benchmark tools;
//! - [`alloc`]: the allocator's settings; [`buffers`]: byte buffers kept for reuse.

pub mod alloc;
pub mod anomaly;
pub mod api;
pub mod bench;
pub mod buffers;
pub mod cluster;
pub mod config;
pub mod dataflow;
pub mod dataprocess;
pub mod deadletter;
pub mod engine;
pub mod event;
pub mod format;
pub mod gen;
pub mod harness;
pub mod latency;
pub mod memo;
pub mod monitor;
pub mod opprof;
pub mod ops;
pub mod rulecompute;
pub mod rules;
pub mod scoring;
pub mod sink;
pub mod source;
