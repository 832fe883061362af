//! Masking of phone and ID numbers (SPEC §3.3).
//!
//! A *sensitive number* is a maximal run of ASCII digits (bounded by non-digits or the ends of
//! the string) that is
//! - a Chinese mobile number: 11 digits, `1[3-9]` followed by 9 digits;
//! - an ID number: 18 digits, or 15 digits, or 17 digits immediately followed by `X`/`x` (the
//!   `X` is part of the match). The `X` counts whatever follows it: the 18th character of an
//!   ID is a check character computed from the first 17 digits, so leaving those 17 digits
//!   visible would leak the whole ID;
//! - (extension) `86` + a mobile number as a 13-digit run (`+8613812345678`): the 11-digit
//!   mobile part is masked, the `86` kept. 13-digit runs that are not `86` + mobile (e.g.
//!   millisecond timestamps) are left alone.
//!
//! Digit runs of any other length are left alone, so a phone-like substring of a longer run
//! (`138123456789`) or of a timestamp is not touched.
//!
//! Escapes: URL-encoded (`%22`) and nginx-escaped (`\x22`) text puts the escape's hex digits
//! right before the number (`json=%7B%22phone%22%3A%2213818791413%22%7D` has the run
//! `2213818791413`). When the raw run is not sensitive, the run without the digits that belong
//! to a directly preceding `%HH` / `\xHH` escape is tried too, so such numbers are masked.
//!
//! Each sensitive number is replaced by [`Masker::hash`] of its text: HMAC-SHA256 with the
//! configured secret in lowercase hex (default), or uppercase hex MD5 (the original's format,
//! for compatibility only — MD5 of a phone number is trivially reversible by enumeration).
//! A hash never contains a sensitive-looking digit run itself, so masking is idempotent on
//! hashes (see [`Masker::hash`]).

use std::borrow::Cow;

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// How sensitive numbers are hashed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskMode {
    /// HMAC-SHA256 keyed with the secret, lowercase hex (64 chars).
    #[default]
    Hmac,
    /// Unkeyed MD5, uppercase hex (32 chars), as the original system.
    Md5,
}

impl std::str::FromStr for MaskMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<MaskMode> {
        match s.to_ascii_lowercase().as_str() {
            "hmac" => Ok(MaskMode::Hmac),
            "md5" => Ok(MaskMode::Md5),
            other => Err(anyhow::anyhow!(
                "unknown mask mode `{other}` (expected `hmac` or `md5`)"
            )),
        }
    }
}

/// Replaces phone and ID numbers by their hash. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Masker {
    mode: MaskMode,
    /// The HMAC keyed with the secret, cloned for every hash.
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masker")
            .field("mode", &self.mode)
            .field("secret", &"<redacted>")
            .finish()
    }
}

const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";
const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn hex(bytes: &[u8], digits: &[u8; 16]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(digits[(b >> 4) as usize] as char);
        s.push(digits[(b & 15) as usize] as char);
    }
    s
}

impl Masker {
    /// A masker; `secret` keys the HMAC (unused in `Md5` mode). Any length is accepted.
    pub fn new(mode: MaskMode, secret: &[u8]) -> Masker {
        let mac =
            <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC accepts keys of any length");
        Masker { mode, mac }
    }

    pub fn mode(&self) -> MaskMode {
        self.mode
    }

    /// The replacement text for `s`: the hex digest of `s`, unless that digest itself contains
    /// a sensitive-looking digit run (about 1 % of HMAC and 0.5 % of MD5 digests: hex is mostly
    /// digits), in which case the digest of `s + "\0" + n` for the smallest `n ≥ 1` that has
    /// none. So a masked string never looks sensitive, masking is idempotent on hashes
    /// (`mask(hash(x)) == hash(x)`), and the MD5 mode equals the original's MD5 except in
    /// those rare cases.
    pub fn hash(&self, s: &str) -> String {
        let mut n = 0u32;
        loop {
            let h = if n == 0 {
                self.digest(&[s.as_bytes()])
            } else {
                self.digest(&[s.as_bytes(), b"\0", n.to_string().as_bytes()])
            };
            if !contains_sensitive(&h) {
                return h;
            }
            n += 1;
        }
    }

