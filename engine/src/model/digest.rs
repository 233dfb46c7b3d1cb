//! Content digests: SHA-256 in lowercase hex, for what only has to tell contents apart (ETags,
//! the `onlyChanged` digests in the state directory, push idempotency keys, definition
//! fingerprints). Ids of FHIR resources are UUID v5, made in `fhir`.

use sha2::{Digest, Sha256};

/// The SHA-256 of `parts` joined by the unit separator (U+001F), in lowercase hex: one part
/// gives the plain SHA-256 of its bytes.
pub fn content_digest<P: AsRef<[u8]>>(parts: &[P]) -> String {
    let mut hasher = Sha256::new();
    for (n, part) in parts.iter().enumerate() {
        if n > 0 {
            hasher.update([0x1f]);
        }
        hasher.update(part.as_ref());
    }
    hex(&hasher.finalize())
}

/// Bytes in lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_part_is_its_sha256_and_parts_are_separated() {
        assert_eq!(
            content_digest(&["abc"]),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(content_digest(&["a\u{1f}b"]), content_digest(&["a", "b"]));
        assert_ne!(content_digest(&["ab"]), content_digest(&["a", "b"]));
        assert_eq!(hex(&[0, 255, 16]), "00ff10");
    }
}
