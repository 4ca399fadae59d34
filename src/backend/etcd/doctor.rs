//! `doctor`'s etcd findings.

use std::time::Duration;

use super::{EtcdBackend, ec};
use crate::backend::kit;
use crate::backend::probe::{Check, Level};

impl EtcdBackend {
    /// `doctor`'s findings: the lease granted, and every member.
    pub(super) async fn checks(&self, ttl: Duration, timeout: Duration) -> Vec<Check> {
        let mut out = Vec::new();
        // What lease the server really grants for this TTL (a test lease,
        // revoked at once).
        let asked = ttl.as_millis().div_ceil(1000).max(1) as i64;
        let mut c = self.client.clone();
        if let Some(g) = kit::best_effort(timeout, c.lease_grant(asked, None)).await {
            kit::best_effort(timeout, c.lease_revoke(g.id())).await;
            let granted = Duration::from_secs(g.ttl().max(0) as u64);
            out.push(if granted > ttl {
                Check::new(
                    Level::Info,
                    "lease",
                    format!(
                        "etcd leases are whole seconds: --ttl {ttl:?} is held as {granted:?} on the server, so a crashed holder's lock lasts that long"
                    ),
                )
            } else {
                Check::ok("lease", format!("the server grants {granted:?} leases as asked"))
            });
        }
        let fix = "bring it back: every member down is one fault less the cluster survives";
        let mut answered = 0;
        for ep in &self.listed {
            let probe = tokio::time::timeout(timeout, async {
                let mut c = ec::Client::connect([ep.as_str()], Some(self.opts.clone())).await?;
                c.status().await
            })
            .await;
            match probe {
                Ok(Ok(st)) if st.leader() == 0 => out.push(
                    Check::new(
                        Level::Fail,
                        "member",
                        format!(
                            "{ep} answers but knows no leader: the cluster has lost its quorum"
                        ),
                    )
                    .fix("bring members back until a majority runs"),
                ),
                Ok(Ok(_)) => answered += 1,
                Ok(Err(e)) => out.push(
                    Check::new(Level::Fail, "member", format!("{ep} does not answer: {e}"))
                        .fix(fix),
                ),
                Err(_) => out.push(
                    Check::new(
                        Level::Fail,
                        "member",
                        format!("{ep} did not answer within {timeout:?}"),
                    )
                    .fix(fix),
                ),
            }
        }
        if answered == self.listed.len() {
            out.push(Check::ok(
                "members",
                format!("all {answered} listed endpoints answer and know a leader"),
            ));
        }
        let mut c = self.client.clone();
        if let Some(m) = kit::best_effort(timeout, c.member_list()).await {
            let members = m.members().len();
            if members > self.listed.len() {
                out.push(Check::new(
                    Level::Info,
                    "members",
                    format!(
                        "the cluster has {members} members but the URL lists {}: list them all so dlock can fail over",
                        self.listed.len()
                    ),
                ));
            }
        }
        out
    }
}