    fn digest(&self, parts: &[&[u8]]) -> String {
        match self.mode {
            MaskMode::Hmac => {
                let mut mac = self.mac.clone();
                for p in parts {
                    mac.update(p);
                }
                hex(&mac.finalize().into_bytes(), HEX_LOWER)
            }
            MaskMode::Md5 => {
                let mut md = Md5::new();
                for p in parts {
                    md.update(p);
                }
                hex(&md.finalize(), HEX_UPPER)
            }
        }
    }

    /// True when `s` has the shape of a [`Masker::hash`] output of this mode.
    pub fn looks_hashed(&self, s: &str) -> bool {
        match self.mode {
            MaskMode::Hmac => {
                s.len() == 64
                    && s.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            }
            MaskMode::Md5 => {
                s.len() == 32
                    && s.bytes()
                        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
            }
        }
    }

    /// `s` with every sensitive number (see the module docs) replaced by its hash; borrowed
    /// when there is none.
    pub fn mask<'a>(&self, s: &'a str) -> Cow<'a, str> {
        let b = s.as_bytes();
        let mut out: Option<String> = None;
        let mut copied = 0;
        for (start, end) in long_digit_runs(b) {
            if let Some((ms, me)) = sensitive_in_run(b, start, end) {
                let o = out.get_or_insert_with(|| String::with_capacity(s.len() + 64));
                // ms/me are at ASCII positions, hence char boundaries.
                o.push_str(&s[copied..ms]);
                o.push_str(&self.hash(&s[ms..me]));
                copied = me;
            }
        }
        match out {
            None => Cow::Borrowed(s),
            Some(mut o) => {
                o.push_str(&s[copied..]);
                Cow::Owned(o)
            }
        }
    }
}

fn is_hex_letter(c: u8) -> bool {
    matches!(c, b'a'..=b'f' | b'A'..=b'F')
}

/// How many leading digits of the run starting at `start` are the hex digits of a directly
/// preceding `%HH` or `\xHH` escape (0, 1 or 2).
fn escape_digits(b: &[u8], start: usize) -> usize {
    let at = |i: usize, c: u8| i < b.len() && b[i] == c;
    let esc_before = |p: usize| {
        // An escape introducer ends right before position p.
        (p >= 1 && at(p - 1, b'%')) || (p >= 2 && at(p - 1, b'x') && at(p - 2, b'\\'))
    };
    if esc_before(start) {
        2
    } else if start >= 1 && is_hex_letter(b[start - 1]) && esc_before(start - 1) {
        1
    } else {
        0
    }
}

/// The sensitive number (byte range) in the digit run `b[start..end]`, if any.
fn sensitive_in_run(b: &[u8], start: usize, end: usize) -> Option<(usize, usize)> {
    if let Some(m) = classify_run(b, start, end) {
        return Some(m);
    }
    let k = escape_digits(b, start);
    if k > 0 && start + k < end {
        return classify_run(b, start + k, end);
    }
    None
}

fn is_mobile(d: &[u8]) -> bool {
    d.len() == 11 && d[0] == b'1' && (b'3'..=b'9').contains(&d[1])
}

/// Whether the digits `b[start..end]`, taken as a whole run, are sensitive.
fn classify_run(b: &[u8], start: usize, end: usize) -> Option<(usize, usize)> {
    let run = &b[start..end];
    match run.len() {
        11 if is_mobile(run) => Some((start, end)),
        15 | 18 => Some((start, end)),
        17 if end < b.len() && (b[end] == b'X' || b[end] == b'x') => Some((start, end + 1)),
        13 if run.starts_with(b"86") && is_mobile(&run[2..]) => Some((start + 2, end)),
        _ => None,
    }
}

