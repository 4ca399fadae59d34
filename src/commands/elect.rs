//! `dlock elect`: leader election as a supervisor. A loop of terms: campaign
//! for the key exactly as `run` takes it, supervise CMD while leader, resign,
//! and campaign again after a lost term (or as `--restart` says after CMD
//! exited by itself). `dlock leader`: who leads now.
//!
//! A term is a `run` lease, and its fencing token, which rises with every
//! acquisition on every backend, is the term number. The one thing a backend
//! may do for elections is keep the candidate's value apart from dlock's
//! holder record (`Capabilities::keeps_values`): etcd stores it bare, as Go's
//! `concurrency.Election` does; the others carry it in the owner field.

use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use nix::sys::signal::Signal;

use super::{Connector, NotTaken, connect_waiting, owner, take_locks};
use crate::backend::{Holder, LeaseKind, user_with_value};
use crate::cli::{self, OnLost, Restart};
use crate::config::{self, Wait};
use crate::lease::{self, Keeper};
use crate::outcome::{self, Outcome, Reader};
use crate::supervise::{Ended, Signals, Stops, grace, supervise};
use crate::{exit_code, host, metrics, status};

/// `USER@HOST pid PID`: what `dlock leader` shows for a leader.
fn default_value() -> String {
    format!(
        "{}@{} pid {}",
        host::user(),
        host::hostname(),
        std::process::id()
    )
}

pub async fn cmd_elect(c: &Connector<'_>, a: cli::ElectArgs) -> Result<Outcome> {
    let mut fresh = None;
    let r = elect(c, a, &mut fresh).await;
    // Before the connection they were taken on is closed.
    lease::release_dropped().await;
    if let Some(b) = fresh.as_ref().and_then(|f: &Connector| f.backend.get()) {
        b.close().await;
    }
    r
}

/// Start campaigning on a new connection: a client whose session the
/// server expired (ZooKeeper after an outage longer than the session
/// timeout) never gets another one by itself.
async fn reconnect<'a>(fresh: &mut Option<Connector<'a>>, s: &'a config::Settings) {
    if let Some(b) = fresh.take().as_ref().and_then(|f| f.backend.get()) {
        b.close().await;
    }
    *fresh = Some(Connector {
        settings: s,
        backend: tokio::sync::OnceCell::new(),
    });
}

