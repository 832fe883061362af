//! Rule tables (SPEC §2.2): row types, loading from `rules/`, and watching for edits.

pub mod tables;
pub use tables::*;
