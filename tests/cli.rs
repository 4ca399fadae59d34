//! The command line as a user meets it: help, bad input and its exit codes,
//! configuration precedence, and the generated docs being current.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// The configuration file and its precedence.
#[path = "cli/config.rs"]
mod config;
/// What a run reports: logs, `status --watch`, the metrics file.
#[path = "cli/reporting.rs"]
mod reporting;

#[test]
fn help_and_version_succeed() {
    let env = Env::sqlite();
    let out = env.run(&["--help"]);
    assert_eq!(code(&out), 0);
    assert!(
        stdout(&out).contains("Exit status"),
        "--help documents exit codes"
    );
    let out = env.run(&["--version"]);
    assert_eq!(code(&out), 0);
    assert!(stdout(&out).starts_with("dlock "));
    let out = env.run(&["run", "--help"]);
    assert_eq!(code(&out), 0);
}

#[test]
fn usage_errors_exit_64_with_a_message() {
    let env = Env::sqlite();
    let cases: &[(&[&str], &str)] = &[
        (&[], "Usage"),
        (&["--bogus", "status"], "--bogus"),
        (&["run", "--key", "a"], "CMD"),
        (
            &["run", "--ttl", "soon", "--key", "a", "--", "true"],
            "invalid duration",
        ),
        (
            &["run", "--ttl", "10ms", "--key", "a", "--", "true"],
            "too short",
        ),
        (
            &["run", "--wait=-1", "--key", "a", "--", "true"],
            "duration",
        ),
        (&["run", "--key", "", "--", "true"], "key must not be empty"),
        (
            &["run", "--limit", "0", "--key", "a", "--", "true"],
            "--limit",
        ),
        (&["run", "-E", "300", "--key", "a", "--", "true"], "300"),
        (
            &[
                "run", "--shared", "--limit", "2", "--key", "a", "--", "true",
            ],
            "--shared with --limit 2",
        ),
        (
            &["acquire", "-s", "-l", "3", "--key", "a"],
            "a shared lock has no limit",
        ),
        (&["release"], "required"),
        (&["release", "garbage"], "not a dlock lease handle"),
        (&["renew", "dlock1.AAAA"], "not a dlock lease handle"),
        (&["man", "nosuch"], "no subcommand"),
    ];
    for (args, needle) in cases {
        let out = env.run(args);
        assert_eq!(code(&out), 64, "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(needle),
            "{args:?}: expected {needle:?} in {}",
            stderr(&out)
        );
        assert!(!stderr(&out).contains("panicked"), "{args:?} panicked");
    }
}

/// `dlock --backend URL status`, in a clean environment.
fn status_on(home: &std::path::Path, url: &str) -> std::process::Output {
    bare(home)
        .args(["--backend", url, "status"])
        .output()
        .unwrap()
}

#[test]
fn bad_backend_urls() {
    let dir = tempfile::tempdir().unwrap();
    let run = |url: &str| status_on(dir.path(), url);
    let out = run("foo://x");
    assert_eq!(code(&out), 64);
    assert!(stderr(&out).contains("unknown backend URL"));
    let out = run("sqlite:");
    assert_eq!(code(&out), 64);
    // A database that cannot be created is an unavailable backend.
    let out = run("sqlite:/proc/no/such/dir/locks.db");
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("/proc/no/such/dir"),
        "{}",
        stderr(&out)
    );
    // Passwords never reach the output.
    let out = run("redis://user:hunter2@127.0.0.1:1/0");
    assert_ne!(code(&out), 0);
    assert!(!stderr(&out).contains("hunter2"), "{}", stderr(&out));
    let out = bare(dir.path())
        .args([
            "--backend",
            "redis://u:pw1@127.0.0.1:1",
            "--backend",
            "sqlite:/tmp/x.db",
            "status",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 64);
    assert!(!stderr(&out).contains("pw1"), "{}", stderr(&out));
}

#[test]
fn unreachable_backend_is_bounded() {
    // A database file locked by another process for longer than the timeout.
    let env = Env::sqlite();
    assert_eq!(code(&env.run(&["status"])), 0);
    let db = env.dir.path().join("locks.db");
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .open(&db)
        .unwrap();
    // Hold SQLite's own write lock bytes would need SQLite; an exclusive
    // POSIX lock over the whole file has the same effect on it.
    let lock = libc::flock {
        l_type: libc::F_WRLCK as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    // SAFETY: fcntl on a file we opened, with a lock struct we own.
    assert_eq!(
        unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&f), libc::F_SETLK, &lock) },
        0
    );
    let t = Instant::now();
    let out = env.run(&[
        "--connect-timeout",
        "500ms",
        "run",
        "--key",
        "k",
        "--",
        "true",
    ]);
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    drop(f);
}

