//! OCI image archives built by the project itself, without Docker or a registry: one
//! deterministic layer (sorted entries, owner root, mtime 0, fixed gzip header), the image
//! config, manifest and index of the OCI image spec, packed as an `oci-archive` (a tar of an
//! OCI image layout) that `ctr images import`, `skopeo` and `umoci` read.
//!
//! The same inputs always give the same bytes, so an image's digest identifies its content and
//! `apply` can skip nodes that already have it.

use std::collections::BTreeMap;
use std::io::Write as _;

use serde_json::json;

pub mod inspect;

pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The annotation containerd's importer names the image after.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI tag annotation (skopeo's `oci-archive:FILE:TAG`).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image path `{0}` must be absolute and must not contain `..` or empty parts")]
    BadPath(String),
    #[error("image path `{0}` is given twice")]
    Duplicate(String),
    #[error("image reference `{0}` is not NAME:TAG (e.g. strata.dev/pause:1.0)")]
    BadReference(String),
    #[error("writing the archive: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}: {1}")]
    Host(String, #[source] std::io::Error),
}

/// What is at a path of the image's file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    File { data: Vec<u8>, mode: u32 },
    Dir { mode: u32 },
    Symlink { target: String },
}

/// An image to build: one layer of entries and the process to run.
#[derive(Debug, Clone, Default)]
pub struct ImageSpec {
    /// The full reference the image is known by, e.g. `strata.dev/pause:0.1.0`.
    pub reference: String,
    /// Absolute path in the image -> content. Parent directories are added (0755).
    pub entries: BTreeMap<String, Content>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    /// `uid[:gid]` the process runs as; empty for root.
    pub user: String,
}

impl ImageSpec {
    pub fn new(reference: &str) -> Self {
        Self {
            reference: reference.to_owned(),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            ..Self::default()
        }
    }

    /// Adds a regular file.
    pub fn file(&mut self, path: &str, data: Vec<u8>, mode: u32) -> Result<(), ImageError> {
        self.insert(path, Content::File { data, mode })
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), ImageError> {
        self.insert(
            path,
            Content::Symlink {
                target: target.to_owned(),
            },
        )
    }

    /// Adds an empty directory.
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<(), ImageError> {
        self.insert(path, Content::Dir { mode })
    }

    /// Adds a dynamically linked program of this computer at the same path, with every
    /// shared library it loads (as `ldd` resolves them) and the dynamic loader, each at its
    /// own path: the image then runs it without a distribution inside.
    pub fn program_with_libraries(&mut self, host_path: &str) -> Result<(), ImageError> {
        self.program_with_libraries_at(host_path, host_path)
    }

    /// As [`Self::program_with_libraries`], the program itself at `image_path`.
    pub fn program_with_libraries_at(
        &mut self,
        host_path: &str,
        image_path: &str,
    ) -> Result<(), ImageError> {
        let read = |p: &str| std::fs::read(p).map_err(|e| ImageError::Host(p.into(), e));
        self.file(image_path, read(host_path)?, 0o755)?;
        for lib in libraries(host_path)? {
            if !self.entries.contains_key(&normalise(&lib)?) {
                self.file(&lib, read(&lib)?, 0o755)?;
            }
        }
        Ok(())
    }

    fn insert(&mut self, path: &str, content: Content) -> Result<(), ImageError> {
        let p = normalise(path)?;
        if self.entries.insert(p.clone(), content).is_some() {
            return Err(ImageError::Duplicate(p));
        }
        Ok(())
    }
}

/// The shared libraries and loader a dynamically linked program loads, from `ldd`'s answer
/// (`name => /path (addr)` and `/path/ld-linux.so (addr)` lines); none for a static one.
pub fn libraries(program: &str) -> Result<Vec<String>, ImageError> {
    let out = std::process::Command::new("ldd")
        .arg(program)
        .output()
        .map_err(|e| ImageError::Host(format!("ldd {program}"), e))?;
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_ldd(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => l,
            };
            let path = path.split(" (").next().unwrap_or("").trim();
            path.starts_with('/').then(|| path.to_owned())
        })
        .collect()
}

