//! Starting the child without copying dlock: `clone(CLONE_VM | CLONE_VFORK)`
//! on a small stack of its own, as `posix_spawn` does, where the standard
//! library must `fork` (the steps dlock takes between fork and exec rule out
//! its `posix_spawn`). A `fork` copies the page tables of the whole process
//! and then faults in a copy of every page either side writes before the
//! exec; measured on an uncontended `run -- true`, this saves about a tenth
//! of the run (see `docs/speed.md`).
//!
//! While the child runs on dlock's memory, the thread that started it is
//! suspended by the kernel until the child calls exec or exits
//! (`CLONE_VFORK`); dlock's other threads run on. So between clone and exec
//! the child allocates nothing and takes no lock (another thread may hold
//! the allocator's): every string, path and pointer array it needs is built
//! here first, and it makes only system calls through libc's thin wrappers.
//! Their `errno` is the suspended thread's own, which nothing reads until
//! it resumes. Every signal is blocked across the clone, and the child sets
//! each caught one back to its default before unblocking, so no handler of
//! dlock's ever runs in the child.
//!
//! What the child does is what the standard library's spawn does, in its
//! order: signals to their defaults (SIGPIPE too, which Rust ignores) with
//! an empty mask, its own process group, then the steps of
//! [`super::child::before_exec`], then `execve` along `PATH` as `execvp`
//! does (a file without `#!` is run by `/bin/sh`). An exec that fails
//! leaves its `errno` where dlock reads it after the clone returns.
//!
//! The exit is waited for on a pidfd (Linux 5.3); where there is none, on a
//! thread of the blocking pool. Under Valgrind (which turns this clone into
//! a fork) the standard library's spawn is used instead.

use std::ffi::{CString, OsStr, OsString, c_char, c_int, c_void};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, Ordering};

use tokio::io::unix::AsyncFd;

use super::child::{Meet, before_exec};

/// The child's stack until it execs: a few frames of system calls.
const STACK: usize = 64 * 1024;

/// Whether this clone can be used here (not under Valgrind, see above).
pub(super) fn usable() -> bool {
    !std::env::var_os("LD_PRELOAD")
        .is_some_and(|p| p.as_encoded_bytes().windows(10).any(|w| w == b"vgpreload_"))
}

/// A child started by [`spawn`], to wait for.
pub(super) struct Spawned {
    pid: i32,
    /// Readable once the child has exited; none where pidfds are not.
    pidfd: Option<AsyncFd<OwnedFd>>,
}

impl Spawned {
    pub(super) fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Wait for the child to exit and reap it.
    pub(super) async fn wait(&mut self) -> io::Result<ExitStatus> {
        let pid = self.pid;
        let Some(fd) = &self.pidfd else {
            return tokio::task::spawn_blocking(move || reap(pid, 0))
                .await
                .map_err(io::Error::other)??
                .ok_or_else(|| io::Error::other("waitpid returned no status"));
        };
        loop {
            let mut ready = fd.readable().await?;
            if let Some(status) = reap(pid, libc::WNOHANG)? {
                return Ok(status);
            }
            ready.clear_ready();
        }
    }
}

/// `waitpid` on the child: its status, or none (WNOHANG) while it runs.
fn reap(pid: i32, flags: c_int) -> io::Result<Option<ExitStatus>> {
    loop {
        let mut status = 0;
        // SAFETY: waiting for our own child into a local.
        match unsafe { libc::waitpid(pid, &mut status, flags) } {
            0 => return Ok(None),
            p if p == pid => return Ok(Some(ExitStatus::from_raw(status))),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// Everything the child reads between clone and exec, built beforehand.
struct Plan {
    /// The paths to try in turn (one when the program names a path).
    paths: Vec<CString>,
    /// NULL-terminated arrays of pointers into the `CString`s kept here.
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
    /// `/bin/sh PATH ARGS...` for a file without `#!`: slot 1 is the path
    /// that failed with ENOEXEC, written by the child.
    sh_argv: Vec<*mut c_char>,
    parent: i32,
    meet: Meet,
    /// The errno of an exec (or of a step before it) that failed; 0 if the
    /// exec happened.
    err: AtomicI32,
    _keep: Vec<CString>,
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{s:?} contains a NUL byte"),
        )
    })
}

/// The environment the child gets: dlock's, less `remove`, with `set`.
fn environment(remove: &[String], set: &[(String, String)]) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| !remove.iter().any(|r| OsStr::new(r) == k))
        .filter(|(k, _)| !set.iter().any(|(s, _)| OsStr::new(s) == k))
        .collect();
    env.extend(set.iter().map(|(k, v)| (k.into(), v.into())));
    env
}

/// Where `execvp` would look for `program`: the program itself if it names
/// a path, else each directory of the child's `PATH` (`/bin:/usr/bin`
/// without one; an empty entry is the current directory).
fn candidates(program: &OsStr, path: Option<&OsStr>) -> Vec<OsString> {
    if program.as_bytes().contains(&b'/') {
        return vec![program.to_owned()];
    }
    let path = path.map_or(&b"/bin:/usr/bin"[..], OsStr::as_bytes);
    path.split(|b| *b == b':')
        .map(|dir| {
            let mut p = if dir.is_empty() {
                b".".to_vec()
            } else {
                dir.to_vec()
            };
            p.push(b'/');
            p.extend_from_slice(program.as_bytes());
            OsString::from(std::ffi::OsStr::from_bytes(&p))
        })
        .collect()
}

