//! The session: made (telling a full server from one that is down), and
//! ended when we are done.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use zookeeper_client as zk;

use super::{Kind, ZkBackend, kind, kit};

/// How long `close` waits for the server to end the session.
const SESSION_CLOSE_WAIT: Duration = Duration::from_millis(300);

/// How long the session's connection may stay silent (pings unanswered)
/// before the client leaves its server for another listed one, and the
/// bound on each server's answer while connecting: an eighth of the TTL
/// (at least 0.5 s), never more than `--connect-timeout`. The client may
/// try the silent server once more first, so a move costs up to twice
/// this, well inside the two thirds of the TTL the lease clock allows
/// between renewals (with `--connect-timeout` alone, 5 s by default, a
/// 10 s lease was lost to one frozen server).
fn silence_bound(ttl: Duration, timeout: Duration) -> Duration {
    (ttl / 8).max(Duration::from_millis(500)).min(timeout)
}

impl ZkBackend {
    /// A connector with our credentials, failing eagerly once every listed
    /// server was tried: a session timeout of `session`, and `silence` as
    /// the client's bound on a server's answer (see [`silence_bound`]).
    pub(super) fn connector(&self, session: Duration, silence: Duration) -> zk::Connector {
        let c = zk::Client::connector()
            .with_session_timeout(session.max(Duration::from_millis(100)))
            .with_connection_timeout(silence)
            .with_fail_eagerly();
        match &self.auth {
            Some(a) => c.with_auth("digest", a),
            None => c,
        }
    }

    /// A new session, with a session timeout of `ttl`.
    pub(super) async fn connect(&self, ttl: Duration) -> Result<zk::Client> {
        let silence = silence_bound(ttl, self.timeout);
        let service = format!("ZooKeeper {}", self.shown);
        let began = Instant::now();
        // Every listed server tried once, each bounded by `silence`; again
        // while none answered in that time, up to the whole bound (a
        // refusal or a reset ends it at once: that is told below).
        let attempt = async {
            loop {
                let tried = Instant::now();
                match self.connector(ttl, silence).connect(&self.cluster).await {
                    Err(e)
                        if kind(&e) == Kind::Outage
                            && tried.elapsed() + silence / 10 >= silence
                            && began.elapsed() < self.timeout => {}
                    r => return r,
                }
            }
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(client)) => Ok(client),
            // The client gave up after its connection timeout (the
            // same bound): nothing answered.
            Ok(Err(e))
                if kind(&e) == Kind::Outage
                    && began.elapsed() + self.timeout / 10 >= self.timeout =>
            {
                Err(kit::no_answer(&service, "connect", self.timeout))
            }
            Ok(Err(e)) => {
                // A server past `maxClientCnxns` for our address
                // accepts the connection and closes it at once: up,
                // but full. A server that is down refuses it; one
                // that accepts and never answers (a wrong port, a
                // hung JVM) is down too.
                let k = match kind(&e) {
                    Kind::Outage if self.drops_us_at_once().await => Kind::Full,
                    k => k,
                };
                let why = if k == Kind::Full {
                    " (it accepts connections but closes ours at once: too many from this address?)"
                } else {
                    ""
                };
                Err(kit::typed(k, format!("{service}: connect: {e}{why}")))
            }
            Err(_) => Err(kit::no_answer(&service, "connect", self.timeout)),
        }
    }

    /// Whether a listed server accepts a TCP connection and closes it at
    /// once, before we say anything: what ZooKeeper does past its
    /// `maxClientCnxns` for our address (a reset). A server that keeps the
    /// connection open without answering is not full, it is down.
    async fn drops_us_at_once(&self) -> bool {
        use tokio::io::AsyncReadExt;
        let hosts = self.cluster.split('/').next().unwrap_or_default();
        let wait = (self.timeout / 4).min(Duration::from_secs(1));
        for h in hosts.split(',').filter(|h| !h.is_empty()) {
            let c = tokio::net::TcpStream::connect(h);
            let mut tcp = match tokio::time::timeout(wait, c).await {
                Ok(Ok(tcp)) => tcp,
                // Accepted and reset so soon that the connect saw it (Linux
                // says EPIPE then).
                Ok(Err(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::BrokenPipe
                    ) =>
                {
                    return true;
                }
                _ => continue,
            };
            let mut b = [0u8; 1];
            let r = tokio::time::timeout(wait, tcp.read(&mut b)).await;
            if matches!(r, Ok(Ok(0) | Err(_))) {
                return true;
            }
        }
        false
    }

    /// End the session, rather than leave it to expire: the server then
    /// closes the connection itself (a client that just goes costs it an
    /// error, logged with its stack trace, and the session's expiry
    /// later). Waited for briefly: nobody needs it (our nodes are gone
    /// already), so a slow server only leaves the session to expire.
    pub(super) async fn end_session(&self) {
        let Some(c) = self.client.lock().await.take() else {
            return;
        };
        let mut state = c.state_watcher();
        // Ended already, or still in use elsewhere (then it closes when
        // that lets go of it).
        if state.peek_state().is_terminated() || Arc::strong_count(&c) > 1 {
            return;
        }
        // The last handle gone, the client asks the server to close.
        drop(c);
        let closed = async { while !state.changed().await.is_terminated() {} };
        let _ = tokio::time::timeout(self.timeout.min(SESSION_CLOSE_WAIT), closed).await;
    }
}
