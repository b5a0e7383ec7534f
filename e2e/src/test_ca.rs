//! A throwaway certificate authority for the servers a test runs for its machines over TLS
//! (a registry, an asset source): server certificates for an IP address, and the machines'
//! trust in it.

use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

#[derive(Debug)]
pub struct TestCa {
    key: KeyPair,
    /// The CA certificate, PEM.
    pub pem: String,
    /// The CA certificate, DER.
    pub der: Vec<u8>,
}

/// A server certificate and its key.
#[derive(Debug)]
pub struct ServerCert {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    pub key_pem: String,
    pub key_der: Vec<u8>,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::default();
        ca.distinguished_name.push(DnType::CommonName, name);
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = ca.self_signed(&key).expect("CA");
        Self {
            pem: cert.pem(),
            der: cert.der().to_vec(),
            key,
        }
    }

    /// A certificate for a server reached at `ip`.
    pub fn server(&self, name: &str, ip: IpAddr) -> ServerCert {
        let key = KeyPair::generate().expect("server key");
        let mut leaf = CertificateParams::default();
        leaf.distinguished_name.push(DnType::CommonName, name);
        leaf.subject_alt_names = vec![SanType::IpAddress(ip)];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let issuer = Issuer::from_ca_cert_pem(&self.pem, &self.key).expect("issuer");
        let cert = leaf.signed_by(&key, &issuer).expect("server certificate");
        ServerCert {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        }
    }

    /// Makes a machine trust the CA: it joins the system's bundle under `root`.
    pub fn trust_in(&self, root: &Path) {
        let certs = root.join("etc/ssl/certs");
        std::fs::create_dir_all(&certs).expect("mkdir");
        let bundle = certs.join("ca-certificates.crt");
        let mut pem = std::fs::read_to_string(&bundle).unwrap_or_default();
        if !pem.contains(&self.pem) {
            pem.push_str(&self.pem);
            std::fs::write(&bundle, pem).expect("write the trust bundle");
        }
    }
}
