//! Comet node selection for clients (`/goim/nodes/weighted`, the `Nodes` RPC),
//! goim's weighted balancer (reference §3.5):
//!
//! * nodes are the live, not offline comets from discovery; an update that
//!   leaves fewer than half the nodes is ignored (discovery flapping);
//! * per request, a node in the client's region gets its fixed weight times
//!   `region_weight` (1.6); its current weight is `fixed·gain +
//!   round((fixed·gain / total_weight − conns / total_conns · 0.5) ·
//!   total_conns)`, clamped to [1, 2^20];
//! * nodes are sorted by that weight, the top one is charged one connection
//!   (optimistic accounting until discovery refreshes the counts), and up to 5
//!   are returned: host names (`id + host_domain`) for `platform=web` when a
//!   host domain is configured, else the comets' public addresses;
//! * the client ports are `[node]`'s (one set for every node, as in goim),
//!   except that `wss_port` is 0 unless every node returned serves WSS (its
//!   registration has a `wss_port`): a client is never sent to a WSS port
//!   that nothing listens on.
//!
//! goim found the region by a GeoIP stub that never matched; reborn maps a
//! client IP to a region by the address prefixes of `[regions]`. Imports
//! `config.rs`, `im::discovery` and the generated `NodesReply`.

use parking_lot::Mutex;
use serde::Serialize;

use crate::im::discovery::Instance;
use crate::im::proto::logic::{Backoff, NodesReply};

use super::config::{BackoffHint, LogicConfig, LogicNodeConfig};

/// Most nodes returned to one client.
pub const MAX_NODES: usize = 5;
const MIN_WEIGHT: i64 = 1;
const MAX_WEIGHT: i64 = 1 << 20;

/// What a client is told (goim's `NodesReply`, as JSON on HTTP).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Nodes {
    /// The fallback domain.
    pub domain: String,
    /// Comet TCP port.
    pub tcp_port: i32,
    /// Comet WebSocket port.
    pub ws_port: i32,
    /// Comet WSS port.
    pub wss_port: i32,
    /// Suggested heartbeat interval, seconds.
    pub heartbeat: i32,
    /// Host names or addresses to connect to, best first.
    pub nodes: Vec<String>,
    /// Reconnect hints.
    pub backoff: BackoffHint,
    /// Heartbeats a client may miss.
    pub heartbeat_max: i32,
}

impl Nodes {
    /// The gRPC form.
    pub fn into_reply(self) -> NodesReply {
        NodesReply {
            domain: self.domain,
            tcp_port: self.tcp_port,
            ws_port: self.ws_port,
            wss_port: self.wss_port,
            heartbeat: self.heartbeat,
            nodes: self.nodes,
            backoff: Some(Backoff {
                max_delay: self.backoff.max_delay,
                base_delay: self.backoff.base_delay,
                factor: self.backoff.factor,
                jitter: self.backoff.jitter,
            }),
            heartbeat_max: self.heartbeat_max,
        }
    }
}

#[derive(Debug, Clone)]
struct WeightedNode {
    id: String,
    region: String,
    addrs: Vec<String>,
    fixed_weight: i64,
    current_weight: i64,
    current_conns: i64,
    /// The comet serves WSS.
    wss: bool,
}

/// The balancer: the node list and its per-request accounting.
#[derive(Debug)]
pub struct NodeBalancer {
    node: LogicNodeConfig,
    backoff: BackoffHint,
    /// (client IP prefix, region), longest prefix first.
    regions: Vec<(String, String)>,
    nodes: Mutex<Vec<WeightedNode>>,
}

/// A node's weight for this request (see the module docs).
pub fn current_weight(fixed: i64, gain: f64, conns: i64, total_weight: i64, total_conns: i64) -> i64 {
    let fixed_g = fixed as f64 * gain;
    let total_w = (total_weight - fixed) as f64 + fixed_g;
    let w = if total_conns <= 0 || total_w <= 0.0 {
        fixed_g.round()
    } else {
        let weight_ratio = fixed_g / total_w;
        let conn_ratio = conns as f64 / total_conns as f64 * 0.5;
        fixed_g + ((weight_ratio - conn_ratio) * total_conns as f64).round()
    };
    (w as i64).clamp(MIN_WEIGHT, MAX_WEIGHT)
}

impl NodeBalancer {
    /// An empty balancer for `config`'s `[node]`, `[backoff]` and `[regions]`.
    pub fn new(config: &LogicConfig) -> NodeBalancer {
        let mut regions: Vec<(String, String)> = config
            .regions
            .iter()
            .flat_map(|(region, prefixes)| prefixes.iter().map(move |p| (p.clone(), region.clone())))
            .collect();
        regions.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        NodeBalancer {
            node: config.node.clone(),
            backoff: config.backoff.clone(),
            regions,
            nodes: Mutex::new(Vec::new()),
        }
    }

