//! Who registered an ephemeral node: a process id and the pid space it is
//! unique in (`libs::pid_space`). ZooKeeper keeps a crashed process's nodes
//! until its session times out (6 s by default), so a role restarted at once
//! would wait that long behind its own old registration: not listening (a
//! comet), listed with a dead pid (a proxy), or leaving the product without a
//! dashboard. A node whose owner is a process of our own pid space that has
//! ended is stale for sure and is removed at once. An owner from another
//! machine, boot or container is never judged: only its session's expiry
//! removes its nodes.

use serde::{Deserialize, Serialize};

use crate::libs::pid_space;

/// The owner fields of a registration (a proxy's, an im instance's, the
/// dashboard leader's), read from its JSON whatever else it holds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct Owner {
    pub pid: u32,
    /// See [`pid_space::current`]; empty when unknown.
    pub pid_space: String,
}

impl Owner {
    /// This process.
    pub fn me() -> Owner {
        Owner {
            pid: std::process::id(),
            pid_space: pid_space::current().to_string(),
        }
    }

    /// True if `registration` (a node's JSON) names a process of this pid
    /// space, not this one, that has ended.
    pub fn has_gone(registration: &[u8]) -> bool {
        let Ok(owner) = serde_json::from_slice::<Owner>(registration) else {
            return false;
        };
        let here = pid_space::current();
        !here.is_empty()
            && owner.pid_space == here
            && owner.pid != 0
            && owner.pid != std::process::id()
            && pid_space::has_ended(owner.pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(pid: u32, pid_space: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"id": "x", "addr": "h:1", "pid": pid, "pid_space": pid_space}))
            .expect("json")
    }

    #[test]
    fn only_an_ended_process_of_our_pid_space_has_gone() {
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        child.wait().expect("reap");
        let ended = child.id();
        let here = pid_space::current();
        assert!(Owner::has_gone(&registration(ended, here)));
        // Alive, ourselves, from elsewhere, or saying nothing: not judged.
        assert!(!Owner::has_gone(&registration(std::process::id(), here)));
        assert!(!Owner::has_gone(&registration(ended, "another-boot/pid:[1]")));
        assert!(!Owner::has_gone(&registration(ended, "")));
        assert!(!Owner::has_gone(br#"{"id": "x", "pid": 1}"#));
        assert!(!Owner::has_gone(b"not json"));
    }
}
