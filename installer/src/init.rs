//! `strata init`: writes a Cluster file from answers given in a terminal wizard or as flags.
//!
//! Both paths fill the same [`Answers`] and the file is only written after the complete
//! validator accepted it, so what `init` writes always passes `strata validate`.

use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};
use dialoguer::theme::ColorfulTheme;
use dialoguer::{Confirm, Input, MultiSelect, Select};
use ipnet::IpNet;
use serde_json::{Value, json};
use strata_manifests::formats::{self, HostAddr};
use strata_manifests::model::{API_VERSION, DEFAULT_KUBERNETES_VERSION, Role};
use strata_manifests::validate::{Context, SUPPORTED_KUBERNETES_MINORS};

use crate::cli::{InitArgs, PlatformChoice};

const DEFAULT_POD_CIDR: &str = "10.244.0.0/16";
const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";
const DEFAULT_SSH_KEY: &str = "~/.ssh/id_ed25519";
/// Addresses the local platform suggests: the benchmarking range, never a real network.
const LOCAL_FIRST_ADDRESS: [u8; 4] = [198, 18, 0, 2];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAnswer {
    pub name: String,
    pub address: Option<String>,
    pub roles: Vec<Role>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answers {
    pub name: String,
    pub platform: PlatformChoice,
    pub ssh_user: String,
    pub ssh_port: u16,
    pub ssh_key: String,
    pub hosts: Vec<HostAnswer>,
    pub kubernetes_version: String,
    pub pod_cidr: String,
    pub service_cidr: String,
}

impl Answers {
    /// The Cluster file text: only what was answered, everything else defaulted.
    pub fn to_yaml(&self) -> Result<String> {
        let hosts: Vec<Value> = self
            .hosts
            .iter()
            .map(|h| {
                let mut m = serde_json::Map::new();
                m.insert("name".into(), json!(h.name));
                if let Some(a) = &h.address {
                    m.insert("address".into(), json!(a));
                }
                let roles: Vec<&str> = h.roles.iter().map(Role::as_str).collect();
                m.insert("roles".into(), json!(roles));
                Value::Object(m)
            })
            .collect();
        let mut spec = serde_json::Map::new();
        spec.insert(
            "kubernetes".into(),
            json!({ "version": self.kubernetes_version }),
        );
        match self.platform {
            PlatformChoice::Ssh => {
                spec.insert("platform".into(), json!({ "ssh": {} }));
                spec.insert(
                    "ssh".into(),
                    json!({ "user": self.ssh_user, "port": self.ssh_port, "privateKey": self.ssh_key }),
                );
            }
            PlatformChoice::Local => {
                spec.insert("platform".into(), json!({ "local": {} }));
            }
        }
        spec.insert("hosts".into(), Value::Array(hosts));
        spec.insert(
            "network".into(),
            json!({ "podCIDR": self.pod_cidr, "serviceCIDR": self.service_cidr }),
        );
        let doc = json!({
            "apiVersion": API_VERSION,
            "kind": "Cluster",
            "metadata": { "name": self.name },
            "spec": Value::Object(spec),
        });
        let body = serde_saphyr::to_string(&doc).context("serializing the Cluster file")?;
        Ok(format!(
            "# Cluster file written by `strata init`. Check it with `strata validate -f FILE`;\n\
             # `strata schema` lists every field and its default.\n{body}"
        ))
    }
}

/// Runs `strata init`.
pub fn run(args: &InitArgs) -> Result<()> {
    if args.output.exists() && !args.force && args.non_interactive {
        bail!(
            "{} exists; pass --force to overwrite it or -o to write elsewhere",
            args.output.display()
        );
    }
    let answers = if args.non_interactive {
        from_flags(args)?
    } else {
        if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
            bail!(
                "`strata init` asks its questions in a terminal, and there is none here.\n\
                 In CI or scripts, give the answers as flags:\n  \
                 strata init --non-interactive --name demo --platform ssh \\\n    \
                 --host cp1@198.18.0.2:etcd,control-plane --host w1@198.18.0.3:worker\n\
                 or start from a file in examples/ (strata validate -f FILE checks it)."
            );
        }
        match wizard(args)? {
            Some(a) => a,
            None => {
                eprintln!("Nothing written.");
                return Ok(());
            }
        }
    };
    let text = answers.to_yaml()?;
    // The full validator has the last word: the file is written only if it passes.
    let ctx = Context::for_file(&args.output);
    match strata_manifests::load_str(&text, &ctx) {
        Ok(loaded) => {
            if !loaded.report.diagnostics.is_empty() {
                eprint!("{}", loaded.report);
            }
        }
        Err(report) => {
            eprint!("{report}");
            bail!(
                "the answers do not make a valid cluster; nothing was written to {}",
                args.output.display()
            );
        }
    }
    write_new_file(&args.output, &text)?;
    eprintln!(
        "Wrote {}. Next: `strata validate -f {}`.",
        args.output.display(),
        args.output.display()
    );
    Ok(())
}

