//! The guard started with `clone(CLONE_VM)` on a small stack of its own:
//! about 0.01 ms, and no page of dlock copied, where a `fork` copies the
//! page tables of the whole process and then each page either side writes.
//!
//! It is a process of its own (no `CLONE_THREAD`, `CLONE_FILES` or
//! `CLONE_SIGHAND`): its descriptor table, signal dispositions, session and
//! exit are its own, so `setsid` and closing descriptors do not touch
//! dlock's. It shares dlock's memory, which changes nothing when dlock dies
//! (the address space lives on while the guard does); and the thread
//! pointer of the dlock thread that started it, so it must never touch
//! thread-local storage: libc's wrappers set `errno`, which is
//! thread-local, hence raw system call instructions here. The guard touches
//! no memory but its own stack and code; it allocates nothing, takes no
//! lock and never returns.

use std::ffi::{c_int, c_void};
use std::io;

use super::life::{self, Os, Read, Start};

/// The guard's stack: its loop needs well under a page, in a debug build
/// too.
pub(super) const STACK: usize = 64 * 1024;

/// Start the guard; its pid and the stack it runs on (to unmap once the
/// guard is reaped).
pub(super) fn spawn(start: Start) -> io::Result<(i32, usize)> {
    // SAFETY: a fresh anonymous mapping, ours alone until the clone.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let args = stack.cast::<Start>();
    // SAFETY: the mapping is writable, page-aligned and far larger than a
    // `Start`; the guard copies it out first thing, while its stack grows
    // down from the other end.
    unsafe { args.write(start) };
    // SAFETY: `entry` never returns and touches only its own stack, the
    // `Start` at the mapping's bottom and its code; the top of a
    // page-aligned mapping is 16-byte aligned, as both ABIs want.
    let pid = unsafe {
        libc::clone(
            entry,
            stack.cast::<u8>().add(STACK).cast(),
            libc::CLONE_VM | libc::SIGCHLD,
            args.cast(),
        )
    };
    if pid < 0 {
        let e = io::Error::last_os_error();
        // SAFETY: no guard runs on the mapping.
        unsafe { libc::munmap(stack, STACK) };
        return Err(e);
    }
    Ok((pid, stack as usize))
}

/// Whether a `CLONE_VM` guard can be started here, and does not die with
/// a dlock that dumps core.
///
/// Before Linux 5.16 a core dump (SIGSEGV, SIGABRT, even with
/// `ulimit -c 0`) SIGKILLed every process sharing the dumping one's
/// memory, the guard included, before it could kill the group; since, only
/// the dumping thread group dies. Valgrind does not refuse such a clone: it
/// ends the whole program ("Unsupported clone() flags"); it announces
/// itself in `LD_PRELOAD` (its `vgpreload_*.so`). In both cases the guard
/// is forked.
pub(super) fn usable() -> bool {
    if std::env::var_os("LD_PRELOAD")
        .is_some_and(|p| p.as_encoded_bytes().windows(10).any(|w| w == b"vgpreload_"))
    {
        return false;
    }
    // SAFETY: uname fills the struct we own; its fields are NUL-terminated.
    let release = unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return false;
        }
        std::ffi::CStr::from_ptr(u.release.as_ptr())
            .to_bytes()
            .to_vec()
    };
    let mut parts = release.split(|b| !b.is_ascii_digit()).map(|p| {
        std::str::from_utf8(p)
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
    });
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (5, 16),
        _ => false,
    }
}

