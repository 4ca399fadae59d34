//! The backend conformance suite, run against every backend this build has.
//! Each backend's tests start their own real server (SQLite needs none).

mod common;

use common::fair::fair_conformance;
use common::shared::shared_conformance;
use common::suite::conformance;

conformance!(sqlite, Env::sqlite());
shared_conformance!(sqlite_shared, Env::sqlite());
fair_conformance!(sqlite_fair, Env::sqlite());

/// SQLite-only: a `run` holder on this host whose process died is broken at
/// once (after a short grace), not after its TTL.
#[test]
fn sqlite_breaks_a_dead_local_holder_promptly() {
    use common::*;
    use std::time::{Duration, Instant};
    let env = Env::sqlite();
    let mut h = env.spawn(&["run", "--ttl", "60s", "--key", "dead", "--", "sleep", "30"]);
    wait_for(Duration::from_secs(10), "the lock to be held", || {
        env.held("dead")
    });
    signal(h.id(), nix::sys::signal::Signal::SIGKILL);
    let t = Instant::now();
    let out = env.run(&["run", "-w", "10s", "--key", "dead", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?} with a 60s TTL",
        t.elapsed()
    );
    let _ = h.wait();
}

/// SQLite-only: after a `run` holder (same host) is SIGKILLed, the very
/// first contender gets the lock, even with `--no-wait` (the cron pattern
/// `-n -E 0` must not skip its slot), and until then `status` marks the
/// holder as dead.
#[test]
fn sqlite_first_contender_after_a_crash_gets_the_lock() {
    use common::*;
    use std::time::Duration;
    let env = Env::sqlite();
    let mut h = env.spawn(&["run", "--ttl", "1h", "--key", "crash", "--", "sleep", "30"]);
    wait_for(Duration::from_secs(10), "the lock to be held", || {
        env.held("crash")
    });
    signal(h.id(), nix::sys::signal::Signal::SIGKILL);
    let _ = h.wait();
    let st = env.status_json(&["crash"]);
    assert_eq!(st[0]["holders"][0]["dead"], true, "{st}");
    let out = env.run(&["status", "crash"]);
    let table = stdout(&out);
    assert!(
        table.contains(&format!("{} dead", h.id())),
        "the PID column marks the dead holder: {table}"
    );
    let out = env.run(&["run", "-n", "--key", "crash", "--", "echo", "ran"]);
    assert_eq!(code(&out), 0, "the first contender: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "ran");
    // A live holder is not marked dead.
    let mut h = env.spawn(&["run", "--key", "crash", "--", "sleep", "30"]);
    wait_for(Duration::from_secs(10), "the lock to be held", || {
        env.held("crash")
    });
    let st = env.status_json(&["crash"]);
    assert_eq!(st[0]["holders"][0]["dead"], false, "{st}");
    let out = env.run(&["run", "-n", "--key", "crash", "--", "true"]);
    assert_eq!(code(&out), 75);
    assert!(!stderr(&out).contains("dead"), "{}", stderr(&out));
    signal(h.id(), nix::sys::signal::Signal::SIGTERM);
    let _ = h.wait();
}

/// SQLite-only: a SIGKILLed shared `run` on this host is broken at once
/// (its TTL is long), and only its own share: the live reader still keeps
/// a writer out. A shared request is the first contender after a dead
/// exclusive holder too.
#[test]
fn sqlite_breaks_a_dead_local_reader_promptly() {
    use common::*;
    use std::time::{Duration, Instant};
    let env = Env::sqlite();
    let readers = || {
        env.status_json(&["dr"])[0]["holders"]
            .as_array()
            .unwrap()
            .len()
    };
    let mut a = env.spawn(&[
        "run", "-s", "--ttl", "1h", "--key", "dr", "--", "sleep", "30",
    ]);
    wait_for(Duration::from_secs(10), "one reader", || readers() == 1);
    let mut b = env.spawn(&[
        "run", "-s", "--ttl", "1h", "--key", "dr", "--", "sleep", "30",
    ]);
    wait_for(Duration::from_secs(10), "two readers", || readers() == 2);
    signal(a.id(), nix::sys::signal::Signal::SIGKILL);
    let _ = a.wait();
    let st = env.status_json(&["dr"]);
    let dead: Vec<bool> = st[0]["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["dead"].as_bool().unwrap())
        .collect();
    assert_eq!(dead, [true, false], "{st}");
    let out = env.run(&["run", "-n", "--key", "dr", "--", "true"]);
    assert_eq!(code(&out), 75, "the live reader keeps a writer out");
    // Broken after a grace of a tenth of a second, not after its TTL.
    wait_for(
        Duration::from_secs(1),
        "the dead reader's share to go",
        || readers() == 1,
    );
    signal(b.id(), nix::sys::signal::Signal::SIGTERM);
    let _ = b.wait();
    let t = Instant::now();
    let out = env.run(&["run", "-w", "10s", "--key", "dr", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

    // A dead exclusive holder: the first shared contender gets in.
    let mut h = env.spawn(&["run", "--ttl", "1h", "--key", "dr", "--", "sleep", "30"]);
    wait_for(Duration::from_secs(10), "the writer to hold", || {
        readers() == 1
    });
    signal(h.id(), nix::sys::signal::Signal::SIGKILL);
    let _ = h.wait();
    let out = env.run(&["run", "-s", "-n", "--key", "dr", "--", "echo", "ran"]);
    assert_eq!(code(&out), 0, "the first contender: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "ran");
}

#[path = "common/mixed.rs"]
mod mixed;

/// SQLite: readers and writers racing on one key: no writer ever beside
/// anyone, readers side by side, a token each.
#[test]
fn sqlite_readers_and_writers_race_without_overlap() {
    let env = common::Env::sqlite();
    let seen = mixed::readers_and_writers_race(
        &env,
        "sqlite",
        3,
        6,
        4,
        std::time::Duration::from_millis(40),
    );
    assert!(seen.max_readers >= 2, "readers never met: {seen:?}");
}

#[test]
fn sqlite_a_crowd_of_readers_wakes_together() {
    mixed::crowd_of_readers_wakes_together(&common::Env::sqlite(), "sqlite", 12);
}

/// A stderr closed under dlock (`dlock -v run ... 2>&1 | head -1`) is not a
/// reason to die: a panic there left the lease behind (and exited 70 or
/// 134). The child's status comes back and the lock is released.
#[test]
fn a_closed_stderr_neither_kills_dlock_nor_leaves_its_lease() {
    use common::*;
    let env = Env::sqlite();
    for flags in [&["-v"][..], &["--log-format", "json", "-v"][..]] {
        let mut args = flags.to_vec();
        args.extend_from_slice(&[
            "run",
            "--key",
            "pipe",
            "--",
            "sh",
            "-c",
            "sleep 0.3; exit 3",
        ]);
        let mut c = env
            .cmd(&args)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(c.stderr.take());
        assert_eq!(
            wait_timeout(&mut c, std::time::Duration::from_secs(20)),
            3,
            "{flags:?}"
        );
        assert!(!env.held("pipe"), "{flags:?}: the lease was left behind");
    }
}

/// A key list the child's environment cannot hold (`DLOCK_KEYS` over the
/// kernel's 128 KiB per variable) is refused before any lock is taken:
/// 64 with a message, not every lock taken and then 126 blamed on the
/// command.
#[test]
fn a_key_list_too_long_for_the_environment_is_refused_up_front() {
    use common::*;
    let env = Env::sqlite();
    let keys: Vec<String> = (0..20_000).map(|i| format!("k{i:05}")).collect();
    {
        let cmd = "run";
        let mut args = vec![cmd];
        for k in &keys {
            args.extend_from_slice(&["--key", k]);
        }
        args.extend_from_slice(&["--", "true"]);
        let out = env.run(&args);
        assert_eq!(code(&out), 64, "{cmd}: {}", stderr(&out));
        assert!(stderr(&out).contains("128 KiB"), "{}", stderr(&out));
        assert!(!env.held("k00000"), "{cmd} took a lock first");
    }
}

/// The SQLite line files in the `.wait` directory (`WAKE.q-PID-...`), by
/// the pid of their waiter.
fn sqlite_line_files(env: &common::Env) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(env.path("locks.db.wait")) else {
        return vec![];
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let (_, id) = name.split_once(".q-")?;
            id.split('-').next()?.parse().ok()
        })
        .collect()
}

/// `dlock run --key K` whose child waits for the file `go`; killed if
/// the test fails.
fn sqlite_hold_until(env: &common::Env, key: &str, go: &std::path::Path) -> common::Reaped {
    let script = format!("while [ ! -e {} ]; do sleep 0.02; done", go.display());
    common::Reaped(env.spawn(&["run", "--key", key, "--", "sh", "-c", &script]))
}

/// SQLite-only: the line file of a waiter SIGKILLed in line (first in
/// line, nobody behind it) is removed once the key is let go of again:
/// left, it would stay in the `.wait` directory forever.
#[test]
fn sqlite_a_killed_waiters_line_file_is_removed() {
    use common::*;
    use std::time::Duration;
    let env = Env::sqlite();
    let go = env.path("go");
    let mut h = sqlite_hold_until(&env, "line", &go);
    wait_for(Duration::from_secs(10), "the lock to be held", || {
        env.held("line")
    });
    let mut w = Reaped(env.spawn(&["run", "-w", "1m", "--key", "line", "--", "true"]));
    wait_for(Duration::from_secs(10), "the waiter's line file", || {
        sqlite_line_files(&env) == [w.id()]
    });
    signal(w.id(), nix::sys::signal::Signal::SIGKILL);
    let _ = w.wait();
    std::fs::write(&go, "").unwrap();
    assert_eq!(wait_timeout(&mut h, Duration::from_secs(10)), 0);
    let out = env.run(&["run", "-w", "10s", "--key", "line", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        sqlite_line_files(&env),
        Vec::<u32>::new(),
        "stale line file"
    );
}

/// SQLite-only: a waiter SIGKILLed with another behind it: the one behind,
/// woken by the death, removes the dead one's line file at once (the
/// holder still holds), and still takes the key as soon as it is let go.
#[test]
fn sqlite_the_waiter_behind_a_killed_one_removes_its_line_file() {
    use common::*;
    use std::time::{Duration, Instant};
    let env = Env::sqlite();
    let go = env.path("go");
    let mut h = sqlite_hold_until(&env, "line", &go);
    wait_for(Duration::from_secs(10), "the lock to be held", || {
        env.held("line")
    });
    let mut w1 = Reaped(env.spawn(&["run", "-w", "1m", "--key", "line", "--", "true"]));
    wait_for(
        Duration::from_secs(10),
        "the first waiter's line file",
        || sqlite_line_files(&env) == [w1.id()],
    );
    let mut w2 = Reaped(env.spawn(&["run", "-w", "1m", "--key", "line", "--", "true"]));
    wait_for(
        Duration::from_secs(10),
        "the second waiter's line file",
        || sqlite_line_files(&env).len() == 2,
    );
    signal(w1.id(), nix::sys::signal::Signal::SIGKILL);
    let _ = w1.wait();
    wait_for(
        Duration::from_secs(5),
        "the dead waiter's line file to go",
        || sqlite_line_files(&env) == [w2.id()],
    );
    std::fs::write(&go, "").unwrap();
    let released = Instant::now();
    assert_eq!(wait_timeout(&mut h, Duration::from_secs(10)), 0);
    assert_eq!(wait_timeout(&mut w2, Duration::from_secs(10)), 0);
    assert!(
        released.elapsed() < Duration::from_secs(2),
        "the waiter behind took {:?}",
        released.elapsed()
    );
    assert_eq!(
        sqlite_line_files(&env),
        Vec::<u32>::new(),
        "stale line file"
    );
}

/// SQLite-only: a live holder in another PID namespace of this machine (a
/// container sharing the database file) is never taken for dead. Its pid
/// (1 or 2 inside) names another process here, or none, so only its lease
/// frees the key: `--no-wait` contenders stay out while it runs, and get
/// the key once it is done.
#[test]
fn sqlite_a_holder_in_another_pid_namespace_is_not_taken_for_dead() {
    use common::*;
    use std::time::Duration;
    let env = Env::sqlite();
    let ready = env.path("ns.ready");
    let script = format!("echo go > {}; sleep 4", ready.display());
    let c = env.cmd(&[
        "run", "--ttl", "30s", "--key", "ns", "--", "sh", "-c", &script,
    ]);
    let mut u = std::process::Command::new("unshare");
    u.args(["--pid", "--fork", "--kill-child"])
        .arg(c.get_program())
        .args(c.get_args());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => u.env(k, v),
            None => u.env_remove(k),
        };
    }
    let mut h = Reaped(u.stdin(std::process::Stdio::null()).spawn().unwrap());
    read_when_ready(&ready, Duration::from_secs(20));
    for _ in 0..3 {
        let out = env.run(&["run", "-n", "--key", "ns", "--", "true"]);
        assert_eq!(code(&out), 75, "{}", stderr(&out));
        let st = env.status_json(&["ns"]);
        assert_ne!(st[0]["holders"][0]["dead"].as_bool(), Some(true), "{st}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(wait_timeout(&mut h.0, Duration::from_secs(20)), 0);
    let out = env.run(&["run", "-n", "--key", "ns", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}