/// doctor on the embedded backend: local filesystem, host-only scope, and
/// an unreachable backend exits 69 with a failed "reachable" check.
#[test]
fn doctor_on_sqlite_and_on_nothing() {
    let env = Env::sqlite();
    let (c, checks) = env.doctor(&[]);
    assert_eq!(c, 0, "{checks:?}");
    assert!(
        checks
            .iter()
            .any(|(n, l, _)| n == "filesystem" && l == "ok"),
        "{checks:?}"
    );
    assert!(
        checks.iter().any(|(n, l, _)| n == "scope" && l == "info"),
        "{checks:?}"
    );
    let port = servers::free_port();
    let gone = Env::bare(format!("redis://:hunter2@127.0.0.1:{port}"));
    let out = gone.run(&["--connect-timeout", "1s", "doctor"]);
    assert_eq!(code(&out), 69, "{}", stdout(&out));
    assert!(stdout(&out).contains("FAIL  reachable"), "{}", stdout(&out));
    assert!(!stdout(&out).contains("hunter2") && !stderr(&out).contains("hunter2"));
    let out = env.run(&["doctor", "--ttl", "1ms"]);
    assert_eq!(code(&out), 64);
}

#[test]
fn ping_reports_the_backend() {
    let env = Env::sqlite();
    let out = env.run(&["ping"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).starts_with("sqlite 3."), "{}", stdout(&out));
}

#[test]
fn completions_and_man_pages_are_current() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let render = |args: &[&str]| {
        let out = bare(dir.path()).args(args).output().unwrap();
        assert_eq!(code(&out), 0);
        out.stdout
    };
    let mut files: Vec<(String, Vec<u8>)> = vec![
        (
            "completions/dlock.bash".into(),
            render(&["completions", "bash"]),
        ),
        ("completions/_dlock".into(), render(&["completions", "zsh"])),
        (
            "completions/dlock.fish".into(),
            render(&["completions", "fish"]),
        ),
        ("man/dlock.1".into(), render(&["man"])),
    ];
    use clap::CommandFactory;
    let subs: Vec<String> = dlock::cli::Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    assert!(subs.iter().any(|s| s == "doctor"), "{subs:?}");
    for sub in &subs {
        files.push((format!("man/dlock-{sub}.1"), render(&["man", sub])));
    }
    // No page for a subcommand that is gone.
    for e in std::fs::read_dir(root.join("man")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(sub) = name
            .strip_prefix("dlock-")
            .and_then(|n| n.strip_suffix(".1"))
        {
            assert!(
                subs.iter().any(|s| s == sub),
                "man/{name} documents no subcommand"
            );
        }
    }
    for (path, fresh) in files {
        let committed = std::fs::read(root.join(&path)).unwrap_or_default();
        assert!(
            committed == fresh,
            "{path} is stale: run scripts/gen-docs.sh and commit the result"
        );
    }
}

