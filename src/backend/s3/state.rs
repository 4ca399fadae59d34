//! The lock object: one JSON document per key, holding the fencing
//! counter, every holder and every waiter (in arrival order: the fair
//! queue), so that one compare-and-swap
//! (a PUT with `If-Match` on the ETag read) decides an admission, by
//! [`kit::admits`], against all of them at once.
//!
//! ```json
//! {"dlock": 1, "fence": 7, "nonce": "9f2c…",
//!  "holders": [{"rec": "dlock1|ID|1|USER|HOST|PID|SINCE…", "token": 7, "exp": 1796564740123}],
//!  "waiters": [{"id": "4242-…", "shared": false, "exp": 1796564716000}]}
//! ```
//!
//! `rec` is dlock's holder record ([`kit::Record`], its `N` the `--limit`,
//! 0 for a shared holder); `exp` is when the entry ends, in milliseconds
//! of the server's clock; `nonce` is new on every write, so that no two
//! writes have the same body (and so the same ETag). The object is never
//! deleted by dlock: a free lock is an object without holders, and its
//! `fence` keeps counting.

use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::backend::kit::{self, Mode, NField, Record};
use crate::backend::{Holder, LockSpec};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LockObject {
    #[serde(default = "one")]
    pub dlock: u32,
    #[serde(default)]
    pub fence: u64,
    #[serde(default)]
    pub nonce: String,
    #[serde(default)]
    pub holders: Vec<Entry>,
    #[serde(default)]
    pub waiters: Vec<Waiter>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    pub rec: String,
    pub token: u64,
    pub exp: i64,
}

/// A waiting process, in arrival order in [`LockObject::waiters`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Waiter {
    pub id: String,
    #[serde(default)]
    pub shared: bool,
    pub exp: i64,
    /// Where and which process waits (its pid, [`crate::host::host_id`]
    /// and start time), so that a contender on the same machine can tell
    /// that it died and take it out of the line at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<(u32, String, u64)>,
}

impl Waiter {
    /// This process, waiting.
    pub fn me(id: &str, shared: bool, exp: i64) -> Waiter {
        let pid = std::process::id();
        Waiter {
            id: id.to_string(),
            shared,
            exp,
            live: crate::host::proc_start(pid).map(|start| (pid, crate::host::host_id(), start)),
        }
    }

    /// Its process ran on this machine and is gone.
    pub fn dead_here(&self) -> bool {
        match &self.live {
            Some((pid, host_id, start)) => {
                *host_id == crate::host::host_id() && !crate::host::process_alive(*pid, *start)
            }
            None => false,
        }
    }

    fn mode(&self) -> Mode {
        if self.shared {
            Mode::Shared
        } else {
            Mode::Exclusive { limit: 1 }
        }
    }
}

impl Entry {
    pub fn record(&self) -> Option<Record> {
        Record::parse(&self.rec, NField::Limit)
    }

    /// The record's id: the lease's, for renew and release.
    pub fn id(&self) -> Option<String> {
        self.record().map(|r| r.id)
    }

    pub fn mode(&self) -> Mode {
        match self.record() {
            Some(r) if r.shared => Mode::Shared,
            Some(r) => Mode::Exclusive {
                limit: r.limit.unwrap_or(1),
            },
            None => Mode::Exclusive { limit: 1 },
        }
    }

    pub fn holder(&self) -> Holder {
        let expires = UNIX_EPOCH + Duration::from_millis(self.exp.max(0) as u64);
        let mut h = match self.record() {
            Some(r) => {
                let mut h = r.holder(Some(self.token), Some(expires));
                h.entry = Some(r.id);
                h
            }
            None => Holder {
                token: Some(self.token),
                expires_at: Some(expires),
                ..Holder::default()
            },
        };
        h.shared = self.mode().is_shared();
        h
    }
}

/// A fresh random hex string.
pub fn nonce() -> String {
    let mut b = [0u8; 12];
    let _ = getrandom::fill(&mut b);
    super::client::hex(&b)
}

impl LockObject {
    pub fn parse(body: &[u8]) -> Result<LockObject, String> {
        if body.is_empty() {
            return Ok(LockObject::default());
        }
        serde_json::from_slice(body).map_err(|e| format!("not a dlock lock object ({e})"))
    }

