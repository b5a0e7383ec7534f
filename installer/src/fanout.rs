//! The asset fan-out of the upload phase: this computer sends each asset file once, and
//! hosts that have it pass it on to hosts that need it (`strata-fetch`, itself passed on
//! first, received with bash), in rounds where every holder serves one peer: the holders of
//! a file double each round. Peers serve public assets only (binaries, CNI plugins, image archives; never a
//! rendered file, which may hold keys), only to requests with the apply's token, only while
//! the apply holds the server's standard input open; every file is verified against its
//! sha256 on arrival before it is renamed into place. A transfer between hosts that fails
//! (a firewall, a host gone) is done from this computer instead, and said so.
//!
//! Files with an https URL (an https asset source, or official downloads through a mirror)
//! come first: each host that needs them fetches them from there itself, verified; only
//! what a host could not fetch goes through the fan-out, downloaded here first, and a host
//! that fetched a file serves it to its peers like any holder.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use anyhow::{Context as _, Result};
use futures::future::join_all;
use strata_manifests::catalog::{BIN_DIR, CNI_BIN_DIR, FETCH_PORT};
use strata_manifests::model::Host;
use strata_manifests::plan::PhaseName;
use strata_platforms::ssh::{Running, quote};

use crate::assets::{Asset, IMAGE_DIR, MODE};
use crate::hosts::fail;

/// What the fan-out works on: the hosts, connected, and the assets that go to them (an
/// apply's, or an image archive `strata images import` sends).
pub struct Fleet<'a> {
    pub reporter: &'a crate::engine::Reporter,
    pub hosts: &'a [crate::hosts::HostConn],
    pub assets: &'a crate::assets::Assets,
}

/// The program hosts pass assets with (passed on first, see [`bootstrap_script`]).
pub const FETCH_PROGRAM: &str = "strata-fetch";

/// `strata-fetch` with the directories it may serve from and write to: the assets' only.
fn fetch_command(sub: &str) -> String {
    format!(
        "exec {BIN_DIR}/{FETCH_PROGRAM} {sub} --public-dir {BIN_DIR} --public-dir {CNI_BIN_DIR} \
         --public-dir {IMAGE_DIR}"
    )
}

/// Where a transfer comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// This computer, over SSH.
    Here,
    /// The host of that index, which holds the file.
    Peer(usize),
}

/// One file to one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    pub file: usize,
    pub to: usize,
    pub from: Source,
}

/// What the schedule knows of one file.
#[derive(Debug, Clone)]
pub struct File {
    pub size: u64,
    /// Sent from here to every host that needs it (a name a peer would not pass on).
    pub here_only: bool,
    /// Hosts that have it already, in host order.
    pub holders: Vec<usize>,
    /// Hosts that need it, in host order.
    pub needers: Vec<usize>,
}

/// The transfers, in rounds: round 0 from this computer (one copy of each file no host
/// has, each to the needer with the fewest bytes so far, so that the copies spread over
/// the hosts), then rounds in which each holder of a file sends it to one host that still
/// needs it. A host that receives a file in a round serves it from the next. Each file's
/// needers are taken in host order starting after its first holder, so that in each round
/// the hosts send to different hosts (a ring), not all to the first.
pub fn schedule(files: &[File], hosts: usize) -> Vec<Vec<Transfer>> {
    let mut rounds: Vec<Vec<Transfer>> = vec![Vec::new()];
    let mut seeded = vec![0u64; hosts];
    let mut holders: Vec<Vec<usize>> = Vec::with_capacity(files.len());
    let mut pending: Vec<VecDeque<usize>> = Vec::with_capacity(files.len());
    // The largest files first, so that the spreading balances bytes.
    let mut order: Vec<usize> = (0..files.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(files[i].size));
    for f in files {
        holders.push(f.holders.clone());
        pending.push(f.needers.iter().copied().collect());
    }
    for i in order {
        let f = &files[i];
        if f.here_only {
            for &to in &f.needers {
                rounds[0].push(Transfer {
                    file: i,
                    to,
                    from: Source::Here,
                });
            }
            pending[i].clear();
            continue;
        }
        if holders[i].is_empty() {
            let Some(pos) = (0..pending[i].len()).min_by_key(|&p| seeded[pending[i][p]]) else {
                continue;
            };
            let to = pending[i].remove(pos).unwrap_or_default();
            seeded[to] += f.size;
            rounds[0].push(Transfer {
                file: i,
                to,
                from: Source::Here,
            });
            holders[i].push(to);
        }
        // The ring: needers after the first holder come first.
        let first = holders[i][0];
        pending[i]
            .make_contiguous()
            .sort_by_key(|&h| (h + hosts - first - 1) % hosts.max(1));
    }
    while pending.iter().any(|p| !p.is_empty()) {
        let mut round = Vec::new();
        for (i, p) in pending.iter_mut().enumerate() {
            let serving = holders[i].clone();
            for from in serving {
                let Some(to) = p.pop_front() else { break };
                round.push(Transfer {
                    file: i,
                    to,
                    from: Source::Peer(from),
                });
                holders[i].push(to);
            }
        }
        rounds.push(round);
    }
    if rounds[0].is_empty() && rounds.len() == 1 {
        rounds.clear();
    }
    rounds
}

