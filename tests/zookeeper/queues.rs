use super::common::*;
use std::time::Duration;

fn shared() -> Env {
    Env::shared_here("Env::zookeeper()", Env::zookeeper)
}

/// A slot whose holder is gone without letting go of its claim (a
/// handle released from another process, a holder broken with
/// `--force`) is free: the next holder takes it, lowest first.
#[test]
fn a_gone_holders_slot_is_taken_over() {
    crate::common::fair::gone_holders_slot_is_taken_over(&shared());
}

/// A lapsing holder (`--lock-at-least`) keeps its slot.
#[test]
fn a_lapsing_holder_keeps_its_slot() {
    super::lapsing_holder_keeps_its_slot(&shared());
}

/// Holders admitted at the same moment never share a slot: nine
/// `--limit 3` runs started together, so slots free in twos and threes.
#[test]
fn semaphore_slots_are_never_shared() {
    crate::common::fair::slots_never_shared(&shared());
}

/// A key with a part ending in `@slots` would be another key's slot
/// claims (`/NS/KEY@slots/S`): `x@slots/0` was refused by the server
/// as "unavailable" (69) while `x --limit 2` held slot 0, and
/// `x@slots` took the claims directory for its own. Refused with 64
/// before connecting, for every command that names a key and on every
/// backend; a key that merely holds the word is a key.
#[test]
fn a_key_that_would_be_slot_claims_is_refused() {
    let env = shared();
    let stop = env.path("stop");
    let script = format!("while [ ! -e {} ]; do sleep 0.02; done", stop.display());
    let mut h = Reaped(env.spawn(&[
        "run", "--limit", "2", "--key", "x", "--", "sh", "-c", &script,
    ]));
    wait_for(Duration::from_secs(10), "x to be held", || env.held("x"));
    let sqlite = Env::sqlite();
    let down = Env::bare("redis://127.0.0.1:1".to_string());
    for k in ["x@slots", "x@slots/0", "a/x@slots/b"] {
        for args in [
            vec!["run", "-n", "--key", k, "--", "true"],
            vec!["acquire", "-n", "--key", k],
            vec!["elect", "--no-wait", "--key", k, "--", "true"],
            vec!["status", k],
            vec!["leader", k],
            vec!["release", "--force", "--key", k],
        ] {
            for e in [&env, &sqlite, &down] {
                let out = e.run(&args);
                assert_eq!(code(&out), 64, "{} {args:?}: {}", e.url, stderr(&out));
                assert!(
                    stderr(&out).contains("reserved") && stderr(&out).contains("@slots"),
                    "{} {args:?}: {}",
                    e.url,
                    stderr(&out)
                );
            }
        }
    }
    // x's claims are as they were: its holder still has slot 0, and the
    // next holder takes slot 1.
    let out = env.run(&[
        "run",
        "-n",
        "--limit",
        "2",
        "--key",
        "x",
        "--",
        "sh",
        "-c",
        "echo $DLOCK_SLOT",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "1");
    std::fs::write(&stop, "").unwrap();
    assert_eq!(wait_timeout(&mut h, Duration::from_secs(10)), 0);
    for k in ["x@slotsy", "x-slots", "@slots-x", "slots"] {
        let out = env.run(&["run", "-n", "--key", k, "--", "true"]);
        assert_eq!(code(&out), 0, "{k}: {}", stderr(&out));
    }
}

/// A kazoo `Lock` waiting in line is listed in it, in its place,
/// with what is known of it (kazoo's identifier, as the host).
#[test]
fn a_kazoo_waiter_is_in_the_queue() {
    let env = Env::zookeeper();
    let hosts = env.url.trim_start_matches("zk://").to_string();
    let stop = env.path("stop");
    let script = format!("while [ ! -e {} ]; do sleep 0.02; done", stop.display());
    let mut h = env.spawn(&["run", "--key", "job", "--", "sh", "-c", &script]);
    wait_for(Duration::from_secs(10), "dlock to hold", || env.held("job"));
    let py = format!(
        "from kazoo.client import KazooClient\nzk=KazooClient(hosts='{hosts}')\nzk.start()\n\
         l=zk.Lock('/dlock/job','kazoo-waiter', extra_lock_patterns=['-lock-'])\nl.acquire()\n\
         l.release()\nzk.stop()\n"
    );
    let mut kazoo = std::process::Command::new(servers::require("python3", "python3"))
        .args(["-c", &py])
        .spawn()
        .unwrap();
    crate::common::fair::queue_is(&env, "job", 1);
    let mut w = env.spawn(&["run", "--wait", "1m", "--key", "job", "--", "true"]);
    crate::common::fair::queue_is(&env, "job", 2);
    let st = env.status_json(&["job"]);
    let q = &st[0]["queue"];
    assert_eq!(q[0]["owner"], serde_json::Value::Null, "{st}");
    assert_eq!(q[0]["host"], "kazoo-waiter", "{st}");
    assert_eq!(q[0]["mode"], "exclusive", "{st}");
    assert!(q[0]["since"].is_string(), "the node's ctime: {st}");
    assert_eq!(q[1]["pid"], u64::from(w.id()), "{st}");
    assert_eq!(st[0]["waiters"], 2, "{st}");
    std::fs::write(&stop, "").unwrap();
    assert_eq!(wait_timeout(&mut h, Duration::from_secs(30)), 0);
    assert!(kazoo.wait().unwrap().success());
    assert_eq!(wait_timeout(&mut w, Duration::from_secs(30)), 0);
}
