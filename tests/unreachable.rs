//! "Down is down" (the contract's "Riding out the backend"): a server that
//! refuses connections, or accepts them and never answers, is an outage
//! that ends in 69 within `--connect-timeout` (plus a moment), with and
//! without `--wait`; never "full", never waited on for ever. ZooKeeper and
//! etcd have theirs in their own test files.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::*;

/// A loopback port that accepts connections and never answers (the
/// kernel completes the handshake into the backlog), and a closed one.
fn mute_and_closed() -> (TcpListener, u16, u16) {
    let mute = TcpListener::bind("127.0.0.1:0").unwrap();
    let mute_port = mute.local_addr().unwrap().port();
    let closed_port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    (mute, mute_port, closed_port)
}

fn down_within_the_bound(url: &str) {
    let env = Env::bare(url.to_string());
    for wait in [&[][..], &["--wait", "10s"][..]] {
        let mut args = vec!["--connect-timeout", "2s", "run"];
        args.extend_from_slice(wait);
        args.extend_from_slice(&["--key", "k", "--", "true"]);
        let t = Instant::now();
        let out = env.run(&args);
        let took = t.elapsed();
        assert_eq!(code(&out), 69, "{url} {wait:?}: {}", stderr(&out));
        assert!(
            took < Duration::from_secs(3),
            "{url} {wait:?}: 69 after {took:?} with --connect-timeout 2s"
        );
        let err = stderr(&out);
        assert!(!err.contains("no room"), "down is not full: {err}");
        assert!(!err.contains("secret"), "a password in a message: {err}");
    }
}

#[test]
fn redis_down_is_69_within_the_connect_timeout() {
    let (_mute, m, c) = mute_and_closed();
    down_within_the_bound(&format!("redis://:secret@127.0.0.1:{m}"));
    down_within_the_bound(&format!("redis://:secret@127.0.0.1:{c}"));
}

#[test]
fn postgres_down_is_69_within_the_connect_timeout() {
    let (_mute, m, c) = mute_and_closed();
    down_within_the_bound(&format!("postgres://u:secret@127.0.0.1:{m}/db"));
    down_within_the_bound(&format!("postgres://u:secret@127.0.0.1:{c}/db"));
}

#[test]
fn mysql_down_is_69_within_the_connect_timeout() {
    let (_mute, m, c) = mute_and_closed();
    down_within_the_bound(&format!("mysql://u:secret@127.0.0.1:{m}/db"));
    down_within_the_bound(&format!("mysql://u:secret@127.0.0.1:{c}/db"));
}
