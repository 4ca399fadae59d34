//! The lock object: one JSON document per key, holding the fencing
//! counter, every holder and every waiter (in arrival order: the fair
//! queue), so that one compare-and-swap
//! (a PUT with `If-Match` on the ETag read) decides an admission, by
//! [`kit::admits`], against all of them at once.
//!
//! ```json
//! {"dlock": 1, "fence": 7, "nonce": "9f2c…",
//!  "holders": [{"rec": "dlock1|ID|1|USER|HOST|PID|SINCE…", "token": 7, "exp": 1796564740123}],
//!  "waiters": [{"id": "4242-…", "shared": false, "exp": 1796564716000,
//!               "live": [4242, "BOOT…", 123456], "rec": "dlock1|4242-…|1|USER|HOST|4242|SINCE"}]}
//! ```
//!
//! `rec` is dlock's holder record ([`kit::Record`], its `N` the `--limit`,
//! 0 for a shared holder; a semaphore holder's slot in its 13th field); a
//! waiter's `rec` says who waits and since when, for `status`; `exp` is
//! when the entry ends, in milliseconds of the server's clock; `nonce` is new on every write, so that no two
//! writes have the same body (and so the same ETag). The object is never
//! deleted by dlock: a free lock is an object without holders, and its
//! `fence` keeps counting.

use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::backend::Holder;
use crate::backend::kit::{self, Mode, NField, Record};

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
    /// Who waits (user, host, pid) and since when, as a holder record
    /// named by [`Waiter::id`], for `status`'s line. Absent from entries
    /// of the previous release; an older dlock that rewrites the object
    /// drops it (the entry keeps its place, `status` shows less of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rec: Option<String>,
}

impl Waiter {
    /// This process, waiting; `rec` says who it is.
    pub fn me(id: &str, shared: bool, exp: i64, rec: &str) -> Waiter {
        let pid = std::process::id();
        Waiter {
            id: id.to_string(),
            shared,
            exp,
            live: crate::host::proc_start(pid).map(|start| (pid, crate::host::host_id(), start)),
            rec: Some(rec.to_string()),
        }
    }

    /// The waiter as `status` lists it: `acquired_at` is since when it
    /// waits; `dead` the liveness rule's verdict.
    pub fn holder(&self) -> Holder {
        let mut h = match self
            .rec
            .as_deref()
            .and_then(|r| Record::parse(r, NField::Limit))
        {
            Some(r) => r.holder(None, None),
            None => Holder {
                pid: self.live.as_ref().map(|l| l.0),
                ..Holder::default()
            },
        };
        h.shared = self.shared;
        h.dead = self.dead_here();
        h.waiting = true;
        h.entry = Some(self.id.clone());
        h.slot = None;
        h
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
        Mode::of(self.shared, 1)
    }

    /// The `--limit` of an exclusive request, where its record gives it.
    fn limit(&self) -> Option<u32> {
        let r = Record::parse(self.rec.as_deref()?, NField::Limit)?;
        r.limit.filter(|_| !r.shared && !self.shared)
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
        self.prune_ended(now);
        self.waiters.retain(|w| !w.dead_here());
    }

    /// Drop entries that ended by `now` only: `status` shows a dead
    /// waiter as dead rather than hide it.
    pub fn prune_ended(&mut self, now: i64) {
        self.holders.retain(|h| h.exp > now);
        self.waiters.retain(|w| w.exp > now);
    }

    /// Where `waiter` stands in line, if it has an entry.
    pub fn place(&self, waiter: &str) -> Option<usize> {
        self.waiters.iter().position(|w| w.id == waiter)
    }

    /// The object as the ruling reads it ([`kit::Line::rule`]), once
    /// [`LockObject::prune`]d: the waiters whose process is known gone have
    /// left it, and a dead holder is broken by the engine from the holders
    /// the attempt reports, so none is marked dead here. A mutex holder is
    /// slot 0; a semaphore holder of the previous release (no slot
    /// recorded: its child was given none) has none.
    pub fn seats(&self) -> kit::Line {
        let holders = self.holders.iter().map(|h| {
            let slot = h.record().and_then(|r| match r.slot {
                Some(s) if !r.shared => Some(s),
                None if !r.shared && r.limit.unwrap_or(1) <= 1 => Some(0),
                _ => None,
            });
            kit::Seat::new(h.mode(), false, slot)
        });
        let queue = self
            .waiters
            .iter()
            .map(|w| kit::Seat::new(w.mode(), false, None));
        kit::Line::new(holders.collect(), queue.collect())
    }

