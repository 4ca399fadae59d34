//! PostgreSQL: a lease row per holder, judged by the server's clock.
//!
//! Tables (created if missing; `?dlock_table=NAME` in the URL renames the
//! `dlock` prefix): `dlock_lease` (one row per held lease) and `dlock_fence`
//! (the per-key token counter). Acquisition is one transaction: upserting the
//! fence row locks it, so contenders for one key queue on that row lock and
//! never admit more than `--limit`; the token is bumped in the same
//! transaction. Every expiry compares with `now()` on the server, never with
//! the client's clock, and every value is a bound parameter.
//!
//! Waiting: a release sends `NOTIFY` on a per-key channel; waiters `LISTEN`
//! on it, with a bounded poll for expiries.

use std::str::FromStr;
use std::sync::Mutex as StdMutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Row};
use tokio::sync::Mutex;

use super::sql::{
    Dialect, Names, WAITER_LAPSE, channel_name, epoch_micros, key_status, waiters_of,
};
use super::{
    Attempt, Backend, Holder, KeyStatus, Lease, LockSpec, Owner, PingInfo, Renewal, Waiting,
    redact_url,
};
use crate::doctor::{Check, Level};
use crate::error::unavailable;

pub struct PostgresBackend {
    shown: String,
    pool: PgPool,
    t: Names,
    timeout: Duration,
    listener: Mutex<Option<(String, PgListener)>>,
    /// The soonest a busy key's holder can expire, from the last attempt.
    next_expiry: StdMutex<Option<Instant>>,
    opts: PgConnectOptions,
    waiting: Waiting,
}

fn holder(r: &PgRow) -> Result<(Holder, i64)> {
    let acquired_ms: f64 = r.try_get("acquired_ms")?;
    let left_ms: f64 = r.try_get("left_ms")?;
    let pid: i64 = r.try_get("pid")?;
    let token: i64 = r.try_get("token")?;
    Ok((
        Holder {
            owner: Some(r.try_get("owner")?),
            host: Some(r.try_get("host")?),
            pid: Some(pid as u32),
            token: Some(token as u64),
            acquired_at: Some(UNIX_EPOCH + Duration::from_millis(acquired_ms.max(0.0) as u64)),
            expires_at: Some(SystemTime::now() + Duration::from_millis(left_ms.max(0.0) as u64)),
            dead: false,
        },
        left_ms as i64,
    ))
}

impl PostgresBackend {
    pub async fn connect(url: &str, timeout: Duration) -> Result<PostgresBackend> {
        let shown = redact_url(url);
        let (url, t) = Names::from_url(url)?;
        let opts = PgConnectOptions::from_str(&url)
            .map_err(|e| crate::error::usage(format!("bad PostgreSQL URL {shown}: {e}")))?
            .options([
                ("statement_timeout", format!("{}", timeout.as_millis())),
                ("lock_timeout", format!("{}", timeout.as_millis())),
            ]);
        // One connection: a PostgreSQL connection costs a server process, and
        // a pool of more opens a second one whenever the first is on its way
        // back. The listener for waiting gets its own, only when waiting.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(timeout)
            .connect_with(opts.clone())
            .await
            .map_err(|e| unavailable(format!("cannot connect to PostgreSQL {shown}: {e}")))?;
        let b = PostgresBackend {
            shown,
            pool,
            t,
            timeout,
            listener: Mutex::new(None),
            next_expiry: StdMutex::new(None),
            opts,
            waiting: Waiting::new(),
        };
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS {lease} (
                ns TEXT NOT NULL, key TEXT NOT NULL, id TEXT NOT NULL, token BIGINT NOT NULL,
                owner TEXT NOT NULL, host TEXT NOT NULL, pid BIGINT NOT NULL, lim INTEGER NOT NULL,
                acquired_at TIMESTAMPTZ NOT NULL, expires_at TIMESTAMPTZ NOT NULL,
                PRIMARY KEY (ns, key, id));
             CREATE TABLE IF NOT EXISTS {fence} (
                ns TEXT NOT NULL, key TEXT NOT NULL, token BIGINT NOT NULL, PRIMARY KEY (ns, key))",
            lease = b.t.lease,
            fence = b.t.fence,
        );
        // Waiter rows only feed `status`: a role that may not create tables
        // still locks without them.
        let waiter_ddl = format!(
            "CREATE TABLE IF NOT EXISTS {} (
                ns TEXT NOT NULL, key TEXT NOT NULL, id TEXT NOT NULL,
                expires_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (ns, key, id))",
            b.t.waiter
        );
        // Most runs find the tables there: one cheap look instead of DDL
        // (which takes locks and sends notices).
        let (present, waiter_present): (bool, bool) = sqlx::query_as(
            "SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL, to_regclass($3) IS NOT NULL",
        )
        .bind(&b.t.lease)
        .bind(&b.t.fence)
        .bind(&b.t.waiter)
        .fetch_one(&b.pool)
        .await
        .unwrap_or((false, false));
        if !waiter_present {
            let _ = b
                .bounded(
                    "create the waiter table",
                    sqlx::raw_sql(AssertSqlSafe(waiter_ddl)).execute(&b.pool),
                )
                .await;
        }
        if present {
            return Ok(b);
        }
        // Two clients creating the tables at once may collide; the loser
        // finds them made.
        if let Err(e) = sqlx::raw_sql(AssertSqlSafe(ddl.clone()))
            .execute(&b.pool)
            .await
        {
            sqlx::raw_sql(AssertSqlSafe(ddl))
                .execute(&b.pool)
                .await
                .map_err(|e2| {
                    unavailable(format!(
                        "PostgreSQL {}: cannot create tables: {e2} (first: {e})",
                        b.shown
                    ))
                })?;
        }
        Ok(b)
    }

    fn select_holders(&self) -> String {
        format!(
            "SELECT id, token, owner, host, pid, lim,
                    EXTRACT(EPOCH FROM acquired_at)::float8 * 1000 AS acquired_ms,
                    EXTRACT(EPOCH FROM (expires_at - now()))::float8 * 1000 AS left_ms
               FROM {} WHERE ns = $1 AND key = $2 AND expires_at > now() ORDER BY acquired_at",
            self.t.lease
        )
    }

    async fn bounded<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unavailable(format!(
                "PostgreSQL {}: {what}: {e}",
                self.shown
            ))),
            Err(_) => Err(unavailable(format!(
                "PostgreSQL {}: {what} timed out",
                self.shown
            ))),
        }
    }
}