/// What the fan-out did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Per host (by index), the asset paths written.
    pub written: Vec<BTreeSet<String>>,
    /// Bytes of assets this computer sent.
    pub sent_here: u64,
    /// Bytes of assets hosts sent each other.
    pub sent_peers: u64,
    /// Bytes of assets hosts fetched from the asset source themselves.
    pub from_source: u64,
    /// The size of each asset some host received (its path on the hosts).
    pub distinct: BTreeMap<String, u64>,
}

/// `host` as it appears in a URL or a listen address (`[v6]`); None when the Cluster file
/// gives no address (the host cannot be a peer).
fn url_host(h: &Host) -> Option<String> {
    h.address.as_ref().map(|a| a.for_url())
}

/// Whether `strata-fetch` passes a file at `path` on: plain names only (it refuses any other,
/// and its peers would then get nothing from it).
fn passable(path: &str) -> bool {
    path.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._+-".contains(&b))
        && path
            .split('/')
            .skip(1)
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// A fresh token for this apply's transfers: 32 random bytes in hex.
fn token() -> Result<String> {
    let mut b = [0u8; 32];
    aws_lc_rs::rand::fill(&mut b)
        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// Sends `assets` to the hosts that need them: `needs[i]` are the asset paths host `i`
/// (`cx.hosts[i]`) must be written, `has[i]` those it holds with the right content. First
/// the fetch program (itself passed on by the hosts), then what the hosts fetch from an
/// https source themselves, then the rest.
pub async fn run(
    cx: &Fleet<'_>,
    needs: &[BTreeSet<String>],
    has: &[BTreeSet<String>],
) -> Result<Outcome> {
    let fetch_path = format!("{BIN_DIR}/{FETCH_PROGRAM}");
    let mut out = Outcome {
        written: vec![BTreeSet::new(); cx.hosts.len()],
        ..Outcome::default()
    };
    let token = token()?;
    let (mut needs, mut has) = (needs.to_vec(), has.to_vec());
    let mut stage = Stage {
        token: &token,
        needs: &mut needs,
        has: &mut has,
        out: &mut out,
    };
    stage.fan_out(cx, |p| p == fetch_path).await?;
    from_source(cx, &mut stage).await?;
    stage.fan_out(cx, |p| p != fetch_path).await?;
    report(cx, &out);
    Ok(out)
}

/// What the upload's asset stages share: the apply's token, what each host still needs and
/// already has (each updated as files arrive), and the figures.
struct Stage<'s> {
    token: &'s str,
    needs: &'s mut [BTreeSet<String>],
    has: &'s mut [BTreeSet<String>],
    out: &'s mut Outcome,
}

impl Stage<'_> {
    /// Host `to` holds `path` now.
    fn arrived(&mut self, to: usize, path: &str) {
        self.needs[to].remove(path);
        self.has[to].insert(path.to_owned());
        self.out.written[to].insert(path.to_owned());
    }

    /// The fan-out of the needed files whose path `pick` takes: each from here once (to a
    /// host that holds none), then passed on in rounds by the hosts that hold it.
    async fn fan_out(&mut self, cx: &Fleet<'_>, pick: impl Fn(&str) -> bool) -> Result<()> {
        let phase = PhaseName::Upload;
        let paths: BTreeSet<String> = self
            .needs
            .iter()
            .flatten()
            .filter(|p| pick(p))
            .cloned()
            .collect();
        let mut assets: Vec<&Asset> = Vec::new();
        let mut files = Vec::new();
        let mut sizes = Vec::new();
        for path in &paths {
            let a = cx
                .assets
                .files
                .iter()
                .find(|a| &a.remote == path)
                .with_context(|| format!("no asset goes to {path}"))?;
            let idx = |set: &[BTreeSet<String>]| -> Vec<usize> {
                (0..set.len()).filter(|&i| set[i].contains(path)).collect()
            };
            // A host the others cannot address cannot serve; one that needs the file
            // written (its mode differs) gets it like the others.
            let holders: Vec<usize> = idx(self.has)
                .into_iter()
                .filter(|&i| url_host(&cx.hosts[i].host).is_some() && !self.needs[i].contains(path))
                .collect();
            let size = match self.out.distinct.get(path) {
                Some(&size) => Some(size),
                // From the asset source, held by peers: its size arrives with it.
                None if a.url.is_some() && !holders.is_empty() && !a.local.exists() => None,
                None => {
                    // Goes from here (downloaded first when it comes from the source).
                    cx.assets
                        .ensure_local(&BTreeSet::from([path.as_str()]))
                        .await?;
                    let meta = std::fs::metadata(&a.local)
                        .with_context(|| format!("reading {}", a.local.display()))?;
                    Some(meta.len())
                }
            };
            files.push(File {
                size: size.unwrap_or(0),
                // A file whose name a peer would not pass on.
                here_only: !passable(path),
                holders,
                needers: idx(self.needs),
            });
            if let Some(size) = size {
                self.out.distinct.insert(path.clone(), size);
            }
            sizes.push(size);
            assets.push(a);
        }
        let rounds = schedule(&files, cx.hosts.len());
        let Some((first, later)) = rounds.split_first() else {
            return Ok(());
        };
        send_here(cx, &assets, first, self).await?;
        let mut servers: Vec<Option<Running>> = (0..cx.hosts.len()).map(|_| None).collect();
        let mut tried = vec![false; cx.hosts.len()];
        let result = async {
            for (r, round) in later.iter().enumerate() {
                // Each sender's server starts before its first round, serving all it sends.
                let starting: Vec<usize> = round
                    .iter()
                    .filter_map(|t| match t.from {
                        Source::Peer(p) if !tried[p] => Some(p),
                        _ => None,
                    })
                    .collect::<BTreeSet<usize>>()
                    .into_iter()
                    .collect();
                for (i, s) in start_servers(cx, &assets, &later[r..], &starting, self.token).await {
                    tried[i] = true;
                    servers[i] = s;
                }
                fetch_round(cx, &assets, &sizes, round, &servers, self).await?;
            }
            anyhow::Ok(())
        }
        .await;
        for (i, s) in servers.into_iter().enumerate() {
            if let Some(s) = s {
                // The transfers were checked by their receivers; a server that does not
                // stop cleanly only leaves its message.
                if let Err(e) = s.stop().await {
                    cx.reporter
                        .step(phase, cx.hosts[i].name(), format!("asset server: {e}"));
                }
            }
        }
        result
    }
}

