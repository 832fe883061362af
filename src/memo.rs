//! Answers remembered per request line, for rule tables whose patterns are tested against
//! every line.
//!
//! Request lines repeat (a site has a few hundred pages and APIs; in a generated hour 85 % of
//! lines repeat one of the last 200 000), so a table remembers what it answered for the last
//! distinct lines: a repeated line costs a hash lookup, not a regex search. When full the memo
//! forgets everything; the frequent lines come back at once. It holds what the rules say about
//! a line, a pure function of the line and the rules, so it must be cleared when they change.

use std::collections::HashMap;

/// Distinct request lines a memo remembers: a few hundred KiB.
pub const MEMO_LINES: usize = 2048;

/// The answers for up to [`MEMO_LINES`] distinct lines.
#[derive(Clone, Debug)]
pub struct LineMemo<V> {
    answers: HashMap<Box<str>, V, foldhash::fast::FixedState>,
}

impl<V> Default for LineMemo<V> {
    fn default() -> Self {
        LineMemo {
            answers: HashMap::default(),
        }
    }
}

impl<V: Clone> LineMemo<V> {
    /// The answer for `line`: remembered, else `answer()`, remembered from now on.
    pub fn get_or_insert_with(&mut self, line: &str, answer: impl FnOnce() -> V) -> V {
        if let Some(v) = self.answers.get(line) {
            return v.clone();
        }
        let v = answer();
        if self.answers.len() >= MEMO_LINES {
            self.answers.clear();
        }
        self.answers.insert(line.into(), v.clone());
        v
    }

    /// Forgets every answer (the rules changed).
    pub fn clear(&mut self) {
        self.answers.clear();
    }

    /// How many lines are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.answers.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }
}

/// Which of a table's patterns a line matches, the usual answer to remember: bit `i` for
/// pattern `i`, inline up to 128 patterns (so a remembered answer is copied, not allocated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatternBits(smallvec::SmallVec<[u64; 2]>);

impl PatternBits {
    /// The bits of `matched` among `patterns` patterns.
    pub fn new(patterns: usize, matched: impl IntoIterator<Item = usize>) -> PatternBits {
        let mut bits = smallvec::smallvec![0u64; patterns.div_ceil(64)];
        for i in matched {
            bits[i / 64] |= 1 << (i % 64);
        }
        PatternBits(bits)
    }

    /// Whether pattern `i` matched.
    pub fn contains(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_until_full_then_starts_afresh() {
        let mut memo = LineMemo::default();
        let mut asked = 0;
        for round in 0..2 {
            for i in 0..MEMO_LINES {
                let v = memo.get_or_insert_with(&format!("GET /{i}"), || {
                    asked += 1;
                    i
                });
                assert_eq!(v, i);
            }
            // The second round is answered from memory.
            assert_eq!(asked, MEMO_LINES, "round {round}");
        }
        assert_eq!(memo.len(), MEMO_LINES);
        // One more line: everything is forgotten, and the new line remembered.
        memo.get_or_insert_with("GET /new", || usize::MAX);
        assert_eq!(memo.len(), 1);
        memo.clear();
        assert!(memo.is_empty());
    }

    #[test]
    fn pattern_bits_hold_what_matched() {
        let bits = PatternBits::new(130, [0, 63, 64, 129]);
        let set: Vec<usize> = (0..140).filter(|&i| bits.contains(i)).collect();
        assert_eq!(set, vec![0, 63, 64, 129]);
        assert!(!PatternBits::new(0, []).contains(0));
    }
}