async fn elect<'a>(
    c: &Connector<'a>,
    a: cli::ElectArgs,
    fresh: &mut Option<Connector<'a>>,
) -> Result<Outcome> {
    let s = c.settings;
    // The settings of a `run` with the same flags: the config file's ttl,
    // kill-after and shell apply as they do to `run`.
    let ra = cli::RunArgs {
        lock: cli::LockArgs {
            key: vec![a.key.clone()],
            ttl: a.ttl,
            wait: a.wait,
            no_wait: false,
            conflict_exit_code: None,
            limit: Some(1),
            shared: false,
        },
        shell: a.shell,
        kill_after: a.kill_after,
        stop_signal: a.stop_signal,
        on_lost: Some(OnLost::Kill),
        lock_at_least: None,
        metrics_file: a.metrics_file.clone(),
        command: a.command.clone(),
    };
    let mut lock = s.child_lock(&ra.lock)?;
    let rs = s.run(&ra)?;
    // A candidate waits as long as it takes unless --wait says otherwise,
    // whatever the config file says for `run`, and there is one leader.
    lock.wait = match a.wait {
        _ if a.no_wait => Wait::No,
        None => Wait::Forever,
        Some(d) if d.is_zero() => Wait::No,
        Some(d) => Wait::For(d),
    };
    lock.limit = 1;
    lock.shared = false;
    lock.conflict_exit_code = exit_code::BUSY;
    let value = a.value.clone().unwrap_or_else(default_value);
    let key = lock.keys[0].clone();

    let wanted = Stops::wanted();
    let mut signals = Signals::install()?;
    let mut stops = Stops::install(wanted)?;
    let mut board = metrics::Leadership {
        key: key.clone(),
        namespace: s.namespace.clone(),
        since: None,
        terms: 0,
        led: Duration::ZERO,
        token: None,
    };
    let publish = |b: &metrics::Leadership| {
        if let Some(path) = &rs.metrics_file
            && let Err(e) = metrics::write_leadership(path, b)
        {
            crate::jsonlog::say("ERROR", &format!("{e:#}"));
        }
    };
    publish(&board);
    // Only campaigning before the first term is bounded by --wait: a
    // candidate that has led once stands by for as long as it takes.
    let first_deadline = lease::deadline(lock.wait);
    let mut led = false;
    let mut connected = false;
    let mut backoff = Backoff::default();
    loop {
        let deadline = if led { None } else { first_deadline };
        let conn = fresh.as_ref().unwrap_or(c);
        let campaign = campaign(
            conn,
            &lock,
            &rs,
            &mut signals,
            deadline,
            &value,
            a.value.is_some(),
        )
        .await;
        connected |= conn.backend.get().is_some();
        let (keeper, ttl) = match campaign {
            Ok(Ok(v)) => v,
            Ok(Err(not)) => return Ok(not.into()),
            // Never reached the backend: a wrong URL or credentials, most
            // likely; say so (69) as `run` does.
            Err(e) if !connected => return Err(e),
            // Authentication or privileges, a bad setting: retrying cannot help.
            Err(e) if final_error(&e) => return Err(e),
            Err(e) if !led && deadline.is_some_and(|d| Instant::now() >= d) => return Err(e),
            Err(e) => {
                // Once connected, an outage does not end the candidate.
                reconnect(fresh, s).await;
                let again = rs
                    .kill_after
                    .clamp(Duration::from_secs(1), Duration::from_secs(5));
                crate::jsonlog::say(
                    "WARN",
                    &format!(
                        "campaign for {key:?} failed: {e:#}; trying again in {}",
                        status::human_duration(again)
                    ),
                );
                if let Some(sig) = pause(&mut signals, again).await {
                    return Ok(Outcome::Interrupted(sig));
                }
                continue;
            }
        };
        led = true;
        let leases = keeper.leases();
        let token = leases.first().map_or(0, |l| l.token);
        tracing::info!(event = "elected", key, token, value, "leader");
        let began = Instant::now();
        board.since = Some(SystemTime::now());
        board.terms += 1;
        board.token = Some(token);
        publish(&board);
        // No stale stop signal can be pending here: one that came while
        // standing by ended dlock, so `stops` only has what came since.
        let spec = super::child_spec(
            s,
            &config::LockSettings {
                ttl,
                ..lock.clone()
            },
            &rs,
            &a.command,
            &leases,
            OnLost::Kill,
            vec![("DLOCK_VALUE".to_string(), value.clone())],
        );
        // On an error the keeper's drop lets go of the lease.
        let ended = supervise(spec, &mut signals, &keeper, ttl).await?;
        // A stop is SIGINT or SIGTERM, to dlock or from the terminal (Ctrl-C
        // reaches CMD's group, not dlock's).
        let stopped_by = stops
            .take()
            .await
            .or(ended.stopped_by.filter(|e| e.stops_dlock()));
        // Resign at once; a lease found gone was lost before CMD ended.
        let gone = keeper.release().await;
        board.since = None;
        board.led += began.elapsed();
        publish(&board);
        let code = ended.exit.code();
        let lost = ended.lost.is_some() || !gone.is_empty();
        if lost {
            tracing::warn!(event = "lost", key, token, code, "leadership lost");
            if stopped_by.is_some() {
                return Ok(Outcome::Ran(ended.exit));
            }
            crate::jsonlog::say(
                "WARN",
                &format!("lost the leadership of {key:?} (term {token}); campaigning again"),
            );
            reconnect(fresh, s).await;
            continue;
        }
        tracing::info!(event = "resigned", key, token, code, "leadership given up");
        if stopped_by.is_some() {
            return Ok(Outcome::Ran(ended.exit));
        }
        let again = match a.restart {
            Restart::Never => false,
            Restart::OnFailure => code != exit_code::SUCCESS,
            Restart::Always => true,
        };
        if !again {
            return Ok(Outcome::Ran(ended.exit));
        }
        let delay = match backoff.after(&ended, began.elapsed(), a.restart_delay) {
            Next::Again(d) => d,
            Next::GiveUp => {
                crate::jsonlog::say(
                    "ERROR",
                    &format!(
                        "the command could not be run {CANNOT_RUN_LIMIT} times in a row (status {code}); giving up"
                    ),
                );
                return Ok(Outcome::Ran(ended.exit));
            }
        };
        if !s.quiet {
            crate::jsonlog::say(
                "INFO",
                &format!(
                    "the command exited with status {code}; campaigning again in {} (--restart {})",
                    status::human_duration(delay),
                    match a.restart {
                        Restart::Never => "never",
                        Restart::OnFailure => "on-failure",
                        Restart::Always => "always",
                    }
                ),
            );
        }
        if let Some(sig) = pause(&mut signals, delay).await {
            return Ok(Outcome::Interrupted(sig));
        }
    }
}

