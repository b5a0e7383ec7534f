//! Creating keys and certificates (rcgen on aws-lc-rs).
//!
//! Unlike rcgen's defaults, every certificate gets a random 128-bit serial and explicit
//! validity: not-before 5 minutes in the past (tolerates small clock skew between hosts),
//! not-after from the configured validity, never later than the issuing CA's.

use std::time::Duration;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, RsaKeySize, SanType,
    SerialNumber,
};
use time::OffsetDateTime;

use crate::catalog::{CaId, CertSpec, KeyAlgorithm};

/// How far not-before lies in the past.
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);

pub fn generate_key(alg: KeyAlgorithm) -> Result<KeyPair, String> {
    let r = match alg {
        KeyAlgorithm::EcdsaP256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256),
        KeyAlgorithm::Rsa2048 => KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048),
        KeyAlgorithm::Rsa3072 => KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_3072),
        KeyAlgorithm::Rsa4096 => KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_4096),
    };
    r.map_err(|e| format!("generating a {} key: {e}", alg.as_str()))
}

/// Loads a PEM private key (PKCS#8, SEC1 or PKCS#1).
pub fn load_key(pem: &str) -> Result<KeyPair, String> {
    KeyPair::from_pem(pem).map_err(|e| format!("not a usable private key ({e})"))
}

fn random_serial() -> Result<SerialNumber, String> {
    let mut b = [0u8; 16];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| "the system random number generator failed".to_string())?;
    // Positive and exactly 16 bytes long in DER.
    b[0] = (b[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&b))
}

fn to_time(d: Duration) -> time::Duration {
    time::Duration::seconds(i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2))
}

fn base_params(
    cn: &str,
    org: Option<&str>,
    now: OffsetDateTime,
    validity: Duration,
) -> Result<CertificateParams, String> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    if let Some(o) = org {
        dn.push(DnType::OrganizationName, o);
    }
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.serial_number = Some(random_serial()?);
    p.not_before = now - to_time(BACKDATE);
    p.not_after = now + to_time(validity);
    Ok(p)
}

/// A self-signed CA certificate (PEM).
pub fn self_signed_ca(
    ca: CaId,
    key: &KeyPair,
    now: OffsetDateTime,
    validity: Duration,
) -> Result<String, String> {
    let mut p = base_params(ca.common_name(), None, now, validity)?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    p.self_signed(key)
        .map(|c| c.pem())
        .map_err(|e| format!("creating CA {}: {e}", ca.name()))
}

/// A leaf certificate for `spec` with public key `key`, signed by the CA.
pub fn leaf(
    spec: &CertSpec,
    key: &KeyPair,
    ca_cert_pem: &str,
    ca_key: &KeyPair,
    ca_not_after: OffsetDateTime,
    now: OffsetDateTime,
    validity: Duration,
) -> Result<String, String> {
    let mut p = base_params(
        &spec.common_name,
        spec.organization.as_deref(),
        now,
        validity,
    )?;
    if p.not_after > ca_not_after {
        p.not_after = ca_not_after;
    }
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    if spec.server_auth {
        p.extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    if spec.client_auth {
        p.extended_key_usages
            .push(ExtendedKeyUsagePurpose::ClientAuth);
    }
    for d in &spec.dns_names {
        let name = d
            .clone()
            .try_into()
            .map_err(|_| format!("{}: `{d}` is not a valid DNS name", spec.name))?;
        p.subject_alt_names.push(SanType::DnsName(name));
    }
    for ip in &spec.ips {
        p.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    p.use_authority_key_identifier_extension = true;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key)
        .map_err(|e| format!("reading the CA certificate to sign {}: {e}", spec.name))?;
    p.signed_by(key, &issuer)
        .map(|c| c.pem())
        .map_err(|e| format!("signing {}: {e}", spec.name))
}
