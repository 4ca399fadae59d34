//! PostgreSQL and MariaDB against real servers (Debian `postgresql` and
//! `mariadb-server`), started per test on free loopback ports.

mod common;

use std::time::Duration;

use common::fair::fair_conformance;
use common::shared::shared_conformance;
use common::suite::{self, conformance};
use common::torture;
use common::*;
use nix::sys::signal::Signal;

conformance!(postgres, Env::postgres());
conformance!(mariadb, Env::mariadb());
shared_conformance!(postgres_shared, Env::postgres());
shared_conformance!(mariadb_shared, Env::mariadb());
fair_conformance!(postgres_fair, Env::postgres());
fair_conformance!(mariadb_fair, Env::mariadb());
// Without the line (`?dlock_queue=off`), readers still give way to the
// writers waiting (by their waiter rows).
shared_conformance!(postgres_line_off, Env::postgres_line_off());
shared_conformance!(mariadb_line_off, Env::mariadb_line_off());

type MakeEnv = fn() -> Env;

fn sql_envs() -> Vec<(&'static str, MakeEnv)> {
    vec![
        ("postgres", Env::postgres as fn() -> Env),
        ("mariadb", Env::mariadb as fn() -> Env),
    ]
}

/// This binary's PostgreSQL, shared (as by the conformance suites), in a
/// namespace of the test's own: for a test that leaves the server be.
fn shared_postgres() -> Env {
    Env::shared_here("Env::postgres()", Env::postgres)
}

/// This binary's MariaDB, shared, in a namespace of the test's own.
fn shared_mariadb() -> Env {
    Env::shared_here("Env::mariadb()", Env::mariadb)
}

/// [`sql_envs`] on the shared servers.
fn shared_sql_envs() -> Vec<(&'static str, MakeEnv)> {
    vec![
        ("postgres", shared_postgres as MakeEnv),
        ("mariadb", shared_mariadb as MakeEnv),
    ]
}

