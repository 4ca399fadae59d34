//! The guard as a `fork` of dlock, through libc: for architectures the raw
//! system calls of `vm` do not cover, and should `clone` be refused.
//! Forking copies dlock's page tables (about 0.1 ms for its size) and each
//! page either side writes afterwards.

use std::io;

use super::life::{self, Os, Read, Start};

/// Fork the guard; its pid.
pub(super) fn spawn(start: Start) -> io::Result<i32> {
    // SAFETY: the forked guard makes only async-signal-safe calls (see
    // `Libc`) and never returns, so forking a process with other threads is
    // sound.
    match unsafe { libc::fork() } {
        // SAFETY: we are the freshly forked guard.
        0 => unsafe { life::run::<Libc>(start) },
        -1 => Err(io::Error::last_os_error()),
        pid => Ok(pid),
    }
}

/// libc's wrappers: a forked guard has its own copy of dlock's memory, so
/// `errno` is its own too.
pub(super) struct Libc;

impl Os for Libc {
    fn now() -> i64 {
        super::boottime_ns()
    }

    fn setsid() {
        // SAFETY: no arguments.
        unsafe { libc::setsid() };
    }

    fn dup_high(fd: i32) -> i32 {
        // SAFETY: duplicating a descriptor the guard holds.
        let n = unsafe { libc::fcntl(fd, libc::F_DUPFD, 3) };
        if n < 0 { fd } else { n }
    }

    unsafe fn dup_to(fd: i32, to: i32) {
        if fd != to {
            // SAFETY: the caller's (only in the guard).
            unsafe { libc::dup2(fd, to) };
        }
    }

    unsafe fn close_from(from: i32) {
        // SAFETY: the caller's (only in the guard); close_range takes no
        // pointer.
        unsafe {
            if libc::syscall(libc::SYS_close_range, from as u32, u32::MAX, 0u32) != 0 {
                for fd in from..4096 {
                    libc::close(fd);
                }
            }
        }
    }

    fn kill(pid: i32, sig: i32) {
        // SAFETY: no pointer; the guard signals the group it was told of.
        unsafe { libc::kill(pid, sig) };
    }

    fn write_byte(fd: i32) {
        // SAFETY: one byte from a static.
        unsafe { libc::write(fd, b"!".as_ptr().cast(), 1) };
    }

    #[allow(clippy::unnecessary_cast)] // time_t is not i64 on every target
    fn wait(fd: i32, timeout_ns: Option<i64>) -> bool {
        let ts = timeout_ns.map(|ns| libc::timespec {
            tv_sec: (ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (ns % 1_000_000_000) as _,
        });
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let tp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const _);
        // SAFETY: one pollfd and an optional timespec, both local.
        unsafe { libc::ppoll(&mut pfd, 1, tp, std::ptr::null()) > 0 }
    }

    fn read_i64(fd: i32) -> Read {
        let mut buf = [0u8; 8];
        // SAFETY: reading at most 8 bytes into a local buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), 8) };
        match n {
            8 => Read::Value(i64::from_ne_bytes(buf)),
            0 => Read::Gone,
            // SAFETY: errno is this process's own (a fork).
            n if n < 0 && unsafe { *libc::__errno_location() } != libc::EINTR => Read::Gone,
            _ => Read::Again,
        }
    }

    fn exit() -> ! {
        // SAFETY: ends the forked guard alone, without running dlock's
        // exit handlers.
        unsafe { libc::_exit(0) }
    }
}