/// The files with an https URL: each host fetches those it needs from the source itself
/// (the fetch program is in place by now). What a host fetched it now holds (and may serve
/// its peers); what it could not stays needed, with a step saying why.
async fn from_source(cx: &Fleet<'_>, stage: &mut Stage<'_>) -> Result<()> {
    let phase = PhaseName::Upload;
    let wanted: Vec<Vec<(&Asset, &str)>> = stage
        .needs
        .iter()
        .map(|n| {
            cx.assets
                .files
                .iter()
                .filter(|a| n.contains(&a.remote))
                .filter_map(|a| Some((a, a.url.as_deref()?)))
                .collect()
        })
        .collect();
    let token = stage.token;
    let results = join_all(
        wanted
            .iter()
            .enumerate()
            .filter(|(_, list)| !list.is_empty())
            .map(|(to, list)| async move {
                let lines: String = list
                    .iter()
                    .map(|(a, url)| format!("{} - {MODE:o} {url} {}\n", a.sha256, a.remote))
                    .collect();
                (
                    to,
                    receive_on(
                        cx,
                        to,
                        ("strata-fetch get", &fetch_command("get")),
                        token,
                        &lines,
                    )
                    .await,
                )
            }),
    )
    .await;
    for (to, (fetched, problem)) in results {
        for (path, bytes) in fetched {
            stage.out.from_source += bytes;
            // 0: the bytes were there already (only the mode was wrong): no size learnt.
            if bytes > 0 {
                stage.out.distinct.insert(path.clone(), bytes);
            }
            stage.arrived(to, &path);
        }
        if let Some(p) = problem {
            let missing = wanted[to]
                .iter()
                .filter(|(a, _)| stage.needs[to].contains(&a.remote))
                .count();
            let step = format!(
                "could not fetch {missing} asset file(s) from the asset source ({}); those \
                 come from this computer and its peers",
                errors_of(&p).join("; ")
            );
            cx.reporter.step(phase, cx.hosts[to].name(), step);
        }
    }
    Ok(())
}

