/// A new message fingerprint: a lowercase, hyphenated, 36-character random (v4) UUID,
/// the form upstream's `UUID.randomUUID().toString()` produces.
///
/// ```
/// let fp = bevy_im::protocol::new_fingerprint();
/// assert_eq!(fp.len(), 36);
/// assert_eq!(fp, fp.to_lowercase());
/// ```
pub fn new_fingerprint() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_lowercase_v4_uuids_and_unique() {
        let a = new_fingerprint();
        let b = new_fingerprint();
        assert_ne!(a, b);
        let parsed = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        assert_eq!(a.as_bytes()[8], b'-');
        assert!(
            a.chars()
                .all(|c| c == '-' || c.is_ascii_digit() || c.is_ascii_lowercase())
        );
    }
}
