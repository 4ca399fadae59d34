//! MySQL and MariaDB: a lease row per holder, judged by the server's clock.
//!
//! The same layout as PostgreSQL (`dlock_lease`, `dlock_fence`; `lkey` is
//! the key column, as `key` is reserved), with expiry against
//! `UTC_TIMESTAMP(6)`. Acquisition is one transaction that first locks the
//! key's fence row (`INSERT ... ON DUPLICATE KEY UPDATE`), so contenders
//! queue on it; the token is bumped there with `LAST_INSERT_ID(token + 1)`.
//!
//! Waiting uses a server-side wait instead of a poll: a `run` holder keeps
//! `GET_LOCK(name)` on a connection of its own for as long as it holds the
//! key; a waiter blocks in `GET_LOCK(name, timeout)` on its own connection,
//! which the server grants the moment the holder releases it or its
//! connection dies. Where nobody holds it (a lock taken by `dlock acquire`,
//! `--limit` > 1), waiters poll with a backoff from 5 ms to 100 ms.

use std::str::FromStr;
use std::sync::Mutex as StdMutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use async_trait::async_trait;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::{AssertSqlSafe, Connection, Row};
use tokio::sync::Mutex;

use super::sql::{
    Dialect, Names, WAITER_LAPSE, channel_name, epoch_micros, key_status, waiters_of,
};
use super::{
    Attempt, Backend, Holder, KeyStatus, Lease, LeaseKind, LockSpec, Owner, PingInfo, Renewal,
    Waiting, redact_url,
};
use crate::doctor::{Check, Level};
use crate::error::unavailable;

const POLL_MIN: Duration = Duration::from_millis(5);
const POLL_MAX: Duration = Duration::from_millis(100);

pub struct MysqlBackend {
    shown: String,
    opts: MySqlConnectOptions,
    pool: MySqlPool,
    t: Names,
    timeout: Duration,
    /// Connections holding GET_LOCK for keys we hold, by lock name.
    held: Mutex<Vec<(String, MySqlConnection)>>,
    /// The connection a waiter blocks on.
    waiter: Mutex<Option<MySqlConnection>>,
    poll: StdMutex<Duration>,
    waiting: Waiting,
}

fn holder(r: &MySqlRow) -> Result<Holder> {
    let acquired_us: i64 = r.try_get("acquired_us")?;
    let left_us: i64 = r.try_get("left_us")?;
    let pid: i64 = r.try_get("pid")?;
    let token: i64 = r.try_get("token")?;
    Ok(Holder {
        owner: Some(r.try_get("owner")?),
        host: Some(r.try_get("host")?),
        pid: Some(pid as u32),
        token: Some(token as u64),
        acquired_at: Some(UNIX_EPOCH + Duration::from_micros(acquired_us.max(0) as u64)),
        expires_at: Some(SystemTime::now() + Duration::from_micros(left_us.max(0) as u64)),
        dead: false,
    })
}

