//! `dlock elect` and `dlock leader` against every backend this build has:
//! three candidates whose bodies log their start and end, failover after a
//! graceful stop and after a crash, a broken lease, the restart policies and
//! the leader's view. Failover times are printed (`--nocapture` shows them).

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

const LONG: Duration = Duration::from_secs(30);

fn key(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// The body of candidate `id`: log "start TOKEN ID PID TTL", run until
/// SIGTERM, then log "end TOKEN ID" and exit 0.
fn body(log: &Path, id: usize) -> String {
    let log = log.display();
    format!(
        "echo \"start $DLOCK_TOKEN {id} $$ $DLOCK_TTL\" >> {log}; \
         trap 'echo \"end $DLOCK_TOKEN {id}\" >> {log}; exit 0' TERM; \
         while :; do sleep 0.05; done"
    )
}

fn candidate(env: &Env, k: &str, extra: &[&str], script: &str) -> Reaped {
    let mut args = vec!["-v", "elect", "--key", k];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    // Each candidate's log, for a failing test to show.
    let errs = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(env.path("candidates.err"))
        .unwrap();
    Reaped(
        env.cmd(&args)
            .stdin(Stdio::null())
            .stderr(errs)
            .spawn()
            .expect("spawn dlock elect"),
    )
}

#[derive(Debug, Clone, PartialEq)]
enum Line {
    Start {
        token: u64,
        id: usize,
        pid: i32,
        ttl: f64,
    },
    End {
        token: u64,
        id: usize,
    },
}

fn lines(log: &Path) -> Vec<Line> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w[0] {
                "start" => Line::Start {
                    token: w[1].parse().unwrap(),
                    id: w[2].parse().unwrap(),
                    pid: w[3].parse().unwrap(),
                    ttl: w[4].parse().unwrap(),
                },
                _ => Line::End {
                    token: w[1].parse().unwrap(),
                    id: w[2].parse().unwrap(),
                },
            }
        })
        .collect()
}

fn starts(log: &Path) -> Vec<(u64, usize, i32, f64)> {
    lines(log)
        .into_iter()
        .filter_map(|l| match l {
            Line::Start {
                token,
                id,
                pid,
                ttl,
            } => Some((token, id, pid, ttl)),
            Line::End { .. } => None,
        })
        .collect()
}

/// Wait for the n-th start line; how long it took.
fn wait_start(log: &Path, n: usize, limit: Duration) -> Duration {
    let t = Instant::now();
    wait_for(limit, &format!("start number {n}"), || {
        starts(log).len() >= n
    });
    t.elapsed()
}

/// Exactly one body at a time: every start follows the end of the
/// previous term, unless `excused` lists that term (killed with its dlock,
/// so no end line; or its lock was broken by force), and tokens rise.
fn assert_one_at_a_time(log: &Path, excused: &[u64]) {
    let mut running: Vec<u64> = Vec::new();
    let mut last = 0;
    for l in lines(log) {
        match l {
            Line::Start { token, .. } => {
                for r in &running {
                    assert!(excused.contains(r), "term {token} started while {r} ran");
                }
                assert!(token > last, "token {token} after {last}");
                last = token;
                running.push(token);
            }
            Line::End { token, .. } => {
                assert!(
                    running.contains(&token),
                    "end of term {token}, which was not running"
                );
                running.retain(|r| *r != token);
            }
        }
    }
}

fn leader(env: &Env, k: &str) -> (i32, serde_json::Value) {
    let out = env.run(&["leader", k, "--json"]);
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (code(&out), v)
}