    /// Replaces the node list with the live comets; returns false when the
    /// update was ignored for dropping more than half the nodes.
    pub fn update(&self, comets: &[Instance]) -> bool {
        let fresh: Vec<WeightedNode> = comets
            .iter()
            .filter(|c| !c.offline)
            .map(|c| WeightedNode {
                id: c.id.clone(),
                region: c.region.clone(),
                addrs: c.addrs.clone(),
                fixed_weight: c.weight,
                current_weight: 0,
                current_conns: i64::try_from(c.conn_count).unwrap_or(i64::MAX),
                wss: c.wss_port != 0,
            })
            .collect();
        let mut nodes = self.nodes.lock();
        if !nodes.is_empty() && fresh.len() * 2 < nodes.len() {
            tracing::warn!(
                was = nodes.len(),
                now = fresh.len(),
                "ignoring a comet list that lost more than half its nodes"
            );
            return false;
        }
        *nodes = fresh;
        true
    }

    /// The region of a client address (empty when none matches).
    pub fn region_of(&self, client_ip: &str) -> &str {
        self.regions
            .iter()
            .find(|(prefix, _)| !client_ip.is_empty() && client_ip.starts_with(prefix.as_str()))
            .map_or("", |(_, r)| r.as_str())
    }

    /// The nodes for a client on `platform` at `client_ip`.
    pub fn select(&self, platform: &str, client_ip: &str) -> Nodes {
        let region = self.region_of(client_ip).to_string();
        let web = platform == "web" && !self.node.host_domain.is_empty();
        let mut picked = Vec::new();
        let serve_wss;
        {
            let mut nodes = self.nodes.lock();
            let total_weight: i64 = nodes.iter().map(|n| n.fixed_weight).sum();
            let total_conns: i64 = nodes.iter().map(|n| n.current_conns).sum();
            for n in nodes.iter_mut() {
                let gain = if !region.is_empty() && n.region == region {
                    self.node.region_weight
                } else {
                    1.0
                };
                n.current_weight =
                    current_weight(n.fixed_weight, gain, n.current_conns, total_weight, total_conns);
            }
            nodes.sort_by(|a, b| {
                b.current_weight
                    .cmp(&a.current_weight)
                    .then_with(|| a.id.cmp(&b.id))
            });
            if let Some(top) = nodes.first_mut() {
                top.current_conns += 1;
            }
            serve_wss = !nodes.is_empty() && nodes.iter().take(MAX_NODES).all(|n| n.wss);
            for n in nodes.iter().take(MAX_NODES) {
                if web {
                    picked.push(format!("{}{}", n.id, self.node.host_domain));
                } else {
                    picked.extend(n.addrs.iter().cloned());
                }
            }
        }
        picked.truncate(MAX_NODES);
        if picked.is_empty() && !self.node.default_domain.is_empty() {
            picked.push(self.node.default_domain.clone());
        }
        Nodes {
            domain: self.node.default_domain.clone(),
            tcp_port: i32::from(self.node.tcp_port),
            ws_port: i32::from(self.node.ws_port),
            wss_port: if serve_wss {
                i32::from(self.node.wss_port)
            } else {
                0
            },
            heartbeat: i32::try_from(self.node.heartbeat.as_secs()).unwrap_or(i32::MAX),
            nodes: picked,
            backoff: self.backoff.clone(),
            heartbeat_max: i32::try_from(self.node.heartbeat_max).unwrap_or(i32::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comet(id: &str, weight: i64, conns: u64, region: &str) -> Instance {
        Instance {
            id: id.into(),
            addrs: vec![format!("10.0.0.{}", id.len())],
            weight,
            conn_count: conns,
            region: region.into(),
            ..Instance::default()
        }
    }

    fn balancer(tune: impl FnOnce(&mut LogicConfig)) -> NodeBalancer {
        let mut c = LogicConfig::default();
        tune(&mut c);
        NodeBalancer::new(&c)
    }

    fn first(b: &NodeBalancer, ip: &str) -> String {
        b.select("web", ip).nodes.first().cloned().unwrap_or_default()
    }

    #[test]
    fn weights_follow_goims_formula() {
        // No connections anywhere: the fixed weight (times the gain).
        assert_eq!(current_weight(10, 1.0, 0, 30, 0), 10);
        assert_eq!(current_weight(10, 1.6, 0, 30, 0), 16);
        // Half the weight, no connections out of 100: 10 + round(0.5·100).
        assert_eq!(current_weight(10, 1.0, 0, 20, 100), 60);
        // Half the weight, all 100 connections: 10 + round((0.5 − 0.5)·100).
        assert_eq!(current_weight(10, 1.0, 100, 20, 100), 10);
        // Clamped to at least 1.
        assert_eq!(current_weight(1, 1.0, 1000, 100, 1000), 1);
        assert_eq!(current_weight(0, 1.0, 0, 0, 0), 1);
    }

    #[test]
    fn the_heavier_and_the_emptier_node_comes_first() {
        let b = balancer(|c| c.node.host_domain = ".goim.io".into());
        b.update(&[comet("a", 10, 0, ""), comet("b", 20, 0, "")]);
        assert_eq!(first(&b, ""), "b.goim.io");
        let b = balancer(|c| c.node.host_domain = ".goim.io".into());
        b.update(&[comet("a", 10, 0, ""), comet("b", 10, 500, "")]);
        assert_eq!(first(&b, ""), "a.goim.io");
    }

    #[test]
    fn the_clients_region_gains_weight() {
        let b = balancer(|c| {
            c.node.host_domain = ".x".into();
            c.regions.insert("sh".into(), vec!["192.168.".into()]);
        });
        b.update(&[comet("a", 10, 0, "bj"), comet("b", 10, 0, "sh")]);
        assert_eq!(b.region_of("192.168.1.9"), "sh");
        assert_eq!(first(&b, "192.168.1.9"), "b.x");
        assert_eq!(b.region_of("10.1.1.1"), "");
    }

    #[test]
    fn the_top_node_is_charged_so_picks_spread() {
        let b = balancer(|c| c.node.host_domain = ".x".into());
        b.update(&[comet("a", 10, 0, ""), comet("b", 10, 0, "")]);
        let picks: Vec<String> = (0..4).map(|_| first(&b, "")).collect();
        assert!(
            picks.contains(&"a.x".to_string()) && picks.contains(&"b.x".to_string()),
            "{picks:?}"
        );
    }

    #[test]
    fn other_platforms_get_addresses_and_at_most_five() {
        let b = balancer(|c| c.node.host_domain = ".x".into());
        let comets: Vec<Instance> = (0..8).map(|i| comet(&"n".repeat(i + 1), 10, 0, "")).collect();
        b.update(&comets);
        let n = b.select("ios", "");
        assert_eq!(n.nodes.len(), MAX_NODES);
        assert!(n.nodes.iter().all(|a| a.starts_with("10.0.0.")), "{:?}", n.nodes);
        assert_eq!(
            (n.tcp_port, n.ws_port, n.heartbeat, n.heartbeat_max),
            (3101, 3102, 240, 2)
        );
    }

    #[test]
    fn the_wss_port_is_told_only_when_every_node_returned_serves_wss() {
        let wss = |id: &str| Instance {
            wss_port: 3103,
            ..comet(id, 10, 0, "")
        };
        let b = balancer(|_| {});
        assert_eq!(b.select("ios", "").wss_port, 0, "no comet at all");
        b.update(&[comet("a", 10, 0, ""), comet("bb", 10, 0, "")]);
        let n = b.select("ios", "");
        assert_eq!((n.tcp_port, n.ws_port, n.wss_port), (3101, 3102, 0));
        b.update(&[wss("a"), comet("bb", 10, 0, "")]);
        assert_eq!(b.select("ios", "").wss_port, 0, "bb has no WSS");
        b.update(&[wss("a"), wss("bb")]);
        assert_eq!(b.select("ios", "").wss_port, 3103);
        let b = balancer(|c| c.node.wss_port = 443);
        b.update(&[wss("a")]);
        assert_eq!(
            b.select("ios", "").wss_port,
            443,
            "[node] wss_port is what clients use"
        );
    }

    #[test]
    fn offline_nodes_and_halving_updates_are_ignored() {
        let b = balancer(|c| c.node.default_domain = "conn.example".into());
        assert_eq!(b.select("ios", "").nodes, vec!["conn.example"]);
        let mut off = comet("c", 10, 0, "");
        off.offline = true;
        assert!(b.update(&[
            comet("a", 10, 0, ""),
            comet("bb", 10, 0, ""),
            comet("ccc", 10, 0, ""),
            off
        ]));
        assert_eq!(b.select("ios", "").nodes.len(), 3);
        assert!(!b.update(&[comet("a", 10, 0, "")]), "3 → 1 is flapping");
        assert_eq!(b.select("ios", "").nodes.len(), 3);
        assert!(b.update(&[comet("a", 10, 0, ""), comet("bb", 10, 0, "")]));
        assert_eq!(b.select("ios", "").nodes.len(), 2);
    }
}
