//! PostgreSQL's dialect: `now()` is the transaction's clock, the token is
//! bumped and the lease inserted in one statement, and a waiter `LISTEN`s on
//! a per-key channel that a release `NOTIFY`s (with a bounded poll for
//! expiries). Readers and writers listen alike; a writer that stops waiting
//! notifies too, for the readers that gave way to it.

use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Result;
use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::Mutex;

use super::{Dialect, Names, Spelling, SqlBackend, Statements, channel_name};
use crate::backend::probe::{Check, Level};
use crate::backend::{LockSpec, redact_url};
use crate::error::usage;

struct Postgres {
    opts: PgConnectOptions,
    timeout: Duration,
    /// The channel listened on, and the listener's own connection.
    listener: Mutex<Option<(String, PgListener)>>,
}

fn statements(t: &Names) -> Statements {
    let (lease, fence, waiter) = (&t.lease, &t.fence, &t.waiter);
    let holders = format!(
        "SELECT id, token, owner, host, pid, lim,
                (EXTRACT(EPOCH FROM acquired_at) * 1000000)::bigint AS acquired_us,
                (EXTRACT(EPOCH FROM (expires_at - now())) * 1000000)::bigint AS left_us
           FROM {lease} WHERE ns = $1 AND key = $2 AND expires_at > now() ORDER BY acquired_at"
    );
    Statements {
        fence: format!(
            "INSERT INTO {fence} (ns, key, token) VALUES ($1, $2, 0)
             ON CONFLICT (ns, key) DO UPDATE SET token = {fence}.token"
        ),
        delete_expired: format!(
            "DELETE FROM {lease} WHERE ns = $1 AND key = $2 AND expires_at <= now()"
        ),
        holders_locked: holders.clone(),
        holders,
        bump: None,
        insert: format!(
            "WITH t AS (UPDATE {fence} SET token = token + 1 WHERE ns = $1 AND key = $2 RETURNING token)
             INSERT INTO {lease} (ns, key, id, token, owner, host, pid, lim, acquired_at, expires_at)
             SELECT $1, $2, $3, t.token, $4, $5, $6, $7, now(),
                    now() + $8::float8 * interval '1 microsecond' FROM t
             RETURNING token"
        ),
        exclusive_waiters: format!(
            "SELECT count(*) FROM {waiter}
              WHERE ns = $1 AND key = $2 AND expires_at > clock_timestamp() AND id NOT LIKE $3"
        ),
        delete_waiter: format!("DELETE FROM {waiter} WHERE ns = $1 AND key = $2 AND id = $3"),
        upsert_waiter: format!(
            "INSERT INTO {waiter} (ns, key, id, expires_at)
             VALUES ($1, $2, $3, clock_timestamp() + $4::float8 * interval '1 microsecond')
             ON CONFLICT (ns, key, id) DO UPDATE SET expires_at = EXCLUDED.expires_at"
        ),
        stale_waiters: format!(
            "DELETE FROM {waiter} WHERE ns = $1 AND key = $2
                AND expires_at < clock_timestamp() - interval '1 minute'"
        ),
        renew: format!(
            "UPDATE {lease} SET expires_at = now() + $1::float8 * interval '1 microsecond'
              WHERE ns = $2 AND key = $3 AND id = $4 AND expires_at > now()"
        ),
        release: format!(
            "DELETE FROM {lease} WHERE ns = $1 AND key = $2 AND id = $3 AND expires_at > now()"
        ),
        force: format!("DELETE FROM {lease} WHERE ns = $1 AND key = $2 AND expires_at > now()"),
        held_keys: format!(
            "SELECT DISTINCT key FROM {lease} WHERE ns = $1 AND expires_at > now() ORDER BY key"
        ),
        waiter_counts: format!(
            "SELECT key, count(*) FROM {waiter}
              WHERE ns = $1 AND expires_at > clock_timestamp() GROUP BY key"
        ),
        version: "SHOW server_version",
        clock_us: "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint",
        spelling: Spelling {
            key: "key",
            param: "$1",
            now: "now()",
        },
    }
}

