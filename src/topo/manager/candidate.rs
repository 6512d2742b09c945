//! Who may become a group's master, and who may follow it: the promote's
//! decisions, made from the servers' replication states (see
//! [`super::replication`]) before anything is written, so they are pure and
//! tested without servers.
//!
//! The rule behind every refusal: never make a server the source of data for
//! a server that holds more. With the master alive, only its linked replica
//! may take over (and only once it has caught up, which [`super::promote`]
//! waits for); with the master gone, only the replica that applied the most.
//! `force` turns each refusal into a line of what may be lost.
//!
//! Imports its manager siblings `promote` and `replication` only.

use super::replication::{LookError, Replication, thousands};

/// One server of the group, as looked at just now.
#[derive(Debug, Clone)]
pub struct Looked {
    /// Its address in the group node.
    pub addr: String,
    /// Its state, or why it could not be read.
    pub state: Result<Replication, LookError>,
    /// Whether it reports the group's master as its own master.
    pub follows_master: bool,
}

impl Looked {
    /// Whether it answered at all (an error reply counts: it is alive).
    pub fn answers(&self) -> bool {
        !matches!(self.state, Err(LookError::Unreachable { .. }))
    }
}

/// Why no server may be promoted. Nothing was changed when one is returned;
/// only [`Refusal::Unsafe`] is one that `force` overrides.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The operator named a server that is not a replica of the group.
    #[error("{0} is not a replica of the group")]
    NotAReplica(String),
    /// The server chosen cannot be read, so nothing says what it holds.
    #[error("{addr} cannot be promoted: {reason}")]
    Unreadable {
        /// The server.
        addr: String,
        /// Why it could not be read.
        reason: LookError,
    },
    /// No server qualifies: `why`, then what each server is.
    #[error("refused: {why}{}", describe(.each))]
    NoCandidate {
        /// The rule no server met.
        why: String,
        /// Each other server and its state (or why it cannot be read).
        each: Vec<String>,
    },
    /// Checks that `force` overrides failed; each names what may be lost.
    #[error(
        "refused: {}; nothing was changed (--force promotes anyway, and loses what the other servers hold that it lacks)",
        .0.join("; ")
    )]
    Unsafe(Vec<String>),
}

fn describe(each: &[String]) -> String {
    if each.is_empty() {
        " (the group has no replica)".to_string()
    } else {
        format!(": {}", each.join("; "))
    }
}

/// What the promote will do, once the checks passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// The server to promote.
    pub addr: String,
    /// Its state when chosen.
    pub state: Replication,
    /// The current master, if it answers: the candidate must catch up with it.
    pub live_master: Option<String>,
    /// The refusals `force` overrode, each naming what may be lost.
    pub forced: Vec<String>,
}

/// Chooses the server to promote in a group whose master is `master` (the
/// group node's), from `looked` (every server of the group, the master
/// included if it has one); `named`, if the operator named a server.
///
/// # Errors
/// [`Refusal`]: the reason, in the operator's words.
pub fn choose(
    master: Option<&str>,
    looked: &[Looked],
    named: Option<&str>,
    force: bool,
) -> Result<Choice, Refusal> {
    let master_state = master.and_then(|m| {
        looked
            .iter()
            .find(|l| l.addr == m)
            .and_then(|l| l.state.as_ref().ok())
    });
    let others: Vec<&Looked> = looked
        .iter()
        .filter(|l| Some(l.addr.as_str()) != master)
        .collect();
    let pick = match named {
        Some(n) => others
            .iter()
            .copied()
            .find(|l| l.addr == n)
            .ok_or_else(|| Refusal::NotAReplica(n.to_string()))?,
        None => best(&others, master_state.is_some())
            .ok_or_else(|| no_candidate(master, master_state.is_some(), &others))?,
    };
    let state = pick
        .state
        .as_ref()
        .map_err(|e| Refusal::Unreadable {
            addr: pick.addr.clone(),
            reason: e.clone(),
        })?
        .clone();
    let mut refusals = Vec::new();
    match (master, master_state) {
        (Some(m), Some(ms)) => {
            // The master answers: only its own linked replica may take over.
            if !state.is_replica {
                refusals.push(format!(
                    "{} is not a replica of the master {m} (it is a master with {} keys; {m} has {} keys at offset {})",
                    pick.addr,
                    thousands(state.keys),
                    thousands(ms.keys),
                    thousands(ms.offset)
                ));
            } else if !pick.follows_master {
                refusals.push(format!(
                    "{} is not a replica of the master {m} (it replicates from {}; {} keys at offset {}, {m} has {} keys)",
                    pick.addr,
                    state.master.as_deref().unwrap_or("?"),
                    thousands(state.keys),
                    thousands(state.offset),
                    thousands(ms.keys)
                ));
            } else if !state.link_up {
                refusals.push(format!(
                    "{}'s link to the master {m} is down (it applied offset {} of {}; {} keys of {})",
                    pick.addr,
                    thousands(state.offset),
                    thousands(ms.offset),
                    thousands(state.keys),
                    thousands(ms.keys)
                ));
            }
        }
        (m, _) => {
            // The master is gone (or the group has none): the most advanced
            // replica takes over; a master is never chosen over a replica with data.
            if let Some(top) = best(&others, false)
                && top.addr != pick.addr
                && rank(top) > rank(pick)
            {
                let top_state = top.state.as_ref().ok();
                refusals.push(format!(
                    "{} ({state}) is behind {} ({}); promote {} instead",
                    pick.addr,
                    top.addr,
                    top_state.map(ToString::to_string).unwrap_or_default(),
                    top.addr
                ));
            }
            if let Some(m) = m
                && let Some(Err(e)) = looked
                    .iter()
                    .find(|l| l.addr == m && l.answers())
                    .map(|l| &l.state)
            {
                refusals.push(format!(
                    "the master {m} is alive but its replication state cannot be read ({e})"
                ));
            }
            if let Some(m) = m
                && pick.follows_master
                && state.link_up
            {
                refusals.push(format!(
                    "{}'s link to the master {m} is up: {m} answers it but not this dashboard; \
                     check the network before promoting",
                    pick.addr
                ));
            }
        }
    }
    if !refusals.is_empty() && !force {
        return Err(Refusal::Unsafe(refusals));
    }
    Ok(Choice {
        addr: pick.addr.clone(),
        state,
        live_master: master_state.and(master.map(str::to_string)),
        forced: refusals,
    })
}

