//! Facts about this host and its processes: who we are, and whether a
//! process that took a lease is still alive.

use std::sync::OnceLock;

/// The user name for `status`: `$USER`, `$LOGNAME`, else the passwd entry.
pub fn user() -> String {
    for var in ["USER", "LOGNAME"] {
        if let Ok(u) = std::env::var(var)
            && !u.is_empty()
        {
            return u;
        }
    }
    let uid = nix::unistd::getuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(u)) => u.name,
        _ => uid.to_string(),
    }
}

pub fn hostname() -> String {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".to_string())
    })
    .clone()
}

/// Identifies this kernel boot and PID namespace: two processes with the
/// same host id see the same PIDs, so one can tell whether the other lives.
pub fn host_id() -> String {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(read_host_id).clone()
}

fn read_host_id() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let pidns = std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    format!("{}/{}", boot.trim(), pidns)
}

/// A process's state letter and start time in clock ticks since boot
/// (fields 3 and 22 of /proc/PID/stat), or None if it cannot be read.
///
/// In one `open`, one `read` and one `close`: a waiter checks every entry
/// ahead of it on each attempt (before, each check was also a `statx` and
/// a second `read`).
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    use std::io::Read;
    let mut f = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    // The line is about 300 bytes; the command name (at most 64 bytes
    // here) comes before the fields read.
    let mut buf = [0u8; 1024];
    let mut len = 0;
    while len < buf.len() {
        match f.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => {
                len += n;
                // The whole line: no second `read` to learn of its end.
                if buf[len - 1] == b'\n' {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    let stat = std::str::from_utf8(&buf[..len]).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let mut f = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = f.next()?.chars().next()?;
    Some((state, f.nth(18)?.parse().ok()?))
}

pub fn proc_start(pid: u32) -> Option<u64> {
    proc_stat(pid).map(|(_, start)| start)
}

/// Whether the process that recorded (`pid`, `start`) is still running.
/// Only meaningful for a process with our [`host_id`]. A zombie counts as
/// dead: it has exited, and its children have had their death signal.
pub fn process_alive(pid: u32, start: u64) -> bool {
    let Ok(p) = i32::try_from(pid) else {
        return false;
    };
    match proc_stat(pid) {
        Some((state, s)) => state != 'Z' && state != 'X' && s == start,
        // Not readable: gone, or hidden (/proc mounted with `hidepid=2`
        // shows another user's live process as missing), or no /proc at
        // all. Only the kernel's word makes it dead: no such pid (EPERM is
        // alive but not ours). The start time cannot be compared then.
        None => !matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None),
            Err(nix::errno::Errno::ESRCH)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_is_alive() {
        let pid = std::process::id();
        let start = proc_start(pid).unwrap();
        assert!(process_alive(pid, start));
        assert!(!process_alive(pid, start + 1));
        assert!(!host_id().is_empty());
    }
}