fn write_new_file(path: &Path, text: &str) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "cluster.yaml".into())
    ));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Checks shared by the wizard and the flags (each returns the reason shown to the user).

fn check_name(s: &str) -> Result<(), String> {
    formats::check_dns_label(s)
}

fn check_address(s: &str, platform: PlatformChoice, taken: &[HostAnswer]) -> Result<(), String> {
    let addr = formats::parse_host_address(s)?;
    if platform == PlatformChoice::Local && matches!(addr, HostAddr::Name(_)) {
        return Err("local hosts need an IP address".into());
    }
    if let Some(h) = taken.iter().find(|h| h.address.as_deref() == Some(s)) {
        return Err(format!("{s} is already the address of {}", h.name));
    }
    Ok(())
}

fn check_version(s: &str) -> Result<(), String> {
    let (major, minor, _) = formats::parse_kubernetes_version(s)?;
    if major != 1 || !SUPPORTED_KUBERNETES_MINORS.contains(&minor) {
        return Err(format!(
            "Strata installs Kubernetes 1.{} to 1.{}",
            SUPPORTED_KUBERNETES_MINORS.start(),
            SUPPORTED_KUBERNETES_MINORS.end()
        ));
    }
    Ok(())
}

fn host_ips(hosts: &[HostAnswer]) -> Vec<(String, IpAddr)> {
    hosts
        .iter()
        .filter_map(|h| {
            let ip = h.address.as_deref()?.parse().ok()?;
            Some((h.name.clone(), ip))
        })
        .collect()
}

fn check_cidr(s: &str, other: Option<(&str, IpNet)>, hosts: &[HostAnswer]) -> Result<(), String> {
    let net = formats::parse_cidr(s)?;
    if let Some((what, o)) = other
        && (net.contains(&o.network()) || o.contains(&net.network()))
    {
        return Err(format!("{net} overlaps the {what} CIDR {o}"));
    }
    if let Some((name, ip)) = host_ips(hosts).into_iter().find(|(_, ip)| net.contains(ip)) {
        return Err(format!("{net} contains the address {ip} of host {name}"));
    }
    Ok(())
}

fn check_roles(roles: &[Role]) -> Result<(), String> {
    if roles.is_empty() {
        Err("choose at least one role (space toggles, enter confirms)".into())
    } else {
        Ok(())
    }
}

/// What the set of hosts still lacks (etcd, control-plane), or None.
fn missing_roles(hosts: &[HostAnswer]) -> Option<String> {
    let missing: Vec<&str> = [Role::Etcd, Role::ControlPlane]
        .into_iter()
        .filter(|r| !hosts.iter().any(|h| h.roles.contains(r)))
        .map(|r| r.as_str())
        .collect();
    (!missing.is_empty()).then(|| missing.join(" and "))
}

// ---------------------------------------------------------------------------------------
// Flags

