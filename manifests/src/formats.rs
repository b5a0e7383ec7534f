//! String formats of the Cluster file, each with a parser that says why a value is wrong.
//!
//! The same parsers back the JSON Schema `format` keywords (so that every bad value in a file
//! is found in one pass) and the typed values' deserialization.

use std::net::IpAddr;

use ipnet::IpNet;

/// Checks a string; the error says why it is wrong.
pub type FormatCheck = fn(&str) -> Result<(), String>;

/// Every custom format name used in the schema, with its check.
pub const FORMATS: &[(&str, FormatCheck)] = &[
    ("cidr", |s| parse_cidr(s).map(drop)),
    ("host-address", |s| parse_host_address(s).map(drop)),
    ("dns-label", check_dns_label),
    ("dns-subdomain", check_dns_subdomain),
    ("duration", |s| parse_duration(s).map(drop)),
    ("kubernetes-version", |s| {
        parse_kubernetes_version(s).map(drop)
    }),
    ("endpoint", check_endpoint),
    ("time-of-day", |s| parse_time_of_day(s).map(drop)),
    ("time-zone", check_time_zone),
    ("ssh-fingerprint", check_ssh_fingerprint),
    ("percent", |s| parse_percent(s).map(drop)),
    ("image-reference", check_image_reference),
];

/// Why `value` does not match `format` (None when it does or the format is unknown).
pub fn format_problem(format: &str, value: &str) -> Option<String> {
    FORMATS
        .iter()
        .find(|(name, _)| *name == format)
        .and_then(|(_, check)| check(value).err())
}

/// An image reference by the distribution grammar containerd and the kubelet use:
/// `[REGISTRY[:PORT]/]REPOSITORY[:TAG][@ALGORITHM:HEX]`, repository in lower case.
pub fn check_image_reference(s: &str) -> Result<(), String> {
    let parsed = s
        .parse::<oci_spec::distribution::Reference>()
        .and_then(|r| {
            // As containerd normalizes it: `Strata/overlay` is docker.io's `Strata/overlay`,
            // which is refused for its capitals.
            if r.repository().chars().any(|c| c.is_ascii_uppercase()) {
                Err(oci_spec::distribution::ParseError::NameContainsUppercase)
            } else {
                Ok(())
            }
        });
    parsed.map_err(|e| {
        let (name, digest) = s.split_once('@').unwrap_or((s, ""));
        // The first component names a registry when it looks like a host (distribution's rule).
        let repository = match name.split_once('/') {
            Some((host, rest)) if host.contains(['.', ':']) || host == "localhost" => rest,
            _ => name,
        };
        let repository = repository.split_once(':').map_or(repository, |(r, _tag)| r);
        let why = if s.contains("://") {
            "a reference has no URL scheme".to_owned()
        } else if repository.chars().any(|c| c.is_ascii_uppercase()) {
            "the repository must be lower case".to_owned()
        } else if !digest.is_empty() {
            format!("the digest must be sha256:<64 hex digits> (or sha384, sha512); {e}")
        } else {
            e.to_string()
        };
        format!(
            "`{s}` is not an image reference ({why}); for example \
                 registry.example.com/strata/overlay:0.1.0 or \
                 registry.example.com/strata/overlay@sha256:<64 hex digits>"
        )
    })
}

pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let net: IpNet = s
        .parse()
        .map_err(|_| format!("`{s}` is not a CIDR block such as 10.244.0.0/16"))?;
    if net.trunc() != net {
        return Err(format!(
            "`{s}` has bits set after the /{} prefix; did you mean {}?",
            net.prefix_len(),
            net.trunc()
        ));
    }
    Ok(net)
}

/// A host is reached by IP address or DNS name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostAddr {
    Ip(IpAddr),
    Name(String),
}

pub fn parse_host_address(s: &str) -> Result<HostAddr, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(HostAddr::Ip(ip));
    }
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("`{s}` is not a valid IPv4 address"));
    }
    check_dns_subdomain(s)
        .map(|()| HostAddr::Name(s.to_owned()))
        .map_err(|_| format!("`{s}` is neither an IP address nor a DNS name"))
}

