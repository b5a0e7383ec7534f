//! Loading a Cluster file: every problem at once, each located and explained.
//!
//! 1. YAML to a located JSON value ([`crate::yaml`]).
//! 2. The JSON Schema generated from the model ([`cluster_schema`]) finds every structural
//!    problem: unknown fields, wrong types, bad enum values, malformed CIDRs and durations.
//! 3. The value is deserialized into [`Cluster`]; if step 2 found problems, the offending
//!    values are removed first so that step 4 can still run on the rest.
//! 4. Semantic checks that span fields: duplicates, overlaps, roles, versions, key files.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use jsonschema::error::ValidationErrorKind;
use jsonschema::{ValidationError, Validator};
use serde_json::Value;

use crate::diagnostic::{Diagnostic, Report, Severity};
use crate::formats::{self, format_problem};
use crate::images::StrataImage;
use crate::model::{Cluster, HostAddress, Platform, Role};
use crate::yaml::{self, LocatedValue, json_path, pointer_segment};

/// Kubernetes minor releases Strata knows how to configure (1.MINOR).
pub use crate::versions::SUPPORTED_MINORS as SUPPORTED_KUBERNETES_MINORS;

/// The JSON Schema of the Cluster document (what `strata schema` prints).
pub fn cluster_schema() -> Value {
    serde_json::to_value(schemars::schema_for!(Cluster)).unwrap_or(Value::Null)
}

fn validator() -> Result<&'static Validator, &'static str> {
    static VALIDATOR: OnceLock<Result<Validator, String>> = OnceLock::new();
    VALIDATOR
        .get_or_init(|| {
            let mut options = jsonschema::options().should_validate_formats(true);
            for (name, check) in formats::FORMATS {
                let check = *check;
                options = options.with_format(*name, move |s: &str| check(s).is_ok());
            }
            options.build(&cluster_schema()).map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(String::as_str)
}

/// A successfully loaded Cluster, with the warnings found on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub cluster: Cluster,
    /// Warnings only (a report with errors is returned as `Err`).
    pub report: Report,
    pub source: LocatedValue,
}

/// Where relative paths in the file are resolved.
#[derive(Debug, Clone)]
pub struct Context {
    /// How the file is named in messages.
    pub file: String,
    /// Directory of the Cluster file (relative key paths are relative to it).
    pub base_dir: PathBuf,
    /// Home directory for `~` in paths.
    pub home: Option<PathBuf>,
}

impl Context {
    pub fn for_file(path: &Path) -> Self {
        Self {
            file: path.display().to_string(),
            base_dir: path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(".")),
            home: std::env::var_os("HOME").map(PathBuf::from),
        }
    }

    /// Resolves `~/x` and relative paths.
    pub fn resolve(&self, p: &str) -> PathBuf {
        if let (Some(rest), Some(home)) = (p.strip_prefix("~/"), &self.home) {
            return home.join(rest);
        }
        let path = Path::new(p);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }
}

/// Parses and validates Cluster YAML text. `Err` holds a report with at least one error.
/// The largest Cluster file read (a real one is a few kilobytes).
pub const MAX_FILE_BYTES: usize = 1 << 20;

fn too_large(file: &str, bytes: u64) -> Report {
    Report {
        file: file.to_owned(),
        diagnostics: vec![
            Diagnostic::error(
                "",
                format!("the file is {bytes} bytes; a Cluster file may be at most {MAX_FILE_BYTES} bytes (1 MiB)"),
            )
            .hint("a Cluster file describes hosts and settings in a few kilobytes; is this the right file?"),
        ],
    }
}

pub fn load_str(text: &str, ctx: &Context) -> Result<Loaded, Report> {
    if text.len() > MAX_FILE_BYTES {
        return Err(too_large(&ctx.file, text.len() as u64));
    }
    let mut report = Report {
        file: ctx.file.clone(),
        diagnostics: Vec::new(),
    };
    let (doc, parse_diags) = yaml::parse(text);
    report.diagnostics.extend(parse_diags);
    let Some(doc) = doc else {
        return Err(report);
    };
    if doc.value.is_null() {
        report
            .diagnostics
            .push(Diagnostic::error("", "the file is empty").hint(
                "start from `strata init` or a file in examples/ (apiVersion: \
                 strata.dev/v1alpha1, kind: Cluster, metadata, spec)",
            ));
        return Err(report);
    }

    let structural = structural_problems(&doc);
    let mut value = doc.value.clone();
    for (pointer, _) in structural.iter().rev() {
        remove_pointer(&mut value, pointer);
    }
    // Values removed because they were malformed (unknown fields carry no meaning): a
    // semantic finding about them or their surroundings is a consequence, not a new problem.
    let repaired: Vec<String> = structural
        .iter()
        .filter(|(_, d)| !d.message.starts_with("unknown field"))
        .map(|(_, d)| d.path.clone())
        .collect();
    let structural: Vec<Diagnostic> = structural.into_iter().map(|(_, d)| d).collect();

    let cluster = serde_json::from_value::<Cluster>(value);
    match cluster {
        Ok(mut cluster) => {
            let semantic = semantic_problems(&cluster, &doc, ctx);
            report.diagnostics.extend(semantic.into_iter().filter(|d| {
                !repaired
                    .iter()
                    .any(|r| is_within(&d.path, r) || is_within(r, &d.path))
            }));
            report.diagnostics.extend(structural);
            report.sort();
            if report.has_errors() {
                Err(report)
            } else {
                cluster.assign_local_addresses();
                Ok(Loaded {
                    cluster,
                    report,
                    source: doc,
                })
            }
        }
        Err(e) => {
            if structural.is_empty() {
                // The schema and the types disagree: a bug, but still say where.
                report.diagnostics.push(Diagnostic::error(
                    "",
                    format!("cannot read the document: {e}"),
                ));
            }
            report.diagnostics.extend(structural);
            report.sort();
            Err(report)
        }
    }
}

