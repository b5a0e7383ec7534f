//! etcd membership from the Cluster file: a new cluster is formed by every member at once;
//! a running one is changed a member at a time through etcd's own API: a new host joins as
//! a learner and is promoted once it has caught up, a host taken out of the file has its
//! member removed, and a change that would cost the quorum is refused with the reason.
//!
//! What membership a member starts with is written by apply to
//! [`MEMBERSHIP_ENV`] on the member's host when it first starts (etcd reads it from the
//! environment and ignores it once the member has data), never rendered: a running cluster
//! is never started again as a new one.

use std::collections::BTreeSet;

use serde::Deserialize;

/// The environment file with a member's initial membership.
pub const MEMBERSHIP_ENV: &str = "/etc/etcd/membership.env";
/// Where a member keeps its data.
pub const DATA_DIR: &str = "/var/lib/etcd";

/// One member, as `etcdctl member list -w json` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Member {
    #[serde(rename = "ID")]
    pub id: u64,
    /// Empty until the member first starts.
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "peerURLs")]
    pub peer_urls: Vec<String>,
    #[serde(default, rename = "clientURLs")]
    pub client_urls: Vec<String>,
    #[serde(default, rename = "isLearner")]
    pub is_learner: bool,
}

impl Member {
    /// The id as etcdctl takes it (hex).
    pub fn hex(&self) -> String {
        format!("{:x}", self.id)
    }

    pub fn shown(&self) -> String {
        if self.name.is_empty() {
            self.peer_urls.join(",")
        } else {
            self.name.clone()
        }
    }
}

#[derive(Debug, Deserialize)]
struct MemberList {
    header: Header,
    #[serde(default)]
    members: Vec<Member>,
}

#[derive(Debug, Deserialize)]
struct Header {
    cluster_id: u64,
}

/// Parses `etcdctl member list -w json`: the cluster's id (hex, as etcdctl shows it) and its
/// members.
pub fn parse_members(json: &str) -> Result<(String, Vec<Member>), serde_json::Error> {
    serde_json::from_str::<MemberList>(json)
        .map(|l| (format!("{:x}", l.header.cluster_id), l.members))
}

#[derive(Debug, Deserialize)]
struct Health {
    endpoint: String,
    health: bool,
}

/// The client URLs `etcdctl endpoint health --cluster -w json` found healthy.
pub fn parse_healthy(json: &str) -> BTreeSet<String> {
    let start = json.find('[').unwrap_or(0);
    serde_json::from_str::<Vec<Health>>(&json[start..])
        .map(|list| {
            list.into_iter()
                .filter(|h| h.health)
                .map(|h| h.endpoint)
                .collect()
        })
        .unwrap_or_default()
}

/// An etcd host of the Cluster file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub name: String,
    pub peer_url: String,
    /// Whether the host holds member data already.
    pub has_data: bool,
}

/// One step of a membership change, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Remove this member (its host left the file, or its host lost its data).
    Remove { member: Member, why: String },
    /// Set this host's stale data aside (it is no member) before it joins.
    ClearData { host: String },
    /// Add this host as a learner, start it, promote it once in sync.
    Join { host: String },
}

/// Why a membership change is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "removing etcd member {member} would leave {healthy} healthy of {voters} voting member(s), \
         below the quorum of {quorum}; bring the unhealthy members back first, or remove fewer \
         members at a time"
    )]
    Quorum {
        member: String,
        healthy: usize,
        voters: usize,
        quorum: usize,
    },
    #[error("removing etcd member {0} would leave the cluster without a voting member")]
    LastMember(String),
    #[error(
        "etcd member {member}'s peer address is {have}, the Cluster file gives {want}; an etcd \
         host's address cannot change in place: take the host out of the file, apply, then add \
         it back with its new address"
    )]
    Renamed {
        member: String,
        have: String,
        want: String,
    },
}

