//! Rebalance planning: which slots should move so that every group able to serve
//! (one with a master) owns its share of the slots, optionally weighted.
//!
//! [`plan()`] is pure, a function of one [`Topology`] snapshot and the weights, so
//! the dashboard can show a plan before anything happens and the tests can check
//! it exhaustively. Applying a plan moves data, which is the migration manager's
//! job. The rules, each for a reason:
//!
//! * Shares are apportioned by largest remainder (1024 over 3 groups gives
//!   342/341/341). Equal remainders go to the groups that hold more slots
//!   already, so that fewer slots move.
//! * Only slots above a group's share move, each at most once, and only to groups
//!   below theirs: no slot moves away from a group that is short.
//! * Donors give up their highest slot ids, so what stays keeps its ranges.
//! * Unassigned slots are handed out first, to the smallest groups: they carry
//!   no data, so assigning them costs nothing.
//! * Slots that are migrating count for their destination and never move;
//!   slots of a group without a master are left alone (and reported).
//!
//! Files:
//!
//! * [`weights`]: the operator's weights (`1:2,2:1`).
//! * [`plan`](mod@plan): the resulting plan as data, and how it prints.
//!
//! Imports `libs` (through [`plan`](mod@plan)), `topo`'s model and the slot-list
//! wording of `operation`.

pub mod plan;
pub mod weights;

use std::collections::BTreeMap;

use crate::topo::error::TopoError;
use crate::topo::model::{GroupId, SlotState, Topology};
use crate::topo::operation::format_slot_ids;

pub use plan::{Move, Plan, Share};
pub use weights::{Weights, WeightsError};

/// Plans the moves that give every group with a master its share of the slots
/// (`weights`, default 1 each). See the module docs for the rules.
///
/// # Errors
/// [`TopoError::Invalid`] when a weight names a group that does not exist or has
/// no master, when no group has a master, or when every weight is 0.
pub fn plan(topo: &Topology, weights: &Weights) -> Result<Plan, TopoError> {
    let eligible = eligible_groups(topo, weights)?;
    let census = Census::take(topo, &eligible);
    let quotas = apportion(census.total(), &eligible, &census.count);
    let mut notes = census.notes(topo);
    let pool = census.pool(&quotas, &mut notes);
    let handed = hand_out(pool, &census.count, &quotas);

    let mut after = census.count.clone();
    for &(from, to, _) in &handed {
        if let Some(n) = after.get_mut(&from) {
            *n -= 1;
        }
        *after.entry(to).or_default() += 1;
    }
    let groups = eligible
        .iter()
        .map(|(&group, &weight)| Share {
            group,
            weight,
            before: census.count.get(&group).copied().unwrap_or(0),
            after: after.get(&group).copied().unwrap_or(0),
        })
        .collect();
    Ok(Plan {
        groups,
        moves: to_moves(&handed),
        notes,
    })
}

/// The groups that can own slots (they have a master), with their weights.
fn eligible_groups(topo: &Topology, weights: &Weights) -> Result<BTreeMap<GroupId, u32>, TopoError> {
    for id in weights.listed() {
        match topo.groups.get(&id) {
            None => {
                return Err(TopoError::Invalid(format!(
                    "the weights name group {id}, which does not exist"
                )));
            }
            Some(g) if g.master().is_none() => {
                return Err(TopoError::Invalid(format!(
                    "group {id} has no master, so it cannot own slots; add one before weighting it"
                )));
            }
            Some(_) => {}
        }
    }
    let eligible: BTreeMap<GroupId, u32> = topo
        .groups
        .values()
        .filter(|g| g.master().is_some())
        .map(|g| (g.id, weights.get(g.id)))
        .collect();
    if eligible.is_empty() {
        return Err(TopoError::Invalid(
            "no group has a master: add servers to a group before rebalancing".into(),
        ));
    }
    if eligible.values().all(|&w| w == 0) {
        return Err(TopoError::Invalid(
            "every group has weight 0: at least one must own slots".into(),
        ));
    }
    Ok(eligible)
}

/// Who owns what, as far as planning is concerned.
#[derive(Default)]
struct Census {
    /// Slots per eligible group (every eligible group present, maybe with 0).
    count: BTreeMap<GroupId, usize>,
    /// Online slots of each eligible group, ascending: the ones that may move.
    movable: BTreeMap<GroupId, Vec<u16>>,
    /// Online slots of no group, ascending.
    unassigned: Vec<u16>,
    /// Slots in migration: counted for their destination, never moved.
    migrating: Vec<u16>,
    /// Online slots of a group that cannot serve, by that group.
    stranded: BTreeMap<GroupId, Vec<u16>>,
}

