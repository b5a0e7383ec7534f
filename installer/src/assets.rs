//! What `apply` installs: an asset directory with `manifest.json` listing every file and its
//! sha256 (binaries in bin/, CNI plugins in cni/, OCI image archives in images/ with the
//! image's reference and manifest digest). Digests are verified before anything is uploaded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;
use strata_manifests::Host;
use strata_manifests::model::Role;
use strata_manifests::render::{BIN_DIR, CNI_BIN_DIR};

#[derive(Deserialize)]
struct Manifest {
    kubernetes: String,
    files: BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
struct Entry {
    sha256: String,
    /// For images/*.tar: the reference the archive's image is named.
    image: Option<String>,
    /// For images/*.tar: the image's manifest digest (what containerd lists).
    digest: Option<String>,
}

/// Where hosts keep the image archives they import into containerd.
pub const IMAGE_DIR: &str = "/var/lib/strata/images";

/// An OCI image archive to import into each node's containerd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub reference: String,
    pub digest: String,
    /// The pod sandbox image (images/pause.tar): also tagged as the release's sandbox image.
    pub sandbox: bool,
}

/// One verified file: where it is here, where it goes, its digest.
#[derive(Debug, Clone)]
pub struct Asset {
    pub local: PathBuf,
    pub remote: String,
    pub image: Option<Image>,
}

#[derive(Debug, Clone)]
pub struct Assets {
    pub files: Vec<Asset>,
}

fn sha256_file(p: &Path) -> Result<String> {
    let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    Ok(strata_manifests::plan::sha256(&bytes))
}

impl Assets {
    /// Loads and verifies `dir` for Kubernetes `version`.
    pub fn load(dir: &Path, version: &str) -> Result<Self> {
        let mf = dir.join("manifest.json");
        let text = std::fs::read_to_string(&mf).with_context(|| {
            format!(
                "no asset manifest {}: spec.assets.source must name a directory with manifest.json \
                 (build one for the local platform with .ci/build-assets)",
                mf.display()
            )
        })?;
        let m: Manifest =
            serde_json::from_str(&text).with_context(|| format!("{}", mf.display()))?;
        if m.kubernetes != version {
            bail!(
                "{} holds Kubernetes {}, the Cluster file asks for {version}",
                mf.display(),
                m.kubernetes
            );
        }
        let mut files = Vec::new();
        for (rel, e) in &m.files {
            let local = dir.join(rel);
            let have = sha256_file(&local)?;
            if have != e.sha256 {
                bail!(
                    "{}: sha256 {have} differs from the manifest's {}; the asset is corrupt or was replaced",
                    local.display(),
                    e.sha256
                );
            }
            let name = rel.rsplit('/').next().unwrap_or(rel);
            let mut image = None;
            let remote = if rel.starts_with("cni/") {
                format!("{CNI_BIN_DIR}/{name}")
            } else if rel.starts_with("images/") {
                let (Some(reference), Some(digest)) = (&e.image, &e.digest) else {
                    bail!(
                        "{}: {rel} is an image archive; its entry needs \"image\" (reference) and \"digest\" (manifest digest)",
                        mf.display()
                    );
                };
                image = Some(Image {
                    reference: reference.clone(),
                    digest: digest.clone(),
                    sandbox: name == "pause.tar",
                });
                format!("{IMAGE_DIR}/{name}")
            } else {
                format!("{BIN_DIR}/{name}")
            };
            files.push(Asset {
                local,
                remote,
                image,
            });
        }
        Ok(Self { files })
    }

    /// The image archives (every node imports all of them).
    pub fn images(&self) -> impl Iterator<Item = (&Asset, &Image)> {
        self.files
            .iter()
            .filter_map(|a| a.image.as_ref().map(|i| (a, i)))
    }

    /// The files a host needs for its roles.
    pub fn for_host(&self, h: &Host) -> Vec<&Asset> {
        self.files
            .iter()
            .filter(|a| {
                let name = a.remote.rsplit('/').next().unwrap_or_default();
                match name {
                    "etcd" | "etcdctl" => h.has_role(Role::Etcd),
                    "kube-apiserver" | "kube-controller-manager" | "kube-scheduler" => {
                        h.has_role(Role::ControlPlane)
                    }
                    _ => true,
                }
            })
            .collect()
    }
}

/// The asset directory of a Cluster: spec.assets.source, or the local cache for its version.
pub fn source_dir(source: &str, base_dir: &Path, version: &str) -> PathBuf {
    if source.is_empty() {
        PathBuf::from(format!("/var/cache/strata/assets/{version}"))
    } else if Path::new(source).is_absolute() {
        PathBuf::from(source)
    } else {
        base_dir.join(source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &[u8])], manifest_digest_of: Option<&[u8]>) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        let mut entries = Vec::new();
        for (rel, content) in files {
            let p = d.path().join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, content).expect("write");
            let digest = strata_manifests::plan::sha256(manifest_digest_of.unwrap_or(content));
            let image = if rel.starts_with("images/") {
                ", \"image\": \"strata.dev/pause:1\", \"digest\": \"sha256:ab\""
            } else {
                ""
            };
            entries.push(format!("\"{rel}\": {{\"sha256\": \"{digest}\"{image}}}"));
        }
        let m = format!(
            "{{\"kubernetes\": \"1.20.2\", \"files\": {{{}}}}}",
            entries.join(",")
        );
        std::fs::write(d.path().join("manifest.json"), m).expect("manifest");
        d
    }

    #[test]
    fn verified_assets_map_to_host_paths() {
        let d = dir_with(
            &[
                ("bin/kubelet", b"k"),
                ("bin/etcd", b"e"),
                ("cni/bridge", b"b"),
                ("images/pause.tar", b"p"),
            ],
            None,
        );
        let a = Assets::load(d.path(), "1.20.2").expect("valid");
        let remotes: Vec<&str> = a.files.iter().map(|f| f.remote.as_str()).collect();
        assert_eq!(
            remotes,
            [
                "/opt/strata/bin/etcd",
                "/opt/strata/bin/kubelet",
                "/opt/cni/bin/bridge",
                "/var/lib/strata/images/pause.tar"
            ]
        );
        let images: Vec<&Image> = a.images().map(|(_, i)| i).collect();
        assert_eq!(
            images,
            [&Image {
                reference: "strata.dev/pause:1".into(),
                digest: "sha256:ab".into(),
                sandbox: true
            }]
        );
        let e = Assets::load(d.path(), "1.21.0").expect_err("version");
        assert!(e.to_string().contains("asks for 1.21.0"), "{e}");
    }

    #[test]
    fn a_corrupt_asset_is_refused() {
        let d = dir_with(&[("bin/kubelet", b"tampered")], Some(b"original"));
        let e = Assets::load(d.path(), "1.20.2").expect_err("digest");
        assert!(
            format!("{e:#}").contains("differs from the manifest"),
            "{e:#}"
        );
        let missing = tempfile::tempdir().expect("tempdir");
        let e = Assets::load(missing.path(), "1.20.2").expect_err("no manifest");
        assert!(format!("{e:#}").contains("spec.assets.source"), "{e:#}");
    }
}