/// `/a/b/` -> `a/b`; refuses relative paths, `..` and empty parts.
fn normalise(path: &str) -> Result<String, ImageError> {
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| ImageError::BadPath(path.into()))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty()
        || rest
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(ImageError::BadPath(path.into()));
    }
    Ok(rest.to_owned())
}

/// The tag of a reference: `a/b:1.0` -> `1.0`; a digest or no tag is refused.
pub fn tag_of(reference: &str) -> Result<&str, ImageError> {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    match last.split_once(':') {
        Some((name, tag)) if !name.is_empty() && !tag.is_empty() && !reference.contains('@') => {
            Ok(tag)
        }
        _ => Err(ImageError::BadReference(reference.to_owned())),
    }
}

/// `sha256:<hex>` of bytes.
pub fn digest(bytes: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A built image: the archive and the digest of its manifest (what containerd lists).
#[derive(Debug, Clone)]
pub struct Built {
    pub reference: String,
    pub manifest_digest: String,
    pub archive: Vec<u8>,
}

/// A ustar header owned by root with mtime 0 (the path is set when appending).
fn header(size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn append(b: &mut tar::Builder<Vec<u8>>, path: &str, content: &Content) -> Result<(), ImageError> {
    match content {
        Content::File { data, mode } => {
            let mut h = header(data.len() as u64, *mode, tar::EntryType::Regular);
            b.append_data(&mut h, path, data.as_slice())?;
        }
        Content::Dir { mode } => {
            let mut h = header(0, *mode, tar::EntryType::Directory);
            b.append_data(&mut h, format!("{path}/"), std::io::empty())?;
        }
        Content::Symlink { target } => {
            let mut h = header(0, 0o777, tar::EntryType::Symlink);
            b.append_link(&mut h, path, target)?;
        }
    }
    Ok(())
}

/// The layer as an uncompressed tar: every entry and its missing parents, sorted.
fn layer_tar(spec: &ImageSpec) -> Result<Vec<u8>, ImageError> {
    let mut all: BTreeMap<String, Content> = BTreeMap::new();
    for (path, content) in &spec.entries {
        let mut parent = path.as_str();
        while let Some((p, _)) = parent.rsplit_once('/') {
            all.entry(p.to_owned())
                .or_insert(Content::Dir { mode: 0o755 });
            parent = p;
        }
        all.insert(path.clone(), content.clone());
    }
    let mut b = tar::Builder::new(Vec::new());
    for (path, content) in &all {
        append(&mut b, path, content)?;
    }
    Ok(b.into_inner()?)
}

fn gzip(data: &[u8]) -> Result<Vec<u8>, ImageError> {
    // mtime 0 and no file name: the same input gives the same bytes.
    let mut e = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    e.write_all(data)?;
    Ok(e.finish()?)
}

/// The image's config (JSON) for a layer whose uncompressed digest is `diff_id`.
fn config_json(spec: &ImageSpec, diff_id: &str) -> Result<Vec<u8>, ImageError> {
    let mut process = serde_json::Map::new();
    if !spec.entrypoint.is_empty() {
        process.insert("Entrypoint".into(), json!(spec.entrypoint));
    }
    if !spec.cmd.is_empty() {
        process.insert("Cmd".into(), json!(spec.cmd));
    }
    if !spec.env.is_empty() {
        process.insert("Env".into(), json!(spec.env));
    }
    if !spec.user.is_empty() {
        process.insert("User".into(), json!(spec.user));
    }
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": process,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "strata-image"}],
    });
    Ok(serde_json::to_vec(&config).map_err(std::io::Error::other)?)
}

