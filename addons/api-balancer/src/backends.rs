//! The list of API servers: a file with one `host:port` per line, written by `strata apply`
//! and re-read while the balancer runs.

use std::fmt;

/// An API server's address: a host (name, IPv4 or IPv6 address) and a port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address {
    pub host: String,
    pub port: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("line {line}: {text:?} is not host:port (an IPv6 address in brackets: [fd00::1]:6443)")]
    NotHostPort { line: usize, text: String },
    #[error("line {line}: {text:?} is listed twice")]
    Duplicate { line: usize, text: String },
    #[error("no API server is listed")]
    Empty,
}

impl Address {
    /// `host:port`, `[v6]:port`.
    pub fn parse(s: &str) -> Option<Self> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, rest) = rest.split_once(']')?;
            host.parse::<std::net::Ipv6Addr>().ok()?;
            (host, rest.strip_prefix(':')?)
        } else {
            let (host, port) = s.rsplit_once(':')?;
            if host.contains(':') {
                return None;
            }
            (host, port)
        };
        let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
        let valid = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
        valid.then(|| Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The addresses of a backends file, in its order: blank lines and `#` comments skipped.
pub fn parse(text: &str) -> Result<Vec<Address>, ParseError> {
    let mut out: Vec<Address> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let a = Address::parse(line).ok_or_else(|| ParseError::NotHostPort {
            line: i + 1,
            text: line.to_owned(),
        })?;
        if out.contains(&a) {
            return Err(ParseError::Duplicate {
                line: i + 1,
                text: line.to_owned(),
            });
        }
        out.push(a);
    }
    if out.is_empty() {
        return Err(ParseError::Empty);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_ports_comments() {
        let list =
            parse("# API servers\n198.18.0.2:6443\n\n[fd00::2]:6443 # v6\ncp3.example:443\n")
                .expect("valid");
        let shown: Vec<String> = list.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["198.18.0.2:6443", "[fd00::2]:6443", "cp3.example:443"]
        );
        assert_eq!(list[1].host, "fd00::2");
    }

    #[test]
    fn bad_lines_are_named() {
        assert_eq!(
            parse("198.18.0.2:6443\n198.18.0.3\n"),
            Err(ParseError::NotHostPort {
                line: 2,
                text: "198.18.0.3".into()
            })
        );
        assert_eq!(
            parse("a:1\na:1\n"),
            Err(ParseError::Duplicate {
                line: 2,
                text: "a:1".into()
            })
        );
        assert_eq!(parse("# nothing\n"), Err(ParseError::Empty));
        for bad in ["fd00::1:6443", "a:0", "a:70000", ":6443", "[zz]:1", "a b:1"] {
            assert!(Address::parse(bad).is_none(), "{bad}");
        }
    }
}
