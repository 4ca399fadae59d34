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
//! 3. A tiny *guard* process, forked from dlock before the child is spawned,
//!    holds the read end of a pipe whose write end only dlock has. dlock writes each new
//!    lease deadline to it. If dlock dies (even by SIGKILL) the pipe reads EOF
//!    and the guard SIGKILLs the whole group, grandchildren included; if dlock
//!    is frozen (SIGSTOP, a VM pause) the guard sends the stop signal at the
//!    deadline minus the grace and SIGKILLs it at the deadline. The guard
//!    uses `CLOCK_BOOTTIME`, so time spent suspended counts, as it does for
//!    the server's TTL.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::cli::OnLost;
use crate::jsonlog::say;
use crate::lease::{Keeper, Loss};
use crate::outcome::{ChildExit, died_of};

/// The signals dlock passes on to the child.
pub const FORWARDED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Signal streams for [`FORWARDED`], installed before the lock is taken so a
/// signal never kills dlock between taking the lock and starting the child.
/// A signal that was ignored when dlock started (`nohup`, a background job
/// of a non-interactive shell) gets no handler: it stays ignored, is not
/// forwarded, and the child inherits the ignore, as with `flock(1)`.
pub struct Signals {
    streams: Vec<(Signal, tokio::signal::unix::Signal)>,
}

/// Whether `s` is ignored (`SIG_IGN`) right now.
pub fn ignored(s: Signal) -> bool {
    // SAFETY: with a null new action, sigaction only reads the current
    // disposition into the zeroed struct we own.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(s as libc::c_int, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
}

impl Signals {
    pub fn install() -> Result<Signals> {
        let mut streams = Vec::new();
        for s in FORWARDED {
            if ignored(s) {
                tracing::debug!(signal = s.as_str(), "ignored at start: left ignored");
                continue;
            }
            let stream =
                signal(SignalKind::from_raw(s as i32)).context("cannot install signal handlers")?;
            streams.push((s, stream));
        }
        Ok(Signals { streams })
    }

    pub async fn recv(&mut self) -> Signal {
        let futs = self
            .streams
            .iter_mut()
            .map(|(s, st)| {
                let s = *s;
                Box::pin(async move {
                    st.recv().await;
                    s
                })
            })
            .collect::<Vec<_>>();
        futures_select_all(futs).await
    }
}

