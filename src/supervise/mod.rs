//! The child process: spawn it in its own process group, forward signals to
//! that group, stop it when the lease is lost, and map how it ended to an
//! exit code.
//!
//! Stopping on request: INT, TERM, HUP and QUIT sent to dlock are passed on
//! to the group, and a child still running `--kill-after` later is SIGKILLed
//! (dlock then exits 128+N for the signal it got, as `timeout -k` does); a
//! second SIGINT is SIGKILL at once. On a terminal the child's group owns
//! the terminal, so Ctrl-C reaches it and not dlock: a *relay* process in
//! that group reports such signals to dlock, and the second Ctrl-C is
//! SIGKILL (a single one starts no timer: an interactive child takes it as
//! "cancel" and runs on).
//!
//! Three layers make sure the child never runs on unlocked:
//! 1. dlock itself sends the stop signal (`--stop-signal`, default SIGTERM)
//!    to the group when the keeper reports a loss, and
//!    SIGKILLs it after `--kill-after` or at the lease's deadline, whichever
//!    comes first.
//! 2. The child gets `PR_SET_PDEATHSIG = SIGKILL`, so it dies with dlock.
//! 3. A tiny *guard* process, started by dlock before the child is spawned
//!    (a `clone(CLONE_VM)` on a stack of its own where it can, else a fork),
//!    holds the read end of a pipe whose write end only dlock has. dlock
//!    writes each new lease deadline to it. If dlock dies (even by SIGKILL) the pipe reads EOF
//!    and the guard SIGKILLs the whole group, grandchildren included; if dlock
//!    is frozen (SIGSTOP, a VM pause) the guard sends the stop signal at the
//!    deadline minus the grace and SIGKILLs it at the deadline. The guard
//!    uses `CLOCK_BOOTTIME`, so time spent suspended counts, as it does for
//!    the server's TTL.
//!
//! The files: [`signals`] (what a signal means to dlock, and the streams),
//! `watch` (the loop: forwarding and stop escalation), `child` (spawn,
//! terminal, leftovers), `guard` and `relay` (the two helper processes),
//! and this one, which puts them together.

mod child;
mod guard;
mod relay;
pub mod signals;
mod spawn;
#[cfg(test)]
mod tests;
mod watch;

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::cli::OnLost;
use crate::jsonlog::say;
use crate::lease::{Keeper, Loss};
use crate::outcome::ChildExit;
use guard::Guard;
use relay::Relay;
pub use signals::{
    FORWARDED, SignalEvent, SignalSource, Signals, Stops, ignored, parse_signal, signal_name,
};
pub use watch::{Policy, Watched, watch_child};

/// What to run, and how to stop it.
pub struct ChildSpec {
    pub argv: Vec<OsString>,
    pub shell: bool,
    pub env: Vec<(String, String)>,
    pub env_remove: Vec<String>,
    pub on_lost: OnLost,
    pub kill_after: Duration,
    /// What dlock sends the group when it must stop the child itself
    /// (`--stop-signal`): a lost lease, leftovers after the child ended.
    pub stop_signal: Signal,
}

/// How a supervised run of the child ended.
pub struct Ended {
    pub exit: ChildExit,
    pub lost: Option<Loss>,
    /// The first signal asking the child to end (INT, TERM, HUP, QUIT) that
    /// reached its group from outside while it ran: passed on by dlock, or
    /// sent by the terminal (Ctrl-C).
    pub stopped_by: Option<SignalEvent>,
}

/// The grace between SIGTERM and the lease deadline: `--kill-after`, but
/// never more than a third of the TTL, or a foreseen loss would stop every
/// child before its first renewal.
pub fn grace(kill_after: Duration, ttl: Duration) -> Duration {
    kill_after.min(ttl / 3)
}