/// A signal ignored when dlock starts stays ignored and reaches nobody:
/// `nohup`-style SIGHUP, and SIGINT to a background job of a
/// non-interactive shell (which the shell starts with SIGINT ignored). The
/// child runs to its end and dlock exits with its status.
#[test]
fn signals_ignored_at_start_stay_ignored() {
    let env = Env::sqlite();
    for (sig, setup) in [
        (nix::sys::signal::Signal::SIGHUP, "trap '' HUP; exec"),
        (nix::sys::signal::Signal::SIGINT, ""),
    ] {
        let ready = env.path(&format!("{sig}.ready"));
        let dlock_pid = env.path(&format!("{sig}.dlock"));
        let child = format!("echo go > {}; sleep 1; echo survived", ready.display());
        // `exec` keeps the shell's ignore; `&` starts a background job
        // (SIGINT and SIGQUIT ignored: sh without job control).
        let script = if setup.is_empty() {
            format!(
                "\"$0\" --backend \"$1\" run --key {sig} -- sh -c \"$2\" & echo $! > {}; wait $!",
                dlock_pid.display()
            )
        } else {
            format!(
                "echo $$ > {}; {setup} \"$0\" --backend \"$1\" run --key {sig} -- sh -c \"$2\"",
                dlock_pid.display()
            )
        };
        let mut sh = std::process::Command::new("sh");
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("DLOCK_") {
                sh.env_remove(&k);
            }
        }
        sh.args(["-c", &script, DLOCK, &env.url, &child])
            .env("HOME", env.dir.path())
            .env("XDG_STATE_HOME", env.dir.path().join("state"))
            .env("XDG_CONFIG_HOME", env.dir.path().join("config"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let sh = sh.spawn().unwrap();
        read_when_ready(&ready, Duration::from_secs(20));
        let pid: u32 = read_when_ready(&dlock_pid, Duration::from_secs(5))
            .parse()
            .unwrap();
        signal(pid, sig);
        let out = sh.wait_with_output().unwrap();
        assert_eq!(
            code(&out),
            0,
            "{sig} ignored at start must stay ignored: {}",
            stderr(&out)
        );
        assert_eq!(stdout(&out).trim(), "survived", "{}", stderr(&out));
    }
}

/// A namespace holding the separator of the backend's layout is refused
/// (64) before connecting: on Redis `a:x` + key `y` would be the lock of
/// `a` + `x:y`, on etcd and ZooKeeper `a/x` + `y` that of `a` + `x/y`.
/// Backends that keep the namespace in a column of its own take any.
#[test]
fn namespaces_that_would_alias_are_refused() {
    // Nothing listens on port 1: a refusal must come before connecting.
    for (url, bad, sep) in [
        ("redis://127.0.0.1:1", "a:x", ":"),
        ("redis://127.0.0.1:1", "{a}", "{"),
        ("rediss://127.0.0.1:1", "a:x", ":"),
        ("etcd://127.0.0.1:1", "a/x", "/"),
        ("zk://127.0.0.1:1", "a/x", "/"),
    ] {
        let env = Env::bare(url.to_string());
        for args in [
            vec!["--namespace", bad, "run", "--key", "y", "--", "true"],
            vec!["--namespace", bad, "status"],
        ] {
            let out = env.run(&args);
            assert_eq!(code(&out), 64, "{url} {args:?}: {}", stderr(&out));
            let err = stderr(&out);
            assert!(
                err.contains("namespace") && err.contains(sep),
                "{url}: {err}"
            );
        }
    }
    let env = Env::sqlite();
    let out = env.run(&["--namespace", "a:x/y", "run", "--key", "k", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

/// A key ZooKeeper cannot store is refused before connecting (64), not
/// reported as an unreachable backend (69).
#[test]
fn zookeeper_key_rules_apply_before_connecting() {
    let env = Env::bare("zk://127.0.0.1:1".to_string());
    let out = env.run(&[
        "--connect-timeout",
        "1s",
        "run",
        "--key",
        "🔒",
        "--",
        "true",
    ]);
    assert_eq!(code(&out), 64, "{}", stderr(&out));
    assert!(stderr(&out).contains("ZooKeeper"), "{}", stderr(&out));
}

/// Messages that point the way: the unknown-scheme message lists every
/// scheme dlock takes, and the Redlock short form `redis://h:1,h:2` says how
/// to write it (each server its own URL), without showing a password.
#[test]
fn bad_url_messages_say_what_would_work() {
    let dir = tempfile::tempdir().unwrap();
    let run = |url: &str| status_on(dir.path(), url);
    let out = run("foo://x");
    assert_eq!(code(&out), 64);
    for scheme in [
        "sqlite:",
        "redis://",
        "rediss://",
        "redis+sentinel://",
        "redis+cluster://",
        "zk://",
        "postgres://",
        "postgresql://",
        "mysql://",
        "mariadb://",
        "etcd://",
        "etcds://",
        "s3://",
    ] {
        assert!(stderr(&out).contains(scheme), "{scheme}: {}", stderr(&out));
    }
    let out = run("redis://u:s3cret@127.0.0.1:1,127.0.0.1:2/0");
    assert_eq!(code(&out), 64, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("Redlock")
            && err.contains("redis://u:***@127.0.0.1:1/0,redis://u:***@127.0.0.1:2/0"),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");
}

/// `acquire --help` does not promise renewals: nothing renews an `acquire`
/// lease; `run --help` says when its lease is renewed.
#[test]
fn acquire_help_does_not_promise_renewals() {
    let dir = tempfile::tempdir().unwrap();
    let out = bare(dir.path())
        .args(["acquire", "--help"])
        .output()
        .unwrap();
    let help = stdout(&out);
    assert!(!help.contains("every third"), "{help}");
    assert!(help.contains("nothing renews it"), "{help}");
    let out = bare(dir.path()).args(["run", "--help"]).output().unwrap();
    assert!(stdout(&out).contains("while CMD runs"), "{}", stdout(&out));
}

/// `sqlite:/typo/dir/x.db` is an error naming the missing directory, not a
/// fresh private database that excludes nothing; the default location's
/// directories are created.
#[test]
fn sqlite_creates_only_the_default_directories() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo/dir");
    let url = format!("sqlite:{}/x.db", typo.display());
    let out = bare(dir.path())
        .args(["--backend", &url, "run", "--key", "k", "--", "echo", "ran"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    assert!(!stdout(&out).contains("ran"));
    let err = stderr(&out);
    assert!(
        err.contains(&typo.display().to_string()) && err.contains("does not exist"),
        "{err}"
    );
    assert!(!typo.exists(), "the mistyped directory was created");
    // The default: $XDG_STATE_HOME/dlock/locks.db, created as needed.
    let out = bare(dir.path())
        .args(["run", "--key", "k", "--", "echo", "ran"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(dir.path().join("state/dlock/locks.db").exists());
}

/// Releasing a handle twice says it was already released (74), and
/// `release --if-held` is the idempotent form for cleanup steps (0).
#[test]
fn release_twice_and_if_held() {
    let env = Env::sqlite();
    let out = env.run(&["acquire", "--key", "ci"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let h = stdout(&out).trim().to_string();
    assert_eq!(code(&env.run(&["release", "--if-held", &h])), 0);
    assert!(!env.held("ci"), "--if-held released a held lease");
    let out = env.run(&["release", &h]);
    assert_eq!(code(&out), 74, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("already released"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["release", "--if-held", &h]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nothing to release"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["release", "--if-held", "--key", "ci", "--force"]);
    assert_eq!(code(&out), 64, "{}", stderr(&out));
}

/// `DLOCK_KEYS` names the keys one per line (a key holds no control
/// character), unambiguous where `DLOCK_KEY`'s commas are not.
#[test]
fn dlock_keys_is_unambiguous() {
    let env = Env::sqlite();
    let out = env.run(&[
        "run",
        "--key",
        "b,c",
        "--key",
        "a",
        "--",
        "sh",
        "-c",
        "printf '%s|%s' \"$DLOCK_KEY\" \"$DLOCK_KEYS\"",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "a,b,c|a\nb,c");
}

/// A handle used against another kind of backend than the one that issued
/// it (a CI step that forgot `--backend`) is refused (64) naming both,
/// before connecting, not reported as an expired lease (74).
#[test]
fn a_handle_names_the_backend_that_issued_it() {
    let env = Env::sqlite();
    let out = env.run(&["acquire", "--key", "deploy"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let h = stdout(&out).trim().to_string();
    let other = Env::bare("redis://u:pw9@127.0.0.1:1".to_string());
    for args in [vec!["release", &h], vec!["renew", &h]] {
        let out = other.run(&args);
        assert_eq!(code(&out), 64, "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("issued by sqlite:") && err.contains("redis://u:***@127.0.0.1:1"),
            "{err}"
        );
        assert!(!err.contains("pw9"), "{err}");
    }
    assert!(env.held("deploy"));
    assert_eq!(code(&env.run(&["release", &h])), 0);
}

/// `run --help` and its man page carry exit status, environment, files and
/// examples; `dlock man --help` says how to read the roff it prints.
#[test]
fn run_help_and_man_page_have_the_reference_sections() {
    let dir = tempfile::tempdir().unwrap();
    let out = bare(dir.path()).args(["run", "--help"]).output().unwrap();
    let man = bare(dir.path()).args(["man", "run"]).output().unwrap();
    for text in [stdout(&out), stdout(&man)] {
        for section in [
            "Exit status:",
            "Environment given to CMD:",
            "Files:",
            "Examples:",
        ] {
            assert!(text.contains(section), "{section}: {text}");
        }
        assert!(text.contains("DLOCK_KEYS"), "{text}");
    }
    let out = bare(dir.path()).args(["man", "--help"]).output().unwrap();
    assert!(stdout(&out).contains("man -l -"), "{}", stdout(&out));
}

/// The default SQLite database is per user (so no other user can break
/// your locks, and none of theirs exclude yours): `doctor` and `status`
/// say so when they use it.
#[test]
fn the_per_user_default_is_said_out_loud() {
    let dir = tempfile::tempdir().unwrap();
    let out = bare(dir.path()).args(["status"]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("your own default database"),
        "{}",
        stdout(&out)
    );
    let out = bare(dir.path())
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let scope = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "scope")
        .unwrap()
        .clone();
    assert!(
        scope["message"]
            .as_str()
            .unwrap()
            .contains("your own default database"),
        "{scope}"
    );
    // An explicit shared path says who can break its locks instead.
    let env = Env::sqlite();
    let (_, checks) = env.doctor(&[]);
    assert!(
        checks
            .iter()
            .any(|(n, _, m)| n == "scope" && m.contains("may also break")),
        "{checks:?}"
    );
}
