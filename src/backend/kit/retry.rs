//! Capped, jittered backoff, and riding out outages and full servers
//! within `--connect-timeout` and the `--wait` deadline.

use std::future::Future;
use std::time::{Duration, Instant};

use super::call::unanswered;
use crate::error::{Error, Retry, retry_of};
use crate::human::human_duration;

/// A random duration between half of `d` and all of it, so that many
/// waiters retrying together spread out.
pub fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    let frac = f64::from(u32::from_ne_bytes(b)) / f64::from(u32::MAX);
    d / 2 + d.mul_f64(frac / 2.0)
}

/// Exponential backoff with jitter, capped.
#[derive(Debug, Clone)]
pub struct Backoff {
    step: Duration,
    cap: Duration,
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Backoff {
        Backoff { step: first, cap }
    }

    /// The next delay: a jittered step; the step doubles up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let d = jitter(self.step);
        self.step = (self.step * 2).min(self.cap);
        d
    }
}

/// Run `step` until it succeeds, the way a waiter must treat its backend
/// (the contract's "Riding out the backend"):
///
/// - an outage (refused, reset, timed out) is retried with capped, jittered
///   backoff for up to `patience` (`--connect-timeout`) per outage, and
///   never past `deadline`; then its error is returned (exit 69);
/// - a full server is retried the same way until `deadline` (None: for
///   ever); then its [`Error::Full`] is returned, for the caller to report
///   as busy (75);
/// - any other error is returned at once.
///
/// A step that ran longer than `patience` before failing was waiting, not
/// failing, so its failure starts a new outage. A `deadline` already past
/// (`--no-wait`) makes one attempt.
pub async fn patiently<T, F, Fut>(
    deadline: Option<Instant>,
    patience: Duration,
    step: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    retry_patiently(deadline, patience, false, step).await
}

/// [`patiently`] for a step that never waits on purpose (connecting):
/// an outage is counted from the start of the attempt that failed first,
/// and each attempt is cut off where the outage's patience ends, so a
/// server that never answers, or one that refuses, is given up on within
/// `patience` of the first attempt, not one attempt later.
pub async fn patiently_each<T, F, Fut>(
    deadline: Option<Instant>,
    patience: Duration,
    step: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    retry_patiently(deadline, patience, true, step).await
}

