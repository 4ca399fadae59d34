//! The conformance suite: mutual exclusion. One holder at a time (or
//! `--limit` of them), under contention and faults, with fencing tokens
//! that only grow, prompt hand-overs, and keys that never touch each other.

use super::*;

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

/// Many contenders on one key, more than the stock server limits allow
/// connections for (ZooKeeper 60 per address, PostgreSQL 100): every one
/// gets its turn and none exits 69. `bench/crowd.sh` runs 200.
pub fn crowd_on_one_key_all_get_their_turn(env: &Env) {
    crowd_all_get_their_turn(env, 80);
}

/// `n` contenders at once on one key, each holding it 20 ms: every one
/// gets its turn within `--wait 2m`, and none exits 69.
pub fn crowd_all_get_their_turn(env: &Env, n: usize) {
    let k = key("crowd");
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
