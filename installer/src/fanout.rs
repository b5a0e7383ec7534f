//! The asset fan-out of the upload phase: this computer sends each asset file once, and
//! hosts that have it pass it on to hosts that need it (`strata-fetch`, sent to each host
//! first), in rounds where every holder serves one peer: the holders of a file double each
//! round. Peers serve public assets only (binaries, CNI plugins, image archives; never a
//! rendered file, which may hold keys), only to requests with the apply's token, only while
//! the apply holds the server's standard input open; every file is verified against its
//! sha256 on arrival before it is renamed into place. A transfer between hosts that fails
//! (a firewall, a host gone) is done from this computer instead, and said so.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use anyhow::{Context as _, Result};
use futures::future::join_all;
use strata_manifests::catalog::{BIN_DIR, CNI_BIN_DIR, FETCH_PORT};
use strata_manifests::model::Host;
use strata_manifests::plan::PhaseName;
use strata_platforms::ssh::{Running, quote};

use crate::apply::Apply;
use crate::assets::{Asset, IMAGE_DIR, MODE};
use crate::hosts::fail;

/// The program hosts pass assets with; it goes to each host from this computer.
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
    /// Sent from here to every host that needs it (the fetch program itself).
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
/// (`cx.hosts[i]`) must be written, `has[i]` those it holds with the right content.
pub async fn run(
    cx: &Apply<'_>,
    needs: &[BTreeSet<String>],
    has: &[BTreeSet<String>],
) -> Result<Outcome> {
    let phase = PhaseName::Upload;
    let fetch_path = format!("{BIN_DIR}/{FETCH_PROGRAM}");
    let paths: BTreeSet<&String> = needs.iter().flatten().collect();
    let mut assets: Vec<&Asset> = Vec::new();
    let mut files = Vec::new();
    for path in paths {
        let a = cx
            .assets
            .files
            .iter()
            .find(|a| &a.remote == path)
            .with_context(|| format!("no asset goes to {path}"))?;
        let size = std::fs::metadata(&a.local)
            .with_context(|| format!("reading {}", a.local.display()))?
            .len();
        let idx = |set: &[BTreeSet<String>]| -> Vec<usize> {
            (0..set.len()).filter(|&i| set[i].contains(path)).collect()
        };
        files.push(File {
            size,
            // The fetch program itself, and a file whose name a peer would not pass on.
            here_only: *path == fetch_path || !passable(path),
            // A host the others cannot address cannot serve; one that needs the file written
            // (its mode differs) gets it like the others.
            holders: idx(has)
                .into_iter()
                .filter(|&i| url_host(&cx.hosts[i].host).is_some() && !needs[i].contains(path))
                .collect(),
            needers: idx(needs),
        });
        assets.push(a);
    }
    let rounds = schedule(&files, cx.hosts.len());
    let mut out = Outcome {
        written: vec![BTreeSet::new(); cx.hosts.len()],
        ..Outcome::default()
    };
    let Some((first, later)) = rounds.split_first() else {
        return Ok(out);
    };
    send_here(cx, &assets, first, &mut out).await?;
    if later.is_empty() {
        report(cx, &files, &out);
        return Ok(out);
    }
    let token = token()?;
    let servers = start_servers(cx, &assets, later, &token).await;
    let result = async {
        for round in later {
            fetch_round(cx, &assets, &files, round, &servers, &token, &mut out).await?;
        }
        anyhow::Ok(())
    }
    .await;
    for (i, s) in servers.into_iter().enumerate() {
        if let Some(s) = s {
            // The transfers were checked by their receivers; a server that does not stop
            // cleanly only leaves its message.
            if let Err(e) = s.stop().await {
                cx.reporter
                    .step(phase, cx.hosts[i].name(), format!("asset server: {e}"));
            }
        }
    }
    result?;
    report(cx, &files, &out);
    Ok(out)
}

