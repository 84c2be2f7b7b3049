//! Names of agents, fleets, sequences and schedules: they appear in certificate identities
//! (`spiffe://<fleet>/agent/<name>`), metric labels and file names, so both daemons and the CLI
//! accept the same small alphabet.

/// Longest name.
pub const MAX_NAME_LEN: usize = 63;

/// Whether `name` is a valid name: 1–63 characters of `a-z A-Z 0-9 . _ -`.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_1_to_63_characters_of_a_small_alphabet() {
        assert!(valid_name("sync-01"));
        assert!(valid_name("a.b_c-D9"));
        assert!(valid_name(&"a".repeat(63)));
        assert!(!valid_name(&"a".repeat(64)));
        assert!(!valid_name(""));
        assert!(!valid_name("bad name"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name("é"));
    }
}
