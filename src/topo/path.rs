//! Every ZooKeeper path of a product, in one place.
//!
//! ```text
//! <root>/<product>                    product node  {"name", "created"}
//! <root>/<product>/slots              the whole SlotTable (compact ranges)
//! <root>/<product>/groups/group-0001  one Group per node
//! <root>/<product>/proxies/<id>       EPHEMERAL ProxyInfo of each live proxy
//! <root>/<product>/offline/<id>       persistent marker: proxy <id> set offline
//! <root>/<product>/lock               EPHEMERAL operator lock
//! <root>/<product>/dashboard          EPHEMERAL leader dashboard {"addr", "pid", "host", "since"}
//! ```
//!
//! Later features (migration actions and their acks, tasks) add their paths
//! here, next to these. Imports only the model's id type.

use super::error::TopoError;
use super::model::GroupId;

/// Largest group id (`group-9999`); ids start at 1.
pub const MAX_GROUP_ID: GroupId = 9999;

/// The paths of one product under one root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    root: String,
    name: String,
    product: String,
}

impl Paths {
    /// Paths of `product` under `root` (e.g. `/reborn`; `/` is allowed).
    ///
    /// # Errors
    /// A root that is not an absolute ZooKeeper path, or a product name outside
    /// `[A-Za-z0-9_][A-Za-z0-9_.-]*`.
    pub fn new(root: &str, product: &str) -> Result<Paths, TopoError> {
        let root = normalize_root(root)?;
        check_product_name(product)?;
        let product_path = if root == "/" {
            format!("/{product}")
        } else {
            format!("{root}/{product}")
        };
        Ok(Paths {
            root,
            name: product.to_string(),
            product: product_path,
        })
    }

    /// The root all products live under, without a trailing `/`.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The product's name.
    pub fn product_name(&self) -> &str {
        &self.name
    }

    /// `<root>/<product>`: the product node, parent of everything below.
    pub fn product(&self) -> &str {
        &self.product
    }

    /// `<root>/<product>/slots`: the slot table.
    pub fn slots(&self) -> String {
        format!("{}/slots", self.product)
    }

    /// `<root>/<product>/groups`: parent of the group nodes.
    pub fn groups(&self) -> String {
        format!("{}/groups", self.product)
    }

    /// `<root>/<product>/groups/group-0001`: one group. Zero-padded so that
    /// ZooKeeper's lexical child order is the numeric order.
    pub fn group(&self, id: GroupId) -> String {
        format!("{}/groups/{}", self.product, group_node_name(id))
    }

    /// `<root>/<product>/proxies`: parent of the live proxies' ephemeral nodes.
    pub fn proxies(&self) -> String {
        format!("{}/proxies", self.product)
    }

    /// `<root>/<product>/proxies/<id>`. Check `id` with [`check_node_name`] first.
    pub fn proxy(&self, id: &str) -> String {
        format!("{}/proxies/{id}", self.product)
    }

    /// `<root>/<product>/offline`: parent of the offline markers.
    pub fn offline(&self) -> String {
        format!("{}/offline", self.product)
    }

    /// `<root>/<product>/offline/<id>`: proxy `id` was set offline by an operator.
    pub fn offline_proxy(&self, id: &str) -> String {
        format!("{}/offline/{id}", self.product)
    }

    /// `<root>/<product>/lock`: the operator lock.
    pub fn lock(&self) -> String {
        format!("{}/lock", self.product)
    }

    /// `<root>/<product>/dashboard`: the leader dashboard's registration, which
    /// is also its leadership (only one session can own an ephemeral node).
    pub fn dashboard(&self) -> String {
        format!("{}/dashboard", self.product)
    }

    /// `<root>/<product>/actions`: parent of the action nodes.
    pub fn actions(&self) -> String {
        format!("{}/actions", self.product)
    }

    /// `<root>/<product>/actions/<seq>`, zero-padded so lexical order is numeric.
    pub fn action(&self, seq: u64) -> String {
        format!("{}/actions/{seq:010}", self.product)
    }

    /// `<root>/<product>/acks/<seq>`: parent of the acknowledgements of action `seq`.
    pub fn acks_of(&self, seq: u64) -> String {
        format!("{}/acks/{seq:010}", self.product)
    }

