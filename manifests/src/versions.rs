//! Which Kubernetes releases Strata configures, and every flag or field whose existence
//! depends on the release. The renderer asks [`uses`]; nothing else branches on versions.

use std::ops::RangeInclusive;

/// Kubernetes minor releases (1.MINOR) Strata renders valid configuration for.
pub const SUPPORTED_MINORS: RangeInclusive<u32> = 20..=37;

/// A version-dependent piece of configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Item {
    /// kube-apiserver `--insecure-port=0`: the flag exists (deprecated, 0 the only sensible
    /// value) until it was removed in 1.24.
    ApiserverInsecurePortZero,
    /// controller-manager/scheduler `--port=0`: turns off insecure serving before 1.22
    /// (disabled for good in 1.22, flag removed in 1.23/1.24).
    InsecurePortZero,
    /// kubelet `--container-runtime=remote`: required before 1.24 (dockershim was the
    /// default), deprecated 1.24-1.26, removed in 1.27.
    KubeletContainerRuntimeFlag,
    /// kubelet `--container-runtime-endpoint` flag: the only way before 1.27.
    KubeletRuntimeEndpointFlag,
    /// KubeletConfiguration `containerRuntimeEndpoint`: from 1.27 (the flag is deprecated).
    KubeletRuntimeEndpointField,
    /// Images from registry.k8s.io instead of k8s.gcr.io (frozen in 2023): from 1.25.
    RegistryK8sIo,
    /// KubeletConfiguration `failCgroupV1`: from 1.31 (KEP-4569).
    KubeletFailCgroupV1Field,
    /// The kubelet refuses to start on a cgroup v1 host unless `failCgroupV1: false`: from
    /// 1.35 (KEP-5573 flipped the default).
    KubeletRefusesCgroupV1,
    /// containerd 1.x is no longer supported; the runtime must be containerd 2: from 1.36.
    ContainerdV2Required,
    /// Control-plane nodes tainted `node-role.kubernetes.io/master:NoSchedule`: through 1.24
    /// (kubeadm's key until then; 1.24 sets both while clusters move over).
    ControlPlaneTaintMaster,
    /// Control-plane nodes tainted `node-role.kubernetes.io/control-plane:NoSchedule`: from 1.24.
    ControlPlaneTaintControlPlane,
    /// The PodSecurityPolicy admission plugin and `policy/v1beta1` PodSecurityPolicies:
    /// through 1.24 (removed in 1.25).
    PodSecurityPolicy,
    /// Pod Security admission (`pod-security.admission.config.k8s.io/v1` defaults given to the
    /// API server): from 1.25, the first release with the v1 configuration.
    PodSecurityAdmission,
    /// PodDisruptionBudget as `policy/v1` (GA in 1.21; `policy/v1beta1` before, removed in
    /// 1.25).
    PodDisruptionBudgetV1,
    /// Endpoints read from `discovery.k8s.io/v1` EndpointSlices (GA in 1.21; core/v1
    /// Endpoints, read before, are deprecated from 1.33).
    EndpointSliceV1,
}

/// `(item, first minor, last minor)`: the item is used from `first` to `last` inclusive.
pub const TABLE: &[(Item, u32, Option<u32>)] = &[
    (Item::ApiserverInsecurePortZero, 20, Some(23)),
    (Item::InsecurePortZero, 20, Some(21)),
    (Item::KubeletContainerRuntimeFlag, 20, Some(23)),
    (Item::KubeletRuntimeEndpointFlag, 20, Some(26)),
    (Item::KubeletRuntimeEndpointField, 27, None),
    (Item::RegistryK8sIo, 25, None),
    (Item::KubeletFailCgroupV1Field, 31, None),
    (Item::KubeletRefusesCgroupV1, 35, None),
    (Item::ContainerdV2Required, 36, None),
    (Item::ControlPlaneTaintMaster, 20, Some(24)),
    (Item::ControlPlaneTaintControlPlane, 24, None),
    (Item::PodSecurityPolicy, 20, Some(24)),
    (Item::PodSecurityAdmission, 25, None),
    (Item::PodDisruptionBudgetV1, 21, None),
    (Item::EndpointSliceV1, 21, None),
];

