//! `dlock status`: once, or `--watch`.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::Connector;
use crate::backend::{self, Backend};
use crate::cli;
use crate::config::{self, Settings};
use crate::error::usage;
use crate::outcome::{Outcome, Reader, print};
use crate::status;
use crate::supervise::Signals;

pub async fn cmd_status(c: &Connector<'_>, mut a: cli::StatusArgs) -> Result<Outcome> {
    let s = c.settings;
    for k in &a.keys {
        s.validate_key(k)?;
    }
    // Each named key once, in the order given.
    let mut seen = std::collections::HashSet::new();
    a.keys.retain(|k| seen.insert(k.clone()));
    let backend = c.get().await?;
    let Some(every) = a.watch else {
        let st = backend
            .status(&s.namespace, &a.keys)
            .await
            .map(|st| in_order(st, &a.keys))?;
        let text = render_status(s, backend.as_ref(), &st, a.json)?;
        return Ok(match print(&text)? {
            Reader::Reading => Outcome::Done,
            Reader::Gone => Outcome::ReaderGone,
        });
    };
    if every < Duration::from_millis(100) {
        return Err(usage("--watch must be at least 100ms"));
    }
    // Refresh until interrupted, which is the normal way to stop: exit 0.
    let mut signals = Signals::install()?;
    let in_place = !a.json && std::io::IsTerminal::is_terminal(&std::io::stdout());
    // Each backend step is bounded; this only catches a status of many keys
    // on a backend that has stopped answering altogether.
    let bound = s.connect_timeout * 4;
    loop {
        let t0 = Instant::now();
        let st = tokio::time::timeout(bound, backend.status(&s.namespace, &a.keys))
            .await
            .map(|r| r.map(|st| in_order(st, &a.keys)));
        let (body, failed) = match st {
            Ok(Ok(st)) if a.json => (serde_json::to_string(&status::to_json(&st))? + "\n", false),
            Ok(Ok(st)) => (render_status(s, backend.as_ref(), &st, false)?, false),
            Ok(Err(e)) => (format!("dlock: {e:#}\n"), true),
            Err(_) => (
                format!(
                    "dlock: backend {} did not answer within {}\n",
                    backend.describe(),
                    status::human_duration(bound)
                ),
                true,
            ),
        };
        let text = if a.json {
            // Errors go to stderr: stdout stays one JSON array per line.
            if failed {
                let msg = body.trim_end();
                crate::jsonlog::say("ERROR", msg.strip_prefix("dlock: ").unwrap_or(msg));
                String::new()
            } else {
                body
            }
        } else {
            let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
            let head = format!(
                "Every {}: dlock status on {}    {now}",
                status::human_duration(every),
                backend.describe()
            );
            let head = status::Paint(s.color).paint(status::Paint::DIM, &head);
            if in_place {
                // Home and clear, like watch(1).
                format!("\x1b[H\x1b[2J{head}\n\n{body}")
            } else {
                format!("{head}\n{body}\n")
            }
        };
        if print(&text)? == Reader::Gone {
            return Ok(Outcome::ReaderGone);
        }
        tokio::select! {
            () = tokio::time::sleep_until((t0 + every).into()) => {}
            _ = signals.recv() => return Ok(Outcome::Done),
        }
    }
}

/// The same row order on every backend: named keys in the order given,
/// the namespace's keys sorted as people sort them (`job-2` before `job-10`).
fn in_order(mut st: Vec<backend::KeyStatus>, keys: &[String]) -> Vec<backend::KeyStatus> {
    if keys.is_empty() {
        st.sort_by(|a, b| status::natural_cmp(&a.key, &b.key));
    } else {
        st.sort_by_key(|k| keys.iter().position(|n| *n == k.key).unwrap_or(usize::MAX));
    }
    st
}

/// The table (or JSON) for one look at the locks.
fn render_status(
    s: &Settings,
    backend: &dyn Backend,
    st: &[backend::KeyStatus],
    json: bool,
) -> Result<String> {
    Ok(if json {
        serde_json::to_string_pretty(&status::to_json(st))? + "\n"
    } else {
        // The default database is this user's own: say so, since another
        // user's dlock on this host does not see these locks.
        let own = config::default_sqlite_path()
            .is_some_and(|p| backend.describe() == format!("sqlite:{}", p.display()));
        let note = if own {
            " (your own default database: other users' locks are not in it)"
        } else {
            ""
        };
        if st.is_empty() {
            format!(
                "no lock is held in namespace {:?} on {}{note}\n",
                s.namespace,
                backend.describe()
            )
        } else if own && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            let table = status::table(st, status::Paint(s.color));
            let foot = format!("on {}{note}", backend.describe());
            format!(
                "{table}{}\n",
                status::Paint(s.color).paint(status::Paint::DIM, &foot)
            )
        } else {
            status::table(st, status::Paint(s.color))
        }
    })
}
