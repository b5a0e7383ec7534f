//! The PKI's inputs, derived from a validated Cluster.

use std::net::IpAddr;

use strata_pki::{Address, ExternalCa, Inputs, KeyAlgorithm, Node};

use crate::catalog::{self, Component};
use crate::model::{self, Cluster, HostAddress};
use crate::validate::Context;

#[derive(Debug, thiserror::Error)]
pub enum PkiInputError {
    #[error(
        "no API endpoint: spec.controlPlane.endpoint is empty and the first control-plane \
         host has no address; set one of them"
    )]
    NoEndpoint,
    #[error("spec.pki.ca.{field}: cannot read {path}: {source}")]
    CaFile {
        field: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn address(a: &HostAddress) -> Address {
    match a.ip() {
        Some(ip) => Address::Ip(ip),
        None => Address::Dns(a.as_str().to_owned()),
    }
}

/// First usable address of a CIDR (the `kubernetes` Service's ClusterIP for the service CIDR).
pub fn first_address(net: ipnet::IpNet) -> IpAddr {
    match net {
        ipnet::IpNet::V4(n) => IpAddr::V4((u32::from(n.network()) + 1).into()),
        ipnet::IpNet::V6(n) => IpAddr::V6((u128::from(n.network()) + 1).into()),
    }
}

pub fn inputs(c: &Cluster, ctx: &Context) -> Result<Inputs, PkiInputError> {
    let spec = &c.spec;
    let read = |field: &'static str, p: &str| {
        let path = ctx.resolve(p);
        std::fs::read_to_string(&path).map_err(|source| PkiInputError::CaFile {
            field,
            path: path.display().to_string(),
            source,
        })
    };
    let kubernetes_ca = match &spec.pki.ca {
        Some(ca) => Some(ExternalCa {
            cert_pem: read("cert", &ca.cert)?,
            key_pem: read("key", &ca.key)?,
            source: ctx.resolve(&ca.cert).display().to_string(),
        }),
        None => None,
    };
    Ok(Inputs {
        cluster_name: c.name().to_owned(),
        api_endpoint: c.api_endpoint().ok_or(PkiInputError::NoEndpoint)?,
        same_host_api: format!("127.0.0.1:{}", catalog::API_PORT),
        node_balancer: format!("127.0.0.1:{}", catalog::API_BALANCER_PORT),
        vip: spec.control_plane.vip.map(IpAddr::V4),
        api_service_ip: first_address(spec.network.service_cidr.net()),
        cluster_domain: spec.network.cluster_domain.to_string(),
        nodes: spec
            .hosts
            .iter()
            .map(|h| Node {
                name: h.name.to_string(),
                address: h.address.as_ref().map(address),
                etcd: catalog::runs(c, h, Component::Etcd),
                control_plane: catalog::runs(c, h, Component::KubeApiserver),
            })
            .collect(),
        extra_api_sans: spec
            .control_plane
            .cert_sans
            .iter()
            .map(address)
            .chain(spec.control_plane.vip.map(|v| Address::Ip(IpAddr::V4(v))))
            .collect(),
        key_algorithm: match spec.pki.key_algorithm {
            model::KeyAlgorithm::EcdsaP256 => KeyAlgorithm::EcdsaP256,
            model::KeyAlgorithm::Rsa2048 => KeyAlgorithm::Rsa2048,
            model::KeyAlgorithm::Rsa3072 => KeyAlgorithm::Rsa3072,
            model::KeyAlgorithm::Rsa4096 => KeyAlgorithm::Rsa4096,
        },
        ca_validity: spec.pki.ca_validity.0,
        cert_validity: spec.pki.cert_validity.0,
        kubernetes_ca,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_addresses() {
        let v4: ipnet::IpNet = "10.96.0.0/12".parse().expect("cidr");
        assert_eq!(first_address(v4).to_string(), "10.96.0.1");
        let v6: ipnet::IpNet = "fd00:10:96::/108".parse().expect("cidr");
        assert_eq!(first_address(v6).to_string(), "fd00:10:96::1");
    }
}
