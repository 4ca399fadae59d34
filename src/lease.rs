//! Held leases: taking several keys all or nothing, and keeping them alive.
//!
//! The [`Keeper`] keeps one lease clock for every held lease: a lease
//! granted or renewed by a request sent at `t` is safe until
//! `t + ttl - margin` whatever the network says (never counted from a later
//! moment: that is what keeps it safe), and renewals run on that same clock,
//! a third of the TTL after `t`. A lease that aged before the keeper got it
//! (an etcd lease kept alive while its owner waited in line) is therefore
//! renewed at once, not a third of the TTL after the wait ended. Each call
//! is bounded by a timeout. Loss is declared by the deadline, not only by an
//! error: the keeper reports it `grace` before the deadline, so the
//! supervisor's SIGTERM-then-SIGKILL fits inside the lease, and only when
//! renewals really failed (or the process was frozen). It reports it then
//! even while a renewal call hangs, not when the call's bound runs out, and
//! a renewal that lands after the report moves the deadline but does not
//! take the loss back: the child is being stopped either way.
//!
//! The keeper is the one owner of held leases, and lets go of them on every
//! path: [`Keeper::release`] (the normal end), [`Keeper::hand_over`] (to a
//! handle, or to lapse by themselves), or, when it is dropped still holding
//! some (an error cut the command short), its `Drop`: that cannot await a
//! release, so it stops the renewals and leaves the leases to
//! [`release_dropped`], which the invocation awaits before it closes the
//! backend. Only a panic (or SIGKILL) skips that: its leases lapse within
//! their TTL, and the supervisor's guard has stopped the child.
//!
//! The keeper runs on tokio's clock ([`TokioInstant`]): the same as the
//! system's monotonic clock in dlock, and one its tests can pause and
//! advance, so they take milliseconds. What it hands out (the deadline,
//! a loss's expiry) is a `std` [`Instant`], as the supervisor and its guard
//! process use.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant as TokioInstant;

use crate::backend::{Attempt, Backend, Holder, Lease, LockSpec, Owner, Renewal, kit};
use crate::config::{LockSettings, Wait};
use crate::error::{Retry, retry_of};

/// What the supervisor is told when a lease is lost.
#[derive(Debug, Clone)]
pub struct Loss {
    pub message: String,
    /// When the lease can have expired on the server, if it is not gone yet
    /// (renewals failing); None if the server already said it is gone.
    pub expires: Option<Instant>,
}

/// The clock allowance taken off every lease: the server's clock may run a
/// little faster than ours, and a request takes time to be processed.
pub fn margin(ttl: Duration) -> Duration {
    ttl / 50 + Duration::from_millis(10)
}

struct State {
    leases: Vec<Lease>,
    /// The earliest moment any held lease can expire on the server.
    safe_until: Option<TokioInstant>,
}

/// When the leases that are safe until `safe_until` are due for renewal: a
/// third of the TTL after the server last extended the earliest of them.
fn renewal_due(safe_until: TokioInstant, ttl: Duration) -> TokioInstant {
    let valid = ttl.saturating_sub(margin(ttl));
    safe_until
        .checked_sub(valid.saturating_sub(ttl / 3))
        .unwrap_or(safe_until)
}

/// When a lease that no renewal has extended yet can expire: counted from
/// its grant.
fn lease_until(lease: &Lease) -> TokioInstant {
    TokioInstant::from_std(lease.granted_at) + lease.ttl.saturating_sub(margin(lease.ttl))
}

/// Keeps leases alive in a background task while they are held, and lets
/// go of them (see the module's notes).
pub struct Keeper {
    backend: Arc<dyn Backend>,
    state: Arc<Mutex<State>>,
    lost: watch::Receiver<Option<Loss>>,
    safe_until: watch::Receiver<Option<Instant>>,
    /// Wakes the renewal task when a lease is added (it may be due now).
    added: Arc<tokio::sync::Notify>,
    task: JoinHandle<()>,
}

