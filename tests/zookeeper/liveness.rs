use super::common::liveness;
use super::common::*;

fn shared() -> Env {
    Env::shared_here("Env::zookeeper()", Env::zookeeper)
}

#[test]
fn elect_with_a_short_ttl_never_flaps() {
    liveness::elect_with_a_short_ttl_never_flaps(&shared());
}

// It restarts the server: a server of its own.
#[test]
fn waiter_gets_the_lock_soon_after_a_restart() {
    liveness::waiter_gets_the_lock_soon_after_a_restart(&mut Env::zookeeper());
}

#[test]
fn silent_and_closed_servers_are_down() {
    liveness::silent_and_closed_servers_are_down("zk");
}

/// "Full" is only what the server says: a ZooKeeper with its 60
/// connections from our address taken (`maxClientCnxns`) closes ours at
/// once, and a waiter waits that out like a busy lock (75 at the
/// deadline, naming the cause; 0 once there is room), never 69.
#[test]
fn a_full_server_is_busy_not_down() {
    use std::time::Duration;
    let env = Env::zookeeper();
    let port = env.zookeeper.as_ref().unwrap().port;
    let hogs: Vec<std::net::TcpStream> = (0..60)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        let out = env.run(&[
            "--connect-timeout",
            "2s",
            "run",
            "--wait",
            "2s",
            "--key",
            "f",
            "--",
            "true",
        ]);
        assert_eq!(code(&out), 75, "{}", stderr(&out));
        assert!(stderr(&out).contains("no room"), "{}", stderr(&out));
    }
    let mut w = Reaped(
        env.cmd(&[
            "--connect-timeout",
            "2s",
            "run",
            "--wait",
            "20s",
            "--key",
            "f",
        ])
        .args(["--", "true"])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap(),
    );
    std::thread::sleep(Duration::from_secs(1));
    drop(hogs);
    assert_eq!(wait_timeout(&mut w, Duration::from_secs(30)), 0);
}

/// A waiter whose session expires while it waits (the server frozen
/// past the session timeout) queues again in a new session and gets
/// the lock; the holder, whose session expired too, exits 74 (before:
/// the waiter exited 69, "session expired", with the server back).
#[test]
fn waiter_whose_session_expired_queues_again() {
    use nix::sys::signal::Signal;
    use std::time::{Duration, Instant};
    let env = Env::zookeeper();
    let zk = env.zookeeper.as_ref().unwrap();
    let mut h = Reaped(
        env.cmd(&["run", "--ttl", "2s", "--key", "x", "--", "sleep", "3"])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(Duration::from_secs(20), "the holder", || env.held("x"));
    let mut w = Reaped(
        env.cmd(&[
            "run", "--ttl", "2s", "--wait", "30s", "--key", "x", "--", "true",
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap(),
    );
    wait_for(Duration::from_secs(20), "the waiter to queue", || {
        env.status_json(&["x"])[0]["waiters"].as_u64() == Some(1)
    });
    zk.signal(Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(4));
    zk.signal(Signal::SIGCONT);
    let t = Instant::now();
    let rc = wait_timeout(&mut w, Duration::from_secs(30));
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(w.stderr.as_mut().unwrap(), &mut err);
    assert_eq!(rc, 0, "{err}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(wait_timeout(&mut h, Duration::from_secs(30)), 74);
}