impl Census {
    fn take(topo: &Topology, eligible: &BTreeMap<GroupId, u32>) -> Census {
        let mut c = Census {
            count: eligible.keys().map(|&id| (id, 0)).collect(),
            ..Census::default()
        };
        for slot in topo.slots.slots() {
            let serving = eligible.contains_key(&slot.group);
            if slot.state != SlotState::Online {
                c.migrating.push(slot.id);
                if serving {
                    *c.count.entry(slot.group).or_default() += 1;
                }
            } else if slot.group == 0 {
                c.unassigned.push(slot.id);
            } else if serving {
                *c.count.entry(slot.group).or_default() += 1;
                c.movable.entry(slot.group).or_default().push(slot.id);
            } else {
                c.stranded.entry(slot.group).or_default().push(slot.id);
            }
        }
        c
    }

    /// The slots the shares are computed over.
    fn total(&self) -> usize {
        self.count.values().sum::<usize>() + self.unassigned.len()
    }

    fn notes(&self, topo: &Topology) -> Vec<String> {
        let mut notes = Vec::new();
        for g in topo.groups.values().filter(|g| g.master().is_none()) {
            notes.push(format!("group {} has no master: it gets no slots", g.id));
        }
        for (id, slots) in &self.stranded {
            let why = if topo.groups.contains_key(id) {
                "which has no master"
            } else {
                "which does not exist"
            };
            notes.push(format!(
                "slots {} belong to group {id}, {why}: left where they are",
                format_slot_ids(slots)
            ));
        }
        if !self.migrating.is_empty() {
            notes.push(format!(
                "slots {} are migrating: they count for their destination and do not move",
                format_slot_ids(&self.migrating)
            ));
        }
        notes
    }

    /// The slots to hand out, in order, with the group they come from (0 for
    /// unassigned): unassigned first, then each donor's highest slots.
    fn pool(&self, quotas: &BTreeMap<GroupId, usize>, notes: &mut Vec<String>) -> Vec<(GroupId, u16)> {
        let mut pool: Vec<(GroupId, u16)> = self.unassigned.iter().map(|&s| (0, s)).collect();
        for (&id, &count) in &self.count {
            let quota = quotas.get(&id).copied().unwrap_or(0);
            let excess = count.saturating_sub(quota);
            if excess == 0 {
                continue;
            }
            let movable = self.movable.get(&id).map(Vec::as_slice).unwrap_or_default();
            let take = excess.min(movable.len());
            if take < excess {
                notes.push(format!(
                    "group {id} keeps {} slots above its share because they are migrating; plan again afterwards",
                    excess - take
                ));
            }
            pool.extend(movable[movable.len() - take..].iter().map(|&s| (id, s)));
        }
        pool
    }
}

/// Splits `n` slots over the groups in proportion to their weights (largest
/// remainder). Equal remainders favour the groups holding more slots now (fewer
/// moves), then the lower id (determinism).
fn apportion(
    n: usize,
    weights: &BTreeMap<GroupId, u32>,
    count: &BTreeMap<GroupId, usize>,
) -> BTreeMap<GroupId, usize> {
    let total: u64 = weights.values().map(|&w| u64::from(w)).sum();
    let mut quotas = BTreeMap::new();
    let mut order = Vec::with_capacity(weights.len());
    for (&id, &w) in weights {
        // n <= 1024 and w < 2^32: the product fits u64 with room to spare.
        let share = n as u64 * u64::from(w);
        let (whole, rest) = match total {
            0 => (0, 0),
            t => (share / t, share % t),
        };
        quotas.insert(id, whole as usize);
        order.push((rest, count.get(&id).copied().unwrap_or(0), id));
    }
    let left = n.saturating_sub(quotas.values().sum());
    order.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
    for &(_, _, id) in order.iter().take(left) {
        if let Some(q) = quotas.get_mut(&id) {
            *q += 1;
        }
    }
    quotas
}

/// Hands the pool out to the groups below their share, smallest group first;
/// returns `(from, to, slot)` in pool order.
fn hand_out(
    pool: Vec<(GroupId, u16)>,
    count: &BTreeMap<GroupId, usize>,
    quotas: &BTreeMap<GroupId, usize>,
) -> Vec<(GroupId, GroupId, u16)> {
    let mut receivers: Vec<(usize, GroupId, usize)> = count
        .iter()
        .filter_map(|(&id, &n)| {
            let quota = quotas.get(&id).copied().unwrap_or(0);
            // Not `then_some`: it would compute `quota - n` eagerly and underflow.
            (n < quota).then(|| (n, id, quota - n))
        })
        .collect();
    receivers.sort_by_key(|&(n, id, _)| (n, id));
    let mut wants = receivers
        .into_iter()
        .flat_map(|(_, id, deficit)| std::iter::repeat_n(id, deficit));
    // The deficits add up to the pool (less any migrating slots a donor keeps),
    // so `zip` ends with whichever runs out first.
    pool.into_iter()
        .zip(wants.by_ref())
        .map(|((from, slot), to)| (from, to, slot))
        .collect()
}