impl Keeper {
    /// `grace` is how long before the deadline the loss is reported.
    pub fn start(
        backend: Arc<dyn Backend>,
        ttl: Duration,
        call_timeout: Duration,
        grace: Duration,
    ) -> Keeper {
        let state = Arc::new(Mutex::new(State {
            leases: Vec::new(),
            safe_until: None,
        }));
        let (lost_tx, lost) = watch::channel(None);
        let (safe_tx, safe_until) = watch::channel(None);
        let added = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn(renew_loop(
            backend.clone(),
            state.clone(),
            added.clone(),
            ttl,
            call_timeout,
            grace,
            (lost_tx, safe_tx),
        ));
        Keeper {
            backend,
            state,
            lost,
            safe_until,
            added,
            task,
        }
    }

    pub fn add(&self, lease: Lease) {
        let mut st = self.state.lock().unwrap();
        let until = lease_until(&lease);
        st.safe_until = Some(st.safe_until.map_or(until, |u| u.min(until)));
        st.leases.push(lease);
        drop(st);
        self.added.notify_one();
    }

    pub fn leases(&self) -> Vec<Lease> {
        self.state.lock().unwrap().leases.clone()
    }

    pub fn safe_until(&self) -> Option<Instant> {
        self.state
            .lock()
            .unwrap()
            .safe_until
            .map(TokioInstant::into_std)
    }

    pub fn lost(&self) -> watch::Receiver<Option<Loss>> {
        self.lost.clone()
    }

    pub fn safe_until_updates(&self) -> watch::Receiver<Option<Instant>> {
        self.safe_until.clone()
    }

    /// Stop renewing and take the leases out: nothing is held after.
    fn take(&self) -> Vec<Lease> {
        self.task.abort();
        std::mem::take(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()).leases)
    }

    /// Stop renewing and hand the leases over (to a handle, or to lapse by
    /// themselves).
    pub fn hand_over(self) -> Vec<Lease> {
        self.take()
    }

    /// Let go: stop renewing and release every held lease, newest first.
    /// Returns those that were no longer ours (broken or expired). Best
    /// effort: a lease that cannot be released ends with its TTL.
    pub async fn release(self) -> Vec<Lease> {
        let leases = self.take();
        release_all(self.backend.as_ref(), &leases).await
    }
}

/// Leases whose keeper was dropped still holding them, with their backend:
/// [`release_dropped`] lets go of them. One list for the process, which
/// runs one invocation.
type Dropped = Vec<(Arc<dyn Backend>, Vec<Lease>)>;
static DROPPED: Mutex<Dropped> = Mutex::new(Vec::new());

impl Drop for Keeper {
    /// The backstop: a drop cannot await a release, so the leases wait in
    /// [`DROPPED`]; never renewed again, they lapse by themselves at worst.
    fn drop(&mut self) {
        let leases = self.take();
        if !leases.is_empty() {
            tracing::debug!(
                n = leases.len(),
                "leases dropped while held: released at the end"
            );
            DROPPED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((self.backend.clone(), leases));
        }
    }
}

/// Release the leases of keepers dropped while holding them; called before
/// a backend is closed.
pub async fn release_dropped() {
    let dropped = std::mem::take(&mut *DROPPED.lock().unwrap_or_else(|e| e.into_inner()));
    for (backend, leases) in dropped {
        release_all(backend.as_ref(), &leases).await;
    }
}

/// Report the loss the lease clock foresees: the leases, safe until
/// `until`, could not be renewed in time. The keeper keeps trying: every
/// renewal that still lands keeps the lock ours while the child is being
/// stopped.
fn report_foreseen(lost: &watch::Sender<Option<Loss>>, backend: &dyn Backend, until: TokioInstant) {
    let now = TokioInstant::now();
    tracing::warn!(event = "lost", "lease could not be renewed in time");
    let _ = lost.send(Some(Loss {
        message: format!(
            "could not renew the lease with {} in time; it may expire in {}",
            backend.describe(),
            crate::status::human_duration(until.saturating_duration_since(now))
        ),
        expires: Some(until.into_std()),
    }));
}

