//! The guard's whole life: one loop, whichever way the guard was started
//! (`clone(CLONE_VM)` with raw system calls, or `fork` with libc's).
//!
//! Protocol on the pipe, 8-byte native-endian i64s: first the child's
//! process group (written by the child itself, before exec); then each new
//! lease deadline (`CLOCK_BOOTTIME` ns, or -1 for none); 0 disarms. EOF
//! before a disarm means dlock died.

/// What the guard starts with.
#[derive(Clone, Copy)]
#[repr(C)]
pub(super) struct Start {
    /// The pipe's read end: the group, then deadlines.
    pub read_fd: i32,
    /// Where the guard writes a byte when it had to act.
    pub acted_fd: i32,
    /// `stop` goes this long before the deadline, SIGKILL at it.
    pub grace_ns: i64,
    /// The first deadline (-1: none).
    pub deadline: i64,
    /// The stop signal (`--stop-signal`).
    pub stop: i32,
}

/// One read from the pipe.
pub(super) enum Read {
    Value(i64),
    /// Interrupted, or nothing whole to read yet: try again.
    Again,
    /// End of file or a broken pipe: dlock is gone.
    Gone,
}

/// The system calls the guard makes. Implementations allocate nothing and
/// take no lock; the raw one also never touches thread-local storage (a
/// `CLONE_VM` guard runs on the thread pointer of the dlock thread that
/// started it, so libc's `errno` would be that thread's).
pub(super) trait Os {
    /// `CLOCK_BOOTTIME` in nanoseconds.
    fn now() -> i64;
    fn setsid();
    /// A copy of `fd` numbered 3 or above; `fd` itself if none can be made.
    fn dup_high(fd: i32) -> i32;
    /// Make descriptor `to` a copy of `fd`.
    ///
    /// # Safety
    /// Only in the guard: it replaces whatever `to` was.
    unsafe fn dup_to(fd: i32, to: i32);
    /// Close every descriptor from `from` up.
    ///
    /// # Safety
    /// Only in the guard, whose descriptor table is its own.
    unsafe fn close_from(from: i32);
    fn kill(pid: i32, sig: i32);
    /// Write one byte, `!`.
    fn write_byte(fd: i32);
    /// Wait until `fd` is readable (true) or `timeout_ns` (`None`: no
    /// limit) has passed or a signal interrupted (false).
    fn wait(fd: i32, timeout_ns: Option<i64>) -> bool;
    fn read_i64(fd: i32) -> Read;
    /// End the guard (its own process, never dlock).
    fn exit() -> !;
}

/// The guard: holds no descriptor but the two pipes (a guard must never
/// keep a CI log's pipe or a socket open), sends the stop signal at the
/// deadline minus the grace and SIGKILL at the deadline, SIGKILLs the group
/// when dlock is gone, and exits when disarmed. It takes no signal: it
/// starts with every signal blocked, and never unblocks them.
///
/// # Safety
/// Only in a freshly started guard process; it never returns.
pub(super) unsafe fn run<O: Os>(start: Start) -> ! {
    // Its own session: signals for the job's terminal do not reach it.
    O::setsid();
    // Moved up first, so that neither lands on the other's new number even
    // if dlock started with 0 or 1 closed.
    let read_fd = O::dup_high(start.read_fd);
    let acted_fd = O::dup_high(start.acted_fd);
    // SAFETY: the guard's descriptor table is its own.
    unsafe {
        O::dup_to(read_fd, 0);
        O::dup_to(acted_fd, 1);
        O::close_from(2);
    }
    let (read_fd, acted_fd) = (0, 1);
    let Start {
        grace_ns,
        mut deadline,
        stop,
        ..
    } = start;
    let mut pgid: i32 = 0;
    let mut stop_sent = false;
    loop {
        let now = O::now();
        let next = if deadline < 0 || pgid == 0 {
            None
        } else if !stop_sent {
            Some((deadline.saturating_sub(grace_ns), stop))
        } else {
            Some((deadline, libc::SIGKILL))
        };
        let timeout = match next {
            None => None,
            Some((at, sig)) if at <= now => {
                O::kill(pgid.wrapping_neg(), sig);
                O::write_byte(acted_fd);
                if sig == libc::SIGKILL {
                    O::exit();
                }
                stop_sent = true;
                continue;
            }
            Some((at, _)) => Some(at.saturating_sub(now)),
        };
        if !O::wait(read_fd, timeout) {
            continue;
        }
        match O::read_i64(read_fd) {
            Read::Value(0) => O::exit(), // disarmed: the child has ended normally
            Read::Value(v) if pgid == 0 => pgid = v as i32,
            Read::Value(v) => deadline = v,
            Read::Again => {}
            Read::Gone => {
                // dlock is gone: nothing holds the lock for this group.
                if pgid > 0 {
                    O::kill(pgid.wrapping_neg(), libc::SIGKILL);
                }
                O::exit();
            }
        }
    }
}
