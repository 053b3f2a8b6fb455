//! A private certificate authority made per test, and a server certificate it issued, as PEM
//! files: what an operator gives `mechanics node serve --tls-cert/--tls-key` and the
//! coordinator's `--ca-file`.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// The files of a test CA and of one server certificate it issued.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA's certificate (PEM): what a client trusts.
    pub ca_file: PathBuf,
    /// The server's certificate (PEM), issued by the CA for the names given.
    pub cert_file: PathBuf,
    /// The server's private key (PEM, PKCS#8).
    pub key_file: PathBuf,
}

impl TestPki {
    /// Writes `ca.pem`, `node.pem` and `node-key.pem` under `dir`: a fresh CA, and a certificate
    /// it signed for `names` (IP addresses such as `127.0.0.1` become IP names).
    ///
    /// # Panics
    /// When a key cannot be generated or a file written: the test cannot go on.
    pub fn create(dir: &Path, names: &[&str]) -> TestPki {
        let ca_key = KeyPair::generate().expect("a CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Mechanics test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("the CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate().expect("a node key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let params = CertificateParams::new(names).expect("node params");
        let cert = params
            .signed_by(&key, &issuer)
            .expect("the node certificate");

        let pki = TestPki {
            ca_file: dir.join("ca.pem"),
            cert_file: dir.join("node.pem"),
            key_file: dir.join("node-key.pem"),
        };
        std::fs::write(&pki.ca_file, ca_cert.pem()).expect("write ca.pem");
        std::fs::write(&pki.cert_file, cert.pem()).expect("write node.pem");
        std::fs::write(&pki.key_file, key.serialize_pem()).expect("write node-key.pem");
        pki
    }
}