/// Await `call`; if `at` comes first, run `then` at `at` and await the
/// call on. A call that ends at `at` itself goes first.
async fn meanwhile<T>(
    call: impl Future<Output = T>,
    at: Option<TokioInstant>,
    then: impl FnOnce(),
) -> T {
    let mut call = std::pin::pin!(call);
    if let Some(at) = at {
        tokio::select! {
            biased;
            out = &mut call => return out,
            _ = tokio::time::sleep_until(at) => then(),
        }
    }
    call.await
}

async fn renew_loop(
    backend: Arc<dyn Backend>,
    state: Arc<Mutex<State>>,
    added: Arc<tokio::sync::Notify>,
    ttl: Duration,
    call_timeout: Duration,
    grace: Duration,
    (lost, safe): (watch::Sender<Option<Loss>>, watch::Sender<Option<Instant>>),
) {
    let period = ttl / 3;
    let retry = (ttl / 10).clamp(Duration::from_millis(20), Duration::from_secs(1));
    // After a failed renewal: when to try again (the lease clock says
    // "due" already).
    let mut retry_at: Option<TokioInstant> = None;
    let mut reported = false;
    loop {
        let safe_until = state.lock().unwrap().safe_until;
        // The lease clock: renew a third of the TTL after the server last
        // extended the earliest lease, or sooner after a failure.
        let next = match (retry_at, safe_until) {
            (Some(r), _) => r,
            (None, Some(u)) => renewal_due(u, ttl),
            (None, None) => TokioInstant::now() + period,
        };
        // The loss foreseen by the lease clock, reported once, `grace`
        // before the deadline: (when, the deadline).
        let foreseen = safe_until
            .map(|u| (u.checked_sub(grace).unwrap_or(u), u))
            .filter(|_| !reported);
        let wake = foreseen.map_or(next, |(r, _)| next.min(r));
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            // A lease was added: it may be due already.
            _ = added.notified() => continue,
        }
        let now = TokioInstant::now();
        if let Some((at, until)) = foreseen
            && now >= at
        {
            reported = true;
            report_foreseen(&lost, backend.as_ref(), until);
        }
        if now < next {
            continue;
        }
        let leases = state.lock().unwrap().leases.clone();
        if leases.is_empty() {
            retry_at = None;
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = added.notified() => {}
            }
            continue;
        }
        let sent = TokioInstant::now();
        let call_deadline = sent + call_timeout.min(period.max(Duration::from_millis(50)));
        let mut ok = true;
        for l in &leases {
            let call = tokio::time::timeout_at(call_deadline, backend.renew(l, ttl));
            // The report is due at its time even while a renewal hangs:
            // waiting for the call's bound (up to --connect-timeout) would
            // take that much off the child's grace. A renewal that lands
            // after it still moves the deadline, but does not withdraw it.
            let due = foreseen.filter(|_| !reported);
            let outcome = meanwhile(call, due.map(|(at, _)| at), || {
                reported = true;
                if let Some((_, until)) = due {
                    report_foreseen(&lost, backend.as_ref(), until);
                }
            });
            match outcome.await {
                Ok(Ok(Renewal::Renewed)) => {}
                Ok(Ok(Renewal::Lost)) => {
                    tracing::warn!(event = "lost", key = l.key, token = l.token, "lease lost");
                    let _ = lost.send(Some(Loss {
                        message: format!(
                            "lost the lock on {:?} (token {}): it was broken or expired on {}",
                            l.key,
                            l.token,
                            backend.describe()
                        ),
                        expires: None,
                    }));
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(
                        event = "renew_failed",
                        key = l.key,
                        error = format!("{e:#}"),
                        "renewal failed"
                    );
                    ok = false;
                    break;
                }
                Err(_) => {
                    tracing::warn!(
                        event = "renew_failed",
                        key = l.key,
                        error = "timed out",
                        "renewal timed out"
                    );
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            let mut st = state.lock().unwrap();
            // Leases added during the call were not renewed by it: they
            // keep their own deadline (the next loop renews them at once
            // if it is due: `add` woke it).
            let added_since = st.leases.get(leases.len()..).unwrap_or_default();
            let until = added_since
                .iter()
                .map(lease_until)
                .fold(sent + ttl.saturating_sub(margin(ttl)), TokioInstant::min);
            st.safe_until = Some(until);
            drop(st);
            let _ = safe.send(Some(until.into_std()));
            tracing::info!(
                event = "renewed",
                keys = ?leases.iter().map(|l| l.key.as_str()).collect::<Vec<_>>(),
                rtt_ms = sent.elapsed().as_secs_f64() * 1e3,
                valid_ms = ttl.saturating_sub(margin(ttl)).as_millis() as u64,
                "leases renewed"
            );
            retry_at = None;
        } else {
            retry_at = Some(TokioInstant::now() + retry);
        }
    }
}