/// Await the first of several futures (a tiny `select_all`).
async fn futures_select_all<F: std::future::Future<Output = Signal> + Unpin>(
    mut futs: Vec<F>,
) -> Signal {
    std::future::poll_fn(move |cx| {
        for f in futs.iter_mut() {
            if let std::task::Poll::Ready(s) = std::pin::Pin::new(f).poll(cx) {
                return std::task::Poll::Ready(s);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

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
    /// The first terminating signal (INT, TERM, HUP, QUIT) that reached the
    /// child's group from outside while it ran: passed on by dlock, or sent
    /// by the terminal (Ctrl-C).
    pub stopped_by: Option<Signal>,
}

/// The signals that ask a program to end: after one of them reached the
/// child, it gets `--kill-after` to do so before SIGKILL.
pub const TERMINATING: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// `--stop-signal`: a signal name (`TERM`, `SIGQUIT`, any case) or number.
pub fn parse_signal(s: &str) -> Result<Signal, String> {
    let t = s.trim();
    let sig = if let Ok(n) = t.parse::<i32>() {
        Signal::try_from(n).ok()
    } else {
        let up = t.to_ascii_uppercase();
        let name = if up.starts_with("SIG") {
            up
        } else {
            format!("SIG{up}")
        };
        name.parse::<Signal>().ok()
    };
    match sig {
        Some(
            Signal::SIGSTOP
            | Signal::SIGTSTP
            | Signal::SIGTTIN
            | Signal::SIGTTOU
            | Signal::SIGCHLD
            | Signal::SIGCONT
            | Signal::SIGWINCH
            | Signal::SIGURG,
        ) => Err(format!(
            "{s:?} does not stop a program: use TERM, INT, QUIT, HUP, USR1, USR2 or KILL"
        )),
        Some(sig) => Ok(sig),
        None => Err(format!(
            "{s:?} is not a signal: use a name such as TERM, INT, QUIT or HUP, or its number"
        )),
    }
}

/// The signal's name without `SIG`, as users write it (`TERM`).
pub fn signal_name(s: Signal) -> &'static str {
    s.as_str().trim_start_matches("SIG")
}

/// The grace between SIGTERM and the lease deadline: `--kill-after`, but
/// never more than a third of the TTL, or a foreseen loss would stop every
/// child before its first renewal.
pub fn grace(kill_after: Duration, ttl: Duration) -> Duration {
    kill_after.min(ttl / 3)
}

// time_t is i64 here but not on every target.
#[allow(clippy::unnecessary_cast)]
fn boottime_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass; async-signal-safe.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as i64 * 1_000_000_000 + ts.tv_nsec as i64
}

/// An `Instant` expressed on `CLOCK_BOOTTIME`, for the guard.
fn to_boottime(at: Instant) -> i64 {
    let now = Instant::now();
    let base = boottime_ns();
    if at >= now {
        base.saturating_add(at.duration_since(now).as_nanos() as i64)
    } else {
        base.saturating_sub(now.duration_since(at).as_nanos() as i64)
    }
}

/// Tells the guard about deadlines; dropping it without `disarm` makes the
/// guard kill the group.
struct GuardPipe(Option<OwnedFd>);

impl GuardPipe {
    fn send(&self, v: i64) {
        if let Some(fd) = &self.0 {
            let b = v.to_ne_bytes();
            // SAFETY: writing 8 bytes from a local buffer to a pipe we own;
            // under PIPE_BUF, so the write is atomic.
            unsafe { libc::write(fd.as_raw_fd(), b.as_ptr().cast(), b.len()) };
        }
    }

    fn disarm(&mut self) {
        self.send(0);
        self.0 = None;
    }
}

/// Spawn the child and supervise it until it exits.
pub async fn supervise(
    spec: ChildSpec,
    signals: &mut Signals,
    keeper: &Keeper,
    ttl: Duration,
) -> Result<Ended> {
    let grace_ns = grace(spec.kill_after, ttl).as_nanos() as i64;
    // Lease deadline for the guard; -1 means "no deadline" (--on-lost ignore).
    let deadline = |at: Option<Instant>| match (spec.on_lost, at) {
        (OnLost::Kill, Some(at)) => to_boottime(at).max(1),
        _ => -1,
    };

    let (program, args): (OsString, Vec<OsString>) = if spec.shell {
        let joined = spec
            .argv
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        ("/bin/sh".into(), vec!["-c".into(), joined.into()])
    } else {
        (spec.argv[0].clone(), spec.argv[1..].to_vec())
    };
    let shown = program.to_string_lossy().into_owned();

    let (guard_r, guard_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("cannot create a pipe")?;
    // The guard tells us, one byte on this pipe, when it had to act.
    let (acted_r, acted_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
            .context("cannot create a pipe")?;
    let initial = deadline(keeper.safe_until());
    // SAFETY: the forked guard runs only raw syscalls (see guard_main), so
    // forking from a process with other threads is sound.
    if unsafe { libc::fork() } == 0 {
        // SAFETY: we are the freshly forked guard.
        unsafe {
            guard_main(
                guard_r.as_raw_fd(),
                acted_w.as_raw_fd(),
                grace_ns,
                initial,
                spec.stop_signal as i32,
            )
        };
    }
    drop(guard_r);
    drop(acted_w);
    let mut guard = GuardPipe(Some(guard_w));
    let parent = std::process::id() as i32;
    let tty_fg = foreground_tty();
    let guard_fd = guard.0.as_ref().map_or(-1, |fd| fd.as_raw_fd());
    // On a terminal the child's group is the foreground one, so Ctrl-C and
    // Ctrl-\ reach it and not dlock: a relay in that group tells us.
    let mut relay = if tty_fg { Relay::start() } else { None };
    let (relay_pid_fd, relay_go_fd) = relay.as_ref().map_or((-1, -1), Relay::child_fds);

    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&args).process_group(0).kill_on_drop(false);
    for k in &spec.env_remove {
        cmd.env_remove(k);
    }
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    // SAFETY: the closure runs in the forked child before exec and makes only
    // async-signal-safe calls (write, read, prctl, getppid, sigprocmask,
    // tcsetpgrp); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
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
            // The relay is in the group before the group can get Ctrl-C.
            meet_relay(relay_pid_fd, relay_go_fd);
            if tty_fg {
                take_terminal();
            }
            Ok(())
        });
    }
    let spawned = cmd.spawn();
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

    let mut relayed = RelayedSignals(relay.as_mut().and_then(|r| r.rx.take()));

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
            guard.send(deadline(at));
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
        restore_terminal();
    }
    // The child may have ended (killed by the guard, say) before the loss
    // was seen: if dlock was frozen past the lease, the run still lost it.
    if lost.is_none() {
        lost = lost_rx.borrow().clone();
    }
    // The guard stopped the group at a deadline (dlock was frozen), or the
    // deadline the guard knew has as good as passed.
    let mut byte = [0u8; 1];
    // SAFETY: a non-blocking read into a local buffer from a pipe we own.
    let guard_acted = unsafe { libc::read(acted_r.as_raw_fd(), byte.as_mut_ptr().cast(), 1) } == 1;
    let grace = grace(spec.kill_after, ttl) + Duration::from_millis(50);
    if lost.is_none()
        && (guard_acted || guard_deadline.is_some_and(|u| Instant::now() + grace >= u))
    {
        let msg = "the lease could not be renewed in time while dlock was not running (frozen or suspended?)";
        say("WARN", msg);
        lost = Some(Loss {
            message: msg.to_string(),
            expires: None,
        });
    }
    reap_group(
        pgid,
        spec.stop_signal,
        spec.kill_after.min(Duration::from_secs(5)),
    )
    .await;
    guard.disarm();
    let exit = match (status.code(), status.signal(), stopped_by) {
        // dlock SIGKILLed a child that did not stop when asked.
        (None, Some(libc::SIGKILL), Some(by)) if killed => ChildExit::KilledAfter(by),
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

/// Where signals come from: the process's own ([`Signals`]), or a test's.
pub trait SignalSource {
    fn recv(&mut self) -> impl std::future::Future<Output = Signal>;
}

impl SignalSource for Signals {
    fn recv(&mut self) -> impl std::future::Future<Output = Signal> {
        Signals::recv(self)
    }
}

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
    /// The first terminating signal that reached the group from outside.
    pub stopped_by: Option<Signal>,
    /// Whether dlock SIGKILLed the group after a stop signal (a second
    /// SIGINT, or `--kill-after` passed).
    pub killed: bool,
}

