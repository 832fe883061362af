//! Loading a rule table from its TOML file under `rules/` (SPEC §2.2, source 1).
//!
//! Every rule file has the same shape: an array of tables named `rows`, one table per row, the
//! keys being the serde field names of the row type, e.g.
//!
//! ```toml
//! [[rows]]
//! id = 1
//! value = '(?i).*\.(css|js)( HTTP/[0-9.]+)?'
//! ```
//!
//! A file without any `rows` is an empty table. Any other top-level key is an error (it is
//! almost always a typo such as `[[row]]`, which would otherwise silently empty the table).

use std::path::Path;

use anyhow::{anyhow, Context};
use serde::de::DeserializeOwned;

/// Reads and parses one rule file. Errors name the file and the problem: a TOML syntax error
/// with its line and column, or the (1-based) row whose fields do not fit the row type, e.g.
/// `rules/nh_filter_rule.toml: row 3 (id = 7): missing field `value``.
pub fn load_table<T: DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read rule file", path.display()))?;
    parse_table(&text).map_err(|e| anyhow!("{}: {}", path.display(), e))
}

/// Parses the text of a rule file (see [`load_table`]); errors do not name a file.
pub fn parse_table<T: DeserializeOwned>(text: &str) -> anyhow::Result<Vec<T>> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| anyhow!("{}", e.to_string().trim_end()))?;
    let mut rows_value = None;
    for (key, value) in table {
        if key == "rows" {
            rows_value = Some(value);
        } else {
            return Err(anyhow!(
                "unknown top-level key `{key}` (a rule file holds only `[[rows]]` tables)"
            ));
        }
    }
    let Some(rows_value) = rows_value else {
        return Ok(Vec::new());
    };
    let toml::Value::Array(rows) = rows_value else {
        return Err(anyhow!("`rows` must be an array of tables (`[[rows]]`)"));
    };
    let mut out = Vec::with_capacity(rows.len());
    for (i, row) in rows.into_iter().enumerate() {
        let id = match &row {
            toml::Value::Table(t) => t.get("id").map(|v| format!(" (id = {v})")),
            _ => None,
        }
        .unwrap_or_default();
        let parsed: T = row
            .try_into()
            .map_err(|e| anyhow!("row {}{}: {}", i + 1, id, e.to_string().trim_end()))?;
        out.push(parsed);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::tables::FilterRule;

    #[test]
    fn parses_rows() {
        let rows: Vec<FilterRule> =
            parse_table("# c\n[[rows]]\nid = 1\nvalue = 'a.*'\n[[rows]]\nid = 2\nvalue = '\\d'\n")
                .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].value, "\\d");
    }

    #[test]
    fn empty_file_is_empty_table() {
        let rows: Vec<FilterRule> = parse_table("# nothing\n").unwrap();
        assert!(rows.is_empty());
    }

    #[test]
    fn errors_name_row_and_problem() {
        let e = parse_table::<FilterRule>("[[rows]]\nid = 1\nvalue = 'x'\n[[rows]]\nid = 7\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 2 (id = 7)"), "{e}");
        assert!(e.contains("missing field `value`"), "{e}");
    }

    #[test]
    fn syntax_error_has_line() {
        let e = parse_table::<FilterRule>("[[rows]]\nid = 1\nvalue = 'x\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn unknown_top_level_key() {
        let e = parse_table::<FilterRule>("[[row]]\nid = 1\nvalue = 'x'\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown top-level key `row`"), "{e}");
    }

    #[test]
    fn load_names_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nh_filter_rule.toml");
        std::fs::write(&p, "[[rows]]\nid = 1\n[[rows]]\nid = 2\nvalue = 'y'\n").unwrap();
        let e = load_table::<FilterRule>(&p).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: row 1 (id = 1): ", p.display())),
            "{e}"
        );
        let missing = load_table::<FilterRule>(&dir.path().join("nope.toml")).unwrap_err();
        assert!(format!("{missing:#}").contains("nope.toml"));
    }
}