/// Spawn the child and supervise it until it exits.
pub async fn supervise(
    spec: ChildSpec,
    signals: &mut Signals,
    keeper: &Keeper,
    ttl: Duration,
) -> Result<Ended> {
    // The lease deadline the guard enforces: none under --on-lost ignore.
    let enforced = |at: Option<Instant>| at.filter(|_| spec.on_lost == OnLost::Kill);
    let (program, args) = child::command_line(&spec);
    let shown = program.to_string_lossy().into_owned();

    let mut guard = Guard::start(
        enforced(keeper.safe_until()),
        grace(spec.kill_after, ttl),
        spec.stop_signal,
    )?;
    let tty_fg = child::foreground_tty();
    // On a terminal the child's group is the foreground one, so Ctrl-C and
    // Ctrl-\ reach it and not dlock: a relay in that group tells us.
    let mut relay = if tty_fg { Relay::start() } else { None };
    let meet = child::Meet {
        guard_fd: guard.fd(),
        relay_fds: relay.as_ref().map_or((-1, -1), Relay::child_fds),
        take_terminal: tty_fg,
    };
    let spawned = child::spawn(&program, &args, &spec, meet);
    if let Some(r) = relay.as_mut() {
        r.spawned();
    }
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            guard.disarm();
            if let Some(r) = relay {
                r.end();
            }
            let (exit, what) = match e.kind() {
                std::io::ErrorKind::NotFound => (ChildExit::NotFound, "command not found"),
                _ => (ChildExit::NotExecutable, "cannot execute"),
            };
            say("ERROR", &format!("{shown}: {what}: {e}"));
            return Ok(Ended {
                exit,
                lost: None,
                stopped_by: None,
            });
        }
    };
    let pgid = Pid::from_raw(child.id().context("child has no pid")? as i32);
    tracing::info!(
        event = "started",
        pid = pgid.as_raw(),
        command = shown,
        "child started"
    );

    let mut relayed = relay
        .as_mut()
        .map_or_else(relay::RelayedSignals::none, Relay::reports);
    // The deadline the guard knows (it can lag the keeper's by a renewal).
    let mut guard_deadline = keeper.safe_until();
    let mut lost_rx = keeper.lost();
    let watched = watch_child(
        child.wait(),
        |sig| {
            let _ = killpg(pgid, sig);
        },
        signals,
        &mut relayed,
        &mut lost_rx,
        keeper.safe_until_updates(),
        Policy {
            on_lost: spec.on_lost,
            kill_after: spec.kill_after,
            stop_signal: spec.stop_signal,
            shown: &shown,
        },
        |at| {
            guard.send(enforced(at));
            guard_deadline = at;
        },
    )
    .await;
    if let Some(r) = relay {
        r.end();
    }
    let Watched {
        status,
        mut lost,
        stopped_by,
        killed,
    } = watched;
    let status = status.context("waiting for the child failed")?;
    if tty_fg {
        child::restore_terminal();
    }
    // The child may have ended (killed by the guard, say) before the loss
    // was seen: if dlock was frozen past the lease, the run still lost it.
    if lost.is_none() {
        lost = lost_rx.borrow().clone();
    }
    // The guard stopped the group at a deadline (dlock was frozen), or the
    // deadline the guard knew has as good as passed.
    let grace = grace(spec.kill_after, ttl) + Duration::from_millis(50);
    if lost.is_none()
        && (guard.acted() || guard_deadline.is_some_and(|u| Instant::now() + grace >= u))
    {
        let msg = "the lease could not be renewed in time while dlock was not running (frozen or suspended?)";
        say("WARN", msg);
        lost = Some(Loss {
            message: msg.to_string(),
            expires: None,
        });
    }
    child::reap_group(
        pgid,
        spec.stop_signal,
        spec.kill_after.min(Duration::from_secs(5)),
    )
    .await;
    guard.disarm();
    let exit = match (status.code(), status.signal(), stopped_by) {
        // dlock SIGKILLed a child that did not stop when asked.
        (None, Some(libc::SIGKILL), Some(by)) if killed => ChildExit::KilledAfter(by.signal()),
        (Some(c), _, _) => ChildExit::Exited(c),
        (None, Some(s), _) => ChildExit::Died(s),
        _ => ChildExit::Unknown,
    };
    tracing::info!(event = "exited", code = exit.code(), "child exited");
    Ok(Ended {
        exit,
        lost,
        stopped_by,
    })
}
