//! What a Redis error means for a waiter (outage, full, denied), one bounded
//! call that types it, and the summary of a round over several servers.

use std::future::Future;
use std::time::Duration;

use redis::{ErrorKind, RedisError, ServerErrorKind, Value};

use crate::backend::kit::{self, Kind};
use crate::error::{Retry, retry_of};

/// What Redis says, on accepting a connection past `maxclients`, before it
/// closes it.
const MAXCLIENTS: &str = "max number of clients reached";

/// What kind of failure a Redis error is: a server at `maxclients` is full
/// (waited out like a busy lock); a refused password or user (`WRONGPASS`,
/// `NOAUTH`, a failed `AUTH`), a missing ACL permission (`NOPERM`) or a
/// certificate that is not trusted is final; anything else (refused,
/// reset, `LOADING`, `MASTERDOWN`, a failover in progress) is an outage.
pub(super) fn kind(e: &RedisError) -> Kind {
    if e.to_string().contains(MAXCLIENTS) {
        return Kind::Full;
    }
    match e.kind() {
        ErrorKind::AuthenticationFailed | ErrorKind::Server(ServerErrorKind::NoPerm) => {
            return Kind::Denied;
        }
        _ => {}
    }
    if matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM")) || untrusted(e) {
        return Kind::Denied;
    }
    Kind::Outage
}

/// A TLS handshake that failed on the server's certificate: no retry
/// cures it (as for the SQL servers). redis-rs passes rustls's error up
/// inside an I/O error, behind an `Arc` that hides its type: its text
/// ("invalid peer certificate: UnknownIssuer") is what is left of it.
fn untrusted(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Io && e.to_string().contains("invalid peer certificate")
}

/// Whether `e` is a server's "max number of clients reached".
pub(super) fn is_full(e: &RedisError) -> bool {
    kind(e) == Kind::Full
}

/// One call to a Redis server (`shown`, its URL without the password),
/// bounded by `timeout`, its error typed by [`kind`].
pub(super) async fn call<T>(
    shown: &str,
    what: &str,
    timeout: Duration,
    f: impl Future<Output = redis::RedisResult<T>>,
) -> anyhow::Result<T> {
    kit::bounded(shown, what, timeout, f, kind).await
}

/// A full server is only seen on a new connection, and redis-rs hides
/// it: it sends its set-up (`AUTH` with a password, `CLIENT SETINFO`)
/// before the first command, and the server's greeting, "-ERR max number
/// of clients reached", is read as the answer to that set-up, or lost when
/// the server closes the connection: the `PING` fails with "Connection
/// reset by peer" (measured, with and without a password: an outage, 69
/// after --connect-timeout), or a failed `AUTH` (denied). After such a
/// failure, one bare connection (no credentials, no set-up; the same TLS),
/// whose `PING` a full server answers with its greeting, tells which it
/// was; its error replaces the first one if it says full.
pub(super) async fn why_failed(client: &redis::Client, e: RedisError) -> RedisError {
    // Only a failed `AUTH` or a lost connection can hide the greeting.
    let masked = e.kind() == ErrorKind::AuthenticationFailed || e.code().is_none();
    if !masked || is_full(&e) || e.is_timeout() || untrusted(&e) {
        return e;
    }
    let info = client
        .get_connection_info()
        .clone()
        .set_redis_settings(redis::RedisConnectionInfo::default().set_skip_set_lib_name());
    let probe = async {
        let c = redis::Client::open(info)?;
        let mut conn = c.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<Value>(&mut conn).await
    };
    match probe.await {
        Err(full) if is_full(&full) => full,
        _ => e,
    }
}

