//! The RebootLock on the API server: every change is a replace of the status carrying the
//! resourceVersion it was computed from, so of two writers racing for the last slot exactly
//! one succeeds (the other gets 409 Conflict, reads again, and finds the lock full).

use kube::Api;
use kube::api::{ObjectMeta, PostParams};

use crate::crd::{Holder, HolderPhase, RebootLock, RebootLockSpec, RebootLockStatus, Time};

/// Releases kept in a lock's status for the audit trail.
pub const HISTORY: usize = 20;
/// Attempts of a read-modify-write against concurrent writers.
const ATTEMPTS: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("RebootLock {name}: {source}")]
    Api {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("RebootLock {name} does not exist (the operator creates it with its UpdatePolicy)")]
    Missing { name: String },
    #[error("RebootLock {name}: still conflicting after {ATTEMPTS} attempts")]
    Contended { name: String },
}

/// 409 Conflict: another writer changed the object since it was read.
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn api_err(name: &str) -> impl Fn(kube::Error) -> LockError + '_ {
    move |source| LockError::Api {
        name: name.into(),
        source,
    }
}

/// The lock of a policy, created when missing; its maxHolders set to `max_holders`.
pub async fn ensure(
    api: &Api<RebootLock>,
    name: &str,
    max_holders: u32,
) -> Result<RebootLock, LockError> {
    for _ in 0..ATTEMPTS {
        match api.get_opt(name).await.map_err(api_err(name))? {
            None => {
                let lock = RebootLock {
                    metadata: ObjectMeta {
                        name: Some(name.into()),
                        ..Default::default()
                    },
                    spec: RebootLockSpec { max_holders },
                    status: None,
                };
                match api.create(&PostParams::default(), &lock).await {
                    Ok(l) => return Ok(l),
                    Err(e) if is_conflict(&e) => continue,
                    Err(e) => return Err(api_err(name)(e)),
                }
            }
            Some(l) if l.spec.max_holders == max_holders => return Ok(l),
            Some(mut l) => {
                l.spec.max_holders = max_holders;
                match api.replace(name, &PostParams::default(), &l).await {
                    Ok(l) => return Ok(l),
                    Err(e) if is_conflict(&e) => continue,
                    Err(e) => return Err(api_err(name)(e)),
                }
            }
        }
    }
    Err(LockError::Contended { name: name.into() })
}

/// Writes `status` over the lock as read in `lock`. Err(None) on a conflict: someone wrote
/// first; read again and decide again.
pub async fn write(
    api: &Api<RebootLock>,
    lock: &RebootLock,
    status: RebootLockStatus,
) -> Result<Option<RebootLock>, LockError> {
    let name = lock.metadata.name.clone().unwrap_or_default();
    let mut next = lock.clone();
    next.status = Some(status);
    match api
        .replace_status(&name, &PostParams::default(), &next)
        .await
    {
        Ok(l) => Ok(Some(l)),
        Err(e) if is_conflict(&e) => Ok(None),
        Err(e) => Err(api_err(&name)(e)),
    }
}

/// Appends a release to the lock's history, keeping the last [`HISTORY`].
pub fn record_release(status: &mut RebootLockStatus, now: Time, node: &str, reason: &str) {
    status
        .history
        .push(format!("{now} {node} released: {reason}"));
    let extra = status.history.len().saturating_sub(HISTORY);
    status.history.drain(..extra);
    status.last_release = Some(now);
}

/// What [`try_acquire`] and [`release`] found, decided on the same copy of the lock they
/// write (so a slot's owner cannot change between the check and the write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotOutcome {
    /// `holder` holds a slot (acquire) or no longer holds one (release).
    Done,
    /// Acquire: every slot is taken. Release: `holder` held no slot.
    Unavailable,
    /// The slot of `holder` was taken from another node, which alone may use or release it.
    HeldFrom(String),
}