/// Reads and validates a Cluster file.
pub fn load_file(path: &Path) -> Result<Loaded, Report> {
    use std::io::Read as _;
    let ctx = Context::for_file(path);
    // Read at most one byte past the cap: a huge file (or /dev/zero) is refused at once.
    let read = std::fs::File::open(path).and_then(|f| {
        let mut bytes = Vec::new();
        f.take(MAX_FILE_BYTES as u64 + 1).read_to_end(&mut bytes)?;
        Ok(bytes)
    });
    let read = read.and_then(|bytes| {
        if bytes.len() > MAX_FILE_BYTES {
            return Ok(Err(()));
        }
        String::from_utf8(bytes)
            .map(Ok)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    });
    match read {
        Ok(Err(())) => {
            let size = std::fs::metadata(path).map_or(MAX_FILE_BYTES as u64 + 1, |m| m.len());
            Err(too_large(&ctx.file, size))
        }
        Ok(Ok(text)) => load_str(&text, &ctx),
        Err(e) => Err(Report {
            file: ctx.file.clone(),
            diagnostics: vec![
                Diagnostic::error("", format!("cannot read the file: {e}"))
                    .hint("pass the Cluster file with -f; `strata init` writes one"),
            ],
        }),
    }
}

/// `path` equals `outer` or lies below it (`spec.hosts[1].address` is within `spec.hosts[1]`).
fn is_within(path: &str, outer: &str) -> bool {
    path == outer
        || (path.starts_with(outer)
            && matches!(path.as_bytes().get(outer.len()), Some(b'.') | Some(b'[')))
}

