//! Cookie values (SPEC §2.1, §3.4).

/// The value of cookie `name` in a `Cookie` header.
///
/// The header is split on `;`; each part is split on its FIRST `=` (values may contain `=`),
/// name and value are trimmed of whitespace; parts without `=` are ignored. When the name
/// occurs several times the last one wins. `None` when absent (never the string `NULL`).
/// Values are returned as found (not URL-decoded), possibly empty.
///
/// Runs twice for every line (JSESSIONID, user id): the parts are read from the end, so the
/// search stops at the last part with that name.
pub fn cookie_value<'a>(cookie: &'a str, name: &str) -> Option<&'a str> {
    let b = cookie.as_bytes();
    let mut end = b.len();
    loop {
        // `;` is ASCII: the part boundaries are char boundaries.
        let start = memchr::memrchr(b';', &b[..end]).map_or(0, |p| p + 1);
        if let Some((k, v)) = cookie[start..end].split_once('=') {
            if k.trim() == name {
                return Some(v.trim());
            }
        }
        if start == 0 {
            return None;
        }
        end = start - 1;
    }
}

/// [`cookie_value`] by its definition: every part split and trimmed (the tests' reference).
#[cfg(test)]
fn split_cookie_value<'a>(cookie: &'a str, name: &str) -> Option<&'a str> {
    let mut found = None;
    for part in cookie.split(';') {
        if let Some((k, v)) = part.split_once('=') {
            if k.trim() == name {
                found = Some(v.trim());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basics() {
        let c = "a=1; JSESSIONID=abc;userId4logCookie = u1 ;x=";
        assert_eq!(cookie_value(c, "a"), Some("1"));
        assert_eq!(cookie_value(c, "JSESSIONID"), Some("abc"));
        assert_eq!(cookie_value(c, "userId4logCookie"), Some("u1"));
        assert_eq!(cookie_value(c, "x"), Some(""));
        assert_eq!(cookie_value(c, "missing"), None);
        assert_eq!(cookie_value("", "a"), None);
        assert_eq!(cookie_value("NULL", "NULL"), None);
    }

    #[test]
    fn duplicates_last_wins_and_eq_in_values() {
        let c = "JSESSIONID=first; k=a=b=c; JSESSIONID=second";
        assert_eq!(cookie_value(c, "JSESSIONID"), Some("second"));
        assert_eq!(cookie_value(c, "k"), Some("a=b=c"));
        // Names are exact (case-sensitive) and not prefixes.
        assert_eq!(cookie_value(c, "jsessionid"), None);
        assert_eq!(cookie_value("xJSESSIONID=1", "JSESSIONID"), None);
        // Parts without `=` are skipped.
        assert_eq!(cookie_value("JSESSIONID; a=1", "JSESSIONID"), None);
        assert_eq!(cookie_value(";;  ; a=1;", "a"), Some("1"));
    }

    proptest::proptest! {
        /// Reading the parts from the end finds what splitting every part finds.
        #[test]
        fn search_agrees_with_splitting(
            pieces in proptest::collection::vec(
                proptest::sample::select(vec![
                    "JSESSIONID", "JSESSIONIDX", "xJSESSIONID", "userId", "=", ";", " ", "\t",
                    "\u{b}", "a", "1", "==", "; ", "\u{a0}", "é",
                ]),
                0..16,
            ),
            name in proptest::sample::select(vec![
                "JSESSIONID", "userId", "a", "", " a", "a=", "x;", "JSESSIONIDJSESSIONID",
            ]),
        ) {
            let cookie: String = pieces.concat();
            proptest::prop_assert_eq!(
                cookie_value(&cookie, name),
                split_cookie_value(&cookie, name),
                "cookie {:?} name {:?}", cookie, name
            );
        }
    }

    #[test]
    fn sample_cookie() {
        let c = crate::dataprocess::mask::tests::SAMPLE_COOKIE;
        assert_eq!(
            cookie_value(c, "JSESSIONID"),
            Some("782121159357B98CA6112554CF44321E")
        );
        assert_eq!(cookie_value(c, "userId4logCookie"), Some("13818791413"));
        assert_eq!(
            cookie_value(c, "WT-FPC"),
            Some("id=211.103.142.26-608782688.30635197:lv=1516170718655:ss=1516170709449:fs=1513243317440:pn=2:vn=10")
        );
    }
}
