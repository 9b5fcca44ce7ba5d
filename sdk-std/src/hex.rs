//! Hex text: keys, tokens, serial numbers and ids as people and files
//! carry them. One home for the conversions the CLI, the provisioning
//! service and the message describer share.

/// `bytes` as lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parses hex text (spaces and newlines allowed).
pub fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<(usize, char)> = text
        .chars()
        .enumerate()
        .filter(|(_, c)| !c.is_whitespace())
        .collect();
    if let Some((at, c)) = digits.iter().find(|(_, c)| !c.is_ascii_hexdigit()) {
        return Err(format!("not a hex digit at character {at}: {c:?}"));
    }
    if !digits.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    Ok(digits
        .chunks(2)
        .map(|pair| {
            // Both are ASCII hex digits, checked above.
            let nibble = |c: char| c.to_digit(16).unwrap_or(0) as u8;
            nibble(pair[0].1) << 4 | nibble(pair[1].1)
        })
        .collect())
}

/// `n` random bytes as hex: tokens, session ids, probes.
#[cfg(feature = "runtime")]
pub fn random_hex(n: usize) -> String {
    use rand::RngCore;
    let mut raw = vec![0u8; n];
    rand::rng().fill_bytes(&mut raw);
    to_hex(&raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_bad_text_is_refused() {
        assert_eq!(to_hex(&[0x00, 0xab, 0x7f]), "00ab7f");
        assert_eq!(parse_hex("00ab 7f\n").unwrap(), [0x00, 0xab, 0x7f]);
        assert!(parse_hex("abc").is_err());
        assert!(parse_hex("zz").is_err());
    }
}
