//! The conformance suite: what dlock reports. `status` (JSON and table),
//! the metrics file and `doctor`.

use super::*;

pub fn status_json_fields(env: &Env) {
    let k = key("stat");
    let free = key("free");
    let mut h = hold(env, &k, &[], "sleep 30");
    let st = env.status_json(&[&k, &free]);
    let arr = st.as_array().unwrap();
    assert_eq!(arr.len(), 2);
    let held = arr.iter().find(|o| o["key"] == k.as_str()).unwrap();
    assert_eq!(held["held"], true);
    assert_eq!(held["limit"], 1);
    let holder = &held["holders"][0];
    assert_eq!(holder["pid"].as_u64().unwrap(), u64::from(h.id()));
    assert!(holder["owner"].is_string() && holder["host"].is_string());
    assert!(holder["token"].as_u64().unwrap() >= 1);
    for f in ["acquired_at", "expires_at"] {
        // A session-based lease (ZooKeeper) has no expiry time to show.
        if f == "expires_at" && holder[f].is_null() {
            continue;
        }
        let s = holder[f].as_str().unwrap();
        assert!(s.ends_with('Z') && s.contains('T'), "{f} = {s}");
    }
    assert!(held.get("waiters").is_some());
    let fr = arr.iter().find(|o| o["key"] == free.as_str()).unwrap();
    assert_eq!(fr["held"], false);
    assert_eq!(fr["holders"].as_array().unwrap().len(), 0);
    let out = env.run(&["status"]);
    assert!(stdout(&out).contains(&k), "{}", stdout(&out));
    signal(h.id(), Signal::SIGTERM);
    wait_timeout(&mut h, LONG);
}

/// The `status` table and JSON for a free key, a held key and a semaphore
/// with two holders; colour only when asked for (stdout is not a terminal).
pub fn status_table_for_free_held_and_semaphore_keys(env: &Env) {
    let (held, sem, free) = (key("tab-held"), key("tab-sem"), key("tab-free"));
    let mut h1 = hold(env, &held, &[], "sleep 30");
    let mut s1 = hold(env, &sem, &["--limit", "2"], "sleep 30");
    let mut s2 = env.spawn(&["run", "--key", &sem, "--limit", "2", "--", "sleep", "30"]);
    wait_for(LONG, "two holders of the semaphore", || {
        env.status_json(&[&sem])[0]["holders"]
            .as_array()
            .unwrap()
            .len()
            == 2
    });
    let st = env.status_json(&[&free, &held, &sem]);
    let by_key = |k: &str| {
        st.as_array()
            .unwrap()
            .iter()
            .find(|o| o["key"] == k)
            .unwrap()
            .clone()
    };
    assert_eq!(by_key(&free)["held"], false);
    assert_eq!(by_key(&held)["holders"].as_array().unwrap().len(), 1);
    let s = by_key(&sem);
    assert_eq!(s["held"], true);
    assert!(s["limit"].as_u64().unwrap() >= 2, "{s}");
    assert_eq!(s["holders"].as_array().unwrap().len(), 2);
    let out = env.run(&["status", &free, &held, &sem]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let table = stdout(&out);
    assert!(
        !table.contains('\x1b'),
        "no colour off a terminal: {table:?}"
    );
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("KEY") && lines[0].contains("EXPIRES"),
        "{table}"
    );
    let row = |k: &str| {
        *lines
            .iter()
            .find(|l| l.starts_with(k))
            .unwrap_or_else(|| panic!("no row for {k}: {table}"))
    };
    assert!(row(&free).contains("free"), "{table}");
    assert!(
        row(&held).contains(" held ") && row(&held).contains(" ago"),
        "{table}"
    );
    assert!(row(&sem).contains("held 2/"), "{table}");
    // The second holder of the semaphore gets a line of its own.
    assert_eq!(lines.len(), 1 + 1 + 1 + 2, "{table}");
    let out = env.run(&["--color", "always", "status", &free, &held]);
    assert!(
        stdout(&out).contains("\x1b[32mfree\x1b[0m"),
        "{:?}",
        stdout(&out)
    );
    let out = env
        .cmd(&["--color", "auto", "status", &held])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!stdout(&out).contains('\x1b'));
    for c in [&mut h1, &mut s1, &mut s2] {
        signal(c.id(), Signal::SIGTERM);
        wait_timeout(c, LONG);
    }
}

