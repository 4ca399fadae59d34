//! Readers and writers racing on one key (`--shared` beside exclusive
//! `run`s), for the backends that poll: SQLite, PostgreSQL, MariaDB. Every
//! child logs a line when it begins and when it ends (O_APPEND, so the log
//! is in the order the lines were written); the check proves that no
//! writer's section met any other section, and that every acquisition had
//! its own token. Included with `#[path]` by the test crates that use it.

use std::time::Duration;

use crate::common::*;

/// What the race saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub sections: usize,
    /// The most readers in their sections at once.
    pub max_readers: usize,
}

/// `writers` exclusive and `readers` shared clients, `runs` each, holding
/// for `hold`; panics on an overlap, a failed run or a repeated token.
pub fn readers_and_writers_race(
    env: &Env,
    name: &str,
    writers: usize,
    readers: usize,
    runs: usize,
    hold: Duration,
) -> Seen {
    let log = env.path("mixed.log");
    let k = "mixed";
    std::thread::scope(|s| {
        for i in 0..writers + readers {
            let log = &log;
            s.spawn(move || {
                let (tag, mode) = if i < writers { ("X", "") } else { ("S", "-s") };
                let script = format!(
                    "echo B {tag}{i} $DLOCK_TOKEN >> {l}; sleep {h}; echo E {tag}{i} >> {l}",
                    l = log.display(),
                    h = hold.as_secs_f64()
                );
                for _ in 0..runs {
                    let mut args = vec!["run", "--wait", "60s", "--key", k];
                    if !mode.is_empty() {
                        args.push(mode);
                    }
                    args.extend_from_slice(&["--", "sh", "-c", &script]);
                    let out = env.run(&args);
                    assert_eq!(code(&out), 0, "{name}: {tag}{i}: {}", stderr(&out));
                }
            });
        }
    });
    let text = std::fs::read_to_string(&log).unwrap();
    let mut active: Vec<&str> = Vec::new();
    let mut tokens = std::collections::BTreeSet::new();
    let mut seen = Seen::default();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        match (w.next(), w.next()) {
            (Some("B"), Some(who)) => {
                let writer = who.starts_with('X');
                assert!(
                    if writer {
                        active.is_empty()
                    } else {
                        active.iter().all(|a| a.starts_with('S'))
                    },
                    "{name}: {who} began beside {active:?}:\n{text}"
                );
                let t: u64 = w.next().and_then(|t| t.parse().ok()).expect("a token");
                assert!(tokens.insert(t), "{name}: token {t} twice:\n{text}");
                active.push(who);
                seen.max_readers = seen.max_readers.max(active.len() * usize::from(!writer));
            }
            (Some("E"), Some(who)) => {
                let at = active.iter().position(|a| *a == who).expect("began");
                active.remove(at);
                seen.sections += 1;
            }
            _ => panic!("{name}: bad log line {line:?}"),
        }
    }
    assert_eq!(seen.sections, (writers + readers) * runs, "{name}:\n{text}");
    seen
}

/// A crowd of readers waiting for a writer: when it lets go, they all get
/// in together and promptly (each holds `hold`; one after the other they
/// would take `readers` times as long).
pub fn crowd_of_readers_wakes_together(env: &Env, name: &str, readers: usize) {
    use std::time::Instant;
    let k = "crowd";
    let stop = env.path("crowd-stop");
    let hold = format!("while [ ! -e {} ]; do sleep 0.02; done", stop.display());
    let mut w = env.spawn(&["run", "--key", k, "--", "sh", "-c", &hold]);
    wait_for(Duration::from_secs(10), "the writer to hold", || {
        env.held(k)
    });
    let kids: Vec<_> = (0..readers)
        .map(|_| {
            env.spawn(&[
                "run", "-s", "-q", "--wait", "60s", "--key", k, "--", "sleep", "0.5",
            ])
        })
        .collect();
    wait_for(Duration::from_secs(30), "the readers to wait", || {
        env.status_json(&[k])[0]["waiters"].as_u64() == Some(readers as u64)
    });
    std::fs::write(&stop, "").unwrap();
    assert_eq!(wait_timeout(&mut w, Duration::from_secs(10)), 0, "{name}");
    let released = Instant::now();
    for mut c in kids {
        assert_eq!(wait_timeout(&mut c, Duration::from_secs(30)), 0, "{name}");
    }
    // 0.5 s each, together; a wake-up that let them in one by one would
    // take `readers` times that.
    assert!(
        released.elapsed() < Duration::from_millis(2500),
        "{name}: {readers} readers took {:?} after the writer",
        released.elapsed()
    );
}
