//! What every adapter uses, written once: one bounded call that types its
//! error (outage, full, denied), capped jittered backoff, and the registry
//! of queue entries a waiter has made, so that a waiter that is interrupted
//! removes them on its way out instead of holding up the waiters behind it.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

use super::{Attempt, Holder, LockSpec, Owner, Poll};
use crate::error::{Error, Retry, retry_of};
use crate::human::human_duration;

/// What kind of failure a service's error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Refused, reset, restarting, timed out: retried while waiting.
    Outage,
    /// Up, but no room for another client: waited out like a busy lock.
    Full,
    /// Authentication, authorisation or TLS trust failed: never retried.
    Denied,
}

/// The typed error for a failure of `kind`.
pub fn typed(kind: Kind, msg: String) -> anyhow::Error {
    match kind {
        Kind::Outage => Error::Unavailable(msg),
        Kind::Full => Error::Full(msg),
        Kind::Denied => Error::Denied(msg),
    }
    .into()
}

/// How the message of [`no_answer`] ends.
const NO_ANSWER: &str = "(--connect-timeout)";

/// The message for a step that got no answer in time.
pub fn no_answer(service: &str, what: &str, timeout: Duration) -> anyhow::Error {
    Error::Unavailable(format!(
        "{service}: {what}: no answer within {} {NO_ANSWER}",
        human_duration(timeout)
    ))
    .into()
}

/// Whether an error is [`no_answer`]'s: a call that waited its whole
/// bound for an answer.
fn unanswered(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        matches!(e.downcast_ref::<Error>(), Some(Error::Unavailable(m)) if m.ends_with(NO_ANSWER))
    })
}

/// One call to a service, bounded by `timeout`. Its error, or the
/// time-out, becomes a typed error naming the service and the step;
/// `kind` says what kind of failure the service's error is.
pub async fn bounded<T, E: Display>(
    service: &str,
    what: &str,
    timeout: Duration,
    f: impl Future<Output = Result<T, E>>,
    kind: impl FnOnce(&E) -> Kind,
) -> anyhow::Result<T> {
    match tokio::time::timeout(timeout, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(typed(kind(&e), format!("{service}: {what}: {e}"))),
        Err(_) => Err(no_answer(service, what, timeout)),
    }
}

/// A random duration between half of `d` and all of it, so that many
/// waiters retrying together spread out.
pub fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    let frac = f64::from(u32::from_ne_bytes(b)) / f64::from(u32::MAX);
    d / 2 + d.mul_f64(frac / 2.0)
}

/// Exponential backoff with jitter, capped.
#[derive(Debug, Clone)]
pub struct Backoff {
    step: Duration,
    cap: Duration,
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Backoff {
        Backoff { step: first, cap }
    }

    /// The next delay: a jittered step; the step doubles up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let d = jitter(self.step);
        self.step = (self.step * 2).min(self.cap);
        d
    }
}

/// Run `step` until it succeeds, the way a waiter must treat its backend
/// (the contract's "Riding out the backend"):
///
/// - an outage (refused, reset, timed out) is retried with capped, jittered
///   backoff for up to `patience` (`--connect-timeout`) per outage, and
///   never past `deadline`; then its error is returned (exit 69);
/// - a full server is retried the same way until `deadline` (None: for
///   ever); then its [`Error::Full`] is returned, for the caller to report
///   as busy (75);
/// - any other error is returned at once.
///
/// A step that ran longer than `patience` before failing was waiting, not
/// failing, so its failure starts a new outage. A `deadline` already past
/// (`--no-wait`) makes one attempt.
pub async fn patiently<T, F, Fut>(
    deadline: Option<Instant>,
    patience: Duration,
    step: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    retry_patiently(deadline, patience, false, step).await
}

/// [`patiently`] for a step that never waits on purpose (connecting):
/// an outage is counted from the start of the attempt that failed first,
/// and each attempt is cut off where the outage's patience ends, so a
/// server that never answers, or one that refuses, is given up on within
/// `patience` of the first attempt, not one attempt later.
pub async fn patiently_each<T, F, Fut>(
    deadline: Option<Instant>,
    patience: Duration,
    step: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    retry_patiently(deadline, patience, true, step).await
}

