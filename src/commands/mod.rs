//! The subcommands, one file each, and what they share: connecting on
//! first use, who we are, and taking the locks (waiting, riding out the
//! backend, saying why a lock was not taken).

mod elect;
mod handles;
mod probe;
mod run;
mod status;

pub use elect::{cmd_elect, cmd_leader};
pub use handles::{cmd_acquire, cmd_release, cmd_renew};
pub use probe::{cmd_doctor, cmd_ping};
pub use run::cmd_run;
pub use status::cmd_status;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use nix::sys::signal::Signal;

use crate::backend::{self, Backend, LeaseKind, Owner};
use crate::config::{self, Settings};
use crate::error::{self, Error};
use crate::lease::{self, Keeper, acquire_all};
use crate::outcome::Outcome;
use crate::supervise::Signals;
use crate::{host, progress, status as show};

/// Connects on first use (after the arguments are validated, so bad input
/// is a usage error even when the backend is down) and closes at the end.
pub struct Connector<'a> {
    pub settings: &'a Settings,
    pub backend: tokio::sync::OnceCell<Arc<dyn Backend>>,
}

impl Connector<'_> {
    pub async fn get(&self) -> Result<Arc<dyn Backend>> {
        self.backend
            .get_or_try_init(|| connect(self.settings))
            .await
            .cloned()
    }
}

/// A random hex secret; it names our lease and proves we own it.
fn secret() -> Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn owner(kind: LeaseKind) -> Result<Owner> {
    let pid = std::process::id();
    Ok(Owner {
        id: secret()?,
        user: host::user(),
        host: host::hostname(),
        // A handle outlives the `dlock acquire` that took it: its pid would
        // name a long-exited process. Pid 0 (never a user process) marks
        // the lease as a handle's in `status`.
        pid: if kind == LeaseKind::Handle { 0 } else { pid },
        host_id: host::host_id(),
        proc_start: host::proc_start(pid).unwrap_or(0),
        kind,
        value: None,
    })
}

async fn connect(s: &Settings) -> Result<Arc<dyn Backend>> {
    let shown = s.shown_backends();
    match tokio::time::timeout(
        s.connect_timeout,
        backend::connect(&s.backends, s.connect_timeout),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(error::unavailable(format!(
            "backend {shown} did not answer within {} (--connect-timeout)",
            show::human_duration(s.connect_timeout)
        ))),
    }
}

fn busy_message(busy: &lease::Busy, waited: Option<Duration>) -> String {
    let mut m = format!("lock {:?} is busy", busy.key);
    if let Some(w) = waited {
        m.push_str(&format!(" after waiting {}", show::human_duration(w)));
    }
    if let Some(cause) = &busy.cause {
        m.push_str(&format!(
            ": the backend turned the attempt away (no room for another client, \
             or its own locks busy): {cause}"
        ));
    }
    match busy.holders.as_slice() {
        [] => {}
        [h] => m.push_str(&format!(": {}", show::describe_holder(h))),
        hs => {
            m.push_str(&format!(": {} holders", hs.len()));
            for h in hs {
                m.push_str(&format!("\n  {}", show::describe_holder(h)));
            }
        }
    }
    if busy.shared && !busy.holders.is_empty() && busy.holders.iter().all(|h| h.shared) {
        m.push_str(
            "\n  an exclusive request is waiting: shared requests that come after it wait behind it",
        );
    }
    m
}

/// Why the keys were not taken.
#[derive(Debug, Clone, Copy)]
enum NotTaken {
    /// Busy, or waiting ran out: the exit code is `-E`'s.
    Busy(i32),
    /// A signal ended the wait.
    Interrupted(Signal),
}

impl From<NotTaken> for Outcome {
    fn from(n: NotTaken) -> Outcome {
        match n {
            NotTaken::Busy(code) => Outcome::Busy(code),
            NotTaken::Interrupted(sig) => Outcome::Interrupted(sig),
        }
    }
}

/// Take every key, or say why not. On success the keys are held by the
/// returned [`Keeper`], started with `grace` (see [`Keeper::start`]); on
/// every other path (busy, a signal, a loss while waiting, an error) what
/// was taken is let go here, before returning.
async fn take_locks(
    s: &Settings,
    backend: &Arc<dyn Backend>,
    lock: &config::LockSettings,
    me: &Owner,
    grace: Duration,
    signals: &mut Signals,
    deadline: Option<Instant>,
) -> Result<std::result::Result<Keeper, NotTaken>> {
    let keeper = Keeper::start(backend.clone(), lock.ttl, s.connect_timeout, grace);
    let taken = wait_for_locks(s, backend, lock, me, &keeper, signals, deadline).await;
    let failed = match taken {
        Ok(Ok(())) => return Ok(Ok(keeper)),
        Ok(Err(not)) => Ok(not),
        Err(e) => Err(e),
    };
    keeper.release().await;
    Ok(Err(failed?))
}

