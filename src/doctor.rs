//! `dlock doctor`: what would make locks on the configured backend unsafe or
//! slow, each finding with the fix.
//!
//! Generic checks run on every backend: that it answers, its round-trip time
//! against the TTL, the TTL the server really grants, and this host's clock
//! against the server's (where the server tells its time) and against NTP.
//! Each backend adds its own ([`crate::backend::Backend::doctor`]): Redis
//! persistence, eviction and independence of Redlock servers, every member
//! of a ZooKeeper ensemble or etcd cluster, an SQLite file on a network
//! filesystem.

use std::time::{Duration, Instant, SystemTime};

use serde_json::json;

use crate::backend::Backend;
pub use crate::backend::probe::{Check, Level};
use crate::status::{Paint, human_duration};

/// Round trips measured with `ping`.
pub struct Rtt {
    pub median: Duration,
    pub max: Duration,
}

/// Judge round-trip times against the TTL. A renewal is sent every third
/// of the TTL and must land before the lease runs out; dlock gives up on it
/// (and stops the child) a safety margin before that. Round trips that eat
/// a visible part of the renewal period leave no room for one retry.
pub fn judge_rtt(rtt: &Rtt, ttl: Duration) -> Check {
    let shown = format!(
        "median {:.2}ms, max {:.2}ms with --ttl {}",
        rtt.median.as_secs_f64() * 1e3,
        rtt.max.as_secs_f64() * 1e3,
        human_duration(ttl)
    );
    let fix = "raise --ttl, or run dlock closer to the server";
    if rtt.median * 10 > ttl {
        Check::new(
            Level::Fail,
            "round-trip",
            format!("{shown}: a tenth of the TTL or more goes to one round trip, so a renewal cannot be retried in time"),
        )
        .fix(fix)
    } else if rtt.max * 20 > ttl {
        Check::new(
            Level::Warn,
            "round-trip",
            format!("{shown}: the slowest round trip took over a twentieth of the TTL"),
        )
        .fix(fix)
    } else {
        Check::ok("round-trip", shown)
    }
}

/// Judge the server's clock, read at `server`, between local `before` and
/// `after` (wall clock).
pub fn judge_skew(
    server: SystemTime,
    before: SystemTime,
    after: SystemTime,
    max: Duration,
) -> Check {
    let span = after.duration_since(before).unwrap_or_default();
    let mid = before + span / 2;
    let (ahead, d) = match mid.duration_since(server) {
        Ok(d) => (true, d),
        Err(e) => (false, e.duration()),
    };
    let shown = format!(
        "this host's clock is {} {} the server's (±{})",
        fine(d),
        if ahead { "ahead of" } else { "behind" },
        fine(span / 2)
    );
    if d.saturating_sub(span / 2) > max {
        Check::new(
            Level::Fail,
            "clock",
            format!(
                "{shown}, more than --max-skew {}: `status` shows wrong times, and jobs fired by cron on hosts this far apart are not covered by a --lock-at-least shorter than the skew",
                human_duration(max)
            ),
        )
        .fix("run an NTP client (chrony, systemd-timesyncd) on this host and on the server")
    } else {
        Check::ok("clock", shown)
    }
}

/// A duration to a tenth of a millisecond when it is short.
fn fine(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.1}ms", d.as_secs_f64() * 1e3)
    } else {
        human_duration(d)
    }
}

/// Whether the kernel believes its clock is synchronised (adjtimex).
fn local_clock() -> Check {
    // SAFETY: adjtimex with modes 0 only reads into the struct we pass.
    let state = unsafe {
        let mut t: libc::timex = std::mem::zeroed();
        libc::adjtimex(&mut t)
    };
    if state < 0 {
        Check::new(
            Level::Warn,
            "ntp",
            "cannot tell whether this host's clock is synchronised (adjtimex failed)",
        )
    } else if state == libc::TIME_ERROR {
        Check::new(
            Level::Warn,
            "ntp",
            "the kernel reports this host's clock as not synchronised",
        )
        .fix("run an NTP client (chrony, systemd-timesyncd); cron jobs on several hosts fire as far apart as their clocks are")
    } else {
        Check::ok(
            "ntp",
            "the kernel reports this host's clock as synchronised",
        )
    }
}

/// Everything doctor found, and the exit code it means.
pub struct Report {
    pub backend: String,
    pub ttl: Duration,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn worst(&self) -> Level {
        self.checks
            .iter()
            .map(|c| c.level)
            .max()
            .unwrap_or(Level::Ok)
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "backend": self.backend,
            "ttl_seconds": self.ttl.as_secs_f64(),
            "checks": self.checks.iter().map(|c| json!({
                "check": c.name,
                "level": c.level.as_str().to_ascii_lowercase(),
                "message": c.message,
                "fix": c.fix,
            })).collect::<Vec<_>>(),
        })
    }

    pub fn text(&self, paint: Paint) -> String {
        let mut out = format!(
            "dlock doctor: {} with --ttl {}\n",
            self.backend,
            human_duration(self.ttl)
        );
        for c in &self.checks {
            let style = match c.level {
                Level::Ok => Paint::GREEN,
                Level::Info => Paint::DIM,
                Level::Warn => Paint::YELLOW,
                Level::Fail => Paint::RED,
            };
            let tag = paint.paint(style, &format!("{:<4}", c.level.as_str()));
            out.push_str(&format!("  {tag}  {}: {}\n", c.name, c.message));
            if let Some(f) = &c.fix {
                out.push_str(&format!("        fix: {f}\n"));
            }
        }
        let count = |l: Level| self.checks.iter().filter(|c| c.level == l).count();
        let (fails, warns) = (count(Level::Fail), count(Level::Warn));
        let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
        out.push_str(&if fails + warns == 0 {
            "all checks passed\n".to_string()
        } else {
            format!(
                "{}, {}\n",
                plural(fails, "problem"),
                plural(warns, "warning")
            )
        });
        out
    }
}