fn remove_pointer(value: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let key = last.replace("~1", "/").replace("~0", "~");
    match value.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.remove(&key);
        }
        Some(Value::Array(a)) => {
            if let Ok(i) = key.parse::<usize>()
                && i < a.len()
            {
                a.remove(i);
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------
// Structural problems (schema)

fn structural_problems(doc: &LocatedValue) -> Vec<(String, Diagnostic)> {
    let validator = match validator() {
        Ok(v) => v,
        Err(e) => {
            return vec![(
                String::new(),
                Diagnostic::error(
                    "",
                    format!("internal error: the Cluster schema is invalid: {e}"),
                ),
            )];
        }
    };
    let schema = cluster_schema();
    let mut out = Vec::new();
    for err in validator.iter_errors(&doc.value) {
        convert(&err, doc, &schema, &mut out);
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.dedup_by(|a, b| a.0 == b.0 && a.1.message == b.1.message);
    out
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a decimal number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn closest<'a>(word: &str, options: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    options
        .into_iter()
        .map(|o| (strsim::jaro_winkler(word, o), o))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, o)| o)
}

/// The schema object an error's keyword belongs to (its keyword location minus the keyword).
fn schema_object<'s>(schema: &'s Value, err: &ValidationError<'_>) -> Option<&'s Value> {
    let loc = err.schema_path().as_str();
    let parent = loc.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
    schema.pointer(parent)
}

fn convert(
    err: &ValidationError<'_>,
    doc: &LocatedValue,
    schema: &Value,
    out: &mut Vec<(String, Diagnostic)>,
) {
    let pointer = err.instance_path().as_str().to_owned();
    let path = json_path(&pointer);
    let at = doc.location(&pointer);
    let instance = doc.value.pointer(&pointer).unwrap_or(&Value::Null);
    let d = match err.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let known: Vec<&str> = schema_object(schema, err)
                .and_then(|o| o.get("properties"))
                .and_then(Value::as_object)
                .map(|p| p.keys().map(String::as_str).collect())
                .unwrap_or_default();
            for key in unexpected {
                let p = format!("{pointer}/{}", pointer_segment(key));
                let mut d = Diagnostic::error(json_path(&p), format!("unknown field `{key}`"))
                    .at_opt(doc.key_location(&p));
                d = match closest(key, known.iter().copied()) {
                    Some(s) => d.hint(format!("did you mean `{s}`?")),
                    None if !known.is_empty() => {
                        d.hint(format!("fields allowed here: {}", known.join(", ")))
                    }
                    None => d.hint("this mapping takes no fields; remove it"),
                };
                out.push((p, d));
            }
            return;
        }
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            Diagnostic::error(path.clone(), format!("missing required field `{name}`")).hint(
                match name {
                    "hosts" => "list the machines under spec.hosts (name, address, roles)",
                    "roles" => "give the host roles: any of etcd, control-plane, worker",
                    "name" => "give it a name: a DNS-1123 label such as cp1",
                    _ => "add it; `strata schema` lists every field",
                },
            )
        }
        ValidationErrorKind::Type { .. } => {
            let expected = match schema_object(schema, err).and_then(|o| o.get("type")) {
                Some(Value::String(t)) => t.clone(),
                Some(Value::Array(ts)) => ts
                    .iter()
                    .filter_map(Value::as_str)
                    .filter(|t| *t != "null")
                    .collect::<Vec<_>>()
                    .join(" or "),
                _ => "another type".into(),
            };
            let mut d = Diagnostic::error(
                path.clone(),
                format!("expected {expected}, found {}", json_type(instance)),
            );
            if expected.contains("string") && instance.is_number() {
                d = d.hint("YAML read this as a number; put it in quotes");
            } else if expected.contains("array") {
                d = d.hint("write a list: `[a, b]` or one `- item` per line");
            } else if expected.contains("object") {
                d = d.hint("write a mapping of `field: value` lines (`{}` when empty)");
            }
            d
        }
        ValidationErrorKind::Enum { options } => {
            let opts: Vec<String> = options
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|v| {
                            v.as_str()
                                .map(str::to_owned)
                                .unwrap_or_else(|| v.to_string())
                        })
                        .collect()
                })
                .unwrap_or_default();
            let shown = instance
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| instance.to_string());
            let mut d = Diagnostic::error(path.clone(), format!("`{shown}` is not allowed here"));
            d = match closest(&shown, opts.iter().map(String::as_str)) {
                Some(s) => d.hint(format!("did you mean `{s}`? allowed: {}", opts.join(", "))),
                None => d.hint(format!("allowed: {}", opts.join(", "))),
            };
            d
        }
        ValidationErrorKind::Format { format } => {
            let text = instance.as_str().unwrap_or_default();
            let why = format_problem(format, text)
                .unwrap_or_else(|| format!("`{text}` is not a valid {format}"));
            Diagnostic::error(path.clone(), why)
        }
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            // Report what went wrong inside the one alternative whose type matched, if any:
            // "a host key fingerprint that is malformed" beats "matches no alternative".
            let relevant: Vec<&Vec<ValidationError<'static>>> = context
                .iter()
                .filter(|branch| {
                    !branch.iter().any(|e| {
                        matches!(
                            e.kind(),
                            ValidationErrorKind::Type { .. }
                                | ValidationErrorKind::Required { .. }
                                | ValidationErrorKind::AdditionalProperties { .. }
                        ) && e.instance_path().as_str() == pointer
                    })
                })
                .collect();
            if let [branch] = relevant.as_slice() {
                for e in branch.iter() {
                    convert(e, doc, schema, out);
                }
                return;
            }
            let forms = match schema_object(schema, err).and_then(|o| {
                o.get("oneOf")
                    .or_else(|| o.get("anyOf"))
                    .and_then(Value::as_array)
            }) {
                Some(alts) => alts
                    .iter()
                    .filter_map(|a| {
                        a.get("required")
                            .and_then(Value::as_array)
                            .and_then(|r| r.first())
                            .and_then(Value::as_str)
                            .map(|k| format!("`{k}: {{}}`"))
                    })
                    .collect::<Vec<_>>(),
                None => Vec::new(),
            };
            if forms.is_empty() {
                Diagnostic::error(
                    path.clone(),
                    format!("{} is not allowed here", json_type(instance)),
                )
            } else {
                Diagnostic::error(path.clone(), "expected exactly one of the forms below")
                    .hint(forms.join(" or "))
            }
        }
        ValidationErrorKind::Minimum { limit } => {
            Diagnostic::error(path.clone(), format!("must be at least {limit}"))
        }
        ValidationErrorKind::Maximum { limit } => {
            Diagnostic::error(path.clone(), format!("must be at most {limit}"))
        }
        _ => Diagnostic::error(path.clone(), err.to_string()),
    };
    out.push((pointer, d.at_opt(at)));
}

// ---------------------------------------------------------------------------------------
// Semantic problems

struct Checker<'a> {
    doc: &'a LocatedValue,
    out: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn push(&mut self, severity: Severity, pointer: &str, message: String, hint: &str) {
        let d = match severity {
            Severity::Error => Diagnostic::error(json_path(pointer), message),
            Severity::Warning => Diagnostic::warning(json_path(pointer), message),
        };
        let d = d.at_opt(self.doc.best_location(pointer));
        self.out
            .push(if hint.is_empty() { d } else { d.hint(hint) });
    }
    fn error(&mut self, pointer: &str, message: String, hint: &str) {
        self.push(Severity::Error, pointer, message, hint);
    }
    fn warn(&mut self, pointer: &str, message: String, hint: &str) {
        self.push(Severity::Warning, pointer, message, hint);
    }
    fn line_of(&self, pointer: &str) -> String {
        self.doc
            .best_location(pointer)
            .map(|l| format!(" (line {})", l.line))
            .unwrap_or_default()
    }
}