/// After this many terms in a row whose CMD could not be run (126, 127),
/// `--restart` gives up.
const CANNOT_RUN_LIMIT: u32 = 3;
/// A CMD that fails sooner than this after it started counts as failing
/// fast: the next campaign waits twice as long as the last.
const FAST_FAILURE: Duration = Duration::from_secs(10);
/// The longest pause the doubling reaches (unless --restart-delay is longer).
const MAX_RESTART_DELAY: Duration = Duration::from_secs(60);

/// What `--restart` does next.
#[derive(Debug, PartialEq)]
enum Next {
    Again(Duration),
    GiveUp,
}

/// `--restart`'s memory of the terms before: a CMD that keeps failing fast
/// is restarted after a growing delay, and one that cannot be run at all
/// (not found, not executable) is given up after a few tries.
#[derive(Debug, Default)]
struct Backoff {
    fast_failures: u32,
    cannot_run: u32,
}

impl Backoff {
    fn after(&mut self, o: &Ended, ran: Duration, base: Duration) -> Next {
        // A shell's "not found" (127) or "cannot execute" (126) too.
        let code = o.exit.code();
        let could_not_run =
            !o.exit.started() || code == exit_code::NOT_FOUND || code == exit_code::NOT_EXECUTABLE;
        if could_not_run {
            self.cannot_run += 1;
            if self.cannot_run >= CANNOT_RUN_LIMIT {
                return Next::GiveUp;
            }
        } else {
            self.cannot_run = 0;
        }
        if code != exit_code::SUCCESS && (could_not_run || ran < FAST_FAILURE) {
            self.fast_failures += 1;
        } else {
            self.fast_failures = 0;
        }
        let factor = 1u32 << self.fast_failures.saturating_sub(1).min(16);
        let cap = MAX_RESTART_DELAY.max(base);
        Next::Again(base.saturating_mul(factor).min(cap))
    }
}

/// An error no retry can cure: denied, usage or configuration.
fn final_error(e: &anyhow::Error) -> bool {
    use crate::error::Error;
    matches!(
        crate::error::typed(e),
        Some(Error::Denied(_) | Error::Usage(_) | Error::Config(_))
    )
}

/// Sleep, unless a signal comes first: then that signal.
async fn pause(signals: &mut Signals, d: Duration) -> Option<Signal> {
    tokio::select! {
        () = tokio::time::sleep(d) => None,
        ev = signals.recv() => {
            let sig = ev.signal();
            tracing::info!(event = "interrupted", signal = sig.as_str(), "stopped while standing by");
            Some(sig)
        }
    }
}

