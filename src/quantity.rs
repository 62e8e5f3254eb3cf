//! Resource quantities (`"100m"`, `"128Mi"`, `"1.5"`, `"2e3"`) as integers in thousandths, the
//! unit the scheduler adds and compares requests in, and the kubelet reserves and limits in.
//! Shared by both planes; holds no I/O.
//!
//! A quantity is `<sign><digits>[.<digits>]<suffix>` where the suffix is a binary SI suffix
//! (`Ki Mi Gi Ti Pi Ei`), a decimal SI suffix (`n u m "" k M G T P E`) or a decimal exponent
//! (`e<n>` / `E<n>`), as `k8s.io/apimachinery/pkg/api/resource` parses it.
//!
//! # Guarantees
//! - Exact integer arithmetic (`i128`); a value that is not a whole number of thousandths is
//!   rounded up, as `Quantity.MilliValue()` does, so a request is never undercounted.
//! - Results saturate at `i64::MAX` instead of overflowing.
//!
//! Written here rather than taken from a crate: the grammar is small and fixed, and the crates
//! that parse it either go through `f64` (inexact for large byte counts) or pull in a decimal
//! type for what is twenty lines of integer code.

/// Parses a quantity into thousandths of its unit (milli-CPU for `cpu`, milli-bytes for
/// memory). `None` when the text is not a quantity.
pub fn parse_milli(text: &str) -> Option<i64> {
    let text = text.trim();
    let (negative, rest) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let number_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return None;
    }
    // The digits as one integer and the power of ten that scales them.
    let mut mantissa: i128 = 0;
    for digit in whole.bytes().chain(fraction.bytes()) {
        mantissa = mantissa
            .saturating_mul(10)
            .saturating_add(i128::from(digit - b'0'));
    }
    let mut exponent10: i32 = -(fraction.len() as i32);
    let mut binary: u32 = 0;
    match suffix {
        "" => {}
        "n" => exponent10 -= 9,
        "u" => exponent10 -= 6,
        "m" => exponent10 -= 3,
        "k" => exponent10 += 3,
        "M" => exponent10 += 6,
        "G" => exponent10 += 9,
        "T" => exponent10 += 12,
        "P" => exponent10 += 15,
        "E" => exponent10 += 18,
        "Ki" => binary = 10,
        "Mi" => binary = 20,
        "Gi" => binary = 30,
        "Ti" => binary = 40,
        "Pi" => binary = 50,
        "Ei" => binary = 60,
        other => {
            let digits = other
                .strip_prefix('e')
                .or_else(|| other.strip_prefix('E'))?;
            let value: i32 = digits.parse().ok()?;
            if value.abs() > 40 {
                return None;
            }
            exponent10 += value;
        }
    }
    // Thousandths.
    exponent10 += 3;
    let mut value = mantissa.saturating_mul(1i128 << binary);
    if exponent10 >= 0 {
        for _ in 0..exponent10 {
            value = value.saturating_mul(10);
        }
    } else {
        let divisor = (0..-exponent10).fold(1i128, |d, _| d.saturating_mul(10));
        value = (value + divisor - 1) / divisor;
    }
    let value = i64::try_from(value).unwrap_or(i64::MAX);
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::parse_milli;

    #[test]
    fn parses_the_forms_kubernetes_accepts() {
        let cases = [
            ("100m", 100),
            ("1", 1000),
            ("0.5", 500),
            ("1.5", 1500),
            (".5", 500),
            ("2k", 2_000_000),
            ("128Mi", 128 * 1024 * 1024 * 1000),
            ("1Gi", 1024 * 1024 * 1024 * 1000),
            ("1G", 1_000_000_000_000),
            ("1e3", 1_000_000),
            ("1E-3", 1),
            ("1n", 1),
            ("1u", 1),
            ("250u", 1),
            ("1500u", 2),
            ("-1", -1000),
            ("+2", 2000),
            ("0", 0),
            ("110", 110_000),
        ];
        for (text, want) in cases {
            assert_eq!(parse_milli(text), Some(want), "{text}");
        }
    }

    #[test]
    fn rejects_garbage_and_saturates() {
        for text in ["", "m", "1.2.3", "1Xi", "abc", "1e", "1e999"] {
            assert_eq!(parse_milli(text), None, "{text}");
        }
        assert_eq!(parse_milli("9999999Ei"), Some(i64::MAX));
    }
}
