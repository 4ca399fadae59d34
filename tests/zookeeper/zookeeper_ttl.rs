#[allow(unused_imports)]
use crate::common::*;
use crate::common::{servers_zk, suite};

fn env() -> Env {
    let z = servers_zk::Zookeeper::start_with_ttl();
    let url = z.url();
    Env {
        zookeeper: Some(z),
        ..Env::bare(url)
    }
}

/// This binary's TTL-node server, in the test's namespace.
fn shared(test: &str) -> Env {
    Env::shared("zookeeper_ttl", env, &format!("zookeeper_ttl.{test}"))
}

/// A lapsing holder (`--lock-at-least`) keeps its slot, and a handle
/// shows its slot, though a TTL node's record keeps none.
#[test]
fn a_lapsing_holder_keeps_its_slot() {
    crate::lapsing_holder_keeps_its_slot(&shared("a_lapsing_holder_keeps_its_slot"));
}

crate::common::suite::suite_tests!(
    shared,
    stale_handle_cannot_release_new_holder,
    renew_extends_a_handle,
    renew_ttl_is_applied_or_refused,
    lock_at_least_keeps_the_lock,
    acquire_leases_show_as_handles,
);

/// A handle's node is a TTL node (its data says so: the server shows
/// clients a TTL node's `ephemeralOwner` as 0), whose TTL ZooKeeper
/// cannot change (`renew --ttl` another is refused), and which the
/// server deletes once its TTL has run out, with no dlock around.
#[test]
fn the_server_deletes_an_expired_handle() {
    let env = env();
    let z = env.zookeeper.as_ref().unwrap();
    let ls = |key: &str| stdout(&z.cli(&["ls", &format!("/dlock/{key}")]));
    let out = env.run(&["acquire", "--key", "long", "--ttl", "30s"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let h = stdout(&out).trim().to_string();
    let listing = ls("long");
    let name = listing
        .rsplit('[')
        .next()
        .and_then(|l| l.split(']').next())
        .unwrap_or_default()
        .trim()
        .to_string();
    assert!(name.contains("-lock-"), "{listing}");
    let data = z.get(&format!("/dlock/long/{name}")).unwrap_or_default();
    assert!(
        data.ends_with("|30000||T"),
        "not a TTL node of 30 s: {data}"
    );
    let out = env.run(&["renew", &h, "--ttl", "1h"]);
    assert_eq!(code(&out), 64, "{}", stderr(&out));
    assert_eq!(code(&env.run(&["renew", &h])), 0);
    // A --lock-at-least lapse is a TTL node too.
    let out = env.run(&[
        "run",
        "--lock-at-least",
        "20s",
        "--key",
        "least",
        "--",
        "true",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let listing = ls("least");
    let name = listing
        .rsplit('[')
        .next()
        .and_then(|l| l.split(']').next())
        .unwrap_or_default()
        .trim()
        .to_string();
    let data = z.get(&format!("/dlock/least/{name}")).unwrap_or_default();
    assert!(data.ends_with("|T"), "not a TTL node: {name}: {data}");
    // Short-lived: gone without any dlock call after the acquire.
    let out = env.run(&["acquire", "--key", "short", "--ttl", "500ms"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    wait_for(
        std::time::Duration::from_secs(15),
        "the server to delete the TTL node",
        || !ls("short").contains("-lock-"),
    );
}
