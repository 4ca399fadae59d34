//! Conformance of fair queues and semaphore slots (issue 23): every backend
//! must pass all of it against a real server. `fair_conformance!(name,
//! Env::...)` instantiates it beside the main suite.
//!
//! - Waiters are served in the order they arrived; a shared request only
//!   goes before an earlier one when both are shared and no exclusive
//!   request arrived between them (they are let in together).
//! - `status --json` lists the line in arrival order (`"queue"`), and the
//!   table shows it.
//! - With `--limit N`, holders get distinct slots 0..N-1 (`DLOCK_SLOT`,
//!   JSON `"slot"`), reused lowest first; `"limit"` is the `--limit` given.
//! - A waiter SIGKILLed in the middle of the line does not hold up the rest.
#![allow(dead_code, unused_macros, unused_imports)]

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::*;

macro_rules! fair_conformance {
    ($name:ident, $env:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use $crate::common::*;
            /// This binary's server of the set-up, in the test's namespace.
            fn shared(test: &str) -> Env {
                Env::shared(
                    stringify!($env),
                    || $env,
                    &format!("{}.{test}", stringify!($name)),
                )
            }
            $crate::common::fair::fair_tests!(
                shared,
                five_waiters_are_served_in_arrival_order,
                a_mixed_crowd_is_served_in_arrival_order,
                status_lists_the_queue_in_arrival_order,
                semaphore_slots_are_distinct_and_reused_lowest_first,
                a_killed_waiter_mid_queue_does_not_hold_up_the_rest,
            );
        }
    };
}
pub(crate) use fair_conformance;

macro_rules! fair_tests {
    ($env:ident, $($t:ident),* $(,)?) => {
        $(
            #[test]
            fn $t() {
                $crate::common::fair::$t(&$env(stringify!($t)));
            }
        )*
    };
}
pub(crate) use fair_tests;

const LONG: Duration = Duration::from_secs(60);

