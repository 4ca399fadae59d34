//! Truthful at the edges (issue 24): stopping a child that ignores the
//! signals it is sent, from a terminal too; `--stop-signal`; and the rest
//! of that items, each against the real binary.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

/// Stopping a child that ignores the signals it is sent, from a terminal
/// too, and `--stop-signal`.
#[path = "edges/stopping.rs"]
mod stopping;
/// One SQLite database shared across users and groups, and the files
/// another user may plant beside it.
#[path = "edges/users.rs"]
mod users;

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

/// A lease's clock starts when the write that grants it is made, not when
/// the attempt began: an attempt that waited for SQLite's write lock (held
/// here by another program for longer than the TTL) still gets a whole
/// lease, and its command runs to the end instead of being stopped as lost
/// (74) at once.
#[test]
fn a_slow_grant_is_not_a_lost_lease() {
    let env = Env::sqlite();
    let db = env.dir.path().join("locks.db");
    assert_eq!(code(&env.run(&["run", "--key", "k", "--", "true"])), 0);
    // Another program takes the database's write lock for 1.5 s.
    let mut writer = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys, time\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             c.execute('BEGIN IMMEDIATE')\n\
             print('held', flush=True)\n\
             time.sleep(1.5)\n\
             c.execute('COMMIT')",
        ])
        .arg(&db)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(writer.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "held");
    let started = Instant::now();
    let out = env.run(&[
        "run",
        "--ttl",
        "1s",
        "--key",
        "k",
        "--",
        "sh",
        "-c",
        "sleep 0.2; echo ran",
    ]);
    assert!(writer.wait().unwrap().success());
    assert!(
        started.elapsed() >= Duration::from_millis(1200),
        "dlock did not wait for the write lock: {:?}",
        started.elapsed()
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "ran");
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