async fn retry_patiently<T, F, Fut>(
    deadline: Option<Instant>,
    patience: Duration,
    cap: bool,
    mut step: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    // On tokio's clock, so that tests can run it under paused time.
    use tokio::time::Instant;
    let deadline =
        deadline.map(|d| Instant::now() + d.saturating_duration_since(std::time::Instant::now()));
    let mut outage_since: Option<Instant> = None;
    let mut outage = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    let mut full = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let mut last: Option<anyhow::Error> = None;
    loop {
        let began = Instant::now();
        let result = if cap {
            let end = outage_since.unwrap_or(began) + patience;
            match tokio::time::timeout_at(end, step()).await {
                Ok(r) => r,
                // Cut off: the outage's last error says more than "no answer".
                Err(_) => {
                    return Err(last.unwrap_or_else(|| {
                        Error::Unavailable(format!(
                            "no answer within {} (--connect-timeout)",
                            human_duration(patience)
                        ))
                        .into()
                    }));
                }
            }
        } else {
            step().await
        };
        let err = match result {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Err(err);
        }
        let wake = match retry_of(&err) {
            Retry::Never => return Err(err),
            Retry::Full => {
                outage_since = None;
                now + full.next_delay()
            }
            Retry::Outage => {
                let took = now.duration_since(began);
                let long = took > patience + Duration::from_secs(1);
                let since = match outage_since {
                    Some(s) if !long => s,
                    // A step that never waits on purpose (`cap`) was
                    // already failing when it began; one that waits was not.
                    _ if cap && !long => began,
                    // A call that got no answer for its whole bound (a
                    // server that accepts and stays silent) has ridden out
                    // that much of the outage already: 69 within
                    // --connect-timeout, as for a refused connection.
                    _ if unanswered(&err) => now - took.min(patience),
                    _ => now,
                };
                outage_since = Some(since);
                let end = since + patience;
                if now >= end {
                    return Err(err);
                }
                (now + outage.next_delay()).min(end)
            }
        };
        tracing::warn!(
            event = "retrying",
            error = format!("{err:#}"),
            "backend not ready; trying again"
        );
        last = Some(err);
        let wake = deadline.map_or(wake, |d| d.min(wake));
        tokio::time::sleep_until(wake).await;
    }
}

/// How long after finding a holder's process gone its entry is removed:
/// the dead dlock's guard, woken by its death, is still SIGKILLing the
/// job's process group, and a new holder's child must not start beside it.
pub const BREAK_GRACE: Duration = Duration::from_millis(100);

/// Take a slot of `spec.key` on a service without a queue: try, and until
/// `deadline` wait for a change and try again. Holders known dead (a
/// process on this machine that is gone) are removed at once and the
/// attempt made again, `--no-wait` included: the liveness rule.
pub async fn poll(
    b: &dyn Poll,
    spec: &LockSpec,
    me: &Owner,
    deadline: Option<Instant>,
) -> anyhow::Result<Attempt> {
    loop {
        let join = deadline.is_none_or(|d| Instant::now() < d);
        match b.try_acquire(spec, me, join).await? {
            Attempt::Acquired(l) => return Ok(Attempt::Acquired(l)),
            Attempt::Busy(mut h) => {
                let dead: Vec<Holder> = h.iter().filter(|h| h.dead).cloned().collect();
                // Dead waiters ahead go at once; a dead holder's guard may
                // still be stopping its job.
                if dead.iter().any(|h| !h.waiting) {
                    tokio::time::sleep(BREAK_GRACE).await;
                }
                if !dead.is_empty() && b.break_dead(spec, &dead).await? {
                    tracing::info!(
                        event = "broke_dead",
                        key = spec.key,
                        holders = dead.len(),
                        "removed the entries of holders whose process is gone"
                    );
                    continue;
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    h.retain(|h| !h.waiting);
                    return Ok(Attempt::Busy(h));
                }
                b.wait_change(spec, deadline).await?;
            }
        }
    }
}

/// A lock request's or a queue entry's mode, as the admission rule reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One of at most `limit` holders (1: a mutex, N: a semaphore).
    Exclusive { limit: u32 },
    /// One of any number of shared holders (`--shared`).
    Shared,
}

impl Mode {
    pub fn is_shared(self) -> bool {
        self == Mode::Shared
    }

    /// The word `status --json` uses.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Shared => "shared",
            Mode::Exclusive { .. } => "exclusive",
        }
    }
}

/// The admission rule, the one every backend applies: may a request in
/// `mode` enter, given the modes of the entries `ahead` of it?
///
/// On a queue (ZooKeeper, etcd) the entries ahead are every entry created
/// before ours, holding or waiting. A polling backend (Redis, SQL, SQLite)
/// passes the holders and, for a shared request, the exclusive requests
/// waiting: so once a writer waits, readers that come after it wait behind
/// it, and writers are never starved.
///
/// A shared request enters when nothing ahead is exclusive; an exclusive
/// one when nothing ahead is shared and fewer than its limit are ahead.
pub fn admits(mode: Mode, ahead: &[Mode]) -> bool {
    match mode {
        Mode::Shared => ahead.iter().all(|m| m.is_shared()),
        Mode::Exclusive { limit } => {
            ahead.len() < limit.max(1) as usize && !ahead.iter().any(|m| m.is_shared())
        }
    }
}

/// On a queue, the entry ahead (its index in `ahead`, which is in queue
/// order) whose removal may let a request in `mode` enter: the one to
/// watch. `None` when [`admits`] says it may enter now.
pub fn blocker(mode: Mode, ahead: &[Mode]) -> Option<usize> {
    if admits(mode, ahead) {
        return None;
    }
    match mode {
        // The last exclusive entry ahead: once it is gone, so is every
        // exclusive one before it, unless it left out of turn (the caller
        // looks again in any case).
        Mode::Shared => ahead.iter().rposition(|m| !m.is_shared()),
        // With shared entries ahead: the one just ahead. Else the one
        // `limit` places ahead, whose leaving frees the slot we are next for.
        Mode::Exclusive { limit } => {
            let limit = limit.max(1) as usize;
            if ahead.iter().any(|m| m.is_shared()) || ahead.len() < limit {
                Some(ahead.len() - 1)
            } else {
                Some(ahead.len() - limit)
            }
        }
    }
}

