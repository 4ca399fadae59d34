//! Liveness on the queue backends (ZooKeeper, etcd), issue 20: a job is
//! never stopped, or held up, for nothing. Each test is written once here
//! and called by `tests/zookeeper.rs` and `tests/etcd.rs` with a server of
//! their own kind.
//!
//! - A waiter, holder or standby SIGKILLed on this machine never delays
//!   the next contender by more than 2 s (its session or lease would keep
//!   its entry for the TTL), and is never shown as a live holder or leader.
//! - A waiter across a server restart gets the lock within the holder's
//!   TTL + 3 s of the restart (it never queues behind its own entry).
//! - A server that accepts and never answers, and a closed port: 69 within
//!   `--connect-timeout` + 1 s, with and without `--wait`.
//! - A holder whose lease aged while it waited is never stopped (etcd's
//!   lease is granted before the wait).
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::*;

const LONG: Duration = Duration::from_secs(30);

fn key(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

fn waiters(env: &Env, k: &str) -> u64 {
    env.status_json(&[k])[0]["waiters"].as_u64().unwrap_or(0)
}

/// `dlock run --key K EXTRA -- sh -c 'until [ -e STOP ]...'`, once it holds.
fn hold_until(env: &Env, k: &str, extra: &[&str], stop: &Path) -> Child {
    let script = format!("while [ ! -e {} ]; do sleep 0.02; done", stop.display());
    let mut args = vec!["run", "--key", k];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", &script]);
    let c = env
        .cmd(&args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dlock");
    wait_for(LONG, &format!("{k} to be held"), || env.held(k));
    c
}

/// A waiter with the default TTL (30 s): its entry would outlive it that
/// long if nobody removed it.
fn waiter(env: &Env, k: &str, extra: &[&str]) -> Child {
    let mut args = vec!["run", "--key", k];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "true"]);
    env.cmd(&args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dlock")
}

fn kill(c: &mut Child) {
    signal(c.id(), Signal::SIGKILL);
    let _ = c.wait();
}

/// A waiter SIGKILLed while it waits (default TTL 30 s) delays the next
/// contender by less than 2 s: whether the next one queued after the kill
/// (it removes the dead entry at once) or before it (the dead waiter was
/// the entry it watched: its death wakes it), and with `--no-wait` too.
pub fn killed_waiter_never_delays_the_next(env: &Env) {
    for (i, next_first) in [false, true].into_iter().enumerate() {
        let k = key(&format!("killed-waiter{i}"));
        let stop = env.path(&format!("stop-kw{i}"));
        let mut h = hold_until(env, &k, &["--ttl", "20s"], &stop);
        let mut dead = waiter(env, &k, &[]);
        wait_for(LONG, "the waiter to queue", || waiters(env, &k) >= 1);
        let mut next = if next_first {
            let next = waiter(env, &k, &["--wait", "20s"]);
            wait_for(LONG, "the next to queue", || waiters(env, &k) >= 2);
            kill(&mut dead);
            next
        } else {
            kill(&mut dead);
            // Not queued yet: one look, and the dead entry is no holder.
            let out = env.run(&["run", "-n", "--key", &k, "--", "true"]);
            assert_eq!(code(&out), 75, "{}", stderr(&out));
            waiter(env, &k, &["--wait", "20s"])
        };
        std::thread::sleep(Duration::from_millis(300));
        let st = env.status_json(&[&k]);
        assert_eq!(st[0]["holders"].as_array().unwrap().len(), 1, "{st}");
        assert_eq!(st[0]["holders"][0]["dead"], false, "{st}");
        std::fs::write(&stop, "").unwrap();
        let released = Instant::now();
        assert_eq!(wait_timeout(&mut h, LONG), 0);
        assert_eq!(wait_timeout(&mut next, LONG), 0, "the next contender");
        let took = released.elapsed();
        eprintln!("killed waiter (next queued first: {next_first}): the next waited {took:?}");
        assert!(
            took < Duration::from_secs(2),
            "a killed waiter ahead delayed the next by {took:?}"
        );
    }
}

fn candidate(env: &Env, k: &str) -> Reaped {
    Reaped(
        env.cmd(&[
            "elect",
            "--ttl",
            "30s",
            "--key",
            k,
            "--",
            "sh",
            "-c",
            "trap 'exit 0' TERM; while :; do sleep 0.05; done",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    )
}

fn leader(env: &Env, k: &str) -> (i32, serde_json::Value) {
    let out = env.run(&["leader", k, "--json"]);
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (code(&out), v)
}

fn names(v: &serde_json::Value, pid: u32) -> bool {
    v["value"]
        .as_str()
        .is_some_and(|s| s.ends_with(&format!(" pid {pid}")))
}

/// `dlock elect`: a standby SIGKILLed while it waits is never named leader
/// by `dlock leader` once the leader resigns (its entry is first, marked
/// dead), and the next candidate leads within 2 s.
pub fn killed_standby_is_never_named_leader(env: &Env) {
    let k = key("killed-standby");
    let mut lead = candidate(env, &k);
    wait_for(LONG, "a leader", || leader(env, &k).0 == 0);
    assert!(names(&leader(env, &k).1, lead.id()));
    let mut standby = candidate(env, &k);
    wait_for(LONG, "the standby to queue", || waiters(env, &k) >= 1);
    let dead = standby.id();
    kill(&mut standby.0);
    signal(lead.id(), Signal::SIGTERM);
    assert_eq!(wait_timeout(&mut lead.0, LONG), 0);
    // Nobody campaigns now: the dead standby's entry is first, and dead.
    let st = env.status_json(&[&k]);
    if let Some(h) = st[0]["holders"].as_array().and_then(|h| h.first()) {
        assert_eq!(h["dead"], true, "{st}");
    }
    let (c, v) = leader(env, &k);
    assert_eq!((c, &v), (75, &serde_json::Value::Null), "{st}");
    let t = Instant::now();
    let next = candidate(env, &k);
    wait_for(LONG, "the next candidate to lead", || {
        let (c, v) = leader(env, &k);
        assert!(!names(&v, dead), "the dead standby named leader: {v}");
        c == 0 && names(&v, next.id())
    });
    let took = t.elapsed();
    eprintln!("killed standby: the next candidate led after {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}

/// A waiter across a server restart (SIGKILL, 2 s down) gets the lock
/// within the holder's TTL (4 s) + 3 s of the restart: it never queues
/// behind its own entry from before.
pub fn waiter_gets_the_lock_soon_after_a_restart(env: &mut Env) {
    let k = key("restart-waiter");
    let mut h = env
        .cmd(&["run", "--ttl", "4s", "--key", &k, "--", "sleep", "2"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(LONG, "the holder to hold", || env.held(&k));
    let mut w = env
        .cmd(&["run", "--wait", "45s", "--key", &k, "--", "true"])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(LONG, "the waiter to queue", || waiters(env, &k) >= 1);
    let down = Duration::from_secs(2);
    let restarted = Instant::now() + down;
    env.restart_server(down);
    let code_w = wait_timeout(&mut w, Duration::from_secs(60));
    let took = restarted.elapsed();
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(w.stderr.as_mut().unwrap(), &mut err);
    assert_eq!(code_w, 0, "{err}");
    eprintln!("waiter across a restart: the lock {took:?} after the restart");
    assert!(took < Duration::from_secs(7), "{took:?}: {err}");
    let code_h = wait_timeout(&mut h, LONG);
    assert!(code_h == 0 || code_h == 74, "the holder: {code_h}");
}

/// A server that accepts connections and never answers (a listener that
/// never accepts), and a closed port: 69 within `--connect-timeout` + 1 s,
/// with and without `--wait`, never "full" (75).
pub fn silent_and_closed_servers_are_down(scheme: &str) {
    let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let ports = [
        ("silent", mute.local_addr().unwrap().port()),
        ("closed", closed),
    ];
    for (what, port) in ports {
        let env = Env::bare(format!("{scheme}://127.0.0.1:{port}"));
        for wait in [&[][..], &["--wait", "6s"][..]] {
            let mut args = vec!["--connect-timeout", "2s", "run", "--key", "k"];
            args.extend_from_slice(wait);
            args.extend_from_slice(&["--", "true"]);
            let t = Instant::now();
            let mut c = env
                .cmd(&args)
                .stdin(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let rc = wait_timeout(&mut c, Duration::from_secs(20));
            let took = t.elapsed();
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(c.stderr.as_mut().unwrap(), &mut err);
            eprintln!("{scheme} {what} {wait:?}: {rc} after {took:?}");
            assert_eq!(rc, 69, "{what} {wait:?}: {err}");
            assert!(took < Duration::from_secs(3), "{what} {wait:?}: {took:?}");
        }
    }
    drop(mute);
}

/// `dlock elect --ttl 3s`: after each failover the new leader keeps its
/// leadership (its lease aged while it stood by: it is renewed at once,
/// never reported lost). Three candidates, two graceful hand-overs, each
/// new leader watched for longer than the TTL: three terms in all, and
/// every term's body ends only when its dlock was stopped.
pub fn elect_with_a_short_ttl_never_flaps(env: &Env) {
    let k = key("no-flap");
    let log = env.path("no-flap.log");
    let body = |id: usize| {
        format!(
            "echo start {id} >> {log}; trap 'echo end {id} >> {log}; exit 0' TERM; \
             while :; do sleep 0.05; done",
            log = log.display()
        )
    };
    let mut cands: Vec<Reaped> = (0..3)
        .map(|i| {
            Reaped(
                env.cmd(&[
                    "elect",
                    "--ttl",
                    "3s",
                    "--key",
                    &k,
                    "--",
                    "sh",
                    "-c",
                    &body(i),
                ])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
            )
        })
        .collect();
    let lines = || std::fs::read_to_string(&log).unwrap_or_default();
    let starts = || -> Vec<usize> {
        lines()
            .lines()
            .filter_map(|l| l.strip_prefix("start ")?.parse().ok())
            .collect()
    };
    let ends = || lines().lines().filter(|l| l.starts_with("end ")).count();
    for term in 1..=3 {
        wait_for(LONG, &format!("leader number {term}"), || {
            starts().len() >= term
        });
        // Longer than the TTL: a flap would end this term meanwhile.
        std::thread::sleep(Duration::from_secs(4));
        assert_eq!(starts().len(), term, "a leader lost its term: {}", lines());
        assert_eq!(ends(), term - 1, "a leader lost its term: {}", lines());
        if term < 3 {
            let leader = starts()[term - 1];
            signal(cands[leader].id(), Signal::SIGTERM);
            assert_eq!(wait_timeout(&mut cands[leader], LONG), 0);
        }
    }
}
