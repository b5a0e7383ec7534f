//! The `overlay.strata.dev/v1alpha1` API of Strata's VXLAN overlay: one cluster-scoped
//! [`OverlayNode`] per node (same name), in which that node's overlay agent publishes its
//! underlay address and VTEP MAC.
//!
//! Why a resource of its own and not annotations on the Node: RBAC cannot limit a patch of a
//! Node to some fields, so an identity that may annotate Nodes may also relabel, untaint or
//! cordon them. Each overlay agent speaks as its node (`strata:overlay:<node>`), which RBAC
//! lets patch only the OverlayNode of that name (`resourceNames`) and read Nodes; peers use a
//! published underlay address only when it is one of the Node's own addresses (which only that
//! node's kubelet reports). `strata apply` creates the objects, one per host, with an empty
//! spec (RBAC cannot limit `create` by name).
#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::net::Ipv4Addr;

use kube::CustomResource;
use kube::CustomResourceExt as _;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// `apiVersion` of [`OverlayNode`].
pub const API_VERSION: &str = "overlay.strata.dev/v1alpha1";

/// A VTEP MAC as the agents write it: six lower-case hex pairs.
pub const MAC_PATTERN: &str = "^([0-9a-f]{2}:){5}[0-9a-f]{2}$";

/// One node's overlay endpoint; its name is the node's.
#[derive(
    CustomResource, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "overlay.strata.dev",
    version = "v1alpha1",
    kind = "OverlayNode",
    plural = "overlaynodes",
    printcolumn = r#"{"name":"Underlay","type":"string","jsonPath":".spec.underlay"}"#,
    printcolumn = r#"{"name":"VTEP-MAC","type":"string","jsonPath":".spec.vtepMac"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct OverlayNodeSpec {
    /// The node's underlay IPv4 address: the outer address of VXLAN packets to its pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay: Option<Underlay>,
    /// The MAC address of the node's VXLAN device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<VtepMac>,
}

/// An IPv4 address, checked by the API server (`format: ipv4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Underlay(pub Ipv4Addr);

impl JsonSchema for Underlay {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Underlay".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "format": "ipv4" })
    }
}

/// A MAC address, checked by the API server ([`MAC_PATTERN`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VtepMac(pub String);

impl JsonSchema for VtepMac {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "VtepMac".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "pattern": MAC_PATTERN })
    }
}

/// The CRD's name and body (what `strata apply` sends).
pub fn crd() -> (String, serde_json::Value) {
    let crd = OverlayNode::crd();
    let name = crd.metadata.name.clone().unwrap_or_default();
    // A CRD always serializes to JSON.
    (name, serde_json::to_value(&crd).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_schema() -> serde_json::Value {
        let (name, crd) = crd();
        assert_eq!(name, "overlaynodes.overlay.strata.dev");
        assert_eq!(crd["spec"]["scope"], "Cluster");
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone()
    }

    #[test]
    fn the_schema_refuses_what_peers_could_not_use() {
        let schema = spec_schema();
        let v = jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .expect("schema");
        for good in [
            serde_json::json!({}),
            serde_json::json!({"underlay": "198.18.0.3", "vtepMac": "0a:58:c6:12:00:03"}),
        ] {
            assert!(v.is_valid(&good), "{good}");
        }
        for bad in [
            serde_json::json!({"underlay": "fd00::1"}),
            serde_json::json!({"underlay": "198.18.0.300"}),
            serde_json::json!({"vtepMac": "0A:58:C6:12:00:03"}),
            serde_json::json!({"vtepMac": "0a:58:c6:12:00"}),
        ] {
            assert!(!v.is_valid(&bad), "{bad}");
        }
    }

    #[test]
    fn values_round_trip() {
        let spec = OverlayNodeSpec {
            underlay: Some(Underlay(Ipv4Addr::new(198, 18, 0, 3))),
            vtep_mac: Some(VtepMac("0a:58:c6:12:00:03".into())),
        };
        let v = serde_json::to_value(&spec).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"underlay": "198.18.0.3", "vtepMac": "0a:58:c6:12:00:03"})
        );
        assert_eq!(
            serde_json::from_value::<OverlayNodeSpec>(v).expect("back"),
            spec
        );
        assert_eq!(
            serde_json::to_value(OverlayNodeSpec::default()).expect("json"),
            serde_json::json!({})
        );
    }
}
