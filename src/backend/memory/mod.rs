//! An in-memory lock service, on tokio's clock, for unit tests of the
//! engine only (compiled under `#[cfg(test)]`): the polling engine
//! ([`kit::poll`]), the admission rule by mode and order, liveness, the
//! lease clock and `status` run against it in milliseconds under
//! `#[tokio::test(start_paused = true)]`. It tests the engine; it never
//! stands in for a real server, whose own suite still runs in full.
//!
//! One [`Memory`] is the server; each [`Memory::client`] is one process
//! (a [`Backend`] and [`Poll`]er of its own), so several tokio tasks are
//! several contenders. A test marks an owner's process dead with
//! [`Memory::kill`], standing in for [`kit::Record::dead_here`].
#![cfg(test)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Result;
use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{
    Attempt, Backend, Holder, KeyStatus, Lease, LeaseKind, LockSpec, Owner, PingInfo, Poll,
    Renewal, kit,
};

mod tests;

/// How long a waiter's place in line lasts unless an attempt renews it
/// (Redis: 2 s): a waiter that stopped trying (gone elsewhere) leaves the
/// line after it.
pub const WAITER_LAPSE: Duration = Duration::from_secs(2);

type Name = (String, String);

/// A holder of a key.
#[derive(Debug, Clone)]
struct Held {
    owner: Owner,
    mode: kit::Mode,
    slot: Option<u32>,
    expires: Instant,
    token: u64,
    since: SystemTime,
}

/// A place in a key's line.
#[derive(Debug, Clone)]
struct Waiter {
    owner: Owner,
    mode: kit::Mode,
    lapse: Instant,
    since: SystemTime,
}

#[derive(Debug, Default)]
struct Key {
    holders: Vec<Held>,
    /// In arrival order: a newcomer is pushed at the back.
    line: Vec<Waiter>,
    next_token: u64,
    /// Bumped on every change that may let a waiter in (a release, an
    /// expiry, a removal): a client waits until it differs from the one
    /// its last attempt saw. Keys are never dropped, so it never goes back.
    version: u64,
}

impl Key {
    /// Drop expired holders and lapsed waiters; true if any went.
    fn purge(&mut self, now: Instant) -> bool {
        let before = self.holders.len() + self.line.len();
        self.holders.retain(|h| h.expires > now);
        self.line.retain(|w| w.lapse > now);
        let changed = before != self.holders.len() + self.line.len();
        if changed {
            self.version += 1;
        }
        changed
    }
}

#[derive(Debug, Default)]
struct State {
    keys: HashMap<Name, Key>,
    /// Owner ids whose process is gone.
    dead: HashSet<String>,
}

impl State {
    /// Whether the process of `o` is known gone. A handle's lease belongs
    /// to no running process, so it is never dead (as [`kit::Record`]
    /// keeps no liveness for it); a waiter always is a running process.
    fn dead(&self, o: &Owner, waiting: bool) -> bool {
        (waiting || o.kind == LeaseKind::Run) && self.dead.contains(&o.id)
    }

    fn holder(&self, h: &Held, now: Instant) -> Holder {
        Holder {
            owner: Some(h.owner.user.clone()),
            host: Some(h.owner.host.clone()),
            pid: Some(h.owner.pid),
            token: Some(h.token),
            acquired_at: Some(h.since),
            expires_at: Some(SystemTime::now() + h.expires.saturating_duration_since(now)),
            dead: self.dead(&h.owner, false),
            shared: h.mode.is_shared(),
            value: None,
            entry: Some(h.owner.id.clone()),
            slot: h.slot,
            waiting: false,
        }
    }

    fn waiter(&self, w: &Waiter) -> Holder {
        Holder {
            owner: Some(w.owner.user.clone()),
            host: Some(w.owner.host.clone()),
            pid: Some(w.owner.pid),
            acquired_at: Some(w.since),
            dead: self.dead(&w.owner, true),
            shared: w.mode.is_shared(),
            entry: Some(w.owner.id.clone()),
            waiting: true,
            ..Holder::default()
        }
    }
}

struct Server {
    state: Mutex<State>,
    /// Told on every change to any key; each client then compares its
    /// key's version.
    changed: Notify,
}

/// The in-memory server: clone it freely, every clone is the same one.
#[derive(Clone)]
pub struct Memory(Arc<Server>);

impl Default for Memory {
    fn default() -> Memory {
        Memory::new()
    }
}

impl Memory {
    pub fn new() -> Memory {
        Memory(Arc::new(Server {
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        }))
    }