fn semantic_problems(c: &Cluster, doc: &LocatedValue, ctx: &Context) -> Vec<Diagnostic> {
    let mut k = Checker {
        doc,
        out: Vec::new(),
    };
    check_version(c, &mut k);
    check_hosts(c, &mut k);
    check_network(c, &mut k);
    check_ssh(c, &mut k);
    check_vip(c, &mut k);
    check_pki(c, ctx, &mut k);
    check_keys(c, ctx, &mut k);
    check_assets(c, &mut k);
    check_policy(c, &mut k);
    k.out
}

fn check_assets(c: &Cluster, k: &mut Checker<'_>) {
    let a = &c.spec.assets;
    let url = a.source.starts_with("https://") || a.source.starts_with("http://");
    if !a.sha256.is_empty()
        && (a.sha256.len() != 64 || !a.sha256.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        k.error(
            "/spec/assets/sha256",
            format!("`{}` is not a sha256 digest", a.sha256),
            "64 hexadecimal digits, as `sha256sum FILE` prints",
        );
    } else if url && a.sha256.is_empty() {
        k.error(
            "/spec/assets/source",
            "a download needs spec.assets.sha256 to be verified".into(),
            "set spec.assets.sha256 to the sha256 of the archive (or of manifest.json for a \
             directory URL) published with the assets",
        );
    }
    if !a.mirror.is_empty() && a.source != "upstream" {
        k.error(
            "/spec/assets/mirror",
            "a mirror is only used with `source: upstream`".into(),
            "",
        );
    }
    if a.mirror.starts_with("http://") && !loopback_url(&a.mirror) {
        k.error(
            "/spec/assets/mirror",
            format!(
                "{}: plain http is only allowed to this computer (loopback)",
                a.mirror
            ),
            "use https",
        );
    }
    if a.source.starts_with("http://") && !loopback_url(&a.source) {
        k.error(
            "/spec/assets/source",
            format!(
                "{}: plain http is only allowed to this computer (loopback)",
                a.source
            ),
            "use https",
        );
    }
    // The official downloads carry none of Strata's own images.
    if a.source == "upstream" {
        for i in StrataImage::OWN {
            if i.from_assets(c) {
                k.error(
                    "/spec/assets/source",
                    format!(
                        "`source: upstream` carries no {} image and {} names none",
                        i.archive().trim_end_matches(".tar"),
                        i.field()
                    ),
                    &format!(
                        "set {} to a registry reference the nodes can pull (or use assets \
                         built by .ci/build-assets)",
                        i.field()
                    ),
                );
            }
        }
    }
}

/// Whether an http(s) URL names this computer (127.0.0.0/8, ::1, localhost).
pub fn loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(authority),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn check_version(c: &Cluster, k: &mut Checker<'_>) {
    let v = &c.spec.kubernetes.version;
    if v.major() != 1 || !SUPPORTED_KUBERNETES_MINORS.contains(&v.minor()) {
        k.error(
            "/spec/kubernetes/version",
            format!("Kubernetes {v} is not supported"),
            &format!(
                "Strata installs Kubernetes 1.{} to 1.{}",
                SUPPORTED_KUBERNETES_MINORS.start(),
                SUPPORTED_KUBERNETES_MINORS.end()
            ),
        );
    }
}

