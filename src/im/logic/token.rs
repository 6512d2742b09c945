//! Signed client tokens, reborn's addition to goim's auth (which trusts any mid
//! a client claims).
//!
//! A token is `<mid>.<expiry unix secs>.<hex HMAC-SHA256(secret,
//! "<mid>.<key>.<expiry>")>`. The key is the auth body's `key` (may be empty),
//! so a token minted for one device key does not open a session under
//! another. Logic checks the mid, the key and the expiry. Pure functions: the
//! caller passes the clock. Imports nothing of the crate.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a token was refused. None of these is worth retrying with the same
/// token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// `[auth] secret` is set and the auth body carries no token.
    #[error("a signed token is required (auth body field \"token\")")]
    Missing,
    /// Not three dot-separated parts with numeric mid and expiry.
    #[error("malformed token: want <mid>.<expiry>.<hex signature>")]
    Malformed,
    /// The token names another mid than the auth body.
    #[error("token is for mid {token}, not mid {claimed}")]
    WrongMid { token: i64, claimed: i64 },
    /// The expiry has passed.
    #[error("token expired at {expiry} (now {now})")]
    Expired { expiry: u64, now: u64 },
    /// The signature does not match the mid, key and expiry.
    #[error("token signature does not match (forged, or minted for another key)")]
    BadSignature,
    /// No secret to sign with.
    #[error("no secret: set [auth] secret or pass --secret")]
    NoSecret,
}

fn mac(secret: &[u8], mid: i64, key: &str, expiry: u64) -> Result<HmacSha256, TokenError> {
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| TokenError::NoSecret)?;
    mac.update(format!("{mid}.{key}.{expiry}").as_bytes());
    Ok(mac)
}

/// A token for `mid` and `key`, valid until `expiry` (unix seconds).
///
/// # Errors
/// [`TokenError::NoSecret`] for an empty secret.
pub fn sign(secret: &[u8], mid: i64, key: &str, expiry: u64) -> Result<String, TokenError> {
    if secret.is_empty() {
        return Err(TokenError::NoSecret);
    }
    let sig = mac(secret, mid, key, expiry)?.finalize().into_bytes();
    Ok(format!("{mid}.{expiry}.{}", hex::encode(sig)))
}

/// Checks `token` for a connection claiming `mid` and `key` at time `now`
/// (unix seconds). The signature comparison is constant-time.
///
/// # Errors
/// Why the token is refused.
pub fn verify(secret: &[u8], token: &str, mid: i64, key: &str, now: u64) -> Result<(), TokenError> {
    if secret.is_empty() {
        return Err(TokenError::NoSecret);
    }
    if token.is_empty() {
        return Err(TokenError::Missing);
    }
    let mut parts = token.splitn(3, '.');
    let (Some(m), Some(e), Some(sig)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(TokenError::Malformed);
    };
    let token_mid: i64 = m.parse().map_err(|_| TokenError::Malformed)?;
    let expiry: u64 = e.parse().map_err(|_| TokenError::Malformed)?;
    let sig = hex::decode(sig).map_err(|_| TokenError::Malformed)?;
    if token_mid != mid {
        return Err(TokenError::WrongMid {
            token: token_mid,
            claimed: mid,
        });
    }
    mac(secret, mid, key, expiry)?
        .verify_slice(&sig)
        .map_err(|_| TokenError::BadSignature)?;
    // Checked after the signature, so a forged expiry reads as forged.
    if expiry <= now {
        return Err(TokenError::Expired { expiry, now });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &[u8] = b"s3cret";

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let t = sign(S, 123, "dev-1", 1000).expect("sign");
        assert!(t.starts_with("123.1000."), "{t}");
        assert_eq!(verify(S, &t, 123, "dev-1", 999), Ok(()));
        assert_eq!(
            verify(S, &t, 123, "dev-1", 1000),
            Err(TokenError::Expired {
                expiry: 1000,
                now: 1000
            })
        );
    }

    #[test]
    fn forgeries_are_refused() {
        let t = sign(S, 123, "", 1000).expect("sign");
        // Another secret, another key, another mid, an edited expiry.
        assert_eq!(verify(b"other", &t, 123, "", 1), Err(TokenError::BadSignature));
        assert_eq!(verify(S, &t, 123, "k", 1), Err(TokenError::BadSignature));
        assert_eq!(
            verify(S, &t, 124, "", 1),
            Err(TokenError::WrongMid {
                token: 123,
                claimed: 124
            })
        );
        let edited = t.replacen("123.1000.", "123.9999.", 1);
        assert_eq!(verify(S, &edited, 123, "", 1), Err(TokenError::BadSignature));
        // A signature for mid 124 pasted behind mid 123.
        let other = sign(S, 124, "", 1000).expect("sign");
        let sig = other.rsplit('.').next().unwrap_or_default();
        assert_eq!(
            verify(S, &format!("123.1000.{sig}"), 123, "", 1),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn garbage_and_missing_tokens_are_told_apart() {
        assert_eq!(verify(S, "", 1, "", 0), Err(TokenError::Missing));
        for bad in ["x", "1.2", "a.2.ff", "1.b.ff", "1.2.zz"] {
            assert_eq!(verify(S, bad, 1, "", 0), Err(TokenError::Malformed), "{bad}");
        }
        assert_eq!(sign(b"", 1, "", 1), Err(TokenError::NoSecret));
    }
}
