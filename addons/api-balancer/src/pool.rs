//! The API servers the balancer knows, their health and open connections, and the order in
//! which a new connection tries them.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use crate::backends::Address;

/// One API server.
#[derive(Debug)]
pub struct Backend {
    pub address: Address,
    healthy: AtomicBool,
    /// Consecutive failed checks.
    failures: AtomicU32,
    active: AtomicUsize,
    /// How many times it went down (a delayed close acts only on the fall it was made for).
    downs: AtomicU64,
    /// Bumped to close every connection through this backend.
    close: watch::Sender<u64>,
}

/// The state a check result moved a backend to, when it moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Up,
    Down,
}

impl Backend {
    /// A new backend is not known healthy until its first check passes (connections still
    /// try it when no backend is known healthy).
    fn new(address: Address) -> Arc<Self> {
        Arc::new(Self {
            address,
            healthy: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            active: AtomicUsize::new(0),
            downs: AtomicU64::new(0),
            close: watch::channel(0).0,
        })
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    /// Open connections through it.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Records a health check: healthy on the first success, down after `fall` failures in a
    /// row (see [`Pool::dropped`] for its connections).
    pub fn record(&self, ok: bool, fall: u32) -> Option<Transition> {
        if ok {
            self.failures.store(0, Ordering::SeqCst);
            let was = self.healthy.swap(true, Ordering::SeqCst);
            return (!was).then_some(Transition::Up);
        }
        let failures = self
            .failures
            .fetch_add(1, Ordering::SeqCst)
            .saturating_add(1);
        if failures >= fall.max(1) {
            self.down()
        } else {
            None
        }
    }

    /// It refused a connection: down now, whatever its checks said.
    pub fn refused(&self, fall: u32) -> Option<Transition> {
        self.failures.store(fall.max(1), Ordering::SeqCst);
        self.down()
    }

    fn down(&self) -> Option<Transition> {
        let was = self.healthy.swap(false, Ordering::SeqCst);
        if was {
            self.downs.fetch_add(1, Ordering::SeqCst);
        }
        was.then_some(Transition::Down)
    }

    /// How many times it went down so far.
    pub fn downs(&self) -> u64 {
        self.downs.load(Ordering::SeqCst)
    }

    /// Closes every open connection through it; returns how many there were.
    pub fn close_connections(&self) -> usize {
        let n = self.active();
        self.close.send_modify(|g| *g = g.wrapping_add(1));
        n
    }

    /// Counts a connection until the guard is dropped.
    pub fn connection(self: &Arc<Self>) -> Connection {
        self.active.fetch_add(1, Ordering::SeqCst);
        Connection {
            backend: Arc::clone(self),
            close: self.close.subscribe(),
        }
    }
}

/// One proxied connection through a backend.
#[derive(Debug)]
pub struct Connection {
    backend: Arc<Backend>,
    close: watch::Receiver<u64>,
}

impl Connection {
    /// Resolves when the backend's connections are to be closed.
    pub async fn closed(&mut self) {
        // An error means the backend is gone: close too.
        let _ = self.close.changed().await;
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.backend.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Every backend, in the order of the backends file.
#[derive(Debug, Default)]
pub struct Pool {
    backends: RwLock<Vec<Arc<Backend>>>,
    turn: AtomicUsize,
}

/// What [`Pool::set`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<Address>,
    /// Removed, with how many open connections were closed.
    pub removed: Vec<(Address, usize)>,
}

impl Pool {
    pub fn new(addresses: Vec<Address>) -> Self {
        let pool = Self::default();
        pool.set(addresses);
        pool
    }

    /// Makes the list `addresses`: backends still listed keep their state and connections;
    /// connections through removed ones are closed.
    pub fn set(&self, addresses: Vec<Address>) -> Changes {
        let mut list = self.backends.write().unwrap_or_else(|e| e.into_inner());
        let mut changes = Changes::default();
        let mut next = Vec::with_capacity(addresses.len());
        for a in addresses {
            match list.iter().find(|b| b.address == a) {
                Some(b) => next.push(Arc::clone(b)),
                None => {
                    changes.added.push(a.clone());
                    next.push(Backend::new(a));
                }
            }
        }
        for old in list.iter() {
            if !next.iter().any(|b| b.address == old.address) {
                changes
                    .removed
                    .push((old.address.clone(), old.close_connections()));
            }
        }
        *list = next;
        changes
    }

