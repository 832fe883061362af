//! Every request-line regex of the filter, classify and analyze tables in one `RegexSet`.
//!
//! A processed record's request line is tested by the filter (one set), then by up to four
//! class lists, then by the candidate analyze rules: five to seven searches over the same
//! line, each with its own setup. [`LineRules`] does one search that reports every pattern
//! the line fully matches, and [`process`](super::process) reads all three answers from it.
//! The tables keep their own compiled sets, and their semantics: [`Filter`], [`Classifier`]
//! and [`Analyzer`] decide, given which patterns matched.

use std::ops::Range;

use anyhow::anyhow;
use regex::{RegexSet, SetMatches};

use super::{Analyzer, Classifier, Filter};
use crate::event::{BehaviorType, FlightType};

/// The request-line patterns of the three tables, and where each table's are in the set.
#[derive(Clone, Debug)]
pub struct LineRules {
    set: RegexSet,
    filter: Range<usize>,
    /// One range per class list, in classification order.
    classes: Vec<Range<usize>>,
    /// The analyze rules, in [`Analyzer`] order.
    analyze: Range<usize>,
}

/// Which patterns of a [`LineRules`] one request line fully matches.
pub struct LineMatches(SetMatches);

impl LineRules {
    /// The patterns of the compiled tables (already validated one by one), in one set.
    pub fn new(
        filter: &Filter,
        classifier: &Classifier,
        analyzer: &Analyzer,
    ) -> anyhow::Result<LineRules> {
        fn take<'p>(
            patterns: &mut Vec<&'p str>,
            more: impl Iterator<Item = &'p str>,
        ) -> Range<usize> {
            let start = patterns.len();
            patterns.extend(more);
            start..patterns.len()
        }
        let mut patterns: Vec<&str> = Vec::new();
        let filter = take(&mut patterns, filter.patterns().iter().map(String::as_str));
        let classes = classifier
            .pattern_lists()
            .map(|list| take(&mut patterns, list.iter().map(String::as_str)))
            .collect();
        let analyze = take(&mut patterns, analyzer.expressions());
        let set = RegexSet::new(&patterns)
            .map_err(|e| anyhow!("request-line rules: cannot build one regex set of the filter, classify and analyze rules: {e}"))?;
        Ok(LineRules {
            set,
            filter,
            classes,
            analyze,
        })
    }

    /// One search of `request` against every pattern.
    pub fn matches(&self, request: &str) -> LineMatches {
        LineMatches(self.set.matches(request))
    }

    /// [`Filter::is_filtered`].
    pub fn is_filtered(&self, m: &LineMatches) -> bool {
        self.filter.clone().any(|i| m.0.matched(i))
    }

    /// [`Classifier::classify`].
    pub fn classify(&self, classifier: &Classifier, m: &LineMatches) -> (FlightType, BehaviorType) {
        classifier.classify_with(|list| self.classes[list].clone().any(|i| m.0.matched(i)))
    }

    /// Whether the line matches the expression of the `rule`-th analyze rule.
    pub fn analyze_matches(&self, m: &LineMatches, rule: usize) -> bool {
        m.0.matched(self.analyze.start + rule)
    }
}

#[cfg(test)]
mod tests {
    use crate::dataprocess::DataRules;
    use crate::gen::{generate, GenOptions};

    /// On every line of a generated log and on edge cases, the one-pass answers equal the
    /// tables' own: filtered, class, and the analyze rule picked for each method.
    #[test]
    fn one_pass_answers_equal_the_tables_own() {
        let rules =
            DataRules::load_dir(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"))
                .unwrap();
        let (mut log, mut truth) = (Vec::new(), Vec::new());
        let opts = GenOptions {
            lines: 3_000,
            ..Default::default()
        };
        generate(&opts, &mut log, &mut truth).unwrap();
        let log = String::from_utf8_lossy(&log).into_owned();
        let mut lines: Vec<String> = log
            .lines()
            .filter_map(|l| l.split("#CS#").nth(1))
            .map(str::to_owned)
            .collect();
        lines.extend(
            [
                "",
                "GET /a.css",
                "GET /a.css HTTP/1.1 x",
                "POST /B2C40/query/jaxb/direct/query.ao",
                "post /B2C40/query/jaxb/direct/query.ao HTTP/1.1",
                "POST /B2C40/query/jaxb/direct/lowfare.ao?x=1 HTTP/1.0",
                "GET /B2C40/query/jaxb/direct/calendar.ao?depCity=CAN HTTP/1.1",
                "POST /ita/intl/zh/shop/query HTTP/1.1",
                "POST /ita/intl/zh/passengers/submit HTTP/1.1",
                "POST /B2C40/bookingnew/order/create.ao HTTP/1.1",
                "GET /B2C40/dist/x.js HTTP/1.1",
            ]
            .map(str::to_owned),
        );
        let mut classes = std::collections::BTreeSet::new();
        for line in &lines {
            let m = rules.lines.matches(line);
            assert_eq!(
                rules.lines.is_filtered(&m),
                rules.filter.is_filtered(line),
                "{line}"
            );
            let class = rules.classifier.classify(line);
            assert_eq!(rules.lines.classify(&rules.classifier, &m), class, "{line}");
            classes.insert(format!("{class:?}"));
            for method in ["GET", "POST", "get", ""] {
                let (f, b) = class;
                let own = rules.analyzer.find(method, f, b, line).map(|r| r.id);
                let one_pass = rules
                    .analyzer
                    .find_with(method, f, b, |i| rules.lines.analyze_matches(&m, i))
                    .map(|r| r.id);
                assert_eq!(one_pass, own, "{method} {line}");
            }
        }
        // The lines reach every class, so the comparison covers each list.
        assert!(classes.len() >= 5, "{classes:?}");
    }
}
