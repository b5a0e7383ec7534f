//! The images Strata provides to a cluster: each is an archive in the assets that apply
//! imports into every node's containerd, unless spec.images names a registry reference for
//! it, which the nodes then pull themselves.

use crate::model::{Cluster, ImageReference};
use crate::versions;

/// One of the images Strata provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StrataImage {
    /// The pod sandbox.
    Pause,
    /// The overlay agent.
    Overlay,
    /// The update operator and its agent.
    UpdateOperator,
    /// Cluster DNS.
    Dns,
}

impl StrataImage {
    pub const ALL: [StrataImage; 4] = [Self::Pause, Self::Overlay, Self::UpdateOperator, Self::Dns];
    /// The images only Strata's assets or a registry the Cluster file names can provide (the
    /// pause image has its upstream name to fall back on).
    pub const OWN: [StrataImage; 3] = [Self::Overlay, Self::UpdateOperator, Self::Dns];

    /// The image's archive in the assets' images/ directory (`.ci/build-assets`).
    pub fn archive(self) -> &'static str {
        match self {
            Self::Pause => "pause.tar",
            Self::Overlay => "overlay.tar",
            Self::UpdateOperator => "update-operator.tar",
            Self::Dns => "dns.tar",
        }
    }

    /// The image whose archive is named `archive`, if it is one of Strata's.
    pub fn of_archive(archive: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|i| i.archive() == archive)
    }

    /// The Cluster file's field that replaces the image.
    pub fn field(self) -> &'static str {
        match self {
            Self::Pause => "spec.images.pause",
            Self::Overlay => "spec.images.overlay",
            Self::UpdateOperator => "spec.images.updateOperator",
            Self::Dns => "spec.images.dns",
        }
    }

    /// The registry reference the Cluster file names instead of the assets' image.
    pub fn replacement(self, c: &Cluster) -> Option<&ImageReference> {
        let i = &c.spec.images;
        match self {
            Self::Pause => i.pause.as_ref(),
            Self::Overlay => i.overlay.as_ref(),
            Self::UpdateOperator => i.update_operator.as_ref(),
            Self::Dns => i.dns.as_ref(),
        }
    }

    /// Whether the cluster runs the image at all.
    pub fn used(self, c: &Cluster) -> bool {
        match self {
            Self::Pause => true,
            Self::Overlay => c.spec.addons.overlay.enabled,
            Self::UpdateOperator => c.spec.addons.update_operator.enabled,
            Self::Dns => c.spec.addons.dns.enabled,
        }
    }

    /// Whether the cluster runs the image from the assets' archive (it runs it and the
    /// Cluster file names no registry reference for it).
    pub fn from_assets(self, c: &Cluster) -> bool {
        self.used(c) && self.replacement(c).is_none()
    }

    /// The name the assets' image is known by on the nodes (the pause image is tagged as the
    /// release's kubelet expects it).
    pub fn built(self, c: &Cluster) -> String {
        let version = env!("CARGO_PKG_VERSION");
        match self {
            Self::Pause => versions::pause_image(c.spec.kubernetes.version.minor()),
            Self::Overlay => format!("strata.dev/overlay:{version}"),
            Self::UpdateOperator => format!("strata.dev/update-operator:{version}"),
            Self::Dns => format!("strata.dev/dns:{version}"),
        }
    }

    /// The reference the cluster's manifests and containerd's configuration name.
    pub fn reference(self, c: &Cluster) -> String {
        match self.replacement(c) {
            Some(r) => r.as_str().to_owned(),
            None => self.built(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{Context, load_str};

    fn cluster(images: &str) -> Cluster {
        let text = format!(
            "apiVersion: strata.dev/v1alpha1\nkind: Cluster\nmetadata: {{name: demo}}\n\
             spec:\n  platform: {{local: {{}}}}\n  hosts:\n    - {{name: cp1, address: 10.0.0.2, roles: [etcd, control-plane, worker]}}\n\
             {images}"
        );
        let ctx = Context {
            file: "cluster.yaml".into(),
            base_dir: ".".into(),
            home: None,
        };
        load_str(&text, &ctx).expect("valid").cluster
    }

    #[test]
    fn the_cluster_file_replaces_any_image() {
        let c = cluster("");
        assert_eq!(StrataImage::Pause.reference(&c), "k8s.gcr.io/pause:3.2");
        assert!(
            StrataImage::Overlay
                .reference(&c)
                .starts_with("strata.dev/overlay:")
        );
        assert!(StrataImage::ALL.iter().all(|i| i.replacement(&c).is_none()));

        let c = cluster(
            "  images:\n    pause: 10.0.0.1:5000/strata/pause:3.2\n    \
             updateOperator: registry.example.com/strata/update-operator:1\n",
        );
        assert_eq!(
            StrataImage::Pause.reference(&c),
            "10.0.0.1:5000/strata/pause:3.2"
        );
        assert!(StrataImage::Overlay.replacement(&c).is_none());
        assert_eq!(
            StrataImage::UpdateOperator.reference(&c),
            "registry.example.com/strata/update-operator:1"
        );
    }

    #[test]
    fn archives_name_their_image() {
        for i in StrataImage::ALL {
            assert_eq!(StrataImage::of_archive(i.archive()), Some(i));
        }
        assert_eq!(StrataImage::of_archive("iperf3.tar"), None);
    }
}
