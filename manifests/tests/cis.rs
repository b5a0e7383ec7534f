//! Every item of the CIS Kubernetes Benchmark for Kubernetes 1.20 (CIS 1.6, as kube-bench's
//! cfg/cis-1.20 lists them) against the configuration Strata renders for a three-host cluster
//! on the ssh platform: each item is checked, or marked not applicable with the reason.
//!
//! File ownership (the items "... ownership is set to root:root") is not part of a rendering:
//! apply uploads every file as root:root through one function (`HostConn::upload`); those
//! items say so.

mod common;

use std::collections::BTreeSet;

use common::{THREE_HOSTS, fixture};
use strata_manifests::render::Rendered;

/// The rendered cluster, with helpers to read flags, files and modes.
struct Cfg {
    r: Rendered,
}

const ROOT_OWNED: &str = "apply uploads every file as root:root (HostConn::upload)";

impl Cfg {
    fn file(&self, host: &str, path: &str) -> Option<&strata_manifests::render::HostFile> {
        self.r
            .hosts
            .iter()
            .find(|t| t.host == host)
            .and_then(|t| t.files.get(path))
    }
    fn text(&self, host: &str, path: &str) -> String {
        self.file(host, path)
            .map(|f| String::from_utf8_lossy(&f.content).into_owned())
            .unwrap_or_default()
    }
    /// The `--name=value` flags of a unit's command line.
    fn flags(&self, host: &str, unit: &str) -> Vec<(String, String)> {
        self.text(host, &format!("/etc/systemd/system/{unit}.service"))
            .lines()
            .filter_map(|l| l.trim().trim_end_matches('\\').trim().strip_prefix("--"))
            .map(|f| match f.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (f.to_owned(), "true".to_owned()),
            })
            .collect()
    }
    fn flag(&self, host: &str, unit: &str, name: &str) -> Option<String> {
        self.flags(host, unit)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
    fn api(&self, name: &str) -> Option<String> {
        self.flag("cp1", "kube-apiserver", name)
    }
    fn cm(&self, name: &str) -> Option<String> {
        self.flag("cp1", "kube-controller-manager", name)
    }
    fn sched(&self, name: &str) -> Option<String> {
        self.flag("cp1", "kube-scheduler", name)
    }
    fn kubelet_config(&self) -> String {
        self.text("w1", "/etc/kubernetes/kubelet/config.yaml")
    }
    fn etcd(&self, name: &str) -> Option<String> {
        self.flag("cp1", "etcd", name)
    }
    /// Every host's files whose path matches, with their modes.
    fn modes(&self, matches: impl Fn(&str) -> bool) -> Vec<(String, u32)> {
        self.r
            .hosts
            .iter()
            .flat_map(|t| {
                t.files
                    .iter()
                    .map(move |(p, f)| (format!("{}:{p}", t.host), p, f.mode))
            })
            .filter(|(_, p, _)| matches(p))
            .map(|(hp, _, m)| (hp, m))
            .collect()
    }
    fn objects_text(&self) -> String {
        self.r
            .objects
            .iter()
            .map(|o| o.yaml.as_str())
            .collect::<Vec<_>>()
            .join("\n---\n")
    }
}

type Check = fn(&Cfg) -> Result<(), String>;

enum Verdict {
    Holds(Check),
    NotApplicable(&'static str),
}

use Verdict::{Holds, NotApplicable};

fn ensure(ok: bool, why: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(why()) }
}

fn at_most(mode: u32, limit: u32, what: &str) -> Result<(), String> {
    ensure(mode & !limit == 0, || {
        format!("{what}: mode {mode:o} is looser than {limit:o}")
    })
}

fn files_at_most(c: &Cfg, matches: fn(&str) -> bool, limit: u32) -> Result<(), String> {
    let found = c.modes(matches);
    ensure(!found.is_empty(), || "no such file rendered".into())?;
    found.iter().try_for_each(|(p, m)| at_most(*m, limit, p))
}

fn flag_is(v: Option<String>, want: &str, name: &str) -> Result<(), String> {
    ensure(v.as_deref() == Some(want), || {
        format!("--{name} is {v:?}, not {want}")
    })
}

fn flag_set(v: Option<String>, name: &str) -> Result<(), String> {
    ensure(v.as_deref().is_some_and(|s| !s.is_empty()), || {
        format!("--{name} is not set")
    })
}

fn flag_unset(v: Option<String>, name: &str) -> Result<(), String> {
    ensure(v.is_none(), || format!("--{name} is set to {v:?}"))
}

fn at_least(v: Option<String>, min: u64, name: &str) -> Result<(), String> {
    let n: u64 = v.as_deref().and_then(|s| s.parse().ok()).unwrap_or(0);
    ensure(n >= min, || format!("--{name} is {v:?}, below {min}"))
}