    /// `b` went down: its connections are closed when another API server is healthy, so
    /// that their clients come back through that one at once; with none, closing them would
    /// only cut every client off (a single API server slow to answer its checks). Returns
    /// how many were closed.
    pub fn dropped(&self, b: &Backend) -> usize {
        let others = self
            .backends()
            .iter()
            .any(|o| o.address != b.address && o.is_healthy());
        if others { b.close_connections() } else { 0 }
    }

    pub fn backends(&self) -> Vec<Arc<Backend>> {
        self.backends
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The order in which a new connection tries the backends: the healthy ones, fewest open
    /// connections first (ties taken in turn), then the others (a balancer that knows no
    /// healthy API server still tries them all rather than refuse).
    pub fn candidates(&self) -> Vec<Arc<Backend>> {
        let list = self.backends();
        let n = list.len().max(1);
        let turn = self.turn.fetch_add(1, Ordering::SeqCst) % n;
        let mut ranked: Vec<(bool, usize, usize, Arc<Backend>)> = list
            .into_iter()
            .enumerate()
            .map(|(i, b)| (!b.is_healthy(), b.active(), (i + n - turn) % n, b))
            .collect();
        ranked.sort_by_key(|(unhealthy, active, order, _)| (*unhealthy, *active, *order));
        ranked.into_iter().map(|(_, _, _, b)| b).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Address {
        Address::parse(s).expect("address")
    }

    fn names(list: &[Arc<Backend>]) -> Vec<String> {
        list.iter().map(|b| b.address.to_string()).collect()
    }

    #[test]
    fn healthy_first_fewest_connections_then_in_turn() {
        let pool = Pool::new(vec![addr("a:1"), addr("b:1"), addr("c:1")]);
        let b = pool.backends();
        // Nobody healthy yet: all are still tried.
        assert_eq!(pool.candidates().len(), 3);
        b[0].record(true, 2);
        b[2].record(true, 2);
        let firsts: Vec<String> = (0..4)
            .map(|_| names(&pool.candidates())[0].clone())
            .collect();
        assert!(firsts.contains(&"a:1".to_owned()) && firsts.contains(&"c:1".to_owned()));
        assert!(!firsts.contains(&"b:1".to_owned()));
        assert_eq!(
            names(&pool.candidates())[2],
            "b:1",
            "the unhealthy one last"
        );
        let _held = b[0].connection();
        for _ in 0..3 {
            assert_eq!(
                names(&pool.candidates())[0],
                "c:1",
                "fewest connections first"
            );
        }
    }

    #[tokio::test]
    async fn down_after_fall_failures_closes_connections_when_another_is_healthy() {
        let pool = Pool::new(vec![addr("a:1"), addr("b:1")]);
        let list = pool.backends();
        let (a, b) = (&list[0], &list[1]);
        assert_eq!(a.record(true, 2), Some(Transition::Up));
        assert_eq!(a.record(true, 2), None);
        let mut conn = a.connection();
        assert_eq!(a.active(), 1);
        assert_eq!(a.record(false, 2), None, "one failure is not enough");
        assert!(a.is_healthy());
        // The only healthy one goes down: its connections stay (nowhere better to go).
        assert_eq!(a.record(false, 2), Some(Transition::Down));
        assert_eq!(pool.dropped(a), 0);
        assert_eq!(a.active(), 1);
        // With b healthy they are closed.
        b.record(true, 2);
        assert_eq!(pool.dropped(a), 1);
        tokio::time::timeout(std::time::Duration::from_secs(1), conn.closed())
            .await
            .expect("the connection was told to close");
        drop(conn);
        assert_eq!(a.active(), 0);
        assert_eq!(a.record(false, 2), None, "already down");
        assert_eq!(
            a.record(true, 2),
            Some(Transition::Up),
            "one success brings it back"
        );
        assert_eq!(a.refused(2), Some(Transition::Down));
    }

    #[tokio::test]
    async fn a_new_list_keeps_state_and_closes_removed() {
        let pool = Pool::new(vec![addr("a:1"), addr("b:1")]);
        pool.backends()[0].record(true, 2);
        let b = Arc::clone(&pool.backends()[1]);
        let mut conn = b.connection();
        let changes = pool.set(vec![addr("a:1"), addr("c:1")]);
        assert_eq!(changes.added, [addr("c:1")]);
        assert_eq!(changes.removed, [(addr("b:1"), 1)]);
        assert!(pool.backends()[0].is_healthy(), "a kept its state");
        tokio::time::timeout(std::time::Duration::from_secs(1), conn.closed())
            .await
            .expect("the removed backend's connection was told to close");
    }
}
