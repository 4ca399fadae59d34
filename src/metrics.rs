//! `run --metrics-file`: what one run did, in the Prometheus text format
//! that node_exporter's textfile collector reads.
//!
//! The file is replaced atomically (written beside it, then renamed), so
//! the collector never reads half of it. Each run rewrites the whole file;
//! the time of the last success is carried over from the old file when this
//! run did not succeed, so an alert on "no success for a day" keeps working
//! across failed runs.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

/// How a run ended, as far as a scheduler cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Locked, ran, and the command exited 0.
    Success,
    /// Locked and ran; the command failed (non-zero, signal, not found).
    Failed,
    /// Not acquired: busy, or waited too long.
    Busy,
    /// The lease was lost while the command ran.
    Lost,
    /// A signal ended the wait.
    Interrupted,
    /// The backend was unavailable, or dlock failed.
    Error,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Success,
        Outcome::Failed,
        Outcome::Busy,
        Outcome::Lost,
        Outcome::Interrupted,
        Outcome::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failed => "failed",
            Outcome::Busy => "busy",
            Outcome::Lost => "lost",
            Outcome::Interrupted => "interrupted",
            Outcome::Error => "error",
        }
    }
}

/// What one `run` did.
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// The keys, joined by commas: the `key` label.
    pub key: String,
    pub namespace: String,
    pub outcome: Outcome,
    pub exit_code: i32,
    pub waited: Duration,
    pub held: Duration,
    /// The fencing token(s) the run held (the highest, if several keys).
    pub token: Option<u64>,
    pub ended: SystemTime,
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The last-success timestamp an older file recorded for these labels.
fn previous_success(old: &str, labels: &str) -> Option<f64> {
    let prefix = format!("dlock_last_success_timestamp_seconds{{{labels}}} ");
    old.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// The file's text for a run; `old` is what the file held before.
pub fn render(r: &RunRecord, old: &str) -> String {
    let labels = format!(
        "namespace=\"{}\",key=\"{}\"",
        label(&r.namespace),
        label(&r.key)
    );
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, lines: Vec<(String, String)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for (extra, value) in lines {
            out.push_str(&format!("{name}{{{labels}{extra}}} {value}\n"));
        }
    };
    let one = |v: String| vec![(String::new(), v)];
    metric(
        "dlock_wait_seconds",
        "Seconds the last run waited for its lock.",
        one(format!("{:.6}", r.waited.as_secs_f64())),
    );
    metric(
        "dlock_hold_seconds",
        "Seconds the last run held its lock (0 if it never got it).",
        one(format!("{:.6}", r.held.as_secs_f64())),
    );
    metric(
        "dlock_outcome",
        "How the last run ended: 1 for its outcome, 0 for the others.",
        Outcome::ALL
            .iter()
            .map(|o| {
                (
                    format!(",outcome=\"{}\"", o.as_str()),
                    u8::from(*o == r.outcome).to_string(),
                )
            })
            .collect(),
    );
    metric(
        "dlock_exit_code",
        "Exit status of the last run of dlock.",
        one(r.exit_code.to_string()),
    );
    if let Some(t) = r.token {
        metric(
            "dlock_fencing_token",
            "Fencing token of the last run's lock.",
            one(t.to_string()),
        );
    }
    metric(
        "dlock_last_run_timestamp_seconds",
        "When the last run ended, in seconds since the epoch.",
        one(format!("{:.3}", secs(r.ended))),
    );
    let last_success = if r.outcome == Outcome::Success {
        Some(secs(r.ended))
    } else {
        previous_success(old, &labels)
    };
    if let Some(t) = last_success {
        metric(
            "dlock_last_success_timestamp_seconds",
            "When a run last ended in success, in seconds since the epoch.",
            one(format!("{t:.3}")),
        );
    }
    out
}

/// Replace the file at `path` with the metrics of `r`, atomically.
pub fn write(path: &Path, r: &RunRecord) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    replace(path, &render(r, &old))
}

/// What one `dlock elect` candidate has done so far.
#[derive(Debug, Clone)]
pub struct Leadership {
    pub key: String,
    pub namespace: String,
    /// When the current term began, if this candidate leads now.
    pub since: Option<SystemTime>,
    /// Terms won so far.
    pub terms: u64,
    /// Time as leader in the terms that have ended.
    pub led: Duration,
    /// The token of the latest term won.
    pub token: Option<u64>,
}

