//! The supervise loop proper: watch a started child until it exits,
//! passing signals on and escalating a stop to SIGKILL. It knows the child
//! only as a future of its exit and a way to signal its group, so it is
//! tested with a fake child under paused time (see `tests.rs`).

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::sync::watch;

use super::signals::{SignalEvent, SignalSource, signal_name};
use crate::cli::OnLost;
use crate::lease::Loss;

/// How the loop treats a loss and a stop, and the child's name for messages.
pub struct Policy<'a> {
    pub on_lost: OnLost,
    pub kill_after: Duration,
    pub stop_signal: Signal,
    pub shown: &'a str,
}

/// Now, on tokio's clock (the same as the system's, except under a test's
/// paused time).
fn clock_now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// How a watched child ended.
pub struct Watched {
    pub status: std::io::Result<std::process::ExitStatus>,
    pub lost: Option<Loss>,
    /// The first signal asking the child to end that reached the group
    /// from outside.
    pub stopped_by: Option<SignalEvent>,
    /// Whether dlock SIGKILLed the group after a stop signal (a second
    /// SIGINT, or `--kill-after` passed).
    pub killed: bool,
}

/// Watch a started child until it exits. Signals from `signals` are
/// forwarded to its group; those from `relayed` already reached it (the
/// terminal's Ctrl-C). After a forwarded one that asks the child to end
/// ([`SignalEvent::ends_child`]) the group is SIGKILLed `--kill-after`
/// later if the child still runs; a second interrupt, from either, is
/// SIGKILL at once. When the keeper reports a loss, the stop signal goes to
/// the group and SIGKILL after `--kill-after` or at the lease's expiry,
/// whichever is first (`--on-lost ignore`: only warn).
/// Every new safe deadline goes to `on_deadline` (the guard). `exited` is
/// the child's exit, `kill` signals its process group.
#[allow(clippy::too_many_arguments)]
pub async fn watch_child(
    exited: impl std::future::Future<Output = std::io::Result<std::process::ExitStatus>>,
    mut kill: impl FnMut(Signal),
    signals: &mut impl SignalSource,
    relayed: &mut impl SignalSource,
    lost_rx: &mut watch::Receiver<Option<Loss>>,
    mut safe_rx: watch::Receiver<Option<Instant>>,
    policy: Policy<'_>,
    mut on_deadline: impl FnMut(Option<Instant>),
) -> Watched {
    let shown = policy.shown;
    let mut lost: Option<Loss> = None;
    let mut kill_at: Option<Instant> = None;
    let mut interrupts = 0;
    let mut stopped_by: Option<SignalEvent> = None;
    let mut killed = false;
    let mut exited = std::pin::pin!(exited);
    let status = loop {
        let kill_sleep = async {
            match kill_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let (event, delivered) = tokio::select! {
            st = &mut exited => break st,
            e = signals.recv() => (e, false),
            e = relayed.recv() => (e, true),
            changed = lost_rx.changed(), if lost.is_none() => {
                if changed.is_err() { continue; }
                let Some(loss) = lost_rx.borrow_and_update().clone() else { continue };
                crate::jsonlog::stderr_line(&format!("dlock: {}", loss.message));
                match policy.on_lost {
                    OnLost::Ignore => crate::jsonlog::stderr_line(&format!(
                        "dlock: --on-lost ignore: letting {shown} run on without the lock"
                    )),
                    OnLost::Kill => {
                        let by = clock_now() + policy.kill_after;
                        let by = loss.expires.map_or(by, |e| by.min(e));
                        crate::jsonlog::stderr_line(&format!(
                            "dlock: stopping {shown}: SIG{} to its process group, SIGKILL in {}",
                            signal_name(policy.stop_signal),
                            crate::status::human_duration(by.saturating_duration_since(clock_now()))
                        ));
                        kill(policy.stop_signal);
                        kill_at = Some(kill_at.map_or(by, |k| k.min(by)));
                    }
                }
                lost = Some(loss);
                continue;
            }
            _ = kill_sleep => {
                tracing::warn!(event = "kill", "child still running at its deadline: SIGKILL");
                kill(Signal::SIGKILL);
                killed |= stopped_by.is_some();
                kill_at = None;
                continue;
            }
            changed = safe_rx.changed() => {
                if changed.is_ok() {
                    on_deadline(*safe_rx.borrow_and_update());
                }
                continue;
            }
        };
        let sig = event.signal();
        let mut send = sig;
        if event == SignalEvent::Interrupt {
            interrupts += 1;
            if interrupts >= 2 {
                send = Signal::SIGKILL;
            }
        }
        if event.ends_child() {
            stopped_by.get_or_insert(event);
            // Not for the terminal's: an interactive child (an editor, a
            // REPL, psql) takes Ctrl-C as "cancel that" and runs on; the
            // second Ctrl-C is how to force it.
            let by = clock_now() + policy.kill_after;
            if !delivered && kill_at.is_none_or(|k| by < k) {
                kill_at = Some(by);
            }
        }
        if send == Signal::SIGKILL {
            tracing::warn!(
                event = "kill",
                signal = sig.as_str(),
                "second interrupt: SIGKILL"
            );
            kill(Signal::SIGKILL);
            killed = true;
            kill_at = None;
        } else if delivered {
            tracing::info!(
                event = "signal",
                signal = sig.as_str(),
                "the child got a signal from the terminal"
            );
        } else {
            tracing::info!(
                event = "signal",
                signal = sig.as_str(),
                "forwarding signal to the child"
            );
            kill(send);
        }
    };
    Watched {
        status,
        lost,
        stopped_by,
        killed,
    }
}
