//! The node's CNI configuration, written by the agent once it knows the node's pod subnet:
//! a bridge (`cni0`) with host-local addresses from the node's podCIDR, the overlay's MTU, and
//! port mappings. The bridge does not masquerade: traffic between pods keeps its addresses
//! across nodes; what leaves the pod network is masqueraded by the host's
//! `strata-pod-masquerade` unit.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

/// The file name in the CNI configuration directory.
pub const FILE: &str = "10-strata.conflist";

/// The configuration for a node whose pod subnet is `pod_cidr`, with interfaces of `mtu`.
pub fn conflist(pod_cidr: &str, mtu: u32) -> String {
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "strata",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "mtu": mtu,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": pod_cidr }]],
                    "routes": [{ "dst": "0.0.0.0/0" }]
                }
            },
            { "type": "portmap", "capabilities": { "portMappings": true } }
        ]
    })
    .to_string()
}

/// Writes `content` as `dir/FILE` (0644) unless it is already there: through a temporary
/// file and a rename, so the container runtime never reads half a file. Ok(true) when written.
pub fn write(dir: &Path, content: &str) -> std::io::Result<bool> {
    let path = dir.join(FILE);
    if std::fs::read_to_string(&path).is_ok_and(|c| c == content) {
        return Ok(false);
    }
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(content.as_bytes())?;
    f.sync_all()?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&tmp, &path)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bridge_on_the_node_subnet_without_masquerade() {
        let v: serde_json::Value =
            serde_json::from_str(&conflist("10.244.3.0/24", 1450)).expect("json");
        assert_eq!(v["plugins"][0]["type"], "bridge");
        assert_eq!(v["plugins"][0]["ipMasq"], false);
        assert_eq!(v["plugins"][0]["mtu"], 1450);
        assert_eq!(
            v["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.3.0/24"
        );
        assert_eq!(v["plugins"][1]["type"], "portmap");
    }

    #[test]
    fn written_once_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = conflist("10.244.1.0/24", 1450);
        assert!(write(dir.path(), &c).expect("write"));
        assert!(
            !write(dir.path(), &c).expect("again"),
            "unchanged: not rewritten"
        );
        let meta = std::fs::metadata(dir.path().join(FILE)).expect("file");
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("dir").count(),
            1,
            "no temporary left"
        );
        assert!(write(dir.path(), &conflist("10.244.2.0/24", 1450)).expect("changed"));
    }
}