/// On a queue whose entries are `modes`, in queue order: how many lead it
/// as holders, each admitted by [`admits`] given the entries before it (the
/// rest wait; once one waits, every entry after it waits too).
pub fn holding(modes: &[Mode]) -> usize {
    (0..modes.len())
        .find(|&i| !admits(modes[i], &modes[..i]))
        .unwrap_or(modes.len())
}

/// What a record's third field `N` holds, by the layout that writes it:
/// the fencing token on Redis (whose scripts write it, and rewrite it for
/// Redlock: 0 until then); the `--limit` on ZooKeeper and etcd (0: a
/// shared entry, which only etcd marks so), whose token is the service's
/// own counter (czxid, create revision) or, on ZooKeeper, `TOKEN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NField {
    Token,
    Limit,
}

/// dlock's holder record, stored with every lease on Redis, ZooKeeper and
/// etcd so that `status` can say who holds it:
/// `dlock1|ID|N|USER|HOST|PID|SINCE_MS[|TTL_MS|TOKEN|T[|HOST_ID|START]]`,
/// `TTL_MS`, `TOKEN` and `T` ZooKeeper's ([`NField`] says what `N` is), and
/// `HOST_ID|START` the liveness of a process that holds while it runs
/// ([`Record::live`]). Parsed, each field has one meaning whatever the
/// backend. Anything else is a foreign client's value.
///
/// Older readers split a record into at most 10 fields, so the liveness
/// fields reach them folded into `T`: they are never written beside `T`
/// (a node that outlives its session belongs to no running process).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// Names the lease: the owner's secret (Redis, ZooKeeper), the lease id
    /// in hex (etcd).
    pub id: String,
    /// The fencing token the record carries, if it carries one: Redis's
    /// once fenced; a ZooKeeper node's that took over a `run`'s lease
    /// (`--lock-at-least`). Elsewhere the service's counter is the token.
    pub token: Option<u64>,
    /// The `--limit` of an exclusive entry, where recorded (ZooKeeper,
    /// etcd).
    pub limit: Option<u32>,
    /// A shared entry, where the record says so (etcd; the other backends
    /// tell shared entries by where they are).
    pub shared: bool,
    pub user: String,
    pub host: String,
    pub pid: Option<u32>,
    /// When it was taken, in milliseconds since the epoch.
    pub since_ms: Option<u64>,
    /// The TTL of a ZooKeeper node that outlives its session, judged from
    /// its `mtime`.
    pub ttl_ms: Option<u64>,
    /// A ZooKeeper server TTL node (its TTL cannot change).
    pub ttl_node: bool,
    /// Where and which process holds this entry while it runs (a `run`, an
    /// `elect` candidate, a waiter): its [`crate::host::host_id`] and
    /// start time, so that another process on the same machine can tell
    /// that it is dead ([`Record::dead_here`]). None for a handle's lease
    /// (`dlock acquire`), whose process exits by design.
    pub live: Option<(String, u64)>,
    /// The semaphore slot of an exclusive entry taken with `--limit` > 1
    /// (`SLOT`, the 13th field, after the liveness fields, written only
    /// where there is one: a mutex is slot 0). A reader that splits into
    /// 12 fields sees it folded into `START`, so it loses only the
    /// liveness of a semaphore holder, never who holds.
    pub slot: Option<u32>,
}

impl Record {
    /// The record for `me`, taking a lease named `id` now.
    pub fn new(id: impl Into<String>, me: &Owner) -> Record {
        let since_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Record {
            id: id.into(),
            user: me.user.clone(),
            host: me.host.clone(),
            pid: Some(me.pid),
            since_ms: Some(since_ms),
            live: (me.kind == crate::backend::LeaseKind::Run && !me.host_id.is_empty())
                .then(|| (me.host_id.clone(), me.proc_start)),
            ..Record::default()
        }
    }

    /// Whether the process that wrote this entry is known to be gone: it
    /// ran on this machine (the same boot and PID namespace) and no
    /// process with its pid and start time exists. Entries from other
    /// machines, handles' leases and foreign clients' are never dead here:
    /// they end with their TTL or session.
    pub fn dead_here(&self) -> bool {
        match (&self.live, self.pid) {
            (Some((host_id, start)), Some(pid)) => {
                *host_id == crate::host::host_id() && !crate::host::process_alive(pid, *start)
            }
            _ => false,
        }
    }

