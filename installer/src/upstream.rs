//! `spec.assets.source: upstream`: the official release downloads of Kubernetes, etcd,
//! containerd, runc and the CNI plugins, each verified against the sha256 its publisher
//! puts beside it, then laid out as an asset directory with a manifest (see assets.rs).
//! `spec.assets.mirror` fetches the same paths from a mirror.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::assets::get;

/// Versions of the node components released with (and tested against) each Kubernetes minor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Components {
    pub etcd: &'static str,
    pub containerd: &'static str,
    pub runc: &'static str,
    pub cni: &'static str,
}

/// The components for Kubernetes 1.`minor` (etcd as kubeadm ships it; containerd 2 from
/// 1.36, where 1.x is no longer supported).
pub fn components(minor: u32) -> Components {
    let etcd = match minor {
        ..=21 => "3.4.13",
        22..=25 => "3.5.6",
        26..=28 => "3.5.12",
        29..=31 => "3.5.16",
        _ => "3.5.21",
    };
    let (containerd, runc) = match minor {
        ..=23 => ("1.6.20", "1.1.5"),
        24..=29 => ("1.7.13", "1.1.12"),
        30..=35 => ("1.7.27", "1.2.6"),
        _ => ("2.1.4", "1.3.0"),
    };
    let cni = if minor <= 24 { "1.1.1" } else { "1.6.2" };
    Components {
        etcd,
        containerd,
        runc,
        cni,
    }
}

/// The Kubernetes binaries Strata installs, as dl.k8s.io names them.
pub const SERVER_BINARIES: [&str; 5] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
];

/// One download: the file, where its published digest is, and the name in that listing.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Download {
    url: String,
    sums: String,
    /// The file name the sums file lists the digest under (None: the sums file holds only it).
    listed_as: Option<String>,
}

fn downloads(version: &str, c: Components) -> BTreeMap<&'static str, Download> {
    let k8s = |name: &str| Download {
        url: format!("https://dl.k8s.io/release/v{version}/bin/linux/amd64/{name}"),
        sums: format!("https://dl.k8s.io/release/v{version}/bin/linux/amd64/{name}.sha256"),
        listed_as: None,
    };
    let gh = "https://github.com";
    let mut d = BTreeMap::new();
    for name in SERVER_BINARIES {
        d.insert(name, k8s(name));
    }
    let etcd = format!("etcd-v{}-linux-amd64.tar.gz", c.etcd);
    d.insert(
        "etcd",
        Download {
            url: format!("{gh}/etcd-io/etcd/releases/download/v{}/{etcd}", c.etcd),
            sums: format!("{gh}/etcd-io/etcd/releases/download/v{}/SHA256SUMS", c.etcd),
            listed_as: Some(etcd),
        },
    );
    let ctrd = format!("containerd-{}-linux-amd64.tar.gz", c.containerd);
    d.insert(
        "containerd",
        Download {
            url: format!(
                "{gh}/containerd/containerd/releases/download/v{}/{ctrd}",
                c.containerd
            ),
            sums: format!(
                "{gh}/containerd/containerd/releases/download/v{}/{ctrd}.sha256sum",
                c.containerd
            ),
            listed_as: Some(ctrd),
        },
    );
    d.insert(
        "runc",
        Download {
            url: format!(
                "{gh}/opencontainers/runc/releases/download/v{}/runc.amd64",
                c.runc
            ),
            sums: format!(
                "{gh}/opencontainers/runc/releases/download/v{}/runc.sha256sum",
                c.runc
            ),
            listed_as: Some("runc.amd64".into()),
        },
    );
    let cni = format!("cni-plugins-linux-amd64-v{}.tgz", c.cni);
    d.insert(
        "cni",
        Download {
            url: format!(
                "{gh}/containernetworking/plugins/releases/download/v{}/{cni}",
                c.cni
            ),
            sums: format!(
                "{gh}/containernetworking/plugins/releases/download/v{}/{cni}.sha256",
                c.cni
            ),
            listed_as: None,
        },
    );
    d
}