/// The errors `strata-fetch get` printed, one per file (each names its URL).
fn errors_of(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter(|l| !l.starts_with("fetched "))
        .map(|l| l.trim_start_matches("strata-fetch: "))
        .filter(|l| !l.trim().is_empty())
        .collect()
}

/// The step that says why a host could not get files from its peers: every error
/// `strata-fetch get` printed (each names the URL or the file), with the port to open when
/// a peer could not be reached.
fn fetch_problem(output: &str) -> String {
    let errors = errors_of(output);
    let unreachable = errors.iter().any(|l| {
        l.contains("Connection refused") || l.contains("timed out") || l.contains("unreachable")
    });
    format!(
        "could not get every asset from its peers{}: {}; those come from this computer",
        if unreachable {
            format!(" (is TCP port {FETCH_PORT} open between the hosts?)")
        } else {
            String::new()
        },
        errors.join("; ")
    )
}

/// The figures: the distinct asset bytes the hosts received, what this computer sent (each
/// file once, unless a transfer between hosts failed), what the hosts sent each other, and
/// what they fetched from the asset source.
fn report(cx: &Fleet<'_>, out: &Outcome) {
    for (h, written) in cx.hosts.iter().zip(&out.written) {
        if !written.is_empty() {
            let step = format!("{} asset file(s) in place", written.len());
            cx.reporter.step(PhaseName::Upload, h.name(), step);
        }
    }
    if out.distinct.is_empty() {
        return;
    }
    let distinct: u64 = out.distinct.values().sum();
    let ratio = if distinct == 0 {
        0.0
    } else {
        out.sent_here as f64 / distinct as f64
    };
    cx.reporter.step(
        PhaseName::Upload,
        "assets",
        format!(
            "{} of assets: {} sent from this computer ({ratio:.2} times each byte), {} between hosts{}",
            mb(distinct),
            mb(out.sent_here),
            mb(out.sent_peers),
            if out.from_source > 0 {
                format!(", {} fetched by the hosts from the asset source", mb(out.from_source))
            } else {
                String::new()
            }
        ),
    );
}

