//! `dlock ping` and `dlock doctor`.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::Connector;
use crate::outcome::{Outcome, print};
use crate::{cli, doctor, error, exit_code, status};

pub async fn cmd_ping(c: &Connector<'_>) -> Result<Outcome> {
    let s = c.settings;
    let t0 = Instant::now();
    let backend = c.get().await?;
    let connected = t0.elapsed();
    let t1 = Instant::now();
    let info = tokio::time::timeout(s.connect_timeout, backend.ping())
        .await
        .map_err(|_| {
            error::unavailable(format!(
                "backend {} did not answer a ping",
                backend.describe()
            ))
        })??;
    let rtt = t1.elapsed();
    let line = format!(
        "{} {} ({}): connect {:.1}ms, round trip {:.2}ms\n",
        info.kind,
        info.version,
        info.detail,
        connected.as_secs_f64() * 1e3,
        rtt.as_secs_f64() * 1e3
    );
    // A reader gone (`dlock ping | true`) had what it wanted: the ping
    // succeeded either way.
    print(&line)?;
    Ok(Outcome::Done)
}

pub async fn cmd_doctor(c: &Connector<'_>, a: cli::DoctorArgs) -> Result<Outcome> {
    let s = c.settings;
    let ttl = s.ttl(a.ttl)?;
    let max_skew = a.max_skew.unwrap_or(Duration::from_secs(1));
    let shown = s.shown_backends();
    let (checks, reachable) = match c.get().await {
        Ok(backend) => {
            let checks = doctor::examine(backend.as_ref(), ttl, max_skew, s.connect_timeout).await;
            let unreachable = !checks
                .iter()
                .any(|c| c.name == "reachable" && c.level == doctor::Level::Ok);
            (checks, !unreachable)
        }
        Err(e) => {
            // Any other failure (a bad setting) is not the doctor's to report.
            if error::exit_code_of(&e) != exit_code::UNAVAILABLE {
                return Err(e);
            }
            let check = doctor::Check::new(doctor::Level::Fail, "reachable", format!("{e:#}"))
                .fix("check the URL, that the server runs, and that this host may reach it");
            (vec![check], false)
        }
    };
    let report = doctor::Report {
        backend: shown,
        ttl,
        checks,
    };
    let text = if a.json {
        serde_json::to_string_pretty(&report.to_json())? + "\n"
    } else {
        report.text(status::Paint(s.color))
    };
    // A reader gone changes nothing: the exit code is the checks' verdict.
    print(&text)?;
    let worst = report.worst();
    Ok(if !reachable {
        Outcome::Unreachable
    } else if worst == doctor::Level::Fail || (a.strict && worst == doctor::Level::Warn) {
        Outcome::Unhealthy
    } else {
        Outcome::Done
    })
}