fn parse_host_flag(s: &str) -> Result<HostAnswer> {
    let (left, roles) = s.rsplit_once(':').ok_or_else(|| {
        anyhow!("--host {s}: expected NAME[@ADDRESS]:ROLE[,ROLE], e.g. cp1@198.18.0.2:etcd,control-plane")
    })?;
    let (name, address) = match left.split_once('@') {
        Some((n, a)) => (n, Some(a.to_owned())),
        None => (left, None),
    };
    let roles = roles
        .split(',')
        .map(|r| {
            Role::ALL
                .into_iter()
                .find(|x| x.as_str() == r.trim())
                .ok_or_else(|| {
                    anyhow!("--host {s}: unknown role `{r}` (roles: etcd, control-plane, worker)")
                })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(HostAnswer {
        name: name.to_owned(),
        address,
        roles,
    })
}

fn from_flags(args: &InitArgs) -> Result<Answers> {
    let name = args
        .name
        .clone()
        .ok_or_else(|| anyhow!("--non-interactive needs --name"))?;
    if args.hosts.is_empty() {
        bail!("--non-interactive needs at least one --host NAME[@ADDRESS]:ROLES");
    }
    let hosts = args
        .hosts
        .iter()
        .map(|h| parse_host_flag(h))
        .collect::<Result<Vec<_>>>()?;
    Ok(Answers {
        name,
        platform: args.platform.unwrap_or(PlatformChoice::Ssh),
        ssh_user: args.ssh_user.clone().unwrap_or_else(|| "root".into()),
        ssh_port: args.ssh_port.unwrap_or(22),
        ssh_key: args
            .ssh_key
            .clone()
            .unwrap_or_else(|| DEFAULT_SSH_KEY.into()),
        hosts,
        kubernetes_version: args
            .kubernetes_version
            .clone()
            .unwrap_or_else(|| DEFAULT_KUBERNETES_VERSION.into()),
        pod_cidr: args
            .pod_cidr
            .clone()
            .unwrap_or_else(|| DEFAULT_POD_CIDR.into()),
        service_cidr: args
            .service_cidr
            .clone()
            .unwrap_or_else(|| DEFAULT_SERVICE_CIDR.into()),
    })
}

// ---------------------------------------------------------------------------------------
// Wizard

fn suggested_address(n: usize) -> String {
    let [a, b, c, d] = LOCAL_FIRST_ADDRESS;
    let v = u32::from_be_bytes([a, b, c, d]) + n as u32;
    std::net::Ipv4Addr::from(v).to_string()
}

fn check_key_file(s: &str, output: &Path) -> Result<(), String> {
    let path = Context::for_file(output).resolve(s);
    let meta = std::fs::metadata(&path).map_err(|_| {
        format!(
            "{} does not exist; create it with `ssh-keygen -t ed25519 -f {}`",
            path.display(),
            path.display()
        )
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "{} is accessible by other users (mode {mode:04o}); run `chmod 600 {}`",
                path.display(),
                path.display()
            ));
        }
    }
    if !meta.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    Ok(())
}

/// The SSH user, port and key (asked only for the ssh platform).
fn ask_ssh(
    t: &ColorfulTheme,
    args: &InitArgs,
    platform: PlatformChoice,
) -> Result<(String, u16, String)> {
    let (mut ssh_user, mut ssh_port, mut ssh_key) =
        ("root".to_string(), 22u16, DEFAULT_SSH_KEY.to_string());
    if platform == PlatformChoice::Ssh {
        ssh_user = Input::with_theme(t)
            .with_prompt("SSH user (root, or a user with password-less sudo)")
            .default(ssh_user)
            .validate_with(|s: &String| {
                if s.is_empty() || s.contains(char::is_whitespace) {
                    Err("a user name without spaces")
                } else {
                    Ok(())
                }
            })
            .interact_text()?;
        ssh_port = Input::with_theme(t)
            .with_prompt("SSH port")
            .default(ssh_port)
            .validate_with(|p: &u16| if *p == 0 { Err("1 to 65535") } else { Ok(()) })
            .interact_text()?;
        let output = args.output.clone();
        ssh_key = Input::with_theme(t)
            .with_prompt("SSH private key")
            .default(ssh_key)
            .validate_with(move |s: &String| check_key_file(s, &output))
            .interact_text()?;
    }

    Ok((ssh_user, ssh_port, ssh_key))
}