/// Where the cloned guard starts (libc's `clone` calls it on the new stack).
extern "C" fn entry(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Start` that `spawn` wrote; this is the freshly
    // cloned guard, whose system calls are all raw (`Raw`).
    unsafe { life::run::<Raw>(arg.cast::<Start>().read()) }
}

/// Raw system calls: no libc, no `errno`, no thread-local storage.
struct Raw;

impl Os for Raw {
    fn now() -> i64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let p = &mut ts as *mut libc::timespec as i64;
        // SAFETY: the kernel writes a timespec into `ts`. (The vDSO's
        // clock_gettime is found through libc's data: not here.)
        unsafe {
            sys(
                libc::SYS_clock_gettime,
                [libc::CLOCK_BOOTTIME.into(), p, 0, 0, 0, 0],
            )
        };
        ts.tv_sec
            .wrapping_mul(1_000_000_000)
            .wrapping_add(ts.tv_nsec)
    }

    fn setsid() {
        // SAFETY: no arguments.
        unsafe { sys(libc::SYS_setsid, [0; 6]) };
    }

    fn dup_high(fd: i32) -> i32 {
        let (fd, cmd) = (fd.into(), libc::F_DUPFD.into());
        // SAFETY: duplicating a descriptor the guard holds.
        let n = unsafe { sys(libc::SYS_fcntl, [fd, cmd, 3, 0, 0, 0]) };
        (if n < 0 { fd } else { n }) as i32
    }

    unsafe fn dup_to(fd: i32, to: i32) {
        if fd != to {
            // SAFETY: the caller's (only in the guard); no pointer.
            unsafe { sys(libc::SYS_dup3, [fd.into(), to.into(), 0, 0, 0, 0]) };
        }
    }

    unsafe fn close_from(from: i32) {
        // SAFETY: the caller's (only in the guard); no pointers.
        unsafe {
            let all = i64::from(u32::MAX);
            if sys(libc::SYS_close_range, [from.into(), all, 0, 0, 0, 0]) != 0 {
                for fd in i64::from(from)..4096 {
                    sys(libc::SYS_close, [fd, 0, 0, 0, 0, 0]);
                }
            }
        }
    }

    fn kill(pid: i32, sig: i32) {
        // SAFETY: no pointer; the guard signals the group it was told of.
        unsafe { sys(libc::SYS_kill, [pid.into(), sig.into(), 0, 0, 0, 0]) };
    }

    fn write_byte(fd: i32) {
        let p = b"!".as_ptr() as i64;
        // SAFETY: one byte from a static.
        unsafe { sys(libc::SYS_write, [fd.into(), p, 1, 0, 0, 0]) };
    }

    fn wait(fd: i32, timeout_ns: Option<i64>) -> bool {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ts = timeout_ns.map(|ns| libc::timespec {
            tv_sec: ns / 1_000_000_000,
            tv_nsec: ns % 1_000_000_000,
        });
        let tp = ts.as_ref().map_or(0, |t| t as *const libc::timespec as i64);
        let p = &mut pfd as *mut libc::pollfd as i64;
        // SAFETY: one pollfd and an optional timespec, both on this stack;
        // no signal mask (the 8 is the kernel's sigset size, unused).
        unsafe { sys(libc::SYS_ppoll, [p, 1, tp, 0, 8, 0]) > 0 }
    }

    fn read_i64(fd: i32) -> Read {
        let mut buf = [0u8; 8];
        let p = buf.as_mut_ptr() as i64;
        // SAFETY: reading at most 8 bytes into a buffer on this stack.
        match unsafe { sys(libc::SYS_read, [fd.into(), p, 8, 0, 0, 0]) } {
            8 => Read::Value(i64::from_ne_bytes(buf)),
            0 => Read::Gone,
            n if n < 0 && n != -i64::from(libc::EINTR) => Read::Gone,
            _ => Read::Again,
        }
    }

    fn exit() -> ! {
        loop {
            // SAFETY: no pointer; the guard is a thread group of its own, so
            // this ends the guard alone.
            unsafe { sys(libc::SYS_exit_group, [0; 6]) };
        }
    }
}

/// A system call without libc: its result, or `-errno`.
///
/// # Safety
/// The arguments are what system call `n` expects (valid pointers where it
/// takes pointers).
#[cfg(target_arch = "x86_64")]
unsafe fn sys(n: i64, a: [i64; 6]) -> i64 {
    let ret;
    // SAFETY: the `syscall` instruction with the kernel's register
    // convention; it clobbers rcx and r11 only; the arguments are the
    // caller's.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") n => ret,
            in("rdi") a[0], in("rsi") a[1], in("rdx") a[2],
            in("r10") a[3], in("r8") a[4], in("r9") a[5],
            lateout("rcx") _, lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// A system call without libc: its result, or `-errno`.
///
/// # Safety
/// As the x86_64 one.
#[cfg(target_arch = "aarch64")]
unsafe fn sys(n: i64, a: [i64; 6]) -> i64 {
    let ret;
    // SAFETY: `svc 0` with the kernel's register convention; the arguments
    // are the caller's.
    unsafe {
        std::arch::asm!(
            "svc 0",
            in("x8") n,
            inlateout("x0") a[0] => ret,
            in("x1") a[1], in("x2") a[2], in("x3") a[3], in("x4") a[4], in("x5") a[5],
            options(nostack),
        );
    }
    ret
}
