//! A rebalance plan as data: the share each group ends up with and the slot
//! ranges that move, with the tables `reborn admin rebalance` prints.
//!
//! Imports `libs` (tables) and `topo`'s model.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::libs::table;
use crate::topo::model::{GroupId, range_text};

/// One group's part of a plan.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    /// The group.
    pub group: GroupId,
    /// Its weight.
    pub weight: u32,
    /// Slots it owns now (migrating slots count for their destination).
    pub before: usize,
    /// Slots it owns once the plan is applied.
    pub after: usize,
}

/// Moving the slots `start..=end` from group `from` to group `to`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Move {
    /// First slot, inclusive.
    pub start: u16,
    /// Last slot, inclusive.
    pub end: u16,
    /// The group that owns them now; 0 for unassigned slots (nothing to copy).
    pub from: GroupId,
    /// The group that will own them.
    pub to: GroupId,
}

impl Move {
    /// How many slots this move covers.
    pub fn count(&self) -> usize {
        usize::from(self.end - self.start) + 1
    }
}

/// A rebalance plan: the shares it aims for and the moves that reach them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Every group that can own slots (it has a master), by id.
    pub groups: Vec<Share>,
    /// The moves, unassigned slots first, then donors by group id.
    pub moves: Vec<Move>,
    /// What the plan leaves alone, and why.
    #[serde(default)]
    pub notes: Vec<String>,
}

impl Plan {
    /// True when nothing needs to move.
    pub fn is_empty(&self) -> bool {
        self.moves.is_empty()
    }

    /// How many slots the plan moves.
    pub fn slots_moved(&self) -> usize {
        self.moves.iter().map(Move::count).sum()
    }
}

impl fmt::Display for Plan {
    /// The shares, then the moves, as aligned tables; then the notes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shares = self
            .groups
            .iter()
            .map(|s| {
                let delta = s.after as i64 - s.before as i64;
                let delta = if delta == 0 {
                    "=".to_string()
                } else {
                    format!("{delta:+}")
                };
                vec![
                    s.group.to_string(),
                    s.weight.to_string(),
                    s.before.to_string(),
                    s.after.to_string(),
                    delta,
                ]
            })
            .collect();
        f.write_str(&table::render(
            &["GROUP", "WEIGHT", "SLOTS", "AFTER", "CHANGE"],
            shares,
        ))?;
        writeln!(f)?;
        if self.moves.is_empty() {
            writeln!(f, "Balanced already: nothing to move.")?;
        } else {
            let moves = self
                .moves
                .iter()
                .map(|m| {
                    let from = if m.from == 0 {
                        "unassigned".to_string()
                    } else {
                        m.from.to_string()
                    };
                    vec![
                        range_text(m.start, m.end),
                        m.count().to_string(),
                        from,
                        m.to.to_string(),
                    ]
                })
                .collect();
            f.write_str(&table::render(&["MOVE SLOTS", "COUNT", "FROM", "TO"], moves))?;
            writeln!(f)?;
            let (slots, ranges) = (self.slots_moved(), self.moves.len());
            writeln!(
                f,
                "{} in {}.",
                plural(slots, "slot moves", "slots move"),
                plural(ranges, "range", "ranges")
            )?;
        }
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        Ok(())
    }
}

/// `1 range`, `2 ranges`.
fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_print_as_tables() {
        let plan = Plan {
            groups: vec![
                Share {
                    group: 1,
                    weight: 1,
                    before: 1024,
                    after: 512,
                },
                Share {
                    group: 2,
                    weight: 1,
                    before: 0,
                    after: 512,
                },
            ],
            moves: vec![Move {
                start: 512,
                end: 1023,
                from: 1,
                to: 2,
            }],
            notes: vec!["group 3 has no master: it gets no slots".into()],
        };
        assert_eq!(
            plan.to_string(),
            "GROUP  WEIGHT  SLOTS  AFTER  CHANGE\n\
             1      1       1024   512    -512\n\
             2      1       0      512    +512\n\
             \n\
             MOVE SLOTS  COUNT  FROM  TO\n\
             512-1023    512    1     2\n\
             \n\
             512 slots move in 1 range.\n\
             note: group 3 has no master: it gets no slots\n"
        );
        let balanced = Plan {
            groups: vec![Share {
                group: 1,
                weight: 1,
                before: 1024,
                after: 1024,
            }],
            ..Plan::default()
        };
        let text = balanced.to_string();
        assert!(
            text.ends_with("1024   =\n\nBalanced already: nothing to move.\n"),
            "{text}"
        );
    }
}
