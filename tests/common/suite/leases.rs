//! The conformance suite: leases and handles. `acquire`, `renew` and
//! `release`, stale handles, and leases broken under a running command.

use super::*;

pub fn stale_handle_cannot_release_new_holder(env: &Env) {
    let k = key("stale");
    let out = env.run(&["acquire", "--key", &k, "--ttl", "300ms"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let old = stdout(&out).trim().to_string();
    assert!(
        old.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
        "not shell-safe: {old}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let out = env.run(&["acquire", "--key", &k, "--ttl", "30s", "--wait", "10s"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let new = stdout(&out).trim().to_string();
    let out = env.run(&["release", &old]);
    assert_eq!(code(&out), 74, "{}", stderr(&out));
    assert!(stderr(&out).contains("no longer"), "{}", stderr(&out));
    assert_eq!(code(&env.run(&["renew", &old])), 74);
    assert!(env.held(&k), "a stale handle released the new holder");
    let out = env.run(&["release", "not-a-handle"]);
    assert_eq!(code(&out), 64);
    assert_eq!(code(&env.run(&["release", &new])), 0);
    assert!(!env.held(&k));
}

pub fn renew_extends_a_handle(env: &Env) {
    let k = key("renew");
    let out = env.run(&["acquire", "--key", &k, "--ttl", "3s"]);
    let h = stdout(&out).trim().to_string();
    // The first lease ends 3 s after it was taken, at the latest now + 3 s.
    let taken = Instant::now();
    std::thread::sleep(Duration::from_millis(1000));
    let out = env.run(&["renew", &h]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // Past the first TTL, and at least 0.9 s before the renewed one ends
    // (3 s from the renewal, which started 1 s after `taken`): a margin
    // for slow processes on a loaded machine. (A different --ttl: see
    // renew_ttl_is_applied_or_refused.)
    std::thread::sleep(
        (taken + Duration::from_millis(3100)).saturating_duration_since(Instant::now()),
    );
    assert!(env.held(&k), "the renewed lease ended at its first TTL");
    assert_eq!(code(&env.run(&["release", &h])), 0);
}

pub fn forced_release_stops_child_with_74(env: &Env) {
    let k = key("force");
    let pidf = env.path("forced.pid");
    let mut h = hold(
        env,
        &k,
        &["--ttl", "1500ms", "--kill-after", "1s"],
        &format!("echo $$ > {}; exec sleep 30", pidf.display()),
    );
    let pid: i32 = read_when_ready(&pidf, LONG).parse().unwrap();
    let out = env.run(&["release", "--key", &k, "--force"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let t = Instant::now();
    let out = h.wait_with_output_timeout();
    assert_eq!(out.0, 74, "dlock must exit 74 when its lease is broken");
    assert!(out.1.contains("lost"), "{}", out.1);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    assert!(!alive(pid), "the child outlived the lost lease");
    let out = env.run(&["release", "--key", &k]);
    assert_eq!(code(&out), 64, "--key without --force is a usage error");
}

/// A lock broken (`release --force`) while the child runs, the child ending
/// before the next renewal could notice: the release at the end finds the
/// lease gone, and the run still reports the loss (74, a `lost` event, the
/// metrics outcome `lost`).
pub fn lock_broken_before_the_next_renewal_is_reported(env: &Env) {
    let k = key("brk");
    let go = env.path("brk.go");
    let prom = env.path("brk.prom");
    let script = format!(
        "while [ ! -e {} ]; do sleep 0.05; done; echo done",
        go.display()
    );
    let mut h = env
        .cmd(&[
            "--log-format",
            "json",
            "run",
            "--ttl",
            "30s",
            "--key",
            &k,
            "--metrics-file",
            prom.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(LONG, &format!("{k} to be held"), || env.held(&k));
    let out = env.run(&["release", "--key", &k, "--force"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    std::fs::write(&go, "").unwrap();
    let t = Instant::now();
    let (c, err) = h.wait_with_output_timeout();
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    assert_eq!(c, 74, "a broken lock must not end in 0: {err}");
    let events: Vec<serde_json::Value> = err
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "lost" && e["key"] == k.as_str()),
        "{err}"
    );
    assert!(err.contains("lost the lock"), "{err}");
    let m = std::fs::read_to_string(&prom).unwrap();
    let labels = format!("namespace=\"{}\",key=\"{k}\"", env.ns());
    assert_eq!(
        metric(&m, &format!("dlock_outcome{{{labels},outcome=\"lost\"}}")),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, &format!("dlock_exit_code{{{labels}}}")),
        Some(74.0)
    );
}

/// `renew --ttl D` with a TTL other than the handle's: either the lease
/// really lasts D from now (status shows it), or it is refused with 64 and a
/// reason (etcd and ZooKeeper cannot change a lease's TTL); never a silent
/// success. The lease is unchanged by a refusal.
pub fn renew_ttl_is_applied_or_refused(env: &Env) {
    let k = key("rttl");
    let out = env.run(&["acquire", "--key", &k, "--ttl", "3s"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let h = stdout(&out).trim().to_string();
    let out = env.run(&["renew", &h, "--ttl", "1h"]);
    match code(&out) {
        0 => {
            let st = env.status_json(&[&k]);
            let exp = st[0]["holders"][0]["expires_at"]
                .as_str()
                .unwrap_or_else(|| panic!("renew --ttl 1h succeeded, but is it true? {st}"));
            let exp = humantime::parse_rfc3339(exp).unwrap();
            let left = exp
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            assert!(
                left > Duration::from_secs(30 * 60),
                "renew --ttl 1h exited 0 but the lease ends in {left:?}: {st}"
            );
        }
        64 => {
            let err = stderr(&out);
            assert!(err.contains("TTL"), "a refusal says why: {err}");
            assert!(env.held(&k), "a refused renewal changed the lease");
            let out = env.run(&["renew", &h]);
            assert_eq!(code(&out), 0, "{}", stderr(&out));
        }
        c => panic!("renew --ttl 1h: exit {c}: {}", stderr(&out)),
    }
    assert_eq!(code(&env.run(&["release", &h])), 0);
}

/// A lease taken by `dlock acquire` is held by its handle, not by the
/// long-exited `dlock acquire` process: `status` says "handle" instead of a
/// pid (JSON: `"pid": null, "handle": true`), and so does the busy message.
pub fn acquire_leases_show_as_handles(env: &Env) {
    let k = key("hnd");
    let out = env.run(&["acquire", "--key", &k]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let h = stdout(&out).trim().to_string();
    let st = env.status_json(&[&k]);
    let holder = &st[0]["holders"][0];
    assert!(holder["pid"].is_null(), "{st}");
    assert_eq!(holder["handle"], true, "{st}");
    let out = env.run(&["status", &k]);
    let table = stdout(&out);
    let row = table.lines().find(|l| l.starts_with(&k)).unwrap();
    assert!(row.contains(" handle "), "{table}");
    let out = env.run(&["run", "-n", "--key", &k, "--", "true"]);
    assert_eq!(code(&out), 75);
    assert!(stderr(&out).contains("handle"), "{}", stderr(&out));
    assert_eq!(code(&env.run(&["release", &h])), 0);
    // A run's holder shows its pid, and is no handle.
    let mut r = hold(env, &k, &[], "sleep 30");
    let st = env.status_json(&[&k]);
    assert_eq!(st[0]["holders"][0]["pid"].as_u64(), Some(u64::from(r.id())));
    assert_eq!(st[0]["holders"][0]["handle"], false, "{st}");
    signal(r.id(), Signal::SIGTERM);
    wait_timeout(&mut r, LONG);
}
