//! The node-local API load balancer. Every node runs one on loopback (port 7445 by default);
//! the kubelet, kube-proxy and the host-network addons reach the API through it, so that
//! losing one control-plane host loses no node. It passes TCP through (TLS stays between the
//! client and the API server), spreads new connections over the API servers whose `/readyz`
//! answers, drops one within seconds of it failing (closing the connections through it, so
//! that their clients reconnect through a healthy one: at once when it no longer answers,
//! after a drain time when it answers that it is not ready, as an API server shutting down
//! does while it finishes its requests), and re-reads its list of API servers when `strata
//! apply` rewrites it.

#![forbid(unsafe_code)]

pub mod backends;
pub mod health;
pub mod pool;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::backends::Address;
use crate::health::{Checker, IdentityContent};
use crate::pool::{Backend, Pool, Transition};

/// How the balancer runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub listen: SocketAddr,
    /// One `host:port` per line; re-read every `interval`.
    pub backends_file: PathBuf,
    /// Between health checks of each API server.
    pub interval: Duration,
    /// Failed checks in a row before an API server is dropped.
    pub fall: u32,
    /// For a connection to an API server.
    pub connect_timeout: Duration,
    /// How long the connections through an API server that went down while it still answers
    /// (unready, or refusing connections) are left to it before they are closed: one shutting
    /// down finishes their requests and closes them itself (see [`Cut`]).
    pub drain_grace: Duration,
    /// Where the health-check identity is read from again when it changes (None: the
    /// checker given to [`Balancer::bind`] is kept).
    pub identity: Option<health::IdentityFiles>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Backends {
        path: PathBuf,
        source: backends::ParseError,
    },
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

fn read_backends(path: &PathBuf) -> Result<Vec<Address>, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.clone(),
        source,
    })?;
    backends::parse(&text).map_err(|source| Error::Backends {
        path: path.clone(),
        source,
    })
}

/// A running balancer: its listener is bound.
#[derive(Debug)]
pub struct Balancer {
    pub pool: Arc<Pool>,
    listener: TcpListener,
    options: Options,
    checker: Checker,
}

