//! ZooKeeper: handles and lapses on a stock server (no TTL nodes), and
//! dlock beside kazoo's and Curator's lock recipes (`?recipe=kazoo`, and
//! the read/write lock nodes of each).

use super::*;

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
