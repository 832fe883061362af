//! Filter (SPEC §3.2) and classification (SPEC §3.4) of the request line.
//!
//! Rule regexes have Java `String.matches` semantics: they must match the WHOLE request line
//! `METHOD URI PROTOCOL`. They are compiled as `^(?:expr)$`. Each stage is one `RegexSet`
//! pass per record.

use anyhow::anyhow;
use regex::{Regex, RegexSet};

use crate::event::{BehaviorType, FlightType};
use crate::rules::tables::{ClassifyRule, FilterRule};

/// The full-match form of a rule regex.
pub fn full_match_pattern(expr: &str) -> String {
    format!("^(?:{expr})$")
}

/// Compiles one rule regex with full-match semantics; the error names table, row and regex.
pub fn compile_full(table: &str, id: i64, expr: &str) -> anyhow::Result<Regex> {
    Regex::new(&full_match_pattern(expr))
        .map_err(|e| anyhow!("{table}: row id {id}: bad regex `{expr}`: {e}"))
}

/// Compiles a set of rule regexes; each one is first compiled on its own so that an error
/// names the offending row.
fn compile_set<'a>(
    table: &str,
    rows: impl Iterator<Item = (i64, &'a str)> + Clone,
) -> anyhow::Result<RegexSet> {
    for (id, expr) in rows.clone() {
        compile_full(table, id, expr)?;
    }
    RegexSet::new(rows.map(|(_, e)| full_match_pattern(e)))
        .map_err(|e| anyhow!("{table}: cannot build the regex set: {e}"))
}

/// Compiled `nh_filter_rule`.
#[derive(Clone, Debug)]
pub struct Filter {
    set: RegexSet,
}

impl Filter {
    pub fn compile(rows: &[FilterRule]) -> anyhow::Result<Filter> {
        let set = compile_set(
            "nh_filter_rule",
            rows.iter().map(|r| (r.id, r.value.as_str())),
        )?;
        Ok(Filter { set })
    }

    /// The request line fully matches a filter rule: drop the record.
    pub fn is_filtered(&self, request: &str) -> bool {
        self.set.is_match(request)
    }

    /// The full-match patterns of the rules.
    pub fn patterns(&self) -> &[String] {
        self.set.patterns()
    }
}

/// The four class lists in classification order.
const CLASSES: [(FlightType, BehaviorType); 4] = [
    (FlightType::National, BehaviorType::Query),
    (FlightType::International, BehaviorType::Query),
    (FlightType::National, BehaviorType::Book),
    (FlightType::International, BehaviorType::Book),
];

/// Compiled `nh_classify_rule`: one regex set per class list.
#[derive(Clone, Debug)]
pub struct Classifier {
    sets: Vec<RegexSet>,
}

impl Classifier {
    /// Rows must have `flight_type` and `operation_type` in {0, 1}.
    pub fn compile(rows: &[ClassifyRule]) -> anyhow::Result<Classifier> {
        for r in rows {
            if !(0..=1).contains(&r.flight_type) || !(0..=1).contains(&r.operation_type) {
                return Err(anyhow!(
                    "nh_classify_rule: row id {}: flight_type ({}) and operation_type ({}) must be 0 or 1",
                    r.id,
                    r.flight_type,
                    r.operation_type
                ));
            }
        }
        let sets = CLASSES
            .iter()
            .map(|&(f, b)| {
                let list = rows
                    .iter()
                    .filter(move |r| r.flight_type == f.id() && r.operation_type == b.id())
                    .map(|r| (r.id, r.expression.as_str()));
                compile_set("nh_classify_rule", list)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Classifier { sets })
    }

    /// First match in the order domestic-query, international-query, domestic-book,
    /// international-book; else (Other, Other).
    pub fn classify(&self, request: &str) -> (FlightType, BehaviorType) {
        self.classify_with(|list| self.sets[list].is_match(request))
    }

    /// [`Classifier::classify`] with the regex test given: `list_matches(i)` says whether the
    /// request line fully matches a pattern of the `i`-th of [`Classifier::pattern_lists`].
    pub fn classify_with(
        &self,
        list_matches: impl Fn(usize) -> bool,
    ) -> (FlightType, BehaviorType) {
        (0..CLASSES.len())
            .find(|&i| list_matches(i))
            .map_or((FlightType::Other, BehaviorType::Other), |i| CLASSES[i])
    }

    /// The full-match patterns of each class list, in classification order.
    pub fn pattern_lists(&self) -> impl Iterator<Item = &[String]> {
        self.sets.iter().map(RegexSet::patterns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cr(id: i64, e: &str, f: i32, o: i32) -> ClassifyRule {
        ClassifyRule {
            id,
            expression: e.into(),
            flight_type: f,
            operation_type: o,
        }
    }

    #[test]
    fn full_match_semantics() {
        let f = Filter::compile(&[FilterRule {
            id: 1,
            value: r"GET /a\.css".into(),
        }])
        .unwrap();
        assert!(f.is_filtered("GET /a.css"));
        assert!(!f.is_filtered("GET /a.css HTTP/1.1"), "not a full match");
        assert!(!f.is_filtered("XGET /a.css"));
        // Alternation is grouped: `a|b` must not become `^a|b$`.
        let f = Filter::compile(&[FilterRule {
            id: 1,
            value: "GET /a|POST /b".into(),
        }])
        .unwrap();
        assert!(f.is_filtered("GET /a"));
        assert!(!f.is_filtered("GET /ab"));
        assert!(!f.is_filtered("xPOST /b"));
        let empty = Filter::compile(&[]).unwrap();
        assert!(!empty.is_filtered("GET /a.css"));
    }

    #[test]
    fn bad_regex_names_row() {
        let e = Filter::compile(&[
            FilterRule {
                id: 1,
                value: "ok".into(),
            },
            FilterRule {
                id: 42,
                value: "(unclosed".into(),
            },
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("nh_filter_rule") && e.contains("row id 42") && e.contains("(unclosed"),
            "{e}"
        );
        let e = Classifier::compile(&[cr(9, "[", 0, 0)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("nh_classify_rule: row id 9"), "{e}");
        let e = Classifier::compile(&[cr(3, "x", 2, 0)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("row id 3"), "{e}");
    }

    #[test]
    fn classification_order() {
        let c = Classifier::compile(&[
            // Listed in reverse order on purpose: the class order decides, not the row order.
            cr(1, "POST /both.*", 1, 1),
            cr(2, "POST /both.*", 0, 1),
            cr(3, "POST /both.*|POST /intl.*", 1, 0),
            cr(4, "POST /both.*", 0, 0),
            cr(5, "POST /book.*", 0, 1),
            cr(6, "POST /book.*|POST /ibook.*", 1, 1),
            cr(7, "POST /q", 1, 1),
            cr(8, "POST /q", 0, 1),
            cr(9, "POST /q", 1, 0),
        ])
        .unwrap();
        use BehaviorType as B;
        use FlightType as F;
        assert_eq!(c.classify("POST /both"), (F::National, B::Query));
        assert_eq!(c.classify("POST /intl"), (F::International, B::Query));
        assert_eq!(
            c.classify("POST /q"),
            (F::International, B::Query),
            "query before book"
        );
        assert_eq!(c.classify("POST /book"), (F::National, B::Book));
        assert_eq!(c.classify("POST /ibook"), (F::International, B::Book));
        assert_eq!(c.classify("GET /index.html"), (F::Other, B::Other));
        assert_eq!(
            c.classify("POST /q HTTP/1.1"),
            (F::Other, B::Other),
            "full match"
        );
    }
}
