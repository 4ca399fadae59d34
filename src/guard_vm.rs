//! The guard process without a fork of dlock (a proposal for
//! `supervise.rs`, issue 21; not wired in).
//!
//! `supervise` starts the guard with `fork()`: the kernel copies the page
//! tables of the whole process (about 0.1 ms for dlock's 8 MiB), and every
//! page either side writes afterwards is copied once more. The guard needs
//! none of that memory: it runs a loop of raw system calls on the two pipe
//! descriptors and three integers it is given. Here it is started with
//! `clone(CLONE_VM)` on a 64 KiB stack of its own (about 0.01 ms, no page
//! copied), as a process of its own (no `CLONE_THREAD`, no `CLONE_FILES`, no
//! `CLONE_SIGHAND`: its descriptor table and signal dispositions are its
//! own, so `setsid`, `SIG_IGN` and closing descriptors do not touch dlock's).
//!
//! What it guarantees is unchanged: the same pipe protocol as
//! `supervise::guard_main` (the child's group first, then deadlines on
//! `CLOCK_BOOTTIME`, 0 disarms, EOF means dlock died), the same signals.
//! That the guard shares dlock's memory changes nothing on dlock's death:
//! the address space lives on while the guard does.
//!
//! Because it shares the memory and the thread pointer of the thread that
//! started it, the guard must not touch thread-local storage. glibc's
//! wrappers set `errno`, which is thread-local, so every call here is a raw
//! `syscall` instruction; the guard allocates nothing, takes no lock and
//! never returns.
//!
//! To wire it in: in `supervise`, replace
//! `if unsafe { libc::fork() } == 0 { guard_main(...) }` with
//! `guard_vm::spawn(guard_r.as_raw_fd(), acted_w.as_raw_fd(), grace_ns, initial)?`
//! (before dropping `guard_r` and `acted_w`, as now).

use std::ffi::{c_int, c_void};
use std::io;

/// The guard's stack. It is never unmapped: the guard may outlive every
/// use dlock has for it, and 64 KiB is all it costs.
const STACK: usize = 64 * 1024;

/// What the guard is started with (read by the guard before anything else;
/// lives on its own stack's top page, written before the clone).
#[repr(C)]
struct Args {
    read_fd: i64,
    acted_fd: i64,
    grace_ns: i64,
    deadline: i64,
}

/// Start the guard on `read_fd` (the pipe dlock writes to) and `acted_fd`
/// (where it says it had to act); its pid.
pub fn spawn(read_fd: i32, acted_fd: i32, grace_ns: i64, deadline: i64) -> io::Result<i32> {
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
    let args = stack.cast::<Args>();
    // SAFETY: the mapping is writable and large enough; the guard reads it
    // from the bottom while its stack grows down from the top.
    unsafe {
        args.write(Args {
            read_fd: i64::from(read_fd),
            acted_fd: i64::from(acted_fd),
            grace_ns,
            deadline,
        });
    }
    // SAFETY: `guard` never returns and touches only its own stack and
    // `args`; the stack's top is 16-byte aligned (mmap is page-aligned).
    let pid = unsafe {
        libc::clone(
            guard,
            stack.cast::<u8>().add(STACK).cast(),
            libc::CLONE_VM | libc::SIGCHLD,
            args.cast(),
        )
    };
    if pid < 0 {
        let e = io::Error::last_os_error();
        // SAFETY: no guard uses the mapping.
        unsafe { libc::munmap(stack, STACK) };
        return Err(e);
    }
    Ok(pid)
}

