//! What `apply` installs: an asset directory with `manifest.json` listing every file and its
//! sha256 (binaries in bin/, CNI plugins in cni/, OCI image archives in images/ with the
//! image's reference and manifest digest). Digests are verified before anything is uploaded.
//!
//! A file may also have an https URL the hosts fetch it from themselves (an https directory
//! source's `<url>/<path>`, or a manifest entry's `url`, as the official downloads through a
//! mirror): this computer then holds only the manifest, each host verifies what it fetches,
//! and only a file some host could not fetch is downloaded here (see [`Assets::ensure_local`])
//! and passed on through the fan-out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

use strata_manifests::catalog::{self, BIN_DIR, CNI_BIN_DIR, Component};
use strata_manifests::images::StrataImage;
use strata_manifests::{Cluster, Host};

use crate::certs::ClusterState;

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
    /// An https URL the hosts may fetch the file from themselves.
    #[serde(default)]
    url: Option<String>,
}

/// Where hosts keep the image archives they import into containerd.
pub const IMAGE_DIR: &str = "/var/lib/strata/images";

/// An OCI image archive to import into each node's containerd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub reference: String,
    pub digest: String,
    /// Which of Strata's images it is, by its archive's name (None: an extra image).
    pub strata: Option<StrataImage>,
}

/// One verified file: where it is here, where it goes, its digest.
#[derive(Debug, Clone)]
pub struct Asset {
    /// Where the file is here (or goes, when it has a `url` and is not here yet).
    pub local: PathBuf,
    pub remote: String,
    /// The verified sha256 (hex) of the file (of the one to fetch, when it has a `url`).
    pub sha256: String,
    pub image: Option<Image>,
    /// The https URL hosts fetch the file from themselves (checked against `sha256`).
    pub url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Assets {
    pub files: Vec<Asset>,
}

fn sha256_file(p: &Path) -> Result<String> {
    let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    Ok(strata_manifests::plan::sha256(&bytes))
}

/// The sha256 of local asset files as known at a stamp (device, inode, size, modification
/// and change times to the nanosecond), kept in the state directory: a file whose stamp is
/// the one recorded is not read again. Any write or rename onto the path moves the stamp,
/// and no user can set a change time back, so a known digest is the file's digest.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct DigestCache(BTreeMap<PathBuf, KnownDigest>);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KnownDigest {
    stamp: String,
    sha256: String,
}

impl DigestCache {
    /// The cache at `path`; empty when there is none or it cannot be read (the digests are
    /// then computed again).
    pub fn load(path: &Path) -> Self {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &serde_json::to_vec(self)?)
    }

    fn stamp(p: &Path) -> Result<String> {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(p).with_context(|| format!("reading {}", p.display()))?;
        Ok(format!(
            "{}:{}:{}:{}.{}:{}.{}",
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec()
        ))
    }

    /// The sha256 of `p`: the known one when its stamp has not moved, else read and recorded.
    pub fn sha256(&mut self, p: &Path) -> Result<String> {
        let stamp = Self::stamp(p)?;
        if let Some(k) = self.0.get(p).filter(|k| k.stamp == stamp) {
            return Ok(k.sha256.clone());
        }
        let sha256 = sha256_file(p)?;
        // The stamp taken before the read: a write meanwhile leaves a stamp that will not
        // match next time.
        let known = KnownDigest {
            stamp,
            sha256: sha256.clone(),
        };
        self.0.insert(p.to_owned(), known);
        Ok(sha256)
    }
}

impl Assets {
    /// Loads and verifies `dir` for Kubernetes `version`, reading only the files whose
    /// digest `cache` does not know.
    pub fn load(dir: &Path, version: &str, cache: &mut DigestCache) -> Result<Self> {
        Self::load_from(dir, None, version, cache)
    }