/// The steps that make the cluster's members `members` (healthy: the client URLs that
/// answered) into the file's `wanted`: unhealthy departing members removed first (they hold
/// no healthy vote, and removing them lowers the quorum the joins must reach), then one join
/// at a time, then the healthy departing members removed (a host replaced while it runs keeps
/// its vote until the new one has one: the cluster never tolerates fewer failures than
/// before). Each removal is checked against the quorum left, counting the joins before it.
pub fn plan(
    wanted: &[Wanted],
    members: &[Member],
    healthy: &BTreeSet<String>,
) -> Result<Vec<Step>, Refusal> {
    let mut steps = Vec::new();
    let mut current = Votes {
        members: members.to_vec(),
        joined: 0,
    };
    // A member whose name is a file host's but whose peer address is not: refused.
    for m in members {
        if let Some(w) = wanted
            .iter()
            .find(|w| w.name == m.name && !m.peer_urls.contains(&w.peer_url))
        {
            return Err(Refusal::Renamed {
                member: m.name.clone(),
                have: m.peer_urls.join(","),
                want: w.peer_url.clone(),
            });
        }
    }
    let departing = || {
        members
            .iter()
            .filter(|m| !wanted.iter().any(|w| m.peer_urls.contains(&w.peer_url)))
    };
    let departs = || "its host is no longer an etcd host of the Cluster file".to_owned();
    for m in departing().filter(|m| !is_healthy(m, healthy)) {
        remove(m, departs(), &mut current, &mut steps, healthy)?;
    }
    for w in wanted {
        let member = members.iter().find(|m| m.peer_urls.contains(&w.peer_url));
        match (member, w.has_data) {
            // A member with its data: it runs as it is.
            (Some(m), true) if !m.is_learner => {}
            // A member without data (a join that was interrupted, or a host that lost its
            // disk), or a learner never promoted: removed and joined again.
            (Some(m), has_data) => {
                let why = if m.is_learner {
                    "a learner left by an interrupted join".to_owned()
                } else {
                    "its host has no member data".to_owned()
                };
                remove(m, why, &mut current, &mut steps, healthy)?;
                join(w, has_data, &mut current, &mut steps);
            }
            (None, has_data) => join(w, has_data, &mut current, &mut steps),
        }
    }
    for m in departing().filter(|m| is_healthy(m, healthy)) {
        remove(m, departs(), &mut current, &mut steps, healthy)?;
    }
    Ok(steps)
}

/// The voting members as the plan goes: the members listed at the start, less those it
/// removed, and the count of hosts it joined (healthy voters once promoted).
struct Votes {
    members: Vec<Member>,
    joined: usize,
}

/// `w` joins (its stale data set aside first).
fn join(w: &Wanted, has_data: bool, current: &mut Votes, steps: &mut Vec<Step>) {
    if has_data {
        steps.push(Step::ClearData {
            host: w.name.clone(),
        });
    }
    steps.push(Step::Join {
        host: w.name.clone(),
    });
    current.joined += 1;
}

fn is_healthy(m: &Member, healthy: &BTreeSet<String>) -> bool {
    m.client_urls.iter().any(|u| healthy.contains(u))
}

/// Removes `m` from `current` as a step, unless that leaves fewer healthy voters than a
/// quorum (or none).
fn remove(
    m: &Member,
    why: String,
    current: &mut Votes,
    steps: &mut Vec<Step>,
    healthy: &BTreeSet<String>,
) -> Result<(), Refusal> {
    quorum_left(m, current, healthy)?;
    current.members.retain(|x| x.id != m.id);
    steps.push(Step::Remove {
        member: m.clone(),
        why,
    });
    Ok(())
}

/// Refused when removing `m` would leave fewer healthy voters than a quorum (or none).
fn quorum_left(m: &Member, current: &Votes, healthy: &BTreeSet<String>) -> Result<(), Refusal> {
    if m.is_learner {
        return Ok(());
    }
    let others: Vec<&Member> = current
        .members
        .iter()
        .filter(|x| !x.is_learner && x.id != m.id)
        .collect();
    let voters = others.len() + current.joined;
    if voters == 0 {
        return Err(Refusal::LastMember(m.shown()));
    }
    let healthy_left = others.iter().filter(|x| is_healthy(x, healthy)).count() + current.joined;
    let quorum = voters / 2 + 1;
    if healthy_left < quorum {
        return Err(Refusal::Quorum {
            member: m.shown(),
            healthy: healthy_left,
            voters,
            quorum,
        });
    }
    Ok(())
}

/// The check of a removal planned earlier, again with the members and health of now (after
/// the joins before it, which take minutes).
pub fn check_removal(
    m: &Member,
    members: &[Member],
    healthy: &BTreeSet<String>,
) -> Result<(), Refusal> {
    let now = Votes {
        members: members.to_vec(),
        joined: 0,
    };
    quorum_left(m, &now, healthy)
}