/// The error of a round that did not reach `quorum` of `total` servers
/// (`answered` did), from the errors of those that failed: denied when the
/// servers that did not refuse us cannot make a majority (no retry helps),
/// full when the full servers alone keep us from one (waited out), else an
/// outage (ridden out within --connect-timeout). `connecting`: the round
/// was the first one, that reaches the servers.
pub(super) fn too_few(
    connecting: bool,
    total: usize,
    quorum: usize,
    answered: usize,
    errors: &[anyhow::Error],
) -> anyhow::Error {
    let count = |r: Retry| errors.iter().filter(|e| retry_of(e) == r).count();
    let (outage, full) = (count(Retry::Outage), count(Retry::Full));
    let denied = errors.len() - outage - full;
    let all = errors
        .iter()
        .map(|e| format!("{e:#}"))
        .collect::<Vec<_>>()
        .join("; ");
    let kind = if answered + outage + full < quorum && denied > 0 {
        Kind::Denied
    } else if answered + full >= quorum && full > 0 {
        Kind::Full
    } else {
        Kind::Outage
    };
    let msg = match kind {
        // Reached, but refused: say so (never with the password).
        Kind::Denied => {
            format!("Redis refused the credentials in the URL (or their ACL rights): {all}")
        }
        Kind::Full if total == 1 => {
            format!("the Redis server is full (maxclients): {all}")
        }
        Kind::Full => format!(
            "{full} of {total} Redis servers are full (maxclients), and a majority of {quorum} is needed: {all}"
        ),
        Kind::Outage if connecting && total == 1 => {
            format!("cannot reach the Redis server {all}")
        }
        Kind::Outage if connecting => format!(
            "cannot reach {} of {total} Redis servers (a majority of {quorum} is needed): {all}",
            errors.len()
        ),
        Kind::Outage if total == 1 => format!("the Redis server did not answer: {all}"),
        Kind::Outage => format!(
            "only {answered} of {total} Redis servers answered (a majority of {quorum} is needed): {all}"
        ),
    };
    kit::typed(kind, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str, detail: &str) -> RedisError {
        // As redis-rs reads "-CODE detail" from the server.
        redis::parse_redis_value(format!("-{code} {detail}\r\n").as_bytes())
            .and_then(Value::extract_error)
            .unwrap_err()
    }

    #[test]
    fn errors_are_typed_by_code() {
        assert_eq!(kind(&server("ERR", MAXCLIENTS)), Kind::Full);
        assert_eq!(
            kind(&server("WRONGPASS", "invalid username-password pair")),
            Kind::Denied
        );
        assert_eq!(
            kind(&server("NOAUTH", "Authentication required.")),
            Kind::Denied
        );
        assert_eq!(kind(&server("NOPERM", "no permissions")), Kind::Denied);
        assert_eq!(
            kind(&server("LOADING", "loading the dataset")),
            Kind::Outage
        );
        assert_eq!(kind(&server("ERR", "unknown command")), Kind::Outage);
        let auth: RedisError = (
            ErrorKind::AuthenticationFailed,
            "Password authentication failed",
        )
            .into();
        assert_eq!(kind(&auth), Kind::Denied);
        let io: RedisError = std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into();
        assert_eq!(kind(&io), Kind::Outage);
        let tls: RedisError = std::io::Error::other(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ))
        .into();
        assert_eq!(kind(&tls), Kind::Denied);
    }

    #[test]
    fn a_round_is_typed_by_what_kept_it_from_a_majority() {
        let e = |k: Kind| kit::typed(k, "x".into());
        let r = |err: anyhow::Error| retry_of(&err);
        // One server.
        assert_eq!(r(too_few(false, 1, 1, 0, &[e(Kind::Full)])), Retry::Full);
        assert_eq!(
            r(too_few(false, 1, 1, 0, &[e(Kind::Outage)])),
            Retry::Outage
        );
        assert_eq!(r(too_few(false, 1, 1, 0, &[e(Kind::Denied)])), Retry::Never);
        // Five: two down and one refusing can still become a majority.
        let mixed = [e(Kind::Outage), e(Kind::Outage), e(Kind::Denied)];
        assert_eq!(r(too_few(true, 5, 3, 2, &mixed)), Retry::Outage);
        let refused = [e(Kind::Denied), e(Kind::Denied), e(Kind::Denied)];
        assert_eq!(r(too_few(true, 5, 3, 2, &refused)), Retry::Never);
        // A full server freeing up is enough: wait it out.
        let full = [e(Kind::Full), e(Kind::Outage), e(Kind::Outage)];
        assert_eq!(r(too_few(true, 5, 3, 2, &full)), Retry::Full);
    }
}