/// The step that says why a host could not get files from its peers: every error
/// `strata-fetch get` printed (each names the URL or the file), with the port to open when
/// a peer could not be reached.
fn fetch_problem(output: &str) -> String {
    let errors: Vec<&str> = output
        .lines()
        .filter(|l| !l.starts_with("fetched "))
        .map(|l| l.trim_start_matches("strata-fetch: "))
        .filter(|l| !l.trim().is_empty())
        .collect();
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

/// The fan-out's figures: the distinct asset bytes, what this computer sent (once each
/// file, and the fetch program to each host), what the hosts sent each other.
fn report(cx: &Apply<'_>, files: &[File], out: &Outcome) {
    for (h, written) in cx.hosts.iter().zip(&out.written) {
        if !written.is_empty() {
            let step = format!("{} asset file(s) in place", written.len());
            cx.reporter.step(PhaseName::Upload, h.name(), step);
        }
    }
    let distinct: u64 = files.iter().map(|f| f.size).sum();
    let ratio = if distinct == 0 {
        0.0
    } else {
        out.sent_here as f64 / distinct as f64
    };
    cx.reporter.step(
        PhaseName::Upload,
        "assets",
        format!(
            "{} of assets: {} sent from this computer ({ratio:.2} times each byte), {} between hosts",
            mb(distinct),
            mb(out.sent_here),
            mb(out.sent_peers)
        ),
    );
}

/// Uploads over SSH the transfers from here, each host's one after another, hosts at once.
async fn send_here(
    cx: &Apply<'_>,
    assets: &[&Asset],
    transfers: &[Transfer],
    out: &mut Outcome,
) -> Result<()> {
    let phase = PhaseName::Upload;
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
                out.sent_here += bytes;
                out.written[to].extend(list.iter().map(|a| a.remote.clone()));
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

/// Starts `strata-fetch serve` on every host that sends in `rounds`, serving the files it
/// sends. A host whose server does not start is None: its transfers come from here.
async fn start_servers(
    cx: &Apply<'_>,
    assets: &[&Asset],
    rounds: &[Vec<Transfer>],
    token: &str,
) -> Vec<Option<Running>> {
    let phase = PhaseName::Upload;
    let mut serves: Vec<BTreeSet<&str>> = vec![BTreeSet::new(); cx.hosts.len()];
    for t in rounds.iter().flatten() {
        if let Source::Peer(p) = t.from {
            serves[p].insert(assets[t.file].remote.as_str());
        }
    }
    join_all(cx.hosts.iter().zip(&serves).map(|(h, files)| async move {
        if files.is_empty() {
            return None;
        }
        let addr = url_host(&h.host)?;
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
    }))
    .await
}

/// One round of transfers between hosts: each receiving host runs `strata-fetch get` once
/// for its files; what could not be fetched from a peer is sent from here.
async fn fetch_round(
    cx: &Apply<'_>,
    assets: &[&Asset],
    files: &[File],
    round: &[Transfer],
    servers: &[Option<Running>],
    token: &str,
    out: &mut Outcome,
) -> Result<()> {
    let phase = PhaseName::Upload;
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
    let results = join_all(per_host.iter().map(|(&to, list)| async move {
        let h = &cx.hosts[to];
        let mut input = format!("{token}\n");
        for &(file, peer) in list {
            let a = assets[file];
            let from = url_host(&cx.hosts[peer].host).unwrap_or_default();
            input.push_str(&format!(
                "{} {} {MODE:o} http://{from}:{FETCH_PORT}{} {}\n",
                a.sha256, files[file].size, a.remote, a.remote
            ));
        }
        let r = h
            .conn
            .exec_with_input(&fetch_command("get"), input.as_bytes())
            .await;
        (to, r)
    }))
    .await;
    for ((to, r), (_, list)) in results.into_iter().zip(&per_host) {
        let h = &cx.hosts[to];
        let (fetched, problem): (BTreeMap<String, u64>, Option<String>) = match r {
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
                        format!("strata-fetch get ended with status {}", o.status)
                    } else {
                        said
                    }
                });
                (fetched, problem)
            }
            Err(e) => (BTreeMap::new(), Some(e.to_string())),
        };
        for &(file, _) in list {
            let path = &assets[file].remote;
            match fetched.get(path) {
                Some(bytes) => {
                    out.sent_peers += bytes;
                    out.written[to].insert(path.clone());
                }
                None => here.push(Transfer {
                    file,
                    to,
                    from: Source::Here,
                }),
            }
        }
        if let Some(p) = problem {
            cx.reporter.step(phase, h.name(), fetch_problem(&p));
        }
    }
    if !here.is_empty() {
        send_here(cx, assets, &here, out).await?;
    }
    Ok(())
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
