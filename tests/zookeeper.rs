//! ZooKeeper against real servers (Debian `zookeeper`), started per test on
//! free loopback ports: standalone, and a three-server ensemble.

mod common;

use std::time::{Duration, Instant};

use common::fair::fair_conformance;
use common::shared::shared_conformance;
use common::suite::{self, conformance};
use common::*;
use nix::sys::signal::Signal;

conformance!(zookeeper, Env::zookeeper());
shared_conformance!(zookeeper_shared, Env::zookeeper());
fair_conformance!(zookeeper_fair, Env::zookeeper());

#[test]
fn server_frozen_past_the_session_timeout_stops_the_child() {
    let env = Env::zookeeper();
    suite::frozen_server_stops_child(
        &env,
        Duration::from_secs(2),
        Duration::from_millis(400),
        |sig| env.zookeeper.as_ref().unwrap().signal(sig),
    );
}

#[test]
fn server_restart_keeps_the_lock_or_loses_it_cleanly() {
    let mut env = Env::zookeeper();
    let (mut h, pid) = env.run_child("rst", &["--ttl", "4s"], "exec sleep 60");
    env.zookeeper.as_mut().unwrap().restart();
    // Either the session survives (the child runs on, the lock is held) or
    // it is lost cleanly (child stopped, exit 74): never a child running on
    // a lock somebody else holds.
    std::thread::sleep(Duration::from_secs(2));
    if alive(pid) {
        assert!(env.held("rst"), "the child runs but the lock is not held");
        signal(h.id(), Signal::SIGTERM);
        assert_eq!(wait_timeout(&mut h, Duration::from_secs(20)), 143);
    } else {
        assert_eq!(wait_timeout(&mut h, Duration::from_secs(20)), 74);
    }
}

