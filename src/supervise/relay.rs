//! The relay: on a terminal the child's group is the foreground one, so
//! the terminal's signals (Ctrl-C, Ctrl-\\, hang-up) reach it and never
//! dlock; a tiny process in that group tells dlock which it got.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::signal::Signal;

use super::signals::{FORWARDED, SignalEvent, SignalSource, ignored};

/// The signals a terminal sends its foreground group: what the relay
/// reports.
const FROM_TERMINAL: [Signal; 3] = [Signal::SIGINT, Signal::SIGQUIT, Signal::SIGHUP];

/// A tiny process in the child's process group that tells dlock which
/// terminal signals (Ctrl-C, Ctrl-\\, hang-up) the group got: on a
/// terminal the child's group is the foreground one, so these never reach
/// dlock itself. Signals that dlock sent the group are not relayed.
///
/// It is forked before the child. The child, before it takes the terminal
/// and runs the command, sends it its pid and waits until it has joined the
/// group, so no Ctrl-C can reach the group before the relay is in it.
pub(super) struct Relay {
    pid: libc::pid_t,
    rx: Option<tokio::net::unix::pipe::Receiver>,
    /// Its end of the relay's lifeline: dropping it ends the relay.
    _life: OwnedFd,
    /// The child's ends of the handshake (pid out, go-ahead in), closed in
    /// dlock once the child is spawned.
    handshake: Option<(OwnedFd, OwnedFd)>,
}

impl Relay {
    pub(super) fn start() -> Option<Relay> {
        let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
        let (life_r, life_w) = nix::unistd::pipe2(cloexec).ok()?;
        let (out_r, out_w) = nix::unistd::pipe2(cloexec).ok()?;
        let (pid_r, pid_w) = nix::unistd::pipe2(cloexec).ok()?;
        let (go_r, go_w) = nix::unistd::pipe2(cloexec).ok()?;
        let parent = std::process::id() as i32;
        // A signal ignored when dlock started (`nohup`) is not dlock's to act
        // on: the child ignores it too, and it is not relayed.
        let mut relayed = [0 as libc::c_int; 3];
        for (slot, sig) in relayed.iter_mut().zip(FROM_TERMINAL) {
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

    /// What the relay reports, once (the supervise loop's to read).
    pub(super) fn reports(&mut self) -> RelayedSignals {
        RelayedSignals(self.rx.take())
    }

    /// The child's ends of the handshake, for its `pre_exec`.
    pub(super) fn child_fds(&self) -> (i32, i32) {
        self.handshake
            .as_ref()
            .map_or((-1, -1), |(w, r)| (w.as_raw_fd(), r.as_raw_fd()))
    }

    /// The child is spawned (or failed to be): dlock's copies of its ends
    /// go, so the relay sees end-of-file if the child never wrote.
    pub(super) fn spawned(&mut self) {
        self.handshake = None;
    }

    /// Stop the relay and reap it, so the child's group is empty when the
    /// child has left nothing behind.
    pub(super) fn end(self) {
        // SAFETY: signalling and reaping our own child process.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// In the child, before exec: tell the relay our pid and wait until it
/// has joined our group (or is gone). Async-signal-safe.
pub(super) fn meet_relay(pid_fd: i32, go_fd: i32) {
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
pub(super) struct RelayedSignals(Option<tokio::net::unix::pipe::Receiver>);

impl RelayedSignals {
    /// No relay (no terminal): nothing ever comes.
    pub(super) fn none() -> RelayedSignals {
        RelayedSignals(None)
    }
}

impl SignalSource for RelayedSignals {
    async fn recv(&mut self) -> SignalEvent {
        use tokio::io::AsyncReadExt;
        loop {
            let Some(rx) = self.0.as_mut() else {
                return std::future::pending().await;
            };
            let mut b = [0u8; 4];
            match rx.read_exact(&mut b).await {
                Ok(_) => {
                    let sig = Signal::try_from(i32::from_ne_bytes(b)).ok();
                    if let Some(e) = sig.and_then(SignalEvent::of) {
                        return e;
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
        for s in FORWARDED {
            libc::sigaddset(&mut set, s as libc::c_int);
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
