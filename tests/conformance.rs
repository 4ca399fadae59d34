//! The backend conformance suite, run against every backend this build has.
//! Each backend's tests start their own real server (SQLite needs none).

mod common;

use common::suite::conformance;

conformance!(sqlite, Env::sqlite());

/// SQLite-only: a `run` holder on this host whose process died is broken at
/// once (after a short grace), not after its TTL.
#[test]
fn sqlite_breaks_a_dead_local_holder_promptly() {
    use common::*;
    use std::time::{Duration, Instant};
    let env = Env::sqlite();
    let mut h = env.spawn(&["run", "--ttl", "60s", "--key", "dead", "--", "sleep", "30"]);
    wait_for(Duration::from_secs(10), "the lock to be held", || {
        env.held("dead")
    });
    signal(h.id(), nix::sys::signal::Signal::SIGKILL);
    let t = Instant::now();
    let out = env.run(&["run", "-w", "10s", "--key", "dead", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?} with a 60s TTL",
        t.elapsed()
    );
    let _ = h.wait();
}
