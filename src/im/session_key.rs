//! The names of the keys a push session occupies in the proxy cluster, part of
//! goim's session contract (`logic::mapping` has the whole of it): logic
//! writes them, and a comet uses them to tell which group holds a session
//! (`comet::resync`). Imports nothing.

/// `mid_{mid}`: a hash `{key: server}`, written only for `mid > 0`.
pub fn mid_key(mid: i64) -> String {
    format!("mid_{mid}")
}

/// `key_{key}`: a string, the comet `server` holding the connection.
pub fn key_key(key: &str) -> String {
    format!("key_{key}")
}

/// Every key the session of connection `key` of user `mid` occupies.
pub fn session_keys(mid: i64, key: &str) -> Vec<String> {
    let mut keys = Vec::with_capacity(2);
    if mid > 0 {
        keys.push(mid_key(mid));
    }
    keys.push(key_key(key));
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_without_a_user_occupies_only_its_key() {
        assert_eq!(session_keys(7, "k"), ["mid_7", "key_k"]);
        assert_eq!(session_keys(0, "k"), ["key_k"]);
    }
}
