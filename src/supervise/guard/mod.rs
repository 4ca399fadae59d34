//! The guard: a tiny process, started by dlock before the child is
//! spawned, that SIGKILLs the child's group if dlock dies (even by SIGKILL)
//! and stops it at the lease's deadline if dlock is frozen (SIGSTOP, a VM
//! pause). It holds the read end of a pipe whose write end only dlock has;
//! dlock writes each new lease deadline to it. It runs on
//! `CLOCK_BOOTTIME`, so time spent suspended counts, as it does for the
//! server's TTL.
//!
//! The files: `life` (the guard's loop and the protocol), `vm` (started
//! with `clone(CLONE_VM)` and raw system calls, on x86_64 and aarch64),
//! `forked` (started with `fork`, elsewhere or should `clone` fail).

mod forked;
mod life;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod vm;

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::Signal;

use life::Start;

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

/// dlock's end of the guard. Dropping it without [`Guard::disarm`] (an
/// error cut the supervision short) makes the guard kill the group, as
/// dlock's death would.
pub(super) struct Guard {
    /// Deadlines out; `None` once disarmed.
    pipe: Option<OwnedFd>,
    /// One byte in when the guard had to act (non-blocking).
    acted: OwnedFd,
}

/// Guards started and not reaped yet, with the stack each runs on (0 for
/// a forked one): reaped, and their stacks unmapped, when the next guard
/// starts (`elect` runs one per term). By then each has been disarmed or
/// has seen its pipe closed, so it has exited or is about to.
static STARTED: Mutex<Vec<(i32, usize)>> = Mutex::new(Vec::new());

impl Guard {
    /// Start the guard, enforcing `deadline` from the start (`None`: no
    /// deadline, `--on-lost ignore`): `stop` at the deadline minus `grace`,
    /// SIGKILL at the deadline.
    pub(super) fn start(deadline: Option<Instant>, grace: Duration, stop: Signal) -> Result<Guard> {
        let (guard_r, guard_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("cannot create a pipe")?;
        let (acted_r, acted_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .context("cannot create a pipe")?;
        let start = Start {
            read_fd: guard_r.as_raw_fd(),
            acted_fd: acted_w.as_raw_fd(),
            grace_ns: grace.as_nanos().min(i64::MAX as u128) as i64,
            deadline: boottime_of(deadline),
            stop: stop as i32,
        };
        let mut started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
        reap(&mut started);
        let (pid, stack) =
            with_signals_blocked(|| spawn(start)).context("cannot start the guard")?;
        started.push((pid, stack));
        // guard_r and acted_w close here: only the guard holds them now.
        Ok(Guard {
            pipe: Some(guard_w),
            acted: acted_r,
        })
    }
    /// The descriptor the child writes its pid to before exec (the
    /// guard's first message: whom to kill).
    pub(super) fn fd(&self) -> i32 {
        self.pipe.as_ref().map_or(-1, |fd| fd.as_raw_fd())
    }

    /// A new lease deadline (`None`: none to enforce).
    pub(super) fn send(&self, deadline: Option<Instant>) {
        self.write(boottime_of(deadline));
    }

    fn write(&self, v: i64) {
        if let Some(fd) = &self.pipe {
            let b = v.to_ne_bytes();
            // SAFETY: writing 8 bytes from a local buffer to a pipe we own;
            // under PIPE_BUF, so the write is atomic.
            unsafe { libc::write(fd.as_raw_fd(), b.as_ptr().cast(), b.len()) };
        }
    }

    /// Whether the guard stopped the group at a deadline (dlock was frozen).
    pub(super) fn acted(&self) -> bool {
        let mut byte = [0u8; 1];
        // SAFETY: a non-blocking read into a local buffer from a pipe we own.
        unsafe { libc::read(self.acted.as_raw_fd(), byte.as_mut_ptr().cast(), 1) == 1 }
    }

    /// The child has ended: the guard exits without acting.
    pub(super) fn disarm(&mut self) {
        self.write(0);
        self.pipe = None;
    }
}

/// A deadline as the guard reads it: `CLOCK_BOOTTIME` ns (never 0, which
/// disarms), or -1 for none.
fn boottime_of(deadline: Option<Instant>) -> i64 {
    deadline.map_or(-1, |at| to_boottime(at).max(1))
}

/// Start the guard process: its pid, and the stack it runs on (0: none of
/// its own).
fn spawn(start: Start) -> std::io::Result<(i32, usize)> {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    if vm::usable() {
        match vm::spawn(start) {
            Ok(started) => return Ok(started),
            // Refused (a seccomp filter, say): a fork does the same.
            Err(e) => tracing::debug!("clone(CLONE_VM) for the guard failed ({e}); forking it"),
        }
    }
    forked::spawn(start).map(|pid| (pid, 0))
}

/// Run `f` with every signal blocked on this thread: the guard inherits
/// the mask and keeps it, so no signal handler of dlock's (tokio's, which
/// write to dlock's own pipes, in memory a `CLONE_VM` guard shares) ever
/// runs in it, not even in the moment before it leaves dlock's session.
fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: sigset_t is plain data, filled by sigfillset; the old mask is
    // restored before returning.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let r = f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        r
    }
}