/// A process and its children: PostgreSQL serves each connection from a
/// child of the postmaster, so freezing the server means freezing them all.
fn family(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let ppid = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .nth(1)
            .and_then(|x| x.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

fn freeze(env: &Env, sig: Signal) {
    if let Some(p) = &env.postgres {
        for pid in family(p.pid()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
        }
    }
    if let Some(m) = &env.mariadb {
        m.signal(sig);
    }
}

fn restart(env: &mut Env) {
    if let Some(p) = env.postgres.as_mut() {
        p.restart();
    }
    if let Some(m) = env.mariadb.as_mut() {
        m.restart();
    }
}

#[test]
fn server_frozen_past_the_ttl_stops_the_child_before_expiry() {
    for (_name, make) in sql_envs() {
        let env = make();
        suite::frozen_server_stops_child(
            &env,
            Duration::from_secs(2),
            Duration::from_millis(400),
            |sig| freeze(&env, sig),
        );
    }
}

#[test]
fn server_restart_shorter_than_the_ttl_keeps_the_lease() {
    for (name, make) in sql_envs() {
        let mut env = make();
        let (mut h, _pid) = env.run_child("rst", &["--ttl", "8s"], "sleep 4; echo done");
        std::thread::sleep(Duration::from_millis(500));
        restart(&mut env);
        assert_eq!(
            wait_timeout(&mut h, Duration::from_secs(30)),
            0,
            "{name}: the lease did not survive a restart"
        );
        // And the lock is free again (released, not left to expire).
        let out = env.run(&["run", "-n", "--key", "rst", "--", "true"]);
        assert_eq!(code(&out), 0, "{name}: {}", stderr(&out));
    }
}

#[test]
fn racing_clients_never_exceed_the_limit() {
    for (name, make) in sql_envs() {
        let env = make();
        let cfg = torture::Config {
            dlock: DLOCK.into(),
            backend: env.url.clone(),
            key: "race".into(),
            clients: 10,
            runs: 3,
            hold: Duration::from_millis(60),
            ttl: Duration::from_secs(5),
            limit: 3,
            shared: 0.0,
            faults: vec![],
            fault_rate: 0.0,
            dir: env.path("race"),
            seed: 7,
        };
        let r = torture::run(&cfg);
        assert!(r.ok(), "{name}: {r:#?}");
        assert!(r.max_concurrent <= 3, "{name}: {r:#?}");
        assert_eq!(r.intervals, 30, "{name}: {r:#?}");
    }
}

#[test]
fn hostile_keys_are_only_data() {
    for (name, make) in shared_sql_envs() {
        let env = make();
        let k = "a'b\";DROP TABLE dlock_lease;--ü🔒 \\x";
        let out = env.run(&["run", "--key", k, "--", "sh", "-c", "echo \"$DLOCK_KEY\""]);
        assert_eq!(code(&out), 0, "{name}: {}", stderr(&out));
        assert_eq!(stdout(&out).trim(), k);
        let mut h = env.spawn(&["run", "--key", k, "--", "sleep", "30"]);
        wait_for(
            Duration::from_secs(10),
            "the hostile key to be held",
            || env.held(k),
        );
        let st = env.status_json(&[]);
        assert_eq!(st[0]["key"], k, "{name}");
        signal(h.id(), Signal::SIGTERM);
        wait_timeout(&mut h, Duration::from_secs(10));
        let out = bare(env.dir.path())
            .args([
                "--backend",
                &format!("{}?dlock_table=x;drop", env.url),
                "status",
            ])
            .output()
            .unwrap();
        assert_eq!(code(&out), 64, "{name}: a bad table name is refused");
    }
}

#[test]
fn table_name_option() {
    for (name, make) in shared_sql_envs() {
        let env = make();
        let url = format!("{}?dlock_table=jobs_lock", env.url);
        let run = |args: &[&str]| {
            bare(env.dir.path())
                .arg("--backend")
                .arg(&url)
                .args(args)
                .output()
                .unwrap()
        };
        let out = run(&["run", "--key", "t", "--", "true"]);
        assert_eq!(code(&out), 0, "{name}: {}", stderr(&out));
        let out = run(&["ping"]);
        assert_eq!(code(&out), 0, "{name}: {}", stderr(&out));
    }
}

/// The URL's TLS parameters reach the driver: demanding TLS from a server
/// without it fails clearly (69) instead of silently going plain.
#[test]
fn tls_parameters_are_honoured() {
    for (name, make, param) in [
        ("postgres", shared_postgres as MakeEnv, "sslmode=require"),
        ("mariadb", shared_mariadb as MakeEnv, "ssl-mode=REQUIRED"),
    ] {
        let env = make();
        let url = format!("{}?{param}", env.url);
        let out = bare(env.dir.path())
            .args(["--backend", &url, "status"])
            .output()
            .unwrap();
        assert_eq!(code(&out), 69, "{name}: {}", stderr(&out));
        let plain = format!(
            "{}?{}",
            env.url,
            if name == "postgres" {
                "sslmode=disable"
            } else {
                "ssl-mode=DISABLED"
            }
        );
        let out = bare(env.dir.path())
            .args(["--backend", &plain, "status"])
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{name}: {}", stderr(&out));
    }
}

/// doctor reads the database server's clock and finds it close to ours.
#[test]
fn doctor_compares_clocks_with_the_database() {
    for (name, make) in shared_sql_envs() {
        let env = make();
        let (c, checks) = env.doctor(&[]);
        let clock = checks
            .iter()
            .find(|(n, _, _)| n == "clock")
            .unwrap_or_else(|| panic!("{name}: {checks:?}"));
        assert_eq!(clock.1, "ok", "{name}: {clock:?}");
        assert!(clock.2.contains("the server's"), "{name}: {clock:?}");
        assert_eq!(c, 0, "{name}: {checks:?}");
        let rights = checks.iter().find(|(n, _, _)| n == "rights");
        assert_eq!(
            rights.map(|r| r.1.as_str()),
            Some("ok"),
            "{name}: {checks:?}"
        );
        assert!(
            checks.iter().any(|(n, _, _)| n == "durability"),
            "{name}: {checks:?}"
        );
    }
}

/// A site upgrading from a dlock without waiter rows, whose role may use the
/// lock tables but not create tables: locking works, and `status` shows no
/// waiter count rather than failing.
#[test]
fn postgres_role_without_create_rights_still_locks() {
    let env = Env::postgres();
    let out = env.run(&["run", "--key", "k", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let pg = env.postgres.as_ref().unwrap();
    pg.psql(
        "DROP TABLE dlock_waiter; CREATE ROLE app LOGIN; \
         REVOKE CREATE ON SCHEMA public FROM PUBLIC; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON dlock_lease, dlock_fence TO app",
    );
    let app = Env::bare(format!("postgres://app@127.0.0.1:{}/dlock", pg.port));
    let out = app.run(&["run", "--key", "k", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let mut h = app.spawn(&["run", "--key", "k", "--", "sleep", "1"]);
    wait_for(Duration::from_secs(10), "k held", || app.held("k"));
    let out = app.run(&["run", "--key", "k", "--wait", "10s", "--", "true"]);
    assert_eq!(
        code(&out),
        0,
        "waiting works without the waiter table: {}",
        stderr(&out)
    );
    assert_eq!(wait_timeout(&mut h, Duration::from_secs(10)), 0);
    let st = app.status_json(&["k"]);
    assert!(st[0]["waiters"].is_null(), "{st}");
    // Shared locks too (readers then cannot see waiting writers).
    let mut r = app.spawn(&["run", "-s", "--key", "k", "--", "sleep", "1"]);
    wait_for(Duration::from_secs(10), "k held", || app.held("k"));
    let out = app.run(&["run", "-s", "-n", "--key", "k", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = app.run(&["run", "-n", "--key", "k", "--", "true"]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    assert_eq!(wait_timeout(&mut r, Duration::from_secs(10)), 0);
    // doctor: the rights are enough, and the missing waiter table is said.
    let (c, checks) = app.doctor(&[]);
    let level = |name: &str| {
        checks
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, l, _)| l.clone())
            .unwrap_or_else(|| panic!("no {name} check: {checks:?}"))
    };
    assert_eq!(level("rights"), "ok", "{checks:?}");
    assert_eq!(level("waiters"), "info", "{checks:?}");
    assert_eq!(c, 0, "{checks:?}");
    // A role that may only read cannot lock: doctor says so before a job does.
    pg.psql("CREATE ROLE ro LOGIN; GRANT SELECT ON dlock_lease, dlock_fence TO ro");
    let ro = Env::bare(format!("postgres://ro@127.0.0.1:{}/dlock", pg.port));
    let (c, checks) = ro.doctor(&[]);
    assert!(
        checks
            .iter()
            .any(|(n, l, m)| n == "rights" && l == "fail" && m.contains("permission denied")),
        "{checks:?}"
    );
    assert_eq!(c, 1);
}

/// A real TLS handshake with PostgreSQL: verified against the test CA it
/// locks; against the system's roots it is refused (69).
#[test]
fn postgres_over_verified_tls() {
    let env = Env::postgres();
    let pg = env.postgres.as_ref().unwrap();
    let (cert, key, ca) = servers::test_certificates(env.dir.path());
    pg.enable_tls(&cert, &key);
    let base = format!("postgres://postgres@127.0.0.1:{}/dlock", pg.port);
    let tls = Env::bare(format!("{base}?sslmode=verify-full&sslrootcert={ca}"));
    let mut ok = false;
    // The reload that turns TLS on is asynchronous.
    for _ in 0..50 {
        let out = tls.run(&["run", "--key", "t", "--", "true"]);
        if code(&out) == 0 {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ok, "no TLS lock with the test CA");
    let out = tls.run(&["doctor"]);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    refused_without_a_trusted_root(&format!("{base}?sslmode=verify-full"));
}

/// A real TLS handshake with MariaDB, verified against the test CA and the
/// server's name; against the system's roots it is refused (69).
#[test]
fn mariadb_over_verified_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = servers::test_certificates(dir.path());
    let m = servers_sql::Mariadb::start_tls(&cert, &key, &ca);
    let base = m.url();
    let tls = Env::bare(format!("{base}?ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}"));
    let out = tls.run(&["run", "--key", "t", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = tls.run(&["doctor"]);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    refused_without_a_trusted_root(&format!("{base}?ssl-mode=VERIFY_CA"));
}

/// With no root certificate to trust, a TLS URL that verifies the server is
/// refused: exit 69, never a plain or unverified connection.
fn refused_without_a_trusted_root(url: &str) {
    let out = Env::bare(url.to_string())
        .cmd(&["run", "--key", "t", "--", "true"])
        .env("SSL_CERT_FILE", "/dev/null")
        .env_remove("SSL_CERT_DIR")
        .output()
        .unwrap();
    assert_eq!(code(&out), 69, "{}", stderr(&out));
}

/// A database error reads as the server's message and code, without the
/// server's own source line ("at line 768") that the driver appends.
#[test]
fn postgres_errors_show_the_message_not_server_internals() {
    let env = shared_postgres();
    let url = env.url.rsplit_once('/').unwrap().0.to_string() + "/no_such_db";
    let out = Env::bare(url).run(&["run", "-n", "--key", "k", "--", "true"]);
    assert_eq!(code(&out), 69, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("does not exist"), "{err}");
    assert!(err.contains("SQLSTATE"), "{err}");
    assert!(!err.contains(" at line "), "server internals shown: {err}");
}

/// A writer that gives up waiting (its --wait runs out) lets the readers
/// that gave way to it in at once, not at their next poll.
#[test]
fn a_writer_that_gives_up_lets_the_readers_behind_it_in() {
    use std::time::Instant;
    for (name, make) in shared_sql_envs() {
        let env = make();
        let k = "gives-up";
        let stop = env.path("gu-stop");
        let hold = format!("while [ ! -e {} ]; do sleep 0.02; done", stop.display());
        let st = |f: &str| env.status_json(&[k])[0][f].clone();
        let mut r1 = env.spawn(&["run", "-s", "--key", k, "--", "sh", "-c", &hold]);
        wait_for(Duration::from_secs(10), "the first reader", || env.held(k));
        let mut w = env.spawn(&["run", "--wait", "3s", "--key", k, "--", "true"]);
        wait_for(Duration::from_secs(10), "the writer to wait", || {
            st("waiters").as_u64() == Some(1)
        });
        let mut r2 = env.spawn(&["run", "-s", "--wait", "20s", "--key", k, "--", "true"]);
        wait_for(Duration::from_secs(10), "the reader to wait", || {
            st("waiters").as_u64() == Some(2)
        });
        assert_eq!(wait_timeout(&mut w, Duration::from_secs(20)), 75, "{name}");
        let gave_up = Instant::now();
        assert_eq!(wait_timeout(&mut r2, Duration::from_secs(20)), 0, "{name}");
        assert!(
            gave_up.elapsed() < Duration::from_millis(1500),
            "{name}: the reader waited {:?} after the writer gave up",
            gave_up.elapsed()
        );
        std::fs::write(&stop, "").unwrap();
        assert_eq!(wait_timeout(&mut r1, Duration::from_secs(20)), 0, "{name}");
    }
}

#[path = "common/mixed.rs"]
mod mixed;

/// Readers and writers racing on one key: no writer ever beside anyone,
/// readers side by side, a token each.
#[test]
fn readers_and_writers_race_without_overlap() {
    for (name, make) in shared_sql_envs() {
        let env = make();
        let seen = mixed::readers_and_writers_race(&env, name, 3, 6, 4, Duration::from_millis(40));
        assert!(seen.max_readers >= 2, "{name}: readers never met: {seen:?}");
    }
}

#[test]
fn a_crowd_of_readers_wakes_together() {
    for (name, make) in shared_sql_envs() {
        let env = make();
        mixed::crowd_of_readers_wakes_together(&env, name, 12);
    }
}

/// Run `sql` with the server's own command-line client (as its superuser
/// on PostgreSQL, as `dlock` on MariaDB), a connection of its own.
fn ask(env: &Env, sql: &str) -> std::process::Output {
    if let Some(pg) = &env.postgres {
        std::process::Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &pg.port.to_string()])
            .args(["-U", "postgres", "-d", "dlock", "-At", "-c", sql])
            .output()
            .unwrap()
    } else {
        let m = env.mariadb.as_ref().unwrap();
        std::process::Command::new("mariadb")
            .args(["-h", "127.0.0.1", "-P", &m.port.to_string()])
            .args([
                "-u", "dlock", "-pdlock", "-D", "dlock", "-N", "-B", "-e", sql,
            ])
            .output()
            .unwrap()
    }
}

/// One value that `sql` selects ([`ask`]).
fn sql_value(env: &Env, sql: &str) -> String {
    let out = ask(env, sql);
    assert!(out.status.success(), "{sql}: {}", stderr(&out));
    stdout(&out).trim().to_string()
}

/// Crowds on one key.
#[path = "sql/crowds.rs"]
mod crowds;
/// What the server refuses or undoes mid-step.
#[path = "sql/refusals.rs"]
mod refusals;
