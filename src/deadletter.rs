//! Dead letters: input the engine could not use, with the reason, never silently dropped.
//!
//! The copy of the line is masked (SPEC §2.1): a malformed line must not leak a phone or ID
//! number either. Invalid UTF-8 is shown lossily, after masking.

use serde::Serialize;

use crate::dataprocess::Masker;

/// Longest line excerpt kept in a dead letter (the reason says when it was cut).
pub const MAX_EXCERPT: usize = 4096;

#[derive(Clone, Debug, Serialize)]
pub struct DeadLetter<'a> {
    /// 1-based line number in the source.
    pub line_no: u64,
    /// Machine-readable reason: a parse error kind, or `late`.
    pub reason: &'a str,
    /// Human-readable detail (never contains the raw line).
    pub detail: &'a str,
    /// The masked line, cut to [`MAX_EXCERPT`] bytes.
    pub line: String,
    pub truncated: bool,
}

impl<'a> DeadLetter<'a> {
    pub fn new(
        line_no: u64,
        reason: &'a str,
        detail: &'a str,
        raw: &[u8],
        masker: &Masker,
    ) -> Self {
        let mut end = raw.len();
        while end > 0 && matches!(raw[end - 1], b'\n' | b'\r') {
            end -= 1;
        }
        let truncated = end > MAX_EXCERPT;
        let text = String::from_utf8_lossy(&raw[..end.min(MAX_EXCERPT)]);
        DeadLetter {
            line_no,
            reason,
            detail,
            line: masker.mask(&text).into_owned(),
            truncated,
        }
    }

    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("dead letter serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataprocess::MaskMode;

    #[test]
    fn dead_letters_are_masked() {
        let m = Masker::new(MaskMode::Hmac, b"k");
        let d = DeadLetter::new(7, "field_count", "x", b"bad userId=13812345678 line\n", &m);
        assert!(!d.line.contains("13812345678"));
        assert_eq!(d.line_no, 7);
        let bin = DeadLetter::new(8, "invalid_utf8", "x", b"\xff\xfe 13812345678", &m);
        assert!(!bin.line.contains("13812345678"));
    }
}