/// The membership a joining member starts with: the members now (started ones by name,
/// the joining one by its host name).
pub fn initial_cluster(members: &[Member], joining: &Wanted) -> String {
    let mut parts: Vec<String> = members
        .iter()
        .filter(|m| !m.name.is_empty() && !m.peer_urls.contains(&joining.peer_url))
        .flat_map(|m| m.peer_urls.iter().map(move |u| format!("{}={u}", m.name)))
        .collect();
    parts.push(format!("{}={}", joining.name, joining.peer_url));
    parts.join(",")
}

/// The environment file of a member's first start.
pub fn membership_env(initial_cluster: &str, state: &str, token: &str) -> String {
    let mut s = format!(
        "# The membership this etcd member first started with. Written by `strata apply`;\n\
         # etcd ignores it once the member has data.\n\
         ETCD_INITIAL_CLUSTER={initial_cluster}\n\
         ETCD_INITIAL_CLUSTER_STATE={state}\n"
    );
    if !token.is_empty() {
        s.push_str(&format!("ETCD_INITIAL_CLUSTER_TOKEN={token}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, name: &str, learner: bool) -> Member {
        Member {
            id,
            name: name.into(),
            peer_urls: vec![format!("https://{name}:2380")],
            client_urls: if name.is_empty() {
                vec![]
            } else {
                vec![format!("https://{name}:2379")]
            },
            is_learner: learner,
        }
    }

    /// Started voting members named `names`, ids from 1.
    fn voters(names: &[&str]) -> Vec<Member> {
        (1..)
            .zip(names)
            .map(|(id, n)| member(id, n, false))
            .collect()
    }

    fn wanted(name: &str, has_data: bool) -> Wanted {
        Wanted {
            name: name.into(),
            peer_url: format!("https://{name}:2380"),
            has_data,
        }
    }

    fn healthy(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| format!("https://{n}:2379")).collect()
    }

    #[test]
    fn parses_etcdctl_json() {
        let json = r#"{"header":{"cluster_id":1,"member_id":2},"members":[{"ID":443629905751424238,"name":"a","peerURLs":["http://127.0.0.1:32380"],"clientURLs":["http://127.0.0.1:32379"]},{"ID":17952911460202339962,"peerURLs":["http://127.0.0.1:32480"],"isLearner":true}]}"#;
        let (id, m) = parse_members(json).expect("json");
        assert_eq!(id, "1");
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].hex(), "628170c800dbcee");
        assert!(m[1].is_learner && m[1].name.is_empty());
        assert_eq!(m[1].shown(), "http://127.0.0.1:32480");
        let h = parse_healthy(
            "{\"level\":\"warn\"}\n[{\"endpoint\":\"https://a:2379\",\"health\":true,\"took\":\"1ms\"},\
             {\"endpoint\":\"https://b:2379\",\"health\":false,\"error\":\"deadline\"}]",
        );
        assert_eq!(h, healthy(&["a"]));
    }

    #[test]
    fn growing_joins_one_host_at_a_time_in_file_order() {
        let steps = plan(
            &[
                wanted("cp1", true),
                wanted("cp2", false),
                wanted("cp3", false),
            ],
            &[member(1, "cp1", false)],
            &healthy(&["cp1"]),
        )
        .expect("plan");
        assert_eq!(
            steps,
            [
                Step::Join { host: "cp2".into() },
                Step::Join { host: "cp3".into() }
            ]
        );
    }

    #[test]
    fn an_unhealthy_replaced_host_is_removed_first_then_the_new_one_joins() {
        let members = voters(&["cp1", "cp2", "cp3"]);
        let steps = plan(
            &[
                wanted("cp1", true),
                wanted("cp2", true),
                wanted("cp4", false),
            ],
            &members,
            &healthy(&["cp1", "cp2"]),
        )
        .expect("plan");
        assert!(matches!(&steps[0], Step::Remove { member, .. } if member.name == "cp3"));
        assert_eq!(steps[1], Step::Join { host: "cp4".into() });
        assert_eq!(steps.len(), 2);
    }

    #[test]
    fn a_host_replaced_while_it_runs_keeps_its_vote_until_the_new_one_joined() {
        let members = voters(&["cp1", "cp2", "cp3"]);
        let steps = plan(
            &[
                wanted("cp1", true),
                wanted("cp2", true),
                wanted("cp4", false),
            ],
            &members,
            &healthy(&["cp1", "cp2", "cp3"]),
        )
        .expect("plan");
        assert_eq!(steps[0], Step::Join { host: "cp4".into() });
        assert!(matches!(&steps[1], Step::Remove { member, .. } if member.name == "cp3"));
        assert_eq!(steps.len(), 2);
    }

    #[test]
    fn a_removal_after_the_joins_is_checked_again_with_the_health_of_then() {
        let members = voters(&["cp1", "cp2", "cp3", "cp4"]);
        assert_eq!(
            check_removal(
                &members[2],
                &members,
                &healthy(&["cp1", "cp2", "cp3", "cp4"])
            ),
            Ok(())
        );
        // cp2 went down while cp4 joined: 2 healthy of 3 voters left is still a quorum;
        // with cp1 down too, it is not.
        assert_eq!(
            check_removal(&members[2], &members, &healthy(&["cp1", "cp3", "cp4"])),
            Ok(())
        );
        assert!(matches!(
            check_removal(&members[2], &members, &healthy(&["cp3", "cp4"])),
            Err(Refusal::Quorum {
                healthy: 1,
                voters: 3,
                quorum: 2,
                ..
            })
        ));
    }

    #[test]
    fn removals_that_cost_the_quorum_are_refused() {
        let members = voters(&["cp1", "cp2", "cp3"]);
        // cp2 is down; removing healthy cp3 would leave 1 healthy of 2 voters.
        let e = plan(
            &[wanted("cp1", true), wanted("cp2", true)],
            &members,
            &healthy(&["cp1", "cp3"]),
        )
        .expect_err("quorum");
        assert_eq!(
            e,
            Refusal::Quorum {
                member: "cp3".into(),
                healthy: 1,
                voters: 2,
                quorum: 2
            }
        );
        assert!(e.to_string().contains("below the quorum of 2"), "{e}");
        // The down one first, then a healthy one: 1 of 1 left, fine.
        let steps =
            plan(&[wanted("cp1", true)], &members, &healthy(&["cp1", "cp3"])).expect("plan");
        let removed: Vec<String> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Remove { member, .. } => Some(member.name.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(removed, ["cp2", "cp3"]);
        // Never the last voter.
        let e = plan(&[], &[member(1, "cp1", false)], &healthy(&["cp1"])).expect_err("last");
        assert_eq!(e, Refusal::LastMember("cp1".into()));
    }

    #[test]
    fn interrupted_joins_and_lost_data_are_redone() {
        let members = [
            member(1, "cp1", false),
            member(2, "", true),
            member(3, "cp3", false),
        ];
        let steps = plan(
            &[
                wanted("cp1", true),
                Wanted {
                    name: "cp2".into(),
                    peer_url: "https://:2380".into(),
                    has_data: true,
                },
                wanted("cp3", false),
            ],
            &members,
            &healthy(&["cp1", "cp3"]),
        )
        .expect("plan");
        assert!(
            matches!(&steps[0], Step::Remove { member, why } if member.id == 2 && why.contains("learner"))
        );
        assert_eq!(steps[1], Step::ClearData { host: "cp2".into() });
        assert_eq!(steps[2], Step::Join { host: "cp2".into() });
        assert!(
            matches!(&steps[3], Step::Remove { member, why } if member.id == 3 && why.contains("no member data"))
        );
        assert_eq!(steps[4], Step::Join { host: "cp3".into() });
        // Data on a host that is no member: set aside, then joined.
        let steps = plan(
            &[wanted("cp1", true), wanted("cp2", true)],
            &[member(1, "cp1", false)],
            &healthy(&["cp1"]),
        )
        .expect("plan");
        assert_eq!(
            steps,
            [
                Step::ClearData { host: "cp2".into() },
                Step::Join { host: "cp2".into() }
            ]
        );
    }

    #[test]
    fn an_address_change_is_refused() {
        let mut m = member(1, "cp1", false);
        m.peer_urls = vec!["https://10.0.0.1:2380".into()];
        let e = plan(&[wanted("cp1", true)], &[m], &healthy(&["cp1"])).expect_err("renamed");
        assert!(matches!(e, Refusal::Renamed { .. }), "{e}");
    }

    #[test]
    fn a_joining_member_starts_with_the_members_now() {
        let members = [member(1, "cp1", false), member(2, "cp2", false)];
        assert_eq!(
            initial_cluster(&members, &wanted("cp3", false)),
            "cp1=https://cp1:2380,cp2=https://cp2:2380,cp3=https://cp3:2380"
        );
    }
}
