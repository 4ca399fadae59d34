//! etcd v3 against a real server (Debian `etcd-server`, `etcd-client`),
//! started per test on free loopback ports.

mod common;

use std::time::{Duration, Instant};

use common::fair::fair_conformance;
use common::shared::shared_conformance;
use common::suite::{self, conformance};
use common::*;
use nix::sys::signal::Signal;

conformance!(etcd, Env::etcd());
shared_conformance!(etcd_shared, Env::etcd());
fair_conformance!(etcd_fair, Env::etcd());

#[test]
fn server_frozen_past_the_ttl_stops_the_child() {
    let env = Env::etcd();
    suite::frozen_server_stops_child(
        &env,
        Duration::from_secs(2),
        Duration::from_millis(400),
        |sig| env.etcd.as_ref().unwrap().signal(sig),
    );
}

/// `etcdctl lock NAME sleep 2` in the background.
fn etcdctl_holds(etcd: &servers::Etcd, name: &str) -> std::process::Child {
    let ctl = servers::require("etcdctl", "etcd-client");
    std::process::Command::new(&ctl)
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &format!("127.0.0.1:{}", etcd.port),
            "lock",
            name,
            "sleep",
            "2",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// `etcdctl lock dlock/KEY` and dlock exclude each other, both ways.
#[test]
fn etcdctl_lock_interoperates() {
    let env = Env::etcd();
    let etcd = env.etcd.as_ref().unwrap();
    let mut held = etcdctl_holds(etcd, "dlock/job");
    wait_for(Duration::from_secs(10), "etcdctl to hold the lock", || {
        env.held("job")
    });
    let out = env.run(&["run", "-n", "--key", "job", "--", "true"]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    foreign_holder_shown(&env, "job");
    let t = Instant::now();
    let out = env.run(&["run", "--wait", "15s", "--key", "job", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        t.elapsed() > Duration::from_millis(1000),
        "dlock got the lock while etcdctl held it"
    );
    assert!(held.wait().unwrap().success());
    // dlock holds; etcdctl waits until dlock lets go.
    let mut h = env.spawn(&["run", "--key", "job", "--", "sleep", "2"]);
    wait_for(Duration::from_secs(10), "dlock to hold", || env.held("job"));
    let t = Instant::now();
    let out = etcd.ctl(&["lock", "dlock/job", "true"]);
    assert!(
        t.elapsed() > Duration::from_millis(1000),
        "etcdctl got the lock while dlock held it: {out}"
    );
    assert_eq!(wait_timeout(&mut h, Duration::from_secs(10)), 0);
}

#[test]
fn cluster_survives_a_member_and_the_leader_dying() {
    let mut members = servers::Etcd::cluster();
    let url = format!(
        "etcd://{}",
        members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.port))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut env = Env::sqlite();
    env.url = url;
    let out = env.run(&["run", "--key", "c", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let follower = members.iter().position(|m| !m.is_leader()).unwrap();
    let down = members[follower].port;
    members[follower].stop();
    env.doctor_names_a_member_down(down);
    let out = env.run(&[
        "--connect-timeout",
        "10s",
        "run",
        "--wait",
        "20s",
        "--key",
        "c",
        "--",
        "true",
    ]);
    assert_eq!(code(&out), 0, "one member down: {}", stderr(&out));
    // Back to three, then kill the leader: the two left elect a new one.
    members[follower].restart();
    let leader = members.iter().position(|m| m.is_leader()).unwrap();
    members[leader].stop();
    wait_for(Duration::from_secs(20), "a new leader", || {
        members
            .iter()
            .enumerate()
            .any(|(i, m)| i != leader && m.is_leader())
    });
    let out = env.run(&[
        "--connect-timeout",
        "10s",
        "run",
        "--wait",
        "20s",
        "--key",
        "c",
        "--",
        "true",
    ]);
    assert_eq!(code(&out), 0, "leader killed: {}", stderr(&out));
    // Two of three members gone: no quorum, so no lock, and a bounded error.
    let other = (0..3).find(|i| *i != leader && *i != follower).unwrap();
    members[other].stop();
    let t = Instant::now();
    let out = env.run(&[
        "--connect-timeout",
        "2s",
        "run",
        "--wait",
        "2s",
        "--key",
        "c",
        "--",
        "echo",
        "ran",
    ]);
    assert!(
        matches!(code(&out), 69 | 75),
        "{}: {}",
        code(&out),
        stderr(&out)
    );
    assert!(!stdout(&out).contains("ran"), "ran without a quorum");
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t.elapsed()
    );
}

/// With several endpoints, a release and the renewals move to another
/// member when the one in use stops answering (frozen here; a member
/// without a leader does the same), instead of waiting out
/// `--connect-timeout` on it and leaving the key to its TTL (issue 20).
#[test]
fn releases_and_renewals_move_past_a_frozen_member() {
    let members = servers::Etcd::cluster();
    let mut env = Env::sqlite();
    env.url = format!(
        "etcd://{}",
        members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.port))
            .collect::<Vec<_>>()
            .join(",")
    );
    let keys =
        |k: &str| members[1].ctl(&["get", "--prefix", "--keys-only", &format!("dlock/{k}/")]);
    let hold = |k: &str, ttl: &str, stop: &std::path::Path| {
        // The child says it started: the holder is past its acquisition
        // (a member frozen while it still lists the queue is another test).
        let started = stop.with_extension("started");
        let script = format!(
            "touch {}; while [ ! -e {} ]; do sleep 0.02; done",
            started.display(),
            stop.display()
        );
        let c = env
            .cmd(&["--connect-timeout", "3s", "run", "--ttl", ttl, "--key", k])
            .args(["--", "sh", "-c", &script])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        wait_for(Duration::from_secs(20), "the holder to hold", || {
            started.exists() && keys(k).contains(&format!("dlock/{k}/"))
        });
        Reaped(c)
    };
    let finish = |h: &mut Reaped, stop: &std::path::Path| {
        std::fs::write(stop, "").unwrap();
        let t = Instant::now();
        let rc = wait_timeout(h, Duration::from_secs(20));
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(h.stderr.as_mut().unwrap(), &mut err);
        (rc, t.elapsed(), err)
    };
    // dlock talks to the first endpoint listed while it answers.
    // A release: the member freezes just before it.
    let stop = env.path("stop-release");
    let mut h = hold("rel", "30s", &stop);
    members[0].signal(Signal::SIGSTOP);
    let (rc, took, err) = finish(&mut h, &stop);
    assert_eq!(rc, 0, "{err}");
    assert!(!err.contains("could not release"), "{err}");
    assert!(
        took < Duration::from_secs(3),
        "the release took {took:?}: {err}"
    );
    assert_eq!(keys("rel").trim(), "", "the release landed");
    eprintln!("release past a frozen member: {took:?}");
    members[0].signal(Signal::SIGCONT);
    // Renewals: the member freezes while the holder runs for longer than
    // its TTL (3 s: a renewal every second).
    wait_for(Duration::from_secs(20), "the member to serve again", || {
        members[0]
            .ctl(&["endpoint", "health"])
            .contains("is healthy")
    });
    let stop = env.path("stop-renew");
    let mut h = hold("ren", "3s", &stop);
    members[0].signal(Signal::SIGSTOP);
    // A new dlock starts with the members that answer.
    let t = Instant::now();
    let out = env.run(&[
        "--connect-timeout",
        "3s",
        "run",
        "-n",
        "--key",
        "new",
        "--",
        "true",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let took = t.elapsed();
    eprintln!("a run with the first member frozen: {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        keys("ren").contains("dlock/ren/"),
        "the lock outlived its TTL"
    );
    let (rc, _, err) = finish(&mut h, &stop);
    assert_eq!(rc, 0, "renewals did not move to another member: {err}");
    assert_eq!(keys("ren").trim(), "", "the release landed");
    members[0].signal(Signal::SIGCONT);
}

/// `etcds://`: TLS verified against a CA given in `SSL_CERT_FILE`; an
/// untrusted server is refused (69).
#[test]
fn tls_with_a_trusted_ca_and_refusal_without() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = servers::test_certificates(dir.path());
    let server = servers::Etcd::start_tls(&cert, &key, &ca);
    let mut env = Env::sqlite();
    env.url = format!("etcds://127.0.0.1:{}", server.port);
    let out = env
        .cmd(&["run", "--key", "tls", "--", "echo", "over-tls"])
        .env("SSL_CERT_FILE", &ca)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "over-tls");
    let out = env
        .cmd(&["run", "--key", "tls", "--", "true"])
        .env("SSL_CERT_FILE", "/dev/null")
        .output()
        .unwrap();
    assert_eq!(
        code(&out),
        69,
        "an untrusted certificate must be refused: {}",
        stderr(&out)
    );
}

/// doctor says what lease etcd really grants for the TTL.
#[test]
fn doctor_reports_the_lease_etcd_grants() {
    let env = Env::etcd();
    let (c, checks) = env.doctor(&["--ttl", "1500ms"]);
    assert!(
        checks
            .iter()
            .any(|(n, l, m)| n == "lease" && l == "info" && m.contains("2s")),
        "{checks:?}"
    );
    assert_eq!(c, 0, "{checks:?}");
    let (_, checks) = env.doctor(&["--ttl", "5s"]);
    assert!(
        checks.iter().any(|(n, l, _)| n == "lease" && l == "ok"),
        "{checks:?}"
    );
}

/// With etcd's authentication on, the user and password in the URL are
/// used, a wrong password exits 69 without showing it, and none reaches the
/// child's environment or the output.
#[test]
fn authentication_from_the_url() {
    let env = Env::etcd();
    let etcd = env.etcd.as_ref().unwrap();
    let out = etcd.ctl(&["user", "add", "root:s3cret-pw"]);
    assert!(out.contains("created"), "{out}");
    let out = etcd.ctl(&["auth", "enable"]);
    assert!(out.contains("Enabled"), "{out}");
    let good = Env::bare(format!("etcd://root:s3cret-pw@127.0.0.1:{}", etcd.port));
    let out = good.run(&["run", "--key", "a", "--", "sh", "-c", "env; echo ran"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("ran"));
    assert!(
        !stdout(&out).contains("s3cret-pw"),
        "the password reached the child"
    );
    let h = good.run(&["run", "--key", "a", "--", "true"]);
    assert_eq!(code(&h), 0, "{}", stderr(&h));
    let bad = Env::bare(format!("etcd://root:wrong-pw@127.0.0.1:{}", etcd.port));
    let out = bad.run(&["run", "--key", "a", "--", "true"]);
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert!(!stderr(&out).contains("wrong-pw"), "{}", stderr(&out));
    let anon = Env::bare(etcd.url());
    let out = anon.run(&["run", "--key", "a", "--", "true"]);
    assert_ne!(
        code(&out),
        0,
        "without credentials, an auth-enabled etcd refuses"
    );
}

/// etcd's auth tokens expire (`--auth-token-ttl`, 5 minutes by default, here
/// 1 s): dlock authenticates again and carries on, renewing the lease and
/// releasing it with the new token.
#[test]
fn an_expired_auth_token_is_renewed() {
    let etcd = servers::Etcd::start_with(&["--auth-token-ttl", "1"]);
    let out = etcd.ctl(&["user", "add", "root:s3cret-pw"]);
    assert!(out.contains("created"), "{out}");
    let out = etcd.ctl(&["auth", "enable"]);
    assert!(out.contains("Enabled"), "{out}");
    let env = Env::bare(format!("etcd://root:s3cret-pw@127.0.0.1:{}", etcd.port));
    // Renewals every 2 s, each after the token has expired.
    let out = env.run(&["run", "--ttl", "6s", "--key", "t", "--", "sleep", "5"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(!env.held("t"), "released");
}

/// Shared locks beside `etcdctl lock` and the Go `recipes.RWMutex`: an
/// `etcdctl lock` holder keeps a dlock reader out and a dlock reader keeps
/// `etcdctl lock` waiting; an RWMutex writer's key (`write/<nanos>`) keeps
/// dlock's readers out, an RWMutex reader's (`read/<nanos>`) shares with
/// them and keeps dlock's writers out; dlock's readers are at
/// `read/<lease id>`. (Go is not at hand: the RWMutex keys are put as the
/// recipe puts them, with etcdctl, on a lease.)
#[test]
fn shared_locks_beside_etcdctl_lock_and_rwmutex_keys() {
    let env = Env::etcd();
    let etcd = env.etcd.as_ref().unwrap();
    let mut held = etcdctl_holds(etcd, "dlock/rk");
    wait_for(Duration::from_secs(10), "etcdctl to hold the lock", || {
        env.held("rk")
    });
    let out = env.run(&["run", "-s", "-n", "--key", "rk", "--", "true"]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    let t = Instant::now();
    let out = env.run(&["run", "-s", "--wait", "15s", "--key", "rk", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        t.elapsed() > Duration::from_millis(1000),
        "a dlock reader got in while etcdctl held the lock"
    );
    assert!(held.wait().unwrap().success());
    // A dlock reader holds; etcdctl lock waits until it lets go.
    let mut h = env.spawn(&["run", "-s", "--key", "rk", "--", "sleep", "2"]);
    wait_for(Duration::from_secs(10), "dlock to hold", || env.held("rk"));
    let keys = etcd.ctl(&["get", "--prefix", "--keys-only", "dlock/rk/"]);
    assert!(
        keys.lines().any(|k| k.starts_with("dlock/rk/read/")),
        "{keys}"
    );
    let t = Instant::now();
    let out = etcd.ctl(&["lock", "dlock/rk", "true"]);
    assert!(
        t.elapsed() > Duration::from_millis(1000),
        "etcdctl got the lock while a dlock reader held it: {out}"
    );
    assert_eq!(wait_timeout(&mut h, Duration::from_secs(10)), 0);
    // RWMutex keys, on a lease as the recipe's session puts them.
    let lease = etcd.ctl(&["lease", "grant", "60"]);
    let lease = lease
        .split_whitespace()
        .nth(1)
        .expect("a lease id")
        .to_string();
    let nanos = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            .to_string()
    };
    let w = format!("dlock/rw/write/{}", nanos());
    let out = etcd.ctl(&["put", &format!("--lease={lease}"), &w, ""]);
    assert!(out.contains("OK"), "{out}");
    let out = env.run(&["run", "-s", "-n", "--key", "rw", "--", "true"]);
    assert_eq!(code(&out), 75, "an RWMutex writer: {}", stderr(&out));
    let st = env.status_json(&["rw"]);
    assert_eq!(st[0]["holders"][0]["mode"], "exclusive", "{st}");
    etcd.ctl(&["del", &w]);
    let r = format!("dlock/rw/read/{}", nanos());
    let out = etcd.ctl(&["put", &format!("--lease={lease}"), &r, ""]);
    assert!(out.contains("OK"), "{out}");
    let out = env.run(&["run", "-s", "-n", "--key", "rw", "--", "true"]);
    assert_eq!(code(&out), 0, "an RWMutex reader: {}", stderr(&out));
    let out = env.run(&["run", "-n", "--key", "rw", "--", "true"]);
    assert_eq!(code(&out), 75, "an RWMutex reader: {}", stderr(&out));
    let st = env.status_json(&["rw"]);
    assert_eq!(st[0]["holders"][0]["mode"], "shared", "{st}");
    etcd.ctl(&["lease", "revoke", &lease]);
    let out = env.run(&["run", "-n", "--key", "rw", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // A key `K/read` is another lock than K, though its keys are where K's
    // readers' are: its holder is no reader of K, K's reader no holder of it.
    let mut h = env.spawn(&["run", "--key", "rw/read", "--", "sleep", "30"]);
    wait_for(Duration::from_secs(10), "rw/read held", || {
        env.held("rw/read")
    });
    let out = env.run(&["run", "-n", "--key", "rw", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let mut r = env.spawn(&["run", "-s", "--key", "rw", "--", "sleep", "30"]);
    wait_for(Duration::from_secs(10), "rw held", || env.held("rw"));
    let st = env.status_json(&["rw", "rw/read"]);
    assert_eq!(st[0]["holders"][0]["mode"], "shared", "{st}");
    assert_eq!(st[1]["holders"][0]["mode"], "exclusive", "{st}");
    assert_eq!(st[1]["holders"].as_array().unwrap().len(), 1, "{st}");
    let all = stdout(&env.run(&["status"]));
    assert!(
        all.lines()
            .any(|l| l.starts_with("rw ") && l.contains("shared 1")),
        "{all}"
    );
    assert!(
        all.lines()
            .any(|l| l.starts_with("rw/read ") && l.contains("held")),
        "{all}"
    );
    for c in [&mut h, &mut r] {
        signal(c.id(), nix::sys::signal::Signal::SIGTERM);
        assert_eq!(wait_timeout(c, Duration::from_secs(10)), 143);
    }
}

/// Liveness (issue 20), written once in `common/liveness.rs`.
mod liveness {
    use super::common::liveness;
    use super::common::*;

    fn shared() -> Env {
        Env::shared_here("Env::etcd()", Env::etcd)
    }

    #[test]
    fn elect_with_a_short_ttl_never_flaps() {
        liveness::elect_with_a_short_ttl_never_flaps(&shared());
    }

    // It restarts the server: a server of its own.
    #[test]
    fn waiter_gets_the_lock_soon_after_a_restart() {
        liveness::waiter_gets_the_lock_soon_after_a_restart(&mut Env::etcd());
    }

    #[test]
    fn silent_and_closed_servers_are_down() {
        liveness::silent_and_closed_servers_are_down("etcd");
    }
}

/// Fair queues and slots beyond the shared conformance (issue 23).
mod queues {
    use super::common::*;
    use std::time::Duration;

    fn shared() -> Env {
        Env::shared_here("Env::etcd()", Env::etcd)
    }

    /// A slot whose holder is gone without letting go of its claim (a
    /// handle released from another process, a holder broken with
    /// `--force`) is free: the next holder takes it, lowest first.
    #[test]
    fn a_gone_holders_slot_is_taken_over() {
        crate::common::fair::gone_holders_slot_is_taken_over(&shared());
    }

    /// Holders admitted at the same moment never share a slot: nine
    /// `--limit 3` runs started together, so slots free in twos and threes.
    #[test]
    fn semaphore_slots_are_never_shared() {
        crate::common::fair::slots_never_shared(&shared());
    }

    /// An `etcdctl lock` waiting in line is listed in it, in its place,
    /// with what is known of it (nothing but its place and mode).
    #[test]
    fn an_etcdctl_waiter_is_in_the_queue() {
        let env = Env::etcd();
        let etcd = env.etcd.as_ref().unwrap();
        let stop = env.path("stop");
        let script = format!("while [ ! -e {} ]; do sleep 0.02; done", stop.display());
        let mut h = env.spawn(&["run", "--key", "job", "--", "sh", "-c", &script]);
        wait_for(Duration::from_secs(10), "dlock to hold", || env.held("job"));
        let mut ctl = std::process::Command::new(servers::require("etcdctl", "etcd-client"))
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &format!("127.0.0.1:{}", etcd.port)])
            .args(["lock", "dlock/job", "true"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        crate::common::fair::queue_is(&env, "job", 1);
        let mut w = env.spawn(&["run", "--wait", "1m", "--key", "job", "--", "true"]);
        crate::common::fair::queue_is(&env, "job", 2);
        let st = env.status_json(&["job"]);
        let q = &st[0]["queue"];
        assert_eq!(q[0]["owner"], serde_json::Value::Null, "{st}");
        assert_eq!(q[0]["mode"], "exclusive", "{st}");
        assert_eq!(q[1]["pid"], u64::from(w.id()), "{st}");
        assert_eq!(st[0]["waiters"], 2, "{st}");
        std::fs::write(&stop, "").unwrap();
        assert_eq!(wait_timeout(&mut h, Duration::from_secs(30)), 0);
        assert!(ctl.wait().unwrap().success());
        assert_eq!(wait_timeout(&mut w, Duration::from_secs(30)), 0);
    }
}