    /// A client of this server: one process.
    pub fn client(&self) -> MemoryBackend {
        MemoryBackend {
            server: self.clone(),
            seen: Mutex::new(HashMap::new()),
            joined: Mutex::new(HashSet::new()),
        }
    }

    /// The process of the owner `id` is gone (what [`kit::Record::dead_here`]
    /// finds of a local process): its entries are reported `dead`.
    pub fn kill(&self, id: &str) {
        self.state().dead.insert(id.to_string());
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already.
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// After a change to a key: bump its version, wake every waiter.
    fn changed(&self, k: &mut Key) {
        k.version += 1;
        self.0.changed.notify_waiters();
    }
}

/// One process's connection to a [`Memory`] server.
pub struct MemoryBackend {
    server: Memory,
    /// Per key, the version the last attempt saw: a wait ends once it moves.
    seen: Mutex<HashMap<Name, u64>>,
    /// (key, owner id) of the places in line this process took, left on
    /// [`Backend::close`].
    joined: Mutex<HashSet<(Name, String)>>,
}

fn name(ns: &str, key: &str) -> Name {
    (ns.to_string(), key.to_string())
}

impl MemoryBackend {
    /// The server behind this client.
    pub fn server(&self) -> &Memory {
        &self.server
    }

    fn saw(&self, n: &Name, version: u64) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(n.clone(), version);
    }
}