/// The shortest digit run that can hold a sensitive number (a mobile number; escape digits
/// only ever make a run longer than the number in it).
const MIN_SENSITIVE_RUN: usize = 11;

/// The maximal runs of at least [`MIN_SENSITIVE_RUN`] ASCII digits in `b`, as `(start, end)`
/// byte ranges.
///
/// Masking runs over every string of every record, and most of their digit runs are short
/// (dates, ports, IP octets). Any run of 11 or more digits that starts in `i..=i + 10` covers
/// `b[i + 10]`, so when that byte is not a digit the scan skips 11 bytes at once.
fn long_digit_runs(b: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        while i + MIN_SENSITIVE_RUN <= b.len() {
            let probe = i + MIN_SENSITIVE_RUN - 1;
            if !b[probe].is_ascii_digit() {
                i = probe + 1;
                continue;
            }
            // Widen to the whole run. Bytes before `i` were skipped only as part of windows
            // without a long run, or are past the previous run's end, which is a non-digit.
            let mut start = probe;
            while start > 0 && b[start - 1].is_ascii_digit() {
                start -= 1;
            }
            let mut end = probe + 1;
            while end < b.len() && b[end].is_ascii_digit() {
                end += 1;
            }
            i = end + 1;
            if end - start >= MIN_SENSITIVE_RUN {
                return Some((start, end));
            }
        }
        None
    })
}

