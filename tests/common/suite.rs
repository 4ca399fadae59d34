//! The backend conformance suite: every backend must pass all of it against
//! a real server. `conformance!(name, Env::...)` instantiates it.
#![allow(dead_code, unused_macros, unused_imports)]

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::torture::{self, Fault};
use super::*;

macro_rules! conformance {
    ($name:ident, $env:expr) => {
        mod $name {
            use $crate::common::suite;
            #[allow(unused_imports)]
            use $crate::common::*;
            /// A server of the test's own.
            fn private(_test: &str) -> Env {
                $env
            }
            /// This binary's server of the set-up, in the test's namespace.
            fn shared(test: &str) -> Env {
                Env::shared(
                    stringify!($env),
                    || $env,
                    &format!("{}.{test}", stringify!($name)),
                )
            }
            // They restart the server, or crowd it past its stock
            // connection limits (a crowd would starve the tests beside it).
            $crate::common::suite::suite_tests!(
                private,
                crowd_on_one_key_all_get_their_turn,
                server_restart_during_waits_is_ridden_out,
            );
            $crate::common::suite::suite_tests!(
                shared,
                child_status_and_environment,
                missing_and_unexecutable_commands,
                child_killed_by_signal_frees_lock,
                busy_no_wait_wait_and_conflict_code,
                waiter_wakes_promptly,
                contention_never_overlaps,
                fencing_tokens_increase,
                stale_handle_cannot_release_new_holder,
                renew_extends_a_handle,
                forced_release_stops_child_with_74,
                sigkill_of_dlock_kills_child_and_grandchild,
                signals_are_forwarded,
                semaphore_limit,
                multi_key_opposite_orders_do_not_deadlock,
                lock_at_least_keeps_the_lock,
                status_json_fields,
                frozen_dlock_child_is_stopped_before_expiry,
                faults_never_overlap,
                status_table_for_free_held_and_semaphore_keys,
                metrics_file_records_success_busy_and_loss,
                waiting_line_only_on_a_terminal,
                doctor_reports_every_check,
                status_counts_waiters,
                interrupted_waiter_does_not_delay_the_next,
                nested_keys_are_independent,
                lock_broken_before_the_next_renewal_is_reported,
                renew_ttl_is_applied_or_refused,
                status_rows_in_the_order_given,
                acquire_leases_show_as_handles,
                a_killed_holder_is_dead_and_the_next_takes_it_at_once,
                a_holder_that_waited_a_third_of_its_ttl_is_never_stopped,
                killed_waiter_never_delays_the_next,
                killed_standby_is_never_named_leader,
            );
        }
    };
}
pub(crate) use conformance;

macro_rules! suite_tests {
    ($env:ident, $($t:ident),* $(,)?) => {
        $(
            #[test]
            fn $t() {
                suite::$t(&mut $env(stringify!($t)));
            }
        )*
    };
}
pub(crate) use suite_tests;

const LONG: Duration = Duration::from_secs(20);

