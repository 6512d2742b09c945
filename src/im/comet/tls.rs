//! The TLS side of WSS: loads the configured PEM certificate chain and private
//! key into a rustls server config (ring provider). Imports nothing from the crate.

use std::io::BufReader;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, ServerConfig};

/// Why WSS could not be set up (a start-up error: fix the files and restart).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate file holds no certificate.
    #[error("no certificate in {0}")]
    NoCert(String),
    /// The key file holds no private key.
    #[error("no private key in {0}")]
    NoKey(String),
    /// rustls refused the pair.
    #[error("bad certificate or key: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A TLS acceptor for the certificate chain in `cert` and the key in `key`.
///
/// # Errors
/// Unreadable files, no certificate or key in them, or a key that does not
/// match the certificate.
pub fn acceptor(cert: &str, key: &str) -> Result<TlsAcceptor, TlsError> {
    let read = |path: &str| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_string(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(&cert_pem[..]))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Read {
            path: cert.to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(cert.to_string()));
    }
    let key_pem = read(key)?;
    let private = rustls_pemfile::private_key(&mut BufReader::new(&key_pem[..]))
        .map_err(|source| TlsError::Read {
            path: key.to_string(),
            source,
        })?
        .ok_or_else(|| TlsError::NoKey(key.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, private)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_empty_files_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let e = acceptor("/nonexistent/cert.pem", "/nonexistent/key.pem").err();
        assert!(matches!(e, Some(TlsError::Read { .. })), "{e:?}");
        let path = empty.display().to_string();
        let e = acceptor(&path, &path).err();
        assert!(matches!(e, Some(TlsError::NoCert(p)) if p == path));
    }
}