/// The guard: `supervise::guard_main`'s loop, in raw system calls.
extern "C" fn guard(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Args` that `spawn` wrote; every call below is a
    // raw system call on values of this stack.
    unsafe {
        let a = arg.cast::<Args>().read();
        let (read_fd, acted_fd, grace_ns, mut deadline) =
            (a.read_fd, a.acted_fd, a.grace_ns, a.deadline);
        // Its own session: signals for the job's terminal do not reach it.
        sys(libc::SYS_setsid, [0; 6]);
        for s in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGPIPE,
        ] {
            // struct kernel_sigaction { handler, flags, restorer, mask }.
            let act: [u64; 4] = [libc::SIG_IGN as u64, 0, 0, 0];
            let p = act.as_ptr() as i64;
            sys(libc::SYS_rt_sigaction, [i64::from(s), p, 0, 8, 0, 0]);
        }
        // Hold no descriptor but the two pipes, moved to 0 and 1 (both were
        // made after stdio, so neither is 0 or 1 already).
        sys(libc::SYS_dup3, [read_fd, 0, 0, 0, 0, 0]);
        sys(libc::SYS_dup3, [acted_fd, 1, 0, 0, 0, 0]);
        if sys(libc::SYS_close_range, [2, i64::from(u32::MAX), 0, 0, 0, 0]) != 0 {
            for fd in 2..4096 {
                sys(libc::SYS_close, [fd, 0, 0, 0, 0, 0]);
            }
        }
        let (read_fd, acted_fd) = (0i64, 1i64);
        let mut pgid: i64 = 0;
        let mut term_sent = false;
        loop {
            let now = boottime_ns();
            let next = if deadline < 0 || pgid == 0 {
                None
            } else if !term_sent {
                Some((deadline - grace_ns, libc::SIGTERM))
            } else {
                Some((deadline, libc::SIGKILL))
            };
            let mut ts = [0i64; 2];
            let timeout = match next {
                None => 0,
                Some((at, sig)) if at <= now => {
                    sys(libc::SYS_kill, [-pgid, i64::from(sig), 0, 0, 0, 0]);
                    let bang = b"!";
                    sys(
                        libc::SYS_write,
                        [acted_fd, bang.as_ptr() as i64, 1, 0, 0, 0],
                    );
                    if sig == libc::SIGKILL {
                        exit();
                    }
                    term_sent = true;
                    continue;
                }
                Some((at, _)) => {
                    let left = at - now;
                    ts[0] = left / 1_000_000_000;
                    ts[1] = left % 1_000_000_000;
                    ts.as_ptr() as i64
                }
            };
            // struct pollfd { int fd; short events; short revents; }
            let mut pfd: [i32; 2] = [read_fd as i32, i32::from(libc::POLLIN)];
            let n = sys(
                libc::SYS_ppoll,
                [pfd.as_mut_ptr() as i64, 1, timeout, 0, 8, 0],
            );
            if n <= 0 {
                continue; // timed out, or interrupted
            }
            let mut buf = [0u8; 8];
            let n = sys(
                libc::SYS_read,
                [read_fd, buf.as_mut_ptr() as i64, 8, 0, 0, 0],
            );
            if n == 8 {
                let v = i64::from_ne_bytes(buf);
                if v == 0 {
                    exit(); // disarmed: the child has ended normally
                } else if pgid == 0 {
                    pgid = v;
                } else {
                    deadline = v;
                }
            } else if n == 0 || (n < 0 && n != -i64::from(libc::EINTR)) {
                // dlock is gone: nothing holds the lock for this group.
                if pgid > 0 {
                    sys(
                        libc::SYS_kill,
                        [-pgid, i64::from(libc::SIGKILL), 0, 0, 0, 0],
                    );
                }
                exit();
            }
        }
    }
}

/// `CLOCK_BOOTTIME` in nanoseconds, by the system call (the vDSO's entry
/// point is found through data that dlock's thread owns).
fn boottime_ns() -> i64 {
    let mut ts = [0i64; 2];
    // SAFETY: the kernel writes a timespec into `ts`.
    unsafe {
        sys(
            libc::SYS_clock_gettime,
            [
                i64::from(libc::CLOCK_BOOTTIME),
                ts.as_mut_ptr() as i64,
                0,
                0,
                0,
                0,
            ],
        )
    };
    ts[0] * 1_000_000_000 + ts[1]
}

/// End the guard (only the guard: it is a process of its own).
fn exit() -> ! {
    loop {
        // SAFETY: no pointer is passed.
        unsafe { sys(libc::SYS_exit_group, [0; 6]) };
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