/// Three candidates: one body at a time; SIGTERM to the leader's dlock
/// hands over within 1 s; `dlock leader` names each leader; SIGKILL of a
/// leader's dlock hands over within the TTL plus 1 s; the last one stopped
/// leaves no leader.
pub fn failover(env: &Env, name: &str) {
    let k = key("failover");
    let log = env.path("log");
    let (c, _) = leader(env, &k);
    assert_eq!(c, 75, "no leader yet");
    let mut cands: Vec<Reaped> = (0..3)
        .map(|i| candidate(env, &k, &["--ttl", "2s"], &body(&log, i)))
        .collect();
    wait_start(&log, 1, LONG);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(starts(&log).len(), 1, "one leader: {:?}", lines(&log));
    let (_, first, _, _) = starts(&log)[0];
    let (c, v) = leader(env, &k);
    assert_eq!(c, 0);
    assert_eq!(v["token"].as_u64(), Some(starts(&log)[0].0), "{v}");
    let dlock_pid = cands[first].id();
    assert!(
        v["value"]
            .as_str()
            .unwrap()
            .ends_with(&format!(" pid {dlock_pid}")),
        "{v}"
    );

    // Graceful: SIGTERM to the leader's dlock.
    signal(cands[first].id(), Signal::SIGTERM);
    let took = wait_start(&log, 2, LONG);
    assert_eq!(
        wait_timeout(&mut cands[first], LONG),
        0,
        "the body's status"
    );
    eprintln!("[{name}] graceful failover: {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "graceful failover took {took:?}"
    );

    // Crash: SIGKILL of the leader's dlock; its guard kills the body.
    let (token2, second, pid2, ttl) = starts(&log)[1];
    signal(cands[second].id(), Signal::SIGKILL);
    let limit = Duration::from_secs_f64(ttl) + Duration::from_secs(1);
    let took = wait_start(&log, 3, limit + Duration::from_secs(5));
    let _ = cands[second].wait();
    eprintln!("[{name}] crash failover: {took:?} (TTL {ttl}s)");
    assert!(
        took < limit,
        "crash failover took {took:?} with a TTL of {ttl}s"
    );
    assert!(!alive(pid2), "the crashed leader's body was killed");
    let (token3, third, _, _) = starts(&log)[2];
    assert!(token3 > token2);
    let (c, v) = leader(env, &k);
    assert_eq!(c, 0);
    assert_eq!(v["token"].as_u64(), Some(token3), "{v}");

    signal(cands[third].id(), Signal::SIGTERM);
    assert_eq!(wait_timeout(&mut cands[third], LONG), 0);
    wait_for(LONG, "no leader", || leader(env, &k).0 == 75);
    assert_eq!(leader(env, &k).1, serde_json::Value::Null);
    assert_one_at_a_time(&log, &[token2]);
}