/// What to do with another server of the group once `new` (at `new_offset`)
/// is master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Follow {
    /// Make it a replica of the new master.
    Repoint,
    /// Repoint it although it is ahead (forced); the text says what it loses.
    RepointForced(String),
    /// Leave it alone; the text says why.
    Skip(String),
}

/// Whether `addr` (in `state`) may become a replica of `new`, which applied
/// `new_state.offset`: never when it has applied more, since it would full-sync
/// from the less advanced server and drop what only it holds.
pub fn follow(
    addr: &str,
    state: &Result<Replication, LookError>,
    (new, new_state): (&str, &Replication),
    force: bool,
) -> Follow {
    let new_offset = new_state.offset;
    let s = match state {
        Ok(s) => s,
        Err(e) => {
            return Follow::Skip(format!(
                "{addr} was not repointed ({e}); make it a replica of {new} once it is back"
            ));
        }
    };
    if s.offset <= new_offset {
        return Follow::Repoint;
    }
    let what = format!(
        "{addr} ({s}) is ahead of the new master {new} (offset {})",
        thousands(new_offset)
    );
    if force {
        Follow::RepointForced(format!(
            "{what}; it full-syncs from {new}: its {} keys are replaced by {new}'s {}, and the writes past offset {} are lost",
            thousands(s.keys),
            thousands(new_state.keys),
            thousands(new_offset)
        ))
    } else {
        Follow::Skip(format!(
            "{what}; it was not repointed, so it keeps its data (repoint it, or promote it, by hand)"
        ))
    }
}

/// The order of preference: a replica with data first, then the most applied,
/// then the most keys. Servers that do not answer come last.
fn rank(l: &Looked) -> (bool, bool, u64, u64) {
    match &l.state {
        Ok(s) => (
            true,
            s.is_replica && (s.offset > 0 || s.keys > 0),
            s.offset,
            s.keys,
        ),
        Err(_) => (false, false, 0, 0),
    }
}

/// The best answering server; with `master_alive`, among those linked to it.
fn best<'a>(others: &[&'a Looked], master_alive: bool) -> Option<&'a Looked> {
    others
        .iter()
        .copied()
        .filter(|l| match &l.state {
            Ok(s) if master_alive => s.is_replica && l.follows_master && s.link_up,
            Ok(_) => true,
            Err(_) => false,
        })
        .max_by_key(|l| rank(l))
}

