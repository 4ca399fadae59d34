//! The command line: what a run reports. `--quiet`, JSON logs,
//! `status --watch` (with and without a terminal), `status` into a closed
//! pipe, and a metrics file that cannot be written.

use super::*;

#[test]
fn quiet_suppresses_the_busy_message_and_json_logs_report_timings() {
    let env = Env::sqlite();
    let h = stdout(&env.run(&["acquire", "--key", "q"]))
        .trim()
        .to_string();
    let out = env.run(&["-q", "run", "-n", "--key", "q", "--", "true"]);
    assert_eq!(code(&out), 75);
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    assert_eq!(code(&env.run(&["release", &h])), 0);
    let out = env.run(&["--log-format", "json", "run", "--key", "q", "--", "true"]);
    assert_eq!(code(&out), 0);
    let events: Vec<serde_json::Value> = stderr(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    let find = |e: &str| {
        events
            .iter()
            .find(|v| v["event"] == e)
            .unwrap_or_else(|| panic!("no {e} event in {events:?}"))
    };
    assert!(find("acquired")["waited_ms"].is_u64());
    assert!(find("released")["held_ms"].is_u64());
    // A run long enough to renew: every event of a lock's life, in order.
    let h = stdout(&env.run(&["acquire", "--key", "q", "--ttl", "5s"]))
        .trim()
        .to_string();
    let waiter = env
        .cmd(&[
            "--log-format",
            "json",
            "run",
            "--key",
            "q",
            "--ttl",
            "600ms",
            "--",
            "sleep",
            "0.7",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(code(&env.run(&["release", &h])), 0);
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let events: Vec<serde_json::Value> = stderr(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    let names: Vec<&str> = events.iter().filter_map(|v| v["event"].as_str()).collect();
    let pos = |e: &str| {
        names
            .iter()
            .position(|n| *n == e)
            .unwrap_or_else(|| panic!("no {e} event in {names:?}"))
    };
    assert!(pos("waiting") < pos("acquired"), "{names:?}");
    assert!(pos("acquired") < pos("renewed"), "{names:?}");
    assert!(pos("renewed") < pos("released"), "{names:?}");
    let acquired = &events[pos("acquired")];
    assert!(acquired["waited_ms"].as_u64().unwrap() >= 250, "{acquired}");
    assert!(
        events[pos("renewed")]["rtt_ms"].is_f64(),
        "{:?}",
        events[pos("renewed")]
    );
    for e in &events {
        assert!(e["timestamp"].is_string() && e["level"].is_string(), "{e}");
    }
}

/// `status --watch` without a terminal prints a fresh block each period
/// (one JSON array per line with --json) and ends with exit 0 on SIGTERM.
#[test]
fn status_watch_refreshes_until_interrupted() {
    let env = Env::sqlite();
    let mut h = env.spawn(&["run", "--key", "w", "--", "sleep", "30"]);
    wait_for(Duration::from_secs(10), "w held", || env.held("w"));
    for json in [false, true] {
        let mut args = vec!["status", "--watch", "200ms"];
        if json {
            args.push("--json");
        }
        let w = env
            .cmd(&args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(2000));
        signal(w.id(), nix::sys::signal::Signal::SIGTERM);
        let out = w.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "interrupting a watch is its normal end"
        );
        let text = stdout(&out);
        assert!(
            !text.contains('\x1b'),
            "no escapes off a terminal: {text:?}"
        );
        if json {
            let lines: Vec<&str> = text.lines().collect();
            assert!(lines.len() >= 3, "{text}");
            for l in lines {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                assert_eq!(v[0]["key"], "w", "{l}");
            }
        } else {
            let blocks = text.matches("Every 200ms: dlock status on sqlite:").count();
            assert!(blocks >= 3, "{text}");
            assert!(text.matches("\nw ").count() >= 3, "{text}");
        }
    }
    let out = env.run(&["status", "--watch", "10ms"]);
    assert_eq!(code(&out), 64, "{}", stderr(&out));
    signal(h.id(), nix::sys::signal::Signal::SIGTERM);
    wait_timeout(&mut h, Duration::from_secs(10));
}

/// On a terminal `status --watch` redraws in place (home, clear) with
/// colour; `NO_COLOR` turns the colour off.
#[test]
fn status_watch_redraws_in_place_on_a_terminal() {
    let env = Env::sqlite();
    let mut h = env.spawn(&["run", "--key", "t", "--", "sleep", "30"]);
    wait_for(Duration::from_secs(10), "t held", || env.held("t"));
    let script = servers::require("script", "bsdutils");
    for no_color in [false, true] {
        let inner = format!(
            "timeout --preserve-status -s TERM 2 {DLOCK} --backend '{}' status --watch 200ms; echo exit=$?",
            env.url
        );
        let mut cmd = std::process::Command::new(&script);
        cmd.args(["-qec", &inner, "/dev/null"])
            .env("HOME", env.dir.path())
            .env_remove("NO_COLOR")
            .stdin(std::process::Stdio::null());
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("exit=0"),
            "SIGTERM ends a watch with 0: {text:?}"
        );
        assert!(text.matches("\x1b[H\x1b[2J").count() >= 3, "{text:?}");
        let coloured = text.contains("\x1b[33mheld\x1b[0m");
        assert_eq!(coloured, !no_color, "{text:?}");
    }
    signal(h.id(), nix::sys::signal::Signal::SIGTERM);
    wait_timeout(&mut h, Duration::from_secs(10));
}

/// A metrics file that cannot be written is reported, and the run's own
/// exit status stands.
#[test]
fn unwritable_metrics_file_keeps_the_exit_status() {
    let env = Env::sqlite();
    let out = env.run(&[
        "run",
        "--key",
        "m",
        "--metrics-file",
        "/nonexistent/dir/job.prom",
        "--",
        "sh",
        "-c",
        "exit 3",
    ]);
    assert_eq!(code(&out), 3);
    assert!(
        stderr(&out).contains("cannot write metrics to /nonexistent/dir/job.prom"),
        "{}",
        stderr(&out)
    );
    // The config file key works too.
    let prom = env.path("cfg.prom");
    let cfg = env.path("c.toml");
    std::fs::write(
        &cfg,
        format!("metrics-file = {:?}\n", prom.to_str().unwrap()),
    )
    .unwrap();
    let out = env.run(&[
        "--config",
        cfg.to_str().unwrap(),
        "run",
        "--key",
        "m",
        "--",
        "true",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(
        text.contains("dlock_outcome{namespace=\"dlock\",key=\"m\",outcome=\"success\"} 1"),
        "{text}"
    );
}

/// `status` into a pipe whose reader has gone (`| head -1`) is not an error.
#[test]
fn status_into_a_closed_pipe_succeeds() {
    let env = Env::sqlite();
    for k in ["p1", "p2", "p3"] {
        let out = env.run(&["acquire", "--key", k]);
        assert_eq!(code(&out), 0);
    }
    let mut c = env
        .cmd(&["status", "p1", "p2", "p3"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(c.stdout.take());
    assert_eq!(wait_timeout(&mut c, Duration::from_secs(10)), 0);
}

/// A lost lease in JSON logs: a `lost` event, then `released` with
/// `lost: true`, and exit 74.
#[test]
fn json_logs_report_a_lost_lease() {
    let env = Env::sqlite();
    let c = env
        .cmd(&[
            "--log-format",
            "json",
            "run",
            "--key",
            "gone",
            "--ttl",
            "1s",
            "--kill-after",
            "300ms",
            "--",
            "sleep",
            "30",
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(10), "gone held", || env.held("gone"));
    assert_eq!(code(&env.run(&["release", "--key", "gone", "--force"])), 0);
    let out = c.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(74));
    let events: Vec<serde_json::Value> = stderr(&out)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let lost = events.iter().position(|e| e["event"] == "lost");
    let released = events.iter().position(|e| e["event"] == "released");
    assert!(lost.is_some() && lost < released, "{events:?}");
    let r = &events[released.unwrap()];
    assert_eq!(r["lost"], true, "{r}");
    assert!(r["held_ms"].as_u64().is_some(), "{r}");
    assert_eq!(events[lost.unwrap()]["key"], "gone");
}

/// With `--log-format json`, every line on stderr is one JSON object with
/// typed fields: events (`keys` and `tokens` as arrays), the messages for
/// the user (busy: `event: "notice"`) and the final error (`event: "error"`
/// with `exit_code`).
#[test]
fn json_logs_are_one_typed_object_per_line() {
    let env = Env::sqlite();
    let objects = |out: &std::process::Output| -> Vec<serde_json::Value> {
        stderr(out)
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{}", stderr(out)));
                assert!(
                    v.is_object() && v["event"].is_string() && v["level"].is_string(),
                    "{l}"
                );
                v
            })
            .collect()
    };
    let out = env.run(&[
        "--log-format",
        "json",
        "run",
        "--key",
        "b",
        "--key",
        "a",
        "--",
        "true",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let ev = objects(&out);
    let acquired = ev.iter().find(|e| e["event"] == "acquired").unwrap();
    assert_eq!(
        acquired["keys"],
        serde_json::json!(["a", "b"]),
        "{acquired}"
    );
    assert!(
        acquired["tokens"]
            .as_array()
            .is_some_and(|t| t.iter().all(|x| x.is_u64())),
        "{acquired}"
    );
    let mut h = env.spawn(&["run", "--key", "x", "--", "sleep", "30"]);
    wait_for(Duration::from_secs(10), "x held", || env.held("x"));
    let out = env.run(&[
        "--log-format",
        "json",
        "run",
        "-n",
        "--key",
        "x",
        "--",
        "true",
    ]);
    assert_eq!(code(&out), 75);
    let ev = objects(&out);
    assert!(
        ev.iter()
            .any(|e| e["event"] == "notice" && e["message"].as_str().unwrap().contains("busy")),
        "{ev:?}"
    );
    signal(h.id(), nix::sys::signal::Signal::SIGTERM);
    let _ = h.wait();
    let missing = format!("sqlite:{}/no/such/x.db", env.dir.path().display());
    let out = bare(env.dir.path())
        .args(["--log-format", "json", "--backend", &missing, "status"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 69);
    let ev = objects(&out);
    let err = ev.iter().find(|e| e["event"] == "error").unwrap();
    assert_eq!(err["exit_code"], 69, "{err}");
    assert_eq!(err["level"], "ERROR");
}