async fn retry_patiently<T, F, Fut>(
    deadline: Option<Instant>,
    patience: Duration,
    cap: bool,
    mut step: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    // On tokio's clock, so that tests can run it under paused time.
    use tokio::time::Instant;
    let deadline =
        deadline.map(|d| Instant::now() + d.saturating_duration_since(std::time::Instant::now()));
    let mut outage_since: Option<Instant> = None;
    let mut outage = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    let mut full = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let mut last: Option<anyhow::Error> = None;
    loop {
        let began = Instant::now();
        let result = if cap {
            let end = outage_since.unwrap_or(began) + patience;
            match tokio::time::timeout_at(end, step()).await {
                Ok(r) => r,
                // Cut off: the outage's last error says more than "no answer".
                Err(_) => {
                    return Err(last.unwrap_or_else(|| {
                        Error::Unavailable(format!(
                            "no answer within {} (--connect-timeout)",
                            human_duration(patience)
                        ))
                        .into()
                    }));
                }
            }
        } else {
            step().await
        };
        let err = match result {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Err(err);
        }
        let wake = match retry_of(&err) {
            Retry::Never => return Err(err),
            Retry::Full => {
                outage_since = None;
                now + full.next_delay()
            }
            Retry::Outage => {
                let took = now.duration_since(began);
                let long = took > patience + Duration::from_secs(1);
                let since = match outage_since {
                    Some(s) if !long => s,
                    // A step that never waits on purpose (`cap`) was
                    // already failing when it began; one that waits was not.
                    _ if cap && !long => began,
                    // A call that got no answer for its whole bound (a
                    // server that accepts and stays silent) has ridden out
                    // that much of the outage already: 69 within
                    // --connect-timeout, as for a refused connection.
                    _ if unanswered(&err) => now - took.min(patience),
                    _ => now,
                };
                outage_since = Some(since);
                let end = since + patience;
                if now >= end {
                    return Err(err);
                }
                (now + outage.next_delay()).min(end)
            }
        };
        tracing::warn!(
            event = "retrying",
            error = format!("{err:#}"),
            "backend not ready; trying again"
        );
        last = Some(err);
        let wake = deadline.map_or(wake, |d| d.min(wake));
        tokio::time::sleep_until(wake).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::kit::{Kind, no_answer, typed};
    use tokio::time::Instant as Clock;

    #[test]
    fn backoff_is_jittered_and_capped() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let d: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[1] >= Duration::from_millis(100) && d[1] <= Duration::from_millis(200));
        for x in &d[2..] {
            assert!(*x >= Duration::from_millis(200) && *x <= Duration::from_millis(400));
        }
    }

    /// A step failing with `kind` `fails` times, then succeeding.
    fn flaky(
        kind: Kind,
        fails: usize,
        calls: &std::cell::Cell<usize>,
    ) -> impl FnMut() -> std::future::Ready<anyhow::Result<()>> + '_ {
        move || {
            calls.set(calls.get() + 1);
            std::future::ready(if calls.get() <= fails {
                Err(typed(kind, "down".into()))
            } else {
                Ok(())
            })
        }
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn an_outage_shorter_than_the_patience_is_ridden_out() {
        let calls = std::cell::Cell::new(0);
        let t = Clock::now();
        patiently(None, Duration::from_secs(5), flaky(Kind::Outage, 5, &calls))
            .await
            .unwrap();
        assert_eq!(calls.get(), 6);
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    /// Connecting: a server that never answers, or one whose every attempt
    /// takes most of the patience to fail (a pool retrying a refusal), is
    /// given up on within the patience of the first attempt.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn connecting_is_given_up_within_the_patience() {
        let patience = Duration::from_secs(2);
        let t = Clock::now();
        let e = patiently_each(None, patience, || {
            std::future::pending::<anyhow::Result<()>>()
        })
        .await
        .unwrap_err();
        assert_eq!(retry_of(&e), Retry::Outage);
        assert_eq!(t.elapsed(), patience, "a mute server");
        let slow_refusal = || async {
            tokio::time::sleep(Duration::from_millis(900)).await;
            Err::<(), _>(typed(Kind::Outage, "refused".into()))
        };
        let t = Clock::now();
        let e = patiently_each(None, patience, slow_refusal)
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("refused"), "{e:#}");
        assert!(t.elapsed() <= patience, "took {:?}", t.elapsed());
        // Before, the outage was counted from the first failure: 3.7 s.
        let t = Clock::now();
        patiently(None, patience, slow_refusal).await.unwrap_err();
        assert!(t.elapsed() > patience + Duration::from_millis(500));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_longer_outage_ends_in_its_error_within_the_patience() {
        let calls = std::cell::Cell::new(0);
        let t = Clock::now();
        let e = patiently(
            None,
            Duration::from_secs(5),
            flaky(Kind::Outage, 1000, &calls),
        )
        .await
        .unwrap_err();
        assert_eq!(retry_of(&e), Retry::Outage);
        assert!(t.elapsed() >= Duration::from_secs(5) && t.elapsed() < Duration::from_secs(6));
        // Never past the --wait deadline, however patient.
        let t = Clock::now();
        let d = Some(Instant::now() + Duration::from_secs(2));
        patiently(
            d,
            Duration::from_secs(60),
            flaky(Kind::Outage, 10_000, &calls),
        )
        .await
        .unwrap_err();
        assert!(t.elapsed() <= Duration::from_secs(2));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_silent_server_ends_within_the_patience() {
        // Every attempt waits out its bound for an answer, as a call to a
        // server that accepts and never answers does.
        let patience = Duration::from_secs(2);
        let calls = std::cell::Cell::new(0);
        let t = Clock::now();
        let e = patiently(None, patience, || {
            calls.set(calls.get() + 1);
            async move {
                tokio::time::sleep(patience).await;
                Err::<(), _>(no_answer("svc", "connect", patience))
            }
        })
        .await
        .unwrap_err();
        assert_eq!(retry_of(&e), Retry::Outage);
        assert_eq!(calls.get(), 1);
        assert!(t.elapsed() < patience + Duration::from_millis(100));
        // A quick failure after a long wait (the server went away while
        // we waited on the lock) is ridden out for the patience as ever.
        let calls = std::cell::Cell::new(0);
        let t = Clock::now();
        patiently(None, patience, || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                match n {
                    1 => {
                        tokio::time::sleep(patience).await;
                        Err(typed(Kind::Outage, "refused".into()))
                    }
                    2..=5 => Err(typed(Kind::Outage, "refused".into())),
                    _ => Ok(()),
                }
            }
        })
        .await
        .unwrap();
        assert!(t.elapsed() > patience);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_full_server_is_waited_out_until_the_deadline_and_denial_is_final() {
        let calls = std::cell::Cell::new(0);
        let t = Clock::now();
        patiently(None, Duration::from_secs(1), flaky(Kind::Full, 30, &calls))
            .await
            .unwrap();
        assert!(
            t.elapsed() > Duration::from_secs(10),
            "full is waited out past --connect-timeout"
        );
        let d = Some(Instant::now() + Duration::from_secs(3));
        let e = patiently(d, Duration::from_secs(1), flaky(Kind::Full, 10_000, &calls))
            .await
            .unwrap_err();
        assert_eq!(retry_of(&e), Retry::Full);
        let calls = std::cell::Cell::new(0);
        patiently(
            None,
            Duration::from_secs(5),
            flaky(Kind::Denied, 10, &calls),
        )
        .await
        .unwrap_err();
        assert_eq!(calls.get(), 1);
        // --no-wait: one attempt.
        let calls = std::cell::Cell::new(0);
        patiently(
            Some(Instant::now()),
            Duration::from_secs(5),
            flaky(Kind::Outage, 10, &calls),
        )
        .await
        .unwrap_err();
        assert_eq!(calls.get(), 1);
    }
}
