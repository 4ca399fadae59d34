//! `dlock elect` beside the peers' own elections on the same layout:
//! kazoo's lock (Curator's `LeaderSelector` layout) on ZooKeeper, and
//! `etcdctl elect` (`concurrency.Election`) on etcd.

use super::*;

/// ZooKeeper: a term is Curator's `InterProcessMutex` layout, the one a
/// `LeaderSelector` uses: a kazoo `Lock` on the same path (told dlock's node
/// names, as `extra_lock_patterns`) and `dlock elect` exclude each other,
/// both ways.
#[test]
fn zookeeper_kazoo_and_elect_exclude_each_other() {
    let env = Env::zookeeper();
    let hosts = env.url.trim_start_matches("zk://").to_string();
    let script = format!(
        "import time\nfrom kazoo.client import KazooClient\nzk=KazooClient(hosts='{hosts}')\nzk.start()\n\
         l=zk.Lock('/dlock/lead','kazoo', extra_lock_patterns=['-lock-'])\nassert l.acquire(blocking=False)\n\
         print('held',flush=True)\ntime.sleep(2)\nl.release()\nzk.stop()\n"
    );
    let mut py = python_holder("kazoo", &script);
    let t = Instant::now();
    let log = env.path("log");
    let mut c = candidate(&env, "lead", &["--wait", "20s"], &body(&log, 0));
    wait_start(&log, 1, LONG);
    assert!(
        t.elapsed() > Duration::from_millis(1200),
        "dlock led while kazoo held the lock"
    );
    assert!(py.wait().unwrap().success());
    let script = format!(
        "from kazoo.client import KazooClient\nzk=KazooClient(hosts='{hosts}')\nzk.start()\n\
         print(zk.Lock('/dlock/lead','kazoo', extra_lock_patterns=['-lock-']).acquire(blocking=False))\nzk.stop()\n"
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert_eq!(stdout(&out).trim(), "False", "{}", stderr(&out));
    signal(c.id(), Signal::SIGTERM);
    assert_eq!(wait_timeout(&mut c, LONG), 0);
}

/// etcd: `etcdctl elect` and `dlock elect` take turns on the same prefix
/// (the layout of `concurrency.Election`), both ways; `etcdctl elect -l`
/// observes dlock's leader as its bare value, and `dlock leader` prints
/// etcdctl's leader's value.
#[test]
fn etcd_etcdctl_elect_and_dlock_elect_take_turns() {
    let env = Env::etcd();
    let etcd = env.etcd.as_ref().unwrap();
    let ctl = servers::require("etcdctl", "etcd-client");
    let etcdctl = |args: &[&str], out: &Path| {
        Reaped(
            std::process::Command::new(&ctl)
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &format!("127.0.0.1:{}", etcd.port)])
                .args(args)
                .stdout(std::fs::File::create(out).unwrap())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    // What `etcdctl elect` prints once elected, and `-l` at each leader:
    // the leader's key, then its value.
    let printed = |p: &Path| -> Vec<String> { read(p).lines().map(String::from).collect() };
    let leader = |json: bool| {
        let out = if json {
            env.run(&["leader", "lead", "--json"])
        } else {
            env.run(&["leader", "lead"])
        };
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        stdout(&out)
    };
    // etcdctl leads; dlock waits for it, and names it by its value.
    let first = env.path("etcdctl1.out");
    let mut e = etcdctl(&["elect", "dlock/lead", "etcd-side"], &first);
    wait_for(LONG, "etcdctl to lead", || {
        read(&first).contains("etcd-side")
    });
    assert_eq!(leader(false), "etcd-side\n");
    let log = env.path("log");
    let v = "sched-a:8080 (primary|1)";
    let mut c = candidate(&env, "lead", &["--value", v], &body(&log, 0));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(starts(&log).is_empty(), "dlock led while etcdctl did");
    assert_eq!(leader(false), "etcd-side\n");
    signal(e.id(), Signal::SIGINT);
    let _ = e.wait();
    wait_start(&log, 1, LONG);
    // dlock leads: an observer sees exactly its value; `dlock leader`
    // prints it and `status` says who it is.
    let observed = env.path("observe.out");
    let mut o = etcdctl(&["elect", "-l", "dlock/lead"], &observed);
    wait_for(LONG, "the observer to print the leader", || {
        printed(&observed).len() >= 2
    });
    let _ = o.kill();
    let seen = printed(&observed);
    assert!(seen[0].starts_with("dlock/lead/"), "{seen:?}");
    assert_eq!(seen[1], v, "{seen:?}");
    assert_eq!(leader(false), format!("{v}\n"));
    let token = starts(&log)[0].0;
    let j: serde_json::Value = serde_json::from_str(&leader(true)).unwrap();
    assert_eq!(
        (j["value"].as_str(), j["token"].as_u64()),
        (Some(v), Some(token))
    );
    let st = env.status_json(&["lead"]);
    let h = &st[0]["holders"][0];
    let owner = h["owner"].as_str().unwrap_or_default();
    assert!(owner.ends_with(" (sched-a:8080 (primary_1))"), "{st}");
    assert_eq!(h["pid"].as_u64(), Some(u64::from(c.id())), "{st}");
    assert_eq!(h["token"].as_u64(), Some(token), "{st}");
    // etcdctl campaigns against dlock: it waits, and leads once dlock
    // resigns; `dlock leader` then prints its value.
    let second = env.path("etcdctl2.out");
    let mut e = etcdctl(&["elect", "dlock/lead", "etcd-side-2"], &second);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(read(&second), "", "etcdctl led while dlock did");
    assert_eq!(leader(false), format!("{v}\n"));
    signal(c.id(), Signal::SIGTERM);
    assert_eq!(wait_timeout(&mut c, LONG), 0);
    wait_for(LONG, "etcdctl to lead after dlock resigned", || {
        printed(&second).len() >= 2
    });
    assert_eq!(printed(&second)[1], "etcd-side-2");
    assert_eq!(leader(false), "etcd-side-2\n");
    let st = env.status_json(&["lead"]);
    assert!(st[0]["holders"][0]["owner"].is_null(), "{st}");
    // dlock's side record went with its term.
    let out = std::process::Command::new(&ctl)
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &format!("127.0.0.1:{}", etcd.port)])
        .args(["get", "--prefix", "--keys-only", "dlock/lead"])
        .output()
        .unwrap();
    let keys: Vec<&str> = std::str::from_utf8(&out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0].starts_with("dlock/lead/"), "{keys:?}");
    signal(e.id(), Signal::SIGINT);
    let _ = e.wait();
}
