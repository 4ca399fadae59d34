//! `dlock acquire`, `renew` and `release`: leases that outlive the process,
//! carried in a handle.

use std::time::Duration;

use anyhow::Result;

use super::{Connector, connect_waiting, owner, take_locks};
use crate::backend::{self, LeaseKind};
use crate::cli;
use crate::config::{self, Settings};
use crate::error::{Error, usage};
use crate::handle::Handle;
use crate::lease;
use crate::outcome::{Outcome, Reader, print};
use crate::supervise::Signals;
use crate::{host, jsonlog};

pub async fn cmd_acquire(c: &Connector<'_>, a: cli::AcquireArgs) -> Result<Outcome> {
    let s = c.settings;
    let lock = s.lock(&a.lock)?;
    let mut signals = Signals::install()?;
    let deadline = lease::deadline(lock.wait);
    let backend = match connect_waiting(c, &lock, deadline).await? {
        Ok((b, _)) => b,
        Err(not) => return Ok(not.into()),
    };
    let me = owner(LeaseKind::Handle)?;
    let keeper = match take_locks(
        s,
        &backend,
        &lock,
        &me,
        Duration::ZERO,
        &mut signals,
        deadline,
    )
    .await?
    {
        Ok(k) => k,
        Err(not) => return Ok(not.into()),
    };
    let h = Handle::new(&s.namespace, lock.ttl, &keeper.leases()).issued_by(s.shown_backends());
    // The handle is the only way to release these leases: if it reached
    // nobody (`dlock acquire | true`), let them go now rather than block
    // every other taker until the TTL runs out. A failed write returns an
    // error with the keeper still holding them, and that releases them too.
    if print(&(h.encode() + "\n"))? == Reader::Gone {
        keeper.release().await;
        return Ok(Outcome::ReaderGone);
    }
    // The handle holds them from now on.
    keeper.hand_over();
    Ok(Outcome::Done)
}

pub async fn cmd_renew(c: &Connector<'_>, a: cli::RenewArgs) -> Result<Outcome> {
    let h = Handle::decode(&a.handle)?;
    same_service(c.settings, &h)?;
    let ttl = a.ttl.unwrap_or(h.ttl());
    if ttl < Duration::from_millis(100) {
        return Err(usage("--ttl must be at least 100ms"));
    }
    let backend = c.get().await?;
    for l in h.leases() {
        match backend.renew(&l, ttl).await? {
            backend::Renewal::Renewed => {
                tracing::info!(
                    event = "renewed",
                    key = l.key,
                    token = l.token,
                    ttl_ms = ttl.as_millis() as u64,
                    "lease renewed"
                )
            }
            backend::Renewal::Lost => {
                return Err(Error::Lost(format!(
                    "the handle no longer holds {:?} (token {}): its lease expired or was broken; nothing was changed",
                    l.key, l.token
                ))
                .into());
            }
        }
    }
    Ok(Outcome::Done)
}

/// A handle used against another kind of backend than the one that issued
/// it (a CI step that forgot `--backend`) is a usage error, said as such
/// before connecting, rather than "its lease expired".
fn same_service(s: &Settings, h: &Handle) -> Result<()> {
    let Some(issuer) = &h.backend else {
        return Ok(());
    };
    let (was, is) = (
        config::service_of(issuer),
        config::service_of(&s.backends[0]),
    );
    if was != is {
        return Err(usage(format!(
            "this handle was issued by {issuer} ({was}); this is {} ({is}): give the --backend it was acquired with",
            s.shown_backends()
        )));
    }
    Ok(())
}

pub async fn cmd_release(c: &Connector<'_>, a: cli::ReleaseArgs) -> Result<Outcome> {
    let s = c.settings;
    for key in &a.key {
        s.validate_key(key)?;
    }
    if let Some(hs) = &a.handle {
        same_service(s, &Handle::decode(hs)?)?;
    }
    let backend = c.get().await?;
    if let Some(hs) = &a.handle {
        let h = Handle::decode(hs)?;
        let mut gone = Vec::new();
        for l in h.leases() {
            let ok = backend.release(&l).await?;
            if !ok {
                gone.push(format!("{:?} (token {})", l.key, l.token));
            }
        }
        if !gone.is_empty() && a.if_held {
            if !s.quiet {
                jsonlog::say(
                    "INFO",
                    &format!(
                        "the handle no longer held {}: nothing to release (--if-held)",
                        gone.join(", ")
                    ),
                );
            }
            return Ok(Outcome::Done);
        }
        if !gone.is_empty() {
            return Err(Error::Lost(format!(
                "the handle no longer held {}: it was already released, or its lease expired or was broken, \
                 and whoever holds it now keeps it (--if-held makes this exit 0)",
                gone.join(", ")
            ))
            .into());
        }
        return Ok(Outcome::Done);
    }
    if !a.force {
        return Err(usage(
            "releasing by --key needs --force (it breaks whoever holds the lock)",
        ));
    }
    for key in &a.key {
        let n = backend.force_release(&s.namespace, key).await?;
        let by = format!(
            "{}@{} (pid {})",
            host::user(),
            host::hostname(),
            std::process::id()
        );
        tracing::warn!(event = "forced", key, holders = n, by, "forced release");
        if !s.quiet {
            if n == 0 {
                jsonlog::say("INFO", &format!("{key:?} was not held"));
            } else {
                jsonlog::say(
                    "WARN",
                    &format!(
                        "broke the lock on {key:?} ({n} holder{})",
                        if n == 1 { "" } else { "s" }
                    ),
                );
            }
        }
    }
    Ok(Outcome::Done)
}