/// True when `s` still contains a sensitive number (used by tests and assertions).
pub fn contains_sensitive(s: &str) -> bool {
    let b = s.as_bytes();
    long_digit_runs(b).any(|(start, end)| sensitive_in_run(b, start, end).is_some())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn md5() -> Masker {
        Masker::new(MaskMode::Md5, b"")
    }

    fn hm() -> Masker {
        Masker::new(MaskMode::Hmac, b"test-secret")
    }

    #[test]
    fn md5_vectors() {
        let m = md5();
        assert_eq!(m.hash("13818791413"), "D1279C812D20ABDB6612BA7AF1C5D13C");
        assert_eq!(
            m.hash("11010119900307387X"),
            "8BA9FAB520C2EF5620BC5303B2CA7978"
        );
        assert_eq!(m.hash(""), "D41D8CD98F00B204E9800998ECF8427E");
        assert!(m.looks_hashed(&m.hash("x")));
    }

    #[test]
    fn hmac_vectors() {
        // RFC 4231 test case 2.
        let m = Masker::new(MaskMode::Hmac, b"Jefe");
        assert_eq!(
            m.hash("what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let h = hm().hash("13818791413");
        assert_eq!(h.len(), 64);
        assert!(hm().looks_hashed(&h));
        assert_ne!(h, Masker::new(MaskMode::Hmac, b"other").hash("13818791413"));
        assert_eq!(h, hm().hash("13818791413"), "deterministic");
    }

    #[test]
    fn hashes_never_look_sensitive() {
        for m in [md5(), hm()] {
            let mut rehashed = 0;
            for i in 0..20_000u64 {
                let x = format!("1{:010}", 3_000_000_000 + i * 7919);
                let h = m.hash(&x);
                assert!(!contains_sensitive(&h), "{x} -> {h}");
                assert!(m.looks_hashed(&h));
                assert_eq!(m.mask(&h), h, "idempotent");
                if h != m.digest(&[x.as_bytes()]) {
                    rehashed += 1;
                }
            }
            // Rare, but it happens.
            assert!(rehashed > 0 && rehashed < 400, "{rehashed}");
        }
    }

    #[test]
    fn mode_parse() {
        assert_eq!("HMAC".parse::<MaskMode>().unwrap(), MaskMode::Hmac);
        assert_eq!("md5".parse::<MaskMode>().unwrap(), MaskMode::Md5);
        assert!("sha".parse::<MaskMode>().is_err());
        assert_eq!(MaskMode::default(), MaskMode::Hmac);
        assert!(!format!("{:?}", hm()).contains("test-secret"));
    }

    #[test]
    fn phone_boundaries() {
        let m = md5();
        let h = m.hash("13818791413");
        assert_eq!(m.mask("13818791413"), h);
        assert_eq!(m.mask("a13818791413"), format!("a{h}"));
        assert_eq!(m.mask("13818791413b"), format!("{h}b"));
        assert_eq!(
            m.mask("abc13812345678def"),
            format!("abc{}def", m.hash("13812345678"))
        );
        assert_eq!(
            m.mask("u=13818791413;v=13818791413"),
            format!("u={h};v={h}"),
            "every occurrence"
        );
        // 1[3-9] only.
        assert_eq!(m.mask("12818791413"), "12818791413");
        assert_eq!(m.mask("10818791413"), "10818791413");
        assert_eq!(m.mask("19918791413"), m.hash("19918791413"));
    }

    #[test]
    fn other_lengths_untouched() {
        let m = hm();
        for s in [
            "1381879141",           // 10
            "138187914130",         // 12, contains a phone-like prefix
            "913818791413",         // 12, contains a phone-like suffix
            "1516170718655",        // 13, timestamp
            "1381879141313818",     // 16
            "13818791413138187",    // 17 without X
            "1101011990030738712",  // 19
            "11010119900307387123", // 20
            "lv=1516170718655:ss=1516170709449",
        ] {
            assert_eq!(m.mask(s), s, "{s}");
            assert!(matches!(m.mask(s), Cow::Borrowed(_)));
        }
    }

    #[test]
    fn id_numbers() {
        let m = md5();
        assert_eq!(m.mask("110101199003073875"), m.hash("110101199003073875"));
        assert_eq!(
            m.mask("id:110101900307387;"),
            format!("id:{};", m.hash("110101900307387"))
        );
        assert_eq!(
            m.mask("JSESSIONID=11010119900307387X; a"),
            "JSESSIONID=8BA9FAB520C2EF5620BC5303B2CA7978; a"
        );
        assert_eq!(m.mask("11010119900307387x"), m.hash("11010119900307387x"));
        // The X is part of the ID whatever follows it (the 17 digits determine the ID).
        assert_eq!(
            m.mask("11010119900307387Xyz"),
            format!("{}yz", m.hash("11010119900307387X"))
        );
        // 18 digits then X: the 18 digits are the ID, the X stays.
        assert_eq!(
            m.mask("110101199003073875X"),
            format!("{}X", m.hash("110101199003073875"))
        );
        // 16 digits + X is nothing.
        assert_eq!(m.mask("1101011990030738X"), "1101011990030738X");
    }

    #[test]
    fn escaped_numbers() {
        let m = md5();
        let p = m.hash("13818791413");
        assert_eq!(
            m.mask("json=%7B%22phone%22%3A%2213818791413%22%7D"),
            format!("json=%7B%22phone%22%3A%22{p}%22%7D")
        );
        assert_eq!(
            m.mask("{\\x22id\\x22:\\x2211010119900307387X\\x22}"),
            format!(
                "{{\\x22id\\x22:\\x22{}\\x22}}",
                m.hash("11010119900307387X")
            )
        );
        // One hex digit of the escape is a digit: %B2 / %2B.
        assert_eq!(m.mask("%B213818791413"), format!("%B2{p}"));
        // +86 prefix, also URL-encoded.
        assert_eq!(m.mask("+8613818791413"), format!("+86{p}"));
        assert_eq!(m.mask("tel=%2B8613818791413"), format!("tel=%2B86{p}"));
        // A raw match wins over the escape interpretation.
        assert_eq!(m.mask("%13818791413"), format!("%{p}"));
        // Escapes followed by a non-sensitive run stay.
        assert_eq!(m.mask("%3D1516170718655"), "%3D1516170718655");
    }

    /// Field 10 (`http_cookie`) of `reference/data/sample_raw_log_line.normalized.txt`.
    pub(crate) const SAMPLE_COOKIE: &str = "JSESSIONID=11010119900307387X; sid=b5cc11e02e154ac5b0f3609332f86803; aid=8ae8768760927e280160bb348bef3e12; identifyStatus=N; userType4logCookie=M; userId4logCookie=13818791413; useridCookie=13818791413; userCodeCookie=13818791413; temp_zh=cou%3D0%3Bsegt%3D%E5%8D%95%E7%A8%8B%3Btime%3D2018-01-13%3B%E5%B9%BF%E5%B7%9E-%E5%8C%97%E4%BA%AC%3B1%2C0%2C0%3B%26cou%3D1%3Bsegt%3D%E5%8D%95%E7%A8%8B%3Btime%3D2018-01-17%3B%E5%B9%BF%E5%B7%9E-%E6%88%90%E9%83%BD%3B1%2C0%2C0%3B%26; JSESSIONID=782121159357B98CA6112554CF44321E; WT-FPC=id=211.103.142.26-608782688.30635197:lv=1516170718655:ss=1516170709449:fs=1513243317440:pn=2:vn=10; language=zh_CN; WT.al_flight=WT.al_hctype(S)%3AWT.al_adultnum(1)%3AWT.al_childnum(0)%3AWT.al_infantnum(0)%3AWT.al_orgcity1(CAN)%3AWT.al_dstcity1(CTU)%3AWT.al_orgdate1(2018-01-17)";

    /// The real sample line, when the shared reference directory is present.
    pub(crate) fn sample_line() -> Option<String> {
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/reference/data/sample_raw_log_line.normalized.txt"
        ))
        .ok()
    }

    #[test]
    fn sample_line_cookie() {
        let line = sample_line();
        if let Some(line) = &line {
            let fields: Vec<&str> = line.trim_end().split("#CS#").collect();
            assert_eq!(fields.len(), 12);
            assert_eq!(fields[10], SAMPLE_COOKIE);
        }
        let cookie = SAMPLE_COOKIE;
        assert!(contains_sensitive(cookie));
        for m in [md5(), hm()] {
            let masked = m.mask(cookie);
            assert!(!contains_sensitive(&masked), "{masked}");
            assert!(!masked.contains("13818791413"));
            assert!(!masked.contains("11010119900307387X"));
            assert!(masked.contains(
                "WT-FPC=id=211.103.142.26-608782688.30635197:lv=1516170718655:ss=1516170709449:fs=1513243317440:pn=2:vn=10"
            ));
            assert!(masked.contains("JSESSIONID=782121159357B98CA6112554CF44321E"));
            assert!(masked.contains(&format!("userId4logCookie={}", m.hash("13818791413"))));
            // The whole line too.
            if let Some(line) = &line {
                assert!(contains_sensitive(line));
                assert!(!contains_sensitive(&m.mask(line)));
            }
        }
    }

    /// Every maximal digit run, one byte at a time: what the skipping scan must agree with.
    fn all_digit_runs(b: &[u8]) -> Vec<(usize, usize)> {
        let mut runs = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i].is_ascii_digit() {
                let start = i;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                runs.push((start, i));
            } else {
                i += 1;
            }
        }
        runs
    }

    proptest::proptest! {
        #[test]
        fn skipping_scan_finds_every_long_run(
            parts in proptest::collection::vec(("[0-9]{0,20}", "[a-fxX%=&]{1,3}"), 0..8),
            digits_last in "[0-9]{0,20}",
        ) {
            // Digit runs of every length around 11, split by 1 to 3 other bytes.
            let mut s: String = parts.iter().map(|(d, sep)| format!("{d}{sep}")).collect();
            s.push_str(&digits_last);
            let b = s.as_bytes();
            let want: Vec<_> = all_digit_runs(b)
                .into_iter()
                .filter(|(s, e)| e - s >= MIN_SENSITIVE_RUN)
                .collect();
            let got: Vec<_> = long_digit_runs(b).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }
}
