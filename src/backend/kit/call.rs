//! One bounded call that types its error: an outage, a full server, a
//! refusal; a call that gets no answer within its bound is an outage.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use crate::error::Error;
use crate::human::human_duration;

/// What kind of failure a service's error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Refused, reset, restarting, timed out: retried while waiting.
    Outage,
    /// Up, but no room for another client (or, on a SQL server, its own row
    /// locks busy: a lock wait timed out, a deadlock's victim again and
    /// again): waited out like a busy lock.
    Full,
    /// Authentication, authorisation or TLS trust failed: never retried.
    Denied,
}

/// The typed error for a failure of `kind`.
pub fn typed(kind: Kind, msg: String) -> anyhow::Error {
    match kind {
        Kind::Outage => Error::Unavailable(msg),
        Kind::Full => Error::Full(msg),
        Kind::Denied => Error::Denied(msg),
    }
    .into()
}

/// How the message of [`no_answer`] ends.
const NO_ANSWER: &str = "(--connect-timeout)";

/// The message for a step that got no answer in time.
pub fn no_answer(service: &str, what: &str, timeout: Duration) -> anyhow::Error {
    Error::Unavailable(format!(
        "{service}: {what}: no answer within {} {NO_ANSWER}",
        human_duration(timeout)
    ))
    .into()
}

/// Whether an error is [`no_answer`]'s: a call that waited its whole
/// bound for an answer.
pub(super) fn unanswered(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        matches!(e.downcast_ref::<Error>(), Some(Error::Unavailable(m)) if m.ends_with(NO_ANSWER))
    })
}

/// One call to a service, bounded by `timeout`. Its error, or the
/// time-out, becomes a typed error naming the service and the step;
/// `kind` says what kind of failure the service's error is.
pub async fn bounded<T, E: Display>(
    service: &str,
    what: &str,
    timeout: Duration,
    f: impl Future<Output = Result<T, E>>,
    kind: impl FnOnce(&E) -> Kind,
) -> anyhow::Result<T> {
    match tokio::time::timeout(timeout, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(typed(kind(&e), format!("{service}: {what}: {e}"))),
        Err(_) => Err(no_answer(service, what, timeout)),
    }
}

/// One call bounded by `timeout` whose error the caller looks at itself
/// (ZooKeeper's "no node", a version that changed): the service's answer,
/// error or not, or [`no_answer`] when none came in time.
pub async fn answer<T, E>(
    service: &str,
    what: &str,
    timeout: Duration,
    f: impl Future<Output = Result<T, E>>,
) -> anyhow::Result<Result<T, E>> {
    tokio::time::timeout(timeout, f)
        .await
        .map_err(|_| no_answer(service, what, timeout))
}

/// A call whose failure changes nothing (a clean-up, an optional read),
/// bounded by `timeout`: its result, or `None` on an error or no answer.
pub async fn best_effort<T, E>(
    timeout: Duration,
    f: impl Future<Output = Result<T, E>>,
) -> Option<T> {
    tokio::time::timeout(timeout, f).await.ok()?.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn bounded_types_errors_and_timeouts() {
        let e = bounded(
            "svc",
            "step",
            Duration::from_secs(1),
            async { Err::<(), _>("too many") },
            |_| Kind::Full,
        )
        .await
        .unwrap_err();
        assert_eq!(crate::error::retry_of(&e), crate::error::Retry::Full);
        assert_eq!(e.to_string(), "svc: step: too many");
        let e = bounded(
            "svc",
            "step",
            Duration::from_millis(10),
            std::future::pending::<Result<(), String>>(),
            |_| Kind::Denied,
        )
        .await
        .unwrap_err();
        assert_eq!(crate::error::retry_of(&e), crate::error::Retry::Outage);
        assert!(e.to_string().contains("no answer within 10ms"), "{e}");
        let pending = std::future::pending::<Result<(), String>>;
        let t = Duration::from_millis(10);
        let e = answer("svc", "look", t, pending()).await.unwrap_err();
        assert_eq!(crate::error::retry_of(&e), crate::error::Retry::Outage);
        let kept = answer("svc", "look", t, async { Err::<(), _>("no node") }).await;
        assert_eq!(kept.unwrap(), Err("no node"));
        assert_eq!(best_effort(t, pending()).await, None);
        assert_eq!(best_effort(t, async { Err::<(), _>("x") }).await, None);
        assert_eq!(best_effort(t, async { Ok::<_, String>(3) }).await, Some(3));
    }
}
