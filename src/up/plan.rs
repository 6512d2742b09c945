//! The shape of the local cluster `reborn up` builds, decided before anything
//! starts: which ports the ZooKeeper members take, which ports form which
//! groups, which slots each group owns.
//!
//! Pure data and arithmetic, so it is checked (and tested) without processes.

use crate::libs::hash::SLOT_COUNT;
use crate::topo::model::GroupId;

use super::ensemble;
use super::error::UpError;
use super::zookeeper::MemberPorts;

/// How far a member's election port is from its quorum port: 2888 and 3888,
/// ZooKeeper's usual pair, for the first member by default.
const ELECTION_OFFSET: u16 = 1000;

/// The ports of `nodes` ZooKeeper members: member `i` (from 0) serves clients
/// on `client + i`, its quorum port is `peer + i` and its election port
/// `peer + 1000 + i`. With the defaults: 2181-2183, 2888-2890 and 3888-3890.
///
/// # Errors
/// [`UpError::Invalid`] for an even or zero count, or ports past 65535.
pub fn zk_members(client: u16, peer: u16, nodes: usize) -> Result<Vec<MemberPorts>, UpError> {
    ensemble::check_size(nodes)?;
    let past_the_end = || UpError::Invalid(format!("--zk-nodes {nodes} needs ports past 65535"));
    (0..nodes)
        .map(|i| {
            let i = u16::try_from(i).map_err(|_| past_the_end())?;
            let at = |base: u16| base.checked_add(i).ok_or_else(past_the_end);
            Ok(MemberPorts {
                client: at(client)?,
                quorum: at(peer)?,
                election: at(peer.checked_add(ELECTION_OFFSET).ok_or_else(past_the_end)?)?,
            })
        })
        .collect()
}

/// One group to start: a master and its replicas, and the slots it owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPlan {
    /// The group id (from 1).
    pub id: GroupId,
    /// The master's port.
    pub master: u16,
    /// The replicas' ports.
    pub replicas: Vec<u16>,
    /// First slot owned, inclusive.
    pub first_slot: u16,
    /// Last slot owned, inclusive.
    pub last_slot: u16,
}

/// Splits `ports` into groups of `1 + replicas` ports (master first) and spreads
/// the 1024 slots evenly over them: 4 ports with 1 replica give group 1 =
/// 16379+16380 with slots 0-511 and group 2 = 16381+16382 with 512-1023.
///
/// # Errors
/// [`UpError::Invalid`] for no ports, a repeated port, a count that is not a
/// multiple of the group size, or more groups than slots.
pub fn groups(ports: &[u16], replicas: usize) -> Result<Vec<GroupPlan>, UpError> {
    let size = replicas + 1;
    if ports.is_empty() {
        return Err(UpError::Invalid("--redis-ports is empty".into()));
    }
    if let Some(dup) = ports.iter().enumerate().find(|(i, p)| ports[..*i].contains(p)) {
        return Err(UpError::Invalid(format!("redis port {} is listed twice", dup.1)));
    }
    if !ports.len().is_multiple_of(size) {
        return Err(UpError::Invalid(format!(
            "{} redis ports do not split into groups of {size} (1 master + {replicas} replicas)",
            ports.len()
        )));
    }
    let count = ports.len() / size;
    if count > SLOT_COUNT {
        return Err(UpError::Invalid(format!(
            "{count} groups: more than the {SLOT_COUNT} slots"
        )));
    }
    let mut plans = Vec::with_capacity(count);
    for (i, chunk) in ports.chunks(size).enumerate() {
        // chunks() never yields an empty slice.
        let Some((master, replicas)) = chunk.split_first() else {
            continue;
        };
        // count <= SLOT_COUNT (1024), so ids and slot bounds fit their types.
        plans.push(GroupPlan {
            id: (i + 1) as GroupId,
            master: *master,
            replicas: replicas.to_vec(),
            first_slot: (i * SLOT_COUNT / count) as u16,
            last_slot: ((i + 1) * SLOT_COUNT / count - 1) as u16,
        });
    }
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_zookeeper_members_take_consecutive_ports() {
        let members = zk_members(2181, 2888, 3).unwrap();
        assert_eq!(members.len(), 3);
        assert_eq!(
            members[2],
            MemberPorts {
                client: 2183,
                quorum: 2890,
                election: 3890
            }
        );
        assert!(zk_members(2181, 2888, 2).is_err());
        assert!(zk_members(65535, 2888, 3).is_err());
    }

    #[test]
    fn four_ports_make_two_groups_with_half_the_slots_each() {
        let plans = groups(&[16379, 16380, 16381, 16382], 1).unwrap();
        assert_eq!(
            plans,
            vec![
                GroupPlan {
                    id: 1,
                    master: 16379,
                    replicas: vec![16380],
                    first_slot: 0,
                    last_slot: 511
                },
                GroupPlan {
                    id: 2,
                    master: 16381,
                    replicas: vec![16382],
                    first_slot: 512,
                    last_slot: 1023
                },
            ]
        );
    }

    #[test]
    fn uneven_splits_cover_every_slot_once() {
        let plans = groups(&[1, 2, 3], 0).unwrap();
        assert_eq!(plans[0].first_slot, 0);
        for w in plans.windows(2) {
            assert_eq!(w[0].last_slot + 1, w[1].first_slot);
        }
        assert_eq!(plans[2].last_slot, 1023);
    }

    #[test]
    fn bad_port_lists_are_refused_with_a_reason() {
        let err = groups(&[1, 2, 3], 1).unwrap_err().to_string();
        assert!(err.contains("groups of 2"), "{err}");
        let err = groups(&[1, 1], 1).unwrap_err().to_string();
        assert!(err.contains("listed twice"), "{err}");
        assert!(groups(&[], 1).is_err());
    }
}