    /// As [`Self::load`], the files having URLs under `base` (an https directory source):
    /// a file with a URL need not be here (hosts fetch it; see [`Self::ensure_local`]).
    pub fn load_from(
        dir: &Path,
        base: Option<&str>,
        version: &str,
        cache: &mut DigestCache,
    ) -> Result<Self> {
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
            let local = safe_join(dir, rel)?;
            let url = e
                .url
                .clone()
                .or_else(|| base.map(|b| format!("{}/{rel}", b.trim_end_matches('/'))));
            if let Some(u) = &url
                && (!u.starts_with("https://")
                    || u.chars().any(|c| c.is_whitespace() || c.is_control()))
            {
                bail!(
                    "{}: {rel} has the URL {u:?}; hosts fetch over https only, from a URL \
                     without spaces",
                    mf.display()
                );
            }
            // A file with a URL is fetched by the hosts: here it may be absent (or left over
            // from an earlier download: downloaded again when needed).
            let have = if url.is_some() && !local.exists() {
                e.sha256.clone()
            } else {
                cache.sha256(&local)?
            };
            if have != e.sha256 && url.is_none() {
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
                    strata: StrataImage::of_archive(name),
                });
                format!("{IMAGE_DIR}/{name}")
            } else {
                format!("{BIN_DIR}/{name}")
            };
            files.push(Asset {
                local,
                remote,
                sha256: e.sha256.clone(),
                image,
                url,
            });
        }
        Ok(Self { files })
    }

    /// Adds Strata's own host programs found in `dir` (beside the strata executable) that
    /// the assets lack (assets of upstream releases carry none of them).
    pub fn with_own_programs(mut self, dir: &Path, cache: &mut DigestCache) -> Result<Self> {
        for name in OWN_PROGRAMS {
            let remote = format!("{BIN_DIR}/{name}");
            let local = dir.join(name);
            if self.files.iter().any(|a| a.remote == remote) || !local.is_file() {
                continue;
            }
            self.files.push(Asset {
                sha256: cache.sha256(&local)?,
                local,
                remote,
                image: None,
                url: None,
            });
        }
        Ok(self)
    }

    /// Refused when the assets lack a program the cluster's components run or use.
    pub fn check_programs(&self, c: &Cluster, source: &str) -> Result<()> {
        let missing: BTreeSet<&str> = catalog::enabled(c)
            .flat_map(|s| s.binaries.iter().chain(s.tools).copied())
            .filter(|b| {
                !self
                    .files
                    .iter()
                    .any(|a| a.remote == format!("{BIN_DIR}/{b}"))
            })
            .collect();
        if !missing.is_empty() {
            let list: Vec<&str> = missing.into_iter().collect();
            bail!(
                "the assets ({source}) carry no bin/{}; the cluster's components run them: use \
                 assets built by .ci/build-assets{}",
                list.join(", bin/"),
                if list.iter().any(|b| OWN_PROGRAMS.contains(b)) {
                    ", or put Strata's own host programs beside the strata executable"
                } else {
                    ""
                }
            );
        }
        Ok(())
    }

    /// What cluster `c` takes from these assets: without the archives of Strata's images the
    /// cluster does not run or names a registry reference for (spec.images). Refused when
    /// the cluster runs one of Strata's images that neither the assets carry nor the Cluster
    /// file names (the pause image has its upstream name to fall back on).
    pub fn for_cluster(mut self, c: &Cluster, source: &str) -> Result<Self> {
        self.files
            .retain(|a| match a.image.as_ref().and_then(|i| i.strata) {
                Some(i) => i.from_assets(c),
                None => true,
            });
        for i in StrataImage::OWN {
            let carried = self.images().any(|(_, img)| img.strata == Some(i));
            if i.from_assets(c) && !carried {
                bail!(
                    "the assets ({source}) carry no images/{} and {} names no registry reference: \
                     set {} to an image reference the nodes can pull, or use assets built by \
                     .ci/build-assets",
                    i.archive(),
                    i.field(),
                    i.field()
                );
            }
        }
        Ok(self)
    }

    /// The image archives (every node imports all of them).
    pub fn images(&self) -> impl Iterator<Item = (&Asset, &Image)> {
        self.files
            .iter()
            .filter_map(|a| a.image.as_ref().map(|i| (a, i)))
    }

    /// The files host `h` needs, each with the components a new version of it restarts:
    /// the binaries of the components it runs (as the catalogue names them), the CNI
    /// plugins where a component needs them, and every image archive (every host is a
    /// node). A binary no component names goes to no host.
    pub fn for_host(&self, c: &Cluster, h: &Host) -> Vec<(&Asset, BTreeSet<Component>)> {
        let on_host: Vec<&catalog::Spec> = catalog::on_host(c, h).collect();
        let mut out = Vec::new();
        for a in &self.files {
            let name = a.remote.rsplit('/').next().unwrap_or_default();
            if a.image.is_some() {
                out.push((a, BTreeSet::new()));
            } else if a.remote.starts_with(&format!("{CNI_BIN_DIR}/")) {
                if on_host.iter().any(|s| s.cni_plugins) {
                    out.push((a, BTreeSet::new()));
                }
            } else {
                let users: Vec<(&catalog::Spec, bool)> = catalog::binary_users(name)
                    .filter(|(s, _)| on_host.contains(s))
                    .collect();
                if !users.is_empty() {
                    let restart = users
                        .iter()
                        .filter(|(_, restarts)| *restarts)
                        .map(|(s, _)| s.component)
                        .collect();
                    out.push((a, restart));
                }
            }
        }
        out
    }

    /// Downloads here, each verified, the files going to `remotes` that have a URL and are not
    /// here with their digest (those some host could not fetch itself); returns the bytes
    /// downloaded.
    pub async fn ensure_local(&self, remotes: &BTreeSet<&str>) -> Result<u64> {
        let missing: Vec<&Asset> = self
            .files
            .iter()
            .filter(|a| remotes.contains(a.remote.as_str()))
            .filter(|a| a.url.is_some() && !sha256_file(&a.local).is_ok_and(|h| h == a.sha256))
            .collect();
        let mut bytes = 0;
        if missing.is_empty() {
            return Ok(bytes);
        }
        let client = http_client()?;
        for a in missing {
            let url = a.url.as_deref().unwrap_or_default();
            bytes += download(&client, url, &a.sha256, &a.local).await?;
        }
        Ok(bytes)
    }

    /// The content of the asset that goes to `remote` on the hosts.
    pub fn read(&self, remote: &str) -> Result<Vec<u8>> {
        let a = self
            .files
            .iter()
            .find(|a| a.remote == remote)
            .with_context(|| format!("no asset goes to {remote}"))?;
        std::fs::read(&a.local).with_context(|| format!("reading {}", a.local.display()))
    }
}

/// Strata's own programs that run on the hosts outside containers (.ci/build-assets puts
/// them in bin/; a release ships them beside the strata executable).
pub const OWN_PROGRAMS: [&str; 3] = ["strata-api-balancer", "strata-fetch", "strata-vip"];

