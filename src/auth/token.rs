//! The key format: `llmr_` + 43 base62 characters (256 random bits, zero-padded) + `_` +
//! 6 base62 characters of the CRC32 of everything before it (GitHub's token design).
//!
//! The prefix lets secret scanners find leaked keys; the checksum lets the router refuse
//! a typo or junk without a lookup. Only the SHA-256 of a key is ever stored.

use sha2::{Digest, Sha256};

pub const PREFIX: &str = "llmr_";
/// Base62 digits of 256 bits: 62^43 > 2^256.
const BODY_LEN: usize = 43;
/// Base62 digits of 32 bits.
const CHECK_LEN: usize = 6;
/// Length of every key.
pub const KEY_LEN: usize = PREFIX.len() + BODY_LEN + 1 + CHECK_LEN;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `n` (big-endian bytes) in base62, exactly `width` digits, most significant first.
fn base62(mut n: Vec<u8>, width: usize) -> String {
    let mut digits = vec![b'0'; width];
    for d in digits.iter_mut().rev() {
        // Long division of the whole number by 62; the remainder is the next digit.
        let mut rem = 0u32;
        for b in n.iter_mut() {
            let cur = (rem << 8) | u32::from(*b);
            *b = (cur / 62) as u8;
            rem = cur % 62;
        }
        *d = ALPHABET[rem as usize];
    }
    String::from_utf8(digits).expect("ASCII digits")
}

fn checksum(head: &str) -> String {
    base62(
        crc32fast::hash(head.as_bytes()).to_be_bytes().to_vec(),
        CHECK_LEN,
    )
}

/// A new key from 256 bits of the operating system's randomness.
pub fn new_key() -> Result<String, String> {
    let mut bits = [0u8; 32];
    getrandom::fill(&mut bits).map_err(|e| format!("no randomness from the OS: {e}"))?;
    Ok(from_bits(bits))
}

fn from_bits(bits: [u8; 32]) -> String {
    let head = format!("{PREFIX}{}", base62(bits.to_vec(), BODY_LEN));
    let check = checksum(&head);
    format!("{head}_{check}")
}

/// Whether `token` has the shape and checksum of a key (no lookup, constant work).
pub fn well_formed(token: &str) -> bool {
    if token.len() != KEY_LEN || !token.starts_with(PREFIX) {
        return false;
    }
    let (head, check) = token.split_at(KEY_LEN - CHECK_LEN - 1);
    let Some(check) = check.strip_prefix('_') else {
        return false;
    };
    head[PREFIX.len()..]
        .bytes()
        .all(|b| b.is_ascii_alphanumeric())
        && checksum(head) == check
}

/// SHA-256 of a presented key: what the keys file stores and what is looked up.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The first 12 hex digits of a presented token's SHA-256, for the audit log: enough to
/// trace a leaked or mistyped key, nothing about the key itself.
pub fn fingerprint(token: &str) -> String {
    hex(&digest(token)[..6])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_are_fixed_width_and_checked() {
        let k = new_key().unwrap();
        assert_eq!(k.len(), KEY_LEN);
        assert_eq!(KEY_LEN, 55);
        assert!(well_formed(&k), "{k}");
        assert_ne!(k, new_key().unwrap());
        // Zero bits are zero-padded, all-ones fit in 43 digits.
        assert!(from_bits([0; 32]).starts_with(&format!("{PREFIX}{}", "0".repeat(43))));
        assert!(well_formed(&from_bits([0xff; 32])));
        for bad in ["", "llmr_", "sk-abc", &k[..KEY_LEN - 1], &format!("{k}x")] {
            assert!(!well_formed(bad), "{bad}");
        }
    }

    proptest! {
        /// Any one changed character of a key is caught by the checksum or the shape.
        #[test]
        fn one_typo_is_refused(bits in any::<[u8; 32]>(), at in 5usize..KEY_LEN, c in "[0-9A-Za-z_ .]") {
            let k = from_bits(bits);
            prop_assert!(well_formed(&k));
            let mut typo: Vec<char> = k.chars().collect();
            let c = c.chars().next().unwrap();
            prop_assume!(typo[at] != c);
            typo[at] = c;
            let typo: String = typo.into_iter().collect();
            prop_assert!(!well_formed(&typo), "{typo}");
        }

        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,80}") {
            let _ = well_formed(&s);
        }
    }
}