    /// The record in a stored value, if it is one of dlock's, whose `N` is
    /// `n`. Every value older versions wrote parses.
    pub fn parse(value: &str, n: NField) -> Option<Record> {
        let f: Vec<&str> = value.splitn(13, '|').collect();
        if f.len() < 7 || f[0] != "dlock1" {
            return None;
        }
        let third: Option<u64> = f[2].parse().ok();
        let num = |i: usize| f.get(i).and_then(|t| t.parse().ok());
        let (token, limit, shared) = match n {
            NField::Token => (third.filter(|t| *t > 0), None, false),
            NField::Limit => (
                num(8),
                third
                    .filter(|l| *l > 0)
                    .map(|l| l.min(u64::from(u32::MAX)) as u32),
                third == Some(0),
            ),
        };
        Some(Record {
            id: f[1].to_string(),
            token,
            limit,
            shared,
            user: f[3].to_string(),
            host: f[4].to_string(),
            pid: f[5].parse().ok(),
            since_ms: f[6].parse().ok(),
            ttl_ms: num(7),
            ttl_node: f.get(9) == Some(&"T"),
            live: match (f.get(10), f.get(11).and_then(|s| s.parse().ok())) {
                (Some(h), Some(start)) if !h.is_empty() => Some((h.to_string(), start)),
                _ => None,
            },
            slot: num(12).map(|s| s.min(u64::from(u32::MAX)) as u32),
        })
    }

    /// The value to store, with `N` as `n` says.
    pub fn encode(&self, n: NField) -> String {
        let third = match n {
            NField::Token => self.token.unwrap_or(0),
            NField::Limit if self.shared => 0,
            NField::Limit => u64::from(self.limit.unwrap_or(1)),
        };
        let opt = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
        let mut s = format!(
            "dlock1|{}|{third}|{}|{}|{}|{}",
            self.id,
            self.user,
            self.host,
            opt(self.pid.map(u64::from)),
            opt(self.since_ms)
        );
        // ZooKeeper's fields: `TOKEN` (maybe empty) and `T` need `TTL_MS`;
        // the liveness fields need all three (maybe empty), and never go
        // beside `T` (see the type's note on older readers).
        let token = self.token.filter(|_| n == NField::Limit);
        let live = self.live.as_ref().filter(|_| !self.ttl_node);
        let slot = self.slot.filter(|_| !self.ttl_node);
        if self.ttl_ms.is_some() || live.is_some() || slot.is_some() {
            s.push_str(&format!("|{}", opt(self.ttl_ms)));
            if token.is_some() || self.ttl_node || live.is_some() || slot.is_some() {
                s.push_str(&format!("|{}", opt(token)));
            }
            if self.ttl_node {
                s.push_str("|T");
            } else if let Some((host_id, start)) = live {
                s.push_str(&format!("||{host_id}|{start}"));
            } else if slot.is_some() {
                s.push_str("|||");
            }
            if let Some(slot) = slot {
                s.push_str(&format!("|{slot}"));
            }
        }
        s
    }

    /// The fields a record of a running process ends with, for a layout
    /// that writes its record elsewhere (Redis's scripts): empty, or
    /// `||||HOST_ID|START` after `SINCE_MS`.
    pub fn live_suffix(me: &Owner) -> String {
        match (me.kind, me.host_id.is_empty()) {
            (crate::backend::LeaseKind::Run, false) => {
                format!("||||{}|{}", me.host_id, me.proc_start)
            }
            _ => String::new(),
        }
    }

    /// The holder it describes; `token` is the service's own (a record's
    /// own token comes first) and the expiry is known otherwise.
    pub fn holder(&self, token: Option<u64>, expires_at: Option<std::time::SystemTime>) -> Holder {
        Holder {
            owner: Some(self.user.clone()),
            host: Some(self.host.clone()),
            pid: self.pid,
            token: self.token.or(token),
            acquired_at: self
                .since_ms
                .map(|ms| std::time::UNIX_EPOCH + Duration::from_millis(ms)),
            expires_at,
            dead: self.dead_here(),
            shared: self.shared,
            value: None,
            entry: None,
            slot: self.slot,
            waiting: false,
        }
    }
}

/// A waiter's poll interval where nothing wakes it (a handle's lease, a
/// semaphore): 5 ms, doubling to 100 ms, and back to 5 ms after a hand-off.
pub struct PollBackoff(std::sync::Mutex<Duration>);

impl Default for PollBackoff {
    fn default() -> PollBackoff {
        PollBackoff(std::sync::Mutex::new(PollBackoff::MIN))
    }
}

impl PollBackoff {
    const MIN: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_millis(100);

    /// The next interval to sleep.
    pub fn next(&self) -> Duration {
        let mut p = self.0.lock().unwrap();
        let cur = *p;
        *p = (cur * 2).min(Self::MAX);
        cur
    }

    /// Something happened: poll fast again.
    pub fn reset(&self) {
        *self.0.lock().unwrap() = Self::MIN;
    }
}

/// Entries a waiter has put in a service's queue and not yet resolved
/// (acquired or removed). An entry is added *before* the call that waits
/// on it, so a waiter interrupted at any point leaves it here, and the
/// backend's `close` removes what is left.
pub struct Queued<T>(std::sync::Mutex<Vec<T>>);

