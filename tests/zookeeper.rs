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
mod zookeeper_ttl {
    #[allow(unused_imports)]
    use crate::common::*;
    use crate::common::{servers_zk, suite};

    fn env() -> Env {
        let z = servers_zk::Zookeeper::start_with_ttl();
        let url = z.url();
        Env {
            zookeeper: Some(z),
            ..Env::bare(url)
        }
    }

    /// This binary's TTL-node server, in the test's namespace.
    fn shared(test: &str) -> Env {
        Env::shared("zookeeper_ttl", env, &format!("zookeeper_ttl.{test}"))
    }

    /// A lapsing holder (`--lock-at-least`) keeps its slot, and a handle
    /// shows its slot, though a TTL node's record keeps none.
    #[test]
    fn a_lapsing_holder_keeps_its_slot() {
        crate::lapsing_holder_keeps_its_slot(&shared("a_lapsing_holder_keeps_its_slot"));
    }

    crate::common::suite::suite_tests!(
        shared,
        stale_handle_cannot_release_new_holder,
        renew_extends_a_handle,
        renew_ttl_is_applied_or_refused,
        lock_at_least_keeps_the_lock,
        acquire_leases_show_as_handles,
    );

    /// A handle's node is a TTL node (its data says so: the server shows
    /// clients a TTL node's `ephemeralOwner` as 0), whose TTL ZooKeeper
    /// cannot change (`renew --ttl` another is refused), and which the
    /// server deletes once its TTL has run out, with no dlock around.
    #[test]
    fn the_server_deletes_an_expired_handle() {
        let env = env();
        let z = env.zookeeper.as_ref().unwrap();
        let ls = |key: &str| stdout(&z.cli(&["ls", &format!("/dlock/{key}")]));
        let out = env.run(&["acquire", "--key", "long", "--ttl", "30s"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let h = stdout(&out).trim().to_string();
        let listing = ls("long");
        let name = listing
            .rsplit('[')
            .next()
            .and_then(|l| l.split(']').next())
            .unwrap_or_default()
            .trim()
            .to_string();
        assert!(name.contains("-lock-"), "{listing}");
        let data = z.get(&format!("/dlock/long/{name}")).unwrap_or_default();
        assert!(
            data.ends_with("|30000||T"),
            "not a TTL node of 30 s: {data}"
        );
        let out = env.run(&["renew", &h, "--ttl", "1h"]);
        assert_eq!(code(&out), 64, "{}", stderr(&out));
        assert_eq!(code(&env.run(&["renew", &h])), 0);
        // A --lock-at-least lapse is a TTL node too.
        let out = env.run(&[
            "run",
            "--lock-at-least",
            "20s",
            "--key",
            "least",
            "--",
            "true",
        ]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let listing = ls("least");
        let name = listing
            .rsplit('[')
            .next()
            .and_then(|l| l.split(']').next())
            .unwrap_or_default()
            .trim()
            .to_string();
        let data = z.get(&format!("/dlock/least/{name}")).unwrap_or_default();
        assert!(data.ends_with("|T"), "not a TTL node: {name}: {data}");
        // Short-lived: gone without any dlock call after the acquire.
        let out = env.run(&["acquire", "--key", "short", "--ttl", "500ms"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        wait_for(
            std::time::Duration::from_secs(15),
            "the server to delete the TTL node",
            || !ls("short").contains("-lock-"),
        );
    }
}

/// `?recipe=kazoo` with an URL: the same URL for every step, `kazoo`'s names.
fn kazoo_env(env: &Env) -> Env {
    Env::bare(format!("{}?recipe=kazoo", env.url))
}

/// A default kazoo `Lock` (no `extra_lock_patterns`) tries `/dlock/KEY`
/// once without blocking: whether it got it (released at once).
fn kazoo_try(env: &Env, key: &str) -> bool {
    kazoo_try_as(env, "Lock", key)
}

/// An unknown recipe or URL parameter is a usage error.
#[test]
fn recipe_parameter_is_checked() {
    let env = Env::bare("zk://127.0.0.1:1?recipe=consul".into());
    let out = env.run(&["status"]);
    assert_eq!(code(&out), 64, "{}", stderr(&out));
    assert!(stderr(&out).contains("recipe"), "{}", stderr(&out));
    let env = Env::bare("zk://127.0.0.1:1?lock=kazoo".into());
    assert_eq!(code(&env.run(&["status"])), 64);
}

/// On a stock server (no TTL nodes): `acquire`, `renew` and `release` work,
/// in either recipe's naming; a default kazoo `Lock` is excluded by a
/// `?recipe=kazoo` handle.
#[test]
fn handles_on_a_stock_server() {
    let env = Env::zookeeper();
    for (e, key) in [(&env, "h-curator"), (&kazoo_env(&env), "h-kazoo")] {
        let out = e.run(&["acquire", "--key", key, "--ttl", "10m"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let h = stdout(&out).trim().to_string();
        assert!(e.held(key));
        let st = e.status_json(&[key]);
        assert!(st[0]["holders"][0]["expires_at"].is_string(), "{st}");
        if key == "h-kazoo" {
            assert!(!kazoo_try(&env, key), "kazoo got a lock a handle holds");
        }
        // Renewed through the plain URL: dlock finds its node in either naming.
        let out = env.run(&["renew", &h, "--ttl", "20m"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let out = e.run(&["release", &h]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert!(!e.held(key));
        if key == "h-kazoo" {
            assert!(kazoo_try(&env, key), "the lock was not freed for kazoo");
        }
    }
}

/// `run --lock-at-least` returns as soon as the command ends and leaves
/// the lock held for its minimum: dlock and a default kazoo `Lock` (with
/// `?recipe=kazoo`) both find it held, then it lapses.
#[test]
fn lock_at_least_returns_at_once_and_holds_for_its_minimum() {
    let env = Env::zookeeper();
    for e in [&env, &kazoo_env(&env)] {
        let t = Instant::now();
        let out = e.run(&[
            "run",
            "--lock-at-least",
            "3s",
            "--key",
            "cron",
            "--",
            "true",
        ]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "run --lock-at-least 3s took {:?}",
            t.elapsed()
        );
        let out = e.run(&["run", "-n", "--key", "cron", "--", "true"]);
        assert_eq!(code(&out), 75, "{}", stderr(&out));
        if e.url.contains("recipe=kazoo") {
            assert!(
                !kazoo_try(&env, "cron"),
                "kazoo got the lock within the minimum"
            );
        }
        let st = e.status_json(&["cron"]);
        assert_eq!(st[0]["held"], true, "{st}");
        assert!(st[0]["holders"][0]["expires_at"].is_string(), "{st}");
        // A waiter gets it when the minimum is over (not before).
        let out = e.run(&["run", "--wait", "10s", "--key", "cron", "--", "true"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(2900) && took < Duration::from_secs(6),
            "the waiter got the lock after {took:?}"
        );
        assert!(!e.held("cron"));
    }
}

/// A handle's node never renewed (its `dlock acquire` long gone) is
/// deleted, once its TTL has run out on the server's clock, by the next
/// dlock contender (which gets the lock), by one already waiting behind it,
/// or by `status`. A foreign client finds it in its way until then.
#[test]
fn an_expired_handle_is_deleted_by_the_next_contender() {
    let env = Env::zookeeper();
    // The next contender.
    let out = env.run(&["acquire", "--key", "x", "--ttl", "500ms"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    std::thread::sleep(Duration::from_millis(700));
    let out = env.run(&["run", "-n", "--key", "x", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // A waiter already queued behind it.
    let out = env.run(&["acquire", "--key", "x", "--ttl", "1500ms"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let old = stdout(&out).trim().to_string();
    let t = Instant::now();
    let out = env.run(&["run", "--wait", "10s", "--key", "x", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        t.elapsed() >= Duration::from_millis(1200) && t.elapsed() < Duration::from_secs(4),
        "the waiter got the lock after {:?}",
        t.elapsed()
    );
    assert_eq!(
        code(&env.run(&["renew", &old])),
        74,
        "an expired handle renewed"
    );
    // Expired, not yet deleted: a default kazoo Lock waits behind it until
    // a dlock (here `status`) deletes it.
    let kz = kazoo_env(&env);
    let out = kz.run(&["acquire", "--key", "y", "--ttl", "500ms"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let h = stdout(&out).trim().to_string();
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        !kazoo_try(&env, "y"),
        "nobody deleted it yet: kazoo must wait"
    );
    // Its own handle cannot release it either: it expired.
    assert_eq!(code(&kz.run(&["release", &h])), 74);
    let out = kz.run(&["acquire", "--key", "y", "--ttl", "500ms"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    std::thread::sleep(Duration::from_millis(700));
    assert!(!kazoo_try(&env, "y"));
    assert!(!kz.held("y"), "status shows an expired handle as held");
    assert!(
        kazoo_try(&env, "y"),
        "status did not delete the expired node"
    );
}

/// Torture: dlock clients with `?recipe=kazoo` and default kazoo `Lock`s
/// (no `extra_lock_patterns`) on one key: never two critical sections at once.
#[test]
fn torture_dlock_with_recipe_kazoo_and_default_kazoo_locks() {
    use common::torture;
    let env = Env::zookeeper();
    let hosts = env.url.trim_start_matches("zk://").to_string();
    let dir = env.path("torture");
    std::fs::create_dir_all(&dir).unwrap();
    let (dlocks, kazoos, runs) = (3, 2, 8);
    let mut py: Vec<Reaped> = (dlocks..dlocks + kazoos)
        .map(|i| {
            let log = dir.join(format!("client-{i}.log"));
            let script = format!(
                "import os,time\nfrom kazoo.client import KazooClient\n\
                 zk=KazooClient(hosts='{hosts}')\nzk.start()\nl=zk.Lock('/dlock/mix','kazoo')\n\
                 f=open('{log}','a')\n\
                 for i in range({runs}):\n\
                 \x20   with l:\n\
                 \x20       f.write('B - %d %d\\n'%(os.getpid(),time.time_ns()));f.flush()\n\
                 \x20       time.sleep(0.05)\n\
                 \x20       f.write('E - %d %d\\n'%(os.getpid(),time.time_ns()));f.flush()\n\
                 zk.stop()\n",
                log = log.display()
            );
            Reaped(
                std::process::Command::new("python3")
                    .args(["-c", &script])
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    let mut cfg = torture::Config {
        dlock: DLOCK.into(),
        backend: format!("{}?recipe=kazoo", env.url),
        key: "mix".into(),
        clients: dlocks,
        runs,
        hold: Duration::from_millis(50),
        ttl: Duration::from_secs(5),
        limit: 1,
        shared: 0.0,
        faults: vec![],
        fault_rate: 0.0,
        dir: dir.clone(),
        seed: 7,
    };
    let r = torture::run(&cfg);
    assert_eq!(r.exit_codes.get(&0).copied(), Some(dlocks * runs), "{r:?}");
    for p in py.iter_mut() {
        assert_eq!(
            wait_timeout(p, Duration::from_secs(60)),
            0,
            "a kazoo client failed"
        );
    }
    cfg.clients = dlocks + kazoos;
    let mut all = torture::Report::default();
    torture::check(&cfg, &mut all);
    assert_eq!(all.intervals, (dlocks + kazoos) * runs, "{all:?}");
    assert!(all.overlaps.is_empty(), "overlaps: {:?}", all.overlaps);
    assert!(all.ok(), "{all:?}");
    assert_eq!(all.max_concurrent, 1);
}

/// A `dlock acquire` waiting longer than its TTL keeps its queue node
/// alive (the dlock waiting behind it does not delete it as expired), gets
/// the lock, and the lease then runs out after its TTL unless renewed.
#[test]
fn a_waiting_handle_keeps_its_node_alive() {
    let env = Env::zookeeper();
    let mut holder = env.spawn(&["run", "--key", "w", "--", "sleep", "2"]);
    wait_for(Duration::from_secs(10), "w to be held", || env.held("w"));
    let t = Instant::now();
    let acquire = env
        .cmd(&["acquire", "--key", "w", "--ttl", "600ms", "--wait", "10s"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let next = env
        .cmd(&["run", "--wait", "10s", "--key", "w", "--", "true"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = acquire.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "acquired after {:?}, while the run held it",
        t.elapsed()
    );
    let got = Instant::now();
    let out = next.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        got.elapsed() >= Duration::from_millis(400),
        "the next waiter did not wait for the handle's TTL: {:?}",
        got.elapsed()
    );
    assert_eq!(wait_timeout(&mut holder, Duration::from_secs(10)), 0);
}

/// An expired handle ahead of a foreign waiter ahead of a dlock waiter:
/// the dlock waiter deletes it (it checks every node ahead of it, not only
/// the one it watches), so neither waits for ever.
#[test]
fn a_dlock_waiter_frees_a_foreign_waiter_stuck_behind_an_expired_handle() {
    let env = Env::zookeeper();
    let kz = kazoo_env(&env);
    let out = kz.run(&["acquire", "--key", "z", "--ttl", "2s"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let hosts = env.url.trim_start_matches("zk://").to_string();
    let script = format!(
        "import time\nfrom kazoo.client import KazooClient\nzk=KazooClient(hosts='{hosts}')\nzk.start()\n\
         l=zk.Lock('/dlock/z','kazoo')\nprint('waiting',flush=True)\nl.acquire(timeout=20)\n\
         print('held',flush=True)\ntime.sleep(0.3)\nl.release()\nzk.stop()\n"
    );
    let mut py = Reaped(
        std::process::Command::new("python3")
            .args(["-c", &script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(py.stdout.take().unwrap()));
    assert_eq!(lines.next().unwrap().unwrap(), "waiting");
    // Let kazoo queue up behind the handle.
    wait_for(Duration::from_secs(10), "kazoo to queue", || {
        kz.status_json(&["z"])[0]["waiters"].as_u64() == Some(1)
    });
    // Still the handle's (not expired yet: `status` would have deleted it).
    let st = kz.status_json(&["z"]);
    assert_eq!(st[0]["holders"][0]["handle"], true, "{st}");
    let t = Instant::now();
    let out = kz.run(&["run", "--wait", "15s", "--key", "z", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(lines.next().unwrap().unwrap(), "held");
    assert_eq!(wait_timeout(&mut py, Duration::from_secs(10)), 0);
}

/// A python script that holds `/dlock/KEY` with kazoo, doing `take` (which
/// must succeed at once) and printing `held`, until `stop` exists.
fn kazoo_hold(env: &Env, take: &str, stop: &std::path::Path) -> Reaped {
    let hosts = env.url.trim_start_matches("zk://").to_string();
    let script = format!(
        "import os,time,uuid\nfrom kazoo.client import KazooClient\nzk=KazooClient(hosts='{hosts}')\n\
         zk.start()\n{take}\nprint('held',flush=True)\n\
         while not os.path.exists('{stop}'): time.sleep(0.02)\nzk.stop()\n",
        stop = stop.display()
    );
    python_holder("kazoo", &script)
}

/// Whether a kazoo `class` (`ReadLock`, `WriteLock`) gets `/dlock/KEY`
/// at once (released at once).
fn kazoo_try_as(env: &Env, class: &str, key: &str) -> bool {
    let hosts = env.url.trim_start_matches("zk://").to_string();
    let script = format!(
        "from kazoo.client import KazooClient\nzk=KazooClient(hosts='{hosts}')\nzk.start()\n\
         l=zk.{class}('/dlock/{key}','kazoo')\ngot=l.acquire(blocking=False)\nprint(got)\n\
         if got: l.release()\nzk.stop()\n"
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        said == "True" || said == "False",
        "{said}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    said == "True"
}

/// The modes `status --json` shows for a key's holders.
fn modes_of(env: &Env, key: &str) -> Vec<String> {
    env.status_json(&[key])[0]["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["mode"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// With `?recipe=kazoo`, dlock's readers are kazoo `ReadLock`s and its
/// writers kazoo `Lock`s/`WriteLock`s: each side's writers keep the other's
/// readers out, readers share, and a reader waiting behind a kazoo
/// `WriteLock` gets in promptly once it is released.
#[test]
fn kazoo_read_write_locks_interoperate_with_recipe_kazoo() {
    let env = Env::zookeeper();
    let kz = kazoo_env(&env);
    // A kazoo WriteLock keeps a dlock reader out, then lets it in.
    let stop = env.path("kw-stop");
    let mut w = kazoo_hold(
        &env,
        "l=zk.WriteLock('/dlock/kw','kazoo')\nassert l.acquire(blocking=False)",
        &stop,
    );
    let out = kz.run(&["run", "-s", "-n", "--key", "kw", "--", "true"]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    assert_eq!(modes_of(&kz, "kw"), ["exclusive"]);
    let mut r = kz.spawn(&["run", "-s", "--wait", "15s", "--key", "kw", "--", "true"]);
    wait_for(Duration::from_secs(10), "the reader to queue", || {
        kz.status_json(&["kw"])[0]["waiters"].as_u64() == Some(1)
    });
    std::fs::write(&stop, "").unwrap();
    let t = Instant::now();
    assert_eq!(wait_timeout(&mut w, Duration::from_secs(10)), 0);
    assert_eq!(wait_timeout(&mut r, Duration::from_secs(10)), 0);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // A kazoo ReadLock shares with a dlock reader and keeps a dlock writer out.
    let stop = env.path("kr-stop");
    let mut rl = kazoo_hold(
        &env,
        "l=zk.ReadLock('/dlock/kr','kazoo')\nassert l.acquire(blocking=False)",
        &stop,
    );
    let out = kz.run(&["run", "-s", "-n", "--key", "kr", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = kz.run(&["run", "-n", "--key", "kr", "--", "true"]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    assert_eq!(modes_of(&kz, "kr"), ["shared"]);
    std::fs::write(&stop, "").unwrap();
    assert_eq!(wait_timeout(&mut rl, Duration::from_secs(10)), 0);
    // A dlock reader: a kazoo ReadLock shares it, a kazoo WriteLock waits.
    let mut h = kz.spawn(&["run", "-s", "--key", "dr", "--", "sleep", "30"]);
    wait_for(Duration::from_secs(10), "dlock to hold", || kz.held("dr"));
    assert!(
        kazoo_try_as(&env, "ReadLock", "dr"),
        "kazoo's reader was kept out"
    );
    assert!(
        !kazoo_try_as(&env, "WriteLock", "dr"),
        "kazoo's writer got in"
    );
    signal(h.id(), Signal::SIGTERM);
    assert_eq!(wait_timeout(&mut h, Duration::from_secs(10)), 143);
    // A dlock writer keeps a kazoo ReadLock out.
    let mut h = kz.spawn(&["run", "--key", "dw", "--", "sleep", "30"]);
    wait_for(Duration::from_secs(10), "dlock to hold", || kz.held("dw"));
    assert!(
        !kazoo_try_as(&env, "ReadLock", "dw"),
        "kazoo's reader got in"
    );
    signal(h.id(), Signal::SIGTERM);
    assert_eq!(wait_timeout(&mut h, Duration::from_secs(10)), 143);
    assert!(kazoo_try_as(&env, "ReadLock", "dw"));
}

/// In Curator's layout (the default), dlock's readers are named like the
/// read side of `InterProcessReadWriteLock` (`-__READ__`), and dlock reads
/// its nodes: a write-side node (`-__WRIT__`) keeps dlock's readers out, a
/// read-side node lets them in and keeps dlock's writers out. (Curator is
/// not at hand: the nodes are made as Curator names them, with kazoo.)
#[test]
fn curator_read_write_lock_nodes_are_read_as_curator_writes_them() {
    let env = Env::zookeeper();
    let node = |side: &str| {
        format!(
            "zk.ensure_path('/dlock/cw')\n\
             zk.create('/dlock/cw/_c_%s-{side}' % uuid.uuid4(), b'10.0.0.1', ephemeral=True, sequence=True)"
        )
    };
    let stop = env.path("cw-stop");
    let mut w = kazoo_hold(&env, &node("__WRIT__"), &stop);
    let out = env.run(&["run", "-s", "-n", "--key", "cw", "--", "true"]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    assert_eq!(modes_of(&env, "cw"), ["exclusive"]);
    std::fs::write(&stop, "").unwrap();
    assert_eq!(wait_timeout(&mut w, Duration::from_secs(10)), 0);
    let stop = env.path("cr-stop");
    let mut r = kazoo_hold(&env, &node("__READ__"), &stop);
    let out = env.run(&["run", "-s", "-n", "--key", "cw", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = env.run(&["run", "-n", "--key", "cw", "--", "true"]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    assert_eq!(modes_of(&env, "cw"), ["shared"]);
    // dlock's own reader is a `-__READ__` node beside it.
    let mut h = env.spawn(&["run", "-s", "--key", "cw", "--", "sleep", "30"]);
    wait_for(Duration::from_secs(10), "two readers", || {
        modes_of(&env, "cw").len() == 2
    });
    let z = env.zookeeper.as_ref().unwrap();
    let ls = stdout(&z.cli(&["ls", "/dlock/cw"]));
    assert_eq!(ls.matches("-__READ__").count(), 2, "{ls}");
    signal(h.id(), Signal::SIGTERM);
    assert_eq!(wait_timeout(&mut h, Duration::from_secs(10)), 143);
    std::fs::write(&stop, "").unwrap();
    assert_eq!(wait_timeout(&mut r, Duration::from_secs(10)), 0);
}

/// Shared handles on a stock server each live by their own TTL: one left
/// to expire is gone (its renewal says so) while the renewed one still
/// keeps a writer out. A shared `--lock-at-least` lapse stays shared.
#[test]
fn shared_handles_renew_and_lapse_on_their_own() {
    let env = Env::zookeeper();
    let out = env.run(&["acquire", "-s", "--key", "sh", "--ttl", "1500ms"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let short = stdout(&out).trim().to_string();
    let out = env.run(&["acquire", "-s", "--key", "sh", "--ttl", "20s"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let long = stdout(&out).trim().to_string();
    assert_eq!(modes_of(&env, "sh"), ["shared", "shared"]);
    std::thread::sleep(Duration::from_millis(1800));
    assert_eq!(
        code(&env.run(&["renew", &short])),
        74,
        "an expired handle renewed"
    );
    let out = env.run(&["renew", &long]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(modes_of(&env, "sh"), ["shared"]);
    let out = env.run(&["run", "-n", "--key", "sh", "--", "true"]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    let out = env.run(&["release", &long]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(!env.held("sh"));
    let out = env.run(&[
        "run",
        "-s",
        "--lock-at-least",
        "3s",
        "--key",
        "sh",
        "--",
        "true",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(modes_of(&env, "sh"), ["shared"]);
    let out = env.run(&["run", "-s", "-n", "--key", "sh", "--", "true"]);
    assert_eq!(
        code(&out),
        0,
        "a reader beside a shared lapse: {}",
        stderr(&out)
    );
    let out = env.run(&["run", "-n", "--key", "sh", "--", "true"]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
}

/// Liveness (issue 20), written once in `common/liveness.rs`.
mod liveness {
    use super::common::liveness;
    use super::common::*;

    fn shared() -> Env {
        Env::shared_here("Env::zookeeper()", Env::zookeeper)
    }

    #[test]
    fn elect_with_a_short_ttl_never_flaps() {
        liveness::elect_with_a_short_ttl_never_flaps(&shared());
    }

    // It restarts the server: a server of its own.
    #[test]
    fn waiter_gets_the_lock_soon_after_a_restart() {
        liveness::waiter_gets_the_lock_soon_after_a_restart(&mut Env::zookeeper());
    }

    #[test]
    fn silent_and_closed_servers_are_down() {
        liveness::silent_and_closed_servers_are_down("zk");
    }

    /// "Full" is only what the server says: a ZooKeeper with its 60
    /// connections from our address taken (`maxClientCnxns`) closes ours at
    /// once, and a waiter waits that out like a busy lock (75 at the
    /// deadline, naming the cause; 0 once there is room), never 69.
    #[test]
    fn a_full_server_is_busy_not_down() {
        use std::time::Duration;
        let env = Env::zookeeper();
        let port = env.zookeeper.as_ref().unwrap().port;
        let hogs: Vec<std::net::TcpStream> = (0..60)
            .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        for _ in 0..3 {
            let out = env.run(&[
                "--connect-timeout",
                "2s",
                "run",
                "--wait",
                "2s",
                "--key",
                "f",
                "--",
                "true",
            ]);
            assert_eq!(code(&out), 75, "{}", stderr(&out));
            assert!(stderr(&out).contains("no room"), "{}", stderr(&out));
        }
        let mut w = Reaped(
            env.cmd(&[
                "--connect-timeout",
                "2s",
                "run",
                "--wait",
                "20s",
                "--key",
                "f",
            ])
            .args(["--", "true"])
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap(),
        );
        std::thread::sleep(Duration::from_secs(1));
        drop(hogs);
        assert_eq!(wait_timeout(&mut w, Duration::from_secs(30)), 0);
    }

    /// A waiter whose session expires while it waits (the server frozen
    /// past the session timeout) queues again in a new session and gets
    /// the lock; the holder, whose session expired too, exits 74 (before:
    /// the waiter exited 69, "session expired", with the server back).
    #[test]
    fn waiter_whose_session_expired_queues_again() {
        use nix::sys::signal::Signal;
        use std::time::{Duration, Instant};
        let env = Env::zookeeper();
        let zk = env.zookeeper.as_ref().unwrap();
        let mut h = Reaped(
            env.cmd(&["run", "--ttl", "2s", "--key", "x", "--", "sleep", "3"])
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_for(Duration::from_secs(20), "the holder", || env.held("x"));
        let mut w = Reaped(
            env.cmd(&[
                "run", "--ttl", "2s", "--wait", "30s", "--key", "x", "--", "true",
            ])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
        );
        wait_for(Duration::from_secs(20), "the waiter to queue", || {
            env.status_json(&["x"])[0]["waiters"].as_u64() == Some(1)
        });
        zk.signal(Signal::SIGSTOP);
        std::thread::sleep(Duration::from_secs(4));
        zk.signal(Signal::SIGCONT);
        let t = Instant::now();
        let rc = wait_timeout(&mut w, Duration::from_secs(30));
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(w.stderr.as_mut().unwrap(), &mut err);
        assert_eq!(rc, 0, "{err}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert_eq!(wait_timeout(&mut h, Duration::from_secs(30)), 74);
    }
}

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
mod queues {
    use super::common::*;
    use std::time::Duration;

    fn shared() -> Env {
        Env::shared_here("Env::zookeeper()", Env::zookeeper)
    }

    /// A slot whose holder is gone without letting go of its claim (a
    /// handle released from another process, a holder broken with
    /// `--force`) is free: the next holder takes it, lowest first.
    #[test]
    fn a_gone_holders_slot_is_taken_over() {
        crate::common::fair::gone_holders_slot_is_taken_over(&shared());
    }

    /// A lapsing holder (`--lock-at-least`) keeps its slot.
    #[test]
    fn a_lapsing_holder_keeps_its_slot() {
        super::lapsing_holder_keeps_its_slot(&shared());
    }

    /// Holders admitted at the same moment never share a slot: nine
    /// `--limit 3` runs started together, so slots free in twos and threes.
    #[test]
    fn semaphore_slots_are_never_shared() {
        crate::common::fair::slots_never_shared(&shared());
    }

    /// A key with a part ending in `@slots` would be another key's slot
    /// claims (`/NS/KEY@slots/S`): `x@slots/0` was refused by the server
    /// as "unavailable" (69) while `x --limit 2` held slot 0, and
    /// `x@slots` took the claims directory for its own. Refused with 64
    /// before connecting, for every command that names a key and on every
    /// backend; a key that merely holds the word is a key.
    #[test]
    fn a_key_that_would_be_slot_claims_is_refused() {
        let env = shared();
        let stop = env.path("stop");
        let script = format!("while [ ! -e {} ]; do sleep 0.02; done", stop.display());
        let mut h = Reaped(env.spawn(&[
            "run", "--limit", "2", "--key", "x", "--", "sh", "-c", &script,
        ]));
        wait_for(Duration::from_secs(10), "x to be held", || env.held("x"));
        let sqlite = Env::sqlite();
        let down = Env::bare("redis://127.0.0.1:1".to_string());
        for k in ["x@slots", "x@slots/0", "a/x@slots/b"] {
            for args in [
                vec!["run", "-n", "--key", k, "--", "true"],
                vec!["acquire", "-n", "--key", k],
                vec!["elect", "--no-wait", "--key", k, "--", "true"],
                vec!["status", k],
                vec!["leader", k],
                vec!["release", "--force", "--key", k],
            ] {
                for e in [&env, &sqlite, &down] {
                    let out = e.run(&args);
                    assert_eq!(code(&out), 64, "{} {args:?}: {}", e.url, stderr(&out));
                    assert!(
                        stderr(&out).contains("reserved") && stderr(&out).contains("@slots"),
                        "{} {args:?}: {}",
                        e.url,
                        stderr(&out)
                    );
                }
            }
        }
        // x's claims are as they were: its holder still has slot 0, and the
        // next holder takes slot 1.
        let out = env.run(&[
            "run",
            "-n",
            "--limit",
            "2",
            "--key",
            "x",
            "--",
            "sh",
            "-c",
            "echo $DLOCK_SLOT",
        ]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert_eq!(stdout(&out).trim(), "1");
        std::fs::write(&stop, "").unwrap();
        assert_eq!(wait_timeout(&mut h, Duration::from_secs(10)), 0);
        for k in ["x@slotsy", "x-slots", "@slots-x", "slots"] {
            let out = env.run(&["run", "-n", "--key", k, "--", "true"]);
            assert_eq!(code(&out), 0, "{k}: {}", stderr(&out));
        }
    }

    /// A kazoo `Lock` waiting in line is listed in it, in its place,
    /// with what is known of it (kazoo's identifier, as the host).
    #[test]
    fn a_kazoo_waiter_is_in_the_queue() {
        let env = Env::zookeeper();
        let hosts = env.url.trim_start_matches("zk://").to_string();
        let stop = env.path("stop");
        let script = format!("while [ ! -e {} ]; do sleep 0.02; done", stop.display());
        let mut h = env.spawn(&["run", "--key", "job", "--", "sh", "-c", &script]);
        wait_for(Duration::from_secs(10), "dlock to hold", || env.held("job"));
        let py = format!(
            "from kazoo.client import KazooClient\nzk=KazooClient(hosts='{hosts}')\nzk.start()\n\
             l=zk.Lock('/dlock/job','kazoo-waiter', extra_lock_patterns=['-lock-'])\nl.acquire()\n\
             l.release()\nzk.stop()\n"
        );
        let mut kazoo = std::process::Command::new(servers::require("python3", "python3"))
            .args(["-c", &py])
            .spawn()
            .unwrap();
        crate::common::fair::queue_is(&env, "job", 1);
        let mut w = env.spawn(&["run", "--wait", "1m", "--key", "job", "--", "true"]);
        crate::common::fair::queue_is(&env, "job", 2);
        let st = env.status_json(&["job"]);
        let q = &st[0]["queue"];
        assert_eq!(q[0]["owner"], serde_json::Value::Null, "{st}");
        assert_eq!(q[0]["host"], "kazoo-waiter", "{st}");
        assert_eq!(q[0]["mode"], "exclusive", "{st}");
        assert!(q[0]["since"].is_string(), "the node's ctime: {st}");
        assert_eq!(q[1]["pid"], u64::from(w.id()), "{st}");
        assert_eq!(st[0]["waiters"], 2, "{st}");
        std::fs::write(&stop, "").unwrap();
        assert_eq!(wait_timeout(&mut h, Duration::from_secs(30)), 0);
        assert!(kazoo.wait().unwrap().success());
        assert_eq!(wait_timeout(&mut w, Duration::from_secs(30)), 0);
    }
}

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
