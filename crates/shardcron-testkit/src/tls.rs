//! Certificates generated inside the test: a CA, a server certificate for
//! 127.0.0.1/localhost and a client certificate, written as PEM files.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

/// PEM files of a throwaway PKI. Cloning shares the directory.
#[derive(Debug, Clone)]
pub struct TestCerts {
    /// CA certificate.
    pub ca_cert: PathBuf,
    /// Server certificate (SANs 127.0.0.1 and localhost).
    pub server_cert: PathBuf,
    /// Server key.
    pub server_key: PathBuf,
    /// Client certificate (CN `client`).
    pub client_cert: PathBuf,
    /// Client key.
    pub client_key: PathBuf,
    _dir: Arc<tempfile::TempDir>,
}

fn leaf(
    cn: &str,
    sans: &[&str],
    usage: Vec<ExtendedKeyUsagePurpose>,
    issuer: &Issuer<'_, KeyPair>,
) -> (String, String) {
    let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("certificate params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = usage;
    let key = KeyPair::generate().expect("generate key");
    let cert = params.signed_by(&key, issuer).expect("sign certificate");
    (cert.pem(), key.serialize_pem())
}

impl TestCerts {
    /// Generate a CA and a server and a client certificate signed by it.
    pub fn generate() -> TestCerts {
        let dir = tempfile::Builder::new()
            .prefix("shardcron-certs-")
            .tempdir()
            .expect("tempdir for certificates");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "shardcron test CA");
        let ca_key = KeyPair::generate().expect("generate CA key");
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign CA");
        let issuer = Issuer::new(ca_params, ca_key);
        let (server_pem, server_key) = leaf(
            "127.0.0.1",
            &["127.0.0.1", "localhost"],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            &issuer,
        );
        let (client_pem, client_key) = leaf(
            "client",
            &["client"],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            &issuer,
        );
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("write certificate file");
            p
        };
        TestCerts {
            ca_cert: write("ca.pem", &ca_cert.pem()),
            server_cert: write("server.pem", &server_pem),
            server_key: write("server-key.pem", &server_key),
            client_cert: write("client.pem", &client_pem),
            client_key: write("client-key.pem", &client_key),
            _dir: Arc::new(dir),
        }
    }
}
