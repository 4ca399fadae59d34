//! `dlock run`: take the locks, supervise the child, let go.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::{Connector, NotTaken, child_spec, connect_waiting, owner, take_locks};
use crate::backend::LeaseKind;
use crate::cli::{self, OnLost};
use crate::lease::{self, Keeper};
use crate::supervise::{Signals, grace, supervise};
use crate::{config, error, exit_code, metrics};

/// What a run got as far as, for `--metrics-file`.
#[derive(Debug, Default)]
struct Trace {
    waited: Duration,
    held: Duration,
    token: Option<u64>,
    not_taken: Option<NotTaken>,
    lost: bool,
}

pub async fn cmd_run(c: &Connector<'_>, a: cli::RunArgs) -> Result<i32> {
    let s = c.settings;
    let lock = s.child_lock(&a.lock)?;
    let rs = s.run(&a)?;
    let mut trace = Trace::default();
    let result = run_locked(c, &a, lock.clone(), &rs, &mut trace).await;
    if let Some(path) = &rs.metrics_file {
        use metrics::Outcome;
        let (outcome, code) = match &result {
            Err(e) => (Outcome::Error, error::exit_code_of(e)),
            Ok(code) => (
                match trace.not_taken {
                    Some(NotTaken::Busy(_)) => Outcome::Busy,
                    Some(NotTaken::Interrupted(_)) => Outcome::Interrupted,
                    None if trace.lost => Outcome::Lost,
                    None if *code == 0 => Outcome::Success,
                    None => Outcome::Failed,
                },
                *code,
            ),
        };
        let rec = metrics::RunRecord {
            key: lock.keys.join(","),
            namespace: s.namespace.clone(),
            outcome,
            exit_code: code,
            waited: trace.waited,
            held: trace.held,
            token: trace.token,
            ended: std::time::SystemTime::now(),
        };
        if let Err(e) = metrics::write(path, &rec) {
            crate::jsonlog::say("ERROR", &format!("{e:#}"));
        }
    }
    result
}

async fn run_locked(
    c: &Connector<'_>,
    a: &cli::RunArgs,
    mut lock: config::LockSettings,
    rs: &config::RunSettings,
    trace: &mut Trace,
) -> Result<i32> {
    let s = c.settings;
    let mut signals = Signals::install()?;
    let deadline = lease::deadline(lock.wait);
    let started = Instant::now();
    let (backend, ttl) = match connect_waiting(c, &lock, deadline).await? {
        Ok(v) => v,
        Err(not) => {
            trace.waited = started.elapsed();
            trace.not_taken = Some(not);
            return Ok(not.code());
        }
    };
    lock.ttl = ttl;
    let me = owner(LeaseKind::Run)?;
    let keeper = Keeper::start(
        backend.clone(),
        lock.ttl,
        s.connect_timeout,
        grace(rs.kill_after, lock.ttl),
    );
    let taken = take_locks(s, &backend, &lock, &me, &keeper, &mut signals, deadline).await;
    trace.waited = started.elapsed();
    if let Err(not) = taken? {
        keeper.release().await;
        trace.not_taken = Some(not);
        return Ok(not.code());
    }
    let acquired = Instant::now();
    let leases = keeper.leases();
    trace.token = leases.iter().map(|l| l.token).max();
    let spec = child_spec(s, &lock, rs, &a.command, &leases, rs.on_lost, vec![]);
    let outcome = supervise(spec, &mut signals, &keeper, lock.ttl).await;
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            keeper.release().await;
            trace.held = acquired.elapsed();
            return Err(e);
        }
    };
    let lost = outcome.lost.is_some();
    trace.lost = lost;
    trace.held = acquired.elapsed();
    if !lost && let Some(least) = rs.lock_at_least {
        let remaining = least.saturating_sub(acquired.elapsed());
        if !remaining.is_zero() {
            let mut handed_over = true;
            for l in &keeper.leases() {
                handed_over &= backend.release_after(l, remaining).await.unwrap_or(false);
            }
            if handed_over {
                keeper.stop();
                tracing::info!(
                    event = "released",
                    held_ms = acquired.elapsed().as_millis() as u64,
                    lapse_ms = remaining.as_millis() as u64,
                    "lock left to lapse (--lock-at-least)"
                );
                return Ok(outcome.code);
            }
            tokio::time::sleep(remaining).await;
        }
    }
    let mut lost = lost;
    if lost {
        keeper.stop();
    } else {
        // Broken (`release --force`) or expired since the last renewal: the
        // end of the command ran without the lock, which is a loss too.
        let gone = keeper.release().await;
        if !gone.is_empty() {
            let what = gone
                .iter()
                .map(|l| format!("{:?} (token {})", l.key, l.token))
                .collect::<Vec<_>>()
                .join(", ");
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
            trace.lost = true;
        }
    }
    tracing::info!(
        event = "released",
        held_ms = acquired.elapsed().as_millis() as u64,
        code = outcome.code,
        lost,
        "done"
    );
    if lost && rs.on_lost == OnLost::Kill {
        crate::jsonlog::say(
            "WARN",
            &format!(
                "exiting {} because the lease was lost (the command's own status was {})",
                exit_code::LOST,
                outcome.code
            ),
        );
        return Ok(exit_code::LOST);
    }
    Ok(outcome.code)
}