/// Run every check against a connected backend.
pub async fn examine(
    backend: &dyn Backend,
    ttl: Duration,
    max_skew: Duration,
    timeout: Duration,
) -> Vec<Check> {
    let mut checks = Vec::new();
    // First, so a session-based backend opens its session with this TTL.
    let granted = tokio::time::timeout(timeout, backend.effective_ttl(ttl)).await;
    // Round trips: a few pings, each bounded.
    let mut times = Vec::new();
    let mut version = None;
    for _ in 0..5 {
        let t = Instant::now();
        // The backend bounds each server by `timeout` (in parallel); this
        // outer bound only catches a backend that would not.
        match tokio::time::timeout(timeout * 2, backend.ping()).await {
            Ok(Ok(info)) => {
                times.push(t.elapsed());
                version.get_or_insert(format!("{} {}", info.kind, info.version));
            }
            Ok(Err(e)) => {
                checks.push(Check::new(Level::Fail, "reachable", format!("{e:#}")));
                break;
            }
            Err(_) => {
                checks.push(Check::new(
                    Level::Fail,
                    "reachable",
                    format!("no answer to a ping within {}", human_duration(timeout * 2)),
                ));
                break;
            }
        }
    }
    if let Some(v) = version {
        checks.push(Check::ok("reachable", format!("answers: {v}")));
    }
    if !times.is_empty() {
        times.sort();
        let rtt = Rtt {
            median: times[times.len() / 2],
            max: *times.last().unwrap_or(&Duration::ZERO),
        };
        checks.push(judge_rtt(&rtt, ttl));
    }
    if times.is_empty() {
        return checks;
    }
    // The TTL the server really grants.
    match granted {
        Ok(Ok(eff)) if eff != ttl => checks.push(
            Check::new(
                Level::Warn,
                "ttl",
                format!(
                    "the server grants {} where --ttl {} was asked; dlock follows the server",
                    human_duration(eff),
                    human_duration(ttl)
                ),
            )
            .fix("choose a --ttl within the server's limits (ZooKeeper: minSessionTimeout and maxSessionTimeout in zoo.cfg), or change them"),
        ),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => checks.push(Check::new(
            Level::Warn,
            "ttl",
            format!("could not learn the TTL the server grants: {e:#}"),
        )),
        Err(_) => checks.push(Check::new(
            Level::Warn,
            "ttl",
            format!("the server did not say what TTL it grants within {}", human_duration(timeout)),
        )),
    }
    // The server's clock against ours.
    let before = SystemTime::now();
    match tokio::time::timeout(timeout, backend.server_time()).await {
        Ok(Ok(Some(server))) => {
            let after = SystemTime::now();
            checks.push(judge_skew(server, before, after, max_skew));
        }
        Ok(Ok(None)) => checks.push(Check::new(
            Level::Info,
            "clock",
            "the backend does not report its clock, so there is nothing to compare",
        )),
        Ok(Err(e)) => checks.push(Check::new(
            Level::Warn,
            "clock",
            format!("could not read the server's clock: {e:#}"),
        )),
        Err(_) => checks.push(Check::new(
            Level::Warn,
            "clock",
            "the server did not tell its time in time",
        )),
    }
    checks.push(local_clock());
    checks.extend(backend.doctor(ttl, timeout).await);
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_against_the_ttl() {
        let rtt = |ms: u64, max: u64| Rtt {
            median: Duration::from_millis(ms),
            max: Duration::from_millis(max),
        };
        let ttl = Duration::from_secs(1);
        assert_eq!(judge_rtt(&rtt(1, 2), ttl).level, Level::Ok);
        assert_eq!(judge_rtt(&rtt(1, 60), ttl).level, Level::Warn);
        assert_eq!(judge_rtt(&rtt(150, 200), ttl).level, Level::Fail);
    }

    #[test]
    fn skew_beyond_the_limit_fails() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ms = Duration::from_millis;
        let max = Duration::from_secs(1);
        assert_eq!(judge_skew(t, t, t + ms(2), max).level, Level::Ok);
        let far = judge_skew(t - Duration::from_secs(5), t, t + ms(2), max);
        assert_eq!(far.level, Level::Fail);
        assert!(far.message.contains("ahead of"), "{}", far.message);
        let behind = judge_skew(t + Duration::from_secs(3), t, t + ms(2), max);
        assert!(behind.message.contains("behind"), "{}", behind.message);
        // Uncertainty (half the round trip) is given the benefit of the doubt.
        assert_eq!(
            judge_skew(t - ms(900), t, t + ms(1200), max).level,
            Level::Ok
        );
    }
}
