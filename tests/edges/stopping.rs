//! Truthful at the edges (issue 24): stopping a child that ignores the
//! signals it is sent, from a terminal too, and `--stop-signal`.

use super::*;

/// A shell child that ignores every stop signal dlock passes on; it writes
/// `ready` once its traps are set.
fn stubborn(ready: &std::path::Path) -> String {
    format!(
        "trap '' INT TERM HUP QUIT; echo $$ > {}; while :; do sleep 0.1; done",
        ready.display()
    )
}

/// Item 1: after a passed-on INT, TERM, HUP or QUIT, a child still running
/// `--kill-after` later is SIGKILLed and dlock exits 128+N for the signal
/// it got, like `timeout -k`; the child's group is gone.
#[test]
fn a_child_that_ignores_the_stop_is_killed_after_kill_after() {
    let env = Env::sqlite();
    for sig in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        let ready = env.path(&format!("{sig}.ready"));
        let key = format!("st-{sig}");
        let mut c = env
            .cmd(&[
                "run",
                "--kill-after",
                "1s",
                "--key",
                &key,
                "--",
                "sh",
                "-c",
                &stubborn(&ready),
            ])
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let child: i32 = read_when_ready(&ready, Duration::from_secs(20))
            .parse()
            .unwrap();
        let sent = Instant::now();
        signal(c.id(), sig);
        let code = wait_timeout(&mut c, Duration::from_secs(15));
        let took = sent.elapsed();
        assert_eq!(
            code,
            128 + sig as i32,
            "{sig}: exit 128+N for the signal dlock got"
        );
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{sig}: SIGKILL about --kill-after (1s) later, took {took:?}"
        );
        assert!(!alive(child), "{sig}: the child is gone");
        assert!(!env.held(&key), "{sig}: the lock is released");
    }
}

