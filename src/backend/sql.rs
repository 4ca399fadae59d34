//! What the PostgreSQL and MySQL backends share: table names and per-key
//! names for notification channels and server-side locks.

use anyhow::Result;

use super::{Holder, KeyStatus};
use crate::doctor::{Check, Level};
use crate::error::usage;

/// Table names; `?dlock_table=NAME` in the URL changes the `dlock` prefix
/// (for sites with naming rules). The parameter is removed before the URL
/// reaches the driver.
pub struct Names {
    pub lease: String,
    pub fence: String,
    pub waiter: String,
    pub prefix: String,
}

impl Names {
    pub fn from_url(url: &str) -> Result<(String, Names)> {
        let mut prefix = "dlock".to_string();
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("dlock_table", v)) => prefix = v.to_string(),
                _ => kept.push(pair),
            }
        }
        let ok = !prefix.is_empty()
            && prefix.len() <= 48
            && prefix
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(usage(format!(
                "dlock_table={prefix:?}: a table prefix must be a plain identifier (letters, digits, _)"
            )));
        }
        let url = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        Ok((
            url,
            Names {
                lease: format!("{prefix}_lease"),
                fence: format!("{prefix}_fence"),
                waiter: format!("{prefix}_waiter"),
                prefix,
            },
        ))
    }
}

/// How long a waiter row lasts without being renewed; a waiter renews it
/// every third of this (its polls are at most a second apart), so one that
/// died or gave up stops being counted within this.
pub const WAITER_LAPSE: std::time::Duration = std::time::Duration::from_secs(3);

/// One key's status from its live lease rows; `holder` reads a row as the
/// holder and the `--limit` it was taken with.
pub fn key_status<R>(
    key: String,
    rows: &[R],
    waiters: Option<u64>,
    holder: impl Fn(&R) -> Result<(Holder, u32)>,
) -> Result<KeyStatus> {
    let mut limit = 1u32;
    let mut holders = Vec::with_capacity(rows.len());
    for r in rows {
        let (h, lim) = holder(r)?;
        limit = limit.max(lim);
        holders.push(h);
    }
    Ok(KeyStatus {
        key,
        limit,
        holders,
        waiters,
        unreadable: None,
    })
}

pub fn fnv64(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// A short identifier naming one key, safe to use unquoted (LISTEN channel,
/// GET_LOCK name).
pub fn channel_name(ns: &str, key: &str) -> String {
    format!("dlock_{:016x}", fnv64(&[ns, key]))
}

/// Waiters counted per key from `(key, count)` rows; `None` when the count
/// could not be read (no waiter table: dlock may not create tables there).
pub fn waiters_of(counts: &Option<Vec<(String, i64)>>, key: &str) -> Option<u64> {
    counts.as_ref().map(|c| {
        c.iter()
            .find(|(n, _)| n == key)
            .map_or(0, |(_, n)| *n as u64)
    })
}

/// How one SQL dialect spells what the doctor's probe needs.
pub struct Dialect {
    /// The key column (`key`, or `lkey` where `key` is reserved).
    pub key: &'static str,
    /// The one bind parameter (`$1` or `?`).
    pub param: &'static str,
    /// The server's current time.
    pub now: &'static str,
}

impl Names {
    /// Every kind of statement dlock makes on the lock tables, on a key of
    /// its own (bound as the one parameter), for a probe that is rolled back.
    pub fn probe_statements(&self, d: &Dialect) -> Vec<String> {
        let (k, p, now) = (d.key, d.param, d.now);
        vec![
            format!(
                "INSERT INTO {} (ns, {k}, token) VALUES ('', {p}, 0)",
                self.fence
            ),
            format!(
                "UPDATE {} SET token = token + 1 WHERE ns = '' AND {k} = {p}",
                self.fence
            ),
            format!(
                "INSERT INTO {} (ns, {k}, id, token, owner, host, pid, lim, acquired_at, expires_at)
                 VALUES ('', {p}, 'doctor', 0, '', '', 0, 1, {now}, {now})",
                self.lease
            ),
            format!(
                "UPDATE {} SET expires_at = {now} WHERE ns = '' AND {k} = {p}",
                self.lease
            ),
            format!("DELETE FROM {} WHERE ns = '' AND {k} = {p}", self.lease),
            format!("DELETE FROM {} WHERE ns = '' AND {k} = {p}", self.fence),
        ]
    }

    /// The doctor's findings from the rights probe and from reading the
    /// waiter table.
    pub fn judge_access(&self, probe: Result<()>, waiters: Result<()>) -> Vec<Check> {
        let mut out = vec![match probe {
            Ok(()) => Check::ok(
                "rights",
                format!(
                    "dlock's user may take and release locks in {} and {}",
                    self.lease, self.fence
                ),
            ),
            Err(e) => Check::new(Level::Fail, "rights", format!("{e:#}")).fix(format!(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON {}, {}, {} TO the user in the URL",
                self.lease, self.fence, self.waiter
            )),
        }];
        if let Err(e) = waiters {
            out.push(
                Check::new(
                    Level::Info,
                    "waiters",
                    format!("`status` cannot count waiters: {e:#}"),
                )
                .fix(format!(
                    "create {} (dlock does when it may) and grant access to it",
                    self.waiter
                )),
            );
        }
        out
    }
}

/// A server's clock reading in microseconds since the epoch.
pub fn epoch_micros(us: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_micros(us.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_option() {
        let (u, n) = Names::from_url("postgres://h/db?dlock_table=locks&sslmode=disable").unwrap();
        assert_eq!(u, "postgres://h/db?sslmode=disable");
        assert_eq!(n.lease, "locks_lease");
        assert!(Names::from_url("postgres://h/db?dlock_table=x;drop").is_err());
        let (u, n) = Names::from_url("mysql://h/db").unwrap();
        assert_eq!(
            (u.as_str(), n.fence.as_str()),
            ("mysql://h/db", "dlock_fence")
        );
    }
}