fn key(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// Start a holder of `k` that runs `sh -c script`, and wait until it holds.
fn hold(env: &Env, k: &str, extra: &[&str], script: &str) -> std::process::Child {
    let mut args = vec!["run", "--key", k];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    let c = env
        .cmd(&args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn dlock");
    wait_for(LONG, &format!("{k} to be held"), || env.held(k));
    c
}

pub fn child_status_and_environment(env: &Env) {
    let k = key("env");
    let out = env.run(&[
        "run",
        "--key",
        &k,
        "--",
        "sh",
        "-c",
        "echo \"$DLOCK_KEY|$DLOCK_TOKEN|$DLOCK_TTL\"; exit 3",
    ]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let line = stdout(&out);
    let parts: Vec<&str> = line.trim().split('|').collect();
    assert_eq!(parts[0], k);
    assert!(parts[1].parse::<u64>().unwrap() >= 1, "token {line}");
    assert_eq!(parts[2], "30");
    assert!(!env.held(&k), "released after the child exited");
    // --shell runs through /bin/sh.
    let out = env.run(&["run", "--key", &k, "--shell", "--", "echo", "$DLOCK_KEY"]);
    assert_eq!(stdout(&out).trim(), k);
}

pub fn missing_and_unexecutable_commands(env: &Env) {
    let k = key("exec");
    let out = env.run(&["run", "--key", &k, "--", "/nonexistent/cmd"]);
    assert_eq!(code(&out), 127);
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
    let f = env.path("not-exec");
    std::fs::write(&f, "#!/bin/sh\necho hi\n").unwrap();
    let out = env.run(&["run", "--key", &k, "--", f.to_str().unwrap()]);
    assert_eq!(code(&out), 126);
    assert!(!env.held(&k));
}

pub fn child_killed_by_signal_frees_lock(env: &Env) {
    let k = key("sig");
    let out = env.run(&["run", "--key", &k, "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(code(&out), 143);
    let pidf = env.path("child.pid");
    let mut c = env.spawn(&[
        "run",
        "--key",
        &k,
        "--",
        "sh",
        "-c",
        &format!("echo $$ > {}; exec sleep 30", pidf.display()),
    ]);
    let pid: u32 = read_when_ready(&pidf, LONG).parse().unwrap();
    signal(pid, Signal::SIGKILL);
    assert_eq!(wait_timeout(&mut c, LONG), 137);
    assert!(!env.held(&k));
}

pub fn busy_no_wait_wait_and_conflict_code(env: &Env) {
    let k = key("busy");
    let mut h = hold(env, &k, &[], "sleep 30");
    let t = Instant::now();
    let out = env.run(&["run", "-n", "--key", &k, "--", "true"]);
    assert_eq!(code(&out), 75);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "--no-wait returned in {:?}",
        t.elapsed()
    );
    let err = stderr(&out);
    assert!(
        err.contains("busy") && err.contains("held by") && err.contains("token"),
        "{err}"
    );
    let out = env.run(&["run", "-n", "-E", "3", "--key", &k, "--", "true"]);
    assert_eq!(code(&out), 3);
    let t = Instant::now();
    let out = env.run(&["run", "-w", "400ms", "--key", &k, "--", "true"]);
    let took = t.elapsed();
    assert_eq!(code(&out), 75);
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(4),
        "--wait 400ms took {took:?}"
    );
    assert!(stderr(&out).contains("after waiting"), "{}", stderr(&out));
    let out = env.run(&["acquire", "-n", "--key", &k]);
    assert_eq!(code(&out), 75);
    assert!(stdout(&out).is_empty());
    signal(h.id(), Signal::SIGTERM);
    assert_eq!(wait_timeout(&mut h, LONG), 143);
}

pub fn waiter_wakes_promptly(env: &Env) {
    let k = key("wake");
    let end = env.path("end");
    let start = env.path("start");
    let mut h = hold(
        env,
        &k,
        &[],
        &format!("sleep 0.7; date +%s%N > {}", end.display()),
    );
    let mut w = env.spawn(&[
        "run",
        "--key",
        &k,
        "--",
        "sh",
        "-c",
        &format!("date +%s%N > {}", start.display()),
    ]);
    assert_eq!(wait_timeout(&mut h, LONG), 0);
    assert_eq!(wait_timeout(&mut w, LONG), 0);
    let e: i128 = read_when_ready(&end, LONG).parse().unwrap();
    let s: i128 = read_when_ready(&start, LONG).parse().unwrap();
    let gap = Duration::from_nanos((s - e).max(0) as u64);
    assert!(s > e, "the waiter ran before the holder ended");
    assert!(
        gap < Duration::from_millis(300),
        "the waiter took {gap:?} to take a freed lock"
    );
}

fn torture_cfg(env: &Env, name: &str) -> torture::Config {
    torture::Config {
        dlock: DLOCK.into(),
        backend: env.url.clone(),
        key: key(name),
        clients: 5,
        runs: 4,
        hold: Duration::from_millis(15),
        ttl: Duration::from_secs(2),
        limit: 1,
        shared: 0.0,
        faults: vec![],
        fault_rate: 0.0,
        dir: env.path(name),
        seed: 42,
    }
}

pub fn contention_never_overlaps(env: &Env) {
    let cfg = torture_cfg(env, "contend");
    let r = torture::run_in(&cfg, env.namespace.as_deref());
    assert!(r.ok(), "{r:#?}");
    assert_eq!(r.intervals, 20, "{r:#?}");
    assert_eq!(r.max_concurrent, 1);
    assert_eq!(r.exit_codes.get(&0), Some(&20), "{r:#?}");
}

pub fn faults_never_overlap(env: &Env) {
    let mut cfg = torture_cfg(env, "faults");
    cfg.clients = 4;
    cfg.runs = 5;
    cfg.ttl = Duration::from_millis(1500);
    cfg.faults = vec![Fault::KillDlock, Fault::KillChild, Fault::StopDlock];
    cfg.fault_rate = 0.35;
    let r = torture::run_in(&cfg, env.namespace.as_deref());
    assert!(r.ok(), "{r:#?}");
    assert_eq!(r.max_concurrent, 1, "{r:#?}");
    assert!(!r.faults.is_empty(), "no fault was injected: {r:#?}");
}

pub fn fencing_tokens_increase(env: &Env) {
    let k = key("fence");
    let mut last = 0u64;
    for _ in 0..4 {
        let out = env.run(&["run", "--key", &k, "--", "sh", "-c", "echo $DLOCK_TOKEN"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let t: u64 = stdout(&out).trim().parse().unwrap();
        assert!(t > last, "token {t} after {last}");
        last = t;
    }
    let out = env.run(&["acquire", "--key", &k]);
    let h = stdout(&out).trim().to_string();
    let st = env.status_json(&[&k]);
    let t = st[0]["holders"][0]["token"].as_u64().unwrap();
    assert!(t > last);
    assert_eq!(code(&env.run(&["release", &h])), 0);
}

pub fn stale_handle_cannot_release_new_holder(env: &Env) {
    let k = key("stale");
    let out = env.run(&["acquire", "--key", &k, "--ttl", "300ms"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let old = stdout(&out).trim().to_string();
    assert!(
        old.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
        "not shell-safe: {old}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let out = env.run(&["acquire", "--key", &k, "--ttl", "30s", "--wait", "10s"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let new = stdout(&out).trim().to_string();
    let out = env.run(&["release", &old]);
    assert_eq!(code(&out), 74, "{}", stderr(&out));
    assert!(stderr(&out).contains("no longer"), "{}", stderr(&out));
    assert_eq!(code(&env.run(&["renew", &old])), 74);
    assert!(env.held(&k), "a stale handle released the new holder");
    let out = env.run(&["release", "not-a-handle"]);
    assert_eq!(code(&out), 64);
    assert_eq!(code(&env.run(&["release", &new])), 0);
    assert!(!env.held(&k));
}

pub fn renew_extends_a_handle(env: &Env) {
    let k = key("renew");
    let out = env.run(&["acquire", "--key", &k, "--ttl", "3s"]);
    let h = stdout(&out).trim().to_string();
    // The first lease ends 3 s after it was taken, at the latest now + 3 s.
    let taken = Instant::now();
    std::thread::sleep(Duration::from_millis(1000));
    let out = env.run(&["renew", &h]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // Past the first TTL, and at least 0.9 s before the renewed one ends
    // (3 s from the renewal, which started 1 s after `taken`): a margin
    // for slow processes on a loaded machine. (A different --ttl: see
    // renew_ttl_is_applied_or_refused.)
    std::thread::sleep(
        (taken + Duration::from_millis(3100)).saturating_duration_since(Instant::now()),
    );
    assert!(env.held(&k), "the renewed lease ended at its first TTL");
    assert_eq!(code(&env.run(&["release", &h])), 0);
}

pub fn forced_release_stops_child_with_74(env: &Env) {
    let k = key("force");
    let pidf = env.path("forced.pid");
    let mut h = hold(
        env,
        &k,
        &["--ttl", "1500ms", "--kill-after", "1s"],
        &format!("echo $$ > {}; exec sleep 30", pidf.display()),
    );
    let pid: i32 = read_when_ready(&pidf, LONG).parse().unwrap();
    let out = env.run(&["release", "--key", &k, "--force"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let t = Instant::now();
    let out = h.wait_with_output_timeout();
    assert_eq!(out.0, 74, "dlock must exit 74 when its lease is broken");
    assert!(out.1.contains("lost"), "{}", out.1);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    assert!(!alive(pid), "the child outlived the lost lease");
    let out = env.run(&["release", "--key", &k]);
    assert_eq!(code(&out), 64, "--key without --force is a usage error");
}

pub fn sigkill_of_dlock_kills_child_and_grandchild(env: &Env) {
    let k = key("kill9");
    let pidf = env.path("k9.pid");
    let gpidf = env.path("k9.gpid");
    let script = format!(
        "sleep 30 & echo $! > {}; echo $$ > {}; wait",
        gpidf.display(),
        pidf.display()
    );
    let mut h = hold(env, &k, &["--ttl", "2s"], &script);
    let pid: i32 = read_when_ready(&pidf, LONG).parse().unwrap();
    let gpid: i32 = read_when_ready(&gpidf, LONG).parse().unwrap();
    signal(h.id(), Signal::SIGKILL);
    let _ = h.wait();
    wait_for(
        Duration::from_secs(3),
        "the child to die with dlock",
        || !alive(pid),
    );
    wait_for(
        Duration::from_secs(3),
        "the grandchild to die with dlock",
        || !alive(gpid),
    );
    // The lock frees by the TTL at the latest.
    wait_for(
        Duration::from_secs(6),
        "the lock to free after its holder died",
        || !env.held(&k),
    );
    let out = env.run(&["run", "-w", "5s", "--key", &k, "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

pub fn signals_are_forwarded(env: &Env) {
    let k = key("fwd");
    let ready = env.path("fwd.ready");
    let script = format!(
        "trap 'exit 7' TERM; echo go > {}; while :; do sleep 0.05; done",
        ready.display()
    );
    let mut h = env.spawn(&["run", "--key", &k, "--", "sh", "-c", &script]);
    read_when_ready(&ready, LONG);
    signal(h.id(), Signal::SIGTERM);
    assert_eq!(
        wait_timeout(&mut h, LONG),
        7,
        "the child's own status after a forwarded SIGTERM"
    );
    let ready2 = env.path("fwd2.ready");
    let mut h = env.spawn(&[
        "run",
        "--key",
        &k,
        "--",
        "sh",
        "-c",
        &format!("echo go > {}; exec sleep 30", ready2.display()),
    ]);
    read_when_ready(&ready2, LONG);
    signal(h.id(), Signal::SIGINT);
    assert_eq!(wait_timeout(&mut h, LONG), 130);
    let ready3 = env.path("fwd3.ready");
    let mut h = env.spawn(&[
        "run",
        "--key",
        &k,
        "--",
        "sh",
        "-c",
        &format!("trap '' INT; echo go > {}; exec sleep 30", ready3.display()),
    ]);
    read_when_ready(&ready3, LONG);
    signal(h.id(), Signal::SIGUSR1);
    assert_eq!(wait_timeout(&mut h, LONG), 128 + 10);
    assert!(!env.held(&k));
}

pub fn semaphore_limit(env: &Env) {
    let k = key("sem");
    let mut a = env.spawn(&["run", "--limit", "2", "--key", &k, "--", "sleep", "30"]);
    let mut b = env.spawn(&["run", "--limit", "2", "--key", &k, "--", "sleep", "30"]);
    wait_for(LONG, "two holders", || {
        env.status_json(&[&k])[0]["holders"]
            .as_array()
            .unwrap()
            .len()
            == 2
    });
    let st = env.status_json(&[&k]);
    assert_eq!(st[0]["limit"], 2);
    let out = env.run(&["run", "-n", "--limit", "2", "--key", &k, "--", "true"]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    signal(a.id(), Signal::SIGTERM);
    assert_eq!(wait_timeout(&mut a, LONG), 143);
    let out = env.run(&["run", "-w", "5s", "--limit", "2", "--key", &k, "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    signal(b.id(), Signal::SIGTERM);
    wait_timeout(&mut b, LONG);
    let out = env.run(&["run", "--limit", "0", "--key", &k, "--", "true"]);
    assert_eq!(code(&out), 64);
}

pub fn multi_key_opposite_orders_do_not_deadlock(env: &Env) {
    let x = key("mx");
    let y = key("my");
    let out = env.run(&[
        "run",
        "--key",
        &y,
        "--key",
        &x,
        "--",
        "sh",
        "-c",
        "echo $DLOCK_KEY",
    ]);
    let mut sorted = [x.clone(), y.clone()];
    sorted.sort();
    assert_eq!(stdout(&out).trim(), sorted.join(","));
    std::thread::scope(|s| {
        for i in 0..4 {
            let (a, b) = if i % 2 == 0 { (&x, &y) } else { (&y, &x) };
            s.spawn(move || {
                for _ in 0..4 {
                    let mut c = env.spawn(&["run", "--key", a, "--key", b, "--", "sleep", "0.02"]);
                    assert_eq!(wait_timeout(&mut c, Duration::from_secs(30)), 0);
                }
            });
        }
    });
    // All or nothing: with y held, --no-wait on x+y takes neither.
    let mut h = hold(env, &y, &[], "sleep 30");
    let out = env.run(&["run", "-n", "--key", &x, "--key", &y, "--", "true"]);
    assert_eq!(code(&out), 75);
    assert!(!env.held(&x), "a failed multi-key run kept one of its keys");
    signal(h.id(), Signal::SIGTERM);
    wait_timeout(&mut h, LONG);
}

pub fn lock_at_least_keeps_the_lock(env: &Env) {
    let k = key("least");
    let t = Instant::now();
    let out = env.run(&[
        "run",
        "--lock-at-least",
        "1500ms",
        "--key",
        &k,
        "--",
        "true",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    if t.elapsed() < Duration::from_millis(1200) {
        // The backend left the lease to lapse on its own: it is still held.
        let out = env.run(&["run", "-n", "--key", &k, "--", "true"]);
        assert_eq!(
            code(&out),
            75,
            "the lock was free before --lock-at-least passed"
        );
    }
    wait_for(Duration::from_secs(5), "the lock to lapse", || {
        !env.held(&k)
    });
    assert!(
        t.elapsed() >= Duration::from_millis(1400),
        "freed after {:?}",
        t.elapsed()
    );
}

pub fn status_json_fields(env: &Env) {
    let k = key("stat");
    let free = key("free");
    let mut h = hold(env, &k, &[], "sleep 30");
    let st = env.status_json(&[&k, &free]);
    let arr = st.as_array().unwrap();
    assert_eq!(arr.len(), 2);
    let held = arr.iter().find(|o| o["key"] == k.as_str()).unwrap();
    assert_eq!(held["held"], true);
    assert_eq!(held["limit"], 1);
    let holder = &held["holders"][0];
    assert_eq!(holder["pid"].as_u64().unwrap(), u64::from(h.id()));
    assert!(holder["owner"].is_string() && holder["host"].is_string());
    assert!(holder["token"].as_u64().unwrap() >= 1);
    for f in ["acquired_at", "expires_at"] {
        // A session-based lease (ZooKeeper) has no expiry time to show.
        if f == "expires_at" && holder[f].is_null() {
            continue;
        }
        let s = holder[f].as_str().unwrap();
        assert!(s.ends_with('Z') && s.contains('T'), "{f} = {s}");
    }
    assert!(held.get("waiters").is_some());
    let fr = arr.iter().find(|o| o["key"] == free.as_str()).unwrap();
    assert_eq!(fr["held"], false);
    assert_eq!(fr["holders"].as_array().unwrap().len(), 0);
    let out = env.run(&["status"]);
    assert!(stdout(&out).contains(&k), "{}", stdout(&out));
    signal(h.id(), Signal::SIGTERM);
    wait_timeout(&mut h, LONG);
}

pub fn frozen_dlock_child_is_stopped_before_expiry(env: &Env) {
    let k = key("frozen");
    let pidf = env.path("frozen.pid");
    let mut h = hold(
        env,
        &k,
        &["--ttl", "1200ms", "--kill-after", "200ms"],
        &format!("echo $$ > {}; exec sleep 30", pidf.display()),
    );
    let pid: i32 = read_when_ready(&pidf, LONG).parse().unwrap();
    let stopped = Instant::now();
    signal(h.id(), Signal::SIGSTOP);
    // The guard must stop the child before the lease can expire (<= TTL
    // after the last renewal, which was at most TTL/3 before the stop).
    wait_for(
        Duration::from_secs(3),
        "the guard to kill the child of a frozen dlock",
        || !alive(pid),
    );
    assert!(
        stopped.elapsed() < Duration::from_millis(1200),
        "child lived {:?} after the freeze",
        stopped.elapsed()
    );
    signal(h.id(), Signal::SIGCONT);
    assert_eq!(wait_timeout(&mut h, LONG), 74);
}

/// The server freezes (`freeze(SIGSTOP)`) under a holder: its child must be
/// stopped within the TTL (the last renewal was at most TTL/3 before the
/// freeze, so before that renewal's lease could end), and once the server
/// thaws (`freeze(SIGCONT)`) dlock exits 74. Not part of the generic suite:
/// each backend knows how to freeze its own server.
pub fn frozen_server_stops_child(
    env: &Env,
    ttl: Duration,
    kill_after: Duration,
    freeze: impl Fn(Signal),
) {
    let (ttl_s, kill_s) = (
        format!("{}ms", ttl.as_millis()),
        format!("{}ms", kill_after.as_millis()),
    );
    let (mut h, pid) = env.run_child(
        "frz",
        &["--ttl", &ttl_s, "--kill-after", &kill_s],
        "exec sleep 60",
    );
    let t = Instant::now();
    freeze(Signal::SIGSTOP);
    wait_for(ttl * 3, "the child to be stopped", || !alive(pid));
    assert!(
        t.elapsed() < ttl,
        "child lived {:?} into the freeze",
        t.elapsed()
    );
    freeze(Signal::SIGCONT);
    assert_eq!(wait_timeout(&mut h, Duration::from_secs(30)), 74);
}

/// Wait for a dlock child and collect (exit code, stderr).
trait WaitOutput {
    fn wait_with_output_timeout(&mut self) -> (i32, String);
}

impl WaitOutput for std::process::Child {
    fn wait_with_output_timeout(&mut self) -> (i32, String) {
        let c = wait_timeout(self, LONG);
        let mut s = String::new();
        if let Some(e) = self.stderr.as_mut() {
            use std::io::Read;
            let _ = e.read_to_string(&mut s);
        }
        (c, s)
    }
}

/// The `status` table and JSON for a free key, a held key and a semaphore
/// with two holders; colour only when asked for (stdout is not a terminal).
pub fn status_table_for_free_held_and_semaphore_keys(env: &Env) {
    let (held, sem, free) = (key("tab-held"), key("tab-sem"), key("tab-free"));
    let mut h1 = hold(env, &held, &[], "sleep 30");
    let mut s1 = hold(env, &sem, &["--limit", "2"], "sleep 30");
    let mut s2 = env.spawn(&["run", "--key", &sem, "--limit", "2", "--", "sleep", "30"]);
    wait_for(LONG, "two holders of the semaphore", || {
        env.status_json(&[&sem])[0]["holders"]
            .as_array()
            .unwrap()
            .len()
            == 2
    });
    let st = env.status_json(&[&free, &held, &sem]);
    let by_key = |k: &str| {
        st.as_array()
            .unwrap()
            .iter()
            .find(|o| o["key"] == k)
            .unwrap()
            .clone()
    };
    assert_eq!(by_key(&free)["held"], false);
    assert_eq!(by_key(&held)["holders"].as_array().unwrap().len(), 1);
    let s = by_key(&sem);
    assert_eq!(s["held"], true);
    assert!(s["limit"].as_u64().unwrap() >= 2, "{s}");
    assert_eq!(s["holders"].as_array().unwrap().len(), 2);
    let out = env.run(&["status", &free, &held, &sem]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let table = stdout(&out);
    assert!(
        !table.contains('\x1b'),
        "no colour off a terminal: {table:?}"
    );
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("KEY") && lines[0].contains("EXPIRES"),
        "{table}"
    );
    let row = |k: &str| {
        *lines
            .iter()
            .find(|l| l.starts_with(k))
            .unwrap_or_else(|| panic!("no row for {k}: {table}"))
    };
    assert!(row(&free).contains("free"), "{table}");
    assert!(
        row(&held).contains(" held ") && row(&held).contains(" ago"),
        "{table}"
    );
    assert!(row(&sem).contains("held 2/"), "{table}");
    // The second holder of the semaphore gets a line of its own.
    assert_eq!(lines.len(), 1 + 1 + 1 + 2, "{table}");
    let out = env.run(&["--color", "always", "status", &free, &held]);
    assert!(
        stdout(&out).contains("\x1b[32mfree\x1b[0m"),
        "{:?}",
        stdout(&out)
    );
    let out = env
        .cmd(&["--color", "auto", "status", &held])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!stdout(&out).contains('\x1b'));
    for c in [&mut h1, &mut s1, &mut s2] {
        signal(c.id(), Signal::SIGTERM);
        wait_timeout(c, LONG);
    }
}

/// A Prometheus textfile line's value: `name{labels...} value`.
fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| {
            l.starts_with(name_and_labels)
                && l[name_and_labels.len()..].starts_with([' ', '}', ','])
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `--metrics-file` after a success, a busy run and a lost lease: the
/// outcome, exit code and token, and the last success kept across failures.
pub fn metrics_file_records_success_busy_and_loss(env: &Env) {
    let k = key("metrics");
    let prom = env.path("job.prom");
    let m = prom.to_str().unwrap();
    let labels = format!("namespace=\"{}\",key=\"{k}\"", env.ns());
    let read = || std::fs::read_to_string(&prom).unwrap();
    let outcome =
        |text: &str, o: &str| metric(text, &format!("dlock_outcome{{{labels},outcome=\"{o}\"}}"));
    let value = |text: &str, name: &str| metric(text, &format!("{name}{{{labels}}}"));

    let out = env.run(&[
        "run",
        "--key",
        &k,
        "--metrics-file",
        m,
        "--",
        "sleep",
        "0.3",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let ok = read();
    assert_eq!(outcome(&ok, "success"), Some(1.0), "{ok}");
    assert_eq!(outcome(&ok, "busy"), Some(0.0), "{ok}");
    assert_eq!(value(&ok, "dlock_exit_code"), Some(0.0));
    assert!(value(&ok, "dlock_hold_seconds").unwrap() >= 0.3, "{ok}");
    assert!(value(&ok, "dlock_fencing_token").unwrap() >= 1.0, "{ok}");
    let success_at = value(&ok, "dlock_last_success_timestamp_seconds").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - success_at).abs() < 60.0, "{success_at} vs {now}");
    assert!(ok.contains("# TYPE dlock_outcome gauge"), "{ok}");
    // No temporary file is left beside it.
    let left: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    let mut h = hold(env, &k, &[], "sleep 30");
    let out = env.run(&[
        "run",
        "--key",
        &k,
        "--wait",
        "300ms",
        "--metrics-file",
        m,
        "--",
        "true",
    ]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    let busy = read();
    assert_eq!(outcome(&busy, "busy"), Some(1.0), "{busy}");
    assert_eq!(outcome(&busy, "success"), Some(0.0), "{busy}");
    assert_eq!(value(&busy, "dlock_exit_code"), Some(75.0));
    assert!(value(&busy, "dlock_wait_seconds").unwrap() >= 0.3, "{busy}");
    assert_eq!(value(&busy, "dlock_hold_seconds"), Some(0.0));
    assert_eq!(
        value(&busy, "dlock_last_success_timestamp_seconds"),
        Some(success_at),
        "kept across a busy run"
    );
    signal(h.id(), Signal::SIGTERM);
    wait_timeout(&mut h, LONG);

    let mut lost = env
        .cmd(&[
            "run",
            "--key",
            &k,
            "--ttl",
            "1500ms",
            "--kill-after",
            "500ms",
            "--metrics-file",
            m,
            "--",
            "sleep",
            "30",
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(LONG, "the run to hold", || env.held(&k));
    let out = env.run(&["release", "--key", &k, "--force"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(wait_timeout(&mut lost, LONG), 74);
    let l = read();
    assert_eq!(outcome(&l, "lost"), Some(1.0), "{l}");
    assert_eq!(value(&l, "dlock_exit_code"), Some(74.0));
    assert_eq!(
        value(&l, "dlock_last_success_timestamp_seconds"),
        Some(success_at)
    );
}

/// On a terminal a waiter shows one live line naming the lock and who holds
/// it, erased when the wait ends; without a terminal, nothing.
pub fn waiting_line_only_on_a_terminal(env: &Env) {
    let k = key("line");
    let mut h = hold(env, &k, &[], "sleep 3");
    // script(1) gives the waiter a pseudo-terminal.
    let inner = format!(
        "{} --backend '{}' run --key {k} --wait 20s -- echo got-it",
        DLOCK, env.url
    );
    let script = servers::require("script", "bsdutils");
    let out = std::process::Command::new(script)
        .args(["-qec", &inner, "/dev/null"])
        .env("HOME", env.dir.path())
        .env("DLOCK_NAMESPACE", env.ns())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("waiting") && text.contains(&format!("for \"{k}\"")),
        "{text:?}"
    );
    assert!(text.contains("held by"), "the holder is named: {text:?}");
    assert!(
        text.contains("\r\x1b[2Kgot-it"),
        "the line is erased before the child runs: {text:?}"
    );
    wait_timeout(&mut h, LONG);
    // The same wait without a terminal prints nothing extra.
    let mut h = hold(env, &k, &[], "sleep 1");
    let out = env.run(&["run", "--key", &k, "--wait", "20s", "--", "echo", "got-it"]);
    assert_eq!(code(&out), 0);
    assert_eq!(stderr(&out), "", "nothing on stderr without a terminal");
    assert_eq!(stdout(&out), "got-it\n");
    wait_timeout(&mut h, LONG);
}

/// `doctor --json`: every check has a level and a message, the backend
/// answers, and the exit code follows the worst finding.
pub fn doctor_reports_every_check(env: &Env) {
    let out = env.run(&["doctor", "--json", "--ttl", "10s"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&out), stderr(&out)));
    let checks = report["checks"].as_array().unwrap();
    let level = |name: &str| {
        checks
            .iter()
            .find(|c| c["check"] == name)
            .map(|c| c["level"].as_str().unwrap().to_string())
    };
    assert_eq!(level("reachable").as_deref(), Some("ok"), "{report:#}");
    assert_eq!(level("round-trip").as_deref(), Some("ok"), "{report:#}");
    assert!(level("clock").is_some(), "{report:#}");
    for c in checks {
        assert!(
            ["ok", "info", "warn", "fail"].contains(&c["level"].as_str().unwrap()),
            "{c}"
        );
        assert!(!c["message"].as_str().unwrap().is_empty(), "{c}");
        if c["level"] == "fail" {
            assert!(c["fix"].is_string(), "a failure says how to fix it: {c}");
        }
    }
    let failed = checks.iter().any(|c| c["level"] == "fail");
    assert_eq!(code(&out), if failed { 1 } else { 0 }, "{report:#}");
    assert_eq!(report["ttl_seconds"], 10.0);
    // The text form says the same, one line per check.
    let out = env.run(&["doctor", "--ttl", "10s"]);
    let text = stdout(&out);
    assert!(text.starts_with("dlock doctor: "), "{text}");
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("  ") && !l.trim_start().starts_with("fix:"))
            .count(),
        checks.len(),
        "{text}"
    );
}

/// `status` counts who waits for a key, on every backend: waiters that give
/// up stop being counted, and so do waiters that got the lock.
pub fn status_counts_waiters(env: &Env) {
    let k = key("waiters");
    let waiters = || env.status_json(&[&k])[0]["waiters"].as_u64();
    let mut h = hold(env, &k, &[], "sleep 30");
    assert_eq!(waiters(), Some(0), "nobody waits yet");
    let spawn = |wait: &str| {
        env.cmd(&["run", "--key", &k, "--wait", wait, "--", "true"])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut patient = [spawn("30s"), spawn("30s")];
    let mut quitter = spawn("4s");
    wait_for(LONG, "three waiters counted", || waiters() == Some(3));
    let out = env.run(&["status", &k]);
    let table = stdout(&out);
    let row = table.lines().find(|l| l.starts_with(&k)).unwrap();
    assert!(row.trim_end().ends_with(" 3"), "WAITERS column: {table}");
    assert_eq!(wait_timeout(&mut quitter, LONG), 75);
    wait_for(
        Duration::from_secs(8),
        "the quitter to stop counting",
        || waiters() == Some(2),
    );
    signal(h.id(), Signal::SIGTERM);
    wait_timeout(&mut h, LONG);
    for p in &mut patient {
        assert_eq!(wait_timeout(p, LONG), 0);
    }
    wait_for(Duration::from_secs(6), "no waiter left", || {
        waiters().unwrap_or(0) == 0
    });
}

/// A waiter interrupted by SIGINT or SIGTERM removes its queue entry or
/// waiter record: the waiter behind it gets the lock within 2 s of the
/// holder's release, not a TTL later.
pub fn interrupted_waiter_does_not_delay_the_next(env: &Env) {
    for (i, sig) in [Signal::SIGINT, Signal::SIGTERM].into_iter().enumerate() {
        let k = key(&format!("intr{i}"));
        let stop = env.path(&format!("stop{i}"));
        let waiters = || env.status_json(&[&k])[0]["waiters"].as_u64().unwrap_or(0);
        let mut h = hold(
            env,
            &k,
            &[],
            &format!("while [ ! -e {} ]; do sleep 0.02; done", stop.display()),
        );
        let waiter = || {
            env.cmd(&["run", "--key", &k, "--", "true"])
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        };
        let mut a = waiter();
        wait_for(LONG, "the first waiter to queue", || waiters() >= 1);
        let mut b = waiter();
        wait_for(LONG, "the second waiter to queue", || waiters() >= 2);
        signal(a.id(), sig);
        assert_eq!(wait_timeout(&mut a, LONG), 128 + sig as i32, "{sig:?}");
        std::fs::write(&stop, "").unwrap();
        let released = Instant::now();
        assert_eq!(wait_timeout(&mut h, LONG), 0);
        assert_eq!(wait_timeout(&mut b, LONG), 0);
        assert!(
            released.elapsed() < Duration::from_secs(2),
            "after a {sig:?} to the waiter ahead, the next waited {:?}",
            released.elapsed()
        );
    }
}

/// Many contenders on one key, more than the stock server limits allow
/// connections for (ZooKeeper 60 per address, PostgreSQL 100): every one
/// gets its turn and none exits 69. `bench/crowd.sh` runs 200.
pub fn crowd_on_one_key_all_get_their_turn(env: &Env) {
    let k = key("crowd");
    let n = 80;
    let mut kids: Vec<std::process::Child> = (0..n)
        .map(|_| {
            env.cmd(&["run", "--wait", "2m", "--key", &k, "--", "sleep", "0.02"])
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut failed = Vec::new();
    for c in &mut kids {
        let code = wait_timeout(c, Duration::from_secs(150));
        if code != 0 {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(c.stderr.as_mut().unwrap(), &mut err);
            failed.push((code, err));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {n} failed: {failed:?}",
        failed.len()
    );
}

/// The server is killed and started again while clients wait: every run
/// ends in 0, or 74 for a holder whose lock the restart lost; none in 69.
pub fn server_restart_during_waits_is_ridden_out(env: &mut Env) {
    if !env.can_restart() {
        // SQLite: no server to restart. The test asserts that, at least.
        assert!(env.url.starts_with("sqlite:") || env.url.starts_with("redis+cluster:"));
        return;
    }
    let k = key("restart");
    let clients = 4;
    let runs = 4;
    let url = env.url.clone();
    let home = env.dir.path().to_path_buf();
    let codes = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..clients {
            s.spawn(|| {
                for _ in 0..runs {
                    let out = bare(&home)
                        .args(["--backend", &url, "run", "--wait", "60s", "--key", &k])
                        // The outage a waiter rides out: the restart's 1 s,
                        // plus the server's own start, which on a loaded
                        // machine took SeaweedFS more than 5 s (HTTP 500
                        // until its volume server was up).
                        .args(["--connect-timeout", "15s", "--", "sleep", "0.3"])
                        .stdin(std::process::Stdio::null())
                        .output()
                        .unwrap();
                    codes.lock().unwrap().push((code(&out), stderr(&out)));
                }
            });
        }
        std::thread::sleep(Duration::from_millis(900));
        env.restart_server(Duration::from_secs(1));
    });
    let codes = codes.into_inner().unwrap();
    assert_eq!(codes.len(), clients * runs);
    let bad: Vec<_> = codes.iter().filter(|(c, _)| *c != 0 && *c != 74).collect();
    assert!(
        bad.is_empty(),
        "runs that did not ride out the restart: {bad:?}"
    );
}

/// Distinct keys are independent even when one names a path below the
/// other (`p` and `p/q`): taking, forcing and listing one never touches the
/// other, on every backend (etcd's prefix `NS/p/` also matches `NS/p/q/...`;
/// ZooKeeper's `/NS/p/q` is a child of `/NS/p`).
pub fn nested_keys_are_independent(env: &Env) {
    let p = key("nest");
    let q = format!("{p}/q");
    // A short TTL: a forced holder notices at its next renewal (ttl/3).
    let mut hq = hold(env, &q, &["--ttl", "3s"], "sleep 30");
    let out = env.run(&["run", "-n", "--key", &p, "--", "true"]);
    assert_eq!(
        code(&out),
        0,
        "p is free while p/q is held: {}",
        stderr(&out)
    );
    let st = env.status_json(&[&p]);
    assert_eq!(st[0]["held"], false, "{st}");
    let out = env.run(&["release", "--key", &p, "--force"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("was not held"), "{}", stderr(&out));
    assert!(env.held(&q), "forcing p broke p/q");
    // Both held: each listed once, in the namespace-wide listing too.
    let mut hp = hold(env, &p, &["--ttl", "3s"], "sleep 30");
    let all = env.status_json(&[]);
    for k in [&p, &q] {
        let rows: Vec<_> = all
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["key"] == k.as_str())
            .collect();
        assert_eq!(rows.len(), 1, "{k} in {all}");
        assert_eq!(rows[0]["holders"].as_array().unwrap().len(), 1, "{all}");
    }
    let out = env.run(&["release", "--key", &p, "--force"]);
    assert!(stderr(&out).contains("(1 holder)"), "{}", stderr(&out));
    assert_eq!(wait_timeout(&mut hp, LONG), 74);
    assert!(env.held(&q), "forcing p broke p/q");
    let out = env.run(&["release", "--key", &q, "--force"]);
    assert!(stderr(&out).contains("(1 holder)"), "{}", stderr(&out));
    assert_eq!(wait_timeout(&mut hq, LONG), 74);
}

/// A lock broken (`release --force`) while the child runs, the child ending
/// before the next renewal could notice: the release at the end finds the
/// lease gone, and the run still reports the loss (74, a `lost` event, the
/// metrics outcome `lost`).
pub fn lock_broken_before_the_next_renewal_is_reported(env: &Env) {
    let k = key("brk");
    let go = env.path("brk.go");
    let prom = env.path("brk.prom");
    let script = format!(
        "while [ ! -e {} ]; do sleep 0.05; done; echo done",
        go.display()
    );
    let mut h = env
        .cmd(&[
            "--log-format",
            "json",
            "run",
            "--ttl",
            "30s",
            "--key",
            &k,
            "--metrics-file",
            prom.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(LONG, &format!("{k} to be held"), || env.held(&k));
    let out = env.run(&["release", "--key", &k, "--force"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    std::fs::write(&go, "").unwrap();
    let t = Instant::now();
    let (c, err) = h.wait_with_output_timeout();
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    assert_eq!(c, 74, "a broken lock must not end in 0: {err}");
    let events: Vec<serde_json::Value> = err
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "lost" && e["key"] == k.as_str()),
        "{err}"
    );
    assert!(err.contains("lost the lock"), "{err}");
    let m = std::fs::read_to_string(&prom).unwrap();
    let labels = format!("namespace=\"{}\",key=\"{k}\"", env.ns());
    assert_eq!(
        metric(&m, &format!("dlock_outcome{{{labels},outcome=\"lost\"}}")),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, &format!("dlock_exit_code{{{labels}}}")),
        Some(74.0)
    );
}

/// `renew --ttl D` with a TTL other than the handle's: either the lease
/// really lasts D from now (status shows it), or it is refused with 64 and a
/// reason (etcd and ZooKeeper cannot change a lease's TTL); never a silent
/// success. The lease is unchanged by a refusal.
pub fn renew_ttl_is_applied_or_refused(env: &Env) {
    let k = key("rttl");
    let out = env.run(&["acquire", "--key", &k, "--ttl", "3s"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let h = stdout(&out).trim().to_string();
    let out = env.run(&["renew", &h, "--ttl", "1h"]);
    match code(&out) {
        0 => {
            let st = env.status_json(&[&k]);
            let exp = st[0]["holders"][0]["expires_at"]
                .as_str()
                .unwrap_or_else(|| panic!("renew --ttl 1h succeeded, but is it true? {st}"));
            let exp = humantime::parse_rfc3339(exp).unwrap();
            let left = exp
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            assert!(
                left > Duration::from_secs(30 * 60),
                "renew --ttl 1h exited 0 but the lease ends in {left:?}: {st}"
            );
        }
        64 => {
            let err = stderr(&out);
            assert!(err.contains("TTL"), "a refusal says why: {err}");
            assert!(env.held(&k), "a refused renewal changed the lease");
            let out = env.run(&["renew", &h]);
            assert_eq!(code(&out), 0, "{}", stderr(&out));
        }
        c => panic!("renew --ttl 1h: exit {c}: {}", stderr(&out)),
    }
    assert_eq!(code(&env.run(&["release", &h])), 0);
}

/// `status` lists named keys in the order given (each once), and the
/// namespace's keys sorted, the same on every backend.
pub fn status_rows_in_the_order_given(env: &Env) {
    let (z, a, m) = (key("ord-z"), key("ord-a"), key("ord-m"));
    let mut hz = hold(env, &z, &[], "sleep 30");
    let mut ha = hold(env, &a, &[], "sleep 30");
    let keys = |st: &serde_json::Value| {
        st.as_array()
            .unwrap()
            .iter()
            .map(|o| o["key"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let st = env.status_json(&[&z, &m, &a, &z]);
    assert_eq!(keys(&st), vec![z.clone(), m.clone(), a.clone()], "{st}");
    let out = env.run(&["status", &m, &z, &a]);
    let table = stdout(&out);
    let rows: Vec<&str> = table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(rows, vec![m.as_str(), z.as_str(), a.as_str()], "{table}");
    let all = keys(&env.status_json(&[]));
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted);
    assert!(all.contains(&a) && all.contains(&z), "{all:?}");
    for c in [&mut hz, &mut ha] {
        signal(c.id(), Signal::SIGTERM);
        wait_timeout(c, LONG);
    }
}

/// A lease taken by `dlock acquire` is held by its handle, not by the
/// long-exited `dlock acquire` process: `status` says "handle" instead of a
/// pid (JSON: `"pid": null, "handle": true`), and so does the busy message.
pub fn acquire_leases_show_as_handles(env: &Env) {
    let k = key("hnd");
    let out = env.run(&["acquire", "--key", &k]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let h = stdout(&out).trim().to_string();
    let st = env.status_json(&[&k]);
    let holder = &st[0]["holders"][0];
    assert!(holder["pid"].is_null(), "{st}");
    assert_eq!(holder["handle"], true, "{st}");
    let out = env.run(&["status", &k]);
    let table = stdout(&out);
    let row = table.lines().find(|l| l.starts_with(&k)).unwrap();
    assert!(row.contains(" handle "), "{table}");
    let out = env.run(&["run", "-n", "--key", &k, "--", "true"]);
    assert_eq!(code(&out), 75);
    assert!(stderr(&out).contains("handle"), "{}", stderr(&out));
    assert_eq!(code(&env.run(&["release", &h])), 0);
    // A run's holder shows its pid, and is no handle.
    let mut r = hold(env, &k, &[], "sleep 30");
    let st = env.status_json(&[&k]);
    assert_eq!(st[0]["holders"][0]["pid"].as_u64(), Some(u64::from(r.id())));
    assert_eq!(st[0]["holders"][0]["handle"], false, "{st}");
    signal(r.id(), Signal::SIGTERM);
    wait_timeout(&mut r, LONG);
}

/// Liveness: a holder whose dlock was SIGKILLed on this machine (a cancelled
/// CI job, `timeout -s KILL`, the OOM killer) is shown dead, never as a live
/// holder, and the next contender here takes the key at once, `--no-wait`
/// included, instead of waiting out a long TTL.
pub fn a_killed_holder_is_dead_and_the_next_takes_it_at_once(env: &Env) {
    let k = key("killed");
    let mut h = hold(env, &k, &["--ttl", "60s"], "sleep 60");
    signal(h.id(), Signal::SIGKILL);
    let _ = h.wait();
    let st = env.status_json(&[&k]);
    let holders = st[0]["holders"].as_array().cloned().unwrap_or_default();
    assert!(
        holders.iter().all(|h| h["dead"] == true),
        "a SIGKILLed holder is shown as live: {st}"
    );
    let t = Instant::now();
    let out = env.run(&["run", "-n", "--key", &k, "--", "echo", "ran"]);
    assert_eq!(code(&out), 0, "the first contender: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "ran");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?} with a 60s TTL",
        t.elapsed()
    );
}

/// The lease clock: a holder that waited about a third of its TTL in line
/// (its lease, where it has one while waiting, aged meanwhile) is renewed
/// in time and never stopped: 20 holders side by side, each on its own key,
/// each waiting about 1 s behind a first holder, with a 3 s TTL: all exit 0.
pub fn a_holder_that_waited_a_third_of_its_ttl_is_never_stopped(env: &Env) {
    const TRIES: usize = 20;
    let go = env.path("aged.go");
    let script = format!("while [ ! -e {} ]; do sleep 0.02; done", go.display());
    let firsts: Vec<(String, std::process::Child)> = (0..TRIES)
        .map(|i| {
            let k = key(&format!("aged{i}"));
            let c = env.spawn(&["run", "--ttl", "3s", "--key", &k, "--", "sh", "-c", &script]);
            (k, c)
        })
        .collect();
    for (k, _) in &firsts {
        wait_for(LONG, &format!("{k} to be held"), || env.held(k));
    }
    let seconds: Vec<std::process::Child> = firsts
        .iter()
        .map(|(k, _)| {
            env.cmd(&["run", "--ttl", "3s", "--key", k, "--", "sleep", "3"])
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // A third of the TTL in line, then the first holders let go.
    std::thread::sleep(Duration::from_millis(1000));
    std::fs::write(&go, "").unwrap();
    for (_, mut c) in firsts {
        assert_eq!(wait_timeout(&mut c, LONG), 0);
    }
    let mut stopped = Vec::new();
    for mut c in seconds {
        let (code, err) = c.wait_with_output_timeout();
        if code != 0 {
            stopped.push(format!("{code}: {err}"));
        }
    }
    assert!(
        stopped.is_empty(),
        "{} of {TRIES} healthy holders were stopped: {stopped:?}",
        stopped.len()
    );
}

/// Liveness: a waiter SIGKILLed on this machine never delays the next
/// contender by more than 2 s ([`super::liveness`]).
pub fn killed_waiter_never_delays_the_next(env: &Env) {
    super::liveness::killed_waiter_never_delays_the_next(env);
}

/// Liveness: a SIGKILLed standby of `elect` is never named leader, and the
/// next candidate leads within 2 s ([`super::liveness`]).
pub fn killed_standby_is_never_named_leader(env: &Env) {
    super::liveness::killed_standby_is_never_named_leader(env);
}
