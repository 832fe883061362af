//! Rule tables by name, for the HTTP API's rule edits (SPEC §7): a table as JSON rows, a
//! snapshot with one table replaced, and a table written back as its `rules/` TOML file.
//!
//! A table is named as its MySQL table (`nh_rule`, `nh_query_critical_pages`, ...), which is
//! its file name without `.toml`.

use anyhow::{anyhow, Context};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::*;

/// The table names, in [`ALL_FILES`] order.
pub fn table_names() -> impl Iterator<Item = &'static str> {
    ALL_FILES.iter().map(|f| f.trim_end_matches(".toml"))
}

/// The file of table `name` (`None` for an unknown name).
pub fn file_of(name: &str) -> Option<&'static str> {
    ALL_FILES
        .iter()
        .copied()
        .find(|f| f.trim_end_matches(".toml") == name)
}

/// Why `name` is not a table: the message for an unknown table name, listing the tables.
pub fn unknown_table(name: &str) -> String {
    let names: Vec<&str> = table_names().collect();
    format!(
        "unknown rule table `{name}`; the tables are {}",
        names.join(", ")
    )
}

/// Expands `$arm!(field)` for the field of [`RuleTables`] that file `$file` holds, or
/// `$unknown` for another file.
macro_rules! by_file {
    ($file:expr, $arm:ident, $unknown:expr) => {
        match $file {
            FILTER => $arm!(filter),
            CLASSIFY => $arm!(classify),
            ANALYZE => $arm!(analyze),
            CRITICAL_PAGES => $arm!(critical_pages),
            IP_BLACKLIST => $arm!(ip_blacklist),
            PROCESS_INFO => $arm!(process_info),
            STRATEGY => $arm!(strategy),
            RULE => $arm!(rule),
            MAINTENANCE => $arm!(maintenance),
            SERVICE_APP => $arm!(service_app),
            SERVICE_NORMAL => $arm!(service_normal),
            _ => $unknown,
        }
    };
}

/// The rows of the table in `file`, as JSON (the field names of the rule files).
pub fn table_json(tables: &RuleTables, file: &str) -> Option<Value> {
    macro_rules! arm {
        ($field:ident) => {
            serde_json::to_value(&tables.$field).ok()
        };
    }
    by_file!(file, arm, None)
}

/// `tables` with the table in `file` replaced by `rows` (a JSON array of rows, or an object
/// with a `rows` array). Errors name the row and field; the result is not validated yet (see
/// [`RuleTables::validate`]).
pub fn with_table(tables: &RuleTables, file: &str, rows: Value) -> anyhow::Result<RuleTables> {
    let rows = match rows {
        Value::Object(mut m) if m.contains_key("rows") => m.remove("rows").unwrap_or_default(),
        other => other,
    };
    let Value::Array(rows) = rows else {
        return Err(anyhow!(
            "the body must be a JSON array of rows, or an object with a `rows` array"
        ));
    };
    let mut out = tables.clone();
    macro_rules! arm {
        ($field:ident) => {
            out.$field = parse_rows(rows)?
        };
    }
    by_file!(
        file,
        arm,
        return Err(anyhow!("unknown rule table file {file}"))
    );
    Ok(out)
}

fn parse_rows<T: DeserializeOwned>(rows: Vec<Value>) -> anyhow::Result<Vec<T>> {
    rows.into_iter()
        .enumerate()
        .map(|(i, row)| {
            let id = row
                .get("id")
                .map(|v| format!(" (id = {v})"))
                .unwrap_or_default();
            serde_json::from_value(row).with_context(|| format!("row {}{id}", i + 1))
        })
        .collect()
}

/// The table in `file` as the text of its rule file, after `header` (the comment lines that
/// head the file now, kept so that an edit does not drop the table's documentation).
pub fn table_toml(tables: &RuleTables, file: &str, header: &str) -> anyhow::Result<String> {
    #[derive(Serialize)]
    struct Rows<'a, T> {
        rows: &'a [T],
    }
    macro_rules! arm {
        ($field:ident) => {
            toml::to_string(&Rows {
                rows: &tables.$field,
            })
        };
    }
    let body = by_file!(
        file,
        arm,
        return Err(anyhow!("unknown rule table file {file}"))
    )
    .with_context(|| format!("{file}: cannot write as TOML"))?;
    Ok(format!("{header}{body}"))
}

/// The leading comment (and blank) lines of a rule file's text.
pub fn comment_header(text: &str) -> String {
    text.lines()
        .take_while(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> RuleTables {
        RuleTables::load_dir(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"))
            .unwrap()
    }

    #[test]
    fn every_table_round_trips_through_json_and_toml() {
        let tables = defaults();
        for name in table_names() {
            let file = file_of(name).unwrap();
            let json = table_json(&tables, file).unwrap();
            let back = with_table(&RuleTables::default(), file, json).unwrap();
            let text = table_toml(&back, file, "# header\n").unwrap();
            assert!(text.starts_with("# header\n"));
            let dir = tempdir(name);
            for f in ALL_FILES {
                let body = if f == file {
                    text.clone()
                } else {
                    table_toml(&tables, f, "").unwrap()
                };
                std::fs::write(dir.join(f), body).unwrap();
            }
            assert_eq!(RuleTables::load_dir(&dir).unwrap(), tables, "table {name}");
            std::fs::remove_dir_all(dir).unwrap();
        }
    }

    fn tempdir(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("antispider-edit-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn bad_rows_name_the_row() {
        let tables = defaults();
        let err = with_table(
            &tables,
            RULE,
            serde_json::json!([{"id": "r1"}, {"id": "r2", "bogus": 1}]),
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").starts_with("row 1 (id = \"r1\")"),
            "{err:#}"
        );
        let err = with_table(&tables, RULE, serde_json::json!({"x": 1})).unwrap_err();
        assert!(err.to_string().contains("JSON array"), "{err}");
        assert!(file_of("nh_nope").is_none());
        assert_eq!(file_of("nh_rule"), Some(RULE));
    }

    #[test]
    fn header_keeps_leading_comments_only() {
        let h = comment_header("# a\n\n# b\n[[rows]]\n# c\nid = 1\n");
        assert_eq!(h, "# a\n\n# b\n");
    }
}
