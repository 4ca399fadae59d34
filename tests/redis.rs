//! Redis and Redlock against real redis-server processes (Debian
//! `redis-server`), started per test on free loopback ports.

mod common;

use std::time::{Duration, Instant};

use common::fair::fair_conformance;
use common::shared::shared_conformance;
use common::suite::{self, conformance};
use common::*;
use nix::sys::signal::Signal;

conformance!(redis_single, Env::redis());
conformance!(redlock, Env::redlock(5));
shared_conformance!(redis_single_shared, Env::redis());
shared_conformance!(redlock_shared, Env::redlock(5));
fair_conformance!(redis_single_fair, Env::redis());
fair_conformance!(redlock_fair, Env::redlock(5));

#[test]
fn server_frozen_past_the_ttl_stops_the_child_before_expiry() {
    let env = Env::redis();
    suite::frozen_server_stops_child(
        &env,
        Duration::from_millis(1500),
        Duration::from_millis(300),
        |sig| env.redis[0].signal(sig),
    );
}

#[test]
fn server_restarted_empty_loses_the_lease() {
    let mut env = Env::redis();
    let (mut h, pid) = env.run_child("rst", &["--ttl", "1500ms"], "exec sleep 60");
    env.redis[0].restart();
    let t = Instant::now();
    assert_eq!(wait_timeout(&mut h, Duration::from_secs(20)), 74);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "noticed after {:?}",
        t.elapsed()
    );
    assert!(!alive(pid));
}

