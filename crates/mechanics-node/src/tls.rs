//! TLS for nodes: a node's server settings from PEM files, and the trust a coordinator gives a
//! remote node's private CA.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::NodeError;

/// Largest certificate, key or CA file read: PEM files are a few KiB; a bigger one is a mistake.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// The TLS settings of a node that presents the certificate chain in `cert` with the private
/// key in `key` (both PEM; the key PKCS#8, PKCS#1 or SEC1). Errors name the flag of the file
/// at fault (`--tls-cert`, `--tls-key`).
pub fn server_tls(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, NodeError> {
    let certs = read_certs(cert, "--tls-cert")?;
    let pem = read_pem(key, "--tls-key")?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|err| NodeError::Tls {
        field: "--tls-key".into(),
        message: format!("{} holds no usable private key: {err}", key.display()),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|err| NodeError::Tls {
            field: "--tls-key".into(),
            message: format!("the key cannot serve the certificate: {err}"),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client TLS configuration that trusts only the CA certificates in `ca_file` (PEM), for a
/// node whose certificate is issued by a private CA. `field` names the setting in errors.
pub fn client_tls(ca_file: &Path, field: &str) -> Result<rustls::ClientConfig, NodeError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(ca_file, field)? {
        roots.add(cert).map_err(|err| NodeError::Tls {
            field: field.into(),
            message: format!(
                "{} holds an unusable CA certificate: {err}",
                ca_file.display()
            ),
        })?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| NodeError::Tls {
            field: field.into(),
            message: err.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The certificates of a PEM file; at least one.
fn read_certs(path: &Path, field: &str) -> Result<Vec<CertificateDer<'static>>, NodeError> {
    let pem = read_pem(path, field)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| NodeError::Tls {
            field: field.into(),
            message: format!("{} is not valid PEM: {err}", path.display()),
        })?;
    if certs.is_empty() {
        return Err(NodeError::Tls {
            field: field.into(),
            message: format!("{} holds no certificate", path.display()),
        });
    }
    Ok(certs)
}

fn read_pem(path: &Path, field: &str) -> Result<Vec<u8>, NodeError> {
    let unreadable = |message: String| NodeError::Tls {
        field: field.into(),
        message: format!("cannot read {}: {message}", path.display()),
    };
    // Only a small regular file: a FIFO or a device would hang or exhaust the reader.
    let metadata = std::fs::metadata(path).map_err(|err| unreadable(err.to_string()))?;
    if !metadata.is_file() || metadata.len() > MAX_PEM_BYTES {
        return Err(unreadable(format!(
            "not a regular file of at most {MAX_PEM_BYTES} bytes"
        )));
    }
    std::fs::read(path).map_err(|err| unreadable(err.to_string()))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
