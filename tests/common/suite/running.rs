//! The conformance suite: the command under the lock. Its status and
//! environment, a busy key, signals passed on to it, and its death with
//! dlock's.

use super::*;

pub fn child_status_and_environment(env: &Env) {
    let k = key("env");
    let out = env.run(&[
        "run",
        "--key",
        &k,
        "--",
        "sh",
        "-c",
        "echo \"$DLOCK_KEY|$DLOCK_TOKEN|$DLOCK_TTL\"; exit 3",
    ]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let line = stdout(&out);
    let parts: Vec<&str> = line.trim().split('|').collect();
    assert_eq!(parts[0], k);
    assert!(parts[1].parse::<u64>().unwrap() >= 1, "token {line}");
    assert_eq!(parts[2], "30");
    assert!(!env.held(&k), "released after the child exited");
    // --shell runs through /bin/sh.
    let out = env.run(&["run", "--key", &k, "--shell", "--", "echo", "$DLOCK_KEY"]);
    assert_eq!(stdout(&out).trim(), k);
}

pub fn missing_and_unexecutable_commands(env: &Env) {
    let k = key("exec");
    let out = env.run(&["run", "--key", &k, "--", "/nonexistent/cmd"]);
    assert_eq!(code(&out), 127);
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
    let f = env.path("not-exec");
    std::fs::write(&f, "#!/bin/sh\necho hi\n").unwrap();
    let out = env.run(&["run", "--key", &k, "--", f.to_str().unwrap()]);
    assert_eq!(code(&out), 126);
    assert!(!env.held(&k));
}

pub fn child_killed_by_signal_frees_lock(env: &Env) {
    let k = key("sig");
    let out = env.run(&["run", "--key", &k, "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(code(&out), 143);
    let pidf = env.path("child.pid");
    let mut c = env.spawn(&[
        "run",
        "--key",
        &k,
        "--",
        "sh",
        "-c",
        &format!("echo $$ > {}; exec sleep 30", pidf.display()),
    ]);
    let pid: u32 = read_when_ready(&pidf, LONG).parse().unwrap();
    signal(pid, Signal::SIGKILL);
    assert_eq!(wait_timeout(&mut c, LONG), 137);
    assert!(!env.held(&k));
}

pub fn busy_no_wait_wait_and_conflict_code(env: &Env) {
    let k = key("busy");
    let mut h = hold(env, &k, &[], "sleep 30");
    let t = Instant::now();
    let out = env.run(&["run", "-n", "--key", &k, "--", "true"]);
    assert_eq!(code(&out), 75);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "--no-wait returned in {:?}",
        t.elapsed()
    );
    let err = stderr(&out);
    assert!(
        err.contains("busy") && err.contains("held by") && err.contains("token"),
        "{err}"
    );
    let out = env.run(&["run", "-n", "-E", "3", "--key", &k, "--", "true"]);
    assert_eq!(code(&out), 3);
    let t = Instant::now();
    let out = env.run(&["run", "-w", "400ms", "--key", &k, "--", "true"]);
    let took = t.elapsed();
    assert_eq!(code(&out), 75);
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(4),
        "--wait 400ms took {took:?}"
    );
    assert!(stderr(&out).contains("after waiting"), "{}", stderr(&out));
    let out = env.run(&["acquire", "-n", "--key", &k]);
    assert_eq!(code(&out), 75);
    assert!(stdout(&out).is_empty());
    signal(h.id(), Signal::SIGTERM);
    assert_eq!(wait_timeout(&mut h, LONG), 143);
}

pub fn sigkill_of_dlock_kills_child_and_grandchild(env: &Env) {
    let k = key("kill9");
    let pidf = env.path("k9.pid");
    let gpidf = env.path("k9.gpid");
    let script = format!(
        "sleep 30 & echo $! > {}; echo $$ > {}; wait",
        gpidf.display(),
        pidf.display()
    );
    let mut h = hold(env, &k, &["--ttl", "2s"], &script);
    let pid: i32 = read_when_ready(&pidf, LONG).parse().unwrap();
    let gpid: i32 = read_when_ready(&gpidf, LONG).parse().unwrap();
    signal(h.id(), Signal::SIGKILL);
    let _ = h.wait();
    wait_for(
        Duration::from_secs(3),
        "the child to die with dlock",
        || !alive(pid),
    );
    wait_for(
        Duration::from_secs(3),
        "the grandchild to die with dlock",
        || !alive(gpid),
    );
    // The lock frees by the TTL at the latest.
    wait_for(
        Duration::from_secs(6),
        "the lock to free after its holder died",
        || !env.held(&k),
    );
    let out = env.run(&["run", "-w", "5s", "--key", &k, "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

pub fn signals_are_forwarded(env: &Env) {
    let k = key("fwd");
    let ready = env.path("fwd.ready");
    let script = format!(
        "trap 'exit 7' TERM; echo go > {}; while :; do sleep 0.05; done",
        ready.display()
    );
    let mut h = env.spawn(&["run", "--key", &k, "--", "sh", "-c", &script]);
    read_when_ready(&ready, LONG);
    signal(h.id(), Signal::SIGTERM);
    assert_eq!(
        wait_timeout(&mut h, LONG),
        7,
        "the child's own status after a forwarded SIGTERM"
    );
    let ready2 = env.path("fwd2.ready");
    let mut h = env.spawn(&[
        "run",
        "--key",
        &k,
        "--",
        "sh",
        "-c",
        &format!("echo go > {}; exec sleep 30", ready2.display()),
    ]);
    read_when_ready(&ready2, LONG);
    signal(h.id(), Signal::SIGINT);
    assert_eq!(wait_timeout(&mut h, LONG), 130);
    let ready3 = env.path("fwd3.ready");
    let mut h = env.spawn(&[
        "run",
        "--key",
        &k,
        "--",
        "sh",
        "-c",
        &format!("trap '' INT; echo go > {}; exec sleep 30", ready3.display()),
    ]);
    read_when_ready(&ready3, LONG);
    signal(h.id(), Signal::SIGUSR1);
    assert_eq!(wait_timeout(&mut h, LONG), 128 + 10);
    assert!(!env.held(&k));
}

pub fn lock_at_least_keeps_the_lock(env: &Env) {
    let k = key("least");
    let t = Instant::now();
    let out = env.run(&[
        "run",
        "--lock-at-least",
        "1500ms",
        "--key",
        &k,
        "--",
        "true",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    if t.elapsed() < Duration::from_millis(1200) {
        // The backend left the lease to lapse on its own: it is still held.
        let out = env.run(&["run", "-n", "--key", &k, "--", "true"]);
        assert_eq!(
            code(&out),
            75,
            "the lock was free before --lock-at-least passed"
        );
    }
    wait_for(Duration::from_secs(5), "the lock to lapse", || {
        !env.held(&k)
    });
    assert!(
        t.elapsed() >= Duration::from_millis(1400),
        "freed after {:?}",
        t.elapsed()
    );
}

/// On a terminal a waiter shows one live line naming the lock and who holds
/// it, erased when the wait ends; without a terminal, nothing.
pub fn waiting_line_only_on_a_terminal(env: &Env) {
    let k = key("line");
    let mut h = hold(env, &k, &[], "sleep 3");
    // script(1) gives the waiter a pseudo-terminal.
    let inner = format!(
        "{} --backend '{}' run --key {k} --wait 20s -- echo got-it",
        DLOCK, env.url
    );
    let script = servers::require("script", "bsdutils");
    let out = std::process::Command::new(script)
        .args(["-qec", &inner, "/dev/null"])
        .env("HOME", env.dir.path())
        .env("DLOCK_NAMESPACE", env.ns())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("waiting") && text.contains(&format!("for \"{k}\"")),
        "{text:?}"
    );
    assert!(text.contains("held by"), "the holder is named: {text:?}");
    assert!(
        text.contains("\r\x1b[2Kgot-it"),
        "the line is erased before the child runs: {text:?}"
    );
    wait_timeout(&mut h, LONG);
    // The same wait without a terminal prints nothing extra.
    let mut h = hold(env, &k, &[], "sleep 1");
    let out = env.run(&["run", "--key", &k, "--wait", "20s", "--", "echo", "got-it"]);
    assert_eq!(code(&out), 0);
    assert_eq!(stderr(&out), "", "nothing on stderr without a terminal");
    assert_eq!(stdout(&out), "got-it\n");
    wait_timeout(&mut h, LONG);
}
