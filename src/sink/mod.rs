//! Sinks: where results leave the engine. `files` writes the embedded default's JSON lines and
//! `#CS#` files; `blacklist` turns blacklist collection changes into add/remove decisions.

pub mod backup;
pub mod blacklist;
pub mod files;
pub mod kafka;
pub mod mysql;
pub mod redis;
