//! The guard: a tiny process, forked from dlock before the child is
//! spawned, that SIGKILLs the child's group if dlock dies (even by SIGKILL)
//! and stops it at the lease's deadline if dlock is frozen (SIGSTOP, a VM
//! pause). It holds the read end of a pipe whose write end only dlock has;
//! dlock writes each new lease deadline to it. It runs on
//! `CLOCK_BOOTTIME`, so time spent suspended counts, as it does for the
//! server's TTL.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::Signal;

use super::signals::FORWARDED;

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

impl Guard {
    /// Fork the guard, enforcing `deadline` from the start (`None`: no
    /// deadline, `--on-lost ignore`): `stop` at the deadline minus `grace`,
    /// SIGKILL at the deadline.
    pub(super) fn start(deadline: Option<Instant>, grace: Duration, stop: Signal) -> Result<Guard> {
        let (guard_r, guard_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("cannot create a pipe")?;
        let (acted_r, acted_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .context("cannot create a pipe")?;
        let initial = boottime_of(deadline);
        let grace_ns = grace.as_nanos() as i64;
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
                    stop as i32,
                )
            };
        }
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
        for s in FORWARDED {
            libc::signal(s as libc::c_int, libc::SIG_IGN);
        }
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
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
