//! The child itself: its command line, spawning it in its own process
//! group (with what must happen between fork and exec), the terminal, and
//! what it leaves behind in its group.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::ChildSpec;
use super::relay::meet_relay;
use crate::outcome::died_of;

/// The program and its arguments: CMD as given, or `/bin/sh -c` with its
/// words joined (`--shell`).
pub(super) fn command_line(spec: &ChildSpec) -> (OsString, Vec<OsString>) {
    if spec.shell {
        let joined = spec
            .argv
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        ("/bin/sh".into(), vec!["-c".into(), joined.into()])
    } else {
        (spec.argv[0].clone(), spec.argv[1..].to_vec())
    }
}

/// Where the child meets the guard and the relay before exec.
#[derive(Debug, Clone, Copy)]
pub(super) struct Meet {
    /// The guard's pipe: the child writes its pid, whom to kill.
    pub guard_fd: i32,
    /// The relay's handshake (pid out, go-ahead in); -1 without a relay.
    pub relay_fds: (i32, i32),
    /// Whether the child takes the terminal (ours is the foreground group).
    pub take_terminal: bool,
}

/// A started child: its pid, and its exit to wait for.
pub(super) enum Running {
    /// Started without a fork ([`super::spawn`]).
    Cloned(super::spawn::Spawned),
    /// Forked by the standard library, where that clone is not used.
    Forked(tokio::process::Child),
}

impl Running {
    pub(super) fn id(&self) -> Option<u32> {
        match self {
            Running::Cloned(c) => Some(c.id()),
            Running::Forked(c) => c.id(),
        }
    }

    pub(super) async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        match self {
            Running::Cloned(c) => c.wait().await,
            Running::Forked(c) => c.wait().await,
        }
    }
}

/// Spawn CMD in a process group of its own, with the environment of the
/// contract and `PR_SET_PDEATHSIG = SIGKILL`, so it dies with dlock.
pub(super) fn spawn(
    program: &OsString,
    args: &[OsString],
    spec: &ChildSpec,
    meet: Meet,
) -> std::io::Result<Running> {
    if super::spawn::usable() {
        return super::spawn::spawn(program, args, &spec.env_remove, &spec.env, meet)
            .map(Running::Cloned);
    }
    let parent = std::process::id() as i32;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).process_group(0).kill_on_drop(false);
    for k in &spec.env_remove {
        cmd.env_remove(k);
    }
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    // SAFETY: the closure runs in the forked child before exec and makes
    // only async-signal-safe calls (see `before_exec`).
    unsafe {
        cmd.pre_exec(move || {
            before_exec(parent, &meet);
            Ok(())
        });
    }
    cmd.spawn().map(Running::Forked)
}

/// In the child, between fork (or clone) and exec, in its own process
/// group: tell the guard whom to kill, arm the death signal, meet the
/// relay, take the terminal. Only async-signal-safe calls (write, read,
/// prctl, getppid, sigprocmask, tcsetpgrp); it allocates nothing.
pub(super) fn before_exec(parent: i32, meet: &Meet) {
    let Meet {
        guard_fd,
        relay_fds: (relay_pid_fd, relay_go_fd),
        take_terminal: tty_fg,
    } = *meet;
    // SAFETY: system calls on inherited descriptors and local values.
    unsafe {
        // The guard's first message, whom to kill, comes from the child
        // itself before the command runs: were dlock frozen the moment
        // spawn returned, the guard would otherwise not know the group.
        let me = i64::from(libc::getpid()).to_ne_bytes();
        libc::write(guard_fd, me.as_ptr().cast(), me.len());
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        if libc::getppid() != parent {
            // dlock died before the death signal was armed.
            libc::_exit(died_of(libc::SIGKILL));
        }
    }
    // The relay is in the group before the group can get Ctrl-C.
    meet_relay(relay_pid_fd, relay_go_fd);
    if tty_fg {
        take_terminal();
    }
}

/// Processes the child left in its group would run on without the lock:
/// the stop signal to them, and SIGKILL to whatever is left after `grace`.
pub(super) async fn reap_group(pgid: Pid, stop: Signal, grace: Duration) {
    if killpg(pgid, None).is_err() {
        return;
    }
    tracing::info!(
        event = "leftovers",
        "stopping processes the child left in its group"
    );
    let _ = killpg(pgid, stop);
    let until = Instant::now() + grace;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if killpg(pgid, None).is_err() {
            return;
        }
    }
    let _ = killpg(pgid, Signal::SIGKILL);
}

/// Whether stdin is a terminal whose foreground process group is ours: then
/// the child gets the terminal, so it can read from it and Ctrl-C reaches it.
pub(super) fn foreground_tty() -> bool {
    // SAFETY: plain queries on fd 0.
    unsafe { libc::isatty(0) == 1 && libc::tcgetpgrp(0) == libc::getpgrp() }
}

/// In the child (a new, background group): make its group the foreground.
fn take_terminal() {
    // SAFETY: async-signal-safe calls on local values; SIGTTOU is blocked so
    // tcsetpgrp from a background group does not stop us, then unblocked.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTTOU);
        libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
        libc::tcsetpgrp(0, libc::getpid());
        libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
}

/// In dlock, after the child ended: take the terminal back.
pub(super) fn restore_terminal() {
    // SAFETY: as in take_terminal, for our own process group.
    unsafe {
        let prev = libc::signal(libc::SIGTTOU, libc::SIG_IGN);
        libc::tcsetpgrp(0, libc::getpgrp());
        libc::signal(libc::SIGTTOU, prev);
    }
}