/// Uploads over SSH the transfers from here, each host's one after another, hosts at once
/// (a file that comes from the asset source downloaded here first).
async fn send_here(
    cx: &Fleet<'_>,
    assets: &[&Asset],
    transfers: &[Transfer],
    stage: &mut Stage<'_>,
) -> Result<()> {
    let phase = PhaseName::Upload;
    let sent: BTreeSet<&str> = transfers
        .iter()
        .map(|t| assets[t.file].remote.as_str())
        .collect();
    cx.assets.ensure_local(&sent).await?;
    let per_host: BTreeMap<usize, Vec<&Asset>> =
        transfers.iter().fold(BTreeMap::new(), |mut m, t| {
            m.entry(t.to).or_insert_with(Vec::new).push(assets[t.file]);
            m
        });
    let results = join_all(per_host.iter().map(|(&to, list)| async move {
        let h = &cx.hosts[to];
        let mut bytes = 0;
        for a in list {
            let content = std::fs::read(&a.local)
                .with_context(|| format!("reading {}", a.local.display()))?;
            h.conn
                .upload_known(&a.remote, &content, MODE, "root:root", None)
                .await
                .map_err(|e| fail(phase, h.name(), e))?;
            bytes += content.len() as u64;
        }
        anyhow::Ok((to, bytes))
    }))
    .await;
    let mut errors = Vec::new();
    for (r, (_, list)) in results.into_iter().zip(&per_host) {
        match r {
            Ok((to, bytes)) => {
                stage.out.sent_here += bytes;
                for a in list {
                    stage.arrived(to, &a.remote);
                }
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{}", errors.join("\n"))
    }
}

/// Starts `strata-fetch serve` on the hosts `which`, each serving the files it sends in
/// `rounds`. A host whose server does not start is None: its transfers come from here.
async fn start_servers(
    cx: &Fleet<'_>,
    assets: &[&Asset],
    rounds: &[Vec<Transfer>],
    which: &[usize],
    token: &str,
) -> Vec<(usize, Option<Running>)> {
    let mut serves: BTreeMap<usize, BTreeSet<&str>> = BTreeMap::new();
    for t in rounds.iter().flatten() {
        if let Source::Peer(p) = t.from
            && which.contains(&p)
        {
            serves
                .entry(p)
                .or_default()
                .insert(assets[t.file].remote.as_str());
        }
    }
    join_all(
        serves
            .into_iter()
            .map(|(i, files)| async move { (i, serve_on(cx, i, &files, token).await) }),
    )
    .await
}

/// `strata-fetch serve` on host `i` for `files`, once it has said it listens.
async fn serve_on(
    cx: &Fleet<'_>,
    i: usize,
    files: &BTreeSet<&str>,
    token: &str,
) -> Option<Running> {
    let phase = PhaseName::Upload;
    let h = &cx.hosts[i];
    let addr = url_host(&h.host)?;
    {
        let command = format!(
            "{} --listen {}",
            fetch_command("serve"),
            quote(&format!("{addr}:{FETCH_PORT}"))
        );
        let mut input = format!("{token}\n");
        for f in files {
            input.push_str(f);
            input.push('\n');
        }
        input.push('\n');
        let started = async {
            let mut s = h.conn.start(&command, input.as_bytes()).await?;
            s.first_line().await?;
            Ok::<_, strata_platforms::ssh::SshError>(s)
        };
        match tokio::time::timeout(std::time::Duration::from_secs(15), started).await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                cx.reporter.step(
                    phase,
                    h.name(),
                    format!(
                        "cannot serve assets to peers ({e}); its peers get them from this computer"
                    ),
                );
                None
            }
            Err(_) => {
                cx.reporter.step(
                    phase,
                    h.name(),
                    "the asset server did not start in 15 s; its peers get them from this computer",
                );
                None
            }
        }
    }
}