#[test]
fn redlock_survives_two_of_five_servers_down() {
    let mut env = Env::redlock(5);
    env.redis[0].stop();
    env.redis[3].stop();
    let out = env.run(&["run", "--key", "maj", "--", "sh", "-c", "echo $DLOCK_TOKEN"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let mut h = env.spawn(&["run", "--key", "maj", "--", "sleep", "30"]);
    wait_for(Duration::from_secs(10), "the lock to be held", || {
        env.held("maj")
    });
    let out = env.run(&["run", "-n", "--key", "maj", "--", "true"]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    signal(h.id(), Signal::SIGTERM);
    assert_eq!(wait_timeout(&mut h, Duration::from_secs(10)), 143);
}

#[test]
fn redlock_without_a_majority_never_locks() {
    let mut env = Env::redlock(5);
    for i in [0, 2, 4] {
        env.redis[i].stop();
    }
    let out = env.run(&["run", "--wait", "1s", "--key", "min", "--", "echo", "ran"]);
    assert!(
        matches!(code(&out), 69 | 75),
        "{}: {}",
        code(&out),
        stderr(&out)
    );
    assert!(
        !stdout(&out).contains("ran"),
        "the command ran without a majority"
    );
}

#[test]
fn redlock_tokens_rise_across_changing_majorities() {
    let mut env = Env::redlock(5);
    let token = |env: &Env| -> u64 {
        let out = env.run(&[
            "run",
            "--key",
            "fence",
            "--",
            "sh",
            "-c",
            "echo $DLOCK_TOKEN",
        ]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        stdout(&out).trim().parse().unwrap()
    };
    let a = token(&env);
    env.redis[0].stop();
    env.redis[1].stop();
    let b = token(&env);
    assert!(b > a, "{b} after {a}");
    env.redis[0].restart(); // empty: its counter is gone
    env.redis[1].restart();
    env.redis[4].stop();
    env.redis[3].stop();
    let c = token(&env);
    assert!(
        c > b,
        "{c} after {b}: majorities share a server that remembers"
    );
}

/// redis-py's `Lock` and dlock on the same key exclude each other.
#[test]
fn redis_py_lock_interoperates() {
    let env = Env::redis();
    let port = env.redis[0].port;
    // redis-py holds dlock:job for 2 s; dlock must not get it meanwhile.
    let script = format!(
        "import redis,time,sys\nr=redis.Redis(port={port})\nl=r.lock('dlock:job',timeout=10)\nassert l.acquire(blocking=False)\nprint('held',flush=True)\ntime.sleep(2)\nl.release()\n"
    );
    let mut py = python_holder("redis", &script);
    let out = env.run(&["run", "-n", "--key", "job", "--", "true"]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    let st = env.status_json(&["job"]);
    assert_eq!(st[0]["held"], true, "a redis-py holder shows as held");
    foreign_holder_shown(&env, "job");
    let t = Instant::now();
    let out = env.run(&["run", "--wait", "10s", "--key", "job", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        t.elapsed() > Duration::from_millis(1200),
        "dlock got the lock while redis-py held it"
    );
    assert!(py.wait().unwrap().success());
    // And the other way round: dlock holds, redis-py cannot take it.
    let mut h = env.spawn(&["run", "--key", "job", "--", "sleep", "30"]);
    wait_for(Duration::from_secs(10), "dlock to hold", || env.held("job"));
    let script = format!(
        "import redis\nr=redis.Redis(port={port})\nprint(r.lock('dlock:job',timeout=10).acquire(blocking=False))\n"
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "False");
    signal(h.id(), Signal::SIGTERM);
    wait_timeout(&mut h, Duration::from_secs(10));
}

/// redis-py's `Lock` and dlock's readers on the same key exclude each other:
/// a redis-py holder keeps `--shared` out, and while dlock readers hold,
/// the main key holds their guard, so redis-py cannot take it.
#[test]
fn redis_py_lock_and_shared_readers_exclude_each_other() {
    let env = Env::redis();
    let port = env.redis[0].port;
    let script = format!(
        "import redis,time\nr=redis.Redis(port={port})\nl=r.lock('dlock:rw',timeout=10)\nassert l.acquire(blocking=False)\nprint('held',flush=True)\ntime.sleep(1.5)\nl.release()\n"
    );
    let mut py = python_holder("redis", &script);
    let t = Instant::now();
    let out = env.run(&["run", "--shared", "--no-wait", "--key", "rw", "--", "true"]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    let out = env.run(&[
        "run", "--shared", "--wait", "10s", "--key", "rw", "--", "true",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        t.elapsed() > Duration::from_millis(1200),
        "a dlock reader got in while redis-py held the lock"
    );
    assert!(py.wait().unwrap().success());
    // dlock readers hold: redis-py cannot take the lock, until they are gone.
    let mut h = env.spawn(&["run", "--shared", "--key", "rw", "--", "sleep", "30"]);
    wait_for(Duration::from_secs(10), "the reader to hold", || {
        env.held("rw")
    });
    let try_py = || {
        let script = format!(
            "import redis\nr=redis.Redis(port={port})\nl=r.lock('dlock:rw',timeout=10)\nok=l.acquire(blocking=False)\nprint(ok)\nok and l.release()\n"
        );
        let out = std::process::Command::new("python3")
            .args(["-c", &script])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(
        try_py(),
        "False",
        "redis-py took the lock from dlock's readers"
    );
    signal(h.id(), Signal::SIGTERM);
    assert_eq!(wait_timeout(&mut h, Duration::from_secs(10)), 143);
    assert_eq!(try_py(), "True", "the readers' guard outlived them");
}

/// A semaphore (`--limit 3`) and readers exclude each other, both ways.
#[test]
fn semaphore_holders_and_readers_exclude_each_other() {
    let env = Env::redis();
    let mut s = env.spawn(&["run", "--limit", "3", "--key", "sr", "--", "sleep", "30"]);
    wait_for(Duration::from_secs(10), "the semaphore to be held", || {
        env.held("sr")
    });
    let out = env.run(&["run", "-s", "-n", "--key", "sr", "--", "true"]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    signal(s.id(), Signal::SIGTERM);
    assert_eq!(wait_timeout(&mut s, Duration::from_secs(10)), 143);
    let mut r = env.spawn(&["run", "-s", "--key", "sr", "--", "sleep", "30"]);
    wait_for(Duration::from_secs(10), "the reader to hold", || {
        env.held("sr")
    });
    let out = env.run(&["run", "--limit", "3", "-n", "--key", "sr", "--", "true"]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    assert!(stderr(&out).contains("shared by"), "{}", stderr(&out));
    signal(r.id(), Signal::SIGTERM);
    assert_eq!(wait_timeout(&mut r, Duration::from_secs(10)), 143);
    let out = env.run(&["run", "--limit", "3", "-n", "--key", "sr", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

/// The admission rule the Lua scripts apply is `kit::admits`, on every
/// small combination of request and entries ahead.
#[test]
fn the_scripts_admission_rule_is_kit_admits() {
    use dlock::backend::kit::{Mode, admits};
    let env = Env::redis();
    let script = format!(
        "{}\nlocal out = {{}}\nfor s = 0, 1 do for limit = 1, 3 do for ahead = 0, 4 do for sh = 0, ahead do\n  table.insert(out, admits(s == 1, limit, ahead, sh) and 1 or 0)\nend end end end\nreturn out\n",
        dlock::backend::redis::LUA_COMMON
    );
    let got: Vec<u8> = env.redis[0]
        .cli(&["EVAL", &script, "0"])
        .lines()
        .map(|l| l.trim().parse().expect(l))
        .collect();
    let mut want = Vec::new();
    for shared in [false, true] {
        for limit in 1..=3 {
            for ahead in 0..=4usize {
                for sh in 0..=ahead {
                    let mut modes = vec![Mode::Shared; sh];
                    modes.extend(vec![Mode::Exclusive { limit: 1 }; ahead - sh]);
                    let mode = if shared {
                        Mode::Shared
                    } else {
                        Mode::Exclusive { limit }
                    };
                    want.push(u8::from(admits(mode, &modes)));
                }
            }
        }
    }
    assert_eq!(got, want);
}

/// A primary watched by one sentinel: locking through the sentinel's view.
fn sentinel() -> Env {
    let primary = servers::Redis::start();
    let sentinel = servers::Redis::sentinel("m", primary.port);
    wait_for(
        Duration::from_secs(20),
        "the sentinel to know the primary",
        || {
            sentinel
                .cli(&["sentinel", "get-master-addr-by-name", "m"])
                .contains(&primary.port.to_string())
        },
    );
    let mut env = Env::sqlite();
    env.url = format!("redis+sentinel://127.0.0.1:{}/m", sentinel.port);
    env.redis = vec![primary, sentinel];
    env
}

shared_conformance!(redis_sentinel_shared, super::sentinel());
fair_conformance!(redis_sentinel_fair, super::sentinel());

/// A three-primary Redis Cluster on loopback.
fn cluster() -> Env {
    let nodes: Vec<servers::Redis> = (0..3)
        .map(|_| {
            servers::Redis::start_with(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ])
        })
        .collect();
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let mut args = vec!["--cluster", "create"];
    args.extend(addrs.iter().map(String::as_str));
    args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
    nodes[0].cli(&args);
    wait_for(Duration::from_secs(20), "the cluster to be ready", || {
        nodes
            .iter()
            .all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok"))
    });
    let url = format!("redis+cluster://{}", addrs.join(","));
    let mut env = Env::sqlite();
    env.url = url;
    env.redis = nodes;
    env
}

conformance!(redis_cluster, super::cluster());
shared_conformance!(redis_cluster_shared, super::cluster());
fair_conformance!(redis_cluster_fair, super::cluster());

#[test]
fn sentinel_failover_keeps_locking() {
    let mut primary = servers::Redis::start();
    let replica =
        servers::Redis::start_with(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    wait_for(Duration::from_secs(20), "the replica to sync", || {
        replica
            .cli(&["info", "replication"])
            .contains("master_link_status:up")
    });
    let sentinel = servers::Redis::sentinel("m", primary.port);
    wait_for(
        Duration::from_secs(20),
        "the sentinel to see the replica",
        || {
            sentinel
                .cli(&["sentinel", "replicas", "m"])
                .contains(&replica.port.to_string())
        },
    );
    let mut env = Env::sqlite();
    env.url = format!("redis+sentinel://127.0.0.1:{}/m", sentinel.port);
    let token = |env: &Env| -> u64 {
        let out = env.run(&[
            "run",
            "--wait",
            "20s",
            "--key",
            "s",
            "--",
            "sh",
            "-c",
            "echo $DLOCK_TOKEN",
        ]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        stdout(&out).trim().parse().unwrap()
    };
    let a = token(&env);
    // Let the replica receive the counter before its primary dies.
    std::thread::sleep(Duration::from_millis(300));
    primary.stop();
    wait_for(
        Duration::from_secs(30),
        "the sentinel to promote the replica",
        || {
            sentinel
                .cli(&["sentinel", "get-master-addr-by-name", "m"])
                .contains(&replica.port.to_string())
        },
    );
    let b = token(&env);
    assert!(b > a, "token {b} after failover, {a} before");
    let st = env.status_json(&["s"]);
    assert_eq!(st[0]["held"], false);
}

/// `rediss://`: TLS to a redis-server with a certificate from a test CA,
/// trusted through `SSL_CERT_FILE`; an untrusted server is refused (69).
#[test]
fn tls_with_a_trusted_ca_and_refusal_without() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = servers::test_certificates(dir.path());
    let server = servers::Redis::start_tls(&cert, &key, &ca);
    let mut env = Env::sqlite();
    env.url = format!("rediss://127.0.0.1:{}", server.port);
    let out = env
        .cmd(&["run", "--key", "tls", "--", "echo", "over-tls"])
        .env("SSL_CERT_FILE", &ca)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "over-tls");
    let out = env.run(&["run", "--key", "tls", "--", "true"]);
    assert_eq!(
        code(&out),
        69,
        "an untrusted certificate must be refused: {}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("certificate"), "{}", stderr(&out));
    drop(server);
}

/// doctor fails a Redis without persistence or with an eviction policy, and
/// passes the same server once it has both right.
#[test]
fn doctor_flags_a_redis_without_persistence_and_passes_one_with_it() {
    let env = Env::redis();
    let r = &env.redis[0];
    let level = |checks: &[(String, String, String)], name: &str| {
        checks
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, l, m)| (l.clone(), m.clone()))
            .unwrap_or_else(|| panic!("no {name} check: {checks:?}"))
    };
    let (c, checks) = env.doctor(&[]);
    let (l, m) = level(&checks, "persistence");
    assert_eq!(l, "fail", "{m}");
    assert!(m.contains("appendonly no"), "{m}");
    assert_eq!(c, 1);
    r.cli(&["CONFIG", "SET", "appendonly", "yes"]);
    r.cli(&["CONFIG", "SET", "appendfsync", "everysec"]);
    let (c, checks) = env.doctor(&[]);
    assert_eq!(level(&checks, "persistence").0, "warn");
    assert_eq!(c, 0, "{checks:?}");
    r.cli(&["CONFIG", "SET", "appendfsync", "always"]);
    let (c, checks) = env.doctor(&[]);
    assert_eq!(level(&checks, "persistence").0, "ok");
    assert_eq!(level(&checks, "eviction").0, "ok");
    assert_eq!(level(&checks, "clock").0, "ok");
    assert_eq!(c, 0, "{checks:?}");
    // Locks carry a TTL, so even volatile-* policies may evict them.
    r.cli(&["CONFIG", "SET", "maxmemory", "100mb"]);
    r.cli(&["CONFIG", "SET", "maxmemory-policy", "volatile-lru"]);
    let (c, checks) = env.doctor(&[]);
    assert_eq!(level(&checks, "eviction").0, "fail", "{checks:?}");
    assert_eq!(c, 1);
}

/// doctor on Redlock: servers sharing one host, the same server twice, and
/// a member that does not answer are all failures.
#[test]
fn doctor_flags_redlock_servers_that_are_not_independent() {
    let mut env = Env::redlock(3);
    for r in &env.redis {
        r.cli(&["CONFIG", "SET", "appendonly", "yes"]);
        r.cli(&["CONFIG", "SET", "appendfsync", "always"]);
    }
    let (c, checks) = env.doctor(&[]);
    assert!(
        checks
            .iter()
            .any(|(n, l, m)| n == "independence" && l == "fail" && m.contains("share one host")),
        "{checks:?}"
    );
    assert!(
        checks.iter().any(|(n, l, _)| n == "members" && l == "ok"),
        "{checks:?}"
    );
    assert_eq!(c, 1);
    let twice = format!("{},{}", env.redis[0].url(), env.redis[0].url());
    let out = Env::bare(twice.clone()).run(&["doctor"]);
    assert!(
        stdout(&out).contains("are the same Redis server"),
        "{}",
        stdout(&out)
    );
    env.redis[2].stop();
    let (c, checks) = env.doctor(&["--connect-timeout", "1s"]);
    assert!(
        checks.iter().any(|(n, l, m)| n == "member"
            && l == "fail"
            && m.contains(&env.redis[2].port.to_string())),
        "{checks:?}"
    );
    assert!(
        checks
            .iter()
            .any(|(n, l, m)| n == "members" && l == "warn" && m.contains("2 of 3")),
        "{checks:?}"
    );
    assert_eq!(c, 1);
}

/// doctor on a Redis Cluster asks every listed node for itself: each one's
/// persistence is judged, and a healthy cluster has no failed member.
#[test]
fn doctor_on_a_cluster_asks_every_node() {
    let env = cluster();
    for r in &env.redis {
        r.cli(&["CONFIG", "SET", "appendonly", "yes"]);
        r.cli(&["CONFIG", "SET", "appendfsync", "always"]);
    }
    env.redis[1].cli(&["CONFIG", "SET", "appendonly", "no"]);
    let (c, checks) = env.doctor(&[]);
    assert!(
        checks.iter().all(|(n, _, _)| n != "member"),
        "every node answers: {checks:?}"
    );
    let persistence: Vec<_> = checks
        .iter()
        .filter(|(n, _, _)| n == "persistence")
        .collect();
    assert_eq!(persistence.len(), 3, "{checks:?}");
    let bad = format!("127.0.0.1:{}", env.redis[1].port);
    assert!(
        persistence
            .iter()
            .any(|(_, l, m)| l == "fail" && m.contains(&bad)),
        "{checks:?}"
    );
    assert_eq!(persistence.iter().filter(|(_, l, _)| l == "ok").count(), 2);
    assert_eq!(c, 1);
    let out = env.run(&["ping"]);
    assert!(!stdout(&out).contains("unreachable"), "{}", stdout(&out));
}

/// Namespace `a:x` with key `y` would be the very Redis key of namespace
/// `a` with key `x:y`: such a namespace is refused (64), so the two can
/// never be taken for one lock.
#[test]
fn a_namespace_with_the_separator_is_refused() {
    let env = Env::redis();
    let mut h = env.spawn(&[
        "--namespace",
        "a",
        "run",
        "--key",
        "x:y",
        "--",
        "sleep",
        "30",
    ]);
    wait_for(Duration::from_secs(10), "a / x:y to be held", || {
        let out = env.run(&["--namespace", "a", "status", "--json", "x:y"]);
        String::from_utf8_lossy(&out.stdout).contains("\"held\": true")
    });
    let out = env.run(&[
        "--namespace",
        "a:x",
        "run",
        "-n",
        "--key",
        "y",
        "--",
        "true",
    ]);
    assert_eq!(code(&out), 64, "{}", stderr(&out));
    assert!(stderr(&out).contains("namespace"), "{}", stderr(&out));
    signal(h.id(), nix::sys::signal::Signal::SIGTERM);
    let _ = h.wait();
}

/// `--lock-at-least` keeps a semaphore holder's record past its process,
/// slot included: the slot stays taken until the record lapses.
#[test]
fn a_slot_kept_by_lock_at_least_stays_taken() {
    let env = Env::redis();
    let slot = |extra: &[&str]| -> String {
        let mut args = vec!["run", "--limit", "3", "--key", "kept"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sh", "-c", "echo $DLOCK_SLOT"]);
        let out = env.run(&args);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        stdout(&out).trim().to_string()
    };
    assert_eq!(slot(&["--lock-at-least", "5s"]), "0");
    let st = env.status_json(&["kept"]);
    assert_eq!(st[0]["holders"][0]["slot"], 0, "{st}");
    assert_eq!(st[0]["limit"], 3, "{st}");
    assert_eq!(slot(&[]), "1", "slot 0 is still kept");
}

/// Redlock: a semaphore slot holds on a majority. A server that alone
/// has slot 0 taken (a stale entry) is outvoted; where a majority has it
/// taken, the next slot is chosen.
#[test]
fn redlock_slots_agree_on_a_majority() {
    let env = Env::redlock(3);
    let stale = |servers: &[usize], key: &str| {
        for &i in servers {
            env.redis[i].cli(&[
                "ZADD",
                &format!("{{dlock:{key}}}:sem"),
                "99999999999999",
                "dlock1|stale|0|u|h|1|0||||||0",
            ]);
        }
    };
    let slot = |key: &str| -> String {
        let out = env.run(&[
            "run",
            "--limit",
            "3",
            "--key",
            key,
            "--",
            "sh",
            "-c",
            "echo $DLOCK_SLOT",
        ]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        stdout(&out).trim().to_string()
    };
    stale(&[0], "one");
    assert_eq!(slot("one"), "0", "one server's stale entry is outvoted");
    stale(&[0, 1], "two");
    assert_eq!(slot("two"), "1", "a majority's entry holds slot 0");
    let st = env.status_json(&["two"]);
    assert_eq!(st[0]["holders"][0]["slot"], 0, "{st}");
}

/// An older dlock's waiting writer (a `:waiters` entry, not in line) still
/// keeps later readers out (no writer starvation across versions); an
/// exclusive request does not wait for it (an older dlock is not in line).
#[test]
fn an_older_dlocks_waiting_writer_keeps_readers_out() {
    let env = Env::redis();
    env.redis[0].cli(&["ZADD", "{dlock:ow}:waiters", "99999999999999", "1-old"]);
    let out = env.run(&["run", "--shared", "-n", "--key", "ow", "--", "true"]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    let out = env.run(&["run", "-n", "--key", "ow", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    env.redis[0].cli(&["ZREM", "{dlock:ow}:waiters", "1-old"]);
    let out = env.run(&["run", "--shared", "-n", "--key", "ow", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

/// A release tells only the waiter it lets in, on that waiter's own
/// channel (`{NS:KEY}:released:ENTRY`), and names it on the shared
/// `:released` too (`q:ENTRY`), where older builds listen: two waiters in
/// line are each told once, in turn, and a holder's release reaches the
/// first in line only.
#[test]
fn a_release_tells_only_the_next_in_line_on_its_own_channel() {
    let env = Env::redis();
    let port = env.redis[0].port;
    let script = format!(
        "import redis,time\nr=redis.Redis(port={port})\np=r.pubsub()\np.psubscribe('{{dlock:w}}:released*')\n\
         while p.get_message(timeout=5) is None: pass\nprint('held',flush=True)\nseen=[]\nend=time.time()+30\n\
         while time.time()<end and sum(1 for c,_ in seen if c.count(':released:'))<2:\n  \
         m=p.get_message(timeout=1)\n  if m and m['type']=='pmessage': seen.append((m['channel'].decode(),m['data'].decode()))\n\
         for c,d in seen: print(c+' '+d,flush=True)\n"
    );
    let mut py = python_holder("redis", &script);
    let mut h = env.spawn(&["run", "--key", "w", "--", "sleep", "1"]);
    wait_for(Duration::from_secs(10), "dlock to hold", || env.held("w"));
    let mut w1 = env.spawn(&["run", "--wait", "20s", "--key", "w", "--", "sleep", "0.3"]);
    wait_for(Duration::from_secs(10), "the first waiter in line", || {
        !env.redis[0]
            .cli(&["ZRANGE", "{dlock:w}:queue", "0", "-1"])
            .trim()
            .is_empty()
    });
    let mut w2 = env.spawn(&["run", "--wait", "20s", "--key", "w", "--", "true"]);
    for c in [&mut h, &mut w1, &mut w2] {
        assert_eq!(wait_timeout(c, Duration::from_secs(20)), 0);
    }
    let mut out = String::new();
    std::io::Read::read_to_string(py.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(py.wait().unwrap().success());
    let own: Vec<(&str, &str)> = out
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(c, _)| c.starts_with("{dlock:w}:released:"))
        .collect();
    let named: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("{dlock:w}:released q:"))
        .filter(|n| !n.is_empty())
        .collect();
    assert_eq!(
        own.len(),
        2,
        "one wake-up per waiter, each on its own channel:\n{out}"
    );
    assert_ne!(own[0].0, own[1].0, "{out}");
    for (i, (chan, _)) in own.iter().enumerate() {
        let entry = chan.trim_start_matches("{dlock:w}:released:");
        assert_eq!(
            named.get(i),
            Some(&entry),
            "the shared channel names it too:\n{out}"
        );
    }
}

/// A lease that lapses while its release waits, after the command ended
/// well inside it, is not a loss while the command ran: dlock exits with
/// the command's status and a warning, not 74. The command freezes the
/// server as it ends (SIGSTOP; the test lets it go on 3.5 s later), so the
/// release is answered only after the 3 s TTL has run out.
#[test]
fn a_lease_that_lapses_while_its_release_waits_is_not_lost() {
    let env = Env::redis();
    let pid = env.redis[0].pid();
    let thaw = std::thread::spawn(move || {
        let stopped = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('T')
            })
        };
        let t = Instant::now();
        while !stopped() && t.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(3500));
        signal(pid, Signal::SIGCONT);
    });
    let script = format!("kill -STOP {pid}");
    let started = Instant::now();
    let out = env.run(&[
        "--connect-timeout",
        "10s",
        "run",
        "--ttl",
        "3s",
        "--key",
        "k",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let took = started.elapsed();
    thaw.join().unwrap();
    assert!(
        took >= Duration::from_secs(3),
        "the release did not wait for the server: {took:?}: {}",
        stderr(&out)
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("lapsed") && stderr(&out).contains("after the command ended"),
        "{}",
        stderr(&out)
    );
    assert!(!env.held("k"));
}