/// One campaign: connect (riding out outages as `run` does), then take the
/// key with a fresh keeper. The keeper holds the term's lease on success.
/// `value` is published: kept apart where the backend keeps values (etcd:
/// the key's value, as `concurrency.Election`'s), else in the owner field
/// if it was given (`explicit`; the default one is the owner's own name).
#[allow(clippy::too_many_arguments)]
async fn campaign(
    c: &Connector<'_>,
    lock: &config::LockSettings,
    rs: &config::RunSettings,
    signals: &mut Signals,
    deadline: Option<std::time::Instant>,
    value: &str,
    explicit: bool,
) -> Result<std::result::Result<(Keeper, Duration), NotTaken>> {
    let s = c.settings;
    let mut lock = lock.clone();
    let connected = tokio::select! {
        r = connect_waiting(c, &lock, deadline) => r?,
        ev = signals.recv() => {
            // Still connecting: nothing of ours is on the backend yet.
            let sig = ev.signal();
            tracing::info!(event = "interrupted", signal = sig.as_str(), "gave up campaigning");
            return Ok(Err(NotTaken::Interrupted(sig)));
        }
    };
    let (backend, ttl) = match connected {
        Ok(v) => v,
        Err(not) => return Ok(Err(not)),
    };
    lock.ttl = ttl;
    let mut me = owner(LeaseKind::Run)?;
    if backend.capabilities().keeps_values {
        me.value = Some(value.to_string());
    } else if explicit {
        me.user = user_with_value(&me.user, value);
    }
    let grace = grace(rs.kill_after, ttl);
    let taken = take_locks(s, &backend, &lock, &me, grace, signals, deadline).await?;
    Ok(taken.map(|keeper| (keeper, ttl)))
}

/// Why a key has no leader, for `dlock leader`'s message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoLeader {
    Free,
    /// Held shared: readers, none of whom leads.
    Shared(usize),
}

/// The live holders of a key held shared, if it is: they lead nobody.
fn shared_holders(holders: &[Holder]) -> Option<NoLeader> {
    let n = holders.iter().filter(|h| !h.dead && h.shared).count();
    (n > 0).then_some(NoLeader::Shared(n))
}

/// The leader as `dlock leader` shows it: the holder of the key (a dead
/// holder leads nobody, nor do shared holders).
fn leader_of(key: &str, holders: &[Holder]) -> Option<serde_json::Value> {
    if shared_holders(holders).is_some() {
        return None;
    }
    let h = holders.iter().find(|h| !h.dead)?;
    let value = match h.value() {
        Some(v) => v.to_string(),
        None => {
            let mut v = status::who(h);
            if let Some(p) = h.pid.filter(|p| *p != status::HANDLE_PID) {
                v.push_str(&format!(" pid {p}"));
            }
            v
        }
    };
    Some(serde_json::json!({
        "key": key,
        "value": value,
        "token": h.token,
        "since": h.acquired_at.map(status::rfc3339),
    }))
}

fn leader_line(leader: &Option<serde_json::Value>, why: NoLeader, key: &str, json: bool) -> String {
    match leader {
        Some(l) if json => l.to_string(),
        Some(l) => l["value"].as_str().unwrap_or_default().to_string(),
        None if json => "null".to_string(),
        None => match why {
            NoLeader::Free => format!("no leader for {key:?}"),
            NoLeader::Shared(1) => {
                format!("no leader for {key:?}: it is held shared (by 1 reader)")
            }
            NoLeader::Shared(n) => {
                format!("no leader for {key:?}: it is held shared (by {n} readers)")
            }
        },
    }
}

