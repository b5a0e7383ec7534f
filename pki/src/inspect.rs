//! Reading existing certificates: subject, SANs, usages, validity, and whether a certificate
//! was signed by a given CA (signature checked with aws-lc-rs through x509-parser).

use std::collections::BTreeSet;
use std::net::IpAddr;

use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::parse_x509_pem;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use crate::catalog::KeyAlgorithm;

/// What Strata needs to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub der: Vec<u8>,
    pub subject: String,
    pub issuer: String,
    pub common_name: Option<String>,
    pub organization: Option<String>,
    pub dns_names: BTreeSet<String>,
    pub ips: BTreeSet<IpAddr>,
    pub server_auth: bool,
    pub client_auth: bool,
    pub is_ca: bool,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub serial: String,
    /// DER SubjectPublicKeyInfo.
    pub spki: Vec<u8>,
    pub key_algorithm: Option<KeyAlgorithm>,
}

fn parse_der(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| format!("not an X.509 certificate: {e}"))
}

/// Decodes the first certificate of a PEM text.
pub fn pem_to_der(pem: &str) -> Result<Vec<u8>, String> {
    let (_, p) = parse_x509_pem(pem.as_bytes()).map_err(|e| format!("not PEM: {e}"))?;
    if p.label != "CERTIFICATE" {
        return Err(format!("PEM block is `{}`, not a CERTIFICATE", p.label));
    }
    Ok(p.contents)
}

pub fn parse(pem: &str) -> Result<CertInfo, String> {
    let der = pem_to_der(pem)?;
    let c = parse_der(&der)?;
    let first = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
        it.next().and_then(|a| a.as_str().ok()).map(str::to_owned)
    };
    let subject = c.subject();
    let mut dns_names = BTreeSet::new();
    let mut ips = BTreeSet::new();
    if let Ok(Some(san)) = c.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => {
                    dns_names.insert((*d).to_owned());
                }
                GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        ips.insert(IpAddr::from(a));
                    } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                        ips.insert(IpAddr::from(a));
                    }
                }
                _ => {}
            }
        }
    }
    let (server_auth, client_auth) = match c.extended_key_usage() {
        Ok(Some(e)) => (e.value.server_auth, e.value.client_auth),
        _ => (false, false),
    };
    let key_algorithm = match c.public_key().parsed() {
        Ok(PublicKey::EC(p)) if p.key_size() == 256 => Some(KeyAlgorithm::EcdsaP256),
        Ok(PublicKey::RSA(r)) => match r.key_size() {
            2048 => Some(KeyAlgorithm::Rsa2048),
            3072 => Some(KeyAlgorithm::Rsa3072),
            4096 => Some(KeyAlgorithm::Rsa4096),
            _ => None,
        },
        _ => None,
    };
    Ok(CertInfo {
        subject: subject.to_string(),
        issuer: c.issuer().to_string(),
        common_name: first(&mut subject.iter_common_name()),
        organization: first(&mut subject.iter_organization()),
        dns_names,
        ips,
        server_auth,
        client_auth,
        is_ca: c.is_ca(),
        not_before: c.validity().not_before.to_datetime(),
        not_after: c.validity().not_after.to_datetime(),
        serial: c.raw_serial_as_string(),
        spki: c.public_key().raw.to_vec(),
        key_algorithm,
        der: der.clone(),
    })
}

/// Whether `cert` was issued by `ca`: issuer name equals the CA's subject and the signature
/// verifies with the CA's public key.
pub fn signed_by(cert: &CertInfo, ca: &CertInfo) -> Result<(), String> {
    let c = parse_der(&cert.der)?;
    let a = parse_der(&ca.der)?;
    if c.issuer().as_raw() != a.subject().as_raw() {
        return Err(format!(
            "issued by `{}`, not by the CA `{}`",
            cert.issuer, ca.subject
        ));
    }
    c.verify_signature(Some(a.public_key()))
        .map_err(|e| format!("signature does not verify with the CA's key ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_garbage() {
        assert!(parse("hello").is_err());
        assert!(parse("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").is_err());
    }
}
