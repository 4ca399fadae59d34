//! The rows a key's line is made of: lease rows, and the waiter rows that
//! `status` counts and readers give way to.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use anyhow::Result;
use sqlx::Row;

use super::kit::Mode;
use crate::backend::{Holder, KeyStatus, LockSpec, Waiting};

/// How long a waiter row lasts without being renewed; a waiter renews it
/// every third of this (its polls are at most a second apart), so one that
/// died or gave up stops being counted within this.
pub const WAITER_LAPSE: std::time::Duration = std::time::Duration::from_secs(3);

/// The prefix of a shared waiter's id in the waiter table (SQL and SQLite):
/// rows without it are exclusive waiters, whom later readers let go first.
pub const SHARED_WAITER: &str = "s:";

/// The `LIKE` pattern of shared waiters' ids (bound, never spliced in).
pub const SHARED_WAITER_LIKE: &str = "s:%";

/// A lease row's mode from its `lim` column: 0 is a shared lease.
pub fn mode_of_lim(lim: i64) -> Mode {
    if lim <= 0 {
        Mode::Shared
    } else {
        Mode::Exclusive {
            limit: lim.min(i64::from(u32::MAX)) as u32,
        }
    }
}

/// The `lim` column for a lease taken with `spec`: 0 when shared.
pub fn lim_of(spec: &LockSpec) -> u32 {
    if spec.shared { 0 } else { spec.limit }
}

/// A waiter's id in the waiter table: `id`, or `s:id` for a shared waiter.
pub fn waiter_id(id: &str, shared: bool) -> Cow<'_, str> {
    if shared {
        format!("{SHARED_WAITER}{id}").into()
    } else {
        id.into()
    }
}

/// What a request is admitted behind ([`kit::admits`]): the live leases, by
/// their `lim` column, and `writers` exclusive waiters (a shared request
/// gives way to them; counted up to 1024).
pub fn ahead(lims: impl IntoIterator<Item = i64>, writers: i64) -> Vec<Mode> {
    let mut modes: Vec<Mode> = lims.into_iter().map(mode_of_lim).collect();
    let writer = Mode::Exclusive { limit: 1 };
    modes.extend(std::iter::repeat_n(writer, writers.clamp(0, 1024) as usize));
    modes
}

/// This process's rows in a waiter table, SQL's and SQLite's alike: the
/// keys it waits for, when each row was last written, and the mode it
/// waits in (a shared waiter's rows are `s:ID`, an exclusive one's `ID`).
#[derive(Default)]
pub struct WaiterRows {
    keys: Waiting,
    shared: AtomicBool,
}

impl WaiterRows {
    /// This process's id, without the mode's prefix.
    pub fn id(&self) -> &str {
        &self.keys.id
    }

    /// The id our row has for a request in this mode.
    fn row_id(&self, shared: bool) -> Cow<'_, str> {
        waiter_id(&self.keys.id, shared)
    }

    /// The id to write our row for `spec`'s key under, if that is due: the
    /// row is new, or a third of [`WAITER_LAPSE`] old (waiters wake often
    /// under contention; a write per wake would slow every hand-off).
    pub fn due(&self, spec: &LockSpec) -> Option<Cow<'_, str>> {
        if !self.keys.due(&spec.namespace, &spec.key, WAITER_LAPSE) {
            return None;
        }
        if spec.shared {
            self.shared.store(true, Ordering::Relaxed);
        }
        Some(self.row_id(spec.shared))
    }

    /// Our row for the key was written now: true the first time, when the
    /// rows of waiters that died long ago are cleared.
    pub fn written(&self, ns: &str, key: &str) -> bool {
        self.keys.note(ns, key)
    }

    /// Our row for `spec`'s key, if we wrote one: the acquiring transaction
    /// deletes it, so the new holder is never counted as both.
    pub fn ours(&self, spec: &LockSpec) -> Option<Cow<'_, str>> {
        self.keys
            .has(&spec.namespace, &spec.key)
            .then(|| self.row_id(spec.shared))
    }

    /// Acquired: our row for the key went with the acquisition.
    pub fn done(&self, ns: &str, key: &str) {
        self.keys.done(ns, key);
    }

    /// Forget every row: the id they have, whether we waited shared (a
    /// writer that stops waiting wakes the readers giving way to it), and
    /// the (namespace, key) pairs whose rows to delete.
    pub fn clear(&self) -> (Cow<'_, str>, bool, Vec<(String, String)>) {
        let shared = self.shared.load(Ordering::Relaxed);
        (self.row_id(shared), shared, self.keys.clear())
    }
}

/// The holder a lease row names (its columns `owner`, `host`, `pid`,
/// `token` and `lim`, the same on SQL and SQLite), taken at `acquired_at`
/// and expiring at `expires_at`; and the row's `lim` (0: shared).
pub fn lease_holder<R>(
    r: &R,
    acquired_at: SystemTime,
    expires_at: SystemTime,
) -> sqlx::Result<(Holder, i64)>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let pid: i64 = r.try_get("pid")?;
    let token: i64 = r.try_get("token")?;
    let lim: i64 = r.try_get("lim")?;
    Ok((
        Holder {
            owner: Some(r.try_get("owner")?),
            host: Some(r.try_get("host")?),
            pid: Some(pid as u32),
            token: Some(token as u64),
            acquired_at: Some(acquired_at),
            expires_at: Some(expires_at),
            dead: false,
            shared: mode_of_lim(lim).is_shared(),
            value: None,
            entry: None,
            slot: None,
            waiting: false,
        },
        lim,
    ))
}

/// One key's status from its live lease rows (SQL and SQLite); `holder`
/// reads a row as the holder and its `lim` column (0: shared).
pub fn key_status<R>(
    key: String,
    rows: &[R],
    waiters: Option<u64>,
    holder: impl Fn(&R) -> Result<(Holder, i64)>,
) -> Result<KeyStatus> {
    let mut limit = 1u32;
    let mut holders = Vec::with_capacity(rows.len());
    for r in rows {
        let (h, lim) = holder(r)?;
        limit = limit.max(lim.clamp(1, i64::from(u32::MAX)) as u32);
        holders.push(h);
    }
    Ok(KeyStatus {
        key,
        limit,
        holders,
        waiters,
        queue: vec![],
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
