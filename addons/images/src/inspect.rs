//! Reading an image archive before any node gets it: an OCI archive (a tar of an OCI image
//! layout, as `skopeo copy ... oci-archive:`, BuildKit's `type=oci` and this crate write) or a
//! docker-archive (`docker save`, `podman save`). The whole archive is checked: every blob the
//! linux/amd64 image names is there with the digest its name or descriptor says, and every
//! layer's content is the one the image config lists (`rootfs.diff_ids`), so a truncated or
//! altered archive is refused here, not half-imported on some nodes.
//!
//! What it yields per image is what `containerd` will hold after `ctr images import`: the name
//! it gives the image and, to tell whether a node already has it, the image's id (its config's
//! digest, as `crictl images` and `kind load` compare) and, for an OCI archive, the digest
//! containerd lists (a docker-archive's manifest is written by containerd on import).

use std::collections::BTreeMap;
use std::io::{Read, Write};

use serde_json::Value;

use crate::{ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, MEDIA_INDEX};

/// Files above this size are hashed but not kept (indexes, manifests and configs are small).
const KEEP_LIMIT: u64 = 4 << 20;

/// The platform of the nodes.
pub const OS: &str = "linux";
pub const ARCHITECTURE: &str = "amd64";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A tar of an OCI image layout (oci-layout, index.json, blobs/).
    Oci,
    /// `docker save` (manifest.json, configs and layer tars).
    Docker,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Oci => "OCI archive",
            Self::Docker => "docker-archive",
        })
    }
}

/// One named image of an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedImage {
    /// The name containerd gives it on import (a docker-archive's tag normalized as
    /// containerd and the kubelet do: `app:1` is `docker.io/library/app:1`).
    pub reference: String,
    /// The image id: the sha256 of its linux/amd64 config.
    pub config: String,
    /// OCI: the digest containerd lists for it (its index.json entry's); None for a
    /// docker-archive, whose manifest containerd writes itself.
    pub target: Option<String>,
    /// OCI, named by `org.opencontainers.image.ref.name` only: the repository `ctr` must be
    /// given as `--base-name` to keep that name.
    pub base_name: Option<String>,
    pub layers: usize,
    /// The bytes of its config and layers.
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    pub format: Format,
    pub images: Vec<ArchivedImage>,
}

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("reading the archive as tar: {0} (is it truncated?)")]
    Tar(#[source] std::io::Error),
    #[error(
        "not an image archive: no oci-layout and index.json (OCI) and no manifest.json \
         (docker save) at its top"
    )]
    NotAnArchive,
    #[error("{path} is not in the archive (named by {by}): the archive is incomplete")]
    Missing { path: String, by: String },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error(
        "{path}: its content's sha256 is {actual}, not the {expected} that {by} gives: the \
         archive is corrupt"
    )]
    Digest {
        path: String,
        by: String,
        expected: String,
        actual: String,
    },
    #[error(
        "{image}: layer {layer} ({path}) holds content {actual}, not {expected} as the image \
         config lists (rootfs.diff_ids): the archive is corrupt"
    )]
    DiffId {
        image: String,
        layer: usize,
        path: String,
        expected: String,
        actual: String,
    },
    #[error("{image}: {what}; the nodes run linux/amd64")]
    Platform { image: String, what: String },
    #[error("{image}: {what}")]
    Unnamed { image: String, what: String },
    #[error("the archive names no image")]
    Empty,
}

/// What the archive holds at one path.
#[derive(Debug, Clone)]
struct Stored {
    size: u64,
    /// `sha256:<hex>` of the bytes as stored.
    digest: String,
    /// `sha256:<hex>` of the content after gzip decompression (the stored bytes' digest when
    /// they are not gzip); the error when they start as gzip and do not decompress.
    content: Result<String, String>,
    /// The bytes, when small.
    bytes: Option<Vec<u8>>,
}

struct Hasher(aws_lc_rs::digest::Context);

