//! Who holds the virtual IP: the decision, apart from the API calls (client-go's leader
//! election, on the local clock: a record is expired when this host has seen it unchanged
//! for the lease duration, whatever the clocks of other hosts say).

use std::time::{Duration, Instant};

/// What the Lease says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    pub holder: String,
    /// The Lease's resourceVersion: any write changes it.
    pub version: String,
}

/// What to do after reading the Lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Write the Lease with this host as holder (a renewal, or taking it over).
    Claim,
    /// Another host holds it.
    Follow,
}

/// One host's view of the election.
#[derive(Debug)]
pub struct Elector {
    pub identity: String,
    pub duration: Duration,
    /// Before its last renewal is this old, a holder gives the address up (it cannot know
    /// whether others already see the Lease as expired).
    pub margin: Duration,
    observed: Option<(Record, Instant)>,
    renewed: Option<Instant>,
}

impl Elector {
    pub fn new(identity: impl Into<String>, duration: Duration, margin: Duration) -> Self {
        Self {
            identity: identity.into(),
            duration,
            margin,
            observed: None,
            renewed: None,
        }
    }

    /// A Lease read at `now`.
    pub fn observe(&mut self, r: Record, now: Instant) -> Decision {
        if self.observed.as_ref().is_none_or(|(o, _)| *o != r) {
            self.observed = Some((r.clone(), now));
        }
        let seen = self.observed.as_ref().map_or(now, |(_, t)| *t);
        if r.holder.is_empty()
            || r.holder == self.identity
            || now.duration_since(seen) >= self.duration
        {
            Decision::Claim
        } else {
            Decision::Follow
        }
    }

    /// The Lease was written with this host as holder at `now`.
    pub fn renewed(&mut self, r: Record, now: Instant) {
        self.observed = Some((r, now));
        self.renewed = Some(now);
    }

    /// Another host holds it (a write lost to a conflict, or the Lease names another).
    pub fn lost(&mut self) {
        self.renewed = None;
    }

    /// Whether this host may hold the address at `now`.
    pub fn holds(&self, now: Instant) -> bool {
        self.renewed
            .is_some_and(|t| now.duration_since(t) < self.duration.saturating_sub(self.margin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(holder: &str, v: &str) -> Record {
        Record {
            holder: holder.into(),
            version: v.into(),
        }
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_free_lease_is_claimed_and_renewals_keep_it() {
        let t = Instant::now();
        let mut e = Elector::new("cp1", 4 * S, S);
        assert_eq!(e.observe(rec("", "1"), t), Decision::Claim);
        assert!(!e.holds(t), "not before the write succeeded");
        e.renewed(rec("cp1", "2"), t);
        assert!(e.holds(t + 2 * S));
        assert!(
            !e.holds(t + 3 * S),
            "given up a margin before others may take it"
        );
        assert_eq!(e.observe(rec("cp1", "2"), t + S), Decision::Claim, "renew");
    }

    #[test]
    fn another_holder_is_followed_until_its_lease_stays_unchanged_for_the_duration() {
        let t = Instant::now();
        let mut e = Elector::new("cp2", 4 * S, S);
        assert_eq!(e.observe(rec("cp1", "5"), t), Decision::Follow);
        // Renewed by cp1: a new version restarts the wait.
        assert_eq!(e.observe(rec("cp1", "6"), t + 3 * S), Decision::Follow);
        assert_eq!(e.observe(rec("cp1", "6"), t + 6 * S), Decision::Follow);
        assert_eq!(
            e.observe(rec("cp1", "6"), t + 7 * S),
            Decision::Claim,
            "expired"
        );
        assert!(!e.holds(t + 7 * S));
    }

    #[test]
    fn the_holder_lets_go_before_a_follower_takes_over() {
        // cp1 renews at t; cp2 reads that record no earlier than t.
        let t = Instant::now();
        let mut holder = Elector::new("cp1", 4 * S, S);
        holder.renewed(rec("cp1", "9"), t);
        let mut follower = Elector::new("cp2", 4 * S, S);
        follower.observe(rec("cp1", "9"), t);
        let mut at = t;
        while follower.observe(rec("cp1", "9"), at) == Decision::Follow {
            at += Duration::from_millis(100);
        }
        assert!(
            !holder.holds(at),
            "both would hold the address at {:?}",
            at - t
        );
        holder.lost();
        assert!(!holder.holds(t));
    }
}
