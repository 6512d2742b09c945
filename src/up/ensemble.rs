//! A ZooKeeper ensemble on loopback: N members, each a [`ZooKeeper`] process
//! with its own ports and data dir, for `reborn up --zk-nodes N` and for the
//! tests that kill members under load.
//!
//! An ensemble of one is a standalone server (no quorum ports), so `reborn up`
//! has one code path whatever the count. Every role reaches the ensemble through
//! one multi-host connect string, `127.0.0.1:a,127.0.0.1:b,…`; the client
//! library moves a session to another member when its member goes away.

use std::path::Path;

use super::error::UpError;
use super::workdir::Workdir;
use super::zookeeper::{MemberPorts, Membership, ZooKeeper};

/// A running ensemble; its members stop on drop.
#[derive(Debug)]
pub struct Ensemble {
    members: Vec<ZooKeeper>,
}

impl Ensemble {
    /// Starts one member per entry of `ports`, member `i` (from 1) in
    /// `dir/zookeeper-i` (one member: a standalone server in `dir/zookeeper`),
    /// and waits until every member serves, that is until they formed a quorum.
    ///
    /// # Errors
    /// [`UpError::Invalid`] for no member or an even count (see
    /// [`check_size`]), a taken port, or a member that fails to start.
    pub fn start(ports: &[MemberPorts], dir: &Path) -> Result<Ensemble, UpError> {
        check_size(ports.len())?;
        let dirs = (1..=ports.len())
            .map(|i| Workdir::given(dir.join(member_dir(i, ports.len()))))
            .collect::<Result<Vec<_>, _>>()?;
        Ensemble::launch(ports, dirs)
    }

    /// Like [`start`](Self::start), in fresh temp dirs removed on stop.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn start_in_temp_dirs(ports: &[MemberPorts]) -> Result<Ensemble, UpError> {
        check_size(ports.len())?;
        let dirs = ports
            .iter()
            .map(|p| Workdir::temp(&format!("zk-{}", p.client)))
            .collect::<Result<Vec<_>, _>>()?;
        Ensemble::launch(ports, dirs)
    }

    fn launch(ports: &[MemberPorts], dirs: Vec<Workdir>) -> Result<Ensemble, UpError> {
        let mut ensemble = Ensemble {
            members: Vec::with_capacity(ports.len()),
        };
        // Every member first: none serves before a quorum of them runs.
        for (i, (p, dir)) in ports.iter().zip(dirs).enumerate() {
            let membership = if ports.len() == 1 {
                Membership::Standalone
            } else {
                Membership::Member {
                    id: i + 1,
                    peers: ports,
                }
            };
            ensemble
                .members
                .push(ZooKeeper::spawn(p.client, membership, dir)?);
        }
        for member in &mut ensemble.members {
            member.wait_serving()?;
        }
        Ok(ensemble)
    }

    /// The connect string every role takes: `127.0.0.1:a,127.0.0.1:b,…`.
    pub fn connect_string(&self) -> String {
        connect_string(self.members.iter().map(ZooKeeper::port))
    }

    /// The members, member 1 first.
    pub fn members(&self) -> &[ZooKeeper] {
        &self.members
    }

    /// Member `i` (from 0), to kill, restart or ask; `None` past the last.
    pub fn member_mut(&mut self, i: usize) -> Option<&mut ZooKeeper> {
        self.members.get_mut(i)
    }

    /// The index of the member that leads now, by its `srvr` answer
    /// (`Mode: leader`; a standalone server says `Mode: standalone`).
    pub fn leader(&self) -> Option<usize> {
        self.members.iter().position(|m| {
            m.four_letter("srvr").is_ok_and(|a| {
                a.lines()
                    .any(|l| l.trim() == "Mode: leader" || l.trim() == "Mode: standalone")
            })
        })
    }

    /// The index of the member that holds session `session_id` now (its
    /// connection is listed by `cons`), if any.
    pub fn member_of_session(&self, session_id: i64) -> Option<usize> {
        let sid = format!("sid=0x{session_id:x}");
        self.members.iter().position(|m| {
            m.four_letter("cons").is_ok_and(|a| {
                a.lines()
                    .any(|l| l.split([',', '(', ')']).any(|f| f.trim() == sid))
            })
        })
    }

    /// Stops every member, the last first. Idempotent; also done on drop.
    pub fn stop(&mut self) {
        while let Some(mut member) = self.members.pop() {
            tracing::info!(addr = %member.addr(), "stopping ZooKeeper");
            member.stop();
        }
    }
}

impl Drop for Ensemble {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `127.0.0.1:a,127.0.0.1:b,…` for the client ports `ports`.
pub fn connect_string(ports: impl IntoIterator<Item = u16>) -> String {
    ports
        .into_iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Accepts an odd number of members: an ensemble serves while a majority
/// runs, so 2N members survive the loss of N-1, no more than 2N-1 do; the
/// extra member only adds one more whose loss counts against the majority.
///
/// # Errors
/// [`UpError::Invalid`] saying so.
pub fn check_size(nodes: usize) -> Result<(), UpError> {
    if nodes == 0 {
        return Err(UpError::Invalid("--zk-nodes must be at least 1".into()));
    }
    if nodes.is_multiple_of(2) {
        return Err(UpError::Invalid(format!(
            "--zk-nodes {nodes}: use an odd number. An ensemble serves while a majority of it runs: \
             {nodes} members need {} and survive the loss of {}, as {} do, so the last one \
             only adds a member to lose",
            nodes / 2 + 1,
            nodes / 2 - 1,
            nodes - 1
        )));
    }
    Ok(())
}

/// `zookeeper` for a lone server (the layout of `reborn up` before ensembles),
/// `zookeeper-<i>` for member `i` of several.
fn member_dir(i: usize, count: usize) -> String {
    if count == 1 {
        "zookeeper".to_string()
    } else {
        format!("zookeeper-{i}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_and_empty_ensembles_are_refused_with_the_reason() {
        assert!(check_size(1).is_ok());
        assert!(check_size(3).is_ok());
        let err = check_size(4).unwrap_err().to_string();
        assert!(
            err.contains("odd") && err.contains("survive the loss of 1, as 3 do"),
            "{err}"
        );
        assert!(check_size(0).is_err());
    }

    #[test]
    fn the_connect_string_lists_every_member() {
        assert_eq!(
            connect_string([2181, 2182, 2183]),
            "127.0.0.1:2181,127.0.0.1:2182,127.0.0.1:2183"
        );
    }
}