    /// `<root>/<product>/acks/<seq>/<proxy id>`: proxy `id` applied action `seq`.
    pub fn ack(&self, seq: u64, proxy: &str) -> String {
        format!("{}/acks/{seq:010}/{proxy}", self.product)
    }

    /// `<root>/<product>/tasks`: parent of the migration tasks.
    pub fn tasks(&self) -> String {
        format!("{}/tasks", self.product)
    }

    /// `<root>/<product>/tasks/<id>`, zero-padded so lexical order is numeric.
    pub fn task(&self, id: u64) -> String {
        format!("{}/tasks/{id:010}", self.product)
    }

    /// `<root>/<product>/promoting`: the plan of the promote under way, if
    /// one holds slots (see `manager::promote::Journal`).
    pub fn promoting(&self) -> String {
        format!("{}/promoting", self.product)
    }

    /// `<root>/<product>/observations`: what each live proxy sees of the
    /// masters, one ephemeral node each (automatic failover's votes).
    pub fn observations(&self) -> String {
        format!("{}/observations", self.product)
    }

    /// `<root>/<product>/observations/<proxy id>`.
    pub fn observation(&self, proxy: &str) -> String {
        format!("{}/observations/{proxy}", self.product)
    }

    /// `<root>/<product>/failovers`: the record of automatic failovers.
    pub fn failovers(&self) -> String {
        format!("{}/failovers", self.product)
    }

    /// `<root>/<product>/failovers/<seq>`, zero-padded so lexical order is numeric.
    pub fn failover(&self, seq: u64) -> String {
        format!("{}/failovers/{seq:010}", self.product)
    }

    /// `<root>/<product>/im/<kind>`: the live push-system instances of one kind
    /// (`comet`, `logic`), one ephemeral node each.
    pub fn im_instances(&self, kind: &str) -> String {
        format!("{}/im/{kind}", self.product)
    }

    /// `<root>/<product>/im/<kind>/<id>`: one push-system instance.
    pub fn im_instance(&self, kind: &str, id: &str) -> String {
        format!("{}/im/{kind}/{id}", self.product)
    }

    /// True if a watch event on `path` cannot change the [`super::Topology`]
    /// (the operator lock comes and goes with every operation; dashboards come,
    /// go and hand over leadership without touching the model).
    pub fn is_outside_topology(&self, path: &str) -> bool {
        // Acks come from every proxy for every action, and a running task saves
        // its progress every second: were they watched, each would make every
        // proxy reload. Push-system instances refresh their node every 10 s;
        // proxies' observations change whenever a master goes down or up; a
        // promote's plan is written twice per promote and routes nothing.
        path == self.lock()
            || path == self.dashboard()
            || path.strip_prefix(self.product.as_str()).is_some_and(|rest| {
                [
                    "/acks",
                    "/tasks",
                    "/im",
                    "/observations",
                    "/failovers",
                    "/promoting",
                ]
                .iter()
                .any(|p| rest.starts_with(p))
            })
    }
}

/// `group-0001` for id 1.
pub fn group_node_name(id: GroupId) -> String {
    format!("group-{id:04}")
}

/// The id in a group node name (`group-0001` → 1), if it is one.
pub fn parse_group_node_name(name: &str) -> Option<GroupId> {
    let digits = name.strip_prefix("group-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Checks that `name` can be one ZooKeeper node name (a proxy id): non-empty, no
/// `/`, no control characters, not `.` or `..`. `:` is fine (`127.0.0.1:19000`).
///
/// # Errors
/// [`TopoError::Invalid`] naming the problem.
pub fn check_node_name(name: &str) -> Result<(), TopoError> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(TopoError::Invalid(format!(
            "{name:?} cannot be a ZooKeeper node name"
        )));
    }
    if name.contains('/') || name.chars().any(char::is_control) {
        return Err(TopoError::Invalid(format!(
            "{name:?} cannot be a ZooKeeper node name: no '/' or control characters"
        )));
    }
    Ok(())
}