/// Collapses consecutive slots with the same source and destination into ranges.
fn to_moves(handed: &[(GroupId, GroupId, u16)]) -> Vec<Move> {
    let mut moves: Vec<Move> = Vec::new();
    for &(from, to, slot) in handed {
        match moves.last_mut() {
            Some(m) if m.from == from && m.to == to && m.end.checked_add(1) == Some(slot) => m.end = slot,
            _ => moves.push(Move {
                start: slot,
                end: slot,
                from,
                to,
            }),
        }
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topo::model::{Group, Role, Server};

    /// Groups `(id, has a master)` and slot ranges `(start, end, group)`.
    fn topo(groups: &[(GroupId, bool)], ranges: &[(u16, u16, GroupId)]) -> Topology {
        let mut t = Topology::default();
        for &(id, master) in groups {
            let servers = if master {
                vec![Server {
                    addr: format!("h:{id}"),
                    role: Role::Master,
                }]
            } else {
                Vec::new()
            };
            t.groups.insert(id, Group { id, servers });
        }
        for &(start, end, group) in ranges {
            for id in start..=end {
                t.slots.get_mut(id).expect("slot").group = group;
            }
        }
        t
    }

    fn mv(start: u16, end: u16, from: GroupId, to: GroupId) -> Move {
        Move { start, end, from, to }
    }

    fn w(s: &str) -> Weights {
        s.parse().expect("weights")
    }

    fn after(p: &Plan) -> Vec<(GroupId, usize)> {
        p.groups.iter().map(|s| (s.group, s.after)).collect()
    }

    /// Applies the plan to the table and checks it against the shares: every
    /// moved slot came from its stated owner, and moved at most once.
    fn check_applies(t: &Topology, p: &Plan) {
        let mut slots = t.slots.clone();
        let mut seen = std::collections::BTreeSet::new();
        for m in &p.moves {
            for id in m.start..=m.end {
                assert!(seen.insert(id), "slot {id} moves twice");
                let s = slots.get_mut(id).expect("slot");
                assert_eq!(s.group, m.from, "slot {id} is not in group {}", m.from);
                s.group = m.to;
            }
        }
        for share in &p.groups {
            let n = slots.slots().iter().filter(|s| s.group == share.group).count();
            assert_eq!(n, share.after, "group {}", share.group);
        }
    }

    #[test]
    fn one_group_splits_evenly_over_three_donating_its_highest_slots() {
        let t = topo(&[(1, true), (2, true), (3, true)], &[(0, 1023, 1)]);
        let p = plan(&t, &Weights::default()).expect("plan");
        assert_eq!(p.moves, vec![mv(342, 682, 1, 2), mv(683, 1023, 1, 3)]);
        assert_eq!(after(&p), vec![(1, 342), (2, 341), (3, 341)]);
        assert_eq!(p.slots_moved(), 682);
        check_applies(&t, &p);
    }

    #[test]
    fn unassigned_slots_go_to_the_smallest_groups_first() {
        let t = topo(&[(1, true), (2, true), (3, true)], &[]);
        let p = plan(&t, &Weights::default()).expect("plan");
        assert_eq!(
            p.moves,
            vec![mv(0, 341, 0, 1), mv(342, 682, 0, 2), mv(683, 1023, 0, 3)]
        );

        // 1 has 400, 2 has 200, 3 has none, 424 unassigned: the unassigned fill
        // group 3 first, then 2, which also gets group 1's 58 extra slots.
        let t = topo(&[(1, true), (2, true), (3, true)], &[(0, 399, 1), (400, 599, 2)]);
        let p = plan(&t, &Weights::default()).expect("plan");
        assert_eq!(
            p.moves,
            vec![mv(600, 940, 0, 3), mv(941, 1023, 0, 2), mv(342, 399, 1, 2)]
        );
        assert_eq!(after(&p), vec![(1, 342), (2, 341), (3, 341)]);
        check_applies(&t, &p);
    }

    #[test]
    fn a_balanced_table_gives_an_empty_plan() {
        let t = topo(&[(1, true), (2, true)], &[(0, 511, 1), (512, 1023, 2)]);
        let p = plan(&t, &Weights::default()).expect("plan");
        assert!(p.is_empty(), "{p:?}");
        // 341/342/341 in any order is balanced too: the extra slot stays put.
        let t = topo(
            &[(1, true), (2, true), (3, true)],
            &[(0, 340, 1), (341, 682, 2), (683, 1023, 3)],
        );
        assert!(plan(&t, &Weights::default()).expect("plan").is_empty());
        assert!(plan(&t, &w("1:1,2:1")).expect("plan").is_empty());
    }

    #[test]
    fn weights_set_the_shares() {
        let t = topo(&[(1, true), (2, true)], &[(0, 511, 1), (512, 1023, 2)]);
        let p = plan(&t, &w("1:2,2:1")).expect("plan");
        // 1024 * 2/3 = 682.67 and 341.33: the larger remainder gets the extra slot.
        assert_eq!(after(&p), vec![(1, 683), (2, 341)]);
        assert_eq!(p.moves, vec![mv(853, 1023, 2, 1)]);
        assert_eq!(p.groups[0].weight, 2);
        check_applies(&t, &p);

        // Unlisted groups weigh 1; weight 0 empties a group.
        let t = topo(&[(1, true), (2, true), (3, true)], &[(0, 1023, 1)]);
        let p = plan(&t, &w("1:0")).expect("plan");
        assert_eq!(after(&p), vec![(1, 0), (2, 512), (3, 512)]);
        assert_eq!(p.moves, vec![mv(0, 511, 1, 2), mv(512, 1023, 1, 3)]);
        check_applies(&t, &p);
    }

    #[test]
    fn groups_without_a_master_get_nothing_and_keep_what_they_have() {
        let mut t = topo(&[(1, true), (2, true), (3, false)], &[(0, 1023, 1)]);
        let p = plan(&t, &Weights::default()).expect("plan");
        assert_eq!(p.moves, vec![mv(512, 1023, 1, 2)]);
        assert_eq!(p.groups.len(), 2);
        assert!(
            p.notes.iter().any(|n| n.contains("group 3 has no master")),
            "{:?}",
            p.notes
        );

        // Slots stranded on a masterless (or missing) group are not counted.
        for id in 0..10 {
            t.slots.get_mut(id).expect("slot").group = 3;
        }
        for id in 10..20 {
            t.slots.get_mut(id).expect("slot").group = 7;
        }
        let p = plan(&t, &Weights::default()).expect("plan");
        assert_eq!(after(&p), vec![(1, 502), (2, 502)]);
        assert!(
            p.notes.iter().any(|n| n.contains("slots 0-9 belong to group 3")),
            "{:?}",
            p.notes
        );
        assert!(
            p.notes
                .iter()
                .any(|n| n.contains("group 7, which does not exist")),
            "{:?}",
            p.notes
        );
        check_applies(&t, &p);
    }

    #[test]
    fn migrating_slots_count_for_their_destination_and_stay() {
        let mut t = topo(&[(1, true), (2, true)], &[(0, 1023, 1)]);
        for id in 1000..1024 {
            let s = t.slots.get_mut(id).expect("slot");
            s.state = SlotState::Migrate;
            s.group = 2;
            s.from = Some(1);
        }
        let p = plan(&t, &Weights::default()).expect("plan");
        assert_eq!(p.moves, vec![mv(512, 999, 1, 2)]);
        assert_eq!(after(&p), vec![(1, 512), (2, 512)]);
        assert!(
            p.notes.iter().any(|n| n.contains("1000-1023 are migrating")),
            "{:?}",
            p.notes
        );
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        let t = topo(&[(1, true), (2, false)], &[]);
        let err = |weights: &str| plan(&t, &w(weights)).expect_err("refused").to_string();
        assert!(err("9:1").contains("group 9, which does not exist"));
        assert!(err("2:1").contains("group 2 has no master"));
        assert!(err("1:0").contains("weight 0"));
        let empty = topo(&[(1, false)], &[]);
        let e = plan(&empty, &Weights::default()).expect_err("no master");
        assert!(e.to_string().contains("no group has a master"), "{e}");
    }

    #[test]
    fn plans_are_deterministic() {
        let t = topo(
            &[(1, true), (2, true), (3, true), (4, true)],
            &[(0, 99, 3), (100, 700, 1), (701, 800, 4)],
        );
        let p = plan(&t, &w("4:3")).expect("plan");
        assert_eq!(p, plan(&t, &w("4:3")).expect("plan"));
        // 1024/6 = 170.67 for the weight-1 groups: the two that hold more get 171.
        assert_eq!(after(&p), vec![(1, 171), (2, 170), (3, 171), (4, 512)]);
        check_applies(&t, &p);
    }
}
