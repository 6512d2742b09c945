//! Slot hashing with Codis rules: `crc32(IEEE)(hash key) % 1024`.
//!
//! The hash key is the whole key unless it holds a hashtag: the bytes strictly
//! between the first `{` and the first `}` after it. Unlike Redis Cluster, an empty
//! tag (`foo{}bar`) is *not* ignored: it hashes the empty string and lands on slot 0.
//! We keep that quirk so keys land exactly where a Codis cluster put them.

/// Number of slots in a product; slot ids are `0..SLOT_COUNT`.
pub const SLOT_COUNT: usize = 1024;

/// The part of `key` that is hashed: the hashtag if there is one, else the key.
pub fn hash_key(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        let rest = &key[open + 1..];
        if let Some(close) = rest.iter().position(|&b| b == b'}') {
            return &rest[..close];
        }
    }
    key
}

/// The slot that owns `key`.
pub fn slot_of(key: &[u8]) -> u16 {
    // SLOT_COUNT is a power of two, so the mask equals `% 1024`.
    (crc32fast::hash(hash_key(key)) & (SLOT_COUNT as u32 - 1)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codis_test_vectors() {
        assert_eq!(slot_of(b"a"), 579);
        assert_eq!(slot_of(b"b"), 1017);
        assert_eq!(slot_of(b"c"), 879);
        assert_eq!(slot_of(b"foo"), 289);
    }

    #[test]
    fn hashtag_rules() {
        assert_eq!(slot_of(b"{a}7836"), 579);
        assert_eq!(slot_of(b"a{tag}"), 899);
        assert_eq!(slot_of(b"{user1000}.following"), 870);
        // Empty tag hashes the empty string: slot 0, as in Codis.
        assert_eq!(slot_of(b"foo{}bar"), 0);
        assert_eq!(slot_of(b"{}"), 0);
        assert_eq!(slot_of(b""), 0);
        // No closing brace: the whole key is hashed.
        assert_eq!(slot_of(b"foo{bar"), 407);
        assert_eq!(hash_key(b"foo{bar"), b"foo{bar");
        // A `}` before the first `{` does not count; only the first tag does.
        assert_eq!(slot_of(b"}{x}y"), 643);
        assert_eq!(hash_key(b"{a}{b}"), b"a");
        // Keys are bytes, not UTF-8.
        assert_eq!(hash_key(b"\xff{\xfe}"), b"\xfe");
    }
}