/// The lock could not be taken: which key, who holds it, and why if not
/// because of a holder (the server was full until the deadline).
#[derive(Debug)]
pub struct Busy {
    pub key: String,
    pub holders: Vec<Holder>,
    pub cause: Option<String>,
    /// The request was for a shared lock: if only readers hold it, what
    /// kept it out is a waiting writer, served first.
    pub shared: bool,
}

impl Busy {
    /// A full server (an [`crate::error::Error::Full`]) reported as busy.
    pub fn full(key: &str, err: &anyhow::Error) -> Busy {
        Busy {
            key: key.to_string(),
            holders: Vec::new(),
            cause: Some(format!("{err:#}")),
            shared: false,
        }
    }
}

/// The deadline of a `--wait` setting, from now.
pub fn deadline(wait: Wait) -> Option<Instant> {
    match wait {
        Wait::Forever => None,
        Wait::No => Some(Instant::now()),
        Wait::For(d) => Some(Instant::now() + d),
    }
}

/// Take every key in `lock.keys` (already sorted), by `deadline`. Keys are
/// waited for one after another in that canonical order, each added to the
/// keeper as soon as it is held so it stays alive while we wait for the
/// next; if one is not taken, the keeper's owner lets go of the others (all
/// or nothing). Outages and a full server are ridden out as
/// [`kit::patiently`] says, `patience` (`--connect-timeout`) per outage.
pub async fn acquire_all(
    backend: &dyn Backend,
    namespace: &str,
    lock: &LockSettings,
    me: &Owner,
    keeper: &Keeper,
    deadline: Option<Instant>,
    patience: Duration,
) -> Result<std::result::Result<(), Busy>> {
    for key in &lock.keys {
        let spec = LockSpec {
            namespace: namespace.to_string(),
            key: key.clone(),
            ttl: lock.ttl,
            limit: lock.limit,
            shared: lock.shared,
        };
        let got = kit::patiently(deadline, patience, || backend.acquire(&spec, me, deadline)).await;
        let busy = match got {
            Ok(Attempt::Acquired(l)) => {
                keeper.add(l);
                continue;
            }
            Ok(Attempt::Busy(holders)) => Busy {
                key: key.clone(),
                holders,
                cause: None,
                shared: lock.shared,
            },
            Err(e) if retry_of(&e) == Retry::Full => Busy::full(key, &e),
            Err(e) => return Err(e),
        };
        return Ok(Err(busy));
    }
    Ok(Ok(()))
}

/// Release leases, best effort: a failure only costs the rest of the TTL.
/// Returns the leases the backend said were already gone (broken or
/// expired), so a run can report a loss it had not seen yet.
async fn release_all(backend: &dyn Backend, leases: &[Lease]) -> Vec<Lease> {
    let mut gone = Vec::new();
    for l in leases.iter().rev() {
        match backend.release(l).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(key = l.key, "lease was already gone at release");
                gone.push(l.clone());
            }
            Err(e) => {
                crate::jsonlog::say(
                    "WARN",
                    &format!(
                        "could not release {:?} on {}: {e:#} (it expires by itself within its TTL)",
                        l.key,
                        backend.describe()
                    ),
                );
            }
        }
    }
    gone
}

#[cfg(test)]
mod tests;
