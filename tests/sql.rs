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

/// The number of client connections the server has now, asked with its
/// own command-line client (a new connection of its own); `None` if the
/// server refused it.
fn server_connections(env: &Env) -> Option<u64> {
    let sql = if env.postgres.is_some() {
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
    } else {
        "SHOW STATUS LIKE 'Threads_connected'"
    };
    let out = ask(env, sql);
    if !out.status.success() {
        return None;
    }
    stdout(&out).split_whitespace().last()?.parse().ok()
}

/// A crowd waiting on one key leaves the server room for other clients.
/// MariaDB: only the first few waiters keep a connection, the rest poll
/// without one, so 80 waiters keep well under 3/5 of its 151. PostgreSQL:
/// a waiter keeps one connection (its attempts' own), the first few a
/// second to `LISTEN` on; before, every waiter held two, and 60 waiters
/// filled the stock 100. And then every one of them gets its turn.
#[test]
fn a_waiting_crowd_leaves_the_server_room_for_other_clients() {
    for (name, make, n, most_allowed) in [
        ("postgres", Env::postgres as MakeEnv, 60u64, 60 + 16),
        ("mariadb", Env::mariadb as MakeEnv, 80, 151 * 3 / 5),
    ] {
        let env = make();
        let k = "room";
        let stop = env.path("room-stop");
        let hold = format!("while [ ! -e {} ]; do sleep 0.05; done", stop.display());
        let mut h = env.spawn(&["run", "--key", k, "--", "sh", "-c", &hold]);
        wait_for(Duration::from_secs(20), "the holder", || env.held(k));
        let mut crowd: Vec<_> = (0..n)
            .map(|_| {
                env.cmd(&["run", "--wait", "3m", "--key", k, "--", "true"])
                    .stdin(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        // The crowd has tried once and waits (its waiter rows counted;
        // a few may have lapsed for a moment on a busy machine).
        wait_for(Duration::from_secs(90), "the crowd to queue", || {
            let out = env.run(&["status", "--json", k]);
            code(&out) == 0
                && serde_json::from_str::<serde_json::Value>(&stdout(&out))
                    .is_ok_and(|st| st[0]["waiters"].as_u64() >= Some(n * 9 / 10))
        });
        // Past the crowd's first attempts, all at once, while it waits:
        // other clients connect (the server's own client, and dlock on
        // another key), and the crowd holds few connections.
        std::thread::sleep(Duration::from_secs(3));
        let mut most = 0;
        for _ in 0..15 {
            let c = server_connections(&env);
            let c = c.unwrap_or_else(|| panic!("{name}: the server refused a new client"));
            most = most.max(c);
            let out = env.run(&["run", "-n", "--key", "room-other", "--", "true"]);
            assert_eq!(code(&out), 0, "{name}: {}", stderr(&out));
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(
            most < most_allowed,
            "{name}: {n} waiters and a holder kept {most} server connections \
             (at most {most_allowed} expected)"
        );
        std::fs::write(&stop, "").unwrap();
        assert_eq!(wait_timeout(&mut h, Duration::from_secs(20)), 0, "{name}");
        let mut failed = Vec::new();
        for c in &mut crowd {
            let code = wait_timeout(c, Duration::from_secs(150));
            if code != 0 {
                let mut err = String::new();
                let _ = std::io::Read::read_to_string(c.stderr.as_mut().unwrap(), &mut err);
                failed.push((code, err));
            }
        }
        assert!(failed.is_empty(), "{name}: {failed:?}");
        eprintln!("{name}: {n} waiters, at most {most} server connections");
    }
}

/// A crowd larger than the server takes connections (stock PostgreSQL 100,
/// MariaDB 151), waiting in line (the default): every waiter gets its turn,
/// and none exits 69. Before, a first in line that could not open its
/// wake-up connection spent `--connect-timeout` trying on each wake, lost
/// its place, and the line stalled: of 200 on stock PostgreSQL, 13-21 ran.
#[test]
fn a_crowd_larger_than_the_connection_limit_all_get_their_turn() {
    for (name, make, n) in [
        ("postgres", Env::postgres as MakeEnv, 120),
        ("mariadb", Env::mariadb as MakeEnv, 165),
    ] {
        let started = std::time::Instant::now();
        suite::crowd_all_get_their_turn(&make(), n);
        eprintln!("{name}: {n} waiters served in {:?}", started.elapsed());
    }
}

/// Waiters whose rows in line share a ticket (two that joined at the same
/// moment, outside the key's lock, may) are woken in the line's order: the
/// release's notification names the one every reader puts first, by
/// ticket and then id. It named the first by ticket alone, so a tied waiter
/// that was not first woke, found another ahead of it and waited on, and
/// the one ahead slept to its next poll: up to a second per hand-off.
#[test]
fn postgres_waiters_sharing_a_ticket_are_woken_in_the_lines_order() {
    use std::time::Instant;
    let env = Env::postgres();
    let pg = env.postgres.as_ref().unwrap();
    pg.psql("ALTER DATABASE dlock SET enable_indexscan = off");
    pg.psql("ALTER DATABASE dlock SET enable_bitmapscan = off");
    let k = "tied";
    let stop = env.path("tied-stop");
    let hold = format!("while [ ! -e {} ]; do sleep 0.02; done", stop.display());
    let mut holder = env.spawn(&["run", "--key", k, "--", "sh", "-c", &hold]);
    wait_for(Duration::from_secs(10), "the holder", || env.held(k));
    let mut waiters = Vec::new();
    for n in 1..=6 {
        waiters.push(env.spawn(&["run", "--wait", "30s", "--key", k, "--", "true"]));
        wait_for(Duration::from_secs(10), "the waiter to join", || {
            env.status_json(&[k])[0]["waiters"].as_u64() == Some(n)
        });
    }
    // One ticket for all six, the rows rewritten last id first: the
    // table's own order is then the reverse of the line's. Which of the
    // tied rows a read by ticket alone returns depends on the plan: a scan
    // of the key's index (a small table's) returns them by id, the line's
    // order by luck; a sequential scan (a larger table's), the table's.
    // This test's connections scan sequentially (set before they open).
    let ns = env.ns();
    pg.psql(&format!(
        "DO $$ DECLARE r record; BEGIN
           FOR r IN SELECT id FROM dlock_queue WHERE ns = '{ns}' AND key = '{k}'
                     ORDER BY id COLLATE \"C\" DESC LOOP
             UPDATE dlock_queue SET ticket = 1 WHERE ns = '{ns}' AND key = '{k}' AND id = r.id;
           END LOOP; END $$"
    ));
    let released = Instant::now();
    std::fs::write(&stop, "").unwrap();
    assert_eq!(wait_timeout(&mut holder, Duration::from_secs(20)), 0);
    for w in &mut waiters {
        assert_eq!(wait_timeout(w, Duration::from_secs(30)), 0);
    }
    // Six hand-offs, each a notification and a process start: 50-80 ms
    // here. A wrong name costs up to a second, to the next poll (0.9-1 s
    // all told, measured with the read by ticket alone).
    assert!(
        released.elapsed() < Duration::from_millis(600),
        "six tied waiters took {:?} to take their turns",
        released.elapsed()
    );
}

/// A PostgreSQL release sends its wake-up (`NOTIFY`, naming the next in
/// line from the line's table) in the release's own statement. Where the
/// server refuses that statement (here: the role lost its right to read
/// the line while it held the key; also a full notification queue), the
/// lease still goes at once, by the plain delete, not at its TTL.
#[test]
fn postgres_release_goes_through_when_its_wake_up_is_refused() {
    let env = Env::postgres();
    let out = env.run(&["run", "--key", "k", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let pg = env.postgres.as_ref().unwrap();
    pg.psql(
        "CREATE ROLE app LOGIN; GRANT SELECT, INSERT, UPDATE, DELETE \
         ON dlock_lease, dlock_fence, dlock_waiter, dlock_queue TO app",
    );
    let app = Env::bare(format!("postgres://app@127.0.0.1:{}/dlock", pg.port));
    let stop = env.path("refused-stop");
    let hold = format!("while [ ! -e {} ]; do sleep 0.02; done", stop.display());
    let mut h = app.spawn(&["run", "--ttl", "60s", "--key", "k", "--", "sh", "-c", &hold]);
    wait_for(Duration::from_secs(10), "k held", || env.held("k"));
    pg.psql("REVOKE SELECT ON dlock_queue FROM app");
    std::fs::write(&stop, "").unwrap();
    assert_eq!(wait_timeout(&mut h, Duration::from_secs(20)), 0);
    assert!(!env.held("k"), "the lease outlived its holder");
    // And the next one takes it at once.
    let out = env.run(&["run", "-n", "--key", "k", "--", "true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
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

/// A client's session on the test's server, fed statement by statement
/// (its own command-line client, stdin piped, each result flushed).
struct Session {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl Session {
    fn open(env: &Env) -> Session {
        let mut cmd = if let Some(pg) = &env.postgres {
            let mut c = std::process::Command::new("psql");
            c.args(["-h", "127.0.0.1", "-p", &pg.port.to_string()])
                .args([
                    "-U",
                    "postgres",
                    "-d",
                    "dlock",
                    "-At",
                    "-v",
                    "ON_ERROR_STOP=1",
                ]);
            c
        } else {
            let m = env.mariadb.as_ref().unwrap();
            let mut c = std::process::Command::new("mariadb");
            c.args(["-h", "127.0.0.1", "-P", &m.port.to_string()])
                .args([
                    "-u",
                    "dlock",
                    "-pdlock",
                    "-D",
                    "dlock",
                    "-N",
                    "-B",
                    "--unbuffered",
                ]);
            c
        };
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the SQL client");
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        Session { child, out }
    }

    /// Send `sql`, then wait for the line `mark` that it selects last.
    fn send(&mut self, sql: &str, mark: &str) {
        use std::io::{BufRead, Write};
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{sql}\nSELECT '{mark}';").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        while line.trim() != mark {
            line.clear();
            let n = self.out.read_line(&mut line).unwrap();
            assert!(n > 0, "the SQL client ended before {mark}");
        }
    }

    /// Send `sql` and end the session; whether the client exited 0.
    fn finish(mut self, sql: &str) -> bool {
        use std::io::Write;
        let mut stdin = self.child.stdin.take().unwrap();
        writeln!(stdin, "{sql}").unwrap();
        drop(stdin);
        wait_timeout(&mut self.child, Duration::from_secs(30)) == 0
    }
}

/// A server ends an attempt's transaction as a deadlock's victim (InnoDB
/// when two transactions lock rows in crossing orders; PostgreSQL's check
/// after `deadlock_timeout`): the attempt runs again at once and takes the
/// key, even under `--no-wait`, where it used to fail with exit 69 ("Deadlock found when trying to get
/// lock"; once in a CI run, a shared reader against a holder's renewal).
/// Here another client makes the deadlock on purpose: it locks the key's
/// leases, the attempt takes the fence row and waits for them, and the
/// client then asks for the fence row. The client has written far more
/// (InnoDB rolls back the lighter one), or waited less (PostgreSQL's
/// check runs in the one that waited first): the attempt is the victim.
#[test]
fn an_attempt_that_is_a_deadlocks_victim_runs_again() {
    let envs = [
        ("postgres", Env::postgres_line_off as MakeEnv),
        ("mariadb", Env::mariadb as MakeEnv),
    ];
    for (name, make) in envs {
        let env = make();
        // A reader holds the key (its fence row exists).
        let stop = env.path("deadlock-stop");
        let hold = format!("while [ ! -e {} ]; do sleep 0.02; done", stop.display());
        let mut reader = env.spawn(&[
            "run", "--shared", "--ttl", "60s", "--key", "k", "--", "sh", "-c", &hold,
        ]);
        wait_for(Duration::from_secs(10), "k held", || env.held("k"));
        let pg = env.postgres.is_some();
        let col = if pg { "key" } else { "lkey" };
        // PostgreSQL checks a wait for a deadlock once, after
        // `deadlock_timeout`, in the process that waits: the attempt, which
        // waits first, must check first, however slow this machine is to
        // start the client's next step (for sessions that start now).
        if let Some(pg) = &env.postgres {
            pg.psql("ALTER DATABASE dlock SET deadlock_timeout = '5s'");
        }
        let deadlocks = |env: &Env| {
            let sql = if pg {
                "SELECT deadlocks FROM pg_stat_database WHERE datname = 'dlock'"
            } else {
                "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS
                  WHERE VARIABLE_NAME = 'INNODB_DEADLOCKS'"
            };
            sql_value(env, sql).parse::<u64>().unwrap()
        };
        let before = deadlocks(&env);
        let mut s = Session::open(&env);
        // InnoDB's victim is the transaction that wrote less: the client
        // writes a ballast of rows first.
        if !pg {
            let rows: Vec<String> = (0..300).map(|i| format!("({i})")).collect();
            s.send(
                &format!(
                    "CREATE TABLE ballast (n INT PRIMARY KEY) ENGINE=InnoDB;
                     BEGIN; INSERT INTO ballast VALUES {};",
                    rows.join(",")
                ),
                "ballast",
            );
        }
        // What the attempt locks after the fence row: on MariaDB the
        // key's leases (its scan for expired ones), on PostgreSQL, whose
        // attempt locks no lease row, the waiter table that a shared
        // request without the line reads for the writers waiting.
        let lock = if pg {
            "BEGIN; LOCK TABLE dlock_waiter IN ACCESS EXCLUSIVE MODE;".to_string()
        } else {
            format!("SELECT id FROM dlock_lease WHERE {col} = 'k' FOR UPDATE;")
        };
        s.send(&lock, "locked");
        let mut run = env
            .cmd(&[
                "--connect-timeout",
                "20s",
                "run",
                "--shared",
                "--no-wait",
                "--key",
                "k",
                "--",
                "true",
            ])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The attempt holds the fence row and waits for the leases.
        let waiting = if pg {
            "SELECT count(*) FROM pg_locks WHERE NOT granted"
        } else {
            // (INNODB_TRX would need PROCESS; a user sees its own threads.)
            // The scan for expired leases, which runs under the fence row.
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST
              WHERE ID <> CONNECTION_ID() AND INFO LIKE 'DELETE FROM dlock_lease%'"
        };
        wait_for(Duration::from_secs(10), "the attempt to wait", || {
            sql_value(&env, waiting) != "0"
        });
        // The crossing order: the client now wants the fence row. The
        // attempt is rolled back; the client gets the row, holds it a
        // moment, and lets go.
        let sleep = if pg {
            "SELECT pg_sleep(0.3);"
        } else {
            "SELECT SLEEP(0.3);"
        };
        s.send(
            &format!("SELECT token FROM dlock_fence WHERE {col} = 'k' FOR UPDATE; {sleep}"),
            "crossed",
        );
        assert!(s.finish("ROLLBACK;"), "{name}: the client was the victim");
        let code = wait_timeout(&mut run, Duration::from_secs(30));
        let mut err = String::new();
        std::io::Read::read_to_string(run.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert_eq!(code, 0, "{name}: {err}");
        // PostgreSQL counts its deadlocks in its statistics a moment later.
        wait_for(Duration::from_secs(5), "the deadlock to be counted", || {
            deadlocks(&env) > before
        });
        std::fs::write(&stop, "").unwrap();
        assert_eq!(wait_timeout(&mut reader, Duration::from_secs(20)), 0);
        assert!(!env.held("k"));
    }
}