/// Reap the guards that have exited, and unmap their stacks.
fn reap(started: &mut Vec<(i32, usize)>) {
    started.retain(|&(pid, stack)| {
        // SAFETY: polling our own child, no status wanted.
        let r = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG | libc::__WALL) };
        // ECHILD: reaped already (SIGCHLD ignored): gone as well.
        let gone = r == pid
            || (r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD));
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        if gone && stack != 0 {
            // SAFETY: the guard that ran on it has exited; nothing else
            // uses the mapping.
            unsafe { libc::munmap(stack as *mut libc::c_void, vm::STACK) };
        }
        let _ = stack;
        !gone
    });
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::time::{Duration, Instant};

    use super::life::Start;

    /// A way to start the guard.
    type Spawn = fn(Start) -> std::io::Result<i32>;

    /// A `sleep` in a process group of its own, the guard started on it by
    /// `spawn` with `deadline_in` (a 100 ms grace, SIGTERM) and told the
    /// group; dlock's end of the pipe closed at once (`close_pipe`: dlock
    /// died) or kept. The signal the sleep died of, and when.
    fn guard_on_sleep(
        spawn: Spawn,
        deadline_in: Option<Duration>,
        close_pipe: bool,
    ) -> (i32, Duration) {
        let mut sleep = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let (acted_r, acted_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let t0 = Instant::now();
        let start = Start {
            read_fd: r.as_raw_fd(),
            acted_fd: acted_w.as_raw_fd(),
            grace_ns: 100_000_000,
            deadline: super::boottime_of(deadline_in.map(|d| t0 + d)),
            stop: libc::SIGTERM,
        };
        let pid = super::with_signals_blocked(|| spawn(start)).unwrap();
        drop((r, acted_w, acted_r));
        let me = i64::from(sleep.id()).to_ne_bytes();
        nix::unistd::write(&w, &me).unwrap();
        if close_pipe {
            drop(w);
            let status = sleep.wait().unwrap();
            // SAFETY: reaping the guard, our child.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::__WALL) };
            (status.signal().unwrap(), t0.elapsed())
        } else {
            let status = sleep.wait().unwrap();
            let died = (status.signal().unwrap(), t0.elapsed());
            nix::unistd::write(&w, &0i64.to_ne_bytes()).unwrap();
            // SAFETY: reaping the guard (disarmed), our child.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::__WALL) };
            died
        }
    }

    fn both() -> Vec<(&'static str, Spawn)> {
        let mut v: Vec<(&'static str, Spawn)> = vec![("fork", super::forked::spawn)];
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        v.push(("clone", |s| super::vm::spawn(s).map(|(pid, _)| pid)));
        v
    }

    #[test]
    fn dlock_gone_kills_the_group() {
        for (how, spawn) in both() {
            let (sig, _) = guard_on_sleep(spawn, Some(Duration::from_secs(20)), true);
            assert_eq!(sig, libc::SIGKILL, "{how}");
        }
    }

    #[test]
    fn the_deadline_stops_the_group_before_it() {
        for (how, spawn) in both() {
            let (sig, at) = guard_on_sleep(spawn, Some(Duration::from_millis(400)), false);
            // SIGTERM, not SIGKILL: at the deadline minus the grace.
            assert_eq!(sig, libc::SIGTERM, "{how}");
            assert!(at >= Duration::from_millis(290), "{how}: {at:?}");
        }
    }
}