/// `--metrics-file` after a success, a busy run and a lost lease: the
/// outcome, exit code and token, and the last success kept across failures.
pub fn metrics_file_records_success_busy_and_loss(env: &Env) {
    let k = key("metrics");
    let prom = env.path("job.prom");
    let m = prom.to_str().unwrap();
    let labels = format!("namespace=\"{}\",key=\"{k}\"", env.ns());
    let read = || std::fs::read_to_string(&prom).unwrap();
    let outcome =
        |text: &str, o: &str| metric(text, &format!("dlock_outcome{{{labels},outcome=\"{o}\"}}"));
    let value = |text: &str, name: &str| metric(text, &format!("{name}{{{labels}}}"));

    let out = env.run(&[
        "run",
        "--key",
        &k,
        "--metrics-file",
        m,
        "--",
        "sleep",
        "0.3",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let ok = read();
    assert_eq!(outcome(&ok, "success"), Some(1.0), "{ok}");
    assert_eq!(outcome(&ok, "busy"), Some(0.0), "{ok}");
    assert_eq!(value(&ok, "dlock_exit_code"), Some(0.0));
    assert!(value(&ok, "dlock_hold_seconds").unwrap() >= 0.3, "{ok}");
    assert!(value(&ok, "dlock_fencing_token").unwrap() >= 1.0, "{ok}");
    let success_at = value(&ok, "dlock_last_success_timestamp_seconds").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - success_at).abs() < 60.0, "{success_at} vs {now}");
    assert!(ok.contains("# TYPE dlock_outcome gauge"), "{ok}");
    // No temporary file is left beside it.
    let left: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    let mut h = hold(env, &k, &[], "sleep 30");
    let out = env.run(&[
        "run",
        "--key",
        &k,
        "--wait",
        "300ms",
        "--metrics-file",
        m,
        "--",
        "true",
    ]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    let busy = read();
    assert_eq!(outcome(&busy, "busy"), Some(1.0), "{busy}");
    assert_eq!(outcome(&busy, "success"), Some(0.0), "{busy}");
    assert_eq!(value(&busy, "dlock_exit_code"), Some(75.0));
    assert!(value(&busy, "dlock_wait_seconds").unwrap() >= 0.3, "{busy}");
    assert_eq!(value(&busy, "dlock_hold_seconds"), Some(0.0));
    assert_eq!(
        value(&busy, "dlock_last_success_timestamp_seconds"),
        Some(success_at),
        "kept across a busy run"
    );
    signal(h.id(), Signal::SIGTERM);
    wait_timeout(&mut h, LONG);

    let mut lost = env
        .cmd(&[
            "run",
            "--key",
            &k,
            "--ttl",
            "1500ms",
            "--kill-after",
            "500ms",
            "--metrics-file",
            m,
            "--",
            "sleep",
            "30",
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(LONG, "the run to hold", || env.held(&k));
    let out = env.run(&["release", "--key", &k, "--force"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(wait_timeout(&mut lost, LONG), 74);
    let l = read();
    assert_eq!(outcome(&l, "lost"), Some(1.0), "{l}");
    assert_eq!(value(&l, "dlock_exit_code"), Some(74.0));
    assert_eq!(
        value(&l, "dlock_last_success_timestamp_seconds"),
        Some(success_at)
    );
}

/// `doctor --json`: every check has a level and a message, the backend
/// answers, and the exit code follows the worst finding.
pub fn doctor_reports_every_check(env: &Env) {
    let out = env.run(&["doctor", "--json", "--ttl", "10s"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&out), stderr(&out)));
    let checks = report["checks"].as_array().unwrap();
    let level = |name: &str| {
        checks
            .iter()
            .find(|c| c["check"] == name)
            .map(|c| c["level"].as_str().unwrap().to_string())
    };
    assert_eq!(level("reachable").as_deref(), Some("ok"), "{report:#}");
    assert_eq!(level("round-trip").as_deref(), Some("ok"), "{report:#}");
    assert!(level("clock").is_some(), "{report:#}");
    for c in checks {
        assert!(
            ["ok", "info", "warn", "fail"].contains(&c["level"].as_str().unwrap()),
            "{c}"
        );
        assert!(!c["message"].as_str().unwrap().is_empty(), "{c}");
        if c["level"] == "fail" {
            assert!(c["fix"].is_string(), "a failure says how to fix it: {c}");
        }
    }
    let failed = checks.iter().any(|c| c["level"] == "fail");
    assert_eq!(code(&out), if failed { 1 } else { 0 }, "{report:#}");
    assert_eq!(report["ttl_seconds"], 10.0);
    // The text form says the same, one line per check.
    let out = env.run(&["doctor", "--ttl", "10s"]);
    let text = stdout(&out);
    assert!(text.starts_with("dlock doctor: "), "{text}");
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("  ") && !l.trim_start().starts_with("fix:"))
            .count(),
        checks.len(),
        "{text}"
    );
}

/// `status` counts who waits for a key, on every backend: waiters that give
/// up stop being counted, and so do waiters that got the lock.
pub fn status_counts_waiters(env: &Env) {
    let k = key("waiters");
    let waiters = || env.status_json(&[&k])[0]["waiters"].as_u64();
    let mut h = hold(env, &k, &[], "sleep 30");
    assert_eq!(waiters(), Some(0), "nobody waits yet");
    let spawn = |wait: &str| {
        env.cmd(&["run", "--key", &k, "--wait", wait, "--", "true"])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut patient = [spawn("30s"), spawn("30s")];
    let mut quitter = spawn("4s");
    wait_for(LONG, "three waiters counted", || waiters() == Some(3));
    let out = env.run(&["status", &k]);
    let table = stdout(&out);
    let row = table.lines().find(|l| l.starts_with(&k)).unwrap();
    assert!(row.trim_end().ends_with(" 3"), "WAITERS column: {table}");
    assert_eq!(wait_timeout(&mut quitter, LONG), 75);
    wait_for(
        Duration::from_secs(8),
        "the quitter to stop counting",
        || waiters() == Some(2),
    );
    signal(h.id(), Signal::SIGTERM);
    wait_timeout(&mut h, LONG);
    for p in &mut patient {
        assert_eq!(wait_timeout(p, LONG), 0);
    }
    wait_for(Duration::from_secs(6), "no waiter left", || {
        waiters().unwrap_or(0) == 0
    });
}

/// `status` lists named keys in the order given (each once), and the
/// namespace's keys sorted, the same on every backend.
pub fn status_rows_in_the_order_given(env: &Env) {
    let (z, a, m) = (key("ord-z"), key("ord-a"), key("ord-m"));
    let mut hz = hold(env, &z, &[], "sleep 30");
    let mut ha = hold(env, &a, &[], "sleep 30");
    let keys = |st: &serde_json::Value| {
        st.as_array()
            .unwrap()
            .iter()
            .map(|o| o["key"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let st = env.status_json(&[&z, &m, &a, &z]);
    assert_eq!(keys(&st), vec![z.clone(), m.clone(), a.clone()], "{st}");
    let out = env.run(&["status", &m, &z, &a]);
    let table = stdout(&out);
    let rows: Vec<&str> = table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(rows, vec![m.as_str(), z.as_str(), a.as_str()], "{table}");
    let all = keys(&env.status_json(&[]));
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted);
    assert!(all.contains(&a) && all.contains(&z), "{all:?}");
    for c in [&mut hz, &mut ha] {
        signal(c.id(), Signal::SIGTERM);
        wait_timeout(c, LONG);
    }
}
