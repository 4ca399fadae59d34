//! `dlock elect` as it reports: the JSON log of terms, the metrics file,
//! and the exit code when the backend cannot be reached at start.

use super::*;

/// The JSON log: `elected` with the token, `lost` after `release --force`,
/// `elected` again with a greater token, `resigned` when stopped.
#[test]
fn json_events() {
    let env = Env::sqlite();
    let errf = env.path("err");
    // A line per term once CMD's trap is set: a SIGTERM before that would
    // end CMD by the signal (143), not by its trap.
    let terms = env.path("terms");
    let body = format!(
        "trap 'exit 0' TERM; echo up >> {}; while :; do sleep 0.05; done",
        terms.display()
    );
    let started = || {
        std::fs::read_to_string(&terms)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let mut c = Reaped(
        env.cmd(&[
            "--log-format",
            "json",
            "-v",
            "elect",
            "--ttl",
            "3s",
            "--key",
            "ev",
            "--",
            "sh",
            "-c",
            &body,
        ])
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&errf).unwrap())
        .spawn()
        .unwrap(),
    );
    let events = || {
        std::fs::read_to_string(&errf)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| {
                ["elected", "lost", "resigned"].contains(&v["event"].as_str().unwrap_or(""))
            })
            .filter(|v| v["key"] == "ev")
            // The keeper's own `lost` ("lease lost") comes first; `elect`
            // says "leadership lost" once CMD is stopped.
            .filter(|v| v["event"] != "lost" || v["message"] == "leadership lost")
            .collect::<Vec<_>>()
    };
    wait_for(LONG, "elected", || events().len() == 1);
    let out = env.run(&["release", "--force", "--key", "ev"]);
    assert_eq!(code(&out), 0);
    wait_for(LONG, "lost, elected", || events().len() == 3);
    wait_for(LONG, "the second term's CMD", || started() == 2);
    signal(c.id(), Signal::SIGTERM);
    assert_eq!(wait_timeout(&mut c, LONG), 0);
    let ev = events();
    let names: Vec<&str> = ev.iter().map(|v| v["event"].as_str().unwrap()).collect();
    assert_eq!(names, ["elected", "lost", "elected", "resigned"], "{ev:?}");
    assert_eq!(ev[0]["token"], ev[1]["token"]);
    assert!(ev[2]["token"].as_u64() > ev[0]["token"].as_u64(), "{ev:?}");
    assert_eq!(ev[3]["token"], ev[2]["token"]);
    assert!(
        ev[0]["value"]
            .as_str()
            .unwrap()
            .contains(&format!(" pid {}", c.id()))
    );
}

/// `--metrics-file`: whether it leads, terms won, time as leader, token.
#[test]
fn metrics_file_records_leadership() {
    let env = Env::sqlite();
    let prom = env.path("elect.prom");
    let runs = env.path("runs");
    let metric = |name: &str| -> f64 {
        let text = std::fs::read_to_string(&prom).unwrap_or_default();
        let prefix = format!("{name}{{namespace=\"dlock\",key=\"m\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(-1.0, |v| v.parse().unwrap())
    };
    // Fails its first term, then leads until told to stop.
    let script = format!(
        "echo $DLOCK_TOKEN >> {r}; [ $(wc -l < {r}) -ge 2 ] || exit 1; \
         trap 'exit 0' TERM; while :; do sleep 0.05; done",
        r = runs.display()
    );
    let mut c = candidate(
        &env,
        "m",
        &[
            "--metrics-file",
            prom.to_str().unwrap(),
            "--restart",
            "on-failure",
            "--restart-delay",
            "100ms",
        ],
        &script,
    );
    wait_for(LONG, "the second term", || {
        metric("dlock_leader_terms_total") == 2.0
    });
    assert_eq!(metric("dlock_leader"), 1.0);
    assert!(metric("dlock_leader_since_timestamp_seconds") > 1.0e9);
    std::thread::sleep(Duration::from_millis(300));
    signal(c.id(), Signal::SIGTERM);
    assert_eq!(wait_timeout(&mut c, LONG), 0);
    assert_eq!(metric("dlock_leader"), 0.0);
    assert_eq!(metric("dlock_leader_terms_total"), 2.0);
    assert!(metric("dlock_leader_seconds_total") >= 0.3);
    assert_eq!(metric("dlock_leader_since_timestamp_seconds"), 0.0);
    let last: f64 = std::fs::read_to_string(&runs)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(metric("dlock_leader_token"), last);
}

/// A backend that cannot be reached at start is exit 69, as for `run`.
#[test]
fn unreachable_backend_at_start_is_69() {
    let env = Env::bare("redis://127.0.0.1:1".into());
    let t = Instant::now();
    let out = env.run(&[
        "--connect-timeout",
        "1s",
        "elect",
        "--key",
        "k",
        "--",
        "true",
    ]);
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let out = env.run(&["--connect-timeout", "1s", "leader", "k"]);
    assert_eq!(code(&out), 69, "{}", stderr(&out));
}