impl MysqlBackend {
    pub async fn connect(url: &str, timeout: Duration) -> Result<MysqlBackend> {
        let shown = redact_url(url);
        let (url, t) = Names::from_url(url)?;
        let url = match url.strip_prefix("mariadb://") {
            Some(rest) => format!("mysql://{rest}"),
            None => url,
        };
        let opts = MySqlConnectOptions::from_str(&url)
            .map_err(|e| crate::error::usage(format!("bad MySQL URL {shown}: {e}")))?
            .timezone(Some("+00:00".to_string()));
        let pool = MySqlPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(timeout)
            .connect_with(opts.clone())
            .await
            .map_err(|e| unavailable(format!("cannot connect to MySQL {shown}: {e}")))?;
        let b = MysqlBackend {
            shown,
            opts,
            pool,
            t,
            timeout,
            held: Mutex::new(Vec::new()),
            waiter: Mutex::new(None),
            poll: StdMutex::new(POLL_MIN),
            waiting: Waiting::new(),
        };
        for ddl in [
            format!(
                "CREATE TABLE IF NOT EXISTS {} (
                    ns VARCHAR(191) NOT NULL, lkey VARCHAR(512) NOT NULL, id VARCHAR(64) NOT NULL,
                    token BIGINT NOT NULL, owner VARCHAR(255) NOT NULL, host VARCHAR(255) NOT NULL,
                    pid BIGINT NOT NULL, lim INT NOT NULL,
                    acquired_at DATETIME(6) NOT NULL, expires_at DATETIME(6) NOT NULL,
                    PRIMARY KEY (ns, lkey, id)
                 ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
                b.t.lease
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (
                    ns VARCHAR(191) NOT NULL, lkey VARCHAR(512) NOT NULL, token BIGINT NOT NULL,
                    PRIMARY KEY (ns, lkey)
                 ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
                b.t.fence
            ),
        ] {
            b.bounded(
                "create tables",
                sqlx::raw_sql(AssertSqlSafe(ddl)).execute(&b.pool),
            )
            .await?;
        }
        // Waiter rows only feed `status`: without the table, locking works
        // and `status` shows no waiter count.
        let _ = b
            .bounded(
                "create the waiter table",
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "CREATE TABLE IF NOT EXISTS {} (
                        ns VARCHAR(191) NOT NULL, lkey VARCHAR(512) NOT NULL, id VARCHAR(64) NOT NULL,
                        expires_at DATETIME(6) NOT NULL,
                        PRIMARY KEY (ns, lkey, id)
                     ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
                    b.t.waiter
                )))
                .execute(&b.pool),
            )
            .await;
        Ok(b)
    }

    async fn bounded<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unavailable(format!("MySQL {}: {what}: {e}", self.shown))),
            Err(_) => Err(unavailable(format!(
                "MySQL {}: {what} timed out",
                self.shown
            ))),
        }
    }

    fn select_holders(&self) -> String {
        format!(
            "SELECT id, token, owner, host, pid, lim,
                    CAST(TIMESTAMPDIFF(MICROSECOND, '1970-01-01', acquired_at) AS SIGNED) AS acquired_us,
                    CAST(TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires_at) AS SIGNED) AS left_us
               FROM {} WHERE ns = ? AND lkey = ? AND expires_at > UTC_TIMESTAMP(6) ORDER BY acquired_at",
            self.t.lease
        )
    }

    /// The server-side lock name for a key, unique per database and table.
    fn wake_name(&self, ns: &str, key: &str) -> String {
        let db = self.opts.get_database().unwrap_or_default();
        format!(
            "{}_{}",
            channel_name(&format!("{db}.{}\0{ns}", self.t.prefix), key),
            "w"
        )
    }

    /// Hold GET_LOCK for a key we hold, on a connection of its own.
    async fn hold_wake(&self, name: String) {
        let take = async {
            let mut c = MySqlConnection::connect_with(&self.opts).await?;
            let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, 0.2)")
                .bind(&name)
                .fetch_one(&mut c)
                .await?;
            Ok::<_, sqlx::Error>((got == Some(1)).then_some(c))
        };
        if let Ok(Ok(Some(c))) = tokio::time::timeout(self.timeout, take).await {
            self.held.lock().await.push((name, c));
        }
    }

    async fn drop_wake(&self, name: &str) {
        let mut held = self.held.lock().await;
        if let Some(i) = held.iter().position(|(n, _)| n == name) {
            let (_, c) = held.remove(i);
            let _ = tokio::time::timeout(self.timeout, c.close()).await;
        }
    }

    fn next_poll(&self) -> Duration {
        let mut p = self.poll.lock().unwrap();
        let cur = *p;
        *p = (cur * 2).min(POLL_MAX);
        cur
    }
}