/// Connect, and create the tables where they are missing.
pub async fn connect(url: &str, timeout: Duration) -> Result<SqlBackend> {
    let shown = redact_url(url);
    let (url, t) = Names::from_url(url)?;
    // Every statement, and every wait for a row lock, is bounded.
    let ms = timeout.as_millis();
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{sep}options=-c%20statement_timeout%3D{ms}%20-c%20lock_timeout%3D{ms}");
    let opts = PgConnectOptions::from_str(&url)
        .map_err(|e| usage(format!("bad PostgreSQL URL {shown}: {e}")))?;
    let d = Postgres {
        opts,
        timeout,
        listener: Mutex::new(None),
    };
    let q = statements(&t);
    let mut b = SqlBackend::open(shown, &url, timeout, t, q, Box::new(d)).await?;
    let (lease, fence, waiter) = (&b.t.lease, &b.t.fence, &b.t.waiter);
    // Most runs find the tables there: one cheap look instead of DDL
    // (which takes locks and sends notices). The waiter table counts only
    // where this role may read it.
    let (present, waiter_present, waiter_readable): (bool, bool, bool) = sqlx::query_as(
        "SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL,
                to_regclass($3) IS NOT NULL,
                CASE WHEN to_regclass($3) IS NULL THEN false
                     ELSE has_table_privilege($3, 'SELECT') END",
    )
    .bind(lease)
    .bind(fence)
    .bind(waiter)
    .fetch_one(&b.pool)
    .await
    .unwrap_or((false, false, false));
    b.waiter_table = waiter_readable;
    if !waiter_present {
        // Waiter rows feed `status` and let waiting writers go before later
        // readers: a role that may not create tables still locks without
        // them (readers then do not give way to waiting writers).
        b.waiter_table = b
            .ddl(
                "create the waiter table",
                format!(
                    "CREATE TABLE IF NOT EXISTS {waiter} (
                        ns TEXT NOT NULL, key TEXT NOT NULL, id TEXT NOT NULL,
                        expires_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (ns, key, id))"
                ),
            )
            .await
            .is_ok();
    }
    if present {
        return Ok(b);
    }
    let ddl = format!(
        "CREATE TABLE IF NOT EXISTS {lease} (
            ns TEXT NOT NULL, key TEXT NOT NULL, id TEXT NOT NULL, token BIGINT NOT NULL,
            owner TEXT NOT NULL, host TEXT NOT NULL, pid BIGINT NOT NULL, lim INTEGER NOT NULL,
            acquired_at TIMESTAMPTZ NOT NULL, expires_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (ns, key, id));
         CREATE TABLE IF NOT EXISTS {fence} (
            ns TEXT NOT NULL, key TEXT NOT NULL, token BIGINT NOT NULL, PRIMARY KEY (ns, key))"
    );
    // Two clients creating the tables at once may collide; the loser finds
    // them made.
    if let Err(first) = b.ddl("create tables", ddl.clone()).await {
        b.ddl("create tables", ddl)
            .await
            .map_err(|e| e.context(format!("(first: {first:#})")))?;
    }
    Ok(b)
}

#[async_trait]
impl Dialect for Postgres {
    fn service(&self) -> &'static str {
        "PostgreSQL"
    }

    fn product(&self, _version: &str) -> &'static str {
        "postgres"
    }

    async fn freed(&self, e: &SqlBackend, ns: &str, key: &str) {
        let q = sqlx::query("SELECT pg_notify($1, '')")
            .bind(channel_name(ns, key))
            .execute(&e.pool);
        let _ = e.bounded("notify", q).await;
    }

    async fn wait(&self, spec: &LockSpec, bound: Instant) {
        let chan = channel_name(&spec.namespace, &spec.key);
        let mut l = self.listener.lock().await;
        if l.as_ref().is_none_or(|(c, _)| *c != chan) {
            let listen = async {
                let own = PgPoolOptions::new()
                    .max_connections(1)
                    .connect_lazy_with(self.opts.clone());
                let mut pl = PgListener::connect_with(&own).await?;
                pl.listen(&chan).await?;
                Ok::<_, sqlx::Error>(pl)
            };
            match tokio::time::timeout(self.timeout, listen).await {
                Ok(Ok(pl)) => *l = Some((chan, pl)),
                _ => {
                    // No listener (the server may be full): poll.
                    drop(l);
                    let poll = Instant::now() + Duration::from_millis(100);
                    tokio::time::sleep_until(bound.min(poll).into()).await;
                    return;
                }
            }
        }
        if let Some((_, pl)) = l.as_mut()
            && let Ok(Err(_)) = tokio::time::timeout_at(bound.into(), pl.recv()).await
        {
            *l = None;
        }
    }

    async fn durability(&self, e: &SqlBackend) -> Check {
        // Settings under which a crash can take back a committed lease row.
        let mut lax = Vec::new();
        for name in ["fsync", "synchronous_commit"] {
            let q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!("SHOW {name}")))
                .fetch_one(&e.pool);
            if let Ok(v) = e.bounded("doctor", q).await
                && v == "off"
            {
                lax.push(format!("{name} = off"));
            }
        }
        if lax.is_empty() {
            return Check::ok(
                "durability",
                "fsync and synchronous_commit are on: a committed lease survives a crash",
            );
        }
        Check::new(
            Level::Warn,
            "durability",
            format!(
                "{} has {}: a crash can lose a lease just committed, and another process then takes the lock while its holder runs",
                e.shown,
                lax.join(", ")
            ),
        )
        .fix("turn them on for the lock tables' database (ALTER SYSTEM SET ... ; SELECT pg_reload_conf())")
    }
}
