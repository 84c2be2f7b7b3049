//! Hashes written as text: CA pins (`syncfleet tokens create` prints one, `syncfleet-agent
//! enroll --ca-pin` checks it) and the stored hashes of enrollment token secrets.

use sha2::{Digest as _, Sha256};

/// SHA-256 of `data`, lower-case hex (64 digits).
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_is_lower_case_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
