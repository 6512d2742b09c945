//! The shape of the local cluster `reborn up` builds, decided before anything
//! starts: which ports form which groups, which slots each group owns.
//!
//! Pure data and arithmetic, so it is checked (and tested) without processes.

use crate::libs::hash::SLOT_COUNT;
use crate::topo::model::GroupId;

use super::error::UpError;

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