/// One round of transfers between hosts: each receiving host runs `strata-fetch get` once
/// for its files (or, for the fetch program itself, [`bootstrap_script`]); what could not
/// be fetched from a peer is sent from here.
async fn fetch_round(
    cx: &Fleet<'_>,
    assets: &[&Asset],
    sizes: &[Option<u64>],
    round: &[Transfer],
    servers: &[Option<Running>],
    stage: &mut Stage<'_>,
) -> Result<()> {
    let phase = PhaseName::Upload;
    let fetch_path = format!("{BIN_DIR}/{FETCH_PROGRAM}");
    let mut per_host: BTreeMap<usize, Vec<(usize, usize)>> = BTreeMap::new();
    let mut here = Vec::new();
    for t in round {
        match t.from {
            Source::Peer(p) if servers[p].is_some() => {
                per_host.entry(t.to).or_default().push((t.file, p));
            }
            _ => here.push(Transfer {
                from: Source::Here,
                ..*t
            }),
        }
    }
    let token = stage.token;
    let results = join_all(per_host.iter().map(|(&to, list)| {
        let fetch_path = &fetch_path;
        async move {
            let url = |file: usize, peer: usize| {
                let from = url_host(&cx.hosts[peer].host).unwrap_or_default();
                format!("http://{from}:{FETCH_PORT}{}", assets[file].remote)
            };
            let (what, command, lines) = match list.as_slice() {
                // The program that fetches cannot fetch itself: bash does.
                [(file, peer)] if assets[*file].remote == *fetch_path => {
                    let a = assets[*file];
                    let from = url_host(&cx.hosts[*peer].host).unwrap_or_default();
                    let script = bootstrap_script(&from, FETCH_PORT, &a.remote, &a.sha256);
                    (
                        format!("bash's fetch of {}", url(*file, *peer)),
                        format!("timeout 300 bash -c {}", quote(&script)),
                        String::new(),
                    )
                }
                _ => {
                    let lines = list
                        .iter()
                        .map(|&(file, peer)| {
                            let a = assets[file];
                            let size = sizes[file].map_or("-".to_owned(), |s| s.to_string());
                            format!(
                                "{} {size} {MODE:o} {} {}\n",
                                a.sha256,
                                url(file, peer),
                                a.remote
                            )
                        })
                        .collect();
                    ("strata-fetch get".to_owned(), fetch_command("get"), lines)
                }
            };
            (
                to,
                receive_on(cx, to, (&what, &command), token, &lines).await,
            )
        }
    }))
    .await;
    for ((to, (fetched, problem)), (_, list)) in results.into_iter().zip(&per_host) {
        for &(file, _) in list {
            let path = &assets[file].remote;
            match fetched.get(path) {
                Some(&bytes) => {
                    stage.out.sent_peers += bytes;
                    if bytes > 0 {
                        stage.out.distinct.entry(path.clone()).or_insert(bytes);
                    }
                    stage.arrived(to, path);
                }
                None => here.push(Transfer {
                    file,
                    to,
                    from: Source::Here,
                }),
            }
        }
        if let Some(p) = problem {
            cx.reporter
                .step(phase, cx.hosts[to].name(), fetch_problem(&p));
        }
    }
    if !here.is_empty() {
        send_here(cx, assets, &here, stage).await?;
    }
    Ok(())
}

/// The script with which a host that lacks the fetch program gets it from a peer's server
/// (`peer` as in a URL: `[v6]` or v4), with bash's own TCP connections: the apply's token
/// from standard input, the request, the answer's status and head read a byte at a time,
/// the body (to the end of the connection: one request per connection) into a temporary
/// file beside `path`, renamed into place (mode 755) only when its sha256 is `sha256`.
/// Prints `fetched <path> <bytes>` as the fetch program does; anything else is an error
/// naming the URL.
pub fn bootstrap_script(peer: &str, port: u16, path: &str, sha256: &str) -> String {
    let host = peer.trim_start_matches('[').trim_end_matches(']');
    let url = format!("http://{peer}:{port}{path}");
    let dir = path.rsplit_once('/').map_or("/", |(d, _)| d);
    format!(
        r#"set -eu
fail() {{ echo "{url}: $1" >&2; exit 1; }}
IFS= read -r token
# bash's connect has no time limit of its own (a dropped SYN waits two minutes): tried first.
timeout 5 bash -c ': < "/dev/tcp/$1/$2"' _ {host_q} {port} 2>/dev/null \
  || fail "cannot connect (Connection refused or timed out)"
exec 3<>/dev/tcp/{host}/{port} || fail "cannot connect"
printf 'GET %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nConnection: close\r\n\r\n' \
  {path_q} {authority_q} "$token" >&3
IFS= read -r -t 30 status <&3 || fail "no answer"
case "$status" in "HTTP/1.1 200 "*) ;; *) fail "answered ${{status%$'\r'}}" ;; esac
while IFS= read -r -t 30 line <&3; do [ "$line" = $'\r' ] && break; done
mkdir -p {dir_q}
tmp=$(mktemp {dir_q}/.strata-fetch.XXXXXX)
trap 'rm -f "$tmp"' EXIT
cat <&3 > "$tmp"
sum=$(sha256sum "$tmp" | cut -d' ' -f1)
[ "$sum" = {sha256} ] || fail "got sha256 $sum, want {sha256}; {path} left as it was"
size=$(wc -c < "$tmp")
chmod 755 "$tmp"
mv -f "$tmp" {path_q}
trap - EXIT
echo "fetched {path} $size"
"#,
        path_q = quote(path),
        host_q = quote(host),
        authority_q = quote(&format!("{peer}:{port}")),
        dir_q = quote(dir),
    )
}

