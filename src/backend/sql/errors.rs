//! What a database's error means for a waiter (outage, full, denied), and
//! how it is shown.

use super::kit::{self, Kind};

/// What kind of failure a database error is: "too many connections" is a
/// full server (waited out like a busy lock), a rejected login or missing
/// privilege is final, anything else is an outage.
pub fn kind(e: &sqlx::Error) -> Kind {
    match e {
        sqlx::Error::Database(db) => {
            #[cfg(feature = "mysql")]
            if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                // ER_CON_COUNT_ERROR, ER_TOO_MANY_USER_CONNECTIONS,
                // ER_USER_LIMIT_REACHED; access denied (db, user, plugin).
                return match my.number() {
                    1040 | 1203 | 1226 => Kind::Full,
                    // ER_LOCK_WAIT_TIMEOUT: the key's row lock, busy behind
                    // other attempts; waited out like a busy lock.
                    1205 => Kind::Full,
                    // ER_LOCK_DEADLOCK: our transaction was a deadlock's
                    // victim, rolled back; it is run again at once
                    // (`SqlBackend::bounded_again`), and only a run of
                    // them counts as a busy key.
                    1213 => Kind::Full,
                    // ... and an unknown database: no retry cures these.
                    1044 | 1045 | 1698 | 1049 => Kind::Denied,
                    _ => Kind::Outage,
                };
            }
            match db.code().as_deref() {
                // too_many_connections; lock_not_available (`lock_timeout`:
                // the key's row lock, busy behind other attempts).
                Some("53300") | Some("55P03") => Kind::Full,
                // deadlock_detected, serialization_failure: see 1213 above.
                Some("40P01") | Some("40001") => Kind::Full,
                // invalid authorization, insufficient privilege, no such
                // database: no retry cures these.
                Some(c) if c.starts_with("28") || c == "42501" || c == "3D000" => Kind::Denied,
                _ => Kind::Outage,
            }
        }
        sqlx::Error::Tls(_) => Kind::Denied,
        _ => Kind::Outage,
    }
}

/// Whether the server ended our transaction to settle a conflict with
/// another (a deadlock's victim, a serialization failure): it was rolled
/// back whole, and running it again is the cure (MySQL's and
/// PostgreSQL's own advice).
pub fn victim(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    #[cfg(feature = "mysql")]
    if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return my.number() == 1213;
    }
    matches!(db.code().as_deref(), Some("40P01") | Some("40001"))
}

/// A database error as a user should read it: the server's message and its
/// code, without the server's source line that sqlx adds for PostgreSQL
/// ("at line 768").
pub(super) struct Shown(pub(super) sqlx::Error);

impl std::fmt::Display for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            sqlx::Error::Database(db) => match db.code() {
                Some(code) => write!(f, "{} (SQLSTATE {code})", db.message()),
                None => f.write_str(db.message()),
            },
            e => write!(f, "{e}"),
        }
    }
}

/// The typed error for a failed connection. sqlx's pool retries a refused
/// or full server until its time-out and then says only "pool timed out";
/// one direct attempt (`probe`) then tells which it was.
pub async fn connect_error<F, C>(
    service: &str,
    e: sqlx::Error,
    timeout: std::time::Duration,
    probe: F,
) -> anyhow::Error
where
    F: std::future::Future<Output = Result<C, sqlx::Error>>,
{
    let e = match e {
        sqlx::Error::PoolTimedOut => match tokio::time::timeout(timeout, probe).await {
            Ok(Err(e)) => e,
            // The pool and the probe each waited `timeout`.
            _ => return kit::no_answer(service, "connect", timeout * 2),
        },
        e => e,
    };
    kit::typed(kind(&e), format!("{service}: connect: {}", Shown(e)))
}

/// A server's clock reading in microseconds since the epoch.
pub fn epoch_micros(us: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_micros(us.max(0) as u64)
}
