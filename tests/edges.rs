//! Truthful at the edges (issue 24): stopping a child that ignores the
//! signals it is sent, from a terminal too; `--stop-signal`; and the rest
//! of that items, each against the real binary.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

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

/// Item 16: `scripts/test.sh`'s set-up works with Debian's own python3
/// first on PATH, whose pip refuses to install anything (PEP 668): the
/// interoperability tests' modules come from Debian packages, and
/// `/usr/bin/python3` imports them afterwards. The script runs from a copy,
/// so nothing past its set-up (the suite itself) can run from here.
#[test]
fn the_test_script_sets_up_debian_python() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let copy = tempfile::tempdir().unwrap();
    std::fs::create_dir(copy.path().join("scripts")).unwrap();
    let script = copy.path().join("scripts/test.sh");
    std::fs::copy(root.join("scripts/test.sh"), &script).unwrap();
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("--deps-only")
        .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        !stderr(&out).contains("externally-managed-environment"),
        "{}",
        stderr(&out)
    );
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let import = std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import redis, kazoo"])
        .output()
        .unwrap();
    assert_eq!(code(&import), 0, "{}", stderr(&import));
}

/// A second local user for the shared-file tests, made if missing (the
/// tests run as root, as `scripts/test.sh` does): its uid and gid.
fn second_user() -> (u32, u32) {
    static USER: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
    *USER.get_or_init(|| {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the shared-file tests need root, to act as a second user (scripts/test.sh runs as root)"
        );
        let name = "dlock-test-other";
        let lookup = || nix::unistd::User::from_name(name).unwrap();
        if lookup().is_none() {
            let useradd = servers::require("useradd", "passwd");
            let out = std::process::Command::new(useradd)
                .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name])
                .output()
                .unwrap();
            assert!(
                lookup().is_some(),
                "useradd {name} failed: {}",
                stderr(&out)
            );
        }
        let u = lookup().unwrap();
        (u.uid.as_raw(), u.gid.as_raw())
    })
}

/// A directory every user may write, as `/tmp` (mode 1777), or `mode`.
fn shared_dir(mode: u32) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(mode)).unwrap();
    d
}