/// The file's text for an `elect` candidate, as of `now`.
pub fn render_leadership(l: &Leadership, now: SystemTime) -> String {
    let labels = format!(
        "namespace=\"{}\",key=\"{}\"",
        label(&l.namespace),
        label(&l.key)
    );
    let current = l.since.map_or(Duration::ZERO, |s| {
        now.duration_since(s).unwrap_or_default()
    });
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{labels}}} {value}\n"
        ));
    };
    metric(
        "dlock_leader",
        "gauge",
        "1 while this candidate leads, 0 while it stands by.",
        u8::from(l.since.is_some()).to_string(),
    );
    metric(
        "dlock_leader_terms_total",
        "counter",
        "Terms this candidate has won.",
        l.terms.to_string(),
    );
    metric(
        "dlock_leader_seconds_total",
        "counter",
        "Seconds this candidate has led, as of the last write.",
        format!("{:.6}", (l.led + current).as_secs_f64()),
    );
    metric(
        "dlock_leader_token",
        "gauge",
        "The fencing token (term) of the latest term won.",
        l.token.map_or("NaN".to_string(), |t| t.to_string()),
    );
    metric(
        "dlock_leader_since_timestamp_seconds",
        "gauge",
        "When the current term began (0 while standing by).",
        format!("{:.3}", l.since.map_or(0.0, secs)),
    );
    out
}

/// Replace the file at `path` with an `elect` candidate's metrics.
pub fn write_leadership(path: &Path, l: &Leadership) -> Result<()> {
    replace(path, &render_leadership(l, SystemTime::now()))
}

/// Replace the file at `path` with `text`, atomically.
fn replace(path: &Path, text: &str) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("--metrics-file {} names no file", path.display()))?;
    // A dot-name the textfile collector ignores (it reads only *.prom),
    // unpredictable and created new: never a file someone else prepared.
    let mut r = [0u8; 8];
    let _ = getrandom::fill(&mut r);
    let tmp = dir.join(format!(
        ".{}.{}.{:016x}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        u64::from_ne_bytes(r)
    ));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
        .with_context(|| format!("cannot write metrics to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leadership_counts_the_current_term() {
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        let mut l = Leadership {
            key: "k".into(),
            namespace: "ns".into(),
            since: Some(now - Duration::from_secs(5)),
            terms: 3,
            led: Duration::from_secs(10),
            token: Some(42),
        };
        let t = render_leadership(&l, now);
        assert!(
            t.contains("dlock_leader{namespace=\"ns\",key=\"k\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("dlock_leader_seconds_total{namespace=\"ns\",key=\"k\"} 15.0"),
            "{t}"
        );
        assert!(t.contains("# TYPE dlock_leader_terms_total counter"), "{t}");
        assert!(
            t.contains("dlock_leader_token{namespace=\"ns\",key=\"k\"} 42\n"),
            "{t}"
        );
        l.since = None;
        let t = render_leadership(&l, now);
        assert!(
            t.contains("dlock_leader{namespace=\"ns\",key=\"k\"} 0\n"),
            "{t}"
        );
        assert!(
            t.contains("dlock_leader_seconds_total{namespace=\"ns\",key=\"k\"} 10.0"),
            "{t}"
        );
        assert!(
            t.contains("dlock_leader_since_timestamp_seconds{namespace=\"ns\",key=\"k\"} 0.000\n"),
            "{t}"
        );
    }

    fn record(outcome: Outcome) -> RunRecord {
        RunRecord {
            key: "nightly".into(),
            namespace: "dlock".into(),
            outcome,
            exit_code: 0,
            waited: Duration::from_millis(1500),
            held: Duration::from_secs(2),
            token: Some(7),
            ended: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        }
    }

    #[test]
    fn last_success_survives_a_failed_run() {
        let ok = render(&record(Outcome::Success), "");
        assert!(ok.contains(
            "dlock_last_success_timestamp_seconds{namespace=\"dlock\",key=\"nightly\"} 1800000000.000\n"
        ));
        assert!(ok.contains(
            "dlock_outcome{namespace=\"dlock\",key=\"nightly\",outcome=\"success\"} 1\n"
        ));
        assert!(ok.contains("dlock_wait_seconds{namespace=\"dlock\",key=\"nightly\"} 1.500000\n"));
        let mut busy = record(Outcome::Busy);
        busy.ended += Duration::from_secs(60);
        let b = render(&busy, &ok);
        assert!(b.contains("outcome=\"busy\"} 1\n") && b.contains("outcome=\"success\"} 0\n"));
        assert!(b.contains("dlock_last_success_timestamp_seconds{namespace=\"dlock\",key=\"nightly\"} 1800000000.000\n"));
        assert!(b.contains(
            "dlock_last_run_timestamp_seconds{namespace=\"dlock\",key=\"nightly\"} 1800000060.000\n"
        ));
        // Never succeeded: no last-success line at all.
        assert!(!render(&busy, "").contains("last_success"));
    }

    #[test]
    fn labels_are_escaped() {
        let mut r = record(Outcome::Success);
        r.key = "a\"b\\c".into();
        assert!(render(&r, "").contains("key=\"a\\\"b\\\\c\""));
    }
}
