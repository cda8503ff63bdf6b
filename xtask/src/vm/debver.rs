//! Debian's version order, as `dpkg --compare-versions`: which kernel package is the newest.

/// Debian version order (`dpkg --compare-versions`): epoch, upstream, revision; `~` sorts first.
pub fn deb_version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn split(v: &str) -> (u64, &str, &str) {
        let (epoch, rest) = match v.split_once(':') {
            Some((e, r)) => (e.parse().unwrap_or(0), r),
            None => (0, v),
        };
        let (upstream, revision) = rest.rsplit_once('-').unwrap_or((rest, ""));
        (epoch, upstream, revision)
    }
    fn order(c: Option<u8>) -> i32 {
        match c {
            Some(b'~') => -1,
            None => 0,
            Some(c) if c.is_ascii_alphabetic() => c as i32,
            Some(c) => c as i32 + 256,
        }
    }
    fn part(mut a: &[u8], mut b: &[u8]) -> std::cmp::Ordering {
        while !a.is_empty() || !b.is_empty() {
            // Non-digit prefixes, character by character.
            loop {
                let (ca, cb) = (
                    a.first().copied().filter(|c| !c.is_ascii_digit()),
                    b.first().copied().filter(|c| !c.is_ascii_digit()),
                );
                if ca.is_none() && cb.is_none() {
                    break;
                }
                let o = order(ca).cmp(&order(cb));
                if o.is_ne() {
                    return o;
                }
                a = &a[1..];
                b = &b[1..];
            }
            // Digit runs, numerically.
            let na = a.iter().take_while(|c| c.is_ascii_digit()).count();
            let nb = b.iter().take_while(|c| c.is_ascii_digit()).count();
            let num = |s: &[u8]| s.iter().fold(0u128, |n, c| n * 10 + u128::from(c - b'0'));
            let o = num(&a[..na]).cmp(&num(&b[..nb]));
            if o.is_ne() {
                return o;
            }
            a = &a[na..];
            b = &b[nb..];
        }
        std::cmp::Ordering::Equal
    }
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb).then_with(|| part(ua.as_bytes(), ub.as_bytes())).then_with(|| part(ra.as_bytes(), rb.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_versions_order_like_dpkg() {
        use std::cmp::Ordering::*;
        let cases = [
            ("6.1.176-1", "6.1.170-3", Greater),
            ("7.3.4-1~bpo13+1", "7.2.12-1~bpo13+1", Greater),
            ("1.0~rc1-1", "1.0-1", Less),
            ("1:1.0-1", "2.0-1", Greater),
            ("6.12.95-1~bpo12+1", "6.12.95-1", Less),
            ("1.0-1", "1.0-1", Equal),
            ("1.0a-1", "1.0-1", Greater),
        ];
        for (a, b, want) in cases {
            assert_eq!(deb_version_cmp(a, b), want, "{a} vs {b}");
        }
    }
}
