//! The contract between dlock and a lock service: what a lease, a holder
//! and a key's state are, and the traits every backend implements
//! ([`Backend`]) and a service without a queue of its own adds ([`Poll`]).
//! What is generic about locking lives beside it, in [`super::kit`] and
//! [`super::queue`]; which service a URL names, in [`super::registry`].

use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use async_trait::async_trait;

use super::kit;

/// What kind of process holds a lease. A `Run` lease belongs to a live
/// `dlock run` process; a `Handle` lease was taken by `dlock acquire` whose
/// process exits by design, so only its TTL ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseKind {
    Run,
    Handle,
}

impl LeaseKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseKind::Run => "run",
            LeaseKind::Handle => "handle",
        }
    }
}

/// One key to lock.
#[derive(Debug, Clone)]
pub struct LockSpec {
    pub namespace: String,
    pub key: String,
    pub ttl: Duration,
    /// Exclusive holders allowed at once (1: a mutex; N: a semaphore).
    pub limit: u32,
    /// Taken in shared mode (`--shared`): beside any number of other
    /// shared holders, never beside an exclusive one.
    pub shared: bool,
}

impl LockSpec {
    /// The slot a lease of this spec has without choosing one: 0 for a
    /// mutex, none for a shared lease. A semaphore's backend picks the
    /// lowest free slot instead.
    pub fn fixed_slot(&self) -> Option<u32> {
        (!self.shared && self.limit <= 1).then_some(0)
    }

    /// The lease this spec's key was granted: `token` and the holder's `id`
    /// as the backend stores them, the request sent at `granted_at`, and
    /// the semaphore slot the backend chose (else [`LockSpec::fixed_slot`]).
    pub fn lease(&self, token: u64, id: String, granted_at: Instant, slot: Option<u32>) -> Lease {
        Lease {
            namespace: self.namespace.clone(),
            key: self.key.clone(),
            token,
            id,
            ttl: self.ttl,
            granted_at,
            shared: self.shared,
            slot: slot.or(self.fixed_slot()),
        }
    }

    /// The mode the admission rule ([`kit::admits`]) reads.
    pub fn mode(&self) -> kit::Mode {
        kit::Mode::of(self.shared, self.limit)
    }
}

/// Who we are, recorded with every lease so `status` can say who holds it.
#[derive(Debug, Clone)]
pub struct Owner {
    /// A random secret per acquisition; proves ownership on renew/release.
    pub id: String,
    pub user: String,
    pub host: String,
    pub pid: u32,
    /// Identifies this kernel and PID namespace, so a lease whose process is
    /// known dead can be broken at once by another process on the same host.
    pub host_id: String,
    /// The process start time (clock ticks since boot), against PID reuse.
    pub proc_start: u64,
    pub kind: LeaseKind,
    /// The value a leader publishes (`dlock elect --value`), for a backend
    /// that keeps one beside its holder record ([`Backend::keeps_values`]);
    /// the others get it in `user` ([`user_with_value`]).
    pub value: Option<String>,
}

/// A published value in a backend's owner field, `USER (V)`, where the
/// backend keeps no value of its own: no record changes, `status` shows it
/// in the HOLDER column, and an older dlock sees an unusual user name. A
/// user name has no " (", so it splits back unambiguously ([`value_in`]).
/// `|` (a field separator in some records) and control characters become
/// `_`; V is cut at 200 characters (MySQL's owner column holds 255).
pub fn user_with_value(user: &str, v: &str) -> String {
    let clean: String = v
        .chars()
        .map(|c| if c == '|' || c.is_control() { '_' } else { c })
        .take(200)
        .collect();
    format!("{user} ({clean})")
}

/// The value an owner field carries ([`user_with_value`]), if any.
pub fn value_in(owner: &str) -> Option<&str> {
    let (_, rest) = owner.split_once(" (")?;
    rest.strip_suffix(')')
}

/// A held lease.
#[derive(Debug, Clone)]
pub struct Lease {
    pub namespace: String,
    pub key: String,
    pub token: u64,
    pub id: String,
    pub ttl: Duration,
    /// When the request that granted it was sent: the lease cannot have
    /// started on the server before this, so it is safe until `granted_at + ttl`.
    pub granted_at: Instant,
    /// Taken in shared mode (a backend may keep shared leases elsewhere).
    pub shared: bool,
    /// The semaphore slot taken, 0 to `--limit` - 1 (a mutex is slot 0;
    /// a shared lease has none): the child's `DLOCK_SLOT`.
    pub slot: Option<u32>,
}