/// Whether a slot bound to `owner` may be used by a request from `from` (a slot taken before
/// slots were bound to nodes, or a request not from a node, is not checked).
fn owned_elsewhere(owner: Option<&str>, from: Option<&str>) -> Option<String> {
    match (owner, from) {
        (Some(o), Some(f)) if o != f => Some(o.to_owned()),
        _ => None,
    }
}

/// Takes a slot for `holder` if one is free (or it already holds one from the same node),
/// recording the node a FleetLock request came from.
pub async fn try_acquire(
    api: &Api<RebootLock>,
    name: &str,
    holder: &str,
    phase: HolderPhase,
    from_node: Option<&str>,
    now: Time,
) -> Result<SlotOutcome, LockError> {
    for _ in 0..ATTEMPTS {
        let lock = api
            .get_opt(name)
            .await
            .map_err(api_err(name))?
            .ok_or_else(|| LockError::Missing { name: name.into() })?;
        let mut status = lock.status.clone().unwrap_or_default();
        if let Some(h) = status.holders.iter().find(|h| h.node == holder) {
            return Ok(match owned_elsewhere(h.from_node.as_deref(), from_node) {
                Some(owner) => SlotOutcome::HeldFrom(owner),
                None => SlotOutcome::Done,
            });
        }
        if status.holders.len() >= lock.spec.max_holders as usize {
            return Ok(SlotOutcome::Unavailable);
        }
        status.holders.push(Holder {
            node: holder.into(),
            acquired_at: now,
            phase,
            from_node: from_node.map(str::to_owned),
        });
        if write(api, &lock, status).await?.is_some() {
            return Ok(SlotOutcome::Done);
        }
    }
    Err(LockError::Contended { name: name.into() })
}

/// Gives `holder`'s slot back, unless it was taken from another node than `from_node`.
pub async fn release(
    api: &Api<RebootLock>,
    name: &str,
    holder: &str,
    reason: &str,
    from_node: Option<&str>,
    now: Time,
) -> Result<SlotOutcome, LockError> {
    for _ in 0..ATTEMPTS {
        let Some(lock) = api.get_opt(name).await.map_err(api_err(name))? else {
            return Ok(SlotOutcome::Unavailable);
        };
        let mut status = lock.status.clone().unwrap_or_default();
        let Some(h) = status.holders.iter().find(|h| h.node == holder) else {
            return Ok(SlotOutcome::Unavailable);
        };
        if let Some(owner) = owned_elsewhere(h.from_node.as_deref(), from_node) {
            return Ok(SlotOutcome::HeldFrom(owner));
        }
        status.holders.retain(|h| h.node != holder);
        record_release(&mut status, now, holder, reason);
        if write(api, &lock, status).await?.is_some() {
            return Ok(SlotOutcome::Done);
        }
    }
    Err(LockError::Contended { name: name.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_bound_to_a_node_is_that_nodes_only() {
        assert_eq!(owned_elsewhere(Some("w1"), Some("w2")), Some("w1".into()));
        assert_eq!(owned_elsewhere(Some("w1"), Some("w1")), None);
        assert_eq!(
            owned_elsewhere(None, Some("w2")),
            None,
            "unbound (older) slot"
        );
        assert_eq!(
            owned_elsewhere(Some("w1"), None),
            None,
            "not a FleetLock request"
        );
    }

    #[test]
    fn history_keeps_the_last_entries() {
        let mut s = RebootLockStatus::default();
        for i in 0..25 {
            let now = "2026-11-26T10:00:00Z".parse().expect("time");
            record_release(&mut s, now, &format!("n{i}"), "rebooted");
        }
        assert_eq!(s.history.len(), HISTORY);
        assert!(s.history[0].contains("n5 released"));
        assert!(s.history[HISTORY - 1].contains("n24 released: rebooted"));
        assert_eq!(
            s.last_release.map(|t| t.to_string()).as_deref(),
            Some("2026-11-26T10:00:00Z")
        );
    }
}