#[async_trait]
impl Poll for MemoryBackend {
    async fn try_acquire(&self, spec: &LockSpec, me: &Owner, join: bool) -> Result<Attempt> {
        let now = Instant::now();
        let n = name(&spec.namespace, &spec.key);
        let mode = spec.mode();
        let mut st = self.server.state();
        let k = st.keys.entry(n.clone()).or_default();
        if k.purge(now) {
            self.server.0.changed.notify_waiters();
        }
        let mine = k.line.iter().position(|w| w.owner.id == me.id);
        let State { keys, dead } = &mut *st;
        let k = keys.get_mut(&n).expect("entered above");
        let line = kit::Line::new(
            k.holders
                .iter()
                .map(|h| kit::Seat::new(h.mode, false, h.slot))
                .collect(),
            k.line
                .iter()
                .map(|w| kit::Seat::new(w.mode, dead.contains(&w.owner.id), None))
                .collect(),
        );
        // Dead waiters ahead leave the line in this attempt (no grace).
        let gone: Vec<usize> = line.dead_ahead(mine).collect();
        let ruling = line.rule(mode, mine, 0, join);
        for &i in gone.iter().rev() {
            k.line.remove(i);
        }
        let mine = mine.map(|i| i - gone.len());
        if !gone.is_empty() {
            self.server.changed(k);
        }
        if let kit::Ruling::Enter { slot } = ruling {
            let slot = slot.or(spec.fixed_slot());
            k.next_token += 1;
            let token = k.next_token;
            k.holders.push(Held {
                owner: me.clone(),
                mode,
                slot,
                expires: now + spec.ttl,
                token,
                since: SystemTime::now(),
            });
            if let Some(i) = mine {
                k.line.remove(i);
            }
            let v = k.version;
            drop(st);
            self.saw(&n, v);
            self.joined
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&(n, me.id.clone()));
            let lease = spec.lease(token, me.id.clone(), now.into_std(), slot);
            return Ok(Attempt::Acquired(lease));
        }
        if join {
            match mine {
                Some(i) => k.line[i].lapse = now + WAITER_LAPSE,
                None => {
                    k.line.push(Waiter {
                        owner: me.clone(),
                        mode,
                        lapse: now + WAITER_LAPSE,
                        since: SystemTime::now(),
                    });
                }
            }
        }
        // Every holder, for the liveness rule to break the dead ones.
        let k = &st.keys[&n];
        let busy: Vec<Holder> = k.holders.iter().map(|h| st.holder(h, now)).collect();
        let v = k.version;
        drop(st);
        self.saw(&n, v);
        if join {
            self.joined
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((n, me.id.clone()));
        }
        Ok(Attempt::Busy(busy))
    }

    async fn wait_change(&self, spec: &LockSpec, until: Option<std::time::Instant>) -> Result<()> {
        let n = name(&spec.namespace, &spec.key);
        let seen = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&n)
            .copied();
        // Wake in time to renew our place in line, and at the first
        // holder's expiry (nothing announces one).
        let mut bound = Instant::now() + WAITER_LAPSE / 3;
        if let Some(u) = until {
            bound = bound.min(Instant::from_std(u));
        }
        loop {
            let notified = self.server.0.changed.notified();
            tokio::pin!(notified);
            // Registered before the version is read, so a change between
            // the two still wakes us.
            notified.as_mut().enable();
            {
                let st = self.server.state();
                let k = st.keys.get(&n);
                if seen.is_some_and(|s| k.map_or(0, |k| k.version) != s) {
                    return Ok(());
                }
                if let Some(first) = k.and_then(|k| k.holders.iter().map(|h| h.expires).min()) {
                    bound = bound.min(first);
                }
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(bound) => return Ok(()),
            }
        }
    }

    async fn break_dead(&self, spec: &LockSpec, dead: &[Holder]) -> Result<bool> {
        let n = name(&spec.namespace, &spec.key);
        let mut st = self.server.state();
        let State { keys, dead: gone } = &mut *st;
        let Some(k) = keys.get_mut(&n) else {
            return Ok(false);
        };
        let named = |id: &String| dead.iter().any(|h| h.entry.as_ref() == Some(id));
        let before = k.holders.len() + k.line.len();
        // Only entries still there and still dead: a live one never goes.
        k.holders.retain(|h| {
            !(named(&h.owner.id) && h.owner.kind == LeaseKind::Run && gone.contains(&h.owner.id))
        });
        k.line
            .retain(|w| !(named(&w.owner.id) && gone.contains(&w.owner.id)));
        let removed = before != k.holders.len() + k.line.len();
        if removed {
            self.server.changed(k);
        }
        Ok(removed)
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn describe(&self) -> String {
        "memory://".into()
    }

    fn poller(&self) -> Option<&dyn Poll> {
        Some(self)
    }

    fn capabilities(&self) -> super::Capabilities {
        super::Capabilities::SHARES
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Renewal> {
        let now = Instant::now();
        let mut st = self.server.state();
        let Some(k) = st.keys.get_mut(&name(&lease.namespace, &lease.key)) else {
            return Ok(Renewal::Lost);
        };
        if k.purge(now) {
            self.server.0.changed.notify_waiters();
        }
        match k.holders.iter_mut().find(|h| h.owner.id == lease.id) {
            Some(h) => {
                h.expires = now + ttl;
                Ok(Renewal::Renewed)
            }
            None => Ok(Renewal::Lost),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let now = Instant::now();
        let n = name(&lease.namespace, &lease.key);
        let mut st = self.server.state();
        let Some(k) = st.keys.get_mut(&n) else {
            return Ok(false);
        };
        k.purge(now);
        let before = k.holders.len();
        k.holders.retain(|h| h.owner.id != lease.id);
        let ours = before != k.holders.len();
        self.server.changed(k);
        Ok(ours)
    }

    async fn force_release(&self, namespace: &str, key: &str) -> Result<u64> {
        let now = Instant::now();
        let mut st = self.server.state();
        let Some(k) = st.keys.get_mut(&name(namespace, key)) else {
            return Ok(0);
        };
        k.purge(now);
        let n = k.holders.len() as u64;
        k.holders.clear();
        self.server.changed(k);
        Ok(n)
    }

    async fn status(&self, namespace: &str, keys: &[String]) -> Result<Vec<KeyStatus>> {
        let now = Instant::now();
        let mut st = self.server.state();
        let mut names: Vec<String> = keys.to_vec();
        if names.is_empty() {
            names = st
                .keys
                .iter_mut()
                .filter_map(|((ns, key), k)| {
                    k.purge(now);
                    (ns == namespace && !k.holders.is_empty()).then(|| key.clone())
                })
                .collect();
            names.sort();
        }
        let mut out = Vec::new();
        for key in names {
            let n = name(namespace, &key);
            if let Some(k) = st.keys.get_mut(&n) {
                k.purge(now);
            }
            let Some(k) = st.keys.get(&n) else {
                out.push(KeyStatus::free(key));
                continue;
            };
            let holders = k
                .holders
                .iter()
                .map(|h| kit::Entry::new(st.holder(h, now), h.mode.limit()));
            let queue = k
                .line
                .iter()
                .map(|w| kit::Entry::new(st.waiter(w), w.mode.limit()));
            out.push(kit::View::split(key, holders.collect(), queue.collect()).status());
        }
        Ok(out)
    }

    async fn ping(&self) -> Result<PingInfo> {
        Ok(PingInfo {
            kind: "memory",
            version: String::new(),
            detail: "in-memory test server".into(),
        })
    }

    /// Leave every place in line this process took (as Redis and SQL do
    /// on the way out), and wake the waiters behind.
    async fn close(&self) {
        let joined: Vec<(Name, String)> = self
            .joined
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        let mut st = self.server.state();
        for (n, id) in joined {
            if let Some(k) = st.keys.get_mut(&n) {
                k.line.retain(|w| w.owner.id != id);
                self.server.changed(k);
            }
        }
    }
}
