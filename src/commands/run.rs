//! `dlock run`: take the locks, supervise the child, let go.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::{Connector, child_spec, connect_waiting, owner, take_locks};
use crate::backend::LeaseKind;
use crate::cli::{self, OnLost};
use crate::lease;
use crate::outcome::Outcome;
use crate::supervise::{Signals, grace, supervise};
use crate::{config, metrics};

/// What a run got as far as, for `--metrics-file`.
#[derive(Debug, Default)]
struct Trace {
    waited: Duration,
    held: Duration,
    token: Option<u64>,
}

pub async fn cmd_run(c: &Connector<'_>, a: cli::RunArgs) -> Result<Outcome> {
    let s = c.settings;
    let lock = s.child_lock(&a.lock)?;
    let rs = s.run(&a)?;
    let mut trace = Trace::default();
    let outcome: Outcome = run_locked(c, &a, lock.clone(), &rs, &mut trace)
        .await
        .into();
    if let Some(path) = &rs.metrics_file {
        let (exit_code, outcome) = outcome.decide();
        let rec = metrics::RunRecord {
            key: lock.keys.join(","),
            namespace: s.namespace.clone(),
            outcome,
            exit_code,
            waited: trace.waited,
            held: trace.held,
            token: trace.token,
            ended: std::time::SystemTime::now(),
        };
        if let Err(e) = metrics::write(path, &rec) {
            crate::jsonlog::say("ERROR", &format!("{e:#}"));
        }
    }
    Ok(outcome)
}

async fn run_locked(
    c: &Connector<'_>,
    a: &cli::RunArgs,
    mut lock: config::LockSettings,
    rs: &config::RunSettings,
    trace: &mut Trace,
) -> Result<Outcome> {
    let s = c.settings;
    let mut signals = Signals::install()?;
    let deadline = lease::deadline(lock.wait);
    let started = Instant::now();
    let (backend, ttl) = match connect_waiting(c, &lock, deadline).await? {
        Ok(v) => v,
        Err(not) => {
            trace.waited = started.elapsed();
            return Ok(not.into());
        }
    };
    lock.ttl = ttl;
    let me = owner(LeaseKind::Run)?;
    let grace = grace(rs.kill_after, lock.ttl);
    let taken = take_locks(s, &backend, &lock, &me, grace, &mut signals, deadline).await;
    trace.waited = started.elapsed();
    let keeper = match taken? {
        Ok(k) => k,
        Err(not) => return Ok(not.into()),
    };
    let acquired = Instant::now();
    let leases = keeper.leases();
    trace.token = leases.iter().map(|l| l.token).max();
    let spec = child_spec(s, &lock, rs, &a.command, &leases, rs.on_lost, vec![]);
    let ended = supervise(spec, &mut signals, &keeper, lock.ttl).await;
    trace.held = acquired.elapsed();
    // On an error the keeper's drop lets go of the leases.
    let ended = ended?;
    let lost = ended.lost.is_some();
    if !lost && let Some(least) = rs.lock_at_least {
        let remaining = least.saturating_sub(acquired.elapsed());
        if !remaining.is_zero() {
            let mut handed_over = true;
            for l in &keeper.leases() {
                handed_over &= backend.release_after(l, remaining).await.unwrap_or(false);
            }
            if handed_over {
                keeper.hand_over();
                tracing::info!(
                    event = "released",
                    held_ms = acquired.elapsed().as_millis() as u64,
                    lapse_ms = remaining.as_millis() as u64,
                    "lock left to lapse (--lock-at-least)"
                );
                return Ok(Outcome::Ran(ended.exit));
            }
            tokio::time::sleep(remaining).await;
        }
    }
    let mut lost = lost;
    if lost {
        // Gone already, or about to be: left to lapse.
        keeper.hand_over();
    } else {
        // Broken (`release --force`) or expired since the last renewal: the
        // end of the command ran without the lock, which is a loss too.
        // Unless the lease clock says it was ours until after the command
        // ended, and the release found it gone only once that time had
        // passed: then it lapsed while the release waited (a server slow to
        // answer, a crowd writing the same object), after the command.
        let safe_until = keeper.safe_until();
        let gone = keeper.release().await;
        let what = gone
            .iter()
            .map(|l| format!("{:?} (token {})", l.key, l.token))
            .collect::<Vec<_>>()
            .join(", ");
        if !gone.is_empty() && safe_until.is_some_and(|s| Instant::now() >= s) {
            tracing::warn!(
                event = "lapsed_at_release",
                "lease lapsed before its release"
            );
            crate::jsonlog::say(
                "WARN",
                &format!(
                    "the lock on {what} lapsed on {} after the command ended, before dlock could release it",
                    backend.describe()
                ),
            );
        } else if !gone.is_empty() {
            for l in &gone {
                tracing::warn!(
                    event = "lost",
                    key = l.key,
                    token = l.token,
                    "lease found gone at release"
                );
            }
            crate::jsonlog::say(
                "WARN",
                &format!(
                    "lost the lock on {what}: it was broken or expired on {} before the command ended",
                    backend.describe()
                ),
            );
            lost = true;
        }
    }
    tracing::info!(
        event = "released",
        held_ms = acquired.elapsed().as_millis() as u64,
        code = ended.exit.code(),
        lost,
        "done"
    );
    if !lost {
        return Ok(Outcome::Ran(ended.exit));
    }
    let outcome = Outcome::Lost {
        child: ended.exit,
        on_lost: rs.on_lost,
    };
    if rs.on_lost == OnLost::Kill {
        crate::jsonlog::say(
            "WARN",
            &format!(
                "exiting {} because the lease was lost (the command's own status was {})",
                outcome.exit_code(),
                ended.exit.code()
            ),
        );
    }
    Ok(outcome)
}
