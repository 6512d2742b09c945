//! The space process ids are unique in: this boot of this machine, in this
//! pid namespace. Two processes that report the same space can judge each
//! other's ids; across machines, boots or containers an id means nothing.
//! `topo::owner` uses it to tell that a registration was left by a process
//! that has since died (Linux only: elsewhere the space is unknown and no
//! judgement is made).

use std::sync::OnceLock;

/// This process's pid space, `<boot id>/<pid namespace>`; empty when either
/// cannot be read (not Linux, no `/proc`).
pub fn current() -> &'static str {
    static SPACE: OnceLock<String> = OnceLock::new();
    SPACE.get_or_init(|| {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id");
        let ns = std::fs::read_link("/proc/self/ns/pid");
        match (boot, ns) {
            (Ok(boot), Ok(ns)) if !boot.trim().is_empty() => format!("{}/{}", boot.trim(), ns.display()),
            _ => String::new(),
        }
    })
}

/// True if process `pid` of this pid space has ended: gone, or a zombie
/// (`/proc/<pid>/stat`'s state letter, after the `)` that closes the name).
pub fn has_ended(pid: u32) -> bool {
    ended_by(std::fs::read_to_string(format!("/proc/{pid}/stat")))
}

/// The judgement on one read of `/proc/<pid>/stat`. Only a missing file
/// means gone: any other failure (out of file descriptors, say) means "cannot
/// tell", which must read as "still running". `reborn up` once took a live
/// ZooKeeper for dead while a flood of connections held every descriptor,
/// and blocked for ever waiting for it to exit.
fn ended_by(stat: std::io::Result<String>) -> bool {
    match stat {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| matches!(rest.split_whitespace().next(), Some("Z" | "X"))),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_runs_and_an_ended_child_has_ended() {
        assert!(current().contains("/pid:["), "{}", current());
        assert!(!has_ended(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let pid = child.id();
        // A zombie until reaped: ended all the same.
        while !has_ended(pid) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        child.wait().expect("reap");
        assert!(has_ended(pid));
    }

    #[test]
    fn a_failed_look_is_not_an_end() {
        let emfile = std::io::Error::from_raw_os_error(24);
        assert!(!ended_by(Err(emfile)), "out of descriptors: cannot tell");
        let gone = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert!(ended_by(Err(gone)));
        assert!(ended_by(Ok("1 (a b) Z 0".into())));
        assert!(
            !ended_by(Ok("1 (a) Z) S 0".into())),
            "the state after the last ')'"
        );
    }
}