fn key(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

fn queue(env: &Env, k: &str) -> Vec<serde_json::Value> {
    env.status_json(&[k])[0]["queue"]
        .as_array()
        .cloned()
        .unwrap_or_default()
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

/// A waiter that, once it holds, runs `sh -c SCRIPT`; returned once the
/// backend lists it in the line (`n` waiters in all), so that arrival order
/// is the order of the calls, whatever the machine's load.
fn queue_up(env: &Env, k: &str, extra: &[&str], script: &str, n: usize) -> Child {
    let mut args = vec!["run", "--wait", "2m", "--key", k];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    let c = env
        .cmd(&args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dlock");
    wait_for(LONG, &format!("waiter {n} of {k} to be in line"), || {
        queue(env, k).len() >= n
    });
    c
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// A holder, then five waiters arriving 0.3 s apart: served 1 2 3 4 5, ten
/// times in a row.
pub fn five_waiters_are_served_in_arrival_order(env: &Env) {
    for round in 0..10 {
        let k = key(&format!("order{round}"));
        let stop = env.path(&format!("stop-order{round}"));
        let log = env.path(&format!("order{round}.log"));
        let mut h = hold_until(env, &k, &[], &stop);
        let mut waiters = Vec::new();
        for i in 1..=5 {
            let began = Instant::now();
            let script = format!("echo {i} >> {}", log.display());
            waiters.push(queue_up(env, &k, &[], &script, i));
            std::thread::sleep(Duration::from_millis(300).saturating_sub(began.elapsed()));
        }
        std::fs::write(&stop, "").unwrap();
        assert_eq!(wait_timeout(&mut h, LONG), 0);
        for w in &mut waiters {
            assert_eq!(wait_timeout(w, LONG), 0);
        }
        assert_eq!(lines(&log), ["1", "2", "3", "4", "5"], "round {round}");
    }
}

/// 40 requests, readers and writers mixed, arriving one after another
/// behind a writer: every one is let in in arrival order, apart from
/// readers with no writer between them, who are let in together.
pub fn a_mixed_crowd_is_served_in_arrival_order(env: &Env) {
    let k = key("mixed-crowd");
    let stop = env.path("stop-mixed-crowd");
    let log = env.path("mixed-crowd.log");
    let mut h = hold_until(env, &k, &[], &stop);
    // Runs of readers between writers, of varied lengths.
    let shared: Vec<bool> = (0..40).map(|i| !matches!(i % 7, 0 | 3)).collect();
    let mut crowd = Vec::new();
    for (i, s) in shared.iter().enumerate() {
        let script = format!(
            "echo start {i} >> {log}; sleep 0.05; echo end {i} >> {log}",
            log = log.display()
        );
        let extra: &[&str] = if *s { &["--shared"] } else { &[] };
        crowd.push(queue_up(env, &k, extra, &script, i + 1));
    }
    let q = queue(env, &k);
    let modes: Vec<bool> = q.iter().map(|w| w["mode"] == "shared").collect();
    assert_eq!(modes, shared, "the line's modes, in arrival order: {q:?}");
    std::fs::write(&stop, "").unwrap();
    assert_eq!(wait_timeout(&mut h, LONG), 0);
    for c in &mut crowd {
        assert_eq!(wait_timeout(c, LONG), 0);
    }
    let started: Vec<usize> = lines(&log)
        .iter()
        .filter_map(|l| l.strip_prefix("start ")?.parse().ok())
        .collect();
    assert_eq!(started.len(), 40, "{started:?}");
    for (a, &i) in started.iter().enumerate() {
        for &j in &started[a + 1..] {
            if j < i {
                // j arrived before i yet started after it: only readers
                // let in together, with no writer between them.
                let together = shared[i] && shared[j] && (j..i).all(|x| shared[x]);
                assert!(
                    together,
                    "{i} ({}) started before {j} ({}), which arrived first: {started:?}",
                    if shared[i] { "shared" } else { "exclusive" },
                    if shared[j] { "shared" } else { "exclusive" },
                );
            }
        }
    }
    // Exclusion held throughout: a writer ran alone.
    let mut inside: Vec<usize> = Vec::new();
    for l in lines(&log) {
        let (what, i) = l.split_once(' ').unwrap();
        let i: usize = i.parse().unwrap();
        if what == "start" {
            assert!(
                inside.iter().all(|&x| shared[x]) && (inside.is_empty() || shared[i]),
                "{i} started beside {inside:?}"
            );
            inside.push(i);
        } else {
            inside.retain(|&x| x != i);
        }
    }
}

/// `status` lists the line first in line first: who, since when, which
/// mode; the table shows the places.
pub fn status_lists_the_queue_in_arrival_order(env: &Env) {
    let k = key("queue-status");
    let stop = env.path("stop-queue-status");
    let mut h = hold_until(env, &k, &[], &stop);
    let mut w = vec![
        queue_up(env, &k, &[], "true", 1),
        queue_up(env, &k, &["--shared"], "true", 2),
        queue_up(env, &k, &[], "true", 3),
    ];
    let st = env.status_json(&[&k]);
    let q = st[0]["queue"].as_array().unwrap();
    let pids: Vec<u64> = q.iter().map(|e| e["pid"].as_u64().unwrap()).collect();
    let want: Vec<u64> = w.iter().map(|c| u64::from(c.id())).collect();
    assert_eq!(pids, want, "{st}");
    let modes: Vec<&str> = q.iter().map(|e| e["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, ["exclusive", "shared", "exclusive"], "{st}");
    let since: Vec<&str> = q.iter().map(|e| e["since"].as_str().unwrap()).collect();
    assert!(since.windows(2).all(|p| p[0] <= p[1]), "{st}");
    for e in q {
        assert!(e["owner"].is_string() && e["host"].is_string(), "{st}");
        assert_eq!(e["dead"], false, "{st}");
    }
    assert_eq!(st[0]["waiters"], 3, "{st}");
    let out = env.run(&["status", &k]);
    let table = stdout(&out);
    assert!(
        table.contains("1st in line")
            && table.contains("2nd in line (shared)")
            && table.contains("3rd in line"),
        "{table}"
    );
    std::fs::write(&stop, "").unwrap();
    assert_eq!(wait_timeout(&mut h, LONG), 0);
    for c in &mut w {
        assert_eq!(wait_timeout(c, LONG), 0);
    }
    assert!(queue(env, &k).is_empty());
}

/// `--limit 3`: three holders get slots 0, 1, 2 (`DLOCK_SLOT`, and
/// `"slot"` in status); a freed slot goes to the next holder, lowest
/// first. `"limit"` is the `--limit` given, `null` while held shared; a
/// mutex's holder is slot 0.
pub fn semaphore_slots_are_distinct_and_reused_lowest_first(env: &Env) {
    let k = key("slots");
    let holder = |i: usize| {
        let stop = env.path(&format!("stop-slot{i}"));
        let out = env.path(&format!("slot{i}"));
        let script = format!(
            "echo \"$DLOCK_SLOT\" > {out}; while [ ! -e {stop} ]; do sleep 0.02; done",
            out = out.display(),
            stop = stop.display()
        );
        let c = env
            .cmd(&[
                "run", "--limit", "3", "--key", &k, "--", "sh", "-c", &script,
            ])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dlock");
        let slot: u32 = read_when_ready(&out, LONG).trim().parse().expect("a slot");
        (c, slot, stop)
    };
    let mut hs: Vec<(Child, u32, std::path::PathBuf)> = (0..3).map(holder).collect();
    let mut slots: Vec<u32> = hs.iter().map(|h| h.1).collect();
    slots.sort();
    assert_eq!(slots, [0, 1, 2]);
    let st = env.status_json(&[&k]);
    assert_eq!(st[0]["limit"], 3, "the --limit given: {st}");
    let mut shown: Vec<u64> = st[0]["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["slot"].as_u64().expect("a slot"))
        .collect();
    shown.sort();
    assert_eq!(shown, [0, 1, 2], "{st}");
    // The holder of slot 1 leaves: the next one takes slot 1.
    let one = hs.iter().position(|h| h.1 == 1).unwrap();
    let (mut c, _, stop) = hs.remove(one);
    std::fs::write(&stop, "").unwrap();
    assert_eq!(wait_timeout(&mut c, LONG), 0);
    let (c, slot, stop) = holder(3);
    assert_eq!(slot, 1, "the lowest free slot");
    hs.push((c, slot, stop));
    // Slot 0 and then 2 free: the next takes 0.
    for s in [0, 2] {
        let i = hs.iter().position(|h| h.1 == s).unwrap();
        let (mut c, _, stop) = hs.remove(i);
        std::fs::write(&stop, "").unwrap();
        assert_eq!(wait_timeout(&mut c, LONG), 0);
    }
    let (c, slot, stop) = holder(4);
    assert_eq!(slot, 0, "the lowest free slot");
    hs.push((c, slot, stop));
    let st = env.status_json(&[&k]);
    assert_eq!(
        st[0]["limit"], 3,
        "one slot free still shows the limit: {st}"
    );
    for (mut c, _, stop) in hs {
        std::fs::write(&stop, "").unwrap();
        assert_eq!(wait_timeout(&mut c, LONG), 0);
    }
    // A mutex is slot 0; a shared lease has none, and no limit.
    let out = env.run(&[
        "run",
        "--key",
        &k,
        "--",
        "sh",
        "-c",
        "echo \"[$DLOCK_SLOT]\"",
    ]);
    assert_eq!(stdout(&out).trim(), "[0]", "{}", stderr(&out));
    let stop = env.path("stop-slot-shared");
    let mut s = hold_until(env, &k, &["--shared"], &stop);
    let st = env.status_json(&[&k]);
    assert_eq!(st[0]["limit"], serde_json::Value::Null, "{st}");
    assert_eq!(st[0]["holders"][0]["slot"], serde_json::Value::Null, "{st}");
    std::fs::write(&stop, "").unwrap();
    assert_eq!(wait_timeout(&mut s, LONG), 0);
    let out = env.run(&[
        "run",
        "--shared",
        "--key",
        &k,
        "--",
        "sh",
        "-c",
        "echo \"[$DLOCK_SLOT]\"",
    ]);
    assert_eq!(stdout(&out).trim(), "[]", "{}", stderr(&out));
}

/// A waiter SIGKILLed in the middle of the line (its TTL 30 s) does not
/// hold up the one behind it: that one runs within 2 s of the release.
pub fn a_killed_waiter_mid_queue_does_not_hold_up_the_rest(env: &Env) {
    let k = key("killed-mid");
    let stop = env.path("stop-killed-mid");
    let log = env.path("killed-mid.log");
    let mut h = hold_until(env, &k, &["--ttl", "20s"], &stop);
    let script = |i: usize| format!("echo {i} >> {}", log.display());
    let mut first = queue_up(env, &k, &[], &script(1), 1);
    let mut dead = queue_up(env, &k, &[], &script(2), 2);
    let mut last = queue_up(env, &k, &[], &script(3), 3);
    signal(dead.id(), Signal::SIGKILL);
    let _ = dead.wait();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&stop, "").unwrap();
    let released = Instant::now();
    assert_eq!(wait_timeout(&mut h, LONG), 0);
    assert_eq!(wait_timeout(&mut first, LONG), 0);
    assert_eq!(wait_timeout(&mut last, LONG), 0);
    let took = released.elapsed();
    assert_eq!(lines(&log), ["1", "3"]);
    assert!(
        took < Duration::from_secs(2),
        "a killed waiter in the line held up the rest for {took:?}"
    );
}

/// Wait until `status` lists `n` waiters of `key`.
pub fn queue_is(env: &Env, key: &str, n: usize) {
    wait_for(Duration::from_secs(20), &format!("{n} in line"), || {
        env.status_json(&[key])[0]["queue"]
            .as_array()
            .map_or(0, Vec::len)
            == n
    });
}

/// Nine `--limit 3` runs at once, each logging its slot on entry and exit:
/// every slot is below 3, and no two holders are ever in the same one.
pub fn slots_never_shared(env: &Env) {
    let log = env.path("slots.log");
    let script = format!(
        "echo \"in $DLOCK_SLOT\" >> {l}; sleep 0.3; echo \"out $DLOCK_SLOT\" >> {l}",
        l = log.display()
    );
    let key = format!("never-shared-{}", std::process::id());
    let mut runs: Vec<_> = (0..9)
        .map(|_| {
            env.spawn(&[
                "run", "--limit", "3", "--wait", "1m", "--key", &key, "--", "sh", "-c", &script,
            ])
        })
        .collect();
    for r in &mut runs {
        assert_eq!(wait_timeout(r, Duration::from_secs(60)), 0);
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let mut inside = std::collections::HashSet::new();
    for l in text.lines() {
        let (what, slot) = l.split_once(' ').unwrap();
        let slot: u32 = slot.parse().unwrap_or_else(|_| panic!("no slot: {text}"));
        assert!(slot < 3, "{text}");
        if what == "in" {
            assert!(
                inside.insert(slot),
                "slot {slot} given twice at once: {text}"
            );
        } else {
            inside.remove(&slot);
        }
    }
    assert_eq!(text.lines().count(), 18, "{text}");
}

/// A handle takes slot 0 and is released by another process; a `run`
/// takes slot 0 and is broken with `--force` (its lease or session lives
/// on a while): each time, the next holder gets slot 0.
pub fn gone_holders_slot_is_taken_over(env: &Env) {
    let key = format!("taken-over-{}", std::process::id());
    let out = env.run(&["acquire", "--limit", "2", "--ttl", "30s", "--key", &key]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let handle = stdout(&out).trim().to_string();
    let st = env.status_json(&[&key]);
    assert_eq!(st[0]["holders"][0]["slot"], 0, "{st}");
    let out = env.run(&["release", &handle]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let slot = |env: &Env| {
        let out = env.run(&[
            "run",
            "--limit",
            "2",
            "--key",
            &key,
            "--",
            "sh",
            "-c",
            "echo \"$DLOCK_SLOT\"",
        ]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        stdout(&out).trim().to_string()
    };
    assert_eq!(slot(env), "0");
    let stop = env.path("stop-taken-over");
    let script = format!("while [ ! -e {} ]; do sleep 0.02; done", stop.display());
    let mut h = env.spawn(&[
        "run", "--limit", "2", "--ttl", "30s", "--key", &key, "--", "sh", "-c", &script,
    ]);
    wait_for(Duration::from_secs(10), "a holder", || env.held(&key));
    let out = env.run(&["release", "--force", "--key", &key]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(slot(env), "0");
    std::fs::write(&stop, "").unwrap();
    wait_timeout(&mut h, Duration::from_secs(60));
}