/// RFC 1123 label: lower-case letters, digits and '-', 1 to 63 characters, starting and
/// ending with a letter or digit (Kubernetes node and object names).
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn check_dns_label(s: &str) -> Result<(), String> {
    if is_dns_label(s) {
        Ok(())
    } else {
        let suggestion: String = s
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect::<String>()
            .trim_matches('-')
            .chars()
            .take(63)
            .collect();
        let mut msg = format!(
            "`{s}` is not a DNS-1123 label (a-z, 0-9 and '-', at most 63, no '-' at either end)"
        );
        if is_dns_label(&suggestion) {
            msg.push_str(&format!("; for example `{suggestion}`"));
        }
        Err(msg)
    }
}

pub fn check_dns_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 || s.split('.').any(|l| !is_dns_label(l)) {
        return Err(format!(
            "`{s}` is not a DNS name (dot-separated DNS-1123 labels, at most 253 characters)"
        ));
    }
    Ok(())
}

/// Durations and percentages are read as the update API reads them (one parser each).
pub use strata_update_api::{format_duration, parse_duration, parse_percent};

pub fn parse_kubernetes_version(s: &str) -> Result<(u32, u32, u32), String> {
    let t = s.strip_prefix('v').unwrap_or(s);
    let parts: Vec<&str> = t.split('.').collect();
    let nums: Option<Vec<u32>> = parts.iter().map(|p| p.parse().ok()).collect();
    match nums.as_deref() {
        Some([a, b, c]) => Ok((*a, *b, *c)),
        _ => Err(format!(
            "`{s}` is not a Kubernetes release version MAJOR.MINOR.PATCH such as 1.20.2"
        )),
    }
}

/// `host:port` of the API server; empty means "the first control-plane host".
pub fn check_endpoint(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    let bad = || format!("`{s}` is not host:port, e.g. 198.18.0.2:6443 or api.example.com:6443");
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:").ok_or_else(bad)?;
        (h, p)
    } else {
        s.rsplit_once(':').ok_or_else(bad)?
    };
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    parse_host_address(host).map(drop).map_err(|_| bad())
}

pub fn parse_time_of_day(s: &str) -> Result<(u8, u8), String> {
    let bad = || format!("`{s}` is not a time of day HH:MM (24-hour clock), e.g. 02:00");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (u8, u8) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok((h, m))
}

pub fn check_time_zone(s: &str) -> Result<(), String> {
    jiff::tz::db()
        .get(s)
        .map(drop)
        .map_err(|_| format!("`{s}` is not an IANA time zone such as UTC or Europe/Berlin"))
}