/// `https://HOST/PATH` through the mirror: `<mirror>/HOST/PATH`.
fn through(mirror: &str, url: &str) -> String {
    if mirror.is_empty() {
        return url.to_owned();
    }
    let rest = url.strip_prefix("https://").unwrap_or(url);
    format!("{}/{rest}", mirror.trim_end_matches('/'))
}

/// The digest a sums file gives for `listed_as` (or its only digest).
fn digest_in(sums: &str, listed_as: Option<&str>) -> Option<String> {
    sums.lines().find_map(|l| {
        let mut parts = l.split_whitespace();
        let digest = parts.next()?;
        let name = parts.next().map(|n| n.trim_start_matches('*'));
        let wanted = match (listed_as, name) {
            (None, _) => true,
            (Some(w), Some(n)) => n == w || n.rsplit('/').next() == Some(w),
            (Some(_), None) => false,
        };
        (wanted && digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| digest.to_ascii_lowercase())
    })
}

/// Files to take out of an archive: (path in the archive ends with, name in bin/ or cni/).
fn extract(
    bytes: &[u8],
    what: &str,
    pick: impl Fn(&str) -> Option<String>,
    out: &Path,
) -> Result<usize> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut n = 0;
    for entry in archive
        .entries()
        .with_context(|| format!("reading {what}"))?
    {
        let mut entry = entry.with_context(|| format!("reading {what}"))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry.path()?.to_string_lossy().into_owned();
        if let Some(dest) = pick(&path) {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data)
                .with_context(|| format!("{what}: {path}"))?;
            write(&out.join(dest), &data)?;
            n += 1;
        }
    }
    Ok(n)
}

fn write(path: &Path, data: &[u8]) -> Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    }
    strata_pki::write_atomic(path, data, 0o755)
        .with_context(|| format!("writing {}", path.display()))
}

/// Whether the hosts fetch download `name` through `mirror` themselves: a plain file (not
/// an archive to unpack) through an https mirror (one the hosts can reach, as the Cluster
/// file says by naming it). This computer then fetches only its published digest.
fn left_to_hosts(name: &str, mirror: &str) -> bool {
    mirror.starts_with("https://") && (SERVER_BINARIES.contains(&name) || name == "runc")
}