#[async_trait]
impl Backend for MysqlBackend {
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
                "INSERT INTO {} (ns, lkey, token) VALUES (?, ?, 0) ON DUPLICATE KEY UPDATE token = token",
                t.fence
            )))
            .bind(&spec.namespace)
            .bind(&spec.key)
            .execute(&mut *tx)
            .await?;
            sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {} WHERE ns = ? AND lkey = ? AND expires_at <= UTC_TIMESTAMP(6)",
                t.lease
            )))
            .bind(&spec.namespace)
            .bind(&spec.key)
            .execute(&mut *tx)
            .await?;
            let rows = sqlx::query(AssertSqlSafe(format!(
                "{} LOCK IN SHARE MODE",
                self.select_holders()
            )))
            .bind(&spec.namespace)
            .bind(&spec.key)
            .fetch_all(&mut *tx)
            .await?;
            if rows.len() >= spec.limit as usize {
                tx.commit().await?;
                return Ok::<_, sqlx::Error>(Err(rows));
            }
            let bumped = sqlx::query(AssertSqlSafe(format!(
                "UPDATE {} SET token = LAST_INSERT_ID(token + 1) WHERE ns = ? AND lkey = ?",
                t.fence
            )))
            .bind(&spec.namespace)
            .bind(&spec.key)
            .execute(&mut *tx)
            .await?;
            let token = bumped.last_insert_id() as i64;
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {} (ns, lkey, id, token, owner, host, pid, lim, acquired_at, expires_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND)",
                t.lease
            )))
            .bind(&spec.namespace)
            .bind(&spec.key)
            .bind(&me.id)
            .bind(token)
            .bind(&me.user)
            .bind(&me.host)
            .bind(i64::from(me.pid))
            .bind(spec.limit as i32)
            .bind(spec.ttl.as_micros() as i64)
            .execute(&mut *tx)
            .await?;
            // No longer a waiter: in the same transaction, so the new holder
            // is never counted as both.
            if self.waiting.has(&spec.namespace, &spec.key) {
                sqlx::query(AssertSqlSafe(format!(
                    "DELETE FROM {} WHERE ns = ? AND lkey = ? AND id = ?",
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
                *self.poll.lock().unwrap() = POLL_MIN;
                self.waiting.done(&spec.namespace, &spec.key);
                if me.kind == LeaseKind::Run && spec.limit == 1 {
                    self.hold_wake(self.wake_name(&spec.namespace, &spec.key))
                        .await;
                }
                Ok(Attempt::Acquired(Lease {
                    namespace: spec.namespace.clone(),
                    key: spec.key.clone(),
                    token: token as u64,
                    id: me.id.clone(),
                    ttl: spec.ttl,
                    granted_at,
                }))
            }
            Err(rows) => Ok(Attempt::Busy(
                rows.iter().map(holder).collect::<Result<_>>()?,
            )),
        }
    }

    async fn wait_change(&self, spec: &LockSpec, until: Option<Instant>) -> Result<()> {
        if self.waiting.due(&spec.namespace, &spec.key, WAITER_LAPSE) {
            // Counted as a waiter for `status`; best effort.
            let row = sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {} (ns, lkey, id, expires_at)
                 VALUES (?, ?, ?, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND)
                 ON DUPLICATE KEY UPDATE expires_at = VALUES(expires_at)",
                self.t.waiter
            )))
            .bind(&spec.namespace)
            .bind(&spec.key)
            .bind(&self.waiting.id)
            .bind(WAITER_LAPSE.as_micros() as i64)
            .execute(&self.pool);
            if self.bounded("waiting", row).await.is_ok()
                && self.waiting.note(&spec.namespace, &spec.key)
            {
                // Rows of waiters that died long ago: once per key and process.
                let stale = sqlx::query(AssertSqlSafe(format!(
                    "DELETE FROM {} WHERE ns = ? AND lkey = ? AND expires_at < UTC_TIMESTAMP(6) - INTERVAL 1 MINUTE",
                    self.t.waiter
                )))
                .bind(&spec.namespace)
                .bind(&spec.key)
                .execute(&self.pool);
                let _ = self.bounded("waiting", stale).await;
            }
        }
        let cap = Instant::now() + Duration::from_secs(1);
        let bound = until.map_or(cap, |u| u.min(cap));
        if spec.limit > 1 {
            tokio::time::sleep_until(bound.min(Instant::now() + self.next_poll()).into()).await;
            return Ok(());
        }
        let name = self.wake_name(&spec.namespace, &spec.key);
        let started = Instant::now();
        let mut w = self.waiter.lock().await;
        let secs = bound
            .saturating_duration_since(Instant::now())
            .as_secs_f64();
        let wait = async {
            if w.is_none() {
                *w = Some(MySqlConnection::connect_with(&self.opts).await?);
            }
            let c = w.as_mut().expect("just made");
            let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
                .bind(&name)
                .bind(secs)
                .fetch_one(&mut *c)
                .await?;
            if got == Some(1) {
                sqlx::query("SELECT RELEASE_LOCK(?)")
                    .bind(&name)
                    .execute(&mut *c)
                    .await?;
            }
            Ok::<_, sqlx::Error>(())
        };
        match tokio::time::timeout_at((bound + Duration::from_millis(500)).into(), wait).await {
            Ok(Ok(())) => {}
            // A connection stuck in GET_LOCK or broken is dropped; the next
            // wait makes a new one.
            _ => *w = None,
        }
        drop(w);
        if started.elapsed() < Duration::from_millis(2) {
            tokio::time::sleep_until(bound.min(Instant::now() + self.next_poll()).into()).await;
        } else {
            *self.poll.lock().unwrap() = POLL_MIN;
        }
        Ok(())
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Renewal> {
        let r = self
            .bounded(
                "renew",
                sqlx::query(AssertSqlSafe(format!(
                    "UPDATE {} SET expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND
                      WHERE ns = ? AND lkey = ? AND id = ? AND expires_at > UTC_TIMESTAMP(6)",
                    self.t.lease
                )))
                .bind(ttl.as_micros() as i64)
                .bind(&lease.namespace)
                .bind(&lease.key)
                .bind(&lease.id)
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
        let r = self
            .bounded(
                "release",
                sqlx::query(AssertSqlSafe(format!(
                    "DELETE FROM {} WHERE ns = ? AND lkey = ? AND id = ? AND expires_at > UTC_TIMESTAMP(6)",
                    self.t.lease
                )))
                .bind(&lease.namespace)
                .bind(&lease.key)
                .bind(&lease.id)
                .execute(&self.pool),
            )
            .await?;
        self.drop_wake(&self.wake_name(&lease.namespace, &lease.key))
            .await;
        Ok(r.rows_affected() == 1)
    }

    async fn release_after(&self, lease: &Lease, remaining: Duration) -> Result<bool> {
        let ok = self
            .renew(lease, remaining.max(Duration::from_millis(1)))
            .await?
            == Renewal::Renewed;
        self.drop_wake(&self.wake_name(&lease.namespace, &lease.key))
            .await;
        Ok(ok)
    }

    async fn force_release(&self, namespace: &str, key: &str) -> Result<u64> {
        let r = self
            .bounded(
                "force release",
                sqlx::query(AssertSqlSafe(format!(
                    "DELETE FROM {} WHERE ns = ? AND lkey = ? AND expires_at > UTC_TIMESTAMP(6)",
                    self.t.lease
                )))
                .bind(namespace)
                .bind(key)
                .execute(&self.pool),
            )
            .await?;
        Ok(r.rows_affected())
    }

    async fn status(&self, namespace: &str, keys: &[String]) -> Result<Vec<KeyStatus>> {
        let mut names = keys.to_vec();
        if names.is_empty() {
            names = self
                .bounded(
                    "status",
                    sqlx::query_scalar(AssertSqlSafe(format!(
                        "SELECT DISTINCT lkey FROM {} WHERE ns = ? AND expires_at > UTC_TIMESTAMP(6) ORDER BY lkey",
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
                    "SELECT lkey, COUNT(*) FROM {} WHERE ns = ? AND expires_at > UTC_TIMESTAMP(6) GROUP BY lkey",
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
            out.push(key_status(k, &rows, w, |r: &MySqlRow| {
                let lim: i32 = r.try_get("lim")?;
                Ok((holder(r)?, lim as u32))
            })?);
        }
        Ok(out)
    }

    async fn ping(&self) -> Result<PingInfo> {
        let v: String = self
            .bounded(
                "ping",
                sqlx::query_scalar("SELECT VERSION()").fetch_one(&self.pool),
            )
            .await?;
        let kind = if v.to_ascii_lowercase().contains("mariadb") {
            "mariadb"
        } else {
            "mysql"
        };
        Ok(PingInfo {
            kind,
            version: v,
            detail: self.shown.clone(),
        })
    }

    async fn close(&self) {
        for (ns, key) in self.waiting.clear() {
            let q = sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {} WHERE ns = ? AND lkey = ? AND id = ?",
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
        let flush = sqlx::query_scalar::<_, String>(
            "SELECT CAST(@@innodb_flush_log_at_trx_commit AS CHAR)",
        )
        .fetch_one(&self.pool);
        out.push(match self.bounded("doctor", flush).await {
            Ok(v) if v == "1" => Check::ok(
                "durability",
                "innodb_flush_log_at_trx_commit = 1: a committed lease survives a crash",
            ),
            Ok(v) => Check::new(
                Level::Warn,
                "durability",
                format!(
                    "{} has innodb_flush_log_at_trx_commit = {v}: a crash can lose about a second of commits, a lease just taken among them, and another process then takes the lock while its holder runs",
                    self.shown
                ),
            )
            .fix("SET GLOBAL innodb_flush_log_at_trx_commit = 1 (and in my.cnf)"),
            Err(e) => Check::new(Level::Warn, "durability", format!("cannot read innodb_flush_log_at_trx_commit: {e:#}")),
        });
        // Rights: every statement dlock makes, rolled back.
        let probe_key = format!("doctor-{}", self.waiting.id);
        let probe = async {
            let mut tx = self.pool.begin().await?;
            for sql in self.t.probe_statements(&Dialect {
                key: "lkey",
                param: "?",
                now: "UTC_TIMESTAMP(6)",
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
                sqlx::query_scalar("SELECT CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED)")
                    .fetch_one(&self.pool),
            )
            .await?;
        Ok(Some(epoch_micros(us)))
    }
}
