//! What a Redis server that is up but says no means for a waiter: a server
//! at `maxclients` is full (waited out like a busy lock, 75 at the `--wait`
//! deadline), a refused password or a missing ACL permission is final (69
//! at once); real redis-server processes on free loopback ports.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// A redis-server at `maxclients` `slots`, every slot held by a plain TCP
/// client (which Redis never times out: `timeout 0`).
fn full_server(slots: usize) -> (servers::Redis, Vec<TcpStream>) {
    let r = servers::Redis::start_with(&["--maxclients", &slots.to_string()]);
    let connect = || {
        let mut s = TcpStream::connect(("127.0.0.1", r.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"PING\r\n").expect("send");
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).expect("read");
        (s, String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let held: Vec<TcpStream> = (0..slots)
        .map(|_| {
            let (s, reply) = connect();
            assert_eq!(reply, "+PONG\r\n");
            s
        })
        .collect();
    let (_, reply) = connect();
    assert!(reply.contains("max number of clients"), "not full: {reply}");
    (r, held)
}

/// A full server is waited out until the `--wait` deadline, past
/// `--connect-timeout` (it is no outage), and then it is 75 naming the
/// cause; a command that does not wait says so at once (69).
#[test]
fn a_full_server_is_waited_out_and_named() {
    let (r, _held) = full_server(2);
    let env = Env::bare(r.url());
    let t = Instant::now();
    let out = env.run(&[
        "--connect-timeout",
        "1s",
        "run",
        "--wait",
        "3s",
        "--key",
        "k",
        "--",
        "true",
    ]);
    let took = t.elapsed();
    let err = stderr(&out);
    assert_eq!(code(&out), 75, "{err}");
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(8),
        "took {took:?}: a full server is waited out until --wait"
    );
    assert!(err.contains("turned the attempt away (no room"), "{err}");
    assert!(err.contains("max number of clients reached"), "{err}");
    let t = Instant::now();
    let out = env.run(&["--connect-timeout", "1s", "ping"]);
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert!(stderr(&out).contains("full"), "{}", stderr(&out));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

/// A slot that frees within the wait is taken: the waiter gets the lock.
#[test]
fn a_full_server_that_frees_a_slot_gives_the_lock() {
    let (r, mut held) = full_server(2);
    let env = Env::bare(r.url());
    let t = Instant::now();
    let mut waiter = env.spawn(&[
        "--connect-timeout",
        "1s",
        "run",
        "--wait",
        "20s",
        "--key",
        "k",
        "--",
        "true",
    ]);
    // Past --connect-timeout: an outage would have ended it by now.
    std::thread::sleep(Duration::from_millis(2000));
    assert!(
        waiter.try_wait().unwrap().is_none(),
        "gave up on a full server"
    );
    held.pop();
    assert_eq!(wait_timeout(&mut waiter, Duration::from_secs(20)), 0);
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
}

/// A wrong password is a refusal, not an outage: it says so, is not
/// retried while waiting (69 at once, not after --connect-timeout), and
/// the password is never printed.
#[test]
fn a_wrong_password_is_refused_at_once_and_named_as_such() {
    let r = servers::Redis::start_with(&["--requirepass", "right-one"]);
    let env = Env::bare(format!("redis://:wrong-one@127.0.0.1:{}", r.port));
    let t = std::time::Instant::now();
    let out = env.run(&[
        "--connect-timeout",
        "5s",
        "run",
        "--wait",
        "30s",
        "--key",
        "k",
        "--",
        "true",
    ]);
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}: a refusal must not be retried",
        t.elapsed()
    );
    let err = stderr(&out);
    assert!(err.contains("refused the credentials"), "{err}");
    assert!(!err.contains("wrong-one"), "password printed: {err}");
    // No password at all (NOAUTH on the first command): the same.
    let env = Env::bare(r.url());
    let t = std::time::Instant::now();
    let out = env.run(&[
        "--connect-timeout",
        "5s",
        "run",
        "--wait",
        "30s",
        "--key",
        "k",
        "--",
        "true",
    ]);
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let env = Env::bare(format!("redis://:right-one@127.0.0.1:{}", r.port));
    let out = env.run(&["run", "--key", "k", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

/// A user the server knows, without the rights to dlock's keys (ACL
/// `NOPERM` on the first script): final, 69 at once, the password unsaid.
#[test]
fn a_user_without_the_rights_is_refused_at_once() {
    let r = servers::Redis::start_with(&[
        "--user",
        "outsider",
        "on",
        ">its-secret",
        "~other:*",
        "+@all",
    ]);
    let env = Env::bare(format!("redis://outsider:its-secret@127.0.0.1:{}", r.port));
    let t = Instant::now();
    let out = env.run(&[
        "--connect-timeout",
        "5s",
        "run",
        "--wait",
        "30s",
        "--key",
        "k",
        "--",
        "true",
    ]);
    let err = stderr(&out);
    assert_eq!(code(&out), 69, "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "{:?}: {err}",
        t.elapsed()
    );
    assert!(err.contains("no permissions"), "{err}");
    assert!(!err.contains("its-secret"), "password printed: {err}");
}