/// `sh -c 'umask 022; exec "$@"'` as root, or as the second user with
/// `setpriv`, running dlock on `url` with a clean environment homed in `home`.
fn dlock_as(
    other: bool,
    home: &std::path::Path,
    url: &str,
    args: &[&str],
) -> std::process::Command {
    let mut c = if other {
        let (uid, gid) = second_user();
        let mut c = std::process::Command::new(servers::require("setpriv", "util-linux"));
        c.args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            "sh",
        ]);
        c
    } else {
        std::process::Command::new("sh")
    };
    c.args([
        "-c",
        "umask 022; exec \"$@\"",
        "sh",
        DLOCK,
        "--backend",
        url,
    ])
    .args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("DLOCK_") {
            c.env_remove(&k);
        }
    }
    c.env("HOME", home)
        .env("XDG_STATE_HOME", home.join("state"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .stdin(Stdio::null());
    c
}

fn mode_of(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// Item 14: the cross-user recipe as the README gives it. Root's dlock
/// (umask 022) makes the database in a directory every user may write;
/// another user then takes, waits for and is refused the same locks, and
/// root sees that user's holds. A database made before, mode 644, is
/// refused at once with what to change.
#[test]
fn a_database_in_a_shared_directory_is_shared_across_users() {
    let shared = shared_dir(0o1777);
    let db = shared.path().join("team.db");
    let url = format!("sqlite:{}", db.display());
    let home = shared.path();
    let out = dlock_as(false, home, &url, &["run", "--key", "k", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        mode_of(&db),
        0o666,
        "the database is for every user of the directory"
    );
    assert_eq!(mode_of(&shared.path().join("team.db.wait")), 0o1777);
    let out = dlock_as(true, home, &url, &["run", "--key", "k", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "the other user writes it: {}", stderr(&out));
    // They exclude each other, and a waiter of one user wakes when the
    // other lets go.
    let ready = shared.path().join("ready");
    let mut holder = dlock_as(
        true,
        home,
        &url,
        &[
            "run",
            "--key",
            "k",
            "--",
            "sh",
            "-c",
            &format!("echo go > {}; sleep 1", ready.display()),
        ],
    )
    .spawn()
    .unwrap();
    read_when_ready(&ready, Duration::from_secs(20));
    let out = dlock_as(
        false,
        home,
        &url,
        &["run", "-n", "--key", "k", "--", "true"],
    )
    .output()
    .unwrap();
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    let waited = Instant::now();
    let out = dlock_as(
        false,
        home,
        &url,
        &["run", "-w", "20s", "--key", "k", "--", "true"],
    )
    .output()
    .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(waited.elapsed() < Duration::from_secs(5));
    assert_eq!(wait_timeout(&mut holder, Duration::from_secs(10)), 0);

    // A database that an older dlock made 644.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let started = Instant::now();
    let out = dlock_as(true, home, &url, &["run", "--key", "k", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert!(stderr(&out).contains("chmod 666"), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(3), "said at once");
}

/// The name of the wake file of key `k` in the default namespace: made by
/// a run on a scratch database, since it depends on the key only.
fn wake_name(k: &str) -> std::ffi::OsString {
    let scratch = tempfile::tempdir().unwrap();
    let db = scratch.path().join("probe.db");
    let url = format!("sqlite:{}", db.display());
    // A waiter opens the wake file: hold the key, then wait for it briefly.
    let ready = scratch.path().join("ready");
    let mut h = dlock_as(
        false,
        scratch.path(),
        &url,
        &[
            "run",
            "--key",
            k,
            "--",
            "sh",
            "-c",
            &format!("echo go > {}; sleep 5", ready.display()),
        ],
    )
    .spawn()
    .unwrap();
    read_when_ready(&ready, Duration::from_secs(20));
    let _ = dlock_as(
        false,
        scratch.path(),
        &url,
        &["run", "-w", "200ms", "--key", k, "--", "true"],
    )
    .output();
    let _ = h.kill();
    let _ = h.wait();
    let mut names: Vec<_> = std::fs::read_dir(scratch.path().join("probe.db.wait"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    names.pop().unwrap()
}

/// Item 15: a `.wait` directory another user made beside a shared
/// database, with a link where a wake file will be, does not make root's
/// dlock create a file where the link points: it is refused, at once,
/// saying why. So are a `.wait` others may write without the sticky bit,
/// a wake file that is a link (in root's own directory), and a database
/// path that is another user's link.
#[test]
fn files_planted_by_another_user_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let (uid, gid) = second_user();
    let name = wake_name("k");
    let shared = shared_dir(0o1777);
    let home = shared.path();
    let db = shared.path().join("team.db");
    let url = format!("sqlite:{}", db.display());
    let wait = shared.path().join("team.db.wait");
    let victim = shared.path().join("victim");

    // The other user's directory, with a link named like k's wake file.
    std::fs::create_dir(&wait).unwrap();
    std::os::unix::fs::symlink(&victim, wait.join(&name)).unwrap();
    std::os::unix::fs::lchown(wait.join(&name), Some(uid), Some(gid)).unwrap();
    std::os::unix::fs::chown(&wait, Some(uid), Some(gid)).unwrap();
    let ready = shared.path().join("ready");
    // A holder and a waiter: each would open the wake file.
    let mut h = dlock_as(
        false,
        home,
        &url,
        &[
            "run",
            "--key",
            "k",
            "--",
            "sh",
            "-c",
            &format!("echo go > {}; sleep 2", ready.display()),
        ],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let out = dlock_as(
        false,
        home,
        &url,
        &["run", "-w", "3s", "--key", "k", "--", "true"],
    )
    .output()
    .unwrap();
    let held = wait_timeout(&mut h, Duration::from_secs(20));
    assert!(!victim.exists(), "a file was made through the planted link");
    assert_eq!(held, 69, "the holder refuses the directory");
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("owned by dlock-test-other"),
        "{}",
        stderr(&out)
    );

    // Root's own directory, but anyone may rename in it.
    std::fs::remove_dir_all(&wait).unwrap();
    std::fs::create_dir(&wait).unwrap();
    std::fs::set_permissions(&wait, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = dlock_as(false, home, &url, &["run", "--key", "k", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert!(stderr(&out).contains("chmod +t"), "{}", stderr(&out));

    // Root's sticky directory, with a link another user put in it.
    std::fs::set_permissions(&wait, std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::fs::symlink(&victim, wait.join(&name)).unwrap();
    std::os::unix::fs::lchown(wait.join(&name), Some(uid), Some(gid)).unwrap();
    let mut h = dlock_as(
        false,
        home,
        &url,
        &["run", "--key", "k", "--", "sh", "-c", "sleep 1"],
    )
    .spawn()
    .unwrap();
    let _ = dlock_as(
        false,
        home,
        &url,
        &["run", "-w", "3s", "--key", "k", "--", "true"],
    )
    .output();
    wait_timeout(&mut h, Duration::from_secs(20));
    assert!(!victim.exists(), "a file was made through the planted link");

    // The database path itself, as another user's link.
    let link = shared.path().join("link.db");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(uid), Some(gid)).unwrap();
    let out = dlock_as(
        false,
        home,
        &format!("sqlite:{}", link.display()),
        &["run", "--key", "k", "--", "true"],
    )
    .output()
    .unwrap();
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("symbolic link owned by"),
        "{}",
        stderr(&out)
    );
    assert!(!victim.exists(), "the database was made through the link");

    // SQLite's own files beside it, as another user's link.
    let wal = shared.path().join("team.db-wal");
    let _ = std::fs::remove_file(&wal);
    std::os::unix::fs::symlink(&victim, &wal).unwrap();
    std::os::unix::fs::lchown(&wal, Some(uid), Some(gid)).unwrap();
    let out = dlock_as(false, home, &url, &["run", "--key", "k", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("team.db-wal is a symbolic link"),
        "{}",
        stderr(&out)
    );
    assert!(!victim.exists(), "SQLite wrote through the link");
}

/// Issue 20 item 5: a missing SQLite directory is a final error, said at
/// once (69), not retried for the whole `--connect-timeout`.
#[test]
fn a_missing_sqlite_directory_is_said_at_once() {
    let env = Env::bare("sqlite:/nonexistent-dlock-dir/x.db".into());
    let started = Instant::now();
    let out = env.run(&[
        "--connect-timeout",
        "5s",
        "run",
        "-w",
        "10s",
        "--key",
        "k",
        "--",
        "true",
    ]);
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "not retried: {:?}",
        started.elapsed()
    );
}

/// Item 4: `elect --restart always` with a command that cannot run waits
/// longer before each new try and gives up (127) after a few in a row.
#[test]
fn elect_restart_gives_up_on_a_command_that_cannot_run() {
    let env = Env::sqlite();
    let mut c = env
        .cmd(&[
            "elect",
            "--restart",
            "always",
            "--restart-delay",
            "200ms",
            "--key",
            "nocmd",
            "--",
            "/nonexistent/dlock-test-cmd",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let code = wait_timeout(&mut c, Duration::from_secs(20));
    let out = c.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(code, 127, "{err}");
    assert!(err.contains("campaigning again in 200ms"), "{err}");
    assert!(
        err.contains("campaigning again in 400ms"),
        "the delay grows: {err}"
    );
    assert!(err.contains("3 times in a row"), "{err}");
    assert!(!env.held("nocmd"), "leadership given up");
}

/// Items 5, 6 and 13: `elect --help` says what `elect` does (no -E, no 74,
/// DLOCK_VALUE), `--connect-timeout` says it bounds the outages a waiter
/// rides out, and global options come under a heading of their own after
/// the command's.
#[test]
fn help_texts_say_what_each_command_does() {
    let env = Env::sqlite();
    let help = stdout(&env.run(&["elect", "--help"]));
    let exits = &help[help.find("Exit status:").expect("an exit status block")..];
    let exits = &exits[..exits.find("\n\n").unwrap()];
    assert!(!exits.contains("-E"), "{exits}");
    assert!(!exits.contains("\n  74"), "{exits}");
    assert!(help.contains("DLOCK_VALUE"), "{help}");
    assert!(help.contains("-n, --no-wait"), "{help}");
    for args in [["run", "--help"], ["run", "-h"]] {
        let help = stdout(&env.run(&args));
        let words = help.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            words.contains("longest outage a waiter rides out"),
            "{help}"
        );
        let global = help
            .find("Global options:")
            .expect("a heading for global options");
        let config = help.find("--config").unwrap();
        let wait = help.find("--wait").unwrap();
        let stop = help.find("--stop-signal").unwrap();
        assert!(wait < global && stop < global && global < config, "{help}");
    }
}

/// Item 5: `elect -n` gives up at once (75) while another candidate leads.
#[test]
fn elect_no_wait_gives_up_at_once() {
    let env = Env::sqlite();
    let mut leader = env.spawn(&["elect", "--key", "nw", "--", "sleep", "30"]);
    wait_for(Duration::from_secs(10), "a leader", || env.held("nw"));
    let started = Instant::now();
    let out = env.run(&["elect", "-n", "--key", "nw", "--", "true"]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(3));
    signal(leader.id(), Signal::SIGTERM);
    wait_timeout(&mut leader, Duration::from_secs(10));
}

/// Items 10 and 11: `status --watch KEY` watches KEY; a misspelt flag gets
/// "did you mean", and a command without `--` gets the line with it.
#[test]
fn usage_errors_point_at_the_fix() {
    let env = Env::sqlite();
    let out = env.run(&["run", "--kye", "x", "--", "true"]);
    assert_eq!(code(&out), 64);
    assert!(
        stderr(&out).contains("did you mean '--key'?"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("-- --kye"), "{}", stderr(&out));
    let out = env.run(&["run", "--key", "x", "echo", "a b"]);
    assert_eq!(code(&out), 64);
    assert!(
        stderr(&out).contains(" run --key x -- echo 'a b'"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["elect", "--key", "x", "true"]);
    assert!(
        stderr(&out).contains(" elect --key x -- true"),
        "{}",
        stderr(&out)
    );

    let w = env
        .cmd(&["status", "--watch", "deploy", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    signal(w.id(), Signal::SIGTERM);
    let out = w.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let first = stdout(&out).lines().next().unwrap_or_default().to_string();
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(v[0]["key"], "deploy", "{first}");
}

/// Item 7: a key held shared has no leader: `leader` exits 75 saying so,
/// and `--json` prints null.
#[test]
fn leader_of_a_key_held_shared_is_nobody() {
    let env = Env::sqlite();
    let mut readers: Vec<_> = (0..2)
        .map(|_| env.spawn(&["run", "--shared", "--key", "rw", "--", "sleep", "30"]))
        .collect();
    wait_for(Duration::from_secs(10), "two readers", || {
        env.status_json(&["rw"])[0]["holders"]
            .as_array()
            .is_some_and(|h| h.len() == 2)
    });
    let out = env.run(&["leader", "rw"]);
    assert_eq!(code(&out), 75, "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("held shared (by 2 readers)"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["leader", "--json", "rw"]);
    assert_eq!(code(&out), 75);
    assert_eq!(stdout(&out).trim(), "null");
    for r in readers.iter_mut() {
        signal(r.id(), Signal::SIGTERM);
        wait_timeout(r, Duration::from_secs(10));
    }
}

/// Item 9: `leader --watch` through an outage says once that the backend
/// is unreachable, and once that it answers again.
#[test]
fn leader_watch_says_an_outage_once() {
    let mut env = Env::redis();
    let w = env
        .cmd(&["--connect-timeout", "1s", "leader", "--watch", "ow"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    env.restart_server(Duration::from_secs(3));
    std::thread::sleep(Duration::from_secs(3));
    signal(w.id(), Signal::SIGTERM);
    let out = w.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.matches("unreachable since").count(), 1, "{err}");
    assert_eq!(err.matches("answers again").count(), 1, "{err}");
    assert_eq!(err.lines().count(), 2, "{err}");
    assert_eq!(
        stdout(&out).lines().count(),
        1,
        "one line for no leader: {}",
        stdout(&out)
    );
}

/// Item 8: `status` shows a lock a finished `--lock-at-least` run left to
/// lapse as such, sorts keys with numbers as numbers, and gives a key held
/// shared no limit in JSON.
#[test]
fn status_shows_lapses_sorts_naturally_and_has_no_limit_for_shared() {
    let env = Env::sqlite();
    let out = env.run(&["run", "--lock-at-least", "60s", "--key", "la", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let st = env.status_json(&["la"]);
    assert_eq!(st[0]["held"], true, "{st}");
    assert_eq!(st[0]["holders"][0]["lapse"], true, "{st}");
    let table = stdout(&env.run(&["status", "la"]));
    assert!(table.contains(" ended "), "{table}");
    assert!(table.contains("kept until it lapses in"), "{table}");
    let busy = env.run(&["run", "-n", "--key", "la", "--", "true"]);
    assert_eq!(code(&busy), 75);
    assert!(
        stderr(&busy).contains("which has ended"),
        "{}",
        stderr(&busy)
    );

    for k in ["job-1", "job-10", "job-11", "job-2"] {
        assert_eq!(code(&env.run(&["acquire", "--key", k])), 0);
    }
    let table = stdout(&env.run(&["status"]));
    let keys: Vec<&str> = table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter(|k| k.starts_with("job-"))
        .collect();
    assert_eq!(keys, ["job-1", "job-2", "job-10", "job-11"], "{table}");

    let mut r = env.spawn(&["run", "--shared", "--key", "sh", "--", "sleep", "30"]);
    wait_for(Duration::from_secs(10), "a reader", || env.held("sh"));
    let st = env.status_json(&["sh"]);
    assert!(st[0]["limit"].is_null(), "{st}");
    assert_eq!(st[0]["holders"][0]["mode"], "shared", "{st}");
    signal(r.id(), Signal::SIGTERM);
    wait_timeout(&mut r, Duration::from_secs(10));
    let st = env.status_json(&["la"]);
    assert_eq!(st[0]["limit"], 1, "a mutex's limit is 1: {st}");
}

/// Item 12: one Redis server is not Redlock: its errors say "the Redis
/// server", not "0 of 1 servers ... a majority of 1".
#[test]
fn a_single_redis_server_is_not_spoken_of_as_redlock() {
    let out = Env::bare("redis://127.0.0.1:1".into()).run(&["--connect-timeout", "1s", "status"]);
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the Redis server"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("of 1"), "{}", stderr(&out));

    let mut env = Env::redis();
    let mut h = env.spawn(&["run", "--key", "r1", "--", "sleep", "30"]);
    wait_for(Duration::from_secs(10), "r1 held", || env.held("r1"));
    let w = env
        .cmd(&[
            "--connect-timeout",
            "1s",
            "run",
            "-w",
            "30s",
            "--key",
            "r1",
            "--",
            "true",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    env.redis[0].stop();
    let out = w.wait_with_output().unwrap();
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(!err.contains("majority") && !err.contains("of 1 "), "{err}");
    let _ = h.kill();
    let _ = h.wait();
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

/// Item 14, the group variant: in a setgid directory of a group (2775),
/// the database is 0664 with that group and its `.wait` 3775, and a member
/// of the group who is not its owner writes it.
#[test]
fn a_database_in_a_group_directory_is_shared_by_the_group() {
    let (_, gid) = second_user();
    let shared = shared_dir(0o2775);
    std::os::unix::fs::chown(shared.path(), None, Some(gid)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o2775)).unwrap();
    let db = shared.path().join("team.db");
    let url = format!("sqlite:{}", db.display());
    // The other user's home must be theirs to read: give it the dir.
    let home = shared.path();
    let out = dlock_as(false, home, &url, &["run", "--key", "g", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    use std::os::unix::fs::MetadataExt;
    assert_eq!(mode_of(&db), 0o664);
    assert_eq!(std::fs::metadata(&db).unwrap().gid(), gid);
    assert_eq!(mode_of(&shared.path().join("team.db.wait")), 0o3775);
    let out = dlock_as(true, home, &url, &["run", "--key", "g", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(
        code(&out),
        0,
        "a member of the group writes it: {}",
        stderr(&out)
    );
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