/// Watch a started child until it exits. Signals from `signals` are
/// forwarded to its group; those from `relayed` already reached it (the
/// terminal's Ctrl-C). After a forwarded terminating one (INT, TERM, HUP,
/// QUIT) the group is SIGKILLed `--kill-after` later if the child still
/// runs; a second SIGINT, from either, is SIGKILL at once. When the keeper reports a loss, the
/// stop signal goes to the group and SIGKILL after `--kill-after` or at the
/// lease's expiry, whichever is first (`--on-lost ignore`: only warn).
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
    let mut stopped_by: Option<Signal> = None;
    let mut killed = false;
    let mut exited = std::pin::pin!(exited);
    let status = loop {
        let kill_sleep = async {
            match kill_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let (sig, delivered) = tokio::select! {
            st = &mut exited => break st,
            sig = signals.recv() => (sig, false),
            sig = relayed.recv() => (sig, true),
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
        let mut send = sig;
        if sig == Signal::SIGINT {
            interrupts += 1;
            if interrupts >= 2 {
                send = Signal::SIGKILL;
            }
        }
        if TERMINATING.contains(&sig) {
            stopped_by.get_or_insert(sig);
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

/// A tiny process in the child's process group that tells dlock which
/// terminal signals (Ctrl-C, Ctrl-\\, hang-up) the group got: on a
/// terminal the child's group is the foreground one, so these never reach
/// dlock itself. Signals that dlock sent the group are not relayed.
///
/// It is forked before the child. The child, before it takes the terminal
/// and runs the command, sends it its pid and waits until it has joined the
/// group, so no Ctrl-C can reach the group before the relay is in it.
struct Relay {
    pid: libc::pid_t,
    rx: Option<tokio::net::unix::pipe::Receiver>,
    /// Its end of the relay's lifeline: dropping it ends the relay.
    _life: OwnedFd,
    /// The child's ends of the handshake (pid out, go-ahead in), closed in
    /// dlock once the child is spawned.
    handshake: Option<(OwnedFd, OwnedFd)>,
}

impl Relay {
    fn start() -> Option<Relay> {
        let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
        let (life_r, life_w) = nix::unistd::pipe2(cloexec).ok()?;
        let (out_r, out_w) = nix::unistd::pipe2(cloexec).ok()?;
        let (pid_r, pid_w) = nix::unistd::pipe2(cloexec).ok()?;
        let (go_r, go_w) = nix::unistd::pipe2(cloexec).ok()?;
        let parent = std::process::id() as i32;
        // A signal ignored when dlock started (`nohup`) is not dlock's to act
        // on: the child ignores it too, and it is not relayed.
        let mut relayed = [0 as libc::c_int; 3];
        for (slot, sig) in relayed
            .iter_mut()
            .zip([Signal::SIGINT, Signal::SIGQUIT, Signal::SIGHUP])
        {
            if !ignored(sig) {
                *slot = sig as libc::c_int;
            }
        }
        // SAFETY: the forked relay runs only raw syscalls (see relay_main).
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: we are the freshly forked relay.
            unsafe {
                relay_main(
                    parent,
                    [
                        life_r.as_raw_fd(),
                        out_w.as_raw_fd(),
                        pid_r.as_raw_fd(),
                        go_w.as_raw_fd(),
                    ],
                    relayed,
                )
            };
        }
        if pid < 0 {
            return None;
        }
        drop((life_r, out_w, pid_r, go_w));
        let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(out_r).ok();
        Some(Relay {
            pid,
            rx,
            _life: life_w,
            handshake: Some((pid_w, go_r)),
        })
    }

    /// The child's ends of the handshake, for its `pre_exec`.
    fn child_fds(&self) -> (i32, i32) {
        self.handshake
            .as_ref()
            .map_or((-1, -1), |(w, r)| (w.as_raw_fd(), r.as_raw_fd()))
    }

    /// The child is spawned (or failed to be): dlock's copies of its ends
    /// go, so the relay sees end-of-file if the child never wrote.
    fn spawned(&mut self) {
        self.handshake = None;
    }

    /// Stop the relay and reap it, so the child's group is empty when the
    /// child has left nothing behind.
    fn end(self) {
        // SAFETY: signalling and reaping our own child process.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// In the child, before exec: tell the relay our pid and wait until it
/// has joined our group (or is gone). Async-signal-safe.
fn meet_relay(pid_fd: i32, go_fd: i32) {
    if pid_fd < 0 {
        return;
    }
    // SAFETY: write and read on descriptors inherited from dlock, from and
    // into local buffers.
    unsafe {
        let me = libc::getpid().to_ne_bytes();
        libc::write(pid_fd, me.as_ptr().cast(), me.len());
        let mut b = [0u8; 1];
        while libc::read(go_fd, b.as_mut_ptr().cast(), 1) < 0
            && *libc::__errno_location() == libc::EINTR
        {}
    }
}

/// The signals a [`Relay`] reports; none when there is no relay.
struct RelayedSignals(Option<tokio::net::unix::pipe::Receiver>);

impl SignalSource for RelayedSignals {
    async fn recv(&mut self) -> Signal {
        use tokio::io::AsyncReadExt;
        loop {
            let Some(rx) = self.0.as_mut() else {
                return std::future::pending().await;
            };
            let mut b = [0u8; 4];
            match rx.read_exact(&mut b).await {
                Ok(_) => {
                    if let Ok(s) = Signal::try_from(i32::from_ne_bytes(b)) {
                        return s;
                    }
                }
                Err(_) => self.0 = None,
            }
        }
    }
}

/// The relay's whole life: raw syscalls only, no allocation. `fds` are
/// its lifeline from dlock, its report pipe to dlock, and the handshake
/// with the child (its pid in, the go-ahead out).
///
/// # Safety
/// Must only be called in a freshly forked child; it never returns.
unsafe fn relay_main(parent: i32, fds: [i32; 4], relayed: [i32; 3]) -> ! {
    // SAFETY: only async-signal-safe syscalls on values we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGHUP,
            libc::SIGTERM,
            libc::SIGUSR1,
            libc::SIGUSR2,
        ] {
            libc::sigaddset(&mut set, s);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        for s in [libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU, libc::SIGPIPE] {
            libc::signal(s, libc::SIG_IGN);
        }
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        if libc::getppid() != parent {
            libc::_exit(0);
        }
        // Hold no descriptor but these four, moved to 0-3 (by way of high
        // numbers, in case one of them is 0-3 already: stdio was closed).
        let mut high = [0i32; 4];
        for (h, fd) in high.iter_mut().zip(fds) {
            *h = libc::fcntl(fd, libc::F_DUPFD, 100);
        }
        for (i, h) in high.iter().enumerate() {
            libc::dup2(*h, i as i32);
        }
        if libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32) != 0 {
            for fd in 4..4096 {
                libc::close(fd);
            }
        }
        let (life, out, pid_in, go_out) = (0, 1, 2, 3);
        // The child's pid, then join its group and let it go on.
        let mut buf = [0u8; 4];
        let n = loop {
            let n = libc::read(pid_in, buf.as_mut_ptr().cast(), 4);
            if n >= 0 || *libc::__errno_location() != libc::EINTR {
                break n;
            }
        };
        if n != 4 || libc::setpgid(0, i32::from_ne_bytes(buf)) != 0 {
            libc::_exit(0);
        }
        libc::write(go_out, b"!".as_ptr().cast(), 1);
        libc::close(go_out);
        libc::close(pid_in);
        let sfd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC);
        if sfd < 0 {
            libc::_exit(0);
        }
        loop {
            let mut pfd = [
                libc::pollfd {
                    fd: life,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: sfd,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            if libc::poll(pfd.as_mut_ptr(), 2, -1) <= 0 {
                continue;
            }
            if pfd[0].revents != 0 {
                libc::_exit(0); // dlock let go of the lifeline, or died
            }
            let mut info: libc::signalfd_siginfo = std::mem::zeroed();
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            if libc::read(sfd, (&mut info as *mut libc::signalfd_siginfo).cast(), size)
                != size as isize
            {
                continue;
            }
            let signo = info.ssi_signo as i32;
            let from_dlock = info.ssi_code == libc::SI_USER && info.ssi_pid as i32 == parent;
            if !from_dlock && signo != 0 && relayed.contains(&signo) {
                let b = signo.to_ne_bytes();
                libc::write(out, b.as_ptr().cast(), b.len());
            }
        }
    }
}

/// Processes the child left in its group would run on without the lock:
/// the stop signal to them, and SIGKILL to whatever is left after `grace`.
async fn reap_group(pgid: Pid, stop: Signal, grace: Duration) {
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
fn foreground_tty() -> bool {
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
fn restore_terminal() {
    // SAFETY: as in take_terminal, for our own process group.
    unsafe {
        let prev = libc::signal(libc::SIGTTOU, libc::SIG_IGN);
        libc::tcsetpgrp(0, libc::getpgrp());
        libc::signal(libc::SIGTTOU, prev);
    }
}

/// The guard's whole life: raw syscalls only, no allocation.
///
/// Protocol on the pipe, 8-byte native-endian i64s: first the child's
/// process group (written by the child itself, before exec); then each new
/// lease deadline (CLOCK_BOOTTIME ns, or -1 for none); 0 disarms. EOF before
/// a disarm means dlock died.
///
/// # Safety
/// Must only be called in a freshly forked child; it never returns.
unsafe fn guard_main(
    read_fd: i32,
    acted_fd: i32,
    grace_ns: i64,
    mut deadline: i64,
    stop: i32,
) -> ! {
    // SAFETY: only async-signal-safe syscalls on values we own.
    unsafe {
        // Its own session: signals for the job's terminal do not reach it.
        libc::setsid();
        for s in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGPIPE,
        ] {
            libc::signal(s, libc::SIG_IGN);
        }
        // Hold no descriptor but the two pipes, moved to 0 and 1: a guard
        // must never keep a CI log pipe or a socket open. (Both pipes were
        // made after stdio, so neither is 0 or 1 already.)
        libc::dup2(read_fd, 0);
        libc::dup2(acted_fd, 1);
        let (read_fd, acted_fd) = (0, 1);
        if libc::syscall(libc::SYS_close_range, 2u32, u32::MAX, 0u32) != 0 {
            for fd in 2..4096 {
                libc::close(fd);
            }
        }
        let mut pgid: i32 = 0;
        let mut term_sent = false;
        loop {
            let now = boottime_ns();
            let next = if deadline < 0 || pgid == 0 {
                None
            } else if !term_sent {
                Some((deadline - grace_ns, stop))
            } else {
                Some((deadline, libc::SIGKILL))
            };
            let timeout_ms = match next {
                None => -1,
                Some((at, sig)) if at <= now => {
                    libc::kill(-pgid, sig);
                    libc::write(acted_fd, b"!".as_ptr().cast(), 1);
                    if sig == libc::SIGKILL {
                        libc::_exit(0);
                    }
                    term_sent = true;
                    continue;
                }
                Some((at, _)) => ((at - now) / 1_000_000 + 1).min(i32::MAX as i64) as i32,
            };
            let mut pfd = libc::pollfd {
                fd: read_fd,
                events: libc::POLLIN,
                revents: 0,
            };
            if libc::poll(&mut pfd, 1, timeout_ms) <= 0 {
                continue;
            }
            let mut buf = [0u8; 8];
            let n = libc::read(read_fd, buf.as_mut_ptr().cast(), 8);
            if n == 8 {
                let v = i64::from_ne_bytes(buf);
                if v == 0 {
                    libc::_exit(0); // disarmed: the child has ended normally
                } else if pgid == 0 {
                    pgid = v as i32;
                } else {
                    deadline = v;
                }
            } else if n == 0 || (n < 0 && *libc::__errno_location() != libc::EINTR) {
                // dlock is gone: nothing holds the lock for this group.
                if pgid > 0 {
                    libc::kill(-pgid, libc::SIGKILL);
                }
                libc::_exit(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The supervision loop with a test child and test signals, under
    //! paused time: what it sends the child, and when.
    use super::*;
    use std::cell::RefCell;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;
    use tokio::sync::{mpsc, oneshot};
    use tokio::time::Instant as Clock;

    struct TestSignals(mpsc::UnboundedReceiver<Signal>);

    impl SignalSource for TestSignals {
        async fn recv(&mut self) -> Signal {
            match self.0.recv().await {
                Some(s) => s,
                None => std::future::pending().await,
            }
        }
    }

    /// A child that records the signals its group gets, with when, and
    /// dies of the first one in `fatal`.
    struct Child {
        got: RefCell<Vec<(Signal, Duration)>>,
        fatal: Vec<Signal>,
        die: RefCell<Option<oneshot::Sender<ExitStatus>>>,
        t0: Clock,
    }

    impl Child {
        fn new(fatal: &[Signal]) -> (Child, oneshot::Receiver<ExitStatus>) {
            let (tx, rx) = oneshot::channel();
            let c = Child {
                got: RefCell::new(Vec::new()),
                fatal: fatal.to_vec(),
                die: RefCell::new(Some(tx)),
                t0: Clock::now(),
            };
            (c, rx)
        }

        fn kill(&self, s: Signal) {
            self.got.borrow_mut().push((s, self.t0.elapsed()));
            if self.fatal.contains(&s)
                && let Some(tx) = self.die.borrow_mut().take()
            {
                let _ = tx.send(ExitStatus::from_raw(s as i32));
            }
        }

        fn signals(&self) -> Vec<Signal> {
            self.got.borrow().iter().map(|(s, _)| *s).collect()
        }
    }

    struct Setup {
        sig_tx: mpsc::UnboundedSender<Signal>,
        signals: TestSignals,
        lost_tx: watch::Sender<Option<Loss>>,
        lost_rx: watch::Receiver<Option<Loss>>,
        safe_tx: watch::Sender<Option<Instant>>,
        safe_rx: watch::Receiver<Option<Instant>>,
    }

    fn setup() -> Setup {
        let (sig_tx, sig_rx) = mpsc::unbounded_channel();
        let (lost_tx, lost_rx) = watch::channel(None);
        let (safe_tx, safe_rx) = watch::channel(None);
        Setup {
            sig_tx,
            signals: TestSignals(sig_rx),
            lost_tx,
            lost_rx,
            safe_tx,
            safe_rx,
        }
    }

    fn policy(on_lost: OnLost) -> Policy<'static> {
        Policy {
            on_lost,
            kill_after: Duration::from_secs(10),
            stop_signal: Signal::SIGTERM,
            shown: "job",
        }
    }

    /// No terminal: nothing is relayed.
    struct NoRelay;

    impl SignalSource for NoRelay {
        async fn recv(&mut self) -> Signal {
            std::future::pending().await
        }
    }

    /// The loop over the test child, recording the guard's deadlines.
    async fn watch(
        s: &mut Setup,
        child: &Child,
        exited: oneshot::Receiver<ExitStatus>,
        on_lost: OnLost,
        seen: &RefCell<Vec<Option<Instant>>>,
    ) -> (std::io::Result<ExitStatus>, Option<Loss>) {
        let w = watch_with(s, child, exited, policy(on_lost), &mut NoRelay, seen).await;
        (w.status, w.lost)
    }

    async fn watch_with(
        s: &mut Setup,
        child: &Child,
        exited: oneshot::Receiver<ExitStatus>,
        policy: Policy<'static>,
        relayed: &mut impl SignalSource,
        seen: &RefCell<Vec<Option<Instant>>>,
    ) -> Watched {
        let exited = async { exited.await.map_err(|_| std::io::Error::other("gone")) };
        watch_child(
            exited,
            |sig| child.kill(sig),
            &mut s.signals,
            relayed,
            &mut s.lost_rx,
            s.safe_rx.clone(),
            policy,
            |at| seen.borrow_mut().push(at),
        )
        .await
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_loss_is_sigterm_now_and_sigkill_after_kill_after() {
        let mut s = setup();
        let (child, exited) = Child::new(&[Signal::SIGKILL]);
        let seen = RefCell::new(Vec::new());
        s.lost_tx
            .send(Some(Loss {
                message: "broken".into(),
                expires: None,
            }))
            .unwrap();
        let (st, lost) = watch(&mut s, &child, exited, OnLost::Kill, &seen).await;
        assert_eq!(st.unwrap().signal(), Some(libc::SIGKILL));
        assert!(lost.is_some());
        let got = child.got.borrow();
        assert_eq!(got[0].0, Signal::SIGTERM);
        assert!(got[0].1 < Duration::from_millis(10), "SIGTERM at once");
        assert_eq!(got[1].0, Signal::SIGKILL);
        let at = got[1].1;
        assert!(
            at >= Duration::from_millis(9990) && at <= Duration::from_millis(10_010),
            "SIGKILL after --kill-after (10s), at {at:?}"
        );
        drop(s.sig_tx);
        drop(s.safe_tx);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn sigkill_lands_at_the_lease_expiry_when_that_is_sooner() {
        let mut s = setup();
        let (child, exited) = Child::new(&[Signal::SIGKILL]);
        let seen = RefCell::new(Vec::new());
        s.lost_tx
            .send(Some(Loss {
                message: "could not renew".into(),
                expires: Some(Instant::now() + Duration::from_secs(2)),
            }))
            .unwrap();
        let (_, lost) = watch(&mut s, &child, exited, OnLost::Kill, &seen).await;
        assert!(lost.is_some());
        let got = child.got.borrow();
        assert_eq!(child.signals(), vec![Signal::SIGTERM, Signal::SIGKILL]);
        assert!(
            got[1].1 <= Duration::from_millis(2_010),
            "SIGKILL by the expiry, at {:?}",
            got[1].1
        );
        drop(s.sig_tx);
        drop(s.safe_tx);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn signals_are_forwarded_and_a_second_sigint_is_sigkill() {
        let mut s = setup();
        let (child, exited) = Child::new(&[Signal::SIGKILL]);
        let seen = RefCell::new(Vec::new());
        for sig in [
            Signal::SIGHUP,
            Signal::SIGUSR1,
            Signal::SIGINT,
            Signal::SIGINT,
        ] {
            s.sig_tx.send(sig).unwrap();
        }
        let (st, lost) = watch(&mut s, &child, exited, OnLost::Kill, &seen).await;
        assert!(lost.is_none());
        assert_eq!(st.unwrap().signal(), Some(libc::SIGKILL));
        assert_eq!(
            child.signals(),
            vec![
                Signal::SIGHUP,
                Signal::SIGUSR1,
                Signal::SIGINT,
                Signal::SIGKILL
            ]
        );
        drop(s.lost_tx);
        drop(s.safe_tx);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn on_lost_ignore_only_warns_and_deadlines_reach_the_guard() {
        let mut s = setup();
        let (child, exited) = Child::new(&[Signal::SIGTERM]);
        let seen = RefCell::new(Vec::new());
        let until = Instant::now() + Duration::from_secs(30);
        s.safe_tx.send(Some(until)).unwrap();
        s.lost_tx
            .send(Some(Loss {
                message: "broken".into(),
                expires: None,
            }))
            .unwrap();
        // The test ends the child itself, a while later.
        let sig_tx = s.sig_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let _ = sig_tx.send(Signal::SIGTERM);
        });
        let (st, lost) = watch(&mut s, &child, exited, OnLost::Ignore, &seen).await;
        assert!(lost.is_some(), "the loss is reported");
        assert_eq!(st.unwrap().signal(), Some(libc::SIGTERM));
        let got = child.got.borrow();
        assert_eq!(
            child.signals(),
            vec![Signal::SIGTERM],
            "only the forwarded one"
        );
        assert!(got[0].1 >= Duration::from_secs(60));
        assert_eq!(*seen.borrow(), vec![Some(until)]);
        drop(s.lost_tx);
    }
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_passed_on_stop_is_sigkill_after_kill_after() {
        for sig in TERMINATING {
            let mut s = setup();
            // The child ignores everything but SIGKILL.
            let (child, exited) = Child::new(&[Signal::SIGKILL]);
            let seen = RefCell::new(Vec::new());
            s.sig_tx.send(sig).unwrap();
            let w = watch_with(
                &mut s,
                &child,
                exited,
                policy(OnLost::Kill),
                &mut NoRelay,
                &seen,
            )
            .await;
            assert_eq!(w.status.unwrap().signal(), Some(libc::SIGKILL));
            assert_eq!(w.stopped_by, Some(sig));
            assert!(w.killed, "{sig}: dlock's own SIGKILL");
            let got = child.got.borrow();
            assert_eq!(child.signals(), vec![sig, Signal::SIGKILL]);
            let at = got[1].1;
            assert!(
                at >= Duration::from_millis(9990) && at <= Duration::from_millis(10_010),
                "{sig}: SIGKILL after --kill-after (10s), at {at:?}"
            );
            drop(s.lost_tx);
            drop(s.safe_tx);
        }
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn user_signals_do_not_escalate() {
        let mut s = setup();
        let (child, exited) = Child::new(&[Signal::SIGTERM]);
        let seen = RefCell::new(Vec::new());
        s.sig_tx.send(Signal::SIGUSR1).unwrap();
        let sig_tx = s.sig_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let _ = sig_tx.send(Signal::SIGTERM);
        });
        let w = watch_with(
            &mut s,
            &child,
            exited,
            policy(OnLost::Kill),
            &mut NoRelay,
            &seen,
        )
        .await;
        assert_eq!(child.signals(), vec![Signal::SIGUSR1, Signal::SIGTERM]);
        assert!(!w.killed);
        assert_eq!(w.stopped_by, Some(Signal::SIGTERM));
        drop(s.lost_tx);
        drop(s.safe_tx);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn terminal_signals_are_not_sent_again_and_the_second_ctrl_c_kills() {
        let mut s = setup();
        let (child, exited) = Child::new(&[Signal::SIGKILL]);
        let seen = RefCell::new(Vec::new());
        let (tty_tx, tty_rx) = mpsc::unbounded_channel();
        let mut tty = TestSignals(tty_rx);
        tty_tx.send(Signal::SIGINT).unwrap();
        let again = tty_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let _ = again.send(Signal::SIGINT);
        });
        let w = watch_with(
            &mut s,
            &child,
            exited,
            policy(OnLost::Kill),
            &mut tty,
            &seen,
        )
        .await;
        assert_eq!(
            child.signals(),
            vec![Signal::SIGKILL],
            "the first Ctrl-C is not sent twice"
        );
        let at = child.got.borrow()[0].1;
        assert!(
            at >= Duration::from_secs(2) && at < Duration::from_secs(3),
            "{at:?}"
        );
        assert_eq!(w.stopped_by, Some(Signal::SIGINT));
        assert!(w.killed);
        drop(s.lost_tx);
        drop(s.safe_tx);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn one_ctrl_c_starts_no_timer() {
        let mut s = setup();
        let (child, exited) = Child::new(&[Signal::SIGTERM]);
        let seen = RefCell::new(Vec::new());
        let (tty_tx, tty_rx) = mpsc::unbounded_channel();
        let mut tty = TestSignals(tty_rx);
        tty_tx.send(Signal::SIGINT).unwrap();
        let sig_tx = s.sig_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let _ = sig_tx.send(Signal::SIGTERM);
        });
        let w = watch_with(
            &mut s,
            &child,
            exited,
            policy(OnLost::Kill),
            &mut tty,
            &seen,
        )
        .await;
        assert_eq!(
            child.signals(),
            vec![Signal::SIGTERM],
            "no SIGKILL after one Ctrl-C"
        );
        assert!(!w.killed);
        assert_eq!(w.stopped_by, Some(Signal::SIGINT));
        drop(s.lost_tx);
        drop(s.safe_tx);
        drop(tty_tx);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_loss_sends_the_stop_signal() {
        let mut s = setup();
        let (child, exited) = Child::new(&[Signal::SIGQUIT]);
        let seen = RefCell::new(Vec::new());
        s.lost_tx
            .send(Some(Loss {
                message: "broken".into(),
                expires: None,
            }))
            .unwrap();
        let p = Policy {
            stop_signal: Signal::SIGQUIT,
            ..policy(OnLost::Kill)
        };
        let w = watch_with(&mut s, &child, exited, p, &mut NoRelay, &seen).await;
        assert_eq!(child.signals(), vec![Signal::SIGQUIT]);
        assert!(w.lost.is_some());
        assert_eq!(w.stopped_by, None, "dlock's own stop is no request to stop");
        drop(s.sig_tx);
        drop(s.safe_tx);
    }

    #[test]
    fn signal_names() {
        assert_eq!(parse_signal("TERM"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("sigquit"), Ok(Signal::SIGQUIT));
        assert_eq!(parse_signal("2"), Ok(Signal::SIGINT));
        assert!(parse_signal("STOP").is_err());
        assert!(parse_signal("NOPE").is_err());
        assert_eq!(signal_name(Signal::SIGHUP), "HUP");
    }
}
