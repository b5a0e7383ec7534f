//! Kubeconfig files with the CA and the client certificate embedded.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;

#[derive(Serialize)]
struct Kubeconfig<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
    kind: &'a str,
    clusters: Vec<Named<ClusterEntry>>,
    users: Vec<Named<UserEntry>>,
    contexts: Vec<Named<ContextEntry<'a>>>,
    #[serde(rename = "current-context")]
    current_context: String,
}

#[derive(Serialize)]
struct Named<T> {
    name: String,
    #[serde(flatten)]
    value: T,
}

#[derive(Serialize)]
struct ClusterEntry {
    cluster: ClusterData,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct ClusterData {
    certificate_authority_data: String,
    server: String,
}

#[derive(Serialize)]
struct UserEntry {
    user: UserData,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct UserData {
    client_certificate_data: String,
    client_key_data: String,
}

#[derive(Serialize)]
struct ContextEntry<'a> {
    context: ContextData<'a>,
}

#[derive(Serialize)]
struct ContextData<'a> {
    cluster: &'a str,
    user: &'a str,
}

/// A kubeconfig for `user` of `cluster` at `server` (an https URL).
pub fn render(
    cluster: &str,
    server: &str,
    user: &str,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<String, String> {
    let context = format!("{user}@{cluster}");
    let doc = Kubeconfig {
        api_version: "v1",
        kind: "Config",
        clusters: vec![Named {
            name: cluster.into(),
            value: ClusterEntry {
                cluster: ClusterData {
                    certificate_authority_data: STANDARD.encode(ca_pem),
                    server: server.into(),
                },
            },
        }],
        users: vec![Named {
            name: user.into(),
            value: UserEntry {
                user: UserData {
                    client_certificate_data: STANDARD.encode(cert_pem),
                    client_key_data: STANDARD.encode(key_pem),
                },
            },
        }],
        contexts: vec![Named {
            name: context.clone(),
            value: ContextEntry {
                context: ContextData { cluster, user },
            },
        }],
        current_context: context,
    };
    // Plain one-line scalars, as kubectl writes them (no folded block scalars).
    let mut options = serde_saphyr::SerializerOptions::default();
    options.prefer_block_scalars = false;
    serde_saphyr::to_string_with_options(&doc, options)
        .map_err(|e| format!("writing a kubeconfig: {e}"))
}

/// The server URL of a kubeconfig [`render`] wrote.
pub fn server_of(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix("server:"))
        .map(str::trim)
}

/// A kubeconfig [`render`] wrote, naming `server` (an https URL) instead: a component's
/// identity used from elsewhere (its own kubeconfig names the node-local balancer).
pub fn with_server(text: &str, server: &str) -> String {
    let mut out: String = text
        .lines()
        .map(|l| match l.find("server:") {
            Some(i) if l[..i].trim().is_empty() => format!("{}server: {server}", &l[..i]),
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    out.push('\n');
    out
}