/// The directory of the running strata executable.
fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
}

/// The mode of every file of the assets on the hosts.
pub const MODE: u32 = 0o755;

/// The state directory's file of local asset digests (see [`DigestCache`]).
const DIGEST_CACHE: &str = "asset-digests.json";

/// The cluster's assets for an apply: resolved (downloaded and unpacked into the state
/// directory when they come from elsewhere), verified, and narrowed to what it runs.
pub async fn for_apply(cs: &ClusterState) -> Result<Assets> {
    let spec = &cs.cluster.spec.assets;
    let version = cs.cluster.spec.kubernetes.version.to_string();
    let mut src = source(&spec.source, &cs.ctx.base_dir, &version);
    if let Source::Upstream { mirror, .. } = &mut src {
        mirror.clone_from(&spec.mirror);
    }
    let dir = resolve(&src, &spec.sha256, &cs.state.root.join("assets")).await?;
    let cache_file = cs.state.root.join(DIGEST_CACHE);
    let mut cache = DigestCache::load(&cache_file);
    let base = match &src {
        Source::Url(u) if u.starts_with("https://") && !is_archive(url_path(u)) => Some(u.as_str()),
        _ => None,
    };
    let mut assets = Assets::load_from(&dir, base, &version, &mut cache)?;
    if let Some(exe) = exe_dir() {
        assets = assets.with_own_programs(&exe, &mut cache)?;
    }
    cache.save(&cache_file)?;
    let source = dir.display().to_string();
    assets.check_programs(&cs.cluster, &source)?;
    assets.for_cluster(&cs.cluster, &source)
}

/// The cluster's assets for `strata plan`, which writes nothing: a local directory is read;
/// anything that would need a download or unpacking is None (apply fetches it).
pub fn for_plan(cs: &ClusterState) -> Result<Option<Assets>> {
    let spec = &cs.cluster.spec.assets;
    let version = cs.cluster.spec.kubernetes.version.to_string();
    match source(&spec.source, &cs.ctx.base_dir, &version) {
        Source::Dir(dir) => {
            // Read, not written: plan changes nothing in the state directory.
            let mut cache = DigestCache::load(&cs.state.root.join(DIGEST_CACHE));
            let mut assets = Assets::load(&dir, &version, &mut cache)?;
            if let Some(exe) = exe_dir() {
                assets = assets.with_own_programs(&exe, &mut cache)?;
            }
            Ok(Some(
                assets.for_cluster(&cs.cluster, &dir.display().to_string())?,
            ))
        }
        _ => Ok(None),
    }
}

/// Where spec.assets.source points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Dir(PathBuf),
    Archive(PathBuf),
    /// A URL of an archive or of a directory with manifest.json.
    Url(String),
    /// The official release downloads for a Kubernetes version, optionally from a mirror.
    Upstream {
        version: String,
        mirror: String,
    },
}

fn is_archive(name: &str) -> bool {
    [".tar", ".tar.gz", ".tgz"]
        .iter()
        .any(|e| name.ends_with(e))
}

/// A URL without its query.
fn url_path(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

/// spec.assets.source: empty is the local cache for the version; relative paths are
/// relative to the Cluster file.
pub fn source(source: &str, base_dir: &Path, version: &str) -> Source {
    if source == "upstream" {
        return Source::Upstream {
            version: version.to_owned(),
            mirror: String::new(),
        };
    }
    if source.starts_with("https://") || source.starts_with("http://") {
        return Source::Url(source.to_owned());
    }
    let path = if source.is_empty() {
        PathBuf::from(format!("/var/cache/strata/assets/{version}"))
    } else if Path::new(source).is_absolute() {
        PathBuf::from(source)
    } else {
        base_dir.join(source)
    };
    if is_archive(source) {
        Source::Archive(path)
    } else {
        Source::Dir(path)
    }
}

/// Turns a source into a verified local directory: archives are unpacked and downloads are
/// stored under `cache` (the cluster's state directory), each checked against `sha256` (the
/// archive's, or the directory URL's manifest.json's) and then every file against the
/// manifest. Files already downloaded with the right digest are not fetched again.
pub async fn resolve(src: &Source, sha256: &str, cache: &Path) -> Result<PathBuf> {
    match src {
        Source::Dir(d) => Ok(d.clone()),
        Source::Upstream { version, mirror } => {
            if mirror.starts_with("http://") && !strata_manifests::validate::loopback_url(mirror) {
                bail!(
                    "{mirror}: plain http is only allowed to this computer (loopback); use https"
                );
            }
            let minor: u32 = version
                .split('.')
                .nth(1)
                .and_then(|m| m.parse().ok())
                .with_context(|| format!("Kubernetes version {version}"))?;
            let client = http_client()?;
            crate::upstream::fetch(&client, version, minor, mirror, cache).await
        }
        Source::Archive(a) => {
            let bytes = std::fs::read(a).with_context(|| format!("reading {}", a.display()))?;
            unpack(&bytes, &a.display().to_string(), sha256, cache)
        }
        Source::Url(url) => {
            if url.starts_with("http://") && !strata_manifests::validate::loopback_url(url) {
                bail!("{url}: plain http is only allowed to this computer (loopback); use https");
            }
            if sha256.is_empty() {
                bail!("{url}: spec.assets.sha256 is required to verify the download");
            }
            let client = http_client()?;
            if is_archive(url_path(url)) {
                let done = cache.join(format!("{}.tar", &sha256[..16.min(sha256.len())]));
                let bytes = match std::fs::read(&done) {
                    Ok(b) if strata_manifests::plan::sha256(&b) == sha256 => b,
                    _ => {
                        let b = get(&client, url).await?;
                        let got = strata_manifests::plan::sha256(&b);
                        if got != sha256 {
                            bail!("{url}: sha256 {got} differs from spec.assets.sha256 {sha256}");
                        }
                        std::fs::create_dir_all(cache)
                            .with_context(|| format!("creating {}", cache.display()))?;
                        write_atomic(&done, &b)?;
                        b
                    }
                };
                return unpack(&bytes, url, sha256, cache);
            }
            let base = url.trim_end_matches('/');
            let dir = cache.join(&sha256[..16.min(sha256.len())]);
            let kept = dir.join("manifest.json");
            let manifest = match std::fs::read(&kept) {
                Ok(b) if strata_manifests::plan::sha256(&b) == sha256 => b,
                _ => {
                    let b = get(&client, &format!("{base}/manifest.json")).await?;
                    let got = strata_manifests::plan::sha256(&b);
                    if got != sha256 {
                        bail!(
                            "{base}/manifest.json: sha256 {got} differs from spec.assets.sha256 \
                             {sha256}"
                        );
                    }
                    b
                }
            };
            let m: Manifest = serde_json::from_slice(&manifest)
                .with_context(|| format!("{base}/manifest.json"))?;
            // Over https the hosts fetch the files themselves (see Assets::load_from); plain
            // http is this computer's loopback, which they cannot reach: downloaded here.
            if url.starts_with("http://") {
                for (rel, e) in &m.files {
                    let local = safe_join(&dir, rel)?;
                    if sha256_file(&local).is_ok_and(|h| h == e.sha256) {
                        continue;
                    }
                    download(&client, &format!("{base}/{rel}"), &e.sha256, &local).await?;
                }
            }
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            write_atomic(&kept, &manifest)?;
            Ok(dir)
        }
    }
}

/// The client of the downloads here.
fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(20))
        .build()
        .context("HTTP client")
}