/// Someone holding a lock, as far as the backend knows.
#[derive(Debug, Clone, Default)]
pub struct Holder {
    pub owner: Option<String>,
    pub host: Option<String>,
    pub pid: Option<u32>,
    pub token: Option<u64>,
    pub acquired_at: Option<SystemTime>,
    pub expires_at: Option<SystemTime>,
    /// The holder's process is known to be gone: a `run`, a candidate or a
    /// waiter on this machine that died ([`kit::Record::dead_here`]; SQLite:
    /// its row's own columns). A contender on this machine removes it at
    /// once instead of waiting for its TTL or session to end.
    pub dead: bool,
    /// A shared holder (`--shared`), one of possibly many.
    pub shared: bool,
    /// The value it publishes, where the backend keeps values apart from
    /// the owner field (etcd: its key's value, as `concurrency.Election`'s,
    /// a foreign candidate's included).
    pub value: Option<String>,
    /// The entry as stored, where the backend removes a dead holder by a
    /// delete that checks the entry is unchanged (Redis: its value).
    pub entry: Option<String>,
    /// The semaphore slot it holds (0 to limit - 1), where known.
    pub slot: Option<u32>,
    /// An entry in the key's line, not a holder. In [`Attempt::Busy`]: a
    /// waiter ahead of us whose process is gone ([`Holder::dead`]), for
    /// the liveness rule to remove ([`Poll::break_dead`]); never shown as
    /// a holder.
    pub waiting: bool,
}

impl Holder {
    /// The value a leader publishes: kept apart, or in the owner field.
    pub fn value(&self) -> Option<&str> {
        self.value
            .as_deref()
            .or_else(|| self.owner.as_deref().and_then(value_in))
    }
}

/// The state of one key.
#[derive(Debug, Clone)]
pub struct KeyStatus {
    pub key: String,
    pub limit: u32,
    pub holders: Vec<Holder>,
    pub waiters: Option<u64>,
    /// The waiters in line, first in line first, as far as the backend
    /// lists them: each a [`Holder`] whose `acquired_at` is when it began
    /// to wait and `shared` its mode (the holder fields that do not apply
    /// stay `None`). `status --json` shows it as `"queue"`.
    pub queue: Vec<Holder>,
    /// Why the key's state could not be read (ZooKeeper ACLs), naming the
    /// path; the key is then listed as unreadable, not as free.
    pub unreadable: Option<String>,
}

#[derive(Debug)]
pub enum Attempt {
    Acquired(Lease),
    Busy(Vec<Holder>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    Renewed,
    /// The backend says the lease is no longer ours.
    Lost,
}

#[derive(Debug)]
pub struct PingInfo {
    pub kind: &'static str,
    pub version: String,
    pub detail: String,
}

/// What a backend can do beyond the core of the contract, as data: read
/// where it matters (the decorator, `elect`), declared once per backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Takes shared locks (`--shared`); the decorator refuses them with a
    /// clear message where it does not.
    pub shares: bool,
    /// Keeps a leader's published value apart from its holder record
    /// ([`Owner::value`]; etcd: as the key's value, the layout of
    /// `concurrency.Election`). Where it does not, `elect` puts the value
    /// in the owner field ([`user_with_value`]).
    pub keeps_values: bool,
}

impl Capabilities {
    /// Exclusive and shared locks, values in the owner field.
    pub const SHARES: Capabilities = Capabilities {
        shares: true,
        keeps_values: false,
    };
}

#[async_trait]
pub trait Backend: Send + Sync {
    /// The backend's URL with any password removed, for messages.
    fn describe(&self) -> String;

    /// The TTL leases will really have: a session-based backend may have had
    /// its session timeout clamped by the server. `run` adopts it.
    async fn effective_ttl(&self, ttl: Duration) -> Result<Duration> {
        Ok(ttl)
    }

    /// How this backend waits, if by polling (its capability): a service
    /// without a queue of its own (Redis, SQL, SQLite) implements [`Poll`]
    /// and returns itself here.
    fn poller(&self) -> Option<&dyn Poll> {
        None
    }