fn plugins(c: &Cfg) -> Vec<String> {
    c.api("enable-admission-plugins")
        .unwrap_or_default()
        .split(',')
        .map(str::to_owned)
        .collect()
}

fn not_disabled(c: &Cfg, plugin: &str) -> Result<(), String> {
    let disabled = c.api("disable-admission-plugins").unwrap_or_default();
    ensure(!disabled.split(',').any(|p| p == plugin), || {
        format!("{plugin} is disabled")
    })
}

fn auth_modes(c: &Cfg) -> Vec<String> {
    c.api("authorization-mode")
        .unwrap_or_default()
        .split(',')
        .map(str::to_owned)
        .collect()
}

fn unit(name: &'static str) -> impl Fn(&str) -> bool {
    move |p| p == format!("/etc/systemd/system/{name}.service")
}

const STRONG_SUITES: [&str; 6] = [
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
];

fn only_strong(suites: &str) -> Result<(), String> {
    let list: Vec<&str> = suites
        .split([',', ' ', '[', ']'])
        .filter(|s| !s.is_empty())
        .collect();
    ensure(!list.is_empty(), || "no cipher suites set".into())?;
    list.iter()
        .try_for_each(|s| ensure(STRONG_SUITES.contains(s), || format!("weak suite {s}")))
}