/// Downloads (once) and verifies every component into `cache/upstream-<version>/` with a
/// manifest, and returns that directory. Through an https mirror, the plain files are left
/// to the hosts: the manifest gives their mirror URL and published digest.
pub async fn fetch(
    client: &reqwest::Client,
    version: &str,
    minor: u32,
    mirror: &str,
    cache: &Path,
) -> Result<PathBuf> {
    let dir = if mirror.is_empty() {
        cache.join(format!("upstream-{version}"))
    } else {
        let id = strata_manifests::plan::sha256(mirror.as_bytes());
        cache.join(format!("upstream-{version}-mirror-{}", &id[..12]))
    };
    if dir.join("manifest.json").exists() {
        return Ok(dir);
    }
    let work = cache.join(format!("upstream-{version}.partial"));
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
    }
    let mut files = serde_json::Map::new();
    for (name, d) in downloads(version, components(minor)) {
        let sums_url = through(mirror, &d.sums);
        let sums = String::from_utf8_lossy(&get(client, &sums_url).await?).into_owned();
        let Some(want) = digest_in(&sums, d.listed_as.as_deref()) else {
            bail!(
                "{sums_url}: no sha256 for {}",
                d.listed_as.as_deref().unwrap_or(name)
            );
        };
        let url = through(mirror, &d.url);
        if left_to_hosts(name, mirror) {
            files.insert(
                format!("bin/{name}"),
                serde_json::json!({"sha256": want, "url": url}),
            );
            continue;
        }
        let bytes = get(client, &url).await?;
        let have = strata_manifests::plan::sha256(&bytes);
        if have != want {
            bail!("{url}: sha256 {have} differs from the published {want} ({sums_url})");
        }
        let n = match name {
            "etcd" => extract(
                &bytes,
                &url,
                |p| {
                    let f = p.rsplit('/').next()?;
                    matches!(f, "etcd" | "etcdctl").then(|| format!("bin/{f}"))
                },
                &work,
            )?,
            "containerd" => extract(
                &bytes,
                &url,
                |p| {
                    let f = p.strip_prefix("bin/")?;
                    matches!(f, "containerd" | "containerd-shim-runc-v2" | "ctr")
                        .then(|| format!("bin/{f}"))
                },
                &work,
            )?,
            "cni" => extract(
                &bytes,
                &url,
                |p| {
                    let f = p.trim_start_matches("./");
                    (!f.contains('/') && !f.is_empty() && f != "LICENSE" && f != "README.md")
                        .then(|| format!("cni/{f}"))
                },
                &work,
            )?,
            "runc" => {
                write(&work.join("bin/runc"), &bytes)?;
                1
            }
            _ => {
                write(&work.join(format!("bin/{name}")), &bytes)?;
                1
            }
        };
        if n == 0 {
            bail!("{url}: the archive holds none of the files Strata needs");
        }
    }
    // The manifest of what was verified (and of what the hosts fetch, above).
    for sub in ["bin", "cni"] {
        let mut names: Vec<PathBuf> = std::fs::read_dir(work.join(sub))
            .with_context(|| format!("reading {}", work.join(sub).display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        for p in names {
            let data = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
            let rel = format!(
                "{sub}/{}",
                p.file_name().unwrap_or_default().to_string_lossy()
            );
            files.insert(
                rel,
                serde_json::json!({"sha256": strata_manifests::plan::sha256(&data)}),
            );
        }
    }
    let manifest = serde_json::json!({"kubernetes": version, "files": files});
    std::fs::write(
        work.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest)?,
    )
    .context("writing the manifest")?;
    std::fs::rename(&work, &dir).with_context(|| format!("writing {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_digests_are_read() {
        let d = "a".repeat(64);
        assert_eq!(digest_in(&format!("{d}\n"), None), Some(d.clone()));
        let listing = format!(
            "{}  etcd-v3.4.13-darwin-amd64.zip\n{d}  etcd-v3.4.13-linux-amd64.tar.gz\n",
            "b".repeat(64)
        );
        assert_eq!(
            digest_in(&listing, Some("etcd-v3.4.13-linux-amd64.tar.gz")),
            Some(d.clone())
        );
        assert_eq!(digest_in(&listing, Some("other")), None);
        assert_eq!(
            digest_in(&format!("{d} *runc.amd64\n"), Some("runc.amd64")),
            Some(d)
        );
        assert_eq!(digest_in("not a digest\n", None), None);
    }

    #[test]
    fn hosts_fetch_the_plain_files_through_an_https_mirror_only() {
        let m = "https://mirror.example/releases";
        for name in SERVER_BINARIES.iter().chain(&["runc"]) {
            assert!(left_to_hosts(name, m), "{name}");
            assert!(!left_to_hosts(name, ""), "{name}: no mirror");
            assert!(
                !left_to_hosts(name, "http://127.0.0.1:9/m"),
                "{name}: loopback"
            );
        }
        // Archives are unpacked here.
        for name in ["etcd", "containerd", "cni"] {
            assert!(!left_to_hosts(name, m), "{name}");
        }
    }

    #[test]
    fn mirror_paths() {
        assert_eq!(
            through(
                "http://127.0.0.1:9/m/",
                "https://dl.k8s.io/release/v1.20.2/bin/linux/amd64/kubelet"
            ),
            "http://127.0.0.1:9/m/dl.k8s.io/release/v1.20.2/bin/linux/amd64/kubelet"
        );
        assert_eq!(through("", "https://x/y"), "https://x/y");
    }

    #[test]
    fn newer_releases_get_containerd_2() {
        assert!(components(35).containerd.starts_with("1."));
        assert!(components(36).containerd.starts_with("2."));
    }
}