/// Whether release 1.`minor` uses `item`.
pub fn uses(item: Item, minor: u32) -> bool {
    TABLE
        .iter()
        .filter(|(i, _, _)| *i == item)
        .any(|(_, first, last)| minor >= *first && last.is_none_or(|l| minor <= l))
}

/// The pod sandbox ("pause") image the release's kubelet expects.
pub fn pause_image(minor: u32) -> String {
    let tag = match minor {
        ..=20 => "3.2",
        21 => "3.4.1",
        22 => "3.5",
        23 => "3.6",
        24 => "3.7",
        25 => "3.8",
        26..=30 => "3.9",
        31..=33 => "3.10",
        _ => "3.10.1",
    };
    let registry = if uses(Item::RegistryK8sIo, minor) {
        "registry.k8s.io"
    } else {
        "k8s.gcr.io"
    };
    format!("{registry}/pause:{tag}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_release_has_exactly_one_way_to_name_the_runtime() {
        for minor in SUPPORTED_MINORS {
            let flag = uses(Item::KubeletRuntimeEndpointFlag, minor);
            let field = uses(Item::KubeletRuntimeEndpointField, minor);
            assert!(flag ^ field, "1.{minor}: flag {flag}, field {field}");
            // --container-runtime only where the endpoint is still a flag.
            if uses(Item::KubeletContainerRuntimeFlag, minor) {
                assert!(flag, "1.{minor}");
            }
            // A release that refuses cgroup v1 by default must have the field to allow it.
            if uses(Item::KubeletRefusesCgroupV1, minor) {
                assert!(uses(Item::KubeletFailCgroupV1Field, minor), "1.{minor}");
            }
            // Pods are always judged by exactly one pod security mechanism.
            let psp = uses(Item::PodSecurityPolicy, minor);
            let psa = uses(Item::PodSecurityAdmission, minor);
            assert!(
                psp ^ psa,
                "1.{minor}: PSP {psp}, Pod Security admission {psa}"
            );
            // Control-plane nodes always carry at least one control-plane taint.
            assert!(
                uses(Item::ControlPlaneTaintMaster, minor)
                    || uses(Item::ControlPlaneTaintControlPlane, minor),
                "1.{minor}"
            );
        }
    }

    #[test]
    fn table_boundaries() {
        assert!(uses(Item::InsecurePortZero, 20));
        assert!(uses(Item::InsecurePortZero, 21));
        assert!(!uses(Item::InsecurePortZero, 22));
        assert!(uses(Item::KubeletContainerRuntimeFlag, 23));
        assert!(!uses(Item::KubeletContainerRuntimeFlag, 24));
        assert!(uses(Item::KubeletRuntimeEndpointFlag, 26));
        assert!(uses(Item::KubeletRuntimeEndpointField, 27));
        assert!(uses(Item::KubeletRuntimeEndpointField, 33));
        assert_eq!(pause_image(20), "k8s.gcr.io/pause:3.2");
        assert_eq!(pause_image(33), "registry.k8s.io/pause:3.10");
        assert_eq!(pause_image(37), "registry.k8s.io/pause:3.10.1");
        assert!(!uses(Item::KubeletFailCgroupV1Field, 30));
        assert!(uses(Item::KubeletFailCgroupV1Field, 31));
        assert!(!uses(Item::KubeletRefusesCgroupV1, 34));
        assert!(uses(Item::KubeletRefusesCgroupV1, 35));
        assert!(!uses(Item::ContainerdV2Required, 35));
        assert!(uses(Item::ContainerdV2Required, 37));
        assert!(uses(Item::ControlPlaneTaintMaster, 24));
        assert!(!uses(Item::ControlPlaneTaintMaster, 25));
        assert!(!uses(Item::ControlPlaneTaintControlPlane, 23));
        assert!(uses(Item::ControlPlaneTaintControlPlane, 24));
        assert!(uses(Item::PodSecurityPolicy, 24));
        assert!(!uses(Item::PodSecurityPolicy, 25));
        assert!(uses(Item::PodSecurityAdmission, 25));
    }

    #[test]
    fn rows_lie_within_the_supported_range() {
        for (item, first, last) in TABLE {
            assert!(SUPPORTED_MINORS.contains(first), "{item:?}");
            if let Some(l) = last {
                assert!(l >= first && SUPPORTED_MINORS.contains(l), "{item:?}");
            }
        }
    }
}