/// Runs `command` on host `to` with the token and `lines` on its standard input: the bytes
/// of each file it fetched (`fetched <path> <bytes>` lines), and what went wrong when not
/// all did (`what` names the command when it says nothing).
async fn receive_on(
    cx: &Fleet<'_>,
    to: usize,
    (what, command): (&str, &str),
    token: &str,
    lines: &str,
) -> (BTreeMap<String, u64>, Option<String>) {
    let input = format!("{token}\n{lines}");
    let r = cx.hosts[to]
        .conn
        .exec_with_input(command, input.as_bytes())
        .await;
    match r {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout);
            let fetched = text
                .lines()
                .filter_map(|l| {
                    let mut f = l.strip_prefix("fetched ")?.split(' ');
                    Some((f.next()?.to_owned(), f.next()?.parse().ok()?))
                })
                .collect();
            let problem = (!o.success()).then(|| {
                let said = String::from_utf8_lossy(&o.stderr).into_owned();
                if said.trim().is_empty() {
                    format!("{what} ended with status {} (timed out?)", o.status)
                } else {
                    said
                }
            });
            (fetched, problem)
        }
        Err(e) => (BTreeMap::new(), Some(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64, holders: &[usize], needers: &[usize]) -> File {
        File {
            size,
            here_only: false,
            holders: holders.to_vec(),
            needers: needers.to_vec(),
        }
    }

    /// Checks the schedule's promises and returns how many copies came from here.
    fn check(files: &[File], hosts: usize) -> (Vec<Vec<Transfer>>, usize) {
        let rounds = schedule(files, hosts);
        let mut has: Vec<BTreeSet<usize>> = files
            .iter()
            .map(|f| f.holders.iter().copied().collect())
            .collect();
        let mut got: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); files.len()];
        let mut here = 0;
        for (r, round) in rounds.iter().enumerate() {
            let mut new = Vec::new();
            let mut sends: BTreeMap<(usize, usize), usize> = BTreeMap::new();
            for t in round {
                match t.from {
                    Source::Here => {
                        assert_eq!(r, 0, "from here only in the first round: {t:?}");
                        here += 1;
                    }
                    Source::Peer(p) => {
                        assert!(
                            has[t.file].contains(&p),
                            "round {r}: {t:?} from a non-holder"
                        );
                        *sends.entry((t.file, p)).or_default() += 1;
                    }
                }
                assert!(got[t.file].insert(t.to), "{t:?} twice");
                new.push(*t);
            }
            assert!(
                sends.values().all(|&n| n == 1),
                "a holder sends a file once a round"
            );
            for t in new {
                has[t.file].insert(t.to);
            }
        }
        for (i, f) in files.iter().enumerate() {
            let want: BTreeSet<usize> = f.needers.iter().copied().collect();
            assert_eq!(got[i], want, "file {i} reaches exactly its needers");
        }
        (rounds, here)
    }

    #[test]
    fn each_file_leaves_here_once_and_the_holders_double_each_round() {
        for hosts in [1, 2, 3, 6, 10, 100] {
            let all: Vec<usize> = (0..hosts).collect();
            let files: Vec<File> = (0..8).map(|i| file(100 + i, &[], &all)).collect();
            let (rounds, here) = check(&files, hosts);
            assert_eq!(here, 8, "{hosts} hosts: each file sent from here once");
            let log2 = (hosts as f64).log2().ceil() as usize;
            assert_eq!(rounds.len(), 1 + log2, "{hosts} hosts: rounds");
        }
    }

    #[test]
    fn the_first_copies_spread_over_the_hosts_and_the_next_round_is_a_ring() {
        let files = vec![
            file(30, &[], &[0, 1, 2]),
            file(20, &[], &[0, 1, 2]),
            file(10, &[], &[0, 1, 2]),
        ];
        let (rounds, _) = check(&files, 3);
        let seeds: BTreeSet<usize> = rounds[0].iter().map(|t| t.to).collect();
        assert_eq!(seeds.len(), 3, "{:?}", rounds[0]);
        let receivers: BTreeSet<usize> = rounds[1].iter().map(|t| t.to).collect();
        assert_eq!(
            receivers.len(),
            3,
            "every host receives in round 1: {:?}",
            rounds[1]
        );
    }

    #[test]
    fn a_file_a_host_holds_is_not_sent_from_here() {
        // A worker added to a running cluster: the others hold everything.
        let files = vec![file(100, &[0, 1], &[2]), file(50, &[0], &[1, 2])];
        let (rounds, here) = check(&files, 3);
        assert_eq!(here, 0);
        assert_eq!(rounds[0].len(), 0);
    }

    #[test]
    fn the_fetch_program_goes_from_here_to_every_host_that_needs_it() {
        let mut fetch = file(5, &[], &[0, 1, 2]);
        fetch.here_only = true;
        let files = vec![fetch, file(100, &[], &[0, 1, 2])];
        let (rounds, here) = check(&files, 3);
        assert_eq!(here, 4);
        assert!(rounds[1..].iter().flatten().all(|t| t.file == 1));
    }

    /// The bootstrap script in a real bash against a real `strata-fetch serve` on loopback.
    #[test]
    fn bash_fetches_the_fetch_program_from_a_peer_verified() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let public = dir.path().join("public");
        std::fs::create_dir_all(&public).expect("mkdir");
        let program = b"\x7fELF not really, with \r\n\r\n and \0 bytes".repeat(5000);
        let served = public.join("strata-fetch");
        std::fs::write(&served, &program).expect("write");
        let public_s = public.to_str().expect("utf-8").to_owned();
        let dirs = strata_fetch::PublicDirs::new(std::slice::from_ref(&public_s)).expect("dirs");
        let allow = strata_fetch::serve::AllowList::new(
            &dirs,
            [served.to_str().expect("utf-8").to_owned()],
        )
        .expect("allow");
        let listener = strata_fetch::serve::listen("127.0.0.1:0").expect("listen");
        let port = listener.local_addr().expect("addr").port();
        let token = "0123456789abcdef".repeat(4);
        strata_fetch::serve::spawn(
            listener,
            strata_fetch::Token::new(&token).expect("token"),
            allow,
        );
        let path = served.to_str().expect("utf-8");
        let run = |sha256: &str, token: &str| {
            let mut child = std::process::Command::new("bash")
                .arg("-c")
                .arg(bootstrap_script("127.0.0.1", port, path, sha256))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("bash");
            let mut stdin = child.stdin.take().expect("stdin");
            stdin
                .write_all(format!("{token}\n").as_bytes())
                .expect("token");
            drop(stdin);
            child.wait_with_output().expect("bash ran")
        };
        // The same path as served: the file is replaced by what arrives (the same bytes).
        let sha = strata_manifests::plan::sha256(&program);
        let o = run(&sha, &token);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            format!("fetched {path} {}", program.len())
        );
        assert_eq!(std::fs::read(&served).expect("read"), program);
        // Another digest: refused, the file as it was, no temporary file left.
        let o = run(&"0".repeat(64), &token);
        let said = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && said.contains("got sha256"), "{said}");
        // A wrong token: the server's refusal, named.
        let o = run(&sha, &"f".repeat(64));
        let said = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && said.contains("answered HTTP/1.1 401"),
            "{said}"
        );
        assert_eq!(std::fs::read(&served).expect("read"), program);
        let left: Vec<_> = std::fs::read_dir(&public).expect("list").collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }

    #[test]
    fn nothing_needed_is_no_round() {
        assert!(schedule(&[file(1, &[0], &[])], 2).is_empty());
        assert!(schedule(&[], 3).is_empty());
    }

    #[test]
    fn one_host_is_one_round_from_here() {
        let (rounds, here) = check(&[file(1, &[], &[0]), file(2, &[], &[0])], 1);
        assert_eq!((rounds.len(), here), (1, 2));
    }
}