impl Hasher {
    fn new() -> Self {
        Self(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
    }

    fn finish(self) -> String {
        let hex: String = self
            .0
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("sha256:{hex}")
    }
}

impl Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How a blob's content is read: as it is, or gunzipped (every member of the stream).
enum Unzip {
    /// Not decided yet: the first bytes, until there are two.
    Undecided(Vec<u8>),
    Gzip(Box<flate2::write::MultiGzDecoder<Hasher>>),
    Plain,
    Broken(String),
}

impl Unzip {
    fn feed(&mut self, chunk: &[u8]) {
        if let Self::Undecided(head) = self {
            head.extend_from_slice(chunk);
            if head.len() < 2 {
                return;
            }
            // A layer is gzip when it starts with the gzip magic.
            let head = std::mem::take(head);
            *self = if head.starts_with(&[0x1f, 0x8b]) {
                Self::Gzip(Box::new(flate2::write::MultiGzDecoder::new(Hasher::new())))
            } else {
                Self::Plain
            };
            self.feed_decided(&head);
            return;
        }
        self.feed_decided(chunk);
    }

    fn feed_decided(&mut self, chunk: &[u8]) {
        if let Self::Gzip(d) = self
            && let Err(e) = d.write_all(chunk)
        {
            *self = Self::Broken(format!("not valid gzip: {e}"));
        }
    }
}

/// Reads one tar entry: both digests in one pass (a gzip stream is decompressed as it goes).
fn store(entry: &mut impl Read, size: u64) -> Result<Stored, std::io::Error> {
    let mut raw = Hasher::new();
    let mut unzip = Unzip::Undecided(Vec::new());
    let mut kept = (size <= KEEP_LIMIT).then(Vec::new);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = entry.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        raw.0.update(chunk);
        if let Some(k) = kept.as_mut() {
            k.extend_from_slice(chunk);
        }
        unzip.feed(chunk);
    }
    let digest = raw.finish();
    let content = match unzip {
        Unzip::Gzip(d) => d
            .finish()
            .map(Hasher::finish)
            .map_err(|e| format!("not valid gzip: {e}")),
        Unzip::Broken(e) => Err(e),
        Unzip::Plain | Unzip::Undecided(_) => Ok(digest.clone()),
    };
    Ok(Stored {
        size,
        digest,
        content,
        bytes: kept,
    })
}

/// Reads and checks an image archive.
pub fn inspect(reader: impl Read) -> Result<Archive, InspectError> {
    let mut files: BTreeMap<String, Stored> = BTreeMap::new();
    let mut links: BTreeMap<String, String> = BTreeMap::new();
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(InspectError::Tar)? {
        let mut entry = entry.map_err(InspectError::Tar)?;
        let path = clean(&entry.path().map_err(InspectError::Tar)?.to_string_lossy());
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                let stored = store(&mut entry, size).map_err(InspectError::Tar)?;
                files.insert(path, stored);
            }
            tar::EntryType::Symlink => {
                // `docker save` links a layer seen twice to its first copy.
                if let Some(target) = entry.link_name().map_err(InspectError::Tar)? {
                    let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
                    let target = clean(&format!("{dir}/{}", target.to_string_lossy()));
                    links.insert(path, target);
                }
            }
            _ => {}
        }
    }
    for (link, target) in links {
        if let Some(s) = files.get(&target).cloned() {
            files.insert(link, s);
        }
    }
    let a = if files.contains_key("oci-layout") && files.contains_key("index.json") {
        Archive {
            format: Format::Oci,
            images: oci(&files)?,
        }
    } else if files.contains_key("manifest.json") {
        Archive {
            format: Format::Docker,
            images: docker(&files)?,
        }
    } else {
        return Err(InspectError::NotAnArchive);
    };
    if a.images.is_empty() {
        return Err(InspectError::Empty);
    }
    Ok(a)
}

/// A tar path without `./` and trailing or doubled slashes, `..` resolved.
fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

fn json(files: &BTreeMap<String, Stored>, path: &str, by: &str) -> Result<Value, InspectError> {
    let s = files.get(path).ok_or_else(|| InspectError::Missing {
        path: path.into(),
        by: by.into(),
    })?;
    let bytes = s.bytes.as_deref().ok_or_else(|| InspectError::Invalid {
        path: path.into(),
        reason: format!("{} bytes: too large for JSON metadata", s.size),
    })?;
    serde_json::from_slice(bytes).map_err(|e| InspectError::Invalid {
        path: path.into(),
        reason: format!("not valid JSON: {e}"),
    })
}

fn text<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(Value::as_str)
}