/// The wait of [`take_locks`], with the waiting line, until every key is
/// in `keeper`, a signal or a loss ends it, or the keys are found busy.
async fn wait_for_locks(
    s: &Settings,
    backend: &Arc<dyn Backend>,
    lock: &config::LockSettings,
    me: &Owner,
    keeper: &Keeper,
    signals: &mut Signals,
    deadline: Option<Instant>,
) -> Result<std::result::Result<(), NotTaken>> {
    let started = Instant::now();
    tracing::info!(event = "waiting", keys = ?lock.keys, backend = backend.describe(), "acquiring");
    let mut lost = keeper.lost();
    let line = progress::WaitLine::new(s, lock);
    let outcome = tokio::select! {
        r = acquire_all(backend.as_ref(), &s.namespace, lock, me, keeper, deadline, s.connect_timeout) => r,
        () = line.show(backend.as_ref(), &s.namespace, keeper, started) => unreachable!("the waiting line never ends"),
        ev = signals.recv() => {
            line.clear();
            let sig = ev.signal();
            tracing::info!(event = "interrupted", signal = sig.as_str(), waited_ms = started.elapsed().as_millis() as u64, "gave up waiting");
            return Ok(Err(NotTaken::Interrupted(sig)));
        }
        Ok(()) = lost.changed() => {
            line.clear();
            let msg = lost.borrow().as_ref().map(|l| l.message.clone()).unwrap_or_default();
            return Err(Error::Lost(format!("{msg} while waiting for the other keys")).into());
        }
    };
    line.clear();
    let outcome = outcome?;
    let waited = started.elapsed();
    match outcome {
        Ok(()) => {
            let tokens = keeper.leases().iter().map(|l| l.token).collect::<Vec<_>>();
            tracing::info!(
                event = "acquired",
                keys = ?lock.keys,
                tokens = ?tokens,
                waited_ms = waited.as_millis() as u64,
                "lock acquired"
            );
            Ok(Ok(()))
        }
        Err(busy) => Ok(Err(not_taken(s, lock, &busy, waited))),
    }
}

/// Say that the keys were not taken, and why.
fn not_taken(
    s: &Settings,
    lock: &config::LockSettings,
    busy: &lease::Busy,
    waited: Duration,
) -> NotTaken {
    tracing::info!(
        event = "busy",
        key = busy.key,
        waited_ms = waited.as_millis() as u64,
        cause = busy.cause,
        "not acquired"
    );
    if !s.quiet {
        let w = (lock.wait != config::Wait::No).then_some(waited);
        crate::jsonlog::say("INFO", &busy_message(busy, w));
    }
    NotTaken::Busy(lock.conflict_exit_code)
}

/// Connect for a waiter, and learn the TTL its leases will really have:
/// outages and a full server are ridden out as they are while waiting.
async fn connect_waiting(
    c: &Connector<'_>,
    lock: &config::LockSettings,
    deadline: Option<Instant>,
) -> Result<std::result::Result<(Arc<dyn Backend>, Duration), NotTaken>> {
    let started = Instant::now();
    let got = backend::kit::patiently_each(deadline, c.settings.connect_timeout, || async {
        let b = c.get().await?;
        let ttl = b.effective_ttl(lock.ttl).await?;
        Ok((b, ttl))
    })
    .await;
    match got {
        Ok(v) => Ok(Ok(v)),
        Err(e) if error::retry_of(&e) == error::Retry::Full => {
            let busy = lease::Busy::full(&lock.keys[0], &e);
            Ok(Err(not_taken(c.settings, lock, &busy, started.elapsed())))
        }
        Err(e) => Err(e),
    }
}

/// What the child is run with: its command, and the environment of the
/// contract (`DLOCK_KEY`, `DLOCK_KEYS`, `DLOCK_TOKEN`, `DLOCK_SLOT`,
/// `DLOCK_TTL`, `DLOCK_NAMESPACE`, and `extra`), without a `DLOCK_BACKEND`
/// that holds a password. `leases` are in the order of the keys.
pub(crate) fn child_spec(
    s: &Settings,
    lock: &config::LockSettings,
    rs: &config::RunSettings,
    argv: &[std::ffi::OsString],
    leases: &[backend::Lease],
    on_lost: crate::cli::OnLost,
    extra: Vec<(String, String)>,
) -> crate::supervise::ChildSpec {
    let ttl = lock.ttl.as_secs_f64();
    let mut env = vec![
        ("DLOCK_KEY".to_string(), lock.keys.join(",")),
        (
            "DLOCK_TOKEN".to_string(),
            leases
                .iter()
                .map(|l| l.token.to_string())
                .collect::<Vec<_>>()
                .join(","),
        ),
        // The semaphore slot of each key (a mutex is slot 0; a shared
        // lease has none: an empty item).
        (
            "DLOCK_SLOT".to_string(),
            leases
                .iter()
                .map(|l| l.slot.map_or_else(String::new, |s| s.to_string()))
                .collect::<Vec<_>>()
                .join(","),
        ),
        ("DLOCK_TTL".to_string(), format!("{ttl}")),
        // DLOCK_KEY joins keys with commas, which a key may hold; DLOCK_KEYS
        // has one per line, unambiguous since a key holds no control
        // character.
        ("DLOCK_KEYS".to_string(), lock.keys.join("\n")),
        ("DLOCK_NAMESPACE".to_string(), s.namespace.clone()),
    ];
    env.extend(extra);
    // A password in DLOCK_BACKEND must not reach the child.
    let env_remove = match std::env::var("DLOCK_BACKEND") {
        Ok(v) if backend::redact_url(&v) != v || v.contains('@') => {
            vec!["DLOCK_BACKEND".to_string()]
        }
        _ => vec![],
    };
    crate::supervise::ChildSpec {
        argv: argv.to_vec(),
        shell: rs.shell,
        env,
        env_remove,
        on_lost,
        kill_after: rs.kill_after,
        stop_signal: rs.stop_signal,
    }
}
