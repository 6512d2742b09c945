//! Rebalance weights: how much of the slots each group should own, relative to
//! the others, as operators write them (`1:2,2:1`).
//!
//! Imports only the model's id type.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::topo::model::GroupId;

/// Relative weight per group, written `1:2,2:1` (group:weight). A group not
/// listed weighs 1; weight 0 empties a group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Weights(BTreeMap<GroupId, u32>);

impl Weights {
    /// The weight of group `id` (1 unless listed).
    pub fn get(&self, id: GroupId) -> u32 {
        self.0.get(&id).copied().unwrap_or(1)
    }

    /// True when no group is listed (every group weighs 1).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Why a `--weights` text was not understood; each names the item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WeightsError {
    #[error("weight {0:?} is not group:weight (e.g. 1:2)")]
    NotAPair(String),
    #[error("weight {item:?}: {group:?} is not a group id")]
    BadGroup { item: String, group: String },
    #[error("weight {item:?}: {weight:?} is not a whole number")]
    BadWeight { item: String, weight: String },
    #[error("group {0} is weighted twice")]
    Twice(GroupId),
}

impl FromStr for Weights {
    type Err = WeightsError;

    /// Parses `1:2,2:1`; blanks around items are fine, an empty string means
    /// "no weights".
    fn from_str(s: &str) -> Result<Weights, WeightsError> {
        let mut map = BTreeMap::new();
        if s.trim().is_empty() {
            return Ok(Weights(map));
        }
        for item in s.split(',').map(str::trim) {
            let (group, weight) = item
                .split_once(':')
                .ok_or_else(|| WeightsError::NotAPair(item.to_string()))?;
            let group: GroupId = group.trim().parse().map_err(|_| WeightsError::BadGroup {
                item: item.to_string(),
                group: group.to_string(),
            })?;
            let weight: u32 = weight.trim().parse().map_err(|_| WeightsError::BadWeight {
                item: item.to_string(),
                weight: weight.to_string(),
            })?;
            if map.insert(group, weight).is_some() {
                return Err(WeightsError::Twice(group));
            }
        }
        Ok(Weights(map))
    }
}

impl fmt::Display for Weights {
    /// The same `1:2,2:1` form [`Weights::from_str`] reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self.0.iter().map(|(g, w)| format!("{g}:{w}")).collect();
        f.write_str(&items.join(","))
    }
}

impl Weights {
    /// The listed groups, by id.
    pub fn listed(&self) -> impl Iterator<Item = GroupId> + '_ {
        self.0.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Weights {
        s.parse().expect("weights")
    }

    #[test]
    fn weights_parse_and_print() {
        assert_eq!(w(" 1:2 , 2:1 ").to_string(), "1:2,2:1");
        assert!(w("").is_empty());
        assert_eq!(w("3:5").get(3), 5);
        assert_eq!(w("3:5").get(4), 1);
        for bad in ["1", "a:1", "1:x", "1:-1", "1:2,1:3", "1:2,"] {
            assert!(bad.parse::<Weights>().is_err(), "{bad:?}");
        }
        assert_eq!("1:2,1:3".parse::<Weights>(), Err(WeightsError::Twice(1)));
        assert_eq!(
            "2:x".parse::<Weights>().map_err(|e| e.to_string()),
            Err(r#"weight "2:x": "x" is not a whole number"#.to_string())
        );
    }
}