/// The blob a descriptor names, checked against its digest and size.
fn blob<'f>(
    files: &'f BTreeMap<String, Stored>,
    desc: &Value,
    by: &str,
) -> Result<(String, &'f Stored), InspectError> {
    let digest = text(desc, "digest").unwrap_or_default();
    let Some(hex) = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
    else {
        return Err(InspectError::Invalid {
            path: by.into(),
            reason: format!("descriptor digest `{digest}` is not sha256:<64 hex digits>"),
        });
    };
    let path = format!("blobs/sha256/{hex}");
    let s = files.get(&path).ok_or_else(|| InspectError::Missing {
        path: path.clone(),
        by: by.into(),
    })?;
    if s.digest != digest {
        return Err(InspectError::Digest {
            path,
            by: by.into(),
            expected: digest.into(),
            actual: s.digest.clone(),
        });
    }
    if let Some(size) = desc.get("size").and_then(Value::as_u64)
        && size != s.size
    {
        return Err(InspectError::Invalid {
            path,
            reason: format!("{} bytes, its descriptor in {by} says {size}", s.size),
        });
    }
    Ok((path, s))
}

fn is_platform(v: &Value) -> bool {
    text(v, "os") == Some(OS) && text(v, "architecture") == Some(ARCHITECTURE)
}