/// The hosts, one by one, until the cluster has every role it needs and no more are added.
fn ask_hosts(t: &ColorfulTheme, platform: PlatformChoice) -> Result<Vec<HostAnswer>> {
    let mut hosts: Vec<HostAnswer> = Vec::new();
    loop {
        let n = hosts.len();
        eprintln!("\nHost {}", n + 1);
        let default_name = match n {
            0 => "cp1".to_string(),
            _ => format!("w{n}"),
        };
        let taken: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
        let name: String = Input::with_theme(t)
            .with_prompt("  name")
            .default(default_name)
            .validate_with(|s: &String| {
                check_name(s)?;
                if taken.contains(s) {
                    return Err(format!("a host named {s} exists already"));
                }
                Ok(())
            })
            .interact_text()?;
        let prior = hosts.clone();
        let mut address_prompt = Input::<String>::with_theme(t).with_prompt("  address");
        if platform == PlatformChoice::Local {
            address_prompt = address_prompt.default(suggested_address(n));
        }
        let address: String = address_prompt
            .validate_with(|s: &String| check_address(s, platform, &prior))
            .interact_text()?;
        let defaults = match n {
            0 => [true, true, false],
            _ => [false, false, true],
        };
        let roles = loop {
            let picked = MultiSelect::with_theme(t)
                .with_prompt("  roles (space toggles, enter confirms)")
                .items(Role::ALL.map(|r| r.as_str()))
                .defaults(&defaults)
                .interact()?;
            let roles: Vec<Role> = picked.into_iter().map(|i| Role::ALL[i]).collect();
            match check_roles(&roles) {
                Ok(()) => break roles,
                Err(why) => eprintln!("  {why}"),
            }
        };
        hosts.push(HostAnswer {
            name,
            address: Some(address),
            roles,
        });
        if let Some(missing) = missing_roles(&hosts) {
            eprintln!("  The cluster still needs a host with the role {missing}.");
            continue;
        }
        if !Confirm::with_theme(t)
            .with_prompt("Add another host?")
            .default(hosts.len() < 3)
            .interact()?
        {
            break;
        }
    }

    Ok(hosts)
}

fn wizard(args: &InitArgs) -> Result<Option<Answers>> {
    let theme = ColorfulTheme::default();
    let t = &theme;
    eprintln!("Strata: describe your cluster. Enter accepts the answer in parentheses.\n");

    if args.output.exists()
        && !args.force
        && !Confirm::with_theme(t)
            .with_prompt(format!("{} exists. Overwrite it?", args.output.display()))
            .default(false)
            .interact()?
    {
        return Ok(None);
    }

    let name: String = Input::with_theme(t)
        .with_prompt("Cluster name")
        .default("demo".into())
        .validate_with(|s: &String| check_name(s))
        .interact_text()?;

    let platform = match Select::with_theme(t)
        .with_prompt("Where are the hosts?")
        .items([
            "ssh: existing machines I reach over SSH",
            "local: machines created on this computer (systemd-nspawn)",
        ])
        .default(0)
        .interact()?
    {
        0 => PlatformChoice::Ssh,
        _ => PlatformChoice::Local,
    };

    let (ssh_user, ssh_port, ssh_key) = ask_ssh(t, args, platform)?;
    let hosts = ask_hosts(t, platform)?;

    eprintln!();
    let kubernetes_version: String = Input::with_theme(t)
        .with_prompt("Kubernetes version")
        .default(DEFAULT_KUBERNETES_VERSION.into())
        .validate_with(|s: &String| check_version(s))
        .interact_text()?;
    let pod_cidr: String = Input::with_theme(t)
        .with_prompt("Pod network CIDR")
        .default(DEFAULT_POD_CIDR.into())
        .validate_with(|s: &String| check_cidr(s, None, &hosts))
        .interact_text()?;
    let pod_net = formats::parse_cidr(&pod_cidr).map_err(|e| anyhow!(e))?;
    let service_cidr: String = Input::with_theme(t)
        .with_prompt("Service network CIDR")
        .default(DEFAULT_SERVICE_CIDR.into())
        .validate_with(|s: &String| check_cidr(s, Some(("pod", pod_net)), &hosts))
        .interact_text()?;

    let answers = Answers {
        name,
        platform,
        ssh_user,
        ssh_port,
        ssh_key,
        hosts,
        kubernetes_version,
        pod_cidr,
        service_cidr,
    };
    eprintln!("\nSummary\n{}", summary(&answers));
    if !Confirm::with_theme(t)
        .with_prompt(format!("Write {}?", args.output.display()))
        .default(true)
        .interact()?
    {
        return Ok(None);
    }
    Ok(Some(answers))
}

