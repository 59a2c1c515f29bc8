//! libtrust key ids, as Docker Distribution computes them for the keys in
//! its `rootcertbundle`: SHA-256 of the DER SubjectPublicKeyInfo, first 240
//! bits, RFC 4648 base32 (48 characters, no padding), in groups of four
//! joined by ':'.

use sha2::{Digest, Sha256};

const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// Base32 of a whole number of 5-byte blocks (no padding needed).
fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 8 / 5);
    for chunk in bytes.chunks(5) {
        let mut block = [0u8; 8];
        block[3..3 + chunk.len()].copy_from_slice(chunk);
        let n = u64::from_be_bytes(block);
        let chars = (chunk.len() * 8).div_ceil(5);
        for i in 0..chars {
            let idx = (n >> (35 - 5 * i)) & 31;
            out.push(char::from(ALPHABET[idx as usize]));
        }
    }
    out
}

pub fn key_id(spki_der: &[u8]) -> String {
    let digest = Sha256::digest(spki_der);
    let encoded = base32(&digest[..30]);
    encoded
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_rfc4648_vectors() {
        assert_eq!(base32(b"fooba"), "MZXW6YTB");
        assert_eq!(base32(b"12345abcde"), "GEZDGNBVMFRGGZDF");
    }

    #[test]
    fn key_id_shape() {
        let kid = key_id(b"anything");
        assert_eq!(kid.len(), 48 + 11);
        assert_eq!(kid.split(':').count(), 12);
        assert!(kid.split(':').all(|g| g.len() == 4));
        assert_ne!(kid, key_id(b"something else"));
    }
}