impl<T> Default for Queued<T> {
    fn default() -> Queued<T> {
        Queued(std::sync::Mutex::new(Vec::new()))
    }
}

impl<T: PartialEq> Queued<T> {
    pub fn add(&self, entry: T) {
        self.0.lock().unwrap().push(entry);
    }

    /// The entry was resolved: it is a lease now, or it was removed.
    pub fn resolved(&self, entry: &T) {
        self.0.lock().unwrap().retain(|e| e != entry);
    }

    /// Every entry left, for `close` to remove.
    pub fn take(&self) -> Vec<T> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn admission_rule() {
        use Mode::*;
        let x = Exclusive { limit: 1 };
        let sem = Exclusive { limit: 3 };
        assert!(admits(x, &[]));
        assert!(!admits(x, &[x]));
        assert!(!admits(x, &[Shared]));
        assert!(admits(Shared, &[]));
        assert!(admits(Shared, &[Shared, Shared]));
        assert!(!admits(Shared, &[Shared, x]));
        assert!(admits(sem, &[sem, sem]));
        assert!(!admits(sem, &[sem, sem, sem]));
        assert!(!admits(sem, &[Shared]));
        assert_eq!(blocker(x, &[]), None);
        assert_eq!(blocker(x, &[x, x, x]), Some(2));
        assert_eq!(blocker(sem, &[sem, sem, sem, sem]), Some(1));
        assert_eq!(blocker(sem, &[Shared, Shared]), Some(1));
        assert_eq!(blocker(Shared, &[Shared, x, Shared, x, Shared]), Some(3));
        assert_eq!(blocker(Shared, &[Shared, Shared]), None);
        assert_eq!(holding(&[]), 0);
        assert_eq!(holding(&[Shared, Shared, x, Shared]), 2);
        assert_eq!(holding(&[x, Shared, Shared]), 1);
        assert_eq!(holding(&[sem, sem, sem, sem]), 3);
        assert_eq!(holding(&[Shared, Shared, Shared]), 3);
    }

    use super::*;
    use tokio::time::Instant as Clock;