/// Downloads `url` to `local`, refused unless its sha256 is `sha256`; returns its size.
async fn download(client: &reqwest::Client, url: &str, sha256: &str, local: &Path) -> Result<u64> {
    let b = get(client, url).await?;
    let h = strata_manifests::plan::sha256(&b);
    if h != sha256 {
        bail!(
            "{url}: sha256 {h} differs from the manifest's {sha256}; the server holds a corrupt \
             or replaced file"
        );
    }
    if let Some(parent) = local.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    write_atomic(local, &b)?;
    Ok(b.len() as u64)
}

pub(crate) async fn get(client: &reqwest::Client, url: &str) -> Result<Vec<u8>> {
    let resp = client
        .get(url)
        .send()
        .await
        .with_context(|| format!("downloading {url}"))?;
    if !resp.status().is_success() {
        bail!("downloading {url}: the server answered {}", resp.status());
    }
    Ok(resp
        .bytes()
        .await
        .with_context(|| format!("downloading {url}"))?
        .to_vec())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    strata_pki::write_atomic(path, bytes, 0o644)
        .with_context(|| format!("writing {}", path.display()))
}

/// `dir/rel`, refusing absolute paths and `..` (a manifest must not write elsewhere).
fn safe_join(dir: &Path, rel: &str) -> Result<PathBuf> {
    let p = Path::new(rel);
    if p.is_absolute()
        || p.components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        bail!("manifest entry `{rel}` must be a relative path inside the asset directory");
    }
    Ok(dir.join(p))
}