pub async fn cmd_leader(c: &Connector<'_>, a: cli::LeaderArgs) -> Result<Outcome> {
    let s = c.settings;
    s.validate_key(&a.key)?;
    let backend = c.get().await?;
    let keys = [a.key.clone()];
    let read = || async {
        let st = backend.status(&s.namespace, &keys).await?;
        let holders = st
            .into_iter()
            .find(|k| k.key == a.key)
            .map(|k| k.holders)
            .unwrap_or_default();
        let why = shared_holders(&holders).unwrap_or(NoLeader::Free);
        anyhow::Ok((leader_of(&a.key, &holders), why))
    };
    let print = |line: String| outcome::print(&(line + "\n"));
    if !a.watch {
        let (leader, why) = read().await?;
        let line = leader_line(&leader, why, &a.key, a.json);
        if leader.is_none() && !a.json {
            if !s.quiet {
                crate::jsonlog::say("INFO", &line);
            }
        } else {
            print(line)?;
        }
        return Ok(if leader.is_some() {
            Outcome::Done
        } else {
            Outcome::NoLeader
        });
    }
    // One line at each change (a new term is a change even with the same
    // value), until interrupted: that is the normal end, exit 0.
    let mut signals = Signals::install()?;
    let mut last: Option<Option<(Option<u64>, String)>> = None;
    // An outage is said once, when it begins, and its end once.
    let mut down_since: Option<std::time::SystemTime> = None;
    loop {
        let bound = s.connect_timeout * 2;
        let got = tokio::select! {
            r = tokio::time::timeout(bound, read()) => r,
            _ = signals.recv() => return Ok(Outcome::Done),
        };
        let failure = match got {
            Ok(Ok((leader, why))) => {
                if let Some(since) = down_since.take() {
                    crate::jsonlog::say(
                        "INFO",
                        &format!(
                            "{} answers again (unreachable for {})",
                            backend.describe(),
                            status::human_duration(since.elapsed().unwrap_or_default())
                        ),
                    );
                }
                let id = leader.as_ref().map(|l| {
                    (
                        l["token"].as_u64(),
                        l["value"].as_str().unwrap_or_default().to_string(),
                    )
                });
                if last.as_ref() != Some(&id) {
                    if print(leader_line(&leader, why, &a.key, a.json))? == Reader::Gone {
                        return Ok(Outcome::ReaderGone);
                    }
                    last = Some(id);
                }
                None
            }
            Ok(Err(e)) => Some(format!("{e:#}")),
            Err(_) => Some("the backend did not answer in time".to_string()),
        };
        if let Some(why) = failure
            && down_since.is_none()
        {
            let now = std::time::SystemTime::now();
            down_since = Some(now);
            crate::jsonlog::say(
                "WARN",
                &format!(
                    "{} unreachable since {}: {why}; watching on",
                    backend.describe(),
                    humantime::format_rfc3339_seconds(now)
                ),
            );
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = signals.recv() => return Ok(Outcome::Done),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::ChildExit;

    fn ended(code: i32, started: bool) -> Ended {
        Ended {
            exit: if started {
                ChildExit::Exited(code)
            } else {
                ChildExit::NotFound
            },
            lost: None,
            stopped_by: None,
        }
    }

    #[test]
    fn restarts_back_off_and_give_up_on_a_command_that_cannot_run() {
        let base = Duration::from_secs(1);
        let short = Duration::from_millis(10);
        let mut b = Backoff::default();
        assert_eq!(b.after(&ended(127, false), short, base), Next::Again(base));
        assert_eq!(
            b.after(&ended(127, false), short, base),
            Next::Again(base * 2)
        );
        assert_eq!(b.after(&ended(127, false), short, base), Next::GiveUp);

        // A failing command that does run backs off, up to the cap, and
        // one that ran long enough or succeeded starts over.
        let mut b = Backoff::default();
        let delays: Vec<_> = (0..9)
            .map(|_| b.after(&ended(1, true), short, base))
            .collect();
        assert_eq!(delays[0], Next::Again(base));
        assert_eq!(delays[3], Next::Again(base * 8));
        assert_eq!(delays[8], Next::Again(MAX_RESTART_DELAY));
        assert_eq!(
            b.after(&ended(1, true), FAST_FAILURE, base),
            Next::Again(base)
        );
        assert_eq!(b.after(&ended(1, true), short, base), Next::Again(base));
        assert_eq!(b.after(&ended(1, true), short, base), Next::Again(base * 2));
        assert_eq!(b.after(&ended(0, true), short, base), Next::Again(base));
    }
}