/// Start `program` with `args`, `env_remove` and `env`, meeting the guard
/// and the relay as `meet` says.
pub(super) fn spawn(
    program: &OsStr,
    args: &[OsString],
    env_remove: &[String],
    env: &[(String, String)],
    meet: Meet,
) -> io::Result<Spawned> {
    let env = environment(env_remove, env);
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_os_str());
    let paths = candidates(program, path)
        .iter()
        .map(|p| cstring(p))
        .collect::<io::Result<Vec<_>>>()?;
    let mut keep = Vec::new();
    let mut argv = Vec::new();
    for a in std::iter::once(program).chain(args.iter().map(OsString::as_os_str)) {
        let c = cstring(a)?;
        argv.push(c.as_ptr());
        keep.push(c);
    }
    argv.push(std::ptr::null());
    let mut envp = Vec::new();
    for (k, v) in &env {
        let mut kv = k.clone();
        kv.push("=");
        kv.push(v);
        let c = cstring(&kv)?;
        envp.push(c.as_ptr());
        keep.push(c);
    }
    envp.push(std::ptr::null());
    let sh = c"/bin/sh".as_ptr().cast_mut();
    let mut sh_argv = vec![sh, std::ptr::null_mut()];
    sh_argv.extend(argv[1..].iter().map(|p| p.cast_mut()));
    let mut plan = Plan {
        paths,
        argv,
        envp,
        sh_argv,
        parent: std::process::id() as i32,
        meet,
        err: AtomicI32::new(0),
        _keep: keep,
    };
    let mut stack = vec![0u8; STACK];
    // SAFETY: the top of the stack, aligned down to 16 bytes as both ABIs
    // want; the vector outlives the child's use of it (CLONE_VFORK returns
    // only once the child has exec'd or exited).
    let top = unsafe {
        let end = stack.as_mut_ptr().add(STACK);
        end.sub(end as usize % 16)
    };
    // SAFETY: every signal blocked across the clone, so that none is
    // handled in the child before it resets the dispositions; the mask is
    // put back right after.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::clone(
            child_main,
            top.cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&raw mut plan).cast(),
        );
        let e = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return Err(e);
        }
        pid
    };
    drop(stack);
    let err = plan.err.load(Ordering::Acquire);
    if err != 0 {
        reap(pid, 0)?;
        return Err(io::Error::from_raw_os_error(err));
    }
    // SAFETY: pidfd_open of our own child, not yet reaped.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let pidfd = if fd >= 0 {
        // SAFETY: a descriptor we were just given and own alone; the
        // `OwnedFd` keeps it open, and the same, for the `AsyncFd`'s life.
        unsafe {
            let owned = OwnedFd::from_raw_fd(fd as c_int);
            AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE).ok()
        }
    } else {
        None
    };
    Ok(Spawned { pid, pidfd })
}

/// The child, from clone to exec. Only system calls on what [`Plan`]
/// holds; never returns into dlock's code.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Plan` of `spawn`, whose thread is suspended
    // until we exec or exit; see the module's comment for what may run here.
    unsafe {
        let plan = &mut *arg.cast::<Plan>();
        // Caught signals back to their defaults, SIGPIPE too; then the
        // empty mask a new program expects.
        for sig in 1..=libc::SIGRTMAX() {
            let mut act: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut act) != 0 {
                continue;
            }
            let h = act.sa_sigaction;
            if (h != libc::SIG_DFL && h != libc::SIG_IGN) || sig == libc::SIGPIPE {
                act.sa_sigaction = libc::SIG_DFL;
                act.sa_flags = 0;
                libc::sigaction(sig, &act, std::ptr::null_mut());
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        if libc::setpgid(0, 0) != 0 {
            plan.err.store(*libc::__errno_location(), Ordering::Release);
            libc::_exit(127);
        }
        before_exec(plan.parent, &plan.meet);
        // As execvp: a path that is not there, or not a directory, or not
        // ours to run (remembered) is passed; any other failure ends the
        // search.
        let mut err = libc::ENOENT;
        let mut denied = false;
        for p in &plan.paths {
            libc::execve(p.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
            err = *libc::__errno_location();
            if err == libc::ENOEXEC {
                plan.sh_argv[1] = p.as_ptr().cast_mut();
                libc::execve(
                    plan.sh_argv[0],
                    plan.sh_argv.as_ptr().cast(),
                    plan.envp.as_ptr(),
                );
                err = *libc::__errno_location();
                break;
            }
            match err {
                libc::EACCES => denied = true,
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
                _ => break,
            }
        }
        if denied && err == libc::ENOENT {
            err = libc::EACCES;
        }
        plan.err.store(err.max(1), Ordering::Release);
        libc::_exit(127)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_search_is_execvp_s() {
        let c = |p: &str, path: Option<&str>| candidates(OsStr::new(p), path.map(OsStr::new));
        assert_eq!(c("./x", Some("/a")), ["./x"]);
        assert_eq!(c("/bin/true", None), ["/bin/true"]);
        assert_eq!(c("t", None), ["/bin/t", "/usr/bin/t"]);
        assert_eq!(c("t", Some("/a::/b")), ["/a/t", "./t", "/b/t"]);
    }

    #[test]
    fn the_environment_is_dlock_s_with_the_changes() {
        let env = environment(&["HOME".into()], &[("DLOCK_X".into(), "1".into())]);
        assert!(!env.iter().any(|(k, _)| k == "HOME"));
        assert_eq!(
            env.iter().filter(|(k, _)| k == "DLOCK_X").count(),
            1,
            "set once"
        );
    }
}
