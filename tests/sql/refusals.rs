//! What the server refuses or undoes mid-step: a release whose wake-up is
//! refused, a step ended as a deadlock's victim.

use std::time::Duration;

use super::common::*;
use super::{MakeEnv, sql_value};

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