    /// Take a slot of `spec.key`, waiting until `deadline` (None: for
    /// ever). A service with a queue of its own (ZooKeeper, etcd) waits in
    /// it; a [`Poll`]er tries, and waits for a change, in [`kit::poll`].
    async fn acquire(
        &self,
        spec: &LockSpec,
        me: &Owner,
        deadline: Option<Instant>,
    ) -> Result<Attempt> {
        match self.poller() {
            Some(p) => kit::poll(p, spec, me, deadline).await,
            None => Err(anyhow::anyhow!(
                "{}: this backend neither queues nor polls (a bug)",
                self.describe()
            )),
        }
    }

    /// Extend the lease to `ttl` from now, if it is still ours.
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Renewal>;

    /// Release the lease if it is still ours; false if it was not.
    async fn release(&self, lease: &Lease) -> Result<bool>;

    /// Keep the lock until `remaining` from now without this process, then
    /// let it lapse (`--lock-at-least`). Returns false if the backend cannot
    /// (its leases die with the session); the caller then waits and releases.
    async fn release_after(&self, lease: &Lease, remaining: Duration) -> Result<bool> {
        let _ = (lease, remaining);
        Ok(false)
    }

    /// Evict every holder of a key; returns how many there were.
    async fn force_release(&self, namespace: &str, key: &str) -> Result<u64>;

    /// The state of the given keys, or of every held key if `keys` is empty.
    async fn status(&self, namespace: &str, keys: &[String]) -> Result<Vec<KeyStatus>>;

    async fn ping(&self) -> Result<PingInfo>;

    /// The server's wall clock now, if the service tells it (for `doctor`).
    async fn server_time(&self) -> Result<Option<SystemTime>> {
        Ok(None)
    }

    /// Findings of this backend's own for `doctor`, each step bounded by
    /// `timeout`.
    async fn doctor(&self, ttl: Duration, timeout: Duration) -> Vec<super::probe::Check> {
        let _ = (ttl, timeout);
        Vec::new()
    }

    /// What this backend can do beyond the core of the contract.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// Close connections cleanly before the process exits.
    async fn close(&self) {}
}

/// A service without a queue of its own: a waiter tries, and waits for a
/// change (a notification, or a short poll) before trying again.
#[async_trait]
pub trait Poll: Send + Sync {
    /// Try once to take a slot of `spec.key`, without waiting. With
    /// `join`, an attempt that fails takes (or keeps) this process's place
    /// in the key's line, in the same step, so that arrival order is the
    /// order of first attempts (fair queues); without it (`--no-wait`, or
    /// a deadline that has passed) it is one look that leaves no trace.
    /// The entries ahead are every holder and every earlier waiter:
    /// [`kit::admits`] decides over their modes.
    async fn try_acquire(&self, spec: &LockSpec, me: &Owner, join: bool) -> Result<Attempt>;

    /// Return when trying again might succeed, or at `until`. May return
    /// early; it must not sleep past `until`.
    async fn wait_change(&self, spec: &LockSpec, until: Option<Instant>) -> Result<()>;

    /// Remove holders of `spec.key` known dead ([`Holder::dead`]), each only
    /// if its entry is unchanged (a live entry is never removed), and
    /// waiters' entries ([`Holder::waiting`]) the same way; true if any
    /// was. A backend that ends them inside its attempt (SQL) keeps the
    /// default.
    async fn break_dead(&self, spec: &LockSpec, dead: &[Holder]) -> Result<bool> {
        let _ = (spec, dead);
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::{user_with_value, value_in};

    #[test]
    fn values_travel_in_the_owner_field() {
        let o = user_with_value("alice", "sched-a:8080 (primary)");
        assert_eq!(o, "alice (sched-a:8080 (primary))");
        assert_eq!(value_in(&o), Some("sched-a:8080 (primary)"));
        assert_eq!(value_in("alice"), None);
        assert_eq!(value_in(&user_with_value("bob", "a|b\nc")), Some("a_b_c"));
        assert_eq!(
            value_in(&user_with_value("bob", &"x".repeat(300)))
                .unwrap()
                .len(),
            200
        );
    }
}