    /// Whether a request for `spec`, waiting as `waiter`, enters now.
    #[cfg(test)]
    pub fn admits(&self, spec: &crate::backend::LockSpec, waiter: &str) -> bool {
        self.seats().admits(spec.mode(), self.place(waiter), 0)
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

    /// Write this process's waiter entry: renewed where it stands (since
    /// when it waits unchanged), or new at the end of the line.
    pub fn wait(&mut self, id: &str, shared: bool, exp: i64, rec: &str) {
        match self.waiters.iter_mut().find(|w| w.id == id) {
            Some(w) => {
                w.exp = exp;
                w.shared = shared;
                // Dropped by an older dlock's rewrite: said again.
                if w.rec.is_none() {
                    w.rec = Some(rec.to_string());
                }
            }
            None => self.waiters.push(Waiter::me(id, shared, exp, rec)),
        }
    }

    /// Remove this process's waiter entry; true if there was one.
    pub fn unwait(&mut self, id: &str) -> bool {
        let n = self.waiters.len();
        self.waiters.retain(|w| w.id != id);
        self.waiters.len() != n
    }

    /// The key's state as `status` shows it ([`kit::View`]): the holders,
    /// and the waiters in arrival order.
    pub fn view(&self, key: String) -> kit::View {
        let holders = self
            .holders
            .iter()
            .map(|h| kit::Entry::new(h.holder(), h.mode().limit()))
            .collect();
        let queue = self
            .waiters
            .iter()
            .map(|w| kit::Entry::new(w.holder(), w.limit()))
            .collect();
        kit::View::split(key, holders, queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{LeaseKind, LockSpec, Owner};

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
        o.wait("writer", false, 1000, "");
        assert!(!o.admits(&spec(1, true), "w"), "a writer waits");
        // First come, first served: a newcomer is behind every waiter, a
        // waiter behind those before it; renewing keeps one's place.
        let mut q = LockObject::default();
        q.wait("a", false, 1000, "");
        q.wait("b", false, 1000, "");
        assert!(!q.admits(&spec(1, false), "new"));
        assert!(!q.admits(&spec(1, false), "b"));
        assert!(q.admits(&spec(1, false), "a"));
        q.wait("a", false, 2000, "");
        assert_eq!(q.place("a"), Some(0));
        assert!(q.admits(&spec(2, false), "b"), "a semaphore of 2");
        // Readers wait only behind writers.
        let mut r = LockObject::default();
        r.wait("r1", true, 1000, "");
        assert!(r.admits(&spec(1, true), "new"));
        r.wait("w1", false, 1000, "");
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
        assert_eq!(s.view(String::new()).limit(), 3);
    }

    #[test]
    fn slots_lowest_free_first() {
        let slotted = |id: &str, slot: Option<u32>| {
            let mut r = Record::new(id, &me(id));
            r.limit = Some(3);
            r.slot = slot;
            Entry {
                rec: r.encode(NField::Limit),
                token: 1,
                exp: 1000,
            }
        };
        let mut o = LockObject::default();
        assert_eq!(o.seats().free_slot(3), 0);
        o.holders.push(slotted("a", Some(0)));
        o.holders.push(slotted("c", Some(2)));
        assert_eq!(o.seats().free_slot(3), 1);
        o.holders.push(slotted("b", Some(1)));
        assert_eq!(o.seats().free_slot(4), 3);
        assert!(!o.admits(&spec(3, false), "w"), "all three slots taken");
        o.holders.remove(0);
        assert_eq!(
            o.seats().free_slot(3),
            0,
            "a freed slot is reused, lowest first"
        );
        // The slot survives the record's round trip, and shows in status.
        assert_eq!(o.holders()[0].slot, Some(2));
        // A mutex holder is slot 0; a shared one and a semaphore holder of
        // the previous release (no slot recorded) take none.
        let mut m = LockObject::default();
        m.holders.push(entry("m", Some(1), false, 1000));
        assert_eq!(m.seats().free_slot(3), 1);
        let mut old = LockObject::default();
        old.holders.push(entry("s", None, true, 1000));
        old.holders.push(slotted("o", None));
        assert_eq!(old.seats().free_slot(3), 0);
    }

    #[test]
    fn the_line_in_status_and_older_objects() {
        let who = |id: &str, shared: bool| {
            let mut r = Record::new(id, &me(id));
            r.shared = shared;
            r.limit = (!shared).then_some(1);
            r.encode(NField::Limit)
        };
        let mut o = LockObject::default();
        o.wait("w1", false, 1000, &who("w1", false));
        o.wait("w2", true, 1000, &who("w2", true));
        o.wait("w1", false, 2000, &who("w1-again", false));
        let q = o.view(String::new()).status().queue;
        assert_eq!(q.len(), 2);
        assert_eq!(q[0].owner.as_deref(), Some("ci"));
        assert_eq!(q[0].entry.as_deref(), Some("w1"), "renewed in place");
        assert!(!q[0].shared && q[1].shared);
        assert!(
            q.iter()
                .all(|h| h.waiting && !h.dead && h.acquired_at.is_some())
        );
        // Ended entries go; a dead waiter on this machine stays in what
        // status reads, marked dead, and leaves what a contender reads.
        let mut dead = Waiter::me("gone", false, 5000, &who("gone", false));
        dead.live = Some((u32::MAX - 1, crate::host::host_id(), 1));
        o.waiters.push(dead);
        let mut shown = o.clone();
        shown.prune_ended(1500);
        assert_eq!(shown.waiters.len(), 2);
        assert!(shown.view(String::new()).status().queue[1].dead);
        o.prune(1500);
        assert_eq!(o.waiters.len(), 1);
        // An object of the previous release: waiters without `rec`,
        // holders without a slot.
        let old = br#"{"dlock":1,"fence":3,"nonce":"x","holders":[{"rec":"dlock1|a|3|u|h|1|2","token":3,"exp":9}],"waiters":[{"id":"7-ab","shared":false,"exp":9,"live":[7,"B",1]}]}"#;
        let o = LockObject::parse(old).unwrap();
        assert_eq!(o.holders()[0].slot, None);
        let st = o.view(String::new()).status();
        assert_eq!(st.limit, 3);
        assert_eq!(st.queue[0].pid, Some(7));
        assert_eq!(st.queue[0].owner, None);
        assert_eq!(o.seats().free_slot(3), 0);
    }
}
