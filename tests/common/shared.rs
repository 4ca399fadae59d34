//! Conformance of shared locks (`--shared`, as `flock -s`): every backend
//! must pass all of it against a real server. `shared_conformance!(name,
//! Env::...)` instantiates it beside the main suite.
#![allow(dead_code, unused_macros, unused_imports)]

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::*;

macro_rules! shared_conformance {
    ($name:ident, $env:expr) => {
        mod $name {
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
            // A crowd past the stock connection limits (which would starve
            // the tests beside it).
            $crate::common::shared::shared_tests!(
                private,
                crowd_of_readers_and_writers_all_get_their_turn,
            );
            $crate::common::shared::shared_tests!(
                shared,
                readers_hold_together,
                writer_and_readers_exclude_each_other,
                waiting_writer_goes_before_later_readers,
                tokens_rise_across_modes,
                killed_reader_frees_only_its_share,
                interrupted_shared_waiter_does_not_delay_the_next,
                status_and_json_show_the_mode,
                force_release_breaks_every_reader,
                every_key_of_a_multi_key_run_is_shared,
                readers_and_writers_under_faults_never_overlap,
            );
        }
    };
}
pub(crate) use shared_conformance;

macro_rules! shared_tests {
    ($env:ident, $($t:ident),* $(,)?) => {
        $(
            #[test]
            fn $t() {
                $crate::common::shared::$t(&mut $env(stringify!($t)));
            }
        )*
    };
}
pub(crate) use shared_tests;

const LONG: Duration = Duration::from_secs(20);

fn key(name: &str) -> String {
    format!("sh-{name}-{}", std::process::id())
}

/// `dlock run --key K EXTRA -- sh -c SCRIPT` in the background.
fn start(env: &Env, k: &str, extra: &[&str], script: &str) -> Child {
    let mut args = vec!["run", "--key", k];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    env.cmd(&args)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dlock")
}

fn holders(env: &Env, k: &str) -> usize {
    env.status_json(&[k])[0]["holders"]
        .as_array()
        .map_or(0, Vec::len)
}

fn waiters(env: &Env, k: &str) -> u64 {
    env.status_json(&[k])[0]["waiters"].as_u64().unwrap_or(0)
}

/// A `run` that holds `k` until `stop` exists, started and holding.
fn hold_until(env: &Env, k: &str, extra: &[&str], stop: &std::path::Path) -> Child {
    let before = holders(env, k);
    let c = start(
        env,
        k,
        extra,
        &format!("while [ ! -e {} ]; do sleep 0.02; done", stop.display()),
    );
    wait_for(LONG, &format!("{k} to gain a holder"), || {
        holders(env, k) > before
    });
    c
}

fn err_of(c: &mut Child) -> String {
    let mut s = String::new();
    if let Some(e) = c.stderr.as_mut() {
        let _ = std::io::Read::read_to_string(e, &mut s);
    }
    s
}

fn finish(c: &mut Child) -> i32 {
    let code = wait_timeout(c, LONG);
    assert!(code == 0 || code == 143, "exit {code}: {}", err_of(c));
    code
}