/// kube-bench cfg/cis-1.20, in its order.
fn items() -> Vec<(&'static str, &'static str, Verdict)> {
    vec![
        // 1.1 Master node configuration files (systemd units play the role of pod specs).
        (
            "1.1.1",
            "API server spec file permissions 644 or stricter",
            Holds(|c| files_at_most(c, |p| unit("kube-apiserver")(p), 0o644)),
        ),
        (
            "1.1.2",
            "API server spec file ownership root:root",
            NotApplicable(ROOT_OWNED),
        ),
        (
            "1.1.3",
            "controller manager spec file permissions 644 or stricter",
            Holds(|c| files_at_most(c, |p| unit("kube-controller-manager")(p), 0o644)),
        ),
        (
            "1.1.4",
            "controller manager spec file ownership root:root",
            NotApplicable(ROOT_OWNED),
        ),
        (
            "1.1.5",
            "scheduler spec file permissions 644 or stricter",
            Holds(|c| files_at_most(c, |p| unit("kube-scheduler")(p), 0o644)),
        ),
        (
            "1.1.6",
            "scheduler spec file ownership root:root",
            NotApplicable(ROOT_OWNED),
        ),
        (
            "1.1.7",
            "etcd spec file permissions 644 or stricter",
            Holds(|c| files_at_most(c, |p| unit("etcd")(p) || p.starts_with("/etc/etcd/"), 0o644)),
        ),
        (
            "1.1.8",
            "etcd spec file ownership root:root",
            NotApplicable(ROOT_OWNED),
        ),
        (
            "1.1.9",
            "CNI file permissions 644 or stricter",
            NotApplicable(
                "the CNI configuration is written by the overlay agent (addons/overlay), 0644, not rendered",
            ),
        ),
        (
            "1.1.10",
            "CNI file ownership root:root",
            NotApplicable("written by the overlay agent, which runs as root"),
        ),
        (
            "1.1.11",
            "etcd data directory permissions 700 or stricter",
            NotApplicable(
                "etcd 3.4 creates its data directory /var/lib/etcd 0700 itself (not a rendered file)",
            ),
        ),
        (
            "1.1.12",
            "etcd data directory ownership etcd:etcd",
            NotApplicable(
                "etcd runs as root under systemd, as kubeadm's does; there is no etcd user",
            ),
        ),
        (
            "1.1.13",
            "admin.conf permissions 644 or stricter",
            Holds(|c| {
                ensure(c.modes(|p| p.ends_with("admin.conf")).is_empty(), || {
                    "an admin kubeconfig is on a host".into()
                })
            }),
        ),
        (
            "1.1.14",
            "admin.conf ownership root:root",
            NotApplicable("no admin kubeconfig on any host: it stays in the state directory, 0600"),
        ),
        (
            "1.1.15",
            "scheduler.conf permissions 644 or stricter",
            Holds(|c| files_at_most(c, |p| p == "/etc/kubernetes/scheduler.conf", 0o644)),
        ),
        (
            "1.1.16",
            "scheduler.conf ownership root:root",
            NotApplicable(ROOT_OWNED),
        ),
        (
            "1.1.17",
            "controller-manager.conf permissions 644 or stricter",
            Holds(|c| files_at_most(c, |p| p == "/etc/kubernetes/controller-manager.conf", 0o644)),
        ),
        (
            "1.1.18",
            "controller-manager.conf ownership root:root",
            NotApplicable(ROOT_OWNED),
        ),
        (
            "1.1.19",
            "PKI directory and files ownership root:root",
            NotApplicable(ROOT_OWNED),
        ),
        (
            "1.1.20",
            "PKI certificate files permissions 644 or stricter",
            Holds(|c| {
                files_at_most(
                    c,
                    |p| p.starts_with("/etc/kubernetes/pki/") && p.ends_with(".crt"),
                    0o644,
                )
            }),
        ),
        (
            "1.1.21",
            "PKI key files permissions 600",
            Holds(|c| {
                files_at_most(
                    c,
                    |p| p.starts_with("/etc/kubernetes/pki/") && p.ends_with(".key"),
                    0o600,
                )
            }),
        ),
        // 1.2 API server
        (
            "1.2.1",
            "--anonymous-auth=false",
            Holds(|c| flag_is(c.api("anonymous-auth"), "false", "anonymous-auth")),
        ),
        (
            "1.2.2",
            "--basic-auth-file not set",
            Holds(|c| flag_unset(c.api("basic-auth-file"), "basic-auth-file")),
        ),
        (
            "1.2.3",
            "--token-auth-file not set",
            Holds(|c| flag_unset(c.api("token-auth-file"), "token-auth-file")),
        ),
        (
            "1.2.4",
            "--kubelet-https=true",
            Holds(|c| {
                ensure(c.api("kubelet-https").as_deref() != Some("false"), || {
                    "kubelet-https is false".into()
                })
            }),
        ),
        (
            "1.2.5",
            "--kubelet-client-certificate and --kubelet-client-key set",
            Holds(|c| {
                flag_set(
                    c.api("kubelet-client-certificate"),
                    "kubelet-client-certificate",
                )
                .and(flag_set(c.api("kubelet-client-key"), "kubelet-client-key"))
            }),
        ),
        (
            "1.2.6",
            "--kubelet-certificate-authority set",
            Holds(|c| {
                flag_set(
                    c.api("kubelet-certificate-authority"),
                    "kubelet-certificate-authority",
                )
            }),
        ),
        (
            "1.2.7",
            "--authorization-mode not AlwaysAllow",
            Holds(|c| {
                ensure(!auth_modes(c).contains(&"AlwaysAllow".into()), || {
                    "AlwaysAllow".into()
                })
            }),
        ),
        (
            "1.2.8",
            "--authorization-mode includes Node",
            Holds(|c| ensure(auth_modes(c).contains(&"Node".into()), || "no Node".into())),
        ),
        (
            "1.2.9",
            "--authorization-mode includes RBAC",
            Holds(|c| ensure(auth_modes(c).contains(&"RBAC".into()), || "no RBAC".into())),
        ),
        (
            "1.2.10",
            "admission plugin EventRateLimit",
            NotApplicable(
                "a manual item: limits need tuning per cluster and the plugin is alpha (eventratelimit.admission.k8s.io/v1alpha1) in 1.20",
            ),
        ),
        (
            "1.2.11",
            "admission plugin AlwaysAdmit not set",
            Holds(|c| {
                ensure(!plugins(c).contains(&"AlwaysAdmit".into()), || {
                    "AlwaysAdmit".into()
                })
            }),
        ),
        (
            "1.2.12",
            "admission plugin AlwaysPullImages",
            NotApplicable(
                "images imported from the assets exist only in the nodes' containerd (no registry): pulling always would break them",
            ),
        ),
        (
            "1.2.13",
            "SecurityContextDeny when PodSecurityPolicy is not used",
            Holds(|c| {
                ensure(plugins(c).contains(&"PodSecurityPolicy".into()), || {
                    "neither PodSecurityPolicy nor SecurityContextDeny".into()
                })
            }),
        ),
        (
            "1.2.14",
            "admission plugin ServiceAccount",
            Holds(|c| not_disabled(c, "ServiceAccount")),
        ),
        (
            "1.2.15",
            "admission plugin NamespaceLifecycle",
            Holds(|c| not_disabled(c, "NamespaceLifecycle")),
        ),
        (
            "1.2.16",
            "admission plugin PodSecurityPolicy",
            Holds(|c| {
                ensure(plugins(c).contains(&"PodSecurityPolicy".into()), || {
                    "no PodSecurityPolicy".into()
                })
            }),
        ),
        (
            "1.2.17",
            "admission plugin NodeRestriction",
            Holds(|c| {
                ensure(plugins(c).contains(&"NodeRestriction".into()), || {
                    "no NodeRestriction".into()
                })
            }),
        ),
        (
            "1.2.18",
            "--insecure-bind-address not set",
            Holds(|c| flag_unset(c.api("insecure-bind-address"), "insecure-bind-address")),
        ),
        (
            "1.2.19",
            "--insecure-port=0",
            Holds(|c| flag_is(c.api("insecure-port"), "0", "insecure-port")),
        ),
        (
            "1.2.20",
            "--secure-port not 0",
            Holds(|c| {
                ensure(c.api("secure-port").is_some_and(|p| p != "0"), || {
                    "secure-port 0".into()
                })
            }),
        ),
        (
            "1.2.21",
            "--profiling=false",
            Holds(|c| flag_is(c.api("profiling"), "false", "profiling")),
        ),
        (
            "1.2.22",
            "--audit-log-path set",
            Holds(|c| flag_set(c.api("audit-log-path"), "audit-log-path")),
        ),
        (
            "1.2.23",
            "--audit-log-maxage 30 or more",
            Holds(|c| at_least(c.api("audit-log-maxage"), 30, "audit-log-maxage")),
        ),
        (
            "1.2.24",
            "--audit-log-maxbackup 10 or more",
            Holds(|c| at_least(c.api("audit-log-maxbackup"), 10, "audit-log-maxbackup")),
        ),
        (
            "1.2.25",
            "--audit-log-maxsize 100 or more",
            Holds(|c| at_least(c.api("audit-log-maxsize"), 100, "audit-log-maxsize")),
        ),
        (
            "1.2.26",
            "--request-timeout appropriate",
            Holds(|c| {
                flag_unset(
                    c.api("request-timeout"),
                    "request-timeout (the default 60s is the appropriate value)",
                )
            }),
        ),
        (
            "1.2.27",
            "--service-account-lookup=true",
            Holds(|c| {
                ensure(
                    c.api("service-account-lookup").as_deref() != Some("false"),
                    || "service-account-lookup false".into(),
                )
            }),
        ),
        (
            "1.2.28",
            "--service-account-key-file set",
            Holds(|c| {
                flag_set(
                    c.api("service-account-key-file"),
                    "service-account-key-file",
                )
            }),
        ),
        (
            "1.2.29",
            "--etcd-certfile and --etcd-keyfile set",
            Holds(|c| {
                flag_set(c.api("etcd-certfile"), "etcd-certfile")
                    .and(flag_set(c.api("etcd-keyfile"), "etcd-keyfile"))
            }),
        ),
        (
            "1.2.30",
            "--tls-cert-file and --tls-private-key-file set",
            Holds(|c| {
                flag_set(c.api("tls-cert-file"), "tls-cert-file").and(flag_set(
                    c.api("tls-private-key-file"),
                    "tls-private-key-file",
                ))
            }),
        ),
        (
            "1.2.31",
            "--client-ca-file set",
            Holds(|c| flag_set(c.api("client-ca-file"), "client-ca-file")),
        ),
        (
            "1.2.32",
            "--etcd-cafile set",
            Holds(|c| flag_set(c.api("etcd-cafile"), "etcd-cafile")),
        ),
        (
            "1.2.33",
            "--encryption-provider-config set",
            Holds(|c| {
                let path = c.api("encryption-provider-config").unwrap_or_default();
                let f = c
                    .file("cp1", &path)
                    .ok_or_else(|| format!("{path:?} is not rendered"))?;
                at_most(f.mode, 0o600, &path)
            }),
        ),
        (
            "1.2.34",
            "encryption providers configured (aescbc, kms or secretbox)",
            Holds(|c| {
                let path = c.api("encryption-provider-config").unwrap_or_default();
                let conf = c.text("cp1", &path);
                let providers = conf.split("providers:").nth(1).unwrap_or_default();
                let first = providers
                    .lines()
                    .map(str::trim)
                    .find(|l| l.starts_with("- "))
                    .unwrap_or_default();
                ensure(
                    conf.contains("resources: [secrets]")
                        && ["- aescbc:", "- kms:", "- secretbox:"].contains(&first),
                    || format!("secrets are first written with {first:?}"),
                )
            }),
        ),
        (
            "1.2.35",
            "strong cryptographic ciphers only",
            Holds(|c| only_strong(&c.api("tls-cipher-suites").unwrap_or_default())),
        ),
        // 1.3 Controller manager
        (
            "1.3.1",
            "--terminated-pod-gc-threshold set",
            Holds(|c| {
                flag_set(
                    c.cm("terminated-pod-gc-threshold"),
                    "terminated-pod-gc-threshold",
                )
            }),
        ),
        (
            "1.3.2",
            "--profiling=false",
            Holds(|c| flag_is(c.cm("profiling"), "false", "profiling")),
        ),
        (
            "1.3.3",
            "--use-service-account-credentials=true",
            Holds(|c| {
                flag_is(
                    c.cm("use-service-account-credentials"),
                    "true",
                    "use-service-account-credentials",
                )
            }),
        ),
        (
            "1.3.4",
            "--service-account-private-key-file set",
            Holds(|c| {
                flag_set(
                    c.cm("service-account-private-key-file"),
                    "service-account-private-key-file",
                )
            }),
        ),
        (
            "1.3.5",
            "--root-ca-file set",
            Holds(|c| flag_set(c.cm("root-ca-file"), "root-ca-file")),
        ),
        (
            "1.3.6",
            "RotateKubeletServerCertificate not disabled",
            Holds(|c| {
                ensure(
                    !c.cm("feature-gates")
                        .unwrap_or_default()
                        .contains("RotateKubeletServerCertificate=false"),
                    || "disabled".into(),
                )
            }),
        ),
        (
            "1.3.7",
            "--bind-address=127.0.0.1",
            Holds(|c| flag_is(c.cm("bind-address"), "127.0.0.1", "bind-address")),
        ),
        // 1.4 Scheduler
        (
            "1.4.1",
            "--profiling=false",
            Holds(|c| flag_is(c.sched("profiling"), "false", "profiling")),
        ),
        (
            "1.4.2",
            "--bind-address=127.0.0.1",
            Holds(|c| flag_is(c.sched("bind-address"), "127.0.0.1", "bind-address")),
        ),
        // 2 etcd (flags of its unit)
        (
            "2.1",
            "--cert-file and --key-file set",
            Holds(|c| {
                ensure(
                    c.etcd("cert-file").is_some() && c.etcd("key-file").is_some(),
                    || format!("{:?}", c.flags("cp1", "etcd")),
                )
            }),
        ),
        (
            "2.2",
            "--client-cert-auth=true",
            Holds(|c| flag_is(c.etcd("client-cert-auth"), "true", "client-cert-auth")),
        ),
        (
            "2.3",
            "--auto-tls not true",
            Holds(|c| {
                ensure(c.etcd("auto-tls").is_none_or(|v| v != "true"), || {
                    "auto-tls".into()
                })
            }),
        ),
        (
            "2.4",
            "--peer-cert-file and --peer-key-file set",
            Holds(|c| {
                ensure(
                    c.etcd("peer-cert-file").is_some() && c.etcd("peer-key-file").is_some(),
                    || format!("{:?}", c.flags("cp1", "etcd")),
                )
            }),
        ),
        (
            "2.5",
            "--peer-client-cert-auth=true",
            Holds(|c| {
                flag_is(
                    c.etcd("peer-client-cert-auth"),
                    "true",
                    "peer-client-cert-auth",
                )
            }),
        ),
        (
            "2.6",
            "--peer-auto-tls not true",
            Holds(|c| {
                ensure(c.etcd("peer-auto-tls").is_none_or(|v| v != "true"), || {
                    "peer auto-tls".into()
                })
            }),
        ),
        (
            "2.7",
            "a unique certificate authority for etcd",
            Holds(|c| {
                let api_ca = c.api("client-ca-file").unwrap_or_default();
                ensure(
                    c.etcd("trusted-ca-file").as_deref() == Some("/etc/kubernetes/pki/etcd/ca.crt")
                        && api_ca != "/etc/kubernetes/pki/etcd/ca.crt"
                        && c.text("cp1", "/etc/kubernetes/pki/etcd/ca.crt")
                            != c.text("cp1", "/etc/kubernetes/pki/ca.crt"),
                    || "etcd shares the cluster CA".into(),
                )
            }),
        ),
        // 3 Control plane configuration
        (
            "3.1.1",
            "client certificate authentication not used for users",
            NotApplicable(
                "a manual item: Strata configures no identity provider; its one user credential, the admin client certificate, stays in the state directory (0600), never on a host",
            ),
        ),
        (
            "3.2.1",
            "a minimal audit policy",
            Holds(|c| {
                let path = c.api("audit-policy-file").unwrap_or_default();
                ensure(c.text("cp1", &path).contains("kind: Policy"), || {
                    format!("no audit policy at {path:?}")
                })
            }),
        ),
        (
            "3.2.2",
            "the audit policy covers key security concerns",
            Holds(|c| {
                let p = c.text("cp1", "/etc/kubernetes/audit-policy.yaml");
                // Secrets and tokens at Metadata (never their content), before the Request rule.
                let meta = p
                    .find("- level: Metadata\n  resources:")
                    .unwrap_or(usize::MAX);
                let secrets = p.find("- secrets").unwrap_or(usize::MAX);
                let request = p.find("- level: Request").unwrap_or(0);
                ensure(
                    meta < secrets && secrets < request && p.contains("tokenreviews"),
                    || p.clone(),
                )
            }),
        ),
        // 4.1 Worker node configuration files
        (
            "4.1.1",
            "kubelet service file permissions 644 or stricter",
            Holds(|c| files_at_most(c, |p| unit("kubelet")(p), 0o644)),
        ),
        (
            "4.1.2",
            "kubelet service file ownership root:root",
            NotApplicable(ROOT_OWNED),
        ),
        (
            "4.1.3",
            "proxy kubeconfig permissions 644 or stricter",
            Holds(|c| files_at_most(c, |p| p == "/etc/kubernetes/kube-proxy.conf", 0o644)),
        ),
        (
            "4.1.4",
            "proxy kubeconfig ownership root:root",
            NotApplicable(ROOT_OWNED),
        ),
        (
            "4.1.5",
            "kubelet.conf permissions 644 or stricter",
            Holds(|c| files_at_most(c, |p| p == "/etc/kubernetes/kubelet.conf", 0o644)),
        ),
        (
            "4.1.6",
            "kubelet.conf ownership root:root",
            NotApplicable(ROOT_OWNED),
        ),
        (
            "4.1.7",
            "certificate authorities file permissions 644 or stricter",
            Holds(|c| files_at_most(c, |p| p == "/etc/kubernetes/pki/ca.crt", 0o644)),
        ),
        (
            "4.1.8",
            "client certificate authorities file ownership root:root",
            NotApplicable(ROOT_OWNED),
        ),
        (
            "4.1.9",
            "kubelet config.yaml permissions 644 or stricter",
            Holds(|c| files_at_most(c, |p| p == "/etc/kubernetes/kubelet/config.yaml", 0o644)),
        ),
        (
            "4.1.10",
            "kubelet config.yaml ownership root:root",
            NotApplicable(ROOT_OWNED),
        ),
        // 4.2 Kubelet
        (
            "4.2.1",
            "anonymous-auth false",
            Holds(|c| {
                ensure(
                    c.kubelet_config()
                        .contains("anonymous:\n    enabled: false"),
                    || c.kubelet_config(),
                )
            }),
        ),
        (
            "4.2.2",
            "authorization-mode not AlwaysAllow",
            Holds(|c| {
                ensure(
                    c.kubelet_config()
                        .contains("authorization:\n  mode: Webhook"),
                    || c.kubelet_config(),
                )
            }),
        ),
        (
            "4.2.3",
            "client-ca-file set",
            Holds(|c| {
                ensure(
                    c.kubelet_config()
                        .contains("clientCAFile: /etc/kubernetes/pki/ca.crt"),
                    || c.kubelet_config(),
                )
            }),
        ),
        (
            "4.2.4",
            "read-only-port 0",
            Holds(|c| {
                ensure(c.kubelet_config().contains("readOnlyPort: 0"), || {
                    c.kubelet_config()
                })
            }),
        ),
        (
            "4.2.5",
            "streaming-connection-idle-timeout not 0",
            Holds(|c| {
                ensure(
                    !c.kubelet_config()
                        .contains("streamingConnectionIdleTimeout"),
                    || "set (the default 4h holds)".into(),
                )
            }),
        ),
        (
            "4.2.6",
            "protect-kernel-defaults true",
            Holds(|c| {
                ensure(
                    c.kubelet_config().contains("protectKernelDefaults: true"),
                    || c.kubelet_config(),
                )?;
                let sysctl = c.text("w1", "/etc/sysctl.d/90-strata.conf");
                ensure(
                    sysctl.contains("vm.overcommit_memory = 1")
                        && sysctl.contains("kernel.panic = 10"),
                    || sysctl.clone(),
                )
            }),
        ),
        (
            "4.2.7",
            "make-iptables-util-chains true",
            Holds(|c| {
                ensure(
                    !c.kubelet_config().contains("makeIPTablesUtilChains: false"),
                    || "false".into(),
                )
            }),
        ),
        (
            "4.2.8",
            "hostname-override not set",
            NotApplicable(
                "node names are the Cluster file's host names, which need not be the hosts' own; the kubelet's certificate is issued for that name, so the Node authorizer and NodeRestriction still bind it to its Node",
            ),
        ),
        (
            "4.2.9",
            "event-qps 0 or a level that captures events",
            Holds(|c| {
                ensure(!c.kubelet_config().contains("eventRecordQPS"), || {
                    "set (the default 5 holds)".into()
                })
            }),
        ),
        (
            "4.2.10",
            "tls-cert-file and tls-private-key-file set",
            Holds(|c| {
                ensure(
                    c.kubelet_config().contains("tlsCertFile:")
                        && c.kubelet_config().contains("tlsPrivateKeyFile:"),
                    || c.kubelet_config(),
                )
            }),
        ),
        (
            "4.2.11",
            "rotate-certificates not false",
            Holds(|c| {
                ensure(
                    c.kubelet_config().contains("rotateCertificates: true"),
                    || c.kubelet_config(),
                )
            }),
        ),
        (
            "4.2.12",
            "RotateKubeletServerCertificate true",
            NotApplicable(
                "kubelet serving certificates come from Strata's PKI (kubelet-serving, signed for the node's names) and are renewed by `strata certs renew` and apply; no CSR approver signs kubelet-requested serving certificates",
            ),
        ),
        (
            "4.2.13",
            "strong cryptographic ciphers only",
            Holds(|c| {
                let conf = c.kubelet_config();
                let line = conf
                    .lines()
                    .find_map(|l| l.strip_prefix("tlsCipherSuites:"))
                    .unwrap_or_default();
                only_strong(line)
            }),
        ),
        // 5.1 RBAC and service accounts
        (
            "5.1.1",
            "cluster-admin only where required",
            Holds(|c| {
                ensure(!c.objects_text().contains("name: cluster-admin"), || {
                    "Strata binds cluster-admin".into()
                })
            }),
        ),
        (
            "5.1.2",
            "minimize access to secrets",
            Holds(|c| {
                ensure(!c.objects_text().contains("- secrets"), || {
                    "a role of Strata's grants secrets".into()
                })
            }),
        ),
        (
            "5.1.3",
            "minimize wildcards in roles",
            Holds(|c| {
                ensure(roles_without_wildcards(c), || {
                    "a role of Strata's uses *".into()
                })
            }),
        ),
        (
            "5.1.4",
            "minimize access to create pods",
            Holds(|c| {
                ensure(!roles_grant(c, "pods", "create"), || {
                    "a role of Strata's creates pods".into()
                })
            }),
        ),
        (
            "5.1.5",
            "default service accounts not actively used",
            Holds(|c| {
                let t = c.objects_text();
                let workloads =
                    t.matches("kind: DaemonSet").count() + t.matches("kind: Deployment").count();
                let own = t.matches("serviceAccountName:").count()
                    + t.matches("automountServiceAccountToken: false").count();
                ensure(own >= workloads, || {
                    "a workload runs as its namespace's default service account".into()
                })
            }),
        ),
        (
            "5.1.6",
            "service account tokens mounted only where necessary",
            Holds(|c| {
                let accounts: Vec<&str> =
                    c.r.objects
                        .iter()
                        .filter(|o| o.api_path.contains("/serviceaccounts/"))
                        .map(|o| o.yaml.as_str())
                        .collect();
                ensure(
                    !accounts.is_empty()
                        && accounts
                            .iter()
                            .all(|y| y.contains("automountServiceAccountToken:")),
                    || "a ServiceAccount leaves token mounting to the default".into(),
                )
            }),
        ),
        // 5.2 Pod security policies (the restricted default)
        (
            "5.2.1",
            "minimize privileged containers",
            Holds(|c| psp_restricted(c, "privileged: false")),
        ),
        (
            "5.2.2",
            "minimize hostPID",
            Holds(|c| psp_restricted(c, "hostPID: false")),
        ),
        (
            "5.2.3",
            "minimize hostIPC",
            Holds(|c| psp_restricted(c, "hostIPC: false")),
        ),
        (
            "5.2.4",
            "minimize hostNetwork",
            Holds(|c| psp_restricted(c, "hostNetwork: false")),
        ),
        (
            "5.2.5",
            "minimize allowPrivilegeEscalation",
            Holds(|c| psp_restricted(c, "allowPrivilegeEscalation: false")),
        ),
        (
            "5.2.6",
            "minimize root containers",
            Holds(|c| psp_restricted(c, "rule: MustRunAsNonRoot")),
        ),
        (
            "5.2.7",
            "minimize NET_RAW",
            Holds(|c| psp_restricted(c, "requiredDropCapabilities:\n  - ALL")),
        ),
        (
            "5.2.8",
            "minimize added capabilities",
            Holds(|c| psp_restricted_lacks(c, "allowedCapabilities")),
        ),
        (
            "5.2.9",
            "minimize assigned capabilities",
            Holds(|c| psp_restricted(c, "requiredDropCapabilities:\n  - ALL")),
        ),
        // 5.3 Network policies and CNI
        (
            "5.3.1",
            "the CNI supports NetworkPolicies",
            NotApplicable(
                "Strata's VXLAN overlay does not enforce NetworkPolicy yet; a cluster that needs it turns the overlay off and installs a CNI that does",
            ),
        ),
        (
            "5.3.2",
            "all namespaces have NetworkPolicies",
            NotApplicable(
                "a manual item for the cluster's users; without an enforcing CNI (5.3.1) policies would have no effect",
            ),
        ),
        // 5.4 Secrets
        (
            "5.4.1",
            "secrets as files rather than environment variables",
            Holds(|c| {
                ensure(!c.objects_text().contains("secretKeyRef"), || {
                    "an addon reads a Secret from its environment".into()
                })
            }),
        ),
        (
            "5.4.2",
            "external secret storage",
            NotApplicable(
                "a manual item: Secrets stay in etcd, encrypted with aescbc (1.2.33, 1.2.34)",
            ),
        ),
        // 5.5 Extensible admission control
        (
            "5.5.1",
            "image provenance through ImagePolicyWebhook",
            NotApplicable(
                "a manual item: Strata's images are imported from the checked assets (sha256) or named by digest in spec.images",
            ),
        ),
        // 5.7 General policies
        (
            "5.7.1",
            "administrative boundaries with namespaces",
            NotApplicable(
                "a manual item for the cluster's users; Strata's own objects live in kube-system and strata-system",
            ),
        ),
        (
            "5.7.2",
            "seccomp profile docker/default (runtime/default)",
            Holds(|c| {
                psp_restricted(
                    c,
                    "seccomp.security.alpha.kubernetes.io/defaultProfileName: runtime/default",
                )
            }),
        ),
        (
            "5.7.3",
            "security contexts applied to pods and containers",
            Holds(|c| psp_restricted(c, "rule: MustRunAs\n")),
        ),
        (
            "5.7.4",
            "the default namespace not used",
            NotApplicable("a manual item for the cluster's users; Strata puts nothing in default"),
        ),
    ]
}