/// Unpacks an archive (tar, or gzip-compressed tar) into `cache/<digest>/`, once. The
/// manifest may be at the top or in the archive's single top directory.
fn unpack(bytes: &[u8], what: &str, sha256: &str, cache: &Path) -> Result<PathBuf> {
    let digest = strata_manifests::plan::sha256(bytes);
    if !sha256.is_empty() && digest != sha256 {
        bail!("{what}: sha256 {digest} differs from spec.assets.sha256 {sha256}");
    }
    let dir = cache.join(&digest[..16]);
    let done = dir.join(".unpacked");
    if !done.exists() {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let gz = bytes.starts_with(&[0x1f, 0x8b]);
        let reader: Box<dyn std::io::Read> = if gz {
            Box::new(flate2::read::GzDecoder::new(bytes))
        } else {
            Box::new(bytes)
        };
        let mut archive = tar::Archive::new(reader);
        for entry in archive
            .entries()
            .with_context(|| format!("reading {what}"))?
        {
            let mut entry = entry.with_context(|| format!("reading {what}"))?;
            // unpack_in refuses paths that would land outside `dir`.
            if !entry
                .unpack_in(&dir)
                .with_context(|| format!("unpacking {what}"))?
            {
                bail!("{what}: an entry points outside the archive; refused");
            }
        }
        std::fs::write(&done, b"").with_context(|| format!("writing {}", done.display()))?;
    }
    if dir.join("manifest.json").exists() {
        return Ok(dir);
    }
    let subdirs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    match subdirs.as_slice() {
        [one] if one.join("manifest.json").exists() => Ok(one.clone()),
        _ => bail!("{what}: no manifest.json at its top (or in its single top directory)"),
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
        let a = Assets::load(d.path(), "1.20.2", &mut DigestCache::default()).expect("valid");
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
                strata: Some(StrataImage::Pause),
            }]
        );
        let e = Assets::load(d.path(), "1.21.0", &mut DigestCache::default()).expect_err("version");
        assert!(e.to_string().contains("asks for 1.21.0"), "{e}");
    }

    fn cluster(extra: &str) -> Cluster {
        let text = format!(
            "apiVersion: strata.dev/v1alpha1\nkind: Cluster\nmetadata: {{name: t}}\nspec:\n  \
             platform: {{local: {{}}}}\n  hosts:\n  - {{name: a, roles: [etcd, control-plane, worker]}}\n{extra}"
        );
        let ctx = strata_manifests::Context {
            file: "t.yaml".into(),
            base_dir: ".".into(),
            home: None,
        };
        strata_manifests::load_str(&text, &ctx)
            .unwrap_or_else(|r| panic!("{r}"))
            .cluster
    }

    fn archives(a: &Assets) -> Vec<&str> {
        a.images()
            .map(|(f, _)| f.remote.rsplit('/').next().unwrap_or_default())
            .collect()
    }

    #[test]
    fn a_program_the_cluster_runs_must_be_in_the_assets_or_beside_strata() {
        let mut files: Vec<(String, &[u8])> = catalog::enabled(&cluster(""))
            .flat_map(|s| s.binaries.iter().chain(s.tools))
            .filter(|b| !OWN_PROGRAMS.contains(b))
            .map(|b| (format!("bin/{b}"), b"x".as_slice()))
            .collect();
        files.sort();
        let refs: Vec<(&str, &[u8])> = files.iter().map(|(p, b)| (p.as_str(), *b)).collect();
        let d = dir_with(&refs, None);
        let a = Assets::load(d.path(), "1.20.2", &mut DigestCache::default()).expect("load");
        let e = a
            .check_programs(&cluster(""), "dir")
            .expect_err("no balancer");
        assert!(
            e.to_string().contains(
                "carry no bin/strata-api-balancer, bin/strata-fetch; the cluster's components run \
                 them: use assets built by .ci/build-assets, or put Strata's own host programs \
                 beside the strata executable"
            ),
            "{e}"
        );
        let beside = tempfile::tempdir().expect("tempdir");
        std::fs::write(beside.path().join("strata-api-balancer"), b"lb").expect("write");
        std::fs::write(beside.path().join("strata-fetch"), b"fetch").expect("write");
        let a = Assets::load(d.path(), "1.20.2", &mut DigestCache::default())
            .expect("load")
            .with_own_programs(beside.path(), &mut DigestCache::default())
            .expect("own programs");
        a.check_programs(&cluster(""), "dir").expect("complete");
        assert!(
            a.read("/opt/strata/bin/strata-api-balancer").expect("read") == b"lb",
            "taken from beside strata"
        );
    }

    #[test]
    fn the_cluster_takes_only_the_images_it_runs_and_does_not_pull() {
        let d = dir_with(
            &[
                ("bin/kubelet", b"k"),
                ("images/dns.tar", b"d"),
                ("images/overlay.tar", b"o"),
                ("images/pause.tar", b"p"),
                ("images/update-operator.tar", b"u"),
                ("images/extra.tar", b"x"),
            ],
            None,
        );
        let load = || Assets::load(d.path(), "1.20.2", &mut DigestCache::default()).expect("valid");
        let all = load().for_cluster(&cluster(""), "dir").expect("all built");
        assert_eq!(
            archives(&all),
            [
                "dns.tar",
                "extra.tar",
                "overlay.tar",
                "pause.tar",
                "update-operator.tar"
            ]
        );
        let named = load()
            .for_cluster(
                &cluster(
                    "  images: {overlay: 10.0.0.1:5000/o:1, pause: 10.0.0.1:5000/p:1, \
                     dns: 10.0.0.1:5000/d:1}\n  addons: {updateOperator: {enabled: false}}\n",
                ),
                "dir",
            )
            .expect("named");
        assert_eq!(archives(&named), ["extra.tar"]);
        assert_eq!(named.files.len(), 2, "kubelet and extra.tar");

        // Assets without Strata's images (e.g. `source: upstream`).
        let bare = dir_with(&[("bin/kubelet", b"k")], None);
        let load =
            || Assets::load(bare.path(), "1.20.2", &mut DigestCache::default()).expect("valid");
        let e = load()
            .for_cluster(&cluster("  images: {overlay: r.example/o:1}\n"), "upstream")
            .expect_err("no operator image");
        assert_eq!(
            e.to_string(),
            "the assets (upstream) carry no images/update-operator.tar and \
             spec.images.updateOperator names no registry reference: set \
             spec.images.updateOperator to an image reference the nodes can pull, or use assets \
             built by .ci/build-assets"
        );
        let ok = load()
            .for_cluster(
                &cluster(
                    "  images: {overlay: r.example/o:1, updateOperator: r.example/u:1, \
                     dns: r.example/d:1}\n",
                ),
                "upstream",
            )
            .expect("both named; pause falls back on its upstream name");
        assert_eq!(archives(&ok), Vec::<&str>::new());
    }

    #[test]
    fn a_corrupt_asset_is_refused() {
        let d = dir_with(&[("bin/kubelet", b"tampered")], Some(b"original"));
        let e = Assets::load(d.path(), "1.20.2", &mut DigestCache::default()).expect_err("digest");
        assert!(
            format!("{e:#}").contains("differs from the manifest"),
            "{e:#}"
        );
        let missing = tempfile::tempdir().expect("tempdir");
        let e = Assets::load(missing.path(), "1.20.2", &mut DigestCache::default())
            .expect_err("no manifest");
        assert!(format!("{e:#}").contains("spec.assets.source"), "{e:#}");
    }

    #[test]
    fn a_known_digest_is_trusted_only_while_the_file_is_untouched() {
        let d = dir_with(&[("bin/kubelet", b"original")], None);
        let mut cache = DigestCache::default();
        Assets::load(d.path(), "1.20.2", &mut cache).expect("valid");
        let saved = d.path().join("cache.json");
        cache.save(&saved).expect("save");
        let mut cache = DigestCache::load(&saved);
        Assets::load(d.path(), "1.20.2", &mut cache).expect("known and unchanged");
        // Rewritten with other bytes of the same length: the stamp moves, the file is read.
        std::fs::write(d.path().join("bin/kubelet"), b"tampered").expect("write");
        let e = Assets::load(d.path(), "1.20.2", &mut cache).expect_err("digest");
        assert!(
            format!("{e:#}").contains("differs from the manifest"),
            "{e:#}"
        );
        // A cache that cannot be read is an empty one.
        std::fs::write(&saved, b"{not json").expect("write");
        assert!(DigestCache::load(&saved).0.is_empty());
    }

    /// A loopback HTTP/1.1 server for `files` (path -> body); counts the requests per path.
    struct Server {
        base: String,
        hits: std::sync::Arc<std::sync::Mutex<BTreeMap<String, u32>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn serve(files: BTreeMap<String, Vec<u8>>) -> Server {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let hits = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        let counted = hits.clone();
        let files = std::sync::Arc::new(files);
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (files, counted) = (files.clone(), counted.clone());
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&req);
                    let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    *counted
                        .lock()
                        .expect("lock")
                        .entry(path.clone())
                        .or_insert(0) += 1;
                    let (status, body) = match files.get(&path) {
                        Some(b) => ("200 OK", b.clone()),
                        None => ("404 Not Found", b"not found".to_vec()),
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(&body).await;
                });
            }
        });
        Server { base, hits, task }
    }

    fn tree() -> (BTreeMap<String, Vec<u8>>, String) {
        let kubelet = b"kubelet binary".to_vec();
        let bridge = b"bridge plugin".to_vec();
        let manifest = format!(
            "{{\"kubernetes\": \"1.20.2\", \"files\": {{\"bin/kubelet\": {{\"sha256\": \"{}\"}}, \"cni/bridge\": {{\"sha256\": \"{}\"}}}}}}",
            strata_manifests::plan::sha256(&kubelet),
            strata_manifests::plan::sha256(&bridge)
        );
        let digest = strata_manifests::plan::sha256(manifest.as_bytes());
        let files = BTreeMap::from([
            ("/a/manifest.json".to_owned(), manifest.into_bytes()),
            ("/a/bin/kubelet".to_owned(), kubelet),
            ("/a/cni/bridge".to_owned(), bridge),
        ]);
        (files, digest)
    }

    #[tokio::test]
    async fn a_directory_url_is_downloaded_verified_and_cached() {
        let (files, digest) = tree();
        let server = serve(files).await;
        let cache = tempfile::tempdir().expect("tempdir");
        let src = source(&format!("{}/a/", server.base), Path::new("/"), "1.20.2");
        let dir = resolve(&src, &digest, cache.path())
            .await
            .expect("download");
        let a = Assets::load(&dir, "1.20.2", &mut DigestCache::default()).expect("verified");
        assert_eq!(a.files.len(), 2);
        // Again: nothing is fetched; the manifest kept is the pinned one, the files are here.
        resolve(&src, &digest, cache.path()).await.expect("again");
        let hits = server.hits.lock().expect("lock").clone();
        assert_eq!(hits["/a/manifest.json"], 1);
        assert_eq!(hits["/a/bin/kubelet"], 1);

        // A manifest that is not the pinned one is refused before any file is fetched.
        let other = "0".repeat(64);
        let e = resolve(&src, &other, cache.path()).await.expect_err("pin");
        assert!(
            format!("{e:#}").contains("differs from spec.assets.sha256"),
            "{e:#}"
        );
        // A URL without a pin is refused.
        let e = resolve(&src, "", cache.path()).await.expect_err("no pin");
        assert!(
            format!("{e:#}").contains("spec.assets.sha256 is required"),
            "{e:#}"
        );
    }

    #[tokio::test]
    async fn files_with_urls_need_not_be_here_and_come_here_only_when_asked() {
        let (files, _) = tree();
        let server = serve(files).await;
        let d = tempfile::tempdir().expect("tempdir");
        let manifest = |kubelet_url: &str| {
            format!(
                "{{\"kubernetes\": \"1.20.2\", \"files\": {{\"bin/kubelet\": {{\"sha256\": \"{}\"{kubelet_url}}}}}}}",
                strata_manifests::plan::sha256(b"kubelet binary"),
            )
        };
        std::fs::write(d.path().join("manifest.json"), manifest("")).expect("write");
        // An https directory source: nothing here yet, each file has its URL.
        let base = Some("https://assets.example/a/");
        let a = Assets::load_from(d.path(), base, "1.20.2", &mut DigestCache::default())
            .expect("no file needed here");
        assert_eq!(
            a.files[0].url.as_deref(),
            Some("https://assets.example/a/bin/kubelet")
        );
        // Without a URL the file must be here.
        let e = Assets::load(d.path(), "1.20.2", &mut DigestCache::default()).expect_err("absent");
        assert!(format!("{e:#}").contains("bin/kubelet"), "{e:#}");
        // A manifest entry's own URL must be https.
        let plain = manifest(", \"url\": \"http://198.51.100.7/kubelet\"");
        std::fs::write(d.path().join("manifest.json"), plain).expect("write");
        let e = Assets::load(d.path(), "1.20.2", &mut DigestCache::default()).expect_err("http");
        assert!(format!("{e:#}").contains("over https only"), "{e:#}");

        // Downloaded here, verified, only when some host could not fetch it, and once.
        let mut a = a;
        a.files[0].url = Some(format!("{}/a/bin/kubelet", server.base));
        let wanted = BTreeSet::from(["/opt/strata/bin/kubelet"]);
        assert_eq!(a.ensure_local(&BTreeSet::new()).await.expect("none"), 0);
        assert_eq!(a.ensure_local(&wanted).await.expect("fetched"), 14);
        assert_eq!(
            a.read("/opt/strata/bin/kubelet").expect("here"),
            b"kubelet binary"
        );
        assert_eq!(a.ensure_local(&wanted).await.expect("here already"), 0);
        assert_eq!(server.hits.lock().expect("lock")["/a/bin/kubelet"], 1);
        a.files[0].sha256 = "0".repeat(64);
        let e = a.ensure_local(&wanted).await.expect_err("replaced");
        assert!(format!("{e:#}").contains("corrupt or replaced"), "{e:#}");
    }

    #[tokio::test]
    async fn a_replaced_file_on_the_server_is_refused() {
        let (mut files, digest) = tree();
        files.insert("/a/bin/kubelet".into(), b"something else".to_vec());
        let server = serve(files).await;
        let cache = tempfile::tempdir().expect("tempdir");
        let src = source(&format!("{}/a", server.base), Path::new("/"), "1.20.2");
        let e = resolve(&src, &digest, cache.path())
            .await
            .expect_err("tampered");
        let text = format!("{e:#}");
        assert!(
            text.contains("/a/bin/kubelet") && text.contains("differs from the manifest"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn archives_from_a_url_or_a_file() {
        let (files, _) = tree();
        // A gzip-compressed tar with the tree under one top directory.
        let mut b = tar::Builder::new(Vec::new());
        for (path, body) in &files {
            let mut h = tar::Header::new_ustar();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(
                &mut h,
                format!("assets-1.20.2{}", &path[2..]),
                body.as_slice(),
            )
            .expect("append");
        }
        let tarball = b.into_inner().expect("tar");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tarball).expect("gzip");
        let tgz = gz.finish().expect("gzip");
        let digest = strata_manifests::plan::sha256(&tgz);
        let server = serve(BTreeMap::from([("/assets.tar.gz".to_owned(), tgz.clone())])).await;
        let cache = tempfile::tempdir().expect("tempdir");
        let src = source(
            &format!("{}/assets.tar.gz", server.base),
            Path::new("/"),
            "1.20.2",
        );
        assert!(matches!(src, Source::Url(_)));
        let dir = resolve(&src, &digest, cache.path())
            .await
            .expect("archive url");
        assert_eq!(
            Assets::load(&dir, "1.20.2", &mut DigestCache::default())
                .expect("verified")
                .files
                .len(),
            2
        );
        resolve(&src, &digest, cache.path()).await.expect("again");
        assert_eq!(
            server.hits.lock().expect("lock")["/assets.tar.gz"],
            1,
            "cached"
        );
        let e = resolve(&src, &"1".repeat(64), cache.path())
            .await
            .expect_err("pin");
        assert!(
            format!("{e:#}").contains("differs from spec.assets.sha256"),
            "{e:#}"
        );

        // The same archive as a local file, relative to the Cluster file.
        let here = tempfile::tempdir().expect("tempdir");
        std::fs::write(here.path().join("assets.tgz"), &tgz).expect("write");
        let src = source("assets.tgz", here.path(), "1.20.2");
        assert_eq!(src, Source::Archive(here.path().join("assets.tgz")));
        let dir = resolve(&src, "", cache.path())
            .await
            .expect("local archive");
        assert!(dir.join("bin/kubelet").exists());
    }

    #[tokio::test]
    async fn plain_http_is_for_loopback_only() {
        let src = source("http://198.51.100.7/assets/", Path::new("/"), "1.20.2");
        let cache = tempfile::tempdir().expect("tempdir");
        let e = resolve(&src, &"0".repeat(64), cache.path())
            .await
            .expect_err("http");
        assert!(
            format!("{e:#}").contains("only allowed to this computer"),
            "{e:#}"
        );
        assert!(safe_join(Path::new("/x"), "../etc/passwd").is_err());
        assert!(safe_join(Path::new("/x"), "/etc/passwd").is_err());
    }

    fn tgz(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, body) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o755);
            h.set_cksum();
            b.append_data(&mut h, path, *body).expect("append");
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &b.into_inner().expect("tar")).expect("gzip");
        gz.finish().expect("gzip")
    }

    /// The official release layout of Kubernetes 1.20.2 and its components, under /m/.
    fn upstream_mirror() -> BTreeMap<String, Vec<u8>> {
        let sha = |b: &[u8]| strata_manifests::plan::sha256(b);
        let mut f = BTreeMap::new();
        let k8s = "/m/dl.k8s.io/release/v1.20.2/bin/linux/amd64";
        for name in crate::upstream::SERVER_BINARIES {
            let body = format!("{name} 1.20.2").into_bytes();
            f.insert(format!("{k8s}/{name}.sha256"), sha(&body).into_bytes());
            f.insert(format!("{k8s}/{name}"), body);
        }
        let gh = "/m/github.com";
        let etcd = tgz(&[
            ("etcd-v3.4.13-linux-amd64/etcd", b"etcd"),
            ("etcd-v3.4.13-linux-amd64/etcdctl", b"etcdctl"),
            ("etcd-v3.4.13-linux-amd64/README.md", b"docs"),
        ]);
        let e = format!("{gh}/etcd-io/etcd/releases/download/v3.4.13");
        f.insert(
            format!("{e}/SHA256SUMS"),
            format!(
                "{}  etcd-v3.4.13-darwin-amd64.zip\n{}  etcd-v3.4.13-linux-amd64.tar.gz\n",
                "0".repeat(64),
                sha(&etcd)
            )
            .into_bytes(),
        );
        f.insert(format!("{e}/etcd-v3.4.13-linux-amd64.tar.gz"), etcd);
        let ctrd = tgz(&[
            ("bin/containerd", b"containerd"),
            ("bin/containerd-shim-runc-v2", b"shim"),
            ("bin/ctr", b"ctr"),
            ("bin/containerd-stress", b"not needed"),
        ]);
        let c = format!("{gh}/containerd/containerd/releases/download/v1.6.20");
        f.insert(
            format!("{c}/containerd-1.6.20-linux-amd64.tar.gz.sha256sum"),
            format!("{}  containerd-1.6.20-linux-amd64.tar.gz\n", sha(&ctrd)).into_bytes(),
        );
        f.insert(format!("{c}/containerd-1.6.20-linux-amd64.tar.gz"), ctrd);
        let r = format!("{gh}/opencontainers/runc/releases/download/v1.1.5");
        f.insert(
            format!("{r}/runc.sha256sum"),
            format!(
                "{}  runc.amd64\n{}  runc.arm64\n",
                sha(b"runc"),
                "1".repeat(64)
            )
            .into_bytes(),
        );
        f.insert(format!("{r}/runc.amd64"), b"runc".to_vec());
        let cni = tgz(&[
            ("./bridge", b"bridge"),
            ("./host-local", b"host-local"),
            ("./LICENSE", b"l"),
        ]);
        let p = format!("{gh}/containernetworking/plugins/releases/download/v1.1.1");
        f.insert(
            format!("{p}/cni-plugins-linux-amd64-v1.1.1.tgz.sha256"),
            format!("{}  cni-plugins-linux-amd64-v1.1.1.tgz\n", sha(&cni)).into_bytes(),
        );
        f.insert(format!("{p}/cni-plugins-linux-amd64-v1.1.1.tgz"), cni);
        f
    }

    #[tokio::test]
    async fn official_releases_through_a_mirror_are_verified_against_their_published_digests() {
        let server = serve(upstream_mirror()).await;
        let cache = tempfile::tempdir().expect("tempdir");
        let src = Source::Upstream {
            version: "1.20.2".into(),
            mirror: format!("{}/m", server.base),
        };
        let dir = resolve(&src, "", cache.path()).await.expect("upstream");
        let a = Assets::load(&dir, "1.20.2", &mut DigestCache::default())
            .expect("manifest of what was verified");
        let mut remotes: Vec<&str> = a.files.iter().map(|f| f.remote.as_str()).collect();
        remotes.sort();
        assert_eq!(
            remotes,
            [
                "/opt/cni/bin/bridge",
                "/opt/cni/bin/host-local",
                "/opt/strata/bin/containerd",
                "/opt/strata/bin/containerd-shim-runc-v2",
                "/opt/strata/bin/ctr",
                "/opt/strata/bin/etcd",
                "/opt/strata/bin/etcdctl",
                "/opt/strata/bin/kube-apiserver",
                "/opt/strata/bin/kube-controller-manager",
                "/opt/strata/bin/kube-proxy",
                "/opt/strata/bin/kube-scheduler",
                "/opt/strata/bin/kubelet",
                "/opt/strata/bin/runc",
            ]
        );
        assert_eq!(std::fs::read(dir.join("bin/runc")).expect("runc"), b"runc");
        // Cached: nothing is downloaded again.
        let before: u32 = server.hits.lock().expect("lock").values().sum();
        resolve(&src, "", cache.path()).await.expect("again");
        assert_eq!(
            server.hits.lock().expect("lock").values().sum::<u32>(),
            before
        );

        // A file that does not match its published digest is refused.
        let mut files = upstream_mirror();
        files.insert(
            "/m/dl.k8s.io/release/v1.20.2/bin/linux/amd64/kubelet".into(),
            b"tampered".to_vec(),
        );
        let server = serve(files).await;
        let cache = tempfile::tempdir().expect("tempdir");
        let src = Source::Upstream {
            version: "1.20.2".into(),
            mirror: format!("{}/m", server.base),
        };
        let e = resolve(&src, "", cache.path()).await.expect_err("tampered");
        let text = format!("{e:#}");
        assert!(
            text.contains("kubelet") && text.contains("differs from the published"),
            "{text}"
        );
    }
}