/// Builds the image of `spec` as `docker save` writes it (a docker-archive): manifest.json,
/// the config named by its digest, the layer as an uncompressed `<id>/layer.tar`. The image
/// has the same id (config digest) as the OCI archive of the same spec.
pub fn build_docker_archive(spec: &ImageSpec) -> Result<Vec<u8>, ImageError> {
    tag_of(&spec.reference)?;
    let layer = layer_tar(spec)?;
    let diff_id = digest(&layer);
    let config = config_json(spec, &diff_id)?;
    let config_name = format!("{}.json", digest(&config).trim_start_matches("sha256:"));
    let layer_name = format!("{}/layer.tar", diff_id.trim_start_matches("sha256:"));
    let manifest = json!([{
        "Config": config_name,
        "RepoTags": [spec.reference],
        "Layers": [layer_name],
    }]);
    let manifest = serde_json::to_vec(&manifest).map_err(std::io::Error::other)?;
    let mut b = tar::Builder::new(Vec::new());
    let dir = diff_id.trim_start_matches("sha256:");
    append(&mut b, dir, &Content::Dir { mode: 0o755 })?;
    append(&mut b, &layer_name, &file(layer))?;
    append(&mut b, &config_name, &file(config))?;
    append(&mut b, "manifest.json", &file(manifest))?;
    Ok(b.into_inner()?)
}

/// Builds the OCI archive of `spec`.
pub fn build(spec: &ImageSpec) -> Result<Built, ImageError> {
    let tag = tag_of(&spec.reference)?;
    let layer = layer_tar(spec)?;
    let diff_id = digest(&layer);
    let layer_gz = gzip(&layer)?;
    let config = config_json(spec, &diff_id)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": MEDIA_LAYER_GZIP, "digest": digest(&layer_gz), "size": layer_gz.len()}],
    });
    let manifest = serde_json::to_vec(&manifest).map_err(std::io::Error::other)?;
    let manifest_digest = digest(&manifest);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [{
            "mediaType": MEDIA_MANIFEST,
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                ANNOTATION_CONTAINERD_NAME: spec.reference,
                ANNOTATION_REF_NAME: tag,
            },
        }],
    });
    let index = serde_json::to_vec(&index).map_err(std::io::Error::other)?;

    let mut files: BTreeMap<String, Content> = BTreeMap::new();
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec();
    files.insert("oci-layout".into(), file(layout));
    files.insert("index.json".into(), file(index));
    for blob in [config, manifest, layer_gz] {
        let d = digest(&blob);
        let hex = d.trim_start_matches("sha256:");
        files.insert(format!("blobs/sha256/{hex}"), file(blob));
    }
    let mut b = tar::Builder::new(Vec::new());
    append(&mut b, "blobs", &Content::Dir { mode: 0o755 })?;
    append(&mut b, "blobs/sha256", &Content::Dir { mode: 0o755 })?;
    for (path, content) in &files {
        append(&mut b, path, content)?;
    }
    Ok(Built {
        reference: spec.reference.clone(),
        manifest_digest,
        archive: b.into_inner()?,
    })
}

fn file(data: Vec<u8>) -> Content {
    Content::File { data, mode: 0o644 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibiperf.so.0 => /lib/x86_64-linux-gnu/libiperf.so.0 (0x00007f1)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f3)\n";
        assert_eq!(
            parse_ldd(text),
            [
                "/lib/x86_64-linux-gnu/libiperf.so.0",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
        assert!(parse_ldd("\tnot a dynamic executable\n").is_empty());
    }

    #[test]
    fn paths_are_checked() {
        assert_eq!(normalise("/a/b/").expect("ok"), "a/b");
        for bad in ["a", "/", "/a/../b", "/a//b", "/./a"] {
            assert!(normalise(bad).is_err(), "{bad}");
        }
        let mut s = ImageSpec::new("x/y:1");
        s.file("/p", vec![], 0o644).expect("first");
        assert!(matches!(
            s.file("/p", vec![], 0o644),
            Err(ImageError::Duplicate(_))
        ));
    }

    #[test]
    fn tags() {
        assert_eq!(tag_of("registry.k8s.io/pause:3.2").expect("tag"), "3.2");
        assert_eq!(tag_of("localhost:5000/a:b").expect("tag"), "b");
        for bad in ["pause", "localhost:5000/a", "a@sha256:00", "a:"] {
            assert!(tag_of(bad).is_err(), "{bad}");
        }
    }
}