fn summary(a: &Answers) -> String {
    let mut s = format!(
        "  cluster     {}\n  kubernetes  {}\n  platform    {}\n",
        a.name,
        a.kubernetes_version,
        match a.platform {
            PlatformChoice::Ssh =>
                format!("ssh ({}@:{} with {})", a.ssh_user, a.ssh_port, a.ssh_key),
            PlatformChoice::Local => "local (systemd-nspawn)".into(),
        }
    );
    for h in &a.hosts {
        let roles: Vec<&str> = h.roles.iter().map(Role::as_str).collect();
        s.push_str(&format!(
            "  host        {:<10} {:<16} {}\n",
            h.name,
            h.address.as_deref().unwrap_or("(assigned)"),
            roles.join(", ")
        ));
    }
    s.push_str(&format!(
        "  pods        {}\n  services    {}\n",
        a.pod_cidr, a.service_cidr
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_flags_parse() {
        let h = parse_host_flag("cp1@198.18.0.2:etcd,control-plane").expect("valid");
        assert_eq!(h.name, "cp1");
        assert_eq!(h.address.as_deref(), Some("198.18.0.2"));
        assert_eq!(h.roles, vec![Role::Etcd, Role::ControlPlane]);
        let h = parse_host_flag("w1@fd00::3:worker").expect("ipv6");
        assert_eq!(h.address.as_deref(), Some("fd00::3"));
        let h = parse_host_flag("w2:worker").expect("no address");
        assert_eq!(h.address, None);
        let e = parse_host_flag("w2:master")
            .expect_err("bad role")
            .to_string();
        assert!(e.contains("unknown role `master`"), "{e}");
        assert!(parse_host_flag("w2").is_err());
    }

    #[test]
    fn checks_explain_themselves() {
        let hosts = vec![HostAnswer {
            name: "cp1".into(),
            address: Some("198.18.0.2".into()),
            roles: vec![Role::Etcd],
        }];
        assert!(
            check_address("198.18.0.2", PlatformChoice::Ssh, &hosts)
                .expect_err("dup")
                .contains("already the address of cp1")
        );
        assert!(check_address("node.example.com", PlatformChoice::Local, &[]).is_err());
        assert!(check_address("node.example.com", PlatformChoice::Ssh, &[]).is_ok());
        let pod = formats::parse_cidr("10.244.0.0/16").expect("cidr");
        assert!(
            check_cidr("10.0.0.0/8", Some(("pod", pod)), &[])
                .expect_err("overlap")
                .contains("overlaps the pod CIDR")
        );
        assert!(
            check_cidr("198.18.0.0/16", None, &hosts)
                .expect_err("host inside")
                .contains("198.18.0.2 of host cp1")
        );
        assert!(check_version("1.19.0").is_err());
        assert!(check_version("1.20.2").is_ok());
        assert_eq!(missing_roles(&hosts).as_deref(), Some("control-plane"));
        assert_eq!(suggested_address(0), "198.18.0.2");
        assert_eq!(suggested_address(300), "198.18.1.46");
    }

    #[test]
    fn answers_render_a_valid_file() {
        let a = Answers {
            name: "demo".into(),
            platform: PlatformChoice::Local,
            ssh_user: "root".into(),
            ssh_port: 22,
            ssh_key: DEFAULT_SSH_KEY.into(),
            hosts: vec![
                HostAnswer {
                    name: "cp1".into(),
                    address: Some("198.18.0.2".into()),
                    roles: vec![Role::Etcd, Role::ControlPlane],
                },
                HostAnswer {
                    name: "w1".into(),
                    address: None,
                    roles: vec![Role::Worker],
                },
            ],
            kubernetes_version: "1.20.2".into(),
            pod_cidr: DEFAULT_POD_CIDR.into(),
            service_cidr: DEFAULT_SERVICE_CIDR.into(),
        };
        let text = a.to_yaml().expect("yaml");
        let ctx = Context {
            file: "t.yaml".into(),
            base_dir: ".".into(),
            home: None,
        };
        let loaded =
            strata_manifests::load_str(&text, &ctx).unwrap_or_else(|r| panic!("{r}\n{text}"));
        assert_eq!(loaded.cluster.spec.hosts.len(), 2);
        assert_eq!(loaded.cluster.name(), "demo");
        assert!(text.contains("version: 1.20.2") || text.contains("version: \"1.20.2\""));
    }
}
