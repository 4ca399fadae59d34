//! What dlock writes to stdout, when nobody reads it: a pipe whose reader
//! has gone (`dlock ping | head -c0`) or a stdout closed before dlock
//! started (`dlock doctor >&-`). Neither is a bug: no panic (exit 70),
//! the command's own exit code.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// How stdout is left unread.
#[derive(Debug, Clone, Copy)]
enum Unread {
    /// A pipe whose read end is closed before dlock writes: every write
    /// fails with EPIPE, as `| head -c0` does once head has exited.
    ReaderGone,
    /// No descriptor 1 at all (`>&-`).
    Closed,
    /// `| head -c0` itself, under `pipefail` for dlock's exit code; head
    /// may or may not be gone when dlock writes.
    HeadC0,
}

/// Run `dlock ARGS` with stdout unread as `how`: its exit code and stderr.
fn unread(env: &Env, args: &[&str], how: Unread) -> (i32, String) {
    let spawn = |mut c: Command| {
        c.stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let mut child = match how {
        Unread::ReaderGone => {
            let (r, w) = nix::unistd::pipe().expect("pipe");
            drop(r);
            let mut c = env.cmd(args);
            c.stdout(Stdio::from(w));
            spawn(c)
        }
        Unread::Closed => {
            let mut c = env.cmd(args);
            // SAFETY: close(2) is async-signal-safe; nothing else runs
            // between fork and exec.
            unsafe {
                c.pre_exec(|| {
                    let _ = nix::unistd::close(1);
                    Ok(())
                });
            }
            spawn(c)
        }
        Unread::HeadC0 => {
            let mut c = Command::new("bash");
            c.arg("-c")
                .arg(r#"set -o pipefail; "$@" | head -c0"#)
                .arg("bash");
            c.arg(common::DLOCK).args(env.cmd(args).get_args());
            for (k, v) in env.cmd(args).get_envs() {
                match v {
                    Some(v) => c.env(k, v),
                    None => c.env_remove(k),
                };
            }
            spawn(c)
        }
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    (wait_timeout(&mut child, Duration::from_secs(60)), err)
}

#[test]
fn commands_that_print_end_quietly_when_nobody_reads_stdout() {
    let env = Env::sqlite();
    let cases: [&[&str]; 7] = [
        &["ping"],
        &["doctor"],
        &["doctor", "--json"],
        &["status"],
        &["leader", "nobody"],
        &["completions", "bash"],
        &["man"],
    ];
    for args in cases {
        // The command's own code, read normally.
        let normal = code(&env.run(args));
        for how in [Unread::ReaderGone, Unread::Closed, Unread::HeadC0] {
            let (c, err) = unread(&env, args, how);
            assert!(
                !err.contains("panicked") && !err.contains("internal error"),
                "{args:?} {how:?}: {err}"
            );
            assert_eq!(c, normal, "{args:?} {how:?}: {err}");
        }
    }
}

/// `dlock acquire` whose handle reaches nobody exits 0 without a panic,
/// and lets the lease go at once: the handle was the only way to release
/// it, and keeping it would block every other taker for the TTL.
#[test]
fn acquire_whose_handle_reaches_nobody_lets_go() {
    let env = Env::sqlite();
    for how in [Unread::ReaderGone, Unread::Closed, Unread::HeadC0] {
        let key = format!("{how:?}");
        let (c, err) = unread(&env, &["acquire", "--key", &key, "--ttl", "1h"], how);
        assert!(
            !err.contains("panicked") && !err.contains("internal error"),
            "{how:?}: {err}"
        );
        assert_eq!(c, 0, "{how:?}: {err}");
        if let Unread::ReaderGone = how {
            assert!(!env.held(&key), "{how:?}: the lease was left behind");
        }
    }
}