#[async_trait]
impl Backend for PostgresBackend {
    fn describe(&self) -> String {
        self.shown.clone()
    }

    async fn try_acquire(&self, spec: &LockSpec, me: &Owner) -> Result<Attempt> {
        let granted_at = Instant::now();
        let t = &self.t;
        let attempt = async {
            let mut tx = self.pool.begin().await?;
            // Lock this key's fence row: contenders queue here.
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {} (ns, key, token) VALUES ($1, $2, 0)
                 ON CONFLICT (ns, key) DO UPDATE SET token = {}.token",
                t.fence, t.fence
            )))
            .bind(&spec.namespace)
            .bind(&spec.key)
            .execute(&mut *tx)
            .await?;
            sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {} WHERE ns = $1 AND key = $2 AND expires_at <= now()",
                t.lease
            )))
            .bind(&spec.namespace)
            .bind(&spec.key)
            .execute(&mut *tx)
            .await?;
            let rows = sqlx::query(AssertSqlSafe(self.select_holders()))
                .bind(&spec.namespace)
                .bind(&spec.key)
                .fetch_all(&mut *tx)
                .await?;
            if rows.len() >= spec.limit as usize {
                tx.commit().await?;
                return Ok::<_, sqlx::Error>(Err(rows));
            }
            let token: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
                "WITH t AS (UPDATE {fence} SET token = token + 1 WHERE ns = $1 AND key = $2 RETURNING token)
                 INSERT INTO {lease} (ns, key, id, token, owner, host, pid, lim, acquired_at, expires_at)
                 SELECT $1, $2, $3, t.token, $4, $5, $6, $7, now(), now() + $8 * interval '1 millisecond' FROM t
                 RETURNING token",
                fence = t.fence,
                lease = t.lease
            )))
            .bind(&spec.namespace)
            .bind(&spec.key)
            .bind(&me.id)
            .bind(&me.user)
            .bind(&me.host)
            .bind(i64::from(me.pid))
            .bind(spec.limit as i32)
            .bind(spec.ttl.as_millis() as f64)
            .fetch_one(&mut *tx)
            .await?;
            // No longer a waiter: in the same transaction, so the new holder
            // is never counted as both.
            if self.waiting.has(&spec.namespace, &spec.key) {
                sqlx::query(AssertSqlSafe(format!(
                    "DELETE FROM {} WHERE ns = $1 AND key = $2 AND id = $3",
                    t.waiter
                )))
                .bind(&spec.namespace)
                .bind(&spec.key)
                .bind(&self.waiting.id)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(Ok(token))
        };
        match self.bounded("acquire", attempt).await? {
            Ok(token) => {
                self.waiting.done(&spec.namespace, &spec.key);
                Ok(Attempt::Acquired(Lease {
                    namespace: spec.namespace.clone(),
                    key: spec.key.clone(),
                    token: token as u64,
                    id: me.id.clone(),
                    ttl: spec.ttl,
                    granted_at,
                }))
            }
            Err(rows) => {
                let mut hs = Vec::new();
                let mut soonest = i64::MAX;
                for r in &rows {
                    let (h, left) = holder(r)?;
                    soonest = soonest.min(left);
                    hs.push(h);
                }
                *self.next_expiry.lock().unwrap() = Some(
                    Instant::now() + Duration::from_millis(soonest.clamp(0, 3_600_000) as u64),
                );
                Ok(Attempt::Busy(hs))
            }
        }
    }

    async fn wait_change(&self, spec: &LockSpec, until: Option<Instant>) -> Result<()> {
        if self.waiting.due(&spec.namespace, &spec.key, WAITER_LAPSE) {
            // Counted as a waiter for `status`; best effort.
            // Rows of waiters that died long ago go in the same statement.
            let row = sqlx::query(AssertSqlSafe(format!(
                "WITH stale AS (DELETE FROM {w} WHERE ns = $1 AND key = $2
                                 AND expires_at < clock_timestamp() - interval '1 minute')
                 INSERT INTO {w} (ns, key, id, expires_at)
                 VALUES ($1, $2, $3, clock_timestamp() + $4 * interval '1 millisecond')
                 ON CONFLICT (ns, key, id) DO UPDATE SET expires_at = EXCLUDED.expires_at",
                w = self.t.waiter
            )))
            .bind(&spec.namespace)
            .bind(&spec.key)
            .bind(&self.waiting.id)
            .bind(WAITER_LAPSE.as_millis() as f64)
            .execute(&self.pool);
            if self.bounded("waiting", row).await.is_ok() {
                self.waiting.note(&spec.namespace, &spec.key);
            }
        }
        let chan = channel_name(&spec.namespace, &spec.key);
        let cap = Instant::now() + Duration::from_secs(1);
        let expiry = self
            .next_expiry
            .lock()
            .unwrap()
            .map(|e| e + Duration::from_millis(5));
        let bound = [Some(cap), until, expiry]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(cap);
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
                    // No listener: poll.
                    drop(l);
                    tokio::time::sleep_until(
                        bound
                            .min(Instant::now() + Duration::from_millis(100))
                            .into(),
                    )
                    .await;
                    return Ok(());
                }
            }
        }
        if let Some((_, pl)) = l.as_mut()
            && let Ok(Err(_)) = tokio::time::timeout_at(bound.into(), pl.recv()).await
        {
            *l = None;
        }
        Ok(())
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Renewal> {
        let r = self
            .bounded(
                "renew",
                sqlx::query(AssertSqlSafe(format!(
                    "UPDATE {} SET expires_at = now() + $4 * interval '1 millisecond'
                      WHERE ns = $1 AND key = $2 AND id = $3 AND expires_at > now()",
                    self.t.lease
                )))
                .bind(&lease.namespace)
                .bind(&lease.key)
                .bind(&lease.id)
                .bind(ttl.as_millis() as f64)
                .execute(&self.pool),
            )
            .await?;
        Ok(if r.rows_affected() == 1 {
            Renewal::Renewed
        } else {
            Renewal::Lost
        })
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let live: Option<bool> = self
            .bounded(
                "release",
                sqlx::query_scalar(AssertSqlSafe(format!(
                    "WITH d AS (DELETE FROM {} WHERE ns = $1 AND key = $2 AND id = $3 RETURNING expires_at > now() AS live)
                     SELECT (SELECT live FROM d), pg_notify($4, '')",
                    self.t.lease
                )))
                .bind(&lease.namespace)
                .bind(&lease.key)
                .bind(&lease.id)
                .bind(channel_name(&lease.namespace, &lease.key))
                .fetch_one(&self.pool),
            )
            .await?;
        Ok(live == Some(true))
    }

    async fn release_after(&self, lease: &Lease, remaining: Duration) -> Result<bool> {
        Ok(self
            .renew(lease, remaining.max(Duration::from_millis(1)))
            .await?
            == Renewal::Renewed)
    }

    async fn force_release(&self, namespace: &str, key: &str) -> Result<u64> {
        let n: i64 = self
            .bounded(
                "force release",
                sqlx::query_scalar(AssertSqlSafe(format!(
                    "WITH d AS (DELETE FROM {} WHERE ns = $1 AND key = $2 RETURNING expires_at > now() AS live)
                     SELECT (SELECT count(*) FROM d WHERE live), pg_notify($3, '')",
                    self.t.lease
                )))
                .bind(namespace)
                .bind(key)
                .bind(channel_name(namespace, key))
                .fetch_one(&self.pool),
            )
            .await?;
        Ok(n as u64)
    }

    async fn status(&self, namespace: &str, keys: &[String]) -> Result<Vec<KeyStatus>> {
        let mut names = keys.to_vec();
        if names.is_empty() {
            names = self
                .bounded(
                    "status",
                    sqlx::query_scalar(AssertSqlSafe(format!(
                        "SELECT DISTINCT key FROM {} WHERE ns = $1 AND expires_at > now() ORDER BY key",
                        self.t.lease
                    )))
                    .bind(namespace)
                    .fetch_all(&self.pool),
                )
                .await?;
        }
        let counts: Option<Vec<(String, i64)>> = self
            .bounded(
                "status",
                sqlx::query_as(AssertSqlSafe(format!(
                    "SELECT key, count(*) FROM {} WHERE ns = $1 AND expires_at > clock_timestamp() GROUP BY key",
                    self.t.waiter
                )))
                .bind(namespace)
                .fetch_all(&self.pool),
            )
            .await
            .ok();
        let mut out = Vec::new();
        for k in names {
            let rows = self
                .bounded(
                    "status",
                    sqlx::query(AssertSqlSafe(self.select_holders()))
                        .bind(namespace)
                        .bind(&k)
                        .fetch_all(&self.pool),
                )
                .await?;
            let w = waiters_of(&counts, &k);
            out.push(key_status(k, &rows, w, |r| {
                let lim: i32 = r.try_get("lim")?;
                Ok((holder(r)?.0, lim as u32))
            })?);
        }
        Ok(out)
    }

    async fn ping(&self) -> Result<PingInfo> {
        let v: String = self
            .bounded(
                "ping",
                sqlx::query_scalar("SHOW server_version").fetch_one(&self.pool),
            )
            .await?;
        Ok(PingInfo {
            kind: "postgres",
            version: v,
            detail: self.shown.clone(),
        })
    }

    async fn close(&self) {
        for (ns, key) in self.waiting.clear() {
            let q = sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {} WHERE ns = $1 AND key = $2 AND id = $3",
                self.t.waiter
            )))
            .bind(&ns)
            .bind(&key)
            .bind(&self.waiting.id)
            .execute(&self.pool);
            let _ = self.bounded("waiting", q).await;
        }
    }

    async fn doctor(&self, _ttl: Duration, _timeout: Duration) -> Vec<Check> {
        let mut out = Vec::new();
        // Settings under which a crash can take back a committed lease row.
        let mut lax = Vec::new();
        for name in ["fsync", "synchronous_commit"] {
            let q = sqlx::query_scalar::<_, String>(AssertSqlSafe(format!("SHOW {name}")))
                .fetch_one(&self.pool);
            if let Ok(v) = self.bounded("doctor", q).await
                && v == "off"
            {
                lax.push(format!("{name} = off"));
            }
        }
        out.push(if lax.is_empty() {
            Check::ok("durability", "fsync and synchronous_commit are on: a committed lease survives a crash")
        } else {
            Check::new(
                Level::Warn,
                "durability",
                format!(
                    "{} has {}: a crash can lose a lease just committed, and another process then takes the lock while its holder runs",
                    self.shown,
                    lax.join(", ")
                ),
            )
            .fix("turn them on for the lock tables' database (ALTER SYSTEM SET ... ; SELECT pg_reload_conf())")
        });
        // Rights: every statement dlock makes, rolled back.
        let probe_key = format!("doctor-{}", self.waiting.id);
        let probe = async {
            let mut tx = self.pool.begin().await?;
            for sql in self.t.probe_statements(&Dialect {
                key: "key",
                param: "$1",
                now: "now()",
            }) {
                sqlx::query(AssertSqlSafe(sql))
                    .bind(&probe_key)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.rollback().await
        };
        let probe = self.bounded("a rolled-back test write", probe).await;
        let waiters = sqlx::query(AssertSqlSafe(format!(
            "SELECT 1 FROM {} LIMIT 1",
            self.t.waiter
        )))
        .fetch_optional(&self.pool);
        let waiters = self
            .bounded("reading the waiter table", waiters)
            .await
            .map(drop);
        out.extend(self.t.judge_access(probe, waiters));
        out
    }

    async fn server_time(&self) -> Result<Option<SystemTime>> {
        let us: i64 = self
            .bounded(
                "reading the server's clock",
                sqlx::query_scalar(
                    "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint",
                )
                .fetch_one(&self.pool),
            )
            .await?;
        Ok(Some(epoch_micros(us)))
    }
}
