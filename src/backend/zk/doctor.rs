//! `doctor`'s ZooKeeper findings.

use std::time::Duration;

use super::ZkBackend;
use crate::backend::probe::{Check, Level};

impl ZkBackend {
    /// `doctor`'s findings: the session timeout granted, and every member.
    pub(super) async fn checks(&self, ttl: Duration, timeout: Duration) -> Vec<Check> {
        let mut out = Vec::new();
        if let Ok(session) = self.client(ttl).await {
            let c = &*session;
            let granted = c.session_timeout();
            if granted > ttl {
                out.push(
                    Check::new(
                        Level::Warn,
                        "session",
                        format!(
                            "the server raises the session timeout to {granted:?} (its minSessionTimeout) where --ttl {ttl:?} was asked: a crashed holder's lock lingers that long"
                        ),
                    )
                    .fix("choose a --ttl of at least minSessionTimeout (default 2 x tickTime), or lower it in zoo.cfg"),
                );
            } else if granted == ttl {
                out.push(Check::ok(
                    "session",
                    format!("the server grants the session timeout asked, {granted:?}"),
                ));
            }
        }
        // Every member of the ensemble, each on its own.
        let hosts = self.cluster.split('/').next().unwrap_or_default();
        let members: Vec<&str> = hosts.split(',').filter(|h| !h.is_empty()).collect();
        let mut answered = 0;
        for m in &members {
            let c = self.connector(ttl, timeout);
            match tokio::time::timeout(timeout, c.connect(m)).await {
                Ok(Ok(_client)) => answered += 1,
                Ok(Err(e)) => out.push(
                    Check::new(Level::Fail, "member", format!("{m} does not answer: {e}")).fix(
                        "bring it back: every member down is one fault less the ensemble survives",
                    ),
                ),
                Err(_) => out.push(
                    Check::new(
                        Level::Fail,
                        "member",
                        format!("{m} did not answer within {timeout:?}"),
                    )
                    .fix(
                        "bring it back: every member down is one fault less the ensemble survives",
                    ),
                ),
            }
        }
        if answered == members.len() {
            out.push(Check::ok(
                "members",
                format!("all {answered} listed servers answer"),
            ));
        }
        if members.len() == 1 {
            out.push(
                Check::new(
                    Level::Info,
                    "members",
                    "one server is listed: if it is part of an ensemble, list them all so dlock can fail over",
                ),
            );
        }
        out
    }
}