/// The images of an OCI layout: each index.json entry with a name.
fn oci(files: &BTreeMap<String, Stored>) -> Result<Vec<ArchivedImage>, InspectError> {
    let index = json(files, "index.json", "the OCI layout")?;
    let entries = index
        .get("manifests")
        .and_then(Value::as_array)
        .ok_or_else(|| InspectError::Invalid {
            path: "index.json".into(),
            reason: "no `manifests` list".into(),
        })?;
    let mut images = Vec::new();
    for (i, desc) in entries.iter().enumerate() {
        let what = format!("index.json entry {i}");
        let annotation = |k: &str| {
            desc.get("annotations")
                .and_then(|a| a.get(k))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        let (reference, base_name): (String, Option<String>) = match (
            annotation(ANNOTATION_CONTAINERD_NAME),
            annotation(ANNOTATION_REF_NAME),
        ) {
            (Some(name), _) => (name.to_owned(), None),
            (None, Some(r)) if r.contains('/') => {
                let repo = repository(r).ok_or_else(|| InspectError::Unnamed {
                    image: what.clone(),
                    what: format!("its name `{r}` has no tag"),
                })?;
                (r.to_owned(), Some(repo.to_owned()))
            }
            (None, Some(tag)) => {
                return Err(InspectError::Unnamed {
                    image: what,
                    what: format!(
                        "named only by the tag `{tag}` ({ANNOTATION_REF_NAME}), which containerd \
                         would import as import-<date>:{tag}; write the archive with the image's \
                         full name (e.g. `skopeo copy ... oci-archive:FILE:registry.example/app:{tag}`)"
                    ),
                });
            }
            (None, None) => {
                return Err(InspectError::Unnamed {
                    image: what,
                    what: format!(
                        "has no name ({ANNOTATION_CONTAINERD_NAME} or {ANNOTATION_REF_NAME}): \
                         containerd would import it without one"
                    ),
                });
            }
        };
        // containerd keeps the name as written; the kubelet asks for the normalized one.
        let full = normalize(&reference).unwrap_or_default();
        if full != reference {
            return Err(InspectError::Unnamed {
                image: what,
                what: format!(
                    "its name `{reference}` is not a full reference: pods naming it ask \
                     containerd for `{full}`; write the archive with that name"
                ),
            });
        }
        let (mut path, _) = blob(files, desc, &what)?;
        let mut media = text(desc, "mediaType").unwrap_or_default().to_owned();
        let mut manifest = json(files, &path, &what)?;
        // An index (several platforms): its linux/amd64 manifest.
        while media == MEDIA_INDEX
            || media == DOCKER_LIST
            || text(&manifest, "mediaType") == Some(MEDIA_INDEX)
        {
            let list = manifest
                .get("manifests")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let Some(d) = list
                .iter()
                .find(|d| d.get("platform").is_some_and(is_platform))
            else {
                return Err(InspectError::Platform {
                    image: reference,
                    what: "its index has no linux/amd64 manifest".into(),
                });
            };
            let by = format!("the index {path}");
            (path, _) = blob(files, d, &by)?;
            media = text(d, "mediaType").unwrap_or_default().to_owned();
            manifest = json(files, &path, &by)?;
        }
        let (config, layers, size) = image_content(files, &reference, &path, &manifest)?;
        images.push(ArchivedImage {
            reference,
            config,
            target: text(desc, "digest").map(str::to_owned),
            base_name,
            layers,
            size,
        });
    }
    Ok(images)
}

const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The manifest's config and layers, each checked (digests, then each layer's content
/// against the config's diff_ids): the config's digest, the layer count, their bytes.
fn image_content(
    files: &BTreeMap<String, Stored>,
    image: &str,
    path: &str,
    manifest: &Value,
) -> Result<(String, usize, u64), InspectError> {
    let by = format!("the manifest {path}");
    let desc = manifest
        .get("config")
        .ok_or_else(|| InspectError::Invalid {
            path: path.into(),
            reason: "no `config` descriptor".into(),
        })?;
    let (config_path, config_blob) = blob(files, desc, &by)?;
    let config = json(files, &config_path, &by)?;
    check_platform(image, &config)?;
    let layers: Vec<&Stored> = manifest
        .get("layers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|d| {
            let media = text(d, "mediaType").unwrap_or_default();
            if media.contains("zstd") || media.contains("foreign") {
                return Err(InspectError::Invalid {
                    path: path.into(),
                    reason: format!(
                        "layer media type {media} is not supported (gzip or plain tar)"
                    ),
                });
            }
            blob(files, d, &by).map(|(_, s)| s)
        })
        .collect::<Result<_, _>>()?;
    let paths: Vec<String> = manifest
        .get("layers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|d| text(d, "digest").unwrap_or_default().replace(':', "/"))
        .map(|d| format!("blobs/{d}"))
        .collect();
    check_diff_ids(image, &config, &layers, &paths)?;
    let size = config_blob.size + layers.iter().map(|l| l.size).sum::<u64>();
    Ok((config_blob.digest.clone(), layers.len(), size))
}

fn check_platform(image: &str, config: &Value) -> Result<(), InspectError> {
    if is_platform(config) {
        return Ok(());
    }
    Err(InspectError::Platform {
        image: image.into(),
        what: format!(
            "its config says {}/{}",
            text(config, "os").unwrap_or("?"),
            text(config, "architecture").unwrap_or("?")
        ),
    })
}

/// Each layer's content (decompressed) is the config's diff_id at its place.
fn check_diff_ids(
    image: &str,
    config: &Value,
    layers: &[&Stored],
    paths: &[String],
) -> Result<(), InspectError> {
    let diff_ids: Vec<&str> = config
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if diff_ids.len() != layers.len() {
        return Err(InspectError::Invalid {
            path: image.into(),
            reason: format!(
                "{} layers, its config lists {} (rootfs.diff_ids)",
                layers.len(),
                diff_ids.len()
            ),
        });
    }
    for (i, (layer, expected)) in layers.iter().zip(diff_ids).enumerate() {
        let path = paths.get(i).cloned().unwrap_or_default();
        let actual = layer
            .content
            .clone()
            .map_err(|reason| InspectError::Invalid {
                path: path.clone(),
                reason,
            })?;
        if actual != expected {
            return Err(InspectError::DiffId {
                image: image.into(),
                layer: i,
                path,
                expected: expected.into(),
                actual,
            });
        }
    }
    Ok(())
}

/// The images of a `docker save` archive: one per tag of each manifest.json entry.
fn docker(files: &BTreeMap<String, Stored>) -> Result<Vec<ArchivedImage>, InspectError> {
    let manifest = json(files, "manifest.json", "the docker-archive")?;
    let entries = manifest.as_array().ok_or_else(|| InspectError::Invalid {
        path: "manifest.json".into(),
        reason: "not a list of images".into(),
    })?;
    let mut images = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let what = format!("manifest.json entry {i}");
        let config_path = clean(text(e, "Config").unwrap_or_default());
        let tags: Vec<&str> = e
            .get("RepoTags")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if tags.is_empty() {
            return Err(InspectError::Unnamed {
                image: what,
                what: "has no RepoTags: containerd would import it without a name; save it by \
                       its name (`docker save app:1`, not its id)"
                    .into(),
            });
        }
        let config_blob = files
            .get(&config_path)
            .ok_or_else(|| InspectError::Missing {
                path: config_path.clone(),
                by: what.clone(),
            })?;
        // The config's file is named by its digest in every format docker has written.
        let named = config_path
            .trim_start_matches("blobs/sha256/")
            .trim_end_matches(".json");
        if named.len() == 64 && format!("sha256:{named}") != config_blob.digest {
            return Err(InspectError::Digest {
                path: config_path.clone(),
                by: "its file name".into(),
                expected: format!("sha256:{named}"),
                actual: config_blob.digest.clone(),
            });
        }
        let config = json(files, &config_path, &what)?;
        let layer_paths: Vec<String> = e
            .get("Layers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(clean)
            .collect();
        let layers: Vec<&Stored> = layer_paths
            .iter()
            .map(|p| {
                files.get(p).ok_or_else(|| InspectError::Missing {
                    path: p.clone(),
                    by: what.clone(),
                })
            })
            .collect::<Result<_, _>>()?;
        for tag in &tags {
            let reference = normalize(tag).ok_or_else(|| InspectError::Unnamed {
                image: what.clone(),
                what: format!("RepoTags entry `{tag}` is not NAME:TAG"),
            })?;
            check_platform(&reference, &config)?;
            check_diff_ids(&reference, &config, &layers, &layer_paths)?;
            images.push(ArchivedImage {
                reference,
                config: config_blob.digest.clone(),
                target: None,
                base_name: None,
                layers: layers.len(),
                size: config_blob.size + layers.iter().map(|l| l.size).sum::<u64>(),
            });
        }
    }
    Ok(images)
}

/// The repository of `name:tag` (None without a tag).
fn repository(reference: &str) -> Option<&str> {
    let (repo, tag) = reference.rsplit_once(':')?;
    (!tag.contains('/') && !repo.is_empty() && !tag.is_empty()).then_some(repo)
}

/// A docker reference as containerd and the kubelet name it: a name without a registry is
/// on docker.io (`library/` for one without a path), without a tag it is `:latest`.
pub fn normalize(reference: &str) -> Option<String> {
    if reference.is_empty() || reference.contains(char::is_whitespace) {
        return None;
    }
    let (name, suffix) = match reference.split_once('@') {
        Some((n, d)) => (n, format!("@{d}")),
        None => match repository(reference) {
            Some(repo) => (repo, reference[repo.len()..].to_owned()),
            None => (reference, ":latest".to_owned()),
        },
    };
    let first = name.split('/').next().unwrap_or_default();
    let has_registry =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let full = if has_registry {
        name.to_owned()
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    Some(format!("{full}{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ImageSpec, build, build_docker_archive};

    fn spec(reference: &str) -> ImageSpec {
        let mut s = ImageSpec::new(reference);
        s.file("/hello", b"hello".to_vec(), 0o755).expect("file");
        s.entrypoint = vec!["/hello".into()];
        s
    }

    fn rewrite(archive: &[u8], f: impl Fn(&str, Vec<u8>) -> Option<Vec<u8>>) -> Vec<u8> {
        let mut out = tar::Builder::new(Vec::new());
        let mut a = tar::Archive::new(archive);
        for e in a.entries().expect("entries") {
            let mut e = e.expect("entry");
            let path = e.path().expect("path").to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).expect("read");
            let mut h = e.header().clone();
            if let Some(data) = f(&path, data) {
                h.set_size(data.len() as u64);
                h.set_cksum();
                out.append_data(&mut h, &path, data.as_slice())
                    .expect("append");
            }
        }
        out.into_inner().expect("finish")
    }

    #[test]
    fn an_oci_archive_is_read_whole() {
        let built = build(&spec("strata.dev/e2e:1")).expect("build");
        let a = inspect(built.archive.as_slice()).expect("inspect");
        assert_eq!(a.format, Format::Oci);
        let [img] = a.images.as_slice() else {
            panic!("{a:?}")
        };
        assert_eq!(img.reference, "strata.dev/e2e:1");
        assert_eq!(img.target.as_deref(), Some(built.manifest_digest.as_str()));
        assert_eq!(img.base_name, None);
        assert_eq!(img.layers, 1);
        assert!(img.config.starts_with("sha256:"));
    }

    #[test]
    fn a_docker_archive_gives_the_same_image_id() {
        let oci = inspect(
            build(&spec("docker.io/library/app:1"))
                .expect("build")
                .archive
                .as_slice(),
        )
        .expect("oci");
        let docker = build_docker_archive(&spec("app:1")).expect("docker");
        let d = inspect(docker.as_slice()).expect("inspect");
        assert_eq!(d.format, Format::Docker);
        assert_eq!(d.images[0].reference, "docker.io/library/app:1");
        assert_eq!(d.images[0].target, None);
        assert_eq!(d.images[0].config, oci.images[0].config);
    }

    #[test]
    fn truncated_or_altered_archives_are_refused() {
        let archive = build(&spec("strata.dev/e2e:1")).expect("build").archive;
        let cut = &archive[..archive.len() / 2];
        assert!(inspect(cut).is_err(), "a truncated archive was read");
        // A blob changed in place.
        let altered = rewrite(&archive, |p, mut d| {
            if p.starts_with("blobs/") && d.starts_with(&[0x1f, 0x8b]) {
                let n = d.len();
                d[n - 12] ^= 0xff;
            }
            Some(d)
        });
        let e = inspect(altered.as_slice()).expect_err("altered");
        assert!(e.to_string().contains("corrupt"), "{e}");
        // A blob missing.
        let missing = rewrite(&archive, |p, d| {
            (!(p.starts_with("blobs/") && d.starts_with(&[0x1f, 0x8b]))).then_some(d)
        });
        let e = inspect(missing.as_slice()).expect_err("missing");
        assert!(matches!(e, InspectError::Missing { .. }), "{e}");
        // A docker-archive whose layer is not the one its config lists.
        let docker = build_docker_archive(&spec("app:1")).expect("docker");
        let swapped = rewrite(&docker, |p, mut d| {
            if p.ends_with("layer.tar") {
                d.extend_from_slice(&[0u8; 512]);
            }
            Some(d)
        });
        let e = inspect(swapped.as_slice()).expect_err("swapped");
        assert!(matches!(e, InspectError::DiffId { .. }), "{e}");
        let e = inspect(&b"not a tar at all, just some text padded out"[..]).expect_err("text");
        assert!(
            matches!(e, InspectError::Tar(_) | InspectError::NotAnArchive),
            "{e}"
        );
    }

    #[test]
    fn names_are_what_containerd_gives() {
        assert_eq!(
            normalize("app").as_deref(),
            Some("docker.io/library/app:latest")
        );
        assert_eq!(normalize("me/app:2").as_deref(), Some("docker.io/me/app:2"));
        assert_eq!(
            normalize("localhost:5000/app:2").as_deref(),
            Some("localhost:5000/app:2")
        );
        assert_eq!(
            normalize("registry.example/team/app:3").as_deref(),
            Some("registry.example/team/app:3")
        );
        assert_eq!(normalize(""), None);
        // An OCI entry named only by a tag is refused, one named by a full ref.name is
        // imported under its repository as base name.
        let archive = build(&spec("strata.dev/e2e:1")).expect("build").archive;
        let only = |value: &'static str| {
            rewrite(&archive, move |p, d| {
                if p != "index.json" {
                    return Some(d);
                }
                let mut v: Value = serde_json::from_slice(&d).expect("index");
                let a = &mut v["manifests"][0]["annotations"];
                a.as_object_mut()
                    .expect("map")
                    .remove(ANNOTATION_CONTAINERD_NAME);
                a[ANNOTATION_REF_NAME] = Value::from(value);
                Some(serde_json::to_vec(&v).expect("json"))
            })
        };
        let e = inspect(only("1").as_slice()).expect_err("tag only");
        assert!(e.to_string().contains("import-<date>:1"), "{e}");
        let a = inspect(only("registry.example/app:1").as_slice()).expect("full");
        assert_eq!(
            a.images[0].base_name.as_deref(),
            Some("registry.example/app")
        );
        let e = inspect(only("me/app:1").as_slice()).expect_err("short");
        assert!(e.to_string().contains("docker.io/me/app:1"), "{e}");
    }

    /// A reader that gives one byte at a time (a short first read must not hide gzip).
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let Some((first, rest)) = self.0.split_first() else {
                return Ok(0);
            };
            if buf.is_empty() {
                return Ok(0);
            }
            buf[0] = *first;
            self.0 = rest;
            Ok(1)
        }
    }

    #[test]
    fn layers_of_several_gzip_members_and_short_reads_are_read_whole() {
        let plain: Vec<u8> = (0..5000u32).flat_map(u32::to_le_bytes).collect();
        let mut two = Vec::new();
        for part in plain.chunks(plain.len() / 2 + 1) {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(part).expect("gzip");
            two.extend(e.finish().expect("gzip"));
        }
        let stored = store(&mut Trickle(&two), two.len() as u64).expect("store");
        assert_eq!(stored.digest, crate::digest(&two));
        assert_eq!(stored.content, Ok(crate::digest(&plain)));
        let stored = store(&mut Trickle(&plain), plain.len() as u64).expect("store");
        assert_eq!(stored.content, Ok(crate::digest(&plain)));
    }
}
