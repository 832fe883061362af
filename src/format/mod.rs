//! Access-log formats (SPEC §2.1): `cs`, `combined` and `json` → [`crate::event::LogRecord`].

pub mod time;
