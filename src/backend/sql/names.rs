//! The lock tables' names (`?dlock_table=NAME`), and the doctor's probe of
//! dlock's rights on them.

use anyhow::Result;

use crate::backend::probe::{Check, Level};
use crate::error::usage;

/// Table names; `?dlock_table=NAME` in the URL changes the `dlock` prefix
/// (for sites with naming rules). The parameter is removed before the URL
/// reaches the driver.
pub struct Names {
    pub lease: String,
    pub fence: String,
    pub waiter: String,
    /// The line of waiters, in arrival order (fair queues).
    pub queue: String,
    pub prefix: String,
    /// Whether waiters keep the line (fair queues): on unless the URL says
    /// `?dlock_queue=off` (first come, not always first served, as before
    /// the line; contended hand-offs are a little cheaper without it).
    pub fair: bool,
}

impl Names {
    pub fn from_url(url: &str) -> Result<(String, Names)> {
        let mut prefix = "dlock".to_string();
        let mut fair = true;
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("dlock_table", v)) => prefix = v.to_string(),
                Some(("dlock_queue", "fair")) => fair = true,
                Some(("dlock_queue", "off")) => fair = false,
                Some(("dlock_queue", v)) => {
                    return Err(usage(format!(
                        "dlock_queue={v:?}: expected fair (waiters served in arrival order) or off"
                    )));
                }
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
                queue: format!("{prefix}_queue"),
                prefix,
                fair,
            },
        ))
    }
}

/// How one SQL dialect spells what the doctor's probe needs.
pub struct Spelling {
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
    pub fn probe_statements(&self, d: &Spelling) -> Vec<String> {
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
    pub fn judge_access(&self, probe: Result<()>, waiters: Result<()>, line: bool) -> Vec<Check> {
        let mut out = vec![match probe {
            Ok(()) => Check::ok(
                "rights",
                format!(
                    "dlock's user may take and release locks in {} and {}",
                    self.lease, self.fence
                ),
            ),
            Err(e) => Check::new(Level::Fail, "rights", format!("{e:#}")).fix(format!(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON {}, {}, {}, {} TO the user in the URL",
                self.lease, self.fence, self.waiter, self.queue
            )),
        }];
        if let Err(e) = waiters {
            out.push(
                Check::new(
                    Level::Info,
                    "waiters",
                    format!(
                        "`status` cannot count waiters, and readers (--shared) cannot see \
                         writers waiting, so they do not give way to them: {e:#}"
                    ),
                )
                .fix(format!(
                    "create {} (dlock does when it may) and grant access to it",
                    self.waiter
                )),
            );
        }
        if !self.fair {
            out.push(
                Check::new(
                    Level::Info,
                    "queue",
                    "waiters are not served in the order they arrived: the URL turns the \
                     line off (?dlock_queue=off)"
                        .to_string(),
                )
                .fix(
                    "remove ?dlock_queue=off from the URL on every client of these keys \
                     (first come, first served)",
                ),
            );
        } else if !line {
            out.push(
                Check::new(
                    Level::Info,
                    "queue",
                    format!(
                        "dlock's user may not use {}: waiters are not served in the order \
                         they arrived, and `status` lists no line",
                        self.queue
                    ),
                )
                .fix(format!(
                    "create {} (dlock does when it may) and GRANT SELECT, INSERT, UPDATE, \
                     DELETE on it",
                    self.queue
                )),
            );
        }
        out
    }
}
