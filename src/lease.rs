//! Held leases: taking several keys all or nothing, and keeping them alive.
//!
//! The [`Keeper`] renews every held lease about every third of the TTL, each
//! call bounded by a timeout. Loss is declared by a *deadline*, not only by an
//! error: a lease granted or renewed by a request sent at `t` is safe until
//! `t + ttl - margin` whatever the network says, and the keeper reports the
//! loss `grace` before that, so the supervisor's SIGTERM-then-SIGKILL fits
//! inside the lease.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backend::{Attempt, Backend, Holder, Lease, LockSpec, Owner, Renewal};
use crate::config::{LockSettings, Wait};

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
    safe_until: Option<Instant>,
}

/// Keeps leases alive in a background task while they are held.
pub struct Keeper {
    state: Arc<Mutex<State>>,
    lost: watch::Receiver<Option<Loss>>,
    safe_until: watch::Receiver<Option<Instant>>,
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
        let task = tokio::spawn(renew_loop(
            backend,
            state.clone(),
            ttl,
            call_timeout,
            grace,
            lost_tx,
            safe_tx,
        ));
        Keeper {
            state,
            lost,
            safe_until,
            task,
        }
    }

    pub fn add(&self, lease: Lease) {
        let mut st = self.state.lock().unwrap();
        let until = lease.granted_at + lease.ttl.saturating_sub(margin(lease.ttl));
        st.safe_until = Some(st.safe_until.map_or(until, |u| u.min(until)));
        st.leases.push(lease);
    }

    pub fn leases(&self) -> Vec<Lease> {
        self.state.lock().unwrap().leases.clone()
    }

    pub fn safe_until(&self) -> Option<Instant> {
        self.state.lock().unwrap().safe_until
    }

    pub fn lost(&self) -> watch::Receiver<Option<Loss>> {
        self.lost.clone()
    }

    pub fn safe_until_updates(&self) -> watch::Receiver<Option<Instant>> {
        self.safe_until.clone()
    }

    /// Stop renewing; returns the leases still held.
    pub fn stop(self) -> Vec<Lease> {
        self.task.abort();
        self.leases()
    }
}

async fn renew_loop(
    backend: Arc<dyn Backend>,
    state: Arc<Mutex<State>>,
    ttl: Duration,
    call_timeout: Duration,
    grace: Duration,
    lost: watch::Sender<Option<Loss>>,
    safe: watch::Sender<Option<Instant>>,
) {
    let period = ttl / 3;
    let retry = (ttl / 10).clamp(Duration::from_millis(20), Duration::from_secs(1));
    let mut next = Instant::now() + period;
    let mut reported = false;
    loop {
        let safe_until = state.lock().unwrap().safe_until;
        let report_at = safe_until.map(|u| u.checked_sub(grace).unwrap_or(u));
        let wake = match report_at {
            Some(r) if !reported => next.min(r),
            _ => next,
        };
        tokio::time::sleep_until(wake.into()).await;
        let now = Instant::now();
        if !reported && report_at.is_some_and(|r| now >= r) {
            reported = true;
            let until = safe_until.unwrap_or(now);
            tracing::warn!(event = "lost", "lease could not be renewed in time");
            let _ = lost.send(Some(Loss {
                message: format!(
                    "could not renew the lease with {} in time; it may expire in {}",
                    backend.describe(),
                    crate::status::human_duration(until.saturating_duration_since(now))
                ),
                expires: Some(until),
            }));
            // Keep trying: every renewal that still lands keeps the lock ours
            // while the child is being stopped.
        }
        if now < next {
            continue;
        }
        let leases = state.lock().unwrap().leases.clone();
        if leases.is_empty() {
            next = now + period;
            continue;
        }
        let sent = Instant::now();
        let call_deadline = sent + call_timeout.min(period.max(Duration::from_millis(50)));
        let mut ok = true;
        for l in &leases {
            match tokio::time::timeout_at(call_deadline.into(), backend.renew(l, ttl)).await {
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
            let until = sent + ttl.saturating_sub(margin(ttl));
            state.lock().unwrap().safe_until = Some(until);
            let _ = safe.send(Some(until));
            tracing::info!(
                event = "renewed",
                keys = ?leases.iter().map(|l| l.key.as_str()).collect::<Vec<_>>(),
                rtt_ms = sent.elapsed().as_secs_f64() * 1e3,
                valid_ms = ttl.saturating_sub(margin(ttl)).as_millis() as u64,
                "leases renewed"
            );
            next = sent + period;
        } else {
            next = Instant::now() + retry;
        }
    }
}

/// The lock could not be taken: which key, and who holds it.
#[derive(Debug)]
pub struct Busy {
    pub key: String,
    pub holders: Vec<Holder>,
}

/// Take every key in `lock.keys` (already sorted) all or nothing. Keys are
/// waited for one after another in that canonical order, each added to the
/// keeper as soon as it is held so it stays alive while we wait for the next.
pub async fn acquire_all(
    backend: &dyn Backend,
    namespace: &str,
    lock: &LockSettings,
    me: &Owner,
    keeper: &Keeper,
) -> Result<std::result::Result<(), Busy>> {
    let deadline = match lock.wait {
        Wait::Forever => None,
        Wait::No => Some(Instant::now()),
        Wait::For(d) => Some(Instant::now() + d),
    };
    for key in &lock.keys {
        let spec = LockSpec {
            namespace: namespace.to_string(),
            key: key.clone(),
            ttl: lock.ttl,
            limit: lock.limit,
        };
        match backend.acquire(&spec, me, deadline).await {
            Ok(Attempt::Acquired(l)) => keeper.add(l),
            Ok(Attempt::Busy(holders)) => {
                release_all(backend, &keeper.leases()).await;
                return Ok(Err(Busy {
                    key: key.clone(),
                    holders,
                }));
            }
            Err(e) => {
                release_all(backend, &keeper.leases()).await;
                return Err(e);
            }
        }
    }
    Ok(Ok(()))
}

/// Release leases, best effort: a failure only costs the rest of the TTL.
/// Returns the leases the backend said were already gone (broken or
/// expired), so a run can report a loss it had not seen yet.
pub async fn release_all(backend: &dyn Backend, leases: &[Lease]) -> Vec<Lease> {
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