/// Two shared holders at once; a third shared `--no-wait` gets in too.
pub fn readers_hold_together(env: &mut Env) {
    let k = key("two");
    let stop = env.path("two-stop");
    let mut a = hold_until(env, &k, &["--shared"], &stop);
    let mut b = hold_until(env, &k, &["-s"], &stop);
    assert_eq!(holders(env, &k), 2);
    let out = env.run(&["run", "--shared", "--no-wait", "--key", &k, "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    std::fs::write(&stop, "").unwrap();
    assert_eq!(finish(&mut a), 0);
    assert_eq!(finish(&mut b), 0);
    assert!(!env.held(&k));
}

/// Readers keep a writer out, and a writer keeps readers out; each gets in
/// once the other is gone.
pub fn writer_and_readers_exclude_each_other(env: &mut Env) {
    let k = key("excl");
    let stop = env.path("excl-stop");
    let mut r = hold_until(env, &k, &["--shared"], &stop);
    let out = env.run(&["run", "--no-wait", "--key", &k, "--", "true"]);
    assert_eq!(code(&out), 75, "a writer beside a reader: {}", stderr(&out));
    assert!(stderr(&out).contains("shared by"), "{}", stderr(&out));
    std::fs::write(&stop, "").unwrap();
    assert_eq!(finish(&mut r), 0);

    let stop2 = env.path("excl-stop2");
    let mut w = hold_until(env, &k, &[], &stop2);
    let out = env.run(&["run", "--shared", "--no-wait", "--key", &k, "--", "true"]);
    assert_eq!(code(&out), 75, "a reader beside a writer: {}", stderr(&out));
    // A waiting reader gets in promptly once the writer is done.
    let mut r2 = start(env, &k, &["--shared", "--wait", "20s"], "true");
    wait_for(LONG, "the reader to wait", || waiters(env, &k) >= 1);
    std::fs::write(&stop2, "").unwrap();
    let released = Instant::now();
    assert_eq!(finish(&mut w), 0);
    assert_eq!(finish(&mut r2), 0);
    assert!(
        released.elapsed() < Duration::from_secs(2),
        "the reader waited {:?} after the writer",
        released.elapsed()
    );
}

/// A writer that arrives while readers hold is served before readers that
/// arrive after it: no writer starvation.
pub fn waiting_writer_goes_before_later_readers(env: &mut Env) {
    let k = key("fair");
    let log = env.path("fair.log");
    let stop = env.path("fair-stop");
    let mut r1 = hold_until(env, &k, &["--shared"], &stop);
    let mut w = start(
        env,
        &k,
        &["--wait", "30s"],
        &format!(
            "echo W-begin >> {l}; sleep 0.3; echo W-end >> {l}",
            l = log.display()
        ),
    );
    wait_for(LONG, "the writer to wait", || waiters(env, &k) >= 1);
    // A reader now must queue behind the writer, though only a reader holds.
    let out = env.run(&["run", "--shared", "--no-wait", "--key", &k, "--", "true"]);
    assert_eq!(
        code(&out),
        75,
        "a reader jumped a waiting writer: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("an exclusive request is waiting"),
        "the busy message says why: {}",
        stderr(&out)
    );
    let mut r2 = start(
        env,
        &k,
        &["--shared", "--wait", "30s"],
        &format!("echo R2 >> {}", log.display()),
    );
    wait_for(LONG, "the second reader to wait", || waiters(env, &k) >= 2);
    std::fs::write(&stop, "").unwrap();
    assert_eq!(finish(&mut r1), 0);
    assert_eq!(finish(&mut w), 0);
    assert_eq!(finish(&mut r2), 0);
    let order = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        order.lines().collect::<Vec<_>>(),
        ["W-begin", "W-end", "R2"],
        "the writer first, then the later reader"
    );
}

/// Every acquisition, shared or exclusive, gets a greater token.
pub fn tokens_rise_across_modes(env: &mut Env) {
    let k = key("tok");
    let mut last = 0u64;
    for extra in [&["--shared"][..], &[], &["--shared"], &["--shared"], &[]] {
        let mut args = vec!["run", "--key", &k];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sh", "-c", "echo $DLOCK_TOKEN"]);
        let out = env.run(&args);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let t: u64 = stdout(&out).trim().parse().expect("a token");
        assert!(t > last, "token {t} after {last} ({extra:?})");
        last = t;
    }
    // Two readers at once get different tokens, both above the last.
    let stop = env.path("tok-stop");
    let (ta, tb) = (env.path("tok-a"), env.path("tok-b"));
    let script = |f: &std::path::Path| {
        format!(
            "echo $DLOCK_TOKEN > {}; while [ ! -e {} ]; do sleep 0.02; done",
            f.display(),
            stop.display()
        )
    };
    let mut a = start(env, &k, &["--shared"], &script(&ta));
    let a_tok: u64 = read_when_ready(&ta, LONG).parse().unwrap();
    let mut b = start(env, &k, &["--shared"], &script(&tb));
    let b_tok: u64 = read_when_ready(&tb, LONG).parse().unwrap();
    std::fs::write(&stop, "").unwrap();
    finish(&mut a);
    finish(&mut b);
    assert!(a_tok > last && b_tok > a_tok, "{last} {a_tok} {b_tok}");
}

/// A SIGKILLed reader (its guard stops its child) frees its own share: the
/// other reader still keeps a writer out, and once that one is done too
/// the writer gets in, within the TTL.
pub fn killed_reader_frees_only_its_share(env: &mut Env) {
    let k = key("kill");
    let stop = env.path("kill-stop");
    let mut a = hold_until(env, &k, &["--shared", "--ttl", "2s"], &stop);
    let mut b = hold_until(env, &k, &["--shared", "--ttl", "2s"], &stop);
    signal(a.id(), Signal::SIGKILL);
    assert_eq!(wait_timeout(&mut a, LONG), 137);
    // Well past the TTL: the killed reader's share is gone, the other's is
    // renewed and still keeps the writer out.
    std::thread::sleep(Duration::from_millis(2500));
    let out = env.run(&["run", "--no-wait", "--key", &k, "--", "true"]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    let st = env.status_json(&[&k]);
    assert_eq!(
        st[0]["holders"].as_array().unwrap().len(),
        1,
        "only the live reader: {st}"
    );
    std::fs::write(&stop, "").unwrap();
    assert_eq!(finish(&mut b), 0);
    let t = Instant::now();
    let out = env.run(&["run", "--wait", "10s", "--key", &k, "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

/// A shared waiter that is interrupted leaves nothing that holds up the
/// waiters behind it.
pub fn interrupted_shared_waiter_does_not_delay_the_next(env: &mut Env) {
    for (i, sig) in [Signal::SIGINT, Signal::SIGTERM].into_iter().enumerate() {
        let k = key(&format!("intr{i}"));
        let stop = env.path(&format!("intr-stop{i}"));
        let mut h = hold_until(env, &k, &[], &stop);
        let mut a = start(env, &k, &["--shared"], "true");
        wait_for(LONG, "the reader to queue", || waiters(env, &k) >= 1);
        let mut b = start(env, &k, &[], "true");
        wait_for(LONG, "the writer to queue", || waiters(env, &k) >= 2);
        signal(a.id(), sig);
        assert_eq!(wait_timeout(&mut a, LONG), 128 + sig as i32);
        std::fs::write(&stop, "").unwrap();
        let released = Instant::now();
        assert_eq!(finish(&mut h), 0);
        assert_eq!(finish(&mut b), 0);
        assert!(
            released.elapsed() < Duration::from_secs(2),
            "after a {sig:?} to the reader ahead, the writer waited {:?}",
            released.elapsed()
        );
    }
}

/// `status` says `shared N` with a line per holder; JSON holders carry
/// `"mode"`; an exclusive holder is `held` and `"exclusive"`.
pub fn status_and_json_show_the_mode(env: &mut Env) {
    let k = key("st");
    let stop = env.path("st-stop");
    let mut a = hold_until(env, &k, &["--shared"], &stop);
    let mut b = hold_until(env, &k, &["--shared"], &stop);
    let st = env.status_json(&[&k]);
    let hs = st[0]["holders"].as_array().unwrap();
    assert_eq!(hs.len(), 2, "{st}");
    assert!(hs.iter().all(|h| h["mode"] == "shared"), "{st}");
    assert!(hs.iter().all(|h| h["token"].as_u64().is_some()), "{st}");
    assert_eq!(st[0]["held"], true);
    let table = stdout(&env.run(&["status", &k]));
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(rows[0].contains("shared 2"), "{table}");
    // The namespace-wide listing shows it too.
    let all = stdout(&env.run(&["status"]));
    assert!(
        all.lines()
            .any(|l| l.starts_with(&format!("{k} ")) && l.contains("shared 2")),
        "{all}"
    );
    std::fs::write(&stop, "").unwrap();
    finish(&mut a);
    finish(&mut b);
    let stop2 = env.path("st-stop2");
    let mut w = hold_until(env, &k, &[], &stop2);
    let st = env.status_json(&[&k]);
    assert_eq!(st[0]["holders"][0]["mode"], "exclusive", "{st}");
    std::fs::write(&stop2, "").unwrap();
    finish(&mut w);
}

/// `release --force` breaks every shared holder of the key, handles and
/// runs alike; runs are stopped with 74.
pub fn force_release_breaks_every_reader(env: &mut Env) {
    let k = key("force");
    let out = env.run(&["acquire", "--shared", "--ttl", "60s", "--key", &k]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let handle = stdout(&out).trim().to_string();
    let (mut r, _) = env.run_child(&k, &["--shared"], "exec sleep 30");
    wait_for(LONG, "two holders", || holders(env, &k) == 2);
    let out = env.run(&["release", "--force", "--key", &k]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(wait_timeout(&mut r, LONG), 74);
    assert!(!env.held(&k));
    // The handle's lease is gone: releasing it says so.
    let out = env.run(&["release", &handle]);
    assert_eq!(code(&out), 74, "{}", stderr(&out));
    // A handle taken shared releases as one.
    let out = env.run(&["acquire", "-s", "--key", &k]);
    let handle = stdout(&out).trim().to_string();
    assert_eq!(holders(env, &k), 1);
    let out = env.run(&["release", &handle]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(!env.held(&k));
}

/// With several keys, `--shared` takes every one of them shared.
pub fn every_key_of_a_multi_key_run_is_shared(env: &mut Env) {
    let (a, b) = (key("ma"), key("mb"));
    let stop = env.path("m-stop");
    let mut r = hold_until(env, &a, &["--shared"], &stop);
    let out = env.run(&[
        "run",
        "--shared",
        "--no-wait",
        "--key",
        &a,
        "--key",
        &b,
        "--",
        "sh",
        "-c",
        "true",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let mut m = start(
        env,
        &a,
        &["--shared", "--key", &b],
        &format!("while [ ! -e {} ]; do sleep 0.02; done", stop.display()),
    );
    wait_for(LONG, "both keys held", || holders(env, &b) == 1);
    let st = env.status_json(&[&a, &b]);
    assert_eq!(st[0]["holders"].as_array().unwrap().len(), 2, "{st}");
    assert_eq!(st[1]["holders"][0]["mode"], "shared", "{st}");
    let out = env.run(&["run", "--no-wait", "--key", &b, "--", "true"]);
    assert_eq!(code(&out), 75);
    std::fs::write(&stop, "").unwrap();
    finish(&mut r);
    finish(&mut m);
}

/// The fault-injection tool with readers and writers mixed: SIGKILLed
/// holders, SIGKILLed children and frozen holders; no exclusive section ever
/// meets another section, and readers did run side by side.
pub fn readers_and_writers_under_faults_never_overlap(env: &mut Env) {
    use super::torture::{self, Fault};
    let cfg = torture::Config {
        dlock: DLOCK.into(),
        backend: env.url.clone(),
        key: key("torture"),
        clients: 5,
        runs: 6,
        hold: Duration::from_millis(60),
        ttl: Duration::from_millis(1500),
        limit: 1,
        shared: 0.6,
        faults: vec![Fault::KillDlock, Fault::KillChild, Fault::StopDlock],
        fault_rate: 0.25,
        dir: env.path("torture"),
        seed: 11,
    };
    let r = torture::run_in(&cfg, env.namespace.as_deref());
    assert!(r.ok(), "{r:#?}");
    assert!(!r.faults.is_empty(), "no fault was injected: {r:#?}");
    assert!(r.max_concurrent >= 2, "readers never held together: {r:#?}");
}

/// A crowd on one key, mostly readers (more readers holding at once than a
/// stock ZooKeeper takes connections from one address): every one gets its
/// turn and none exits 69; readers do hold side by side.
pub fn crowd_of_readers_and_writers_all_get_their_turn(env: &mut Env) {
    let k = key("crowd");
    let log = env.path("crowd.log");
    let n = 80;
    let mut kids: Vec<Child> = (0..n)
        .map(|i| {
            let mut args = vec!["run", "--wait", "2m", "--key", &k];
            if i % 10 != 0 {
                args.push("--shared");
            }
            let script = format!("echo B >> {l}; sleep 0.3; echo E >> {l}", l = log.display());
            args.extend_from_slice(&["--", "sh", "-c", &script]);
            env.cmd(&args)
                .stdin(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut failed = Vec::new();
    for c in &mut kids {
        let code = wait_timeout(c, Duration::from_secs(150));
        if code != 0 {
            failed.push((code, err_of(c)));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {n} failed: {failed:?}",
        failed.len()
    );
    let (mut cur, mut most) = (0i32, 0i32);
    for l in std::fs::read_to_string(&log).unwrap().lines() {
        cur += if l == "B" { 1 } else { -1 };
        most = most.max(cur);
    }
    assert!(most > 1, "readers never held side by side");
}