/// A child that stops by itself when asked keeps its own exit status.
#[test]
fn a_child_that_stops_when_asked_keeps_its_status() {
    let env = Env::sqlite();
    let ready = env.path("ready");
    let script = format!(
        "trap 'exit 3' TERM; echo $$ > {}; while :; do sleep 0.1; done",
        ready.display()
    );
    let mut c = env
        .cmd(&[
            "run",
            "--kill-after",
            "1s",
            "--key",
            "polite",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    read_when_ready(&ready, Duration::from_secs(20));
    signal(c.id(), Signal::SIGTERM);
    assert_eq!(wait_timeout(&mut c, Duration::from_secs(10)), 3);
}

/// A pseudo-terminal whose slave is the controlling terminal of the
/// process started with [`Pty::spawn`], its group in the foreground, as a
/// shell runs a command at a prompt.
struct Pty {
    master: std::fs::File,
    slave: OwnedFd,
}

impl Pty {
    fn open() -> Pty {
        let (mut m, mut s) = (0, 0);
        // SAFETY: openpty writes two descriptors into the ints we own; the
        // name and settings pointers may be null.
        let r = unsafe {
            libc::openpty(
                &mut m,
                &mut s,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
        // Not inherited by what other tests start meanwhile: a terminal
        // held open elsewhere would outlive its test.
        for fd in [m, s] {
            // SAFETY: fcntl on descriptors we own.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        // SAFETY: both descriptors are fresh and ours alone.
        let (master, slave) = unsafe { (std::fs::File::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
        // Drain what is written to the terminal, so a writer never blocks.
        let mut reader = master.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut reader, &mut buf) {
                if n == 0 {
                    break;
                }
            }
        });
        Pty { master, slave }
    }

    /// Start `cmd` in a new session with the terminal as its controlling
    /// terminal and stdin, stdout and stderr.
    fn spawn(&self, mut cmd: std::process::Command) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        let io = || Stdio::from(self.slave.try_clone().unwrap());
        cmd.stdin(io()).stdout(io()).stderr(io());
        // SAFETY: setsid and ioctl are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn().unwrap()
    }

    /// Type `bytes` at the terminal (0x03 is Ctrl-C).
    fn type_in(&mut self, bytes: &[u8]) {
        std::io::Write::write_all(&mut self.master, bytes).unwrap();
        let _ = self.master.as_raw_fd();
    }
}

/// Item 2: Ctrl-C at the terminal stops a child that ignores SIGINT even
/// though the child's group owns the terminal: the second Ctrl-C SIGKILLs
/// it at once, and dlock exits 130. A single Ctrl-C starts no
/// `--kill-after` timer: an interactive child takes it as "cancel" and
/// runs on.
#[test]
fn ctrl_c_at_a_terminal_reaches_dlock() {
    let env = Env::sqlite();
    let ready = env.path("tty.ready");
    let mut pty = Pty::open();
    let mut c = pty.spawn(env.cmd(&[
        "run",
        "--kill-after",
        "1s",
        "--key",
        "tty",
        "--",
        "sh",
        "-c",
        &format!(
            "trap '' INT; echo $$ > {}; while :; do sleep 0.1; done",
            ready.display()
        ),
    ]));
    let child: i32 = read_when_ready(&ready, Duration::from_secs(20))
        .parse()
        .unwrap();
    // The child's group is the terminal's foreground group now.
    wait_for(
        Duration::from_secs(5),
        "the child to own the terminal",
        || {
            // SAFETY: a query on a descriptor we own.
            unsafe { libc::tcgetpgrp(pty.master.as_raw_fd()) == child }
        },
    );
    pty.type_in(b"\x03");
    std::thread::sleep(Duration::from_millis(2500));
    assert!(alive(child), "one Ctrl-C, ignored, and no timer");
    assert!(c.try_wait().unwrap().is_none());
    let sent = Instant::now();
    pty.type_in(b"\x03");
    let code = wait_timeout(&mut c, Duration::from_secs(15));
    assert_eq!(code, 130, "exit 128+SIGINT");
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "the second Ctrl-C kills at once: {:?}",
        sent.elapsed()
    );
    assert!(!alive(child), "the child is gone");
    assert!(!env.held("tty"));
}

/// Item 3: `--stop-signal QUIT` is what a `run` whose lease was broken
/// sends its child, and what an `elect` whose leadership was broken sends
/// its CMD; a signal that stops nothing is a usage error.
#[test]
fn stop_signal_is_sent_on_a_lost_lease_and_lost_leadership() {
    let env = Env::sqlite();
    let got = env.path("got");
    let ready = env.path("ready");
    let script = format!(
        "trap 'echo QUIT >> {g}; exit 0' QUIT; trap 'echo TERM >> {g}; exit 0' TERM; \
         echo $$ > {r}; while :; do sleep 0.1; done",
        g = got.display(),
        r = ready.display()
    );
    let c = env
        .cmd(&[
            "run",
            "--stop-signal",
            "QUIT",
            "--key",
            "svc",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    read_when_ready(&ready, Duration::from_secs(20));
    assert_eq!(code(&env.run(&["release", "--key", "svc", "--force"])), 0);
    let out = c.wait_with_output().unwrap();
    assert_eq!(code(&out), 74, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("SIGQUIT to its process group"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&got).unwrap(), "QUIT\n");

    std::fs::remove_file(&got).unwrap();
    std::fs::remove_file(&ready).unwrap();
    let mut e = env
        .cmd(&[
            "elect",
            "--stop-signal",
            "sigquit",
            "--key",
            "lead",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    read_when_ready(&ready, Duration::from_secs(20));
    std::fs::remove_file(&ready).unwrap();
    assert_eq!(code(&env.run(&["release", "--key", "lead", "--force"])), 0);
    // It campaigns again and runs CMD again.
    read_when_ready(&ready, Duration::from_secs(20));
    assert_eq!(std::fs::read_to_string(&got).unwrap(), "QUIT\n");
    signal(e.id(), Signal::SIGTERM);
    assert_eq!(wait_timeout(&mut e, Duration::from_secs(10)), 0);

    for bad in ["STOP", "nosuch"] {
        let out = env.run(&["run", "--stop-signal", bad, "--key", "x", "--", "true"]);
        assert_eq!(code(&out), 64, "{bad}: {}", stderr(&out));
    }
}

/// A signal dlock started with ignored (`nohup`) stays the child's
/// business on a terminal too: a hang-up that reaches the child's group
/// does not make dlock stop it.
#[test]
fn a_signal_ignored_at_start_is_not_relayed_from_the_terminal() {
    let env = Env::sqlite();
    let ready = env.path("nh.ready");
    let done = env.path("nh.done");
    let pty = Pty::open();
    let mut cmd = std::process::Command::new("sh");
    cmd.args([
        "-c",
        "trap '' HUP; exec \"$@\"",
        "sh",
        DLOCK,
        "--backend",
        &env.url,
        "run",
        "--kill-after",
        "1s",
        "--key",
        "nh",
        "--",
        "sh",
        "-c",
        &format!(
            "echo $$ > {}; sleep 3; echo survived > {}",
            ready.display(),
            done.display()
        ),
    ])
    .env("HOME", env.dir.path())
    .env("XDG_STATE_HOME", env.dir.path().join("state"))
    .env("XDG_CONFIG_HOME", env.dir.path().join("config"));
    let mut c = pty.spawn(cmd);
    let child: i32 = read_when_ready(&ready, Duration::from_secs(20))
        .parse()
        .unwrap();
    wait_for(
        Duration::from_secs(5),
        "the child to own the terminal",
        || {
            // SAFETY: a query on a descriptor we own.
            unsafe { libc::tcgetpgrp(pty.master.as_raw_fd()) == child }
        },
    );
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(child), Signal::SIGHUP).unwrap();
    assert_eq!(wait_timeout(&mut c, Duration::from_secs(15)), 0);
    assert_eq!(read_when_ready(&done, Duration::from_secs(1)), "survived");
}

/// Item 3: `stop-signal` in the config file, as every long flag; a bad one
/// is a configuration error (78) naming the file and line.
#[test]
fn stop_signal_from_the_config_file() {
    let env = Env::sqlite();
    let conf = env.path("dlock.toml");
    std::fs::write(&conf, "stop-signal = \"QUIT\"\nttl = \"3s\"\n").unwrap();
    let got = env.path("got");
    let ready = env.path("ready");
    let script = format!(
        "trap 'echo QUIT > {g}; exit 0' QUIT; echo $$ > {r}; while :; do sleep 0.1; done",
        g = got.display(),
        r = ready.display()
    );
    let conf_s = conf.to_str().unwrap();
    let c = env
        .cmd(&[
            "--config", conf_s, "run", "--key", "cf", "--", "sh", "-c", &script,
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    read_when_ready(&ready, Duration::from_secs(20));
    assert_eq!(code(&env.run(&["release", "--key", "cf", "--force"])), 0);
    let out = c.wait_with_output().unwrap();
    assert_eq!(code(&out), 74, "{}", stderr(&out));
    assert_eq!(read_when_ready(&got, Duration::from_secs(1)), "QUIT");

    std::fs::write(&conf, "stop-signal = \"nope\"\n").unwrap();
    let out = env.run(&["--config", conf_s, "run", "--key", "cf", "--", "true"]);
    assert_eq!(code(&out), 78, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("line 1") && stderr(&out).contains("\"nope\" is not a signal"),
        "{}",
        stderr(&out)
    );
}

/// Item 2 for `elect`: Ctrl-C at the terminal stops a leader's CMD that
/// ignores SIGINT (the second one kills it), and dlock then resigns and
/// exits instead of campaigning again, even with `--restart always`.
#[test]
fn ctrl_c_at_a_terminal_stops_elect() {
    let env = Env::sqlite();
    let ready = env.path("el.ready");
    let mut pty = Pty::open();
    let mut c = pty.spawn(env.cmd(&[
        "elect",
        "--restart",
        "always",
        "--key",
        "ttyel",
        "--",
        "sh",
        "-c",
        &format!(
            "trap '' INT; echo $$ >> {}; while :; do sleep 0.1; done",
            ready.display()
        ),
    ]));
    let child: i32 = read_when_ready(&ready, Duration::from_secs(20))
        .parse()
        .unwrap();
    wait_for(
        Duration::from_secs(5),
        "the child to own the terminal",
        || {
            // SAFETY: a query on a descriptor we own.
            unsafe { libc::tcgetpgrp(pty.master.as_raw_fd()) == child }
        },
    );
    pty.type_in(b"\x03");
    std::thread::sleep(Duration::from_millis(300));
    pty.type_in(b"\x03");
    assert_eq!(wait_timeout(&mut c, Duration::from_secs(15)), 130);
    let terms = std::fs::read_to_string(&ready).unwrap();
    assert_eq!(terms.lines().count(), 1, "no new term: {terms}");
    assert!(!env.held("ttyel"));
}