    #[test]
    fn backoff_is_jittered_and_capped() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let d: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[1] >= Duration::from_millis(100) && d[1] <= Duration::from_millis(200));
        for x in &d[2..] {
            assert!(*x >= Duration::from_millis(200) && *x <= Duration::from_millis(400));
        }
    }

    #[test]
    fn holder_records_round_trip() {
        let me = Owner {
            id: "s3cr3t".into(),
            user: "ci".into(),
            host: "runner-7".into(),
            pid: 81234,
            host_id: String::new(),
            proc_start: 0,
            kind: crate::backend::LeaseKind::Run,
            value: None,
        };
        // Written for each N, read back with the same meaning.
        let mut r = Record::new("abc", &me);
        r.limit = Some(3);
        let v = r.encode(NField::Limit);
        assert!(v.starts_with("dlock1|abc|3|ci|runner-7|81234|"), "{v}");
        assert_eq!(v.split('|').count(), 7);
        assert_eq!(Record::parse(&v, NField::Limit), Some(r.clone()));
        let h = r.holder(Some(9), None);
        assert_eq!((h.token, h.owner.as_deref()), (Some(9), Some("ci")));
        assert!(h.acquired_at.is_some() && !h.shared);
        let shared = Record {
            limit: None,
            shared: true,
            ..r.clone()
        };
        let v = shared.encode(NField::Limit);
        assert!(v.starts_with("dlock1|abc|0|"), "{v}");
        assert_eq!(Record::parse(&v, NField::Limit), Some(shared.clone()));
        assert!(shared.holder(None, None).shared);
        let fenced = Record {
            limit: None,
            token: Some(7),
            ..r.clone()
        };
        let v = fenced.encode(NField::Token);
        assert!(v.starts_with("dlock1|abc|7|"), "{v}");
        assert_eq!(Record::parse(&v, NField::Token), Some(fenced.clone()));
        assert_eq!(fenced.holder(Some(1), None).token, Some(7));
        // N is read as the layout that wrote it says, never both ways.
        let as_limit = Record::parse(&v, NField::Limit).unwrap();
        assert_eq!((as_limit.limit, as_limit.token), (Some(7), None));
        // What older versions wrote, byte for byte, each field typed.
        let redis = "dlock1|f00d|7|root|box|42|1700000000000";
        let r = Record::parse(redis, NField::Token).unwrap();
        assert_eq!(
            (r.id.as_str(), r.token, r.limit, r.shared, r.pid, r.since_ms),
            (
                "f00d",
                Some(7),
                None,
                false,
                Some(42),
                Some(1_700_000_000_000)
            )
        );
        assert_eq!(r.encode(NField::Token), redis);
        // Redlock before the fencing round: no token yet.
        let r = Record::parse("dlock1|f00d|0|root|box|42|1", NField::Token).unwrap();
        assert_eq!((r.token, r.shared), (None, false));
        let etcd_shared = "dlock1|694d|0|me|h|1|0";
        let r = Record::parse(etcd_shared, NField::Limit).unwrap();
        assert_eq!((r.limit, r.shared, r.token), (None, true, None));
        assert_eq!(r.encode(NField::Limit), etcd_shared);
        for zk in [
            "dlock1|id|1|me|host|42|1000",
            "dlock1|id|1|me|host|0|1000|500",
            "dlock1|id|3|me|host|0|1000|500|7",
            "dlock1|id|1|me|host|0|1000|500||T",
            "dlock1|id|1|me|host|0|1000|500|7|T",
        ] {
            let r = Record::parse(zk, NField::Limit).unwrap();
            assert_eq!(r.encode(NField::Limit), zk);
        }
        let r = Record::parse("dlock1|id|3|me|host|0|1000|500|7|T", NField::Limit).unwrap();
        assert_eq!(
            (r.limit, r.ttl_ms, r.token, r.ttl_node, r.shared),
            (Some(3), Some(500), Some(7), true, false)
        );
        // A running process's record carries its liveness, after empty
        // ZooKeeper fields; older readers (10 fields at most) see them
        // folded into `T`, which they do not take for a TTL node.
        let live = Record {
            live: Some(("boot/pid:[1]".into(), 4242)),
            since_ms: Some(1000),
            limit: Some(1),
            ..Record::new("abc", &me)
        };
        let v = live.encode(NField::Limit);
        assert!(v.ends_with("|1000||||boot/pid:[1]|4242"), "{v}");
        assert_eq!(Record::parse(&v, NField::Limit), Some(live.clone()));
        let old_reader: Vec<&str> = v.splitn(10, '|').collect();
        assert_ne!(old_reader[9], "T");
        assert_eq!(old_reader[7], "", "an older reader sees no TTL_MS");
        let zk_live = Record {
            ttl_ms: Some(500),
            token: Some(7),
            ..live.clone()
        };
        let v = zk_live.encode(NField::Limit);
        assert!(v.ends_with("|500|7||boot/pid:[1]|4242"), "{v}");
        assert_eq!(Record::parse(&v, NField::Limit), Some(zk_live));
        // Never beside `T`: a TTL node belongs to no running process.
        let ttl_node = Record {
            ttl_ms: Some(500),
            ttl_node: true,
            ..live.clone()
        };
        let v = ttl_node.encode(NField::Limit);
        assert!(v.ends_with("|500||T"), "{v}");
        // Redis's scripts append the suffix to what they write.
        let me_live = Owner {
            host_id: "boot/pid:[1]".into(),
            proc_start: 4242,
            ..me.clone()
        };
        let v = format!(
            "dlock1|f00d|7|root|box|42|1700000000000{}",
            Record::live_suffix(&me_live)
        );
        let r = Record::parse(&v, NField::Token).unwrap();
        assert_eq!((r.token, r.live.clone()), (Some(7), live.live.clone()));
        assert_eq!(r.encode(NField::Token), v);
        assert_eq!(Record::live_suffix(&me), "", "no host id, no liveness");
        // A semaphore holder's slot, the 13th field, with or without the
        // liveness before it; a reader of 12 fields keeps who holds.
        let slotted = Record {
            slot: Some(2),
            limit: Some(3),
            ..live.clone()
        };
        let v = slotted.encode(NField::Limit);
        assert!(v.ends_with("||||boot/pid:[1]|4242|2"), "{v}");
        assert_eq!(Record::parse(&v, NField::Limit), Some(slotted.clone()));
        assert_eq!(slotted.holder(None, None).slot, Some(2));
        let twelve: Vec<&str> = v.splitn(12, '|').collect();
        assert_eq!((twelve[3], twelve[5]), ("ci", "81234"));
        let handle_slot = Record {
            live: None,
            ..slotted.clone()
        };
        let v = handle_slot.encode(NField::Limit);
        assert!(v.ends_with("|1000||||||2"), "{v}");
        assert_eq!(Record::parse(&v, NField::Limit), Some(handle_slot));
        let lapsing = Record {
            ttl_ms: Some(500),
            ttl_node: true,
            ..slotted.clone()
        };
        assert!(lapsing.encode(NField::Limit).ends_with("|500||T"));
        // A user or host with a `|` was never written (Redis and elect
        // replace it); not dlock's, or not a record at all:
        assert_eq!(Record::parse("a redis-py token", NField::Token), None);
        assert_eq!(Record::parse("dlock1|only|three", NField::Limit), None);
        assert_eq!(Record::parse("", NField::Limit), None);
        assert_eq!(Record::parse("10.0.0.1", NField::Limit), None);
    }

    /// The liveness rule in the polling engine: a key held only by dead
    /// holders is taken at once, `--no-wait` included; a live holder is
    /// never broken.
    #[tokio::test(flavor = "current_thread")]
    async fn the_engine_removes_dead_holders_and_tries_again_at_once() {
        use crate::backend::{Lease, LeaseKind};
        use std::sync::Mutex;
        struct Fake {
            holders: Mutex<Vec<Holder>>,
            broken: Mutex<usize>,
        }
        #[async_trait::async_trait]
        impl Poll for Fake {
            async fn try_acquire(
                &self,
                spec: &LockSpec,
                _: &Owner,
                _: bool,
            ) -> anyhow::Result<Attempt> {
                let h = self.holders.lock().unwrap().clone();
                if !h.is_empty() {
                    return Ok(Attempt::Busy(h));
                }
                Ok(Attempt::Acquired(Lease {
                    namespace: spec.namespace.clone(),
                    key: spec.key.clone(),
                    token: 1,
                    id: "me".into(),
                    ttl: spec.ttl,
                    granted_at: Instant::now(),
                    shared: false,
                    slot: Some(0),
                }))
            }
            async fn wait_change(&self, _: &LockSpec, _: Option<Instant>) -> anyhow::Result<()> {
                Ok(())
            }
            async fn break_dead(&self, _: &LockSpec, dead: &[Holder]) -> anyhow::Result<bool> {
                assert!(
                    dead.iter().all(|h| h.dead),
                    "a live holder offered to break"
                );
                *self.broken.lock().unwrap() += dead.len();
                self.holders.lock().unwrap().retain(|h| !h.dead);
                Ok(!dead.is_empty())
            }
        }
        let spec = LockSpec {
            namespace: "ns".into(),
            key: "k".into(),
            ttl: Duration::from_secs(60),
            limit: 1,
            shared: false,
        };
        let me = Owner {
            id: "me".into(),
            user: "u".into(),
            host: "h".into(),
            pid: 1,
            host_id: String::new(),
            proc_start: 0,
            kind: LeaseKind::Run,
            value: None,
        };
        let dead = Holder {
            dead: true,
            ..Holder::default()
        };
        let fake = Fake {
            holders: Mutex::new(vec![dead.clone()]),
            broken: Mutex::new(0),
        };
        // --no-wait: the deadline has passed, one look; the dead holder goes.
        let got = poll(&fake, &spec, &me, Some(Instant::now())).await.unwrap();
        assert!(matches!(got, Attempt::Acquired(_)));
        assert_eq!(*fake.broken.lock().unwrap(), 1);
        // A live holder beside a dead one: the dead one goes, the key stays busy.
        *fake.holders.lock().unwrap() = vec![dead, Holder::default()];
        let got = poll(&fake, &spec, &me, Some(Instant::now())).await.unwrap();
        assert!(matches!(got, Attempt::Busy(h) if h.len() == 1 && !h[0].dead));
        assert_eq!(*fake.broken.lock().unwrap(), 2);
    }

    #[test]
    fn a_local_entry_whose_process_is_gone_is_dead() {
        let here = crate::host::host_id();
        let me = std::process::id();
        let start = crate::host::proc_start(me).unwrap();
        let rec = |host_id: &str, pid: u32, start: u64| Record {
            pid: Some(pid),
            live: Some((host_id.to_string(), start)),
            ..Record::default()
        };
        assert!(!rec(&here, me, start).dead_here(), "we are alive");
        assert!(rec(&here, me, start + 1).dead_here(), "pid reused");
        // A child that exited and was reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let cstart = crate::host::proc_start(pid).unwrap_or(0);
        child.wait().unwrap();
        assert!(rec(&here, pid, cstart).dead_here());
        assert!(rec(&here, pid, cstart).holder(None, None).dead);
        // Another machine's entry, a handle's, a foreign one: never dead here.
        assert!(!rec("other-boot/pid:[1]", pid, cstart).dead_here());
        let handle = Record {
            pid: Some(pid),
            ..Record::default()
        };
        assert!(!handle.dead_here());
    }

    #[test]
    fn queued_entries_are_left_until_resolved() {
        let q = Queued::default();
        q.add(1);
        q.add(2);
        q.resolved(&1);
        assert_eq!(q.take(), vec![2]);
        assert!(q.take().is_empty());
    }

    /// A step failing with `kind` `fails` times, then succeeding.
    fn flaky(
        kind: Kind,
        fails: usize,
        calls: &std::cell::Cell<usize>,
    ) -> impl FnMut() -> std::future::Ready<anyhow::Result<()>> + '_ {
        move || {
            calls.set(calls.get() + 1);
            std::future::ready(if calls.get() <= fails {
                Err(typed(kind, "down".into()))
            } else {
                Ok(())
            })
        }
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn an_outage_shorter_than_the_patience_is_ridden_out() {
        let calls = std::cell::Cell::new(0);
        let t = Clock::now();
        patiently(None, Duration::from_secs(5), flaky(Kind::Outage, 5, &calls))
            .await
            .unwrap();
        assert_eq!(calls.get(), 6);
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    /// Connecting: a server that never answers, or one whose every attempt
    /// takes most of the patience to fail (a pool retrying a refusal), is
    /// given up on within the patience of the first attempt.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn connecting_is_given_up_within_the_patience() {
        let patience = Duration::from_secs(2);
        let t = Clock::now();
        let e = patiently_each(None, patience, || {
            std::future::pending::<anyhow::Result<()>>()
        })
        .await
        .unwrap_err();
        assert_eq!(retry_of(&e), Retry::Outage);
        assert_eq!(t.elapsed(), patience, "a mute server");
        let slow_refusal = || async {
            tokio::time::sleep(Duration::from_millis(900)).await;
            Err::<(), _>(typed(Kind::Outage, "refused".into()))
        };
        let t = Clock::now();
        let e = patiently_each(None, patience, slow_refusal)
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("refused"), "{e:#}");
        assert!(t.elapsed() <= patience, "took {:?}", t.elapsed());
        // Before, the outage was counted from the first failure: 3.7 s.
        let t = Clock::now();
        patiently(None, patience, slow_refusal).await.unwrap_err();
        assert!(t.elapsed() > patience + Duration::from_millis(500));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_longer_outage_ends_in_its_error_within_the_patience() {
        let calls = std::cell::Cell::new(0);
        let t = Clock::now();
        let e = patiently(
            None,
            Duration::from_secs(5),
            flaky(Kind::Outage, 1000, &calls),
        )
        .await
        .unwrap_err();
        assert_eq!(retry_of(&e), Retry::Outage);
        assert!(t.elapsed() >= Duration::from_secs(5) && t.elapsed() < Duration::from_secs(6));
        // Never past the --wait deadline, however patient.
        let t = Clock::now();
        let d = Some(Instant::now() + Duration::from_secs(2));
        patiently(
            d,
            Duration::from_secs(60),
            flaky(Kind::Outage, 10_000, &calls),
        )
        .await
        .unwrap_err();
        assert!(t.elapsed() <= Duration::from_secs(2));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_silent_server_ends_within_the_patience() {
        // Every attempt waits out its bound for an answer, as a call to a
        // server that accepts and never answers does.
        let patience = Duration::from_secs(2);
        let calls = std::cell::Cell::new(0);
        let t = Clock::now();
        let e = patiently(None, patience, || {
            calls.set(calls.get() + 1);
            async move {
                tokio::time::sleep(patience).await;
                Err::<(), _>(no_answer("svc", "connect", patience))
            }
        })
        .await
        .unwrap_err();
        assert_eq!(retry_of(&e), Retry::Outage);
        assert_eq!(calls.get(), 1);
        assert!(t.elapsed() < patience + Duration::from_millis(100));
        // A quick failure after a long wait (the server went away while
        // we waited on the lock) is ridden out for the patience as ever.
        let calls = std::cell::Cell::new(0);
        let t = Clock::now();
        patiently(None, patience, || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                match n {
                    1 => {
                        tokio::time::sleep(patience).await;
                        Err(typed(Kind::Outage, "refused".into()))
                    }
                    2..=5 => Err(typed(Kind::Outage, "refused".into())),
                    _ => Ok(()),
                }
            }
        })
        .await
        .unwrap();
        assert!(t.elapsed() > patience);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_full_server_is_waited_out_until_the_deadline_and_denial_is_final() {
        let calls = std::cell::Cell::new(0);
        let t = Clock::now();
        patiently(None, Duration::from_secs(1), flaky(Kind::Full, 30, &calls))
            .await
            .unwrap();
        assert!(
            t.elapsed() > Duration::from_secs(10),
            "full is waited out past --connect-timeout"
        );
        let d = Some(Instant::now() + Duration::from_secs(3));
        let e = patiently(d, Duration::from_secs(1), flaky(Kind::Full, 10_000, &calls))
            .await
            .unwrap_err();
        assert_eq!(retry_of(&e), Retry::Full);
        let calls = std::cell::Cell::new(0);
        patiently(
            None,
            Duration::from_secs(5),
            flaky(Kind::Denied, 10, &calls),
        )
        .await
        .unwrap_err();
        assert_eq!(calls.get(), 1);
        // --no-wait: one attempt.
        let calls = std::cell::Cell::new(0);
        patiently(
            Some(Instant::now()),
            Duration::from_secs(5),
            flaky(Kind::Outage, 10, &calls),
        )
        .await
        .unwrap_err();
        assert_eq!(calls.get(), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bounded_types_errors_and_timeouts() {
        let e = bounded(
            "svc",
            "step",
            Duration::from_secs(1),
            async { Err::<(), _>("too many") },
            |_| Kind::Full,
        )
        .await
        .unwrap_err();
        assert_eq!(crate::error::retry_of(&e), crate::error::Retry::Full);
        assert_eq!(e.to_string(), "svc: step: too many");
        let e = bounded(
            "svc",
            "step",
            Duration::from_millis(10),
            std::future::pending::<Result<(), String>>(),
            |_| Kind::Denied,
        )
        .await
        .unwrap_err();
        assert_eq!(crate::error::retry_of(&e), crate::error::Retry::Outage);
        assert!(e.to_string().contains("no answer within 10ms"), "{e}");
    }
}