#[test]
fn ensemble_survives_a_follower_and_the_leader_dying() {
    let mut env = Env::zk_ensemble();
    let out = env.run(&["run", "--key", "e", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let e = env.ensemble.as_mut().unwrap();
    let leader = e.wait_leader(Duration::from_secs(20));
    let follower = (leader + 1) % 3;
    let (c, checks) = env.doctor(&[]);
    assert!(
        checks.iter().any(|(n, l, _)| n == "members" && l == "ok"),
        "{checks:?}"
    );
    assert_eq!(c, 0, "{checks:?}");
    let e = env.ensemble.as_mut().unwrap();
    let down = e.port(follower);
    e.stop(follower);
    let out = env.run(&["run", "--wait", "20s", "--key", "e", "--", "true"]);
    assert_eq!(code(&out), 0, "one follower down: {}", stderr(&out));
    // doctor names the member that is down, and fails.
    env.doctor_names_a_member_down(down);
    let e = env.ensemble.as_mut().unwrap();
    e.restart(follower);
    let leader = e.wait_leader(Duration::from_secs(20));
    e.stop(leader);
    e.wait_leader(Duration::from_secs(20));
    let out = env.run(&[
        "--connect-timeout",
        "10s",
        "run",
        "--wait",
        "20s",
        "--key",
        "e",
        "--",
        "true",
    ]);
    assert_eq!(code(&out), 0, "leader killed: {}", stderr(&out));
}

/// kazoo's `Lock` and dlock on the same path exclude each other.
#[test]
fn kazoo_lock_interoperates() {
    let env = Env::zookeeper();
    let hosts = env.url.trim_start_matches("zk://").to_string();
    let script = format!(
        "import time\nfrom kazoo.client import KazooClient\nzk=KazooClient(hosts='{hosts}')\nzk.start()\n\
         l=zk.Lock('/dlock/job','kazoo', extra_lock_patterns=['-lock-'])\nassert l.acquire(blocking=False)\n\
         print('held',flush=True)\ntime.sleep(2)\nl.release()\nzk.stop()\n"
    );
    let mut py = python_holder("kazoo", &script);
    let out = env.run(&["run", "-n", "--key", "job", "--", "true"]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    assert!(env.held("job"), "a kazoo holder shows as held");
    foreign_holder_shown(&env, "job");
    let t = Instant::now();
    let out = env.run(&["run", "--wait", "10s", "--key", "job", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        t.elapsed() > Duration::from_millis(1200),
        "dlock got the lock while kazoo held it"
    );
    assert!(py.wait().unwrap().success());
    let mut h = env.spawn(&["run", "--key", "job", "--", "sleep", "30"]);
    wait_for(Duration::from_secs(10), "dlock to hold", || env.held("job"));
    let script = format!(
        "from kazoo.client import KazooClient\nzk=KazooClient(hosts='{hosts}')\nzk.start()\n\
         print(zk.Lock('/dlock/job','kazoo', extra_lock_patterns=['-lock-']).acquire(blocking=False))\nzk.stop()\n"
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "False",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    signal(h.id(), Signal::SIGTERM);
    wait_timeout(&mut h, Duration::from_secs(10));
}

/// doctor: a TTL the server clamps (its maxSessionTimeout is 60s, its
/// minSessionTimeout 400ms) is a warning, a failure only with --strict.
#[test]
fn doctor_flags_a_session_timeout_the_server_clamps() {
    let env = Env::zookeeper();
    let (c, checks) = env.doctor(&["--ttl", "10s"]);
    assert_eq!(c, 0, "{checks:?}");
    assert!(
        checks.iter().any(|(n, l, _)| n == "session" && l == "ok"),
        "{checks:?}"
    );
    let (c, checks) = env.doctor(&["--ttl", "2m"]);
    let clamp = checks
        .iter()
        .find(|(n, l, _)| n == "ttl" && l == "warn")
        .unwrap_or_else(|| panic!("no clamp warning: {checks:?}"));
    assert!(clamp.2.contains("grants 1m"), "{clamp:?}");
    assert!(checks.iter().all(|(_, l, _)| l != "fail"), "{checks:?}");
    assert_eq!(c, 0, "warnings alone pass");
    let (c, _) = env.doctor(&["--ttl", "2m", "--strict"]);
    assert_eq!(c, 1, "--strict fails on warnings");
    let (_, checks) = env.doctor(&["--ttl", "200ms"]);
    assert!(
        checks
            .iter()
            .any(|(n, l, m)| n == "session" && l == "warn" && m.contains("raises")),
        "{checks:?}"
    );
}

/// A key whose lock directory this client may not read (another user's
/// `CREATOR_ALL_ACL`) does not break `status`: it is listed as unreadable,
/// naming the path, and the other keys are listed as usual.
#[test]
fn status_lists_past_a_key_it_may_not_read() {
    let env = Env::zookeeper();
    let hosts = env.url.trim_start_matches("zk://").to_string();
    // Anonymous: /dlock is created open to anyone.
    let mut open = env.spawn(&["run", "--key", "open", "--", "sleep", "30"]);
    wait_for(Duration::from_secs(10), "open to be held", || {
        env.held("open")
    });
    // Another user: /dlock/secret readable by that user only.
    let alice = Env::bare(format!("zk://alice:pw@{hosts}"));
    let mut secret = alice.spawn(&["run", "--key", "secret", "--", "sleep", "30"]);
    wait_for(Duration::from_secs(10), "secret to be held", || {
        alice.held("secret")
    });
    let st = env.status_json(&[]);
    let arr = st.as_array().unwrap();
    let find = |k: &str| arr.iter().find(|o| o["key"] == k).cloned();
    let o = find("open").unwrap_or_else(|| panic!("open not listed: {st}"));
    assert_eq!(o["held"], true, "{st}");
    let s = find("secret").unwrap_or_else(|| panic!("secret not listed: {st}"));
    assert!(s["held"].is_null(), "unknown, not free: {st}");
    let why = s["unreadable"].as_str().unwrap_or_default();
    assert!(why.contains("/dlock/secret"), "names the path: {st}");
    let out = env.run(&["status"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let table = stdout(&out);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("secret ") && l.contains("unreadable")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("open ") && l.contains(" held ")),
        "{table}"
    );
    let st = env.status_json(&["secret", "open"]);
    assert!(
        st[0]["unreadable"].is_string() && st[1]["held"] == true,
        "{st}"
    );
    // A lock attempt it may not make names the path too.
    let out = env.run(&["run", "-n", "--key", "secret", "--", "true"]);
    assert_ne!(code(&out), 0);
    assert!(stderr(&out).contains("/dlock/secret"), "{}", stderr(&out));
    for c in [&mut open, &mut secret] {
        signal(c.id(), Signal::SIGTERM);
        wait_timeout(c, Duration::from_secs(10));
    }
}

/// A key ZooKeeper cannot hold in a path (an emoji is beyond U+FFFF) is a
/// usage error naming the rule (64), not "backend unavailable" (69): for
/// run, acquire, status and release --force alike.
#[test]
fn keys_zookeeper_cannot_store_are_refused() {
    let env = Env::zookeeper();
    for args in [
        vec!["run", "--key", "🔒", "--", "true"],
        vec!["acquire", "--key", "🔒"],
        vec!["status", "🔒"],
        vec!["release", "--key", "🔒", "--force"],
        vec!["run", "--key", "a//b", "--", "true"],
        vec!["run", "--key", "a/../b", "--", "true"],
        vec![
            "--namespace",
            "zookeeper",
            "run",
            "--key",
            "a",
            "--",
            "true",
        ],
    ] {
        let out = env.run(&args);
        assert_eq!(code(&out), 64, "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("ZooKeeper"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let out = env.run(&["run", "--key", "🔒", "--", "true"]);
    assert!(stderr(&out).contains("U+1F512"), "{}", stderr(&out));
    // What ZooKeeper can store works: accents, CJK, a nested key.
    for k in ["café", "锁", "a/b"] {
        let out = env.run(&["run", "--key", k, "--", "true"]);
        assert_eq!(code(&out), 0, "{k}: {}", stderr(&out));
    }
}

/// With `--log-format json`, the ZooKeeper client library's lines are JSON
/// objects too, marked `event: "library"` with their target.
#[test]
fn json_logs_mark_client_library_lines() {
    let env = Env::zookeeper();
    let out = env.run(&[
        "--log-format",
        "json",
        "-vv",
        "run",
        "--key",
        "j",
        "--",
        "true",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = stderr(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.iter().all(|v| v["event"].is_string()), "{lines:?}");
    assert!(
        lines.iter().any(|v| v["event"] == "library"
            && v["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("zookeeper"))),
        "{lines:?}"
    );
}

/// The TTL-node path: a server with `zookeeper.extendedTypesEnabled=true`.
/// Handles are TTL nodes there, and the conformance tests of handles and
/// `--lock-at-least` pass as on the stock server.
#[path = "zookeeper/zookeeper_ttl.rs"]
mod zookeeper_ttl;

/// Handles on a stock server, and kazoo's and Curator's recipes.
#[path = "zookeeper/recipes.rs"]
mod recipes;

/// Liveness (issue 20), written once in `common/liveness.rs`.
#[path = "zookeeper/liveness.rs"]
mod liveness;

/// A release while the server of dlock's session is frozen (an ensemble):
/// the node is deleted through another server within about
/// `--connect-timeout`, instead of staying for the session timeout
/// (before: "could not release", and the node stayed 10 s); and a holder
/// whose session's server freezes for 7 s (TTL 10 s) keeps its lock: the
/// client moves the session to another server (issue 20).
#[test]
fn release_with_the_connected_server_frozen() {
    let env = Env::zk_ensemble();
    let e = env.ensemble.as_ref().unwrap();
    let stop = env.path("stop");
    let script = format!("while [ ! -e {} ]; do sleep 0.02; done", stop.display());
    let mut h = Reaped(
        env.cmd(&[
            "--connect-timeout",
            "3s",
            "run",
            "--ttl",
            "10s",
            "--key",
            "fz",
        ])
        .args(["--", "sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap(),
    );
    wait_for(Duration::from_secs(20), "held", || env.held("fz"));
    std::thread::sleep(Duration::from_millis(500));
    let conns: Vec<usize> = (0..3)
        .map(|i| {
            e.four_letter(i, "cons")
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("sid=0x"))
                .count()
        })
        .collect();
    eprintln!("connections per server: {conns:?}");
    let i = conns.iter().position(|c| *c > 0).unwrap();
    e.signal(i, Signal::SIGSTOP);
    std::fs::write(&stop, "").unwrap();
    let t = Instant::now();
    let rc = wait_timeout(&mut h, Duration::from_secs(30));
    let took = t.elapsed();
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(h.stderr.as_mut().unwrap(), &mut err);
    eprintln!("release with the session's server frozen: {rc} after {took:?}");
    assert_eq!(rc, 0, "{err}");
    assert!(!err.contains("could not release"), "{err}");
    assert!(took < Duration::from_secs(7), "{took:?}: {err}");
    let gone = || {
        e.cli(&["ls", "/dlock/fz"])
            .stdout
            .windows(5)
            .all(|w| w != b"lock-")
    };
    assert!(gone(), "the node is gone as the holder exits");
    e.signal(i, Signal::SIGCONT);
    // Renewals: the session moves to another server and lives on; the
    // holder runs past a server frozen for longer than half its TTL.
    let stop = env.path("stop2");
    let script = format!("while [ ! -e {} ]; do sleep 0.02; done", stop.display());
    let mut h = Reaped(
        env.cmd(&[
            "--connect-timeout",
            "3s",
            "run",
            "--ttl",
            "10s",
            "--key",
            "fz2",
        ])
        .args(["--", "sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap(),
    );
    wait_for(Duration::from_secs(20), "held", || env.held("fz2"));
    std::thread::sleep(Duration::from_millis(500));
    let i = (0..3)
        .find(|i| {
            e.four_letter(*i, "cons")
                .unwrap_or_default()
                .lines()
                .any(|l| l.contains("sid=0x"))
        })
        .unwrap();
    e.signal(i, Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(7));
    std::fs::write(&stop, "").unwrap();
    let rc = wait_timeout(&mut h, Duration::from_secs(30));
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(h.stderr.as_mut().unwrap(), &mut err);
    e.signal(i, Signal::SIGCONT);
    eprintln!("a holder past its session's server frozen 7 s: {rc}: {err}");
    assert_eq!(rc, 0, "{err}");
}

/// Fair queues and slots beyond the shared conformance (issue 23).
#[path = "zookeeper/queues.rs"]
mod queues;

/// `run --limit 2 --lock-at-least 3s` takes slot 0 and returns; its node,
/// left to lapse, keeps slot 0 (status shows it), so the next holder gets
/// slot 1; once it has lapsed, slot 0 is free again. A handle shows its
/// slot too.
fn lapsing_holder_keeps_its_slot(env: &Env) {
    let key = format!("lapsing-{}", std::process::id());
    let slot = |extra: &[&str]| {
        let mut args = vec!["run", "--limit", "2", "--key", &key];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sh", "-c", "echo \"$DLOCK_SLOT\""]);
        let out = env.run(&args);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        stdout(&out).trim().to_string()
    };
    assert_eq!(slot(&["--lock-at-least", "3s"]), "0");
    // The lapse was written before the run returned: its 3 s are over
    // 3 s from now at the latest.
    let t = Instant::now();
    let st = env.status_json(&[&key]);
    assert_eq!(st[0]["holders"][0]["slot"], 0, "{st}");
    assert_eq!(slot(&[]), "1");
    while t.elapsed() < Duration::from_millis(3300) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(slot(&[]), "0");
    let out = env.run(&["acquire", "--limit", "2", "--ttl", "30s", "--key", &key]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let st = env.status_json(&[&key]);
    assert_eq!(st[0]["holders"][0]["slot"], 0, "{st}");
    let out = env.run(&["release", stdout(&out).trim()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}