fn normalize_root(root: &str) -> Result<String, TopoError> {
    let trimmed = root.trim_end_matches('/');
    if !root.starts_with('/') {
        return Err(TopoError::Invalid(format!(
            "ZooKeeper root {root:?} must start with '/'"
        )));
    }
    if trimmed.is_empty() {
        return Ok("/".to_string());
    }
    for part in trimmed[1..].split('/') {
        check_node_name(part).map_err(|_| {
            TopoError::Invalid(format!("ZooKeeper root {root:?} has a bad component {part:?}"))
        })?;
    }
    Ok(trimmed.to_string())
}

fn check_product_name(product: &str) -> Result<(), TopoError> {
    let mut chars = product.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(TopoError::Invalid(format!(
            "product name {product:?} must match [A-Za-z0-9_][A-Za-z0-9_.-]*"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_every_path_under_root_and_product() {
        let p = Paths::new("/reborn", "demo").expect("paths");
        assert_eq!(p.product(), "/reborn/demo");
        assert_eq!(p.slots(), "/reborn/demo/slots");
        assert_eq!(p.groups(), "/reborn/demo/groups");
        assert_eq!(p.group(1), "/reborn/demo/groups/group-0001");
        assert_eq!(p.group(9999), "/reborn/demo/groups/group-9999");
        assert_eq!(p.proxies(), "/reborn/demo/proxies");
        assert_eq!(p.proxy("127.0.0.1:19000"), "/reborn/demo/proxies/127.0.0.1:19000");
        assert_eq!(p.offline(), "/reborn/demo/offline");
        assert_eq!(p.offline_proxy("p1"), "/reborn/demo/offline/p1");
        assert_eq!(p.lock(), "/reborn/demo/lock");
        assert_eq!(p.dashboard(), "/reborn/demo/dashboard");
        assert!(p.is_outside_topology("/reborn/demo/lock"));
        assert!(p.is_outside_topology("/reborn/demo/dashboard"));
        assert!(!p.is_outside_topology("/reborn/demo/slots"));
        assert!(p.is_outside_topology("/reborn/demo/acks/0000000007/127.0.0.1:19000"));
        assert!(p.is_outside_topology("/reborn/demo/acks"));
        assert!(p.is_outside_topology("/reborn/demo/tasks/0000000003"));
        assert!(!p.is_outside_topology("/reborn/demo/actions/0000000007"));
        assert!(p.is_outside_topology("/reborn/demo/im/comet/host-1"));
        assert!(p.is_outside_topology("/reborn/demo/promoting"));
        assert_eq!(p.observation("p1"), "/reborn/demo/observations/p1");
        assert!(p.is_outside_topology("/reborn/demo/observations/p1"));
        assert_eq!(p.failover(3), "/reborn/demo/failovers/0000000003");
        assert!(p.is_outside_topology("/reborn/demo/failovers/0000000003"));
        assert_eq!(p.action(7), "/reborn/demo/actions/0000000007");
    }

    #[test]
    fn roots_are_normalized() {
        assert_eq!(Paths::new("/", "d").expect("root").product(), "/d");
        assert_eq!(Paths::new("/a/b/", "d").expect("slash").product(), "/a/b/d");
        assert!(Paths::new("reborn", "d").is_err());
        assert!(Paths::new("/a//b", "d").is_err());
        assert!(Paths::new("/a/../b", "d").is_err());
    }

    #[test]
    fn product_names_are_checked() {
        assert!(Paths::new("/r", "demo_1.x-y").is_ok());
        for bad in ["", "-x", "a/b", "a b", ".x"] {
            assert!(Paths::new("/r", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn group_node_names_round_trip() {
        assert_eq!(group_node_name(7), "group-0007");
        assert_eq!(parse_group_node_name("group-0007"), Some(7));
        assert_eq!(parse_group_node_name("group-12345"), Some(12345));
        assert_eq!(parse_group_node_name("group-"), None);
        assert_eq!(parse_group_node_name("group-+1"), None);
        assert_eq!(parse_group_node_name("grp-1"), None);
    }

    #[test]
    fn node_names_are_checked() {
        assert!(check_node_name("127.0.0.1:19000").is_ok());
        for bad in ["", ".", "..", "a/b", "a\nb"] {
            assert!(check_node_name(bad).is_err(), "{bad:?}");
        }
    }
}