impl Balancer {
    /// Reads the list of API servers and binds the listener.
    pub async fn bind(options: Options, checker: Checker) -> Result<Self, Error> {
        let list = read_backends(&options.backends_file)?;
        let listener = TcpListener::bind(options.listen)
            .await
            .map_err(|source| Error::Listen {
                addr: options.listen,
                source,
            })?;
        info!(
            listen = %options.listen,
            backends = %list.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            "balancing"
        );
        Ok(Self {
            pool: Arc::new(Pool::new(list)),
            listener,
            options,
            checker,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the process ends.
    pub async fn run(self) {
        let Self {
            pool,
            listener,
            options,
            checker,
        } = self;
        tokio::spawn(watch(Arc::clone(&pool), options.clone(), checker));
        loop {
            match listener.accept().await {
                Ok((conn, peer)) => {
                    let pool = Arc::clone(&pool);
                    let options = options.clone();
                    tokio::spawn(async move { proxy(conn, peer, &pool, &options).await });
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// When a backend that went down has the connections through it closed (if another API
/// server is healthy: see [`Pool::dropped`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// It no longer answers (a check or a connection timed out): a host gone silent, whose
    /// connections would hang until TCP gives up. Closed now.
    Now,
    /// It answers: unready (an API server shutting down keeps serving for its shutdown delay,
    /// finishes its requests, then closes its connections itself; closing them here would
    /// cut requests mid-answer) or refusing (its process is gone, and its connections with
    /// it). Closed once [`Options::drain_grace`] has passed, if it is still down.
    AfterDrain,
}

impl Cut {
    /// What a failed check says.
    fn of(e: &health::CheckError) -> Self {
        match e {
            health::CheckError::Timeout(_) => Cut::Now,
            health::CheckError::Connect(e) if is_silence(e) => Cut::Now,
            _ => Cut::AfterDrain,
        }
    }
}

/// A connection error that means no answer at all (rather than a refusal).
fn is_silence(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{HostUnreachable, NetworkUnreachable, TimedOut};
    matches!(e.kind(), TimedOut | HostUnreachable | NetworkUnreachable)
}

/// Logs a change of `b`'s state; a backend gone down has its connections closed when
/// another is healthy, now or after the drain time (`cut`).
fn transition(
    pool: &Arc<Pool>,
    b: &Arc<Backend>,
    t: Option<Transition>,
    why: &str,
    cut: Cut,
    options: &Options,
) {
    match t {
        Some(Transition::Up) => info!(backend = %b.address, "API server ready"),
        Some(Transition::Down) => {
            // Outside the macro: its fields are evaluated only when the event is logged.
            let closed = match cut {
                Cut::Now => pool.dropped(b),
                Cut::AfterDrain => {
                    close_after(Arc::clone(pool), Arc::clone(b), options.drain_grace);
                    0
                }
            };
            warn!(
                backend = %b.address,
                reason = why,
                closed_connections = closed,
                "API server dropped"
            );
        }
        None => {}
    }
}

/// Closes the connections through `b` once `grace` has passed, unless it came back (or went
/// down again since: that fall has its own).
fn close_after(pool: Arc<Pool>, b: Arc<Backend>, grace: Duration) {
    let downs = b.downs();
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        if b.is_healthy() || b.downs() != downs {
            return;
        }
        let closed = pool.dropped(&b);
        if closed > 0 {
            warn!(
                backend = %b.address,
                closed_connections = closed,
                "API server still down after the drain time: the connections through it closed"
            );
        }
    });
}

/// The health-check identity: read again when its files change (a renewed certificate); a
/// pair that does not load (a certificate and a key written one after the other) keeps the
/// identity in use until the next tick.
struct Identity {
    checker: Checker,
    loaded: Option<IdentityContent>,
    last_error: String,
}

impl Identity {
    fn refresh(&mut self, options: &Options) {
        let Some(files) = &options.identity else {
            return;
        };
        let now = files.read();
        if let (Ok(now), Some(loaded)) = (&now, &self.loaded)
            && now == loaded
        {
            return;
        }
        match now.and_then(|c| files.checker(&c).map(|checker| (c, checker))) {
            Ok((content, checker)) => {
                if self.loaded.is_some() {
                    info!("health-check identity read again (its files changed)");
                }
                self.checker = checker;
                self.loaded = Some(content);
                self.last_error.clear();
            }
            Err(e) => {
                let text = e.to_string();
                if text != self.last_error {
                    warn!(error = %text, "keeping the health-check identity in use");
                    self.last_error = text;
                }
            }
        }
    }
}

/// Every `interval`: re-reads the list of API servers and the health-check identity, and
/// checks each API server's /readyz.
async fn watch(pool: Arc<Pool>, options: Options, checker: Checker) {
    let mut tick = tokio::time::interval(options.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error = String::new();
    let mut identity = Identity {
        loaded: options.identity.as_ref().and_then(|f| f.read().ok()),
        checker,
        last_error: String::new(),
    };
    loop {
        tick.tick().await;
        identity.refresh(&options);
        match read_backends(&options.backends_file) {
            Ok(list) => {
                last_error.clear();
                let changes = pool.set(list);
                for a in &changes.added {
                    info!(backend = %a, "API server added");
                }
                for (a, closed) in &changes.removed {
                    info!(backend = %a, closed_connections = closed, "API server removed");
                }
            }
            Err(e) => {
                let text = e.to_string();
                if text != last_error {
                    warn!(error = %text, "keeping the API servers known so far");
                    last_error = text;
                }
            }
        }
        let mut checks = JoinSet::new();
        for b in pool.backends() {
            let checker = identity.checker.clone();
            checks.spawn(async move {
                let r = checker.readyz(&b.address).await;
                (b, r)
            });
        }
        while let Some(done) = checks.join_next().await {
            let Ok((b, r)) = done else { continue };
            let why = r
                .as_ref()
                .err()
                .map(ToString::to_string)
                .unwrap_or_default();
            if !why.is_empty() {
                debug!(backend = %b.address, reason = %why, "check failed");
            }
            let cut = r.as_ref().err().map_or(Cut::AfterDrain, Cut::of);
            transition(
                &pool,
                &b,
                b.record(r.is_ok(), options.fall),
                &why,
                cut,
                &options,
            );
        }
    }
}

/// Passes one client connection to the first API server that accepts it.
async fn proxy(mut client: TcpStream, peer: SocketAddr, pool: &Arc<Pool>, options: &Options) {
    let _ = client.set_nodelay(true);
    for b in pool.candidates() {
        let connect = TcpStream::connect((b.address.host.as_str(), b.address.port));
        let mut server = match tokio::time::timeout(options.connect_timeout, connect).await {
            Ok(Ok(s)) => s,
            // A refusal is the API server's own answer: down at once. Anything else (a
            // timeout under load, this host out of descriptors or ports) counts as one failed
            // check, so that a local problem does not drop every API server in turn.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                let why = format!("connect: {e}");
                transition(
                    pool,
                    &b,
                    b.refused(options.fall),
                    &why,
                    Cut::AfterDrain,
                    options,
                );
                continue;
            }
            Ok(Err(e)) => {
                let cut = if is_silence(&e) {
                    Cut::Now
                } else {
                    Cut::AfterDrain
                };
                let why = format!("connect: {e}");
                transition(pool, &b, b.record(false, options.fall), &why, cut, options);
                continue;
            }
            Err(_) => {
                let why = format!("connect: no answer within {:?}", options.connect_timeout);
                transition(
                    pool,
                    &b,
                    b.record(false, options.fall),
                    &why,
                    Cut::Now,
                    options,
                );
                continue;
            }
        };
        let _ = server.set_nodelay(true);
        let mut conn = b.connection();
        tokio::select! {
            r = tokio::io::copy_bidirectional(&mut client, &mut server) => {
                if let Err(e) = r {
                    debug!(%peer, backend = %b.address, error = %e, "connection ended");
                }
            }
            () = conn.closed() => {
                debug!(%peer, backend = %b.address, "closed: the API server was dropped");
            }
        }
        return;
    }
    warn!(%peer, "no API server accepted the connection");
}