fn check_hosts(c: &Cluster, k: &mut Checker<'_>) {
    let hosts = &c.spec.hosts;
    if hosts.is_empty() {
        k.error(
            "/spec/hosts",
            "no hosts".into(),
            "list at least one host with the roles etcd and control-plane",
        );
        return;
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut addresses: HashMap<String, usize> = HashMap::new();
    let local = matches!(c.spec.platform, Platform::Local(_));
    for (i, h) in hosts.iter().enumerate() {
        let base = format!("/spec/hosts/{i}");
        if let Some(first) = names.insert(h.name.as_str(), i) {
            names.insert(h.name.as_str(), first);
            let line = k.line_of(&format!("/spec/hosts/{first}/name"));
            k.error(
                &format!("{base}/name"),
                format!(
                    "duplicate host name `{}`{}",
                    h.name,
                    line.replace('(', "(also at ")
                ),
                "host names become node names and must be unique",
            );
        }
        match &h.address {
            Some(a) => {
                let key = a
                    .ip()
                    .map(|ip| ip.to_string())
                    .unwrap_or_else(|| a.as_str().to_ascii_lowercase());
                if let Some(first) = addresses.get(&key).copied() {
                    let line = k.line_of(&format!("/spec/hosts/{first}/address"));
                    k.error(
                        &format!("{base}/address"),
                        format!(
                            "address {key} is also used by host `{}`{line}",
                            hosts[first].name
                        ),
                        "each host needs its own address",
                    );
                } else {
                    addresses.insert(key, i);
                }
                if let Some(ip) = a.ip() {
                    let broadcast = matches!(ip, IpAddr::V4(v) if v.is_broadcast());
                    if ip.is_unspecified() || ip.is_multicast() || broadcast {
                        k.error(
                            &format!("{base}/address"),
                            format!("{ip} is not the address of one host (unspecified, broadcast or multicast)"),
                            "give the host's own unicast address",
                        );
                    }
                }
                if local && a.ip().is_none() {
                    k.error(
                        &format!("{base}/address"),
                        format!("`{}` is a name; local hosts need an IP address", a.as_str()),
                        "omit the address to have one assigned, or give an IP address",
                    );
                }
            }
            None if !local => k.error(
                &base,
                format!("host `{}` has no address", h.name),
                "give the IP address or DNS name Strata reaches it at over SSH",
            ),
            None => {}
        }
        if RESERVED_HOST_NAMES.contains(&h.name.as_str()) {
            k.error(
                &format!("{base}/name"),
                format!(
                    "`{}` is a name the API server answers to; a node by that name would get \
                     a serving certificate for it",
                    h.name
                ),
                "choose another host name",
            );
        }
        if let Some(port) = h.ssh.port {
            check_ssh_port(port, &format!("{base}/ssh/port"), k);
        }
        if let Some(user) = &h.ssh.user {
            check_ssh_user(user, &format!("{base}/ssh/user"), k);
        }
        if h.roles.is_empty() {
            k.error(
                &format!("{base}/roles"),
                format!("host `{}` has no roles", h.name),
                "give any of: etcd, control-plane, worker",
            );
        }
        let mut seen = Vec::new();
        for (j, r) in h.roles.iter().enumerate() {
            if seen.contains(r) {
                k.warn(
                    &format!("{base}/roles/{j}"),
                    format!("role {r} is listed twice"),
                    "remove the repeated entry",
                );
            }
            seen.push(*r);
        }
        for (key, value) in &h.labels {
            let p = format!("{base}/labels/{}", pointer_segment(key));
            if let Err(why) = check_label_key(key) {
                k.error(&p, why, "see Kubernetes label syntax: [prefix/]name");
            } else if !kubelet_may_set(key) {
                k.error(
                    &p,
                    format!("label `{key}` is in a reserved namespace the kubelet may not set"),
                    "use your own prefix (e.g. example.com/role), or node.kubernetes.io/ or \
                     kubelet.kubernetes.io/; Strata sets node-role labels itself",
                );
            }
            if let Err(why) = check_label_value(value) {
                k.error(&p, why, "");
            }
        }
        for (j, t) in h.taints.iter().enumerate() {
            if let Err(why) = check_label_key(&t.key) {
                k.error(&format!("{base}/taints/{j}/key"), why, "");
            }
            if let Err(why) = check_label_value(&t.value) {
                k.error(&format!("{base}/taints/{j}/value"), why, "");
            }
        }
    }
    let etcd = c.hosts_with(Role::Etcd).count();
    if etcd == 0 {
        k.error(
            "/spec/hosts",
            "no host has the role etcd".into(),
            "add `etcd` to the roles of one host (or three, for a highly available cluster)",
        );
    } else if etcd.is_multiple_of(2) {
        k.warn(
            "/spec/hosts",
            format!(
                "{etcd} etcd members: an even number tolerates no more failures than {}",
                etcd - 1
            ),
            "use an odd number of etcd hosts (1, 3 or 5)",
        );
    }
    if c.hosts_with(Role::ControlPlane).next().is_none() {
        k.error(
            "/spec/hosts",
            "no host has the role control-plane".into(),
            "add `control-plane` to the roles of at least one host",
        );
    } else if c.hosts_with(Role::Worker).next().is_none() {
        k.warn(
            "/spec/hosts",
            "no host has the role worker: control-plane hosts are tainted, so only the \
             cluster's own addons can run"
                .into(),
            "add `worker` to the roles of a host (a one-host cluster: [etcd, control-plane, worker])",
        );
    }
}

/// Labels in the kubernetes.io and k8s.io namespaces a kubelet may set on its own Node
/// (kubelet --node-labels; everything else there is refused by the kubelet).
fn kubelet_may_set(key: &str) -> bool {
    const KEYS: &[&str] = &[
        "kubernetes.io/hostname",
        "kubernetes.io/instance-type",
        "kubernetes.io/os",
        "kubernetes.io/arch",
        "beta.kubernetes.io/instance-type",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/arch",
        "failure-domain.beta.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/region",
        "failure-domain.kubernetes.io/zone",
        "failure-domain.kubernetes.io/region",
        "topology.kubernetes.io/zone",
        "topology.kubernetes.io/region",
    ];
    let Some((prefix, _)) = key.rsplit_once('/') else {
        return true;
    };
    let reserved = ["kubernetes.io", "k8s.io"]
        .iter()
        .any(|r| prefix == *r || prefix.ends_with(&format!(".{r}")));
    !reserved
        || KEYS.contains(&key)
        || ["kubelet.kubernetes.io", "node.kubernetes.io"]
            .iter()
            .any(|p| prefix == *p || prefix.ends_with(&format!(".{p}")))
}

/// Kubernetes qualified name with an optional DNS prefix (`example.com/zone`).
fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && formats::check_dns_subdomain(p).is_err()
    {
        return Err(format!("label key `{key}`: prefix `{p}` is not a DNS name"));
    }
    if name.is_empty() || name.len() > 63 || !is_qualified_name(name) {
        return Err(format!(
            "label key `{key}`: `{name}` must be 1 to 63 letters, digits, '-', '_' or '.', \
             starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

fn check_label_value(v: &str) -> Result<(), String> {
    if v.is_empty() || (v.len() <= 63 && is_qualified_name(v)) {
        Ok(())
    } else {
        Err(format!(
            "label value `{v}` must be at most 63 letters, digits, '-', '_' or '.', starting \
             and ending with a letter or digit"
        ))
    }
}

fn is_qualified_name(s: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    edge(s.chars().next())
        && edge(s.chars().last())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Names of the API server itself (its certificate's names that are single DNS labels).
const RESERVED_HOST_NAMES: [&str; 2] = ["kubernetes", "localhost"];

fn check_ssh_port(port: u16, pointer: &str, k: &mut Checker<'_>) {
    if port == 0 {
        k.error(
            pointer,
            "port 0 is not a port SSH listens on".into(),
            "use 22, or the host's SSH port",
        );
    }
}

/// A login name as useradd accepts it: letters, digits, `_`, `.`, `-`, not starting with
/// `-`, at most 32 characters.
fn check_ssh_user(user: &str, pointer: &str, k: &mut Checker<'_>) {
    let valid = !user.is_empty()
        && user.len() <= 32
        && !user.starts_with('-')
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !valid {
        k.error(
            pointer,
            format!("{user:?} is not a user name"),
            "letters, digits, `_`, `.` and `-`, at most 32 characters, not starting with `-` (e.g. root, core)",
        );
    }
}

fn check_ssh(c: &Cluster, k: &mut Checker<'_>) {
    let ssh = &c.spec.ssh;
    check_ssh_port(ssh.port, "/spec/ssh/port", k);
    check_ssh_user(&ssh.user, "/spec/ssh/user", k);
    if let Some(b) = &ssh.bastion {
        check_ssh_port(b.port, "/spec/ssh/bastion/port", k);
        if let Some(user) = &b.user {
            check_ssh_user(user, "/spec/ssh/bastion/user", k);
        }
    }
}

fn check_network(c: &Cluster, k: &mut Checker<'_>) {
    let n = &c.spec.network;
    let (pod, svc) = (n.pod_cidr.net(), n.service_cidr.net());
    if pod.contains(&svc.network()) || svc.contains(&pod.network()) {
        k.error(
            "/spec/network/serviceCIDR",
            format!("service CIDR {svc} overlaps the pod CIDR {pod}"),
            "pick disjoint ranges, e.g. podCIDR 10.244.0.0/16 and serviceCIDR 10.96.0.0/12",
        );
    }
    // kube-apiserver refuses service ranges larger than /12 (IPv4) or /108 (IPv6); the range
    // must hold the API server's (first) and cluster DNS's (tenth) addresses.
    let (max_svc, min_svc) = match svc {
        ipnet::IpNet::V4(_) => (12, 28),
        ipnet::IpNet::V6(_) => (108, 124),
    };
    if svc.prefix_len() > min_svc {
        k.error(
            "/spec/network/serviceCIDR",
            format!(
                "service CIDR {svc} is too small: it must hold the API server's address (the \
                 first) and cluster DNS's (the tenth)"
            ),
            &format!("use a /{min_svc} or larger, e.g. 10.96.0.0/12"),
        );
    }
    let node_mask = crate::pod_subnets::node_prefix(pod);
    if matches!(pod, ipnet::IpNet::V6(_)) && crate::catalog::Component::Overlay.enabled(c) {
        k.error(
            "/spec/network/podCIDR",
            format!("pod CIDR {pod} is IPv6; Strata's overlay carries IPv4 pods only"),
            "use an IPv4 pod range, or turn the overlay off (spec.addons.overlay.enabled: false) \
             and install a CNI that routes IPv6",
        );
    }
    if let Platform::Local(local) = &c.spec.platform {
        check_local_subnets(c, local, k);
        let machines = ipnet::IpNet::V4(crate::model::local_range_all());
        for (range, field, what) in [(pod, "podCIDR", "pod"), (svc, "serviceCIDR", "service")] {
            if range.contains(&machines.network()) || machines.contains(&range.network()) {
                k.error(
                    &format!("/spec/network/{field}"),
                    format!(
                        "{what} CIDR {range} overlaps {machines}, where local machines get \
                         their addresses"
                    ),
                    "pick a range outside 198.18.0.0/15, e.g. 10.244.0.0/16 and 10.96.0.0/12",
                );
            }
        }
    }
    if svc.prefix_len() < max_svc {
        k.error(
            "/spec/network/serviceCIDR",
            format!("service CIDR {svc} is larger than kube-apiserver accepts (/{max_svc})"),
            &format!("use a /{max_svc} or smaller"),
        );
    }
    if pod.prefix_len() >= node_mask {
        k.error(
            "/spec/network/podCIDR",
            format!("pod CIDR {pod} is too small: every node receives a /{node_mask} of it"),
            "use a range of /16 or larger",
        );
    }
    for (i, h) in c.spec.hosts.iter().enumerate() {
        let Some(ip) = h.address.as_ref().and_then(|a| a.ip()) else {
            continue;
        };
        for (range, what) in [(pod, "pod"), (svc, "service")] {
            if range.contains(&ip) {
                k.error(
                    &format!("/spec/hosts/{i}/address"),
                    format!("host address {ip} lies inside the {what} CIDR {range}"),
                    "host, pod and service addresses must not overlap; change the address \
                     or the CIDR under spec.network",
                );
            }
        }
    }
    if let Some(ep) = c
        .api_endpoint()
        .filter(|_| !c.spec.control_plane.endpoint.0.is_empty())
        && let Some(ip) = ep
            .rsplit_once(':')
            .and_then(|(h, _)| h.trim_matches(['[', ']']).parse::<IpAddr>().ok())
        && (pod.contains(&ip) || svc.contains(&ip))
    {
        k.error(
            "/spec/controlPlane/endpoint",
            format!("endpoint address {ip} lies inside the pod or service CIDR"),
            "use an address outside spec.network.podCIDR and serviceCIDR",
        );
    }
}

fn check_vip(c: &Cluster, k: &mut Checker<'_>) {
    let Some(vip) = c.spec.control_plane.vip else {
        return;
    };
    let ip = IpAddr::V4(vip);
    let pointer = "/spec/controlPlane/vip";
    let (pod, svc) = (
        c.spec.network.pod_cidr.net(),
        c.spec.network.service_cidr.net(),
    );
    if pod.contains(&ip) || svc.contains(&ip) {
        k.error(
            pointer,
            format!("virtual IP {vip} lies inside the pod or service CIDR"),
            "use a free address of the control-plane hosts' network",
        );
    }
    if vip.is_loopback() || vip.is_unspecified() || vip.is_multicast() || vip.is_broadcast() {
        k.error(
            pointer,
            format!("{vip} cannot be a virtual IP"),
            "use a free address of the control-plane hosts' network",
        );
    }
    if let Some(h) = c
        .spec
        .hosts
        .iter()
        .find(|h| h.address.as_ref().and_then(|a| a.ip()) == Some(ip))
    {
        k.error(
            pointer,
            format!("virtual IP {vip} is host {}'s own address", h.name),
            "use a free address of the control-plane hosts' network",
        );
    }
    // Local machines without an address get IPv4 ones after validation.
    let local = matches!(c.spec.platform, Platform::Local(_));
    for (i, h) in c.spec.hosts.iter().enumerate() {
        let v4 = match h.address.as_ref() {
            None => local,
            Some(a) => matches!(a.ip(), Some(IpAddr::V4(_))),
        };
        if h.has_role(Role::ControlPlane) && !v4 {
            k.error(
                &format!("/spec/hosts/{i}/address"),
                format!(
                    "control-plane host {} needs an IPv4 address for the virtual IP to be held on its network",
                    h.name
                ),
                "give the host its IPv4 address, or remove spec.controlPlane.vip",
            );
        }
    }
}

fn check_pki(c: &Cluster, ctx: &Context, k: &mut Checker<'_>) {
    let p = &c.spec.pki;
    if p.cert_validity.0 > p.ca_validity.0 {
        k.error(
            "/spec/pki/certValidity",
            format!(
                "certificates ({}) would outlive their CA ({})",
                p.cert_validity, p.ca_validity
            ),
            "make certValidity shorter than caValidity",
        );
    }
    if p.cert_validity.0.is_zero() || p.ca_validity.0.is_zero() {
        k.error("/spec/pki", "validity must be longer than 0".into(), "");
    }
    for (field, d) in [
        ("caValidity", &p.ca_validity),
        ("certValidity", &p.cert_validity),
    ] {
        let ends = jiff::SignedDuration::try_from(d.0)
            .ok()
            .and_then(|d| jiff::Timestamp::now().checked_add(d).ok());
        if ends.is_none() {
            k.error(
                &format!("/spec/pki/{field}"),
                format!("{d} from now ends after the year 9999, which certificates cannot express"),
                "use a shorter validity, e.g. 87600h (10 years)",
            );
        }
    }
    if let Some(ca) = &p.ca {
        for (field, file) in [("cert", &ca.cert), ("key", &ca.key)] {
            let path = ctx.resolve(file);
            if !path.is_file() {
                k.error(
                    &format!("/spec/pki/ca/{field}"),
                    format!("{} does not exist", path.display()),
                    "give the PEM file of your CA, or remove spec.pki.ca to have one generated",
                );
            } else if field == "key" {
                check_key_mode(&path, &format!("/spec/pki/ca/{field}"), k);
            }
        }
    }
}

/// The cluster's local range: IPv4, within 198.18.0.0/15, room for a router and machines;
/// the machines' prefix within it; every host address and the virtual IP in it, none on a
/// subnet's network, broadcast or router address (this computer's bridge holds the first
/// address of each subnet as its router).
fn check_local_subnets(c: &Cluster, local: &crate::model::LocalPlatform, k: &mut Checker<'_>) {
    let all = crate::model::local_range_all();
    if let Some(given) = &local.range {
        let ok = match given.net() {
            ipnet::IpNet::V4(n) => all.contains(&n) && n.prefix_len() <= 29,
            ipnet::IpNet::V6(_) => false,
        };
        if !ok {
            k.error(
                "/spec/platform/local/range",
                format!(
                    "{} is not an IPv4 range of /29 or larger within {all}",
                    given.net()
                ),
                "give a part of 198.18.0.0/15, e.g. 198.18.1.0/24 (one per local cluster \
                 running at once)",
            );
            return;
        }
    }
    let range = local.range();
    let prefix = local.machine_prefix();
    if !(range.prefix_len()..=30).contains(&prefix) {
        k.error(
            "/spec/platform/local/prefixLength",
            format!(
                "prefix length {prefix} is outside {}..=30 (the range {range} and a subnet of \
                 at least two machines)",
                range.prefix_len()
            ),
            &format!(
                "use {} (one subnet, the default) or a longer prefix such as 24 for several \
                 subnets",
                range.prefix_len()
            ),
        );
        return;
    }
    let without = c.spec.hosts.iter().filter(|h| h.address.is_none()).count();
    let given = c.spec.hosts.len() - without + usize::from(c.spec.control_plane.vip.is_some());
    // The network, this computer's router and the broadcast address are nobody's.
    let room = (1usize << (32 - range.prefix_len())).saturating_sub(3);
    if without > 0 && without + given > room {
        k.error(
            "/spec/platform/local/range",
            format!(
                "{range} has room for {room} machines; the cluster has {}",
                without + given
            ),
            "give a larger range",
        );
    }
    if let Some(vip) = c.spec.control_plane.vip
        && !range.contains(&vip)
    {
        k.error(
            "/spec/controlPlane/vip",
            format!("{vip} is outside the cluster's local range {range}"),
            &format!("give an unused address of {range}"),
        );
    }
    for (i, h) in c.spec.hosts.iter().enumerate() {
        let Some(std::net::IpAddr::V4(ip)) = h.address.as_ref().and_then(HostAddress::ip) else {
            continue;
        };
        // An address outside 198.18.0.0/15 is not on the machines' bridge at all (a
        // loopback address, for tests that run components on this computer).
        if !all.contains(&ip) {
            continue;
        }
        if !range.contains(&ip) {
            k.error(
                &format!("/spec/hosts/{i}/address"),
                format!("{ip} is outside the cluster's local range {range}"),
                &format!(
                    "give host {} an address of {range}, or omit it to have one assigned",
                    h.name
                ),
            );
            continue;
        }
        let Ok(net) = ipnet::Ipv4Net::new(ip, prefix) else {
            continue;
        };
        let router = std::net::Ipv4Addr::from(u32::from(net.network()) + 1);
        if ip == router || ip == net.network() || ip == net.broadcast() {
            k.error(
                &format!("/spec/hosts/{i}/address"),
                format!(
                    "{ip} is the network, broadcast or router address of its local subnet {}",
                    net.trunc()
                ),
                &format!("give host {} another address of {}", h.name, net.trunc()),
            );
        }
    }
}

fn check_keys(c: &Cluster, ctx: &Context, k: &mut Checker<'_>) {
    // On the local platform Strata generates the SSH key pair itself.
    if matches!(c.spec.platform, Platform::Local(_)) {
        return;
    }
    // With the ssh-agent, no key file is read.
    if c.spec.ssh.agent {
        return;
    }
    let mut checked: BTreeMap<PathBuf, ()> = BTreeMap::new();
    for (i, h) in c.spec.hosts.iter().enumerate() {
        let (file, pointer) = match &h.ssh.private_key {
            Some(f) => (f.clone(), format!("/spec/hosts/{i}/ssh/privateKey")),
            None => (
                c.spec.ssh.private_key.clone(),
                "/spec/ssh/privateKey".to_owned(),
            ),
        };
        let path = ctx.resolve(&file);
        if checked.insert(path.clone(), ()).is_some() {
            continue;
        }
        match std::fs::metadata(&path) {
            Err(_) => k.error(
                &pointer,
                format!("SSH private key {} does not exist", path.display()),
                &format!(
                    "create one with `ssh-keygen -t ed25519 -f {}` and install its .pub on the \
                     hosts, or point spec.ssh.privateKey at your key",
                    path.display()
                ),
            ),
            Ok(m) if !m.is_file() => k.error(
                &pointer,
                format!("SSH private key {} is not a file", path.display()),
                "",
            ),
            Ok(_) => check_key_mode(&path, &pointer, k),
        }
    }
}

#[cfg(unix)]
fn check_key_mode(path: &Path, pointer: &str, k: &mut Checker<'_>) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            k.error(
                pointer,
                format!(
                    "private key {} is accessible by other users (mode {mode:04o})",
                    path.display()
                ),
                &format!("run `chmod 600 {}`", path.display()),
            );
        }
    }
}

#[cfg(not(unix))]
fn check_key_mode(_: &Path, _: &str, _: &mut Checker<'_>) {}

fn check_policy(c: &Cluster, k: &mut Checker<'_>) {
    for (i, w) in c
        .spec
        .addons
        .update_operator
        .policy
        .windows
        .iter()
        .enumerate()
    {
        let d = w.duration.0;
        if d.is_zero() || d.as_secs() > 7 * 24 * 3600 {
            k.error(
                &format!("/spec/addons/updateOperator/policy/windows/{i}/duration"),
                format!("window length {} must be between 1m and 168h", w.duration),
                "",
            );
        }
    }
}