/// An OpenSSH SHA-256 host key fingerprint, as `ssh-keygen -lf` prints it.
pub fn check_ssh_fingerprint(s: &str) -> Result<(), String> {
    let body = s.strip_prefix("SHA256:").ok_or_else(|| {
        format!(
            "`{s}` is not a SHA256 fingerprint; `ssh-keygen -lf KEY.pub` prints one (SHA256:...)"
        )
    })?;
    let b64 = body.len() == 43
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
    if b64 {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a SHA256 fingerprint (43 base64 characters after `SHA256:`)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn cidrs() {
        assert!(parse_cidr("10.244.0.0/16").is_ok());
        assert!(parse_cidr("fd00::/64").is_ok());
        let e = parse_cidr("10.244.0.1/16").expect_err("host bits");
        assert!(e.contains("did you mean 10.244.0.0/16"), "{e}");
        assert!(parse_cidr("10.244.0.0").is_err());
        assert!(parse_cidr("10.300.0.0/16").is_err());
    }

    #[test]
    fn addresses() {
        assert_eq!(
            parse_host_address("198.18.0.2"),
            Ok(HostAddr::Ip("198.18.0.2".parse().expect("ip")))
        );
        assert!(matches!(
            parse_host_address("node-1.example.com"),
            Ok(HostAddr::Name(_))
        ));
        assert!(parse_host_address("198.18.0.300").is_err());
        assert!(parse_host_address("bad_name").is_err());
    }

    #[test]
    fn labels() {
        assert!(check_dns_label("cp1").is_ok());
        assert!(check_dns_label("a-b-9").is_ok());
        let e = check_dns_label("Control_Plane").expect_err("upper case");
        assert!(e.contains("`control-plane`"), "{e}");
        assert!(check_dns_label("-a").is_err());
        assert!(check_dns_label(&"a".repeat(64)).is_err());
        assert!(check_dns_label("").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("8760h"),
            Ok(Duration::from_secs(8760 * 3600))
        );
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("45s"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("365d").expect_err("days").contains("8760h"));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
        for s in ["8760h", "1h30m", "45s", "2h0m5s"] {
            let d = parse_duration(s).expect("parses");
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }

    #[test]
    fn versions_endpoints_times_zones() {
        assert_eq!(parse_kubernetes_version("1.20.2"), Ok((1, 20, 2)));
        assert_eq!(parse_kubernetes_version("v1.31.0"), Ok((1, 31, 0)));
        assert!(parse_kubernetes_version("1.20").is_err());
        assert!(check_endpoint("").is_ok());
        assert!(check_endpoint("198.18.0.2:6443").is_ok());
        assert!(check_endpoint("[fd00::1]:6443").is_ok());
        assert!(check_endpoint("api.example.com:443").is_ok());
        assert!(check_endpoint("api.example.com").is_err());
        assert!(check_endpoint("api:0").is_err());
        assert_eq!(parse_time_of_day("02:00"), Ok((2, 0)));
        assert!(parse_time_of_day("24:00").is_err());
        assert!(parse_time_of_day("2:00").is_err());
        assert!(check_time_zone("Europe/Berlin").is_ok());
        assert!(check_time_zone("UTC").is_ok());
        assert!(check_time_zone("Mars/Olympus").is_err());
        assert_eq!(parse_percent("25%"), Ok(25));
        assert!(parse_percent("0%").is_err());
        assert!(parse_percent("101%").is_err());
        assert!(
            check_ssh_fingerprint("SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s").is_ok()
        );
        assert!(check_ssh_fingerprint("MD5:aa").is_err());
    }

    #[test]
    fn image_references_follow_the_distribution_grammar() {
        let digest = format!("sha256:{}", "0a".repeat(32));
        for good in [
            "busybox".to_owned(),
            "k8s.gcr.io/pause:3.2".to_owned(),
            "10.0.0.1:5000/strata/overlay:0.1.0".to_owned(),
            "localhost/strata/overlay".to_owned(),
            "r.example/strata/overlay:V1.0_rc".to_owned(),
            format!("registry.example.com/strata/overlay@{digest}"),
            format!("registry.example.com/strata/overlay:0.1.0@{digest}"),
        ] {
            assert_eq!(check_image_reference(&good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "Strata/Overlay:1",
            "registry.example.com/overlay:",
            "registry.example.com/overlay@sha256:abc",
            "registry.example.com/overlay@md5:0a0a",
            "registry.example.com//overlay",
            "https://registry.example.com/overlay",
        ] {
            let e = check_image_reference(bad).expect_err(bad);
            assert!(e.contains("is not an image reference"), "{e}");
        }
        for (bad, why) in [
            ("Strata/overlay:1", "the repository must be lower case"),
            ("R.example/Overlay", "the repository must be lower case"),
            ("r.example/Overlay", "the repository must be lower case"),
            ("https://r.example/overlay", "no URL scheme"),
            ("r.example/overlay@sha256:abc", "sha256:<64 hex digits>"),
            ("r.example/overlay:V1@sha256:abc", "sha256:<64 hex digits>"),
        ] {
            let e = check_image_reference(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn every_format_is_listed_once() {
        let mut names: Vec<&str> = FORMATS.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len());
        assert_eq!(format_problem("no-such-format", "x"), None);
        assert!(format_problem("cidr", "x").is_some());
    }
}