/// `release --force` of the key: the leader's body is stopped, the
/// candidates campaign again and one leads, with a greater token; neither
/// candidate exits. Then an interrupted standby leaves nothing behind.
pub fn broken_lease_and_interrupted_standby(env: &Env, _name: &str) {
    let k = key("broken");
    let log = env.path("log");
    let mut cands: Vec<Reaped> = (0..2)
        .map(|i| candidate(env, &k, &["--ttl", "3s"], &body(&log, i)))
        .collect();
    wait_start(&log, 1, LONG);
    let (token1, _, _, _) = starts(&log)[0];
    let out = env.run(&["release", "--force", "--key", &k]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    wait_start(&log, 2, LONG);
    let (token2, lead, _, _) = starts(&log)[1];
    assert!(token2 > token1);
    // Breaking the lock is an administrator's act: another candidate may
    // lead at once, while the old body runs until its dlock's next renewal
    // (a third of the TTL) finds the lease gone; the token tells them apart.
    let first_id = starts(&log)[0].1;
    wait_for(
        Duration::from_secs(3),
        "the broken term's body to stop",
        || {
            lines(&log).contains(&Line::End {
                token: token1,
                id: first_id,
            })
        },
    );
    for c in cands.iter_mut() {
        assert!(c.try_wait().unwrap().is_none(), "a candidate exited");
    }
    assert_one_at_a_time(&log, &[token1]);

    // The standby is interrupted, by SIGINT then (a new one) by SIGTERM.
    let waiters = || env.status_json(&[&k])[0]["waiters"].as_u64().unwrap_or(0);
    let standby = 1 - lead;
    wait_for(LONG, "the standby to queue", || waiters() >= 1);
    signal(cands[standby].id(), Signal::SIGINT);
    assert_eq!(wait_timeout(&mut cands[standby], LONG), 130);
    let mut other = candidate(env, &k, &["--ttl", "3s"], &body(&log, 2));
    wait_for(LONG, "the new standby to queue", || waiters() >= 1);
    signal(other.id(), Signal::SIGTERM);
    assert_eq!(wait_timeout(&mut other, LONG), 143);
    wait_for(Duration::from_secs(8), "no waiter left", || waiters() == 0);
    let st = env.status_json(&[&k]);
    assert_eq!(st[0]["holders"].as_array().unwrap().len(), 1, "{st}");
    assert_eq!(st[0]["holders"][0]["token"].as_u64(), Some(token2), "{st}");
    signal(cands[lead].id(), Signal::SIGTERM);
    assert_eq!(wait_timeout(&mut cands[lead], LONG), 0);
    wait_for(LONG, "the key to be free", || !env.held(&k));
    assert_eq!(starts(&log).len(), 2, "the interrupted standbys never led");
}

/// `--restart never` exits with the body's status and resigns; `on-failure`
/// campaigns again until it succeeds; `always` until stopped. Each term's
/// token is greater.
pub fn restart_policies(env: &Env, _name: &str) {
    let k = key("restart");
    let out = env.run(&["elect", "--key", &k, "--", "sh", "-c", "exit 3"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(!env.held(&k), "resigned");

    let runs = env.path("runs");
    let script = format!(
        "echo $DLOCK_TOKEN >> {r}; [ $(wc -l < {r}) -ge 3 ]",
        r = runs.display()
    );
    let out = env.run(&[
        "elect",
        "--key",
        &k,
        "--restart",
        "on-failure",
        "--restart-delay",
        "100ms",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let tokens: Vec<u64> = std::fs::read_to_string(&runs)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(tokens.len(), 3, "{tokens:?}");
    assert!(tokens.windows(2).all(|w| w[1] > w[0]), "{tokens:?}");

    let always = env.path("always");
    let mut c = candidate(
        env,
        &k,
        &["--restart", "always", "--restart-delay", "100ms"],
        &format!("echo run >> {}; sleep 0.1", always.display()),
    );
    wait_for(LONG, "three terms", || {
        std::fs::read_to_string(&always)
            .unwrap_or_default()
            .lines()
            .count()
            >= 3
    });
    signal(c.id(), Signal::SIGTERM);
    let code = wait_timeout(&mut c, LONG);
    assert!([0, 143].contains(&code), "exit {code}");
    wait_for(LONG, "the key to be free", || !env.held(&k));
}

/// `dlock leader --watch --json`: null, the leader, null again.
pub fn leader_watch(env: &Env, name: &str) {
    let k = key("watch");
    let out_path = env.path("watch.out");
    let mut w = Reaped(
        env.cmd(&["leader", &k, "--json", "--watch"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let seen = || {
        std::fs::read_to_string(&out_path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    wait_for(LONG, "the first line", || !seen().is_empty());
    let log = env.path("log");
    let mut c = candidate(
        env,
        &k,
        &["--value", "web-1:8080 (a|b)"],
        &format!(
            "echo \"$DLOCK_VALUE\" > {}; {}",
            env.path("value").display(),
            body(&log, 0)
        ),
    );
    wait_start(&log, 1, LONG);
    wait_for(LONG, "the leader line", || seen().len() >= 2);
    // The value is published (a `|` becomes `_` in an owner field; etcd
    // keeps it bare, as the key's value), and CMD gets it as given.
    let published = if name == "etcd" {
        "web-1:8080 (a|b)"
    } else {
        "web-1:8080 (a_b)"
    };
    let out = env.run(&["leader", &k]);
    assert_eq!(code(&out), 0);
    assert_eq!(stdout(&out), format!("{published}\n"));
    assert_eq!(
        std::fs::read_to_string(env.path("value")).unwrap(),
        "web-1:8080 (a|b)\n"
    );
    let st = env.status_json(&[&k]);
    let owner = st[0]["holders"][0]["owner"].as_str().unwrap();
    assert!(owner.ends_with(" (web-1:8080 (a_b))"), "{st}");
    signal(c.id(), Signal::SIGTERM);
    assert_eq!(wait_timeout(&mut c, LONG), 0);
    wait_for(LONG, "the null line", || seen().len() >= 3);
    signal(w.id(), Signal::SIGTERM);
    assert_eq!(wait_timeout(&mut w, LONG), 0);
    let s = seen();
    assert_eq!(s.len(), 3, "{s:?}");
    assert!(s[0].is_null() && s[2].is_null(), "{s:?}");
    assert_eq!(s[1]["key"], k.as_str());
    assert_eq!(s[1]["value"], published);
    assert_eq!(s[1]["token"].as_u64(), Some(starts(&log)[0].0));
    assert!(s[1]["since"].is_string(), "{s:?}");
}

/// The server is down for longer than the TTL: the leader's body is
/// stopped, no candidate exits, and once the server is back some candidate
/// leads again.
pub fn outage_longer_than_the_ttl(env: &mut Env, name: &str) {
    let k = key("outage");
    let log = env.path("log");
    let mut cands: Vec<Reaped> = (0..2)
        .map(|i| {
            candidate(
                env,
                &k,
                &["--ttl", "2s", "--kill-after", "500ms"],
                &body(&log, i),
            )
        })
        .collect();
    wait_start(&log, 1, LONG);
    let (token1, id1, _, _) = starts(&log)[0];
    let down = Instant::now();
    env.restart_server(Duration::from_secs(4));
    assert!(
        lines(&log).contains(&Line::End {
            token: token1,
            id: id1
        }),
        "[{name}] the body was stopped while the server was down: {:?}",
        lines(&log)
    );
    let t = Instant::now();
    while starts(&log).len() < 2 {
        if t.elapsed() > Duration::from_secs(30) {
            let errs = std::fs::read_to_string(env.path("candidates.err")).unwrap_or_default();
            panic!("[{name}] no leader 30s after the server came back:\n{errs}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = t.elapsed();
    eprintln!(
        "[{name}] a leader again {:?} after the server came back ({:?} after it went down)",
        took,
        down.elapsed()
    );
    for c in cands.iter_mut() {
        assert!(
            c.try_wait().unwrap().is_none(),
            "[{name}] a candidate exited"
        );
    }
    // A Redis server restarted empty starts its tokens again (see "Redis
    // specifics"): only the order of bodies is checked here.
    let mut running = false;
    for l in lines(&log) {
        match l {
            Line::Start { .. } => {
                assert!(!running, "[{name}] two bodies at once: {:?}", lines(&log));
                running = true;
            }
            Line::End { .. } => running = false,
        }
    }
}

/// The fault-injection tool's election mode: three candidates, the leader
/// SIGTERMed, SIGKILLed, frozen past its TTL and its CMD killed, in turn.
/// Leader bodies never overlap, and a new one starts within 1 s of a
/// graceful stop or CMD's exit and within the TTL + 1 s of a crash.
pub fn torture_faults_to_the_leader(env: &Env, name: &str) {
    use common::torture::{self, Fault};
    let ttl = Duration::from_secs(2);
    let cfg = torture::Config {
        dlock: DLOCK.into(),
        backend: env.url.clone(),
        key: key(&format!("torture-{name}")),
        clients: 3,
        runs: 4,
        hold: Duration::from_millis(200),
        ttl,
        limit: 1,
        shared: 0.0,
        faults: vec![
            Fault::TermDlock,
            Fault::KillDlock,
            Fault::KillChild,
            Fault::StopDlock,
        ],
        fault_rate: 1.0,
        dir: env.path("torture"),
        seed: 5,
    };
    let r = torture::elect_in(&cfg, env.namespace.as_deref());
    assert!(r.ok(), "{r:#?}");
    assert_eq!(r.gaps.len(), 4, "{r:#?}");
    let second = Duration::from_secs(1);
    for (fault, bound) in [
        (Fault::TermDlock, second),
        (Fault::KillChild, second),
        (Fault::KillDlock, ttl + second),
        (Fault::StopDlock, ttl + second),
    ] {
        let worst = r.worst(fault).expect("measured");
        assert!(
            worst < bound,
            "{fault:?}: {worst:?} without a leader: {r:#?}"
        );
    }
}

macro_rules! elect_suite {
    ($name:ident, $env:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::common::*;
            /// This binary's server of the set-up, in the test's namespace.
            fn shared(test: &str) -> Env {
                Env::shared(
                    stringify!($env),
                    || $env,
                    &format!("{}.{test}", stringify!($name)),
                )
            }
            #[test]
            fn failover() {
                super::failover(&shared("failover"), stringify!($name));
            }
            #[test]
            fn broken_lease_and_interrupted_standby() {
                super::broken_lease_and_interrupted_standby(
                    &shared("broken_lease_and_interrupted_standby"),
                    stringify!($name),
                );
            }
            #[test]
            fn restart_policies() {
                super::restart_policies(&shared("restart_policies"), stringify!($name));
            }
            #[test]
            fn leader_watch() {
                super::leader_watch(&shared("leader_watch"), stringify!($name));
            }
            #[test]
            fn torture_faults_to_the_leader() {
                super::torture_faults_to_the_leader(
                    &shared("torture_faults_to_the_leader"),
                    stringify!($name),
                );
            }
            // It stops the server: a server of its own.
            #[test]
            fn outage_longer_than_the_ttl() {
                let mut env = $env;
                if env.can_restart() {
                    super::outage_longer_than_the_ttl(&mut env, stringify!($name));
                }
            }
        }
    };
}

elect_suite!(sqlite, Env::sqlite());
elect_suite!(redis, Env::redis());
elect_suite!(postgres, Env::postgres());

#[test]
fn usage_errors() {
    let env = Env::sqlite();
    let out = env.run(&[
        "elect",
        "--key",
        "k",
        "--restart",
        "sometimes",
        "--",
        "true",
    ]);
    assert_eq!(code(&out), 64);
    let out = env.run(&["elect", "--key", "", "--", "true"]);
    assert_eq!(code(&out), 64);
    let out = env.run(&["leader", ""]);
    assert_eq!(code(&out), 64);
}

#[test]
fn first_campaign_bounded_by_wait() {
    let env = Env::sqlite();
    let mut h = Reaped(env.spawn(&["run", "--key", "w", "--", "sleep", "30"]));
    wait_for(LONG, "held", || env.held("w"));
    let t = Instant::now();
    let out = env.run(&["elect", "--key", "w", "--wait", "500ms", "--", "true"]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    assert!(t.elapsed() < Duration::from_secs(5));
    signal(h.id(), Signal::SIGTERM);
    let _ = h.wait();
}

elect_suite!(redlock, Env::redlock(3));
elect_suite!(mariadb, Env::mariadb());
elect_suite!(zookeeper, Env::zookeeper());
elect_suite!(etcd, Env::etcd());
elect_suite!(s3, Env::s3());

#[path = "elect/reporting.rs"]
mod reporting;

#[path = "elect/peers.rs"]
mod peers;