fn psp_restricted_text(c: &Cfg) -> String {
    c.r.objects
        .iter()
        .find(|o| {
            o.api_path
                .ends_with("/podsecuritypolicies/strata-restricted")
        })
        .map(|o| o.yaml.clone())
        .unwrap_or_default()
}

fn psp_restricted(c: &Cfg, needle: &str) -> Result<(), String> {
    let t = psp_restricted_text(c);
    ensure(t.contains(needle), || {
        format!("strata-restricted lacks {needle:?}:\n{t}")
    })
}

fn psp_restricted_lacks(c: &Cfg, needle: &str) -> Result<(), String> {
    let t = psp_restricted_text(c);
    ensure(!t.is_empty() && !t.contains(needle), || {
        format!("strata-restricted has {needle:?}")
    })
}

/// Strata's ClusterRoles and Roles as (resources, verbs) per rule.
fn rules(c: &Cfg) -> Vec<(Vec<String>, Vec<String>)> {
    c.r.objects
        .iter()
        .filter(|o| o.yaml.contains("kind: ClusterRole\n") || o.yaml.contains("kind: Role\n"))
        .flat_map(|o| {
            let v: serde_json::Value = serde_saphyr::from_str(&o.yaml).expect("role YAML");
            v["rules"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|r| {
                    let list = |k: &str| -> Vec<String> {
                        r[k].as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(|x| x.as_str().map(str::to_owned))
                                    .collect()
                            })
                            .unwrap_or_default()
                    };
                    (list("resources"), list("verbs"))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn roles_without_wildcards(c: &Cfg) -> bool {
    rules(c)
        .iter()
        .all(|(res, verbs)| !res.iter().chain(verbs).any(|s| s == "*"))
}

fn roles_grant(c: &Cfg, resource: &str, verb: &str) -> bool {
    rules(c).iter().any(|(res, verbs)| {
        res.iter().any(|r| r == resource) && verbs.iter().any(|v| v == verb || v == "*")
    })
}

#[test]
fn every_cis_1_20_item_holds_or_says_why_not() {
    let f = fixture(THREE_HOSTS);
    let cfg = Cfg { r: f.rendered };
    let items = items();
    let ids: BTreeSet<&str> = items.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(ids.len(), items.len(), "an item is listed twice");
    // kube-bench cfg/cis-1.20: 1.1.1-21, 1.2.1-35, 1.3.1-7, 1.4.1-2, 2.1-7, 3.1.1, 3.2.1-2,
    // 4.1.1-10, 4.2.1-13, 5.1.1-6, 5.2.1-9, 5.3.1-2, 5.4.1-2, 5.5.1, 5.7.1-4.
    assert_eq!(items.len(), 122);
    let mut failed = Vec::new();
    let (mut holds, mut not_applicable) = (0, 0);
    for (id, title, verdict) in &items {
        match verdict {
            Holds(check) => match check(&cfg) {
                Ok(()) => holds += 1,
                Err(why) => failed.push(format!("{id} {title}: {why}")),
            },
            NotApplicable(reason) => {
                assert!(reason.len() > 20, "{id}: say why");
                not_applicable += 1;
            }
        }
    }
    eprintln!(
        "CIS 1.20: {holds} hold, {not_applicable} not applicable, {} fail",
        failed.len()
    );
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
