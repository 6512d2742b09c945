//! The block `reborn up` prints once everything answers: every address, what it
//! is, where its log is, and commands to try.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::topo::model::{GroupId, SlotRange};

use super::plan::GroupPlan;
use super::push::PushPlan;
use super::seed::Seeded;
use super::servers::Servers;

/// Everything the banner shows.
pub struct Banner<'a> {
    /// The product name.
    pub product: &'a str,
    /// The processes.
    pub servers: &'a Servers,
    /// The groups and their slots.
    pub groups: &'a [GroupPlan],
    /// What seeding did.
    pub seeded: &'a Seeded,
    /// The proxy's RESP and admin addresses, `None` if the proxy is not running.
    pub proxy: Option<(SocketAddr, SocketAddr)>,
    /// Where the push roles listen, `None` if they are not running.
    pub push: Option<PushPlan>,
    /// The dashboard's HTTP address.
    pub dashboard: SocketAddr,
    /// The data + log directory, and whether it is kept after exit.
    pub dir: (&'a Path, bool),
    /// Extra flags `reborn admin` needs to find this cluster ("" for defaults).
    pub admin_flags: String,
}

impl Banner<'_> {
    /// The text, ready to print.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) -> std::fmt::Result {
        writeln!(out)?;
        writeln!(
            out,
            "reborn up: product {:?} is running. Ctrl-C stops everything.",
            self.product
        )?;
        writeln!(out)?;
        let row = |out: &mut String, what: &str, addr: &str, note: String| {
            writeln!(out, "{}", format!("  {what:<14} {addr:<24} {note}").trim_end())
        };
        match self.servers.zookeeper().map(|zk| zk.members()) {
            Some([zk]) => row(out, "ZooKeeper", zk.addr().as_str(), log_note(&zk.log_file()))?,
            Some(members) => {
                row(
                    out,
                    "ZooKeeper",
                    self.servers.zk_addr(),
                    format!(
                        "ensemble of {}: the connect string every role uses",
                        members.len()
                    ),
                )?;
                for (i, zk) in members.iter().enumerate() {
                    let label = format!("  member {}", i + 1);
                    row(out, &label, zk.addr().as_str(), log_note(&zk.log_file()))?;
                }
            }
            None => row(
                out,
                "ZooKeeper",
                self.servers.zk_addr(),
                "(given with --zk, not started here)".into(),
            )?,
        }
        let mut last_group = None;
        for member in self.servers.members() {
            let label = if last_group == Some(member.group) {
                String::new()
            } else {
                format!("group {}", member.group)
            };
            last_group = Some(member.group);
            let role = if self.seeded.is_master(&member.server.addr(), member.role) {
                "master "
            } else {
                "replica"
            };
            let note = format!("{role}  {}", log_note(&member.server.log_file()));
            row(out, &label, &member.server.addr(), note)?;
        }
        let slots: Vec<String> = match self.seeded {
            Seeded::Created => self
                .groups
                .iter()
                .map(|g| format!("{}-{} -> group {}", g.first_slot, g.last_slot, g.id))
                .collect(),
            // A reused product keeps what migrations and rebalances made of it.
            Seeded::Reused { slots, .. } => merged_by_group(slots)
                .into_iter()
                .map(|(start, end, group)| match group {
                    0 => format!("{start}-{end} unassigned"),
                    g => format!("{start}-{end} -> group {g}"),
                })
                .collect(),
        };
        row(out, "slots", &slots.join(", "), String::new())?;
        row(
            out,
            "dashboard",
            &format!("http://{}", self.dashboard),
            "HTTP JSON API: /api/topology, /api/groups, ...".into(),
        )?;
        match self.proxy {
            Some((listen, admin)) => {
                row(
                    out,
                    "proxy",
                    &listen.to_string(),
                    "RESP: talk to it with any Redis client".into(),
                )?;
                row(
                    out,
                    "proxy admin",
                    &format!("http://{admin}"),
                    "HTTP: /stats, /metrics".into(),
                )?;
            }
            None => row(out, "proxy", "-", "not running".into())?,
        }
        match self.push {
            Some(p) => {
                let rows = [
                    (
                        "logic HTTP",
                        format!("http://{}", p.logic_http),
                        "push API: /goim/push/*, /goim/online/*, /goim/nodes/*",
                    ),
                    (
                        "logic gRPC",
                        p.logic_grpc.to_string(),
                        "comets call it (Connect, Heartbeat, ...)",
                    ),
                    (
                        "comet TCP",
                        p.comet_tcp.to_string(),
                        "goim v2 clients over raw TCP",
                    ),
                    (
                        "comet WS",
                        format!("ws://{}/sub", p.comet_ws),
                        "goim v2 clients over WebSocket",
                    ),
                    (
                        "comet gRPC",
                        p.comet_grpc.to_string(),
                        "job calls it (PushMsg, Broadcast, ...)",
                    ),
                    (
                        "comet admin",
                        format!("http://{}", p.comet_admin),
                        "HTTP: /stats, /metrics",
                    ),
                    (
                        "job admin",
                        format!("http://{}", p.job_admin),
                        "HTTP: /stats, /metrics (job moves the push queue to the comets)",
                    ),
                    (
                        "demo page",
                        format!("http://{}/demo", p.logic_http),
                        "open in a browser",
                    ),
                ];
                for (what, addr, note) in rows {
                    row(out, what, &addr, note.into())?;
                }
            }
            None => row(out, "push", "-", "not running (--no-push)".into())?,
        }
        let keep = if self.dir.1 {
            "kept after exit"
        } else {
            "removed on exit"
        };
        row(
            out,
            "data + logs",
            &self.dir.0.display().to_string(),
            format!("({keep})"),
        )?;
        self.write_notes(out)?;
        self.write_hints(out)
    }

    fn write_notes(&self, out: &mut String) -> std::fmt::Result {
        if let Seeded::Reused {
            mismatches, changes, ..
        } = self.seeded
        {
            writeln!(out)?;
            writeln!(
                out,
                "  note: product {:?} already existed in ZooKeeper; it was reused unchanged.",
                self.product
            )?;
            for c in changes {
                writeln!(out, "  note: {c}")?;
            }
            for m in mismatches {
                writeln!(out, "  warning: {m}")?;
            }
        }
        Ok(())
    }

    fn write_hints(&self, out: &mut String) -> std::fmt::Result {
        writeln!(out)?;
        writeln!(out, "Try:")?;
        if let Some((listen, _)) = self.proxy {
            let p = listen.port();
            writeln!(out, "  redis-cli -p {p} set hello world")?;
            writeln!(out, "  redis-cli -p {p} mset a 1 foo 2 bar 3")?;
            writeln!(out, "  redis-cli -p {p} mget hello a foo bar")?;
            writeln!(out, "  redis-benchmark -p {p} -t set,get -r 100000 -P 16 -q")?;
        }
        let exe = reborn_exe();
        for sub in ["groups", "slots", "proxies"] {
            writeln!(out, "  {} admin{} {sub}", exe.display(), self.admin_flags)?;
        }
        let dashboard_flag = if self.dashboard.to_string() == crate::topo::manager::dashboard::DEFAULT_LISTEN
        {
            String::new()
        } else {
            format!(" --dashboard {}", self.dashboard)
        };
        writeln!(
            out,
            "  {} admin rebalance --dry-run{dashboard_flag}",
            exe.display()
        )?;
        writeln!(out, "  curl -s http://{}/api/groups", self.dashboard)?;
        if let Some(p) = self.push {
            let api = format!("http://{}", p.logic_http);
            writeln!(out, "  # push: open {api}/demo (mid 123), then")?;
            writeln!(
                out,
                "  curl -d 'hello 123' '{api}/goim/push/mids?operation=1000&mids=123'"
            )?;
            writeln!(
                out,
                "  curl -d 'hello room' '{api}/goim/push/room?operation=1000&type=live&room=1000'"
            )?;
            writeln!(out, "  curl -s '{api}/goim/online/top?type=live&limit=10'")?;
            writeln!(out, "  curl -s '{api}/goim/nodes/weighted?platform=web'")?;
            if let Some((listen, _)) = self.proxy {
                writeln!(out, "  redis-cli -p {} hgetall mid_123", listen.port())?;
            }
        }
        writeln!(out)
    }
}

/// `(start, end, group)` runs of one group (a slot's migration state and
/// source do not matter to the banner).
fn merged_by_group(ranges: &[SlotRange]) -> Vec<(u16, u16, GroupId)> {
    let mut out: Vec<(u16, u16, GroupId)> = Vec::new();
    for r in ranges {
        match out.last_mut() {
            Some((_, end, group)) if *group == r.group && *end + 1 == r.start => *end = r.end,
            _ => out.push((r.start, r.end, r.group)),
        }
    }
    out
}

fn log_note(log: &Path) -> String {
    format!("log: {}", log.display())
}

/// How to call this binary from the current directory: `target/release/reborn`
/// after `scripts/up.sh`, else its full path (or plain `reborn`).
fn reborn_exe() -> PathBuf {
    let Ok(exe) = std::env::current_exe() else {
        return PathBuf::from("reborn");
    };
    match std::env::current_dir() {
        Ok(cwd) => exe.strip_prefix(&cwd).map(Path::to_path_buf).unwrap_or(exe),
        Err(_) => exe,
    }
}