fn no_candidate(master: Option<&str>, master_alive: bool, others: &[&Looked]) -> Refusal {
    let each = others
        .iter()
        .map(|l| match &l.state {
            Ok(s) => format!("{} is {s}", l.addr),
            Err(e) => e.to_string(),
        })
        .collect();
    let why = match (master, master_alive) {
        (Some(m), true) => format!("no replica is linked to the master {m}"),
        _ => "no server of the group answers".to_string(),
    };
    Refusal::NoCandidate { why, each }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(of: &str, link_up: bool, offset: u64, keys: u64) -> Result<Replication, LookError> {
        Ok(Replication {
            is_replica: true,
            master: Some(of.into()),
            link_up,
            offset,
            keys,
        })
    }

    fn master(offset: u64, keys: u64) -> Result<Replication, LookError> {
        Ok(Replication {
            is_replica: false,
            master: None,
            link_up: false,
            offset,
            keys,
        })
    }

    fn looked(addr: &str, state: Result<Replication, LookError>, follows: bool) -> Looked {
        Looked {
            addr: addr.into(),
            state,
            follows_master: follows,
        }
    }

    fn unreachable(addr: &str) -> Result<Replication, LookError> {
        Err(LookError::Unreachable {
            addr: addr.into(),
            reason: "connection refused".into(),
        })
    }

    fn refusing(addr: &str) -> Result<Replication, LookError> {
        Err(LookError::Refused {
            addr: addr.into(),
            what: "-NOAUTH Authentication required.".into(),
        })
    }

    const M: &str = "127.0.0.1:6379";
    const R: &str = "127.0.0.1:6380";
    const S: &str = "127.0.0.1:6381";

    #[test]
    fn a_linked_replica_of_a_live_master_is_chosen() {
        let all = [
            looked(M, master(100, 10), false),
            looked(R, replica(M, true, 90, 9), true),
        ];
        let c = choose(Some(M), &all, Some(R), false).expect("allowed");
        assert_eq!((c.addr.as_str(), c.live_master.as_deref()), (R, Some(M)));
        assert!(c.forced.is_empty());
        assert_eq!(choose(Some(M), &all, None, false).expect("chosen").addr, R);
    }

    #[test]
    fn the_wipe_is_refused() {
        // R was promoted; M came back empty as a master and is named.
        let all = [
            looked(R, master(5000, 10_532), false),
            looked(M, master(0, 0), false),
        ];
        let e = choose(Some(R), &all, Some(M), false).expect_err("refused");
        assert!(matches!(e, Refusal::Unsafe(_)), "forceable: {e}");
        let e = e.to_string();
        assert!(
            e.contains(
                "127.0.0.1:6379 is not a replica of the master 127.0.0.1:6380 (it is a master with 0 keys"
            ),
            "{e}"
        );
        assert!(e.contains("10,532 keys"), "{e}");
        let forced = choose(Some(R), &all, Some(M), true).expect("forced");
        assert_eq!(forced.forced.len(), 1);
    }

    #[test]
    fn a_replica_with_its_link_down_or_another_master_is_refused() {
        let down = [
            looked(M, master(100, 10), false),
            looked(R, replica(M, false, 40, 4), true),
        ];
        let e = choose(Some(M), &down, Some(R), false)
            .expect_err("down")
            .to_string();
        assert!(e.contains("link to the master 127.0.0.1:6379 is down"), "{e}");
        let elsewhere = [
            looked(M, master(100, 10), false),
            looked(R, replica(S, true, 40, 4), false),
        ];
        let e = choose(Some(M), &elsewhere, Some(R), false)
            .expect_err("elsewhere")
            .to_string();
        assert!(e.contains("replicates from 127.0.0.1:6381"), "{e}");
        let e = choose(Some(M), &elsewhere, None, false).expect_err("none linked");
        assert!(matches!(e, Refusal::NoCandidate { .. }), "not forceable: {e}");
        assert_eq!(
            e.to_string(),
            "refused: no replica is linked to the master 127.0.0.1:6379: \
             127.0.0.1:6380 is a replica of 127.0.0.1:6381 (link up), offset 40, 4 keys"
        );
        assert_eq!(
            choose(Some(M), &elsewhere, Some(S), false),
            Err(Refusal::NotAReplica(S.to_string()))
        );
    }

    #[test]
    fn with_the_master_gone_the_most_advanced_replica_wins() {
        let all = [
            looked(M, unreachable(M), false),
            looked(R, replica(M, false, 900, 9), true),
            looked(S, replica(M, false, 1000, 10), true),
        ];
        assert_eq!(choose(Some(M), &all, None, false).expect("chosen").addr, S);
        let e = choose(Some(M), &all, Some(R), false)
            .expect_err("behind")
            .to_string();
        assert!(e.contains("is behind 127.0.0.1:6381"), "{e}");
        let mut alive = all.clone();
        alive[0].state = refusing(M);
        let e = choose(Some(M), &alive, Some(S), false)
            .expect_err("alive")
            .to_string();
        assert!(e.contains("is alive but"), "{e}");
        assert!(e.contains("NOAUTH"), "{e}");
        assert_eq!(choose(Some(M), &all, Some(S), false).expect("best").addr, S);
    }

    #[test]
    fn an_empty_master_is_never_chosen_over_a_replica_with_data() {
        let all = [
            looked(M, unreachable(M), false),
            looked(R, master(7000, 0), false),
            looked(S, replica(M, false, 10, 3), true),
        ];
        assert_eq!(choose(Some(M), &all, None, false).expect("chosen").addr, S);
        assert!(choose(Some(M), &all, Some(R), false).is_err());
    }

    #[test]
    fn a_more_advanced_server_is_not_made_to_follow() {
        let new = master(10, 2).expect("state");
        let new = (R, &new);
        assert_eq!(follow(S, &replica(M, false, 10, 1), new, false), Follow::Repoint);
        assert_eq!(follow(S, &master(0, 0), new, false), Follow::Repoint);
        assert!(matches!(follow(S, &master(11, 5), new, false), Follow::Skip(_)));
        let Follow::RepointForced(what) = follow(S, &master(11, 5), new, true) else {
            panic!("forced")
        };
        assert!(
            what.contains("its 5 keys are replaced by 127.0.0.1:6380's 2"),
            "{what}"
        );
        assert!(matches!(follow(S, &unreachable(S), new, true), Follow::Skip(_)));
    }
}