    /// The body to write: with a new nonce.
    pub fn encode(&mut self) -> Vec<u8> {
        self.dlock = 1;
        self.nonce = nonce();
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Drop entries that ended by `now` (the server's time at the
    /// earliest), and waiters on this machine whose process is gone.
    pub fn prune(&mut self, now: i64) {
        self.holders.retain(|h| h.exp > now);
        self.waiters.retain(|w| w.exp > now && !w.dead_here());
    }

    /// Where `waiter` stands in line: its index among the waiters, or
    /// behind them all if it has no entry yet.
    pub fn place(&self, waiter: &str) -> usize {
        self.waiters
            .iter()
            .position(|w| w.id == waiter)
            .unwrap_or(self.waiters.len())
    }

    /// What a request for `spec`, waiting as `waiter`, is admitted behind
    /// (the fair queue): the holders, and the requests that were waiting
    /// before it; for a shared request only the exclusive ones among them
    /// (it joins the readers at once when no writer waits ahead of it).
    pub fn ahead(&self, spec: &LockSpec, waiter: &str) -> Vec<Mode> {
        let mut modes: Vec<Mode> = self.holders.iter().map(Entry::mode).collect();
        let before = &self.waiters[..self.place(waiter)];
        modes.extend(
            before
                .iter()
                .filter(|w| !spec.shared || !w.shared)
                .map(Waiter::mode),
        );
        modes
    }

    pub fn admits(&self, spec: &LockSpec, waiter: &str) -> bool {
        kit::admits(spec.mode(), &self.ahead(spec, waiter))
    }

    pub fn holders(&self) -> Vec<Holder> {
        self.holders.iter().map(Entry::holder).collect()
    }

    /// The index of the live entry of the lease `id`.
    pub fn find(&self, id: &str) -> Option<usize> {
        self.holders
            .iter()
            .position(|h| h.id().as_deref() == Some(id))
    }

    /// Write this process's waiter entry: renewed where it stands, or new
    /// at the end of the line.
    pub fn wait(&mut self, id: &str, shared: bool, exp: i64) {
        match self.waiters.iter_mut().find(|w| w.id == id) {
            Some(w) => {
                w.exp = exp;
                w.shared = shared;
            }
            None => self.waiters.push(Waiter::me(id, shared, exp)),
        }
    }

    /// Remove this process's waiter entry; true if there was one.
    pub fn unwait(&mut self, id: &str) -> bool {
        let n = self.waiters.len();
        self.waiters.retain(|w| w.id != id);
        self.waiters.len() != n
    }

    /// `--limit` as `status` shows it: the holders' (1 for a mutex).
    pub fn limit(&self) -> u32 {
        self.holders
            .iter()
            .filter_map(|h| match h.mode() {
                Mode::Exclusive { limit } => Some(limit),
                Mode::Shared => None,
            })
            .max()
            .unwrap_or(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{LeaseKind, Owner};

    fn me(id: &str) -> Owner {
        Owner {
            id: id.into(),
            user: "ci".into(),
            host: "h".into(),
            pid: 1,
            host_id: String::new(),
            proc_start: 0,
            kind: LeaseKind::Run,
            value: None,
        }
    }

    fn spec(limit: u32, shared: bool) -> LockSpec {
        LockSpec {
            namespace: "n".into(),
            key: "k".into(),
            ttl: Duration::from_secs(1),
            limit,
            shared,
        }
    }

    fn entry(id: &str, limit: Option<u32>, shared: bool, exp: i64) -> Entry {
        let mut r = Record::new(id, &me(id));
        r.limit = limit;
        r.shared = shared;
        Entry {
            rec: r.encode(NField::Limit),
            token: 1,
            exp,
        }
    }

    #[test]
    fn admission_expiry_and_writer_preference() {
        let mut o = LockObject::default();
        assert!(o.admits(&spec(1, false), "w"));
        o.holders.push(entry("a", Some(1), false, 100));
        assert!(!o.admits(&spec(1, false), "w"));
        o.prune(100);
        assert!(o.holders.is_empty(), "ended at 100");
        o.holders.push(entry("s1", None, true, 1000));
        assert!(o.admits(&spec(1, true), "w"));
        assert!(!o.admits(&spec(1, false), "w"));
        o.wait("writer", false, 1000);
        assert!(!o.admits(&spec(1, true), "w"), "a writer waits");
        // First come, first served: a newcomer is behind every waiter, a
        // waiter behind those before it; renewing keeps one's place.
        let mut q = LockObject::default();
        q.wait("a", false, 1000);
        q.wait("b", false, 1000);
        assert!(!q.admits(&spec(1, false), "new"));
        assert!(!q.admits(&spec(1, false), "b"));
        assert!(q.admits(&spec(1, false), "a"));
        q.wait("a", false, 2000);
        assert_eq!(q.place("a"), 0);
        assert!(q.admits(&spec(2, false), "b"), "a semaphore of 2");
        // Readers wait only behind writers.
        let mut r = LockObject::default();
        r.wait("r1", true, 1000);
        assert!(r.admits(&spec(1, true), "new"));
        r.wait("w1", false, 1000);
        assert!(!r.admits(&spec(1, true), "new"));
        assert!(r.admits(&spec(1, true), "r1"));
        assert!(o.holders()[0].shared);
        assert_eq!(o.find("s1"), Some(0));
        // Bodies differ even when nothing else does.
        let a = o.encode();
        let b = o.encode();
        assert_ne!(a, b);
        let back = LockObject::parse(&a).unwrap();
        assert_eq!(back.holders, o.holders);
        assert!(LockObject::parse(b"{}").unwrap().holders.is_empty());
        assert!(LockObject::parse(b"junk").is_err());
        let mut s = LockObject::default();
        s.holders.push(entry("x", Some(3), false, 1000));
        s.holders.push(entry("y", Some(3), false, 1000));
        assert!(s.admits(&spec(3, false), "w"));
        assert_eq!(s.limit(), 3);
    }
}
