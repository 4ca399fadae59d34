//! etcd v3, in the layout of etcd's own `concurrency.Mutex` and
//! `etcdctl lock`: each contender puts `NAMESPACE/KEY/<lease id in hex>`
//! attached to a lease of `--ttl`; the lowest create revisions under the
//! prefix hold (the first `--limit`), and a waiter watches only the key
//! `--limit` places ahead of it for deletion. So `etcdctl lock dlock/job`
//! and `dlock run --key job` exclude each other. The fencing token is the
//! holder key's create revision. Release deletes the key and revokes the
//! lease.
//!
//! A shared (`--shared`) contender puts `NAMESPACE/KEY/read/<lease id>`,
//! where the Go `recipes.RWMutex` puts its readers (`PFX/read/<nanos>`;
//! its writers are `PFX/write/<nanos>`), with `N` = 0 in dlock's value (so
//! it is told from an entry of a nested key `KEY/read`). Every entry's
//! mode comes from its key (`mode_of`); which entries hold and which one
//! a waiter watches is the admission rule's ([`kit::admits`],
//! [`kit::blocker`]) over every entry of a lower create revision: a reader
//! holds when none of them is exclusive (so a waiting writer keeps later
//! readers out) and watches the last exclusive one; a writer waits for
//! every entry before it and watches the one just before it. The wait
//! itself is [`queue::wait_turn`], shared with ZooKeeper.
//!
//! A `dlock elect` candidate's entry holds its published value, bare, as a
//! Go `concurrency.Election` candidate's does (the Election is the Mutex's
//! layout with the value V): `etcdctl elect -l NS/KEY` prints dlock's
//! leader's value, and `Election.Leader` returns it. dlock's record of the
//! candidate goes in a side key on the same lease, outside the queue's
//! prefix: `NS/KEY@<lease id>` ([`side_key`]; `@` and a lease id are no
//! entry's last part, so nothing takes it for an entry). An entry whose
//! value is not dlock's record and has no side record is a foreign
//! client's (`etcdctl lock`, `etcdctl elect`), whose value is shown as its
//! published value.
//!
//! What the foreign recipes see of dlock: `etcdctl lock`/`concurrency.Mutex`
//! and an `RWMutex` writer wait for every key under the prefix with a lower
//! revision, dlock's readers included. An `RWMutex` reader waits only for
//! `write/` keys: it does not see dlock's (nor etcdctl's) exclusive holders.
//!
//! The queue is fair by construction (create revisions, in one total
//! order); `status` lists it ([`status`]). A semaphore's holders claim
//! slots in keys beside the prefix ([`slots`]).
//!
//! The gRPC client is our own (`etcd/client.rs`), over code generated from
//! etcd's protos and committed, so building dlock needs no `protoc`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use async_trait::async_trait;
use tokio::sync::Mutex;

use super::kit::{self, Kind, NField, Queued, Record};
use super::queue;
use super::{
    Attempt, Backend, Holder, KeyStatus, Lease, LockSpec, Owner, PingInfo, Renewal, redact_url,
};
use crate::backend::probe::Check;
use crate::error::usage;

mod client;
mod transport;
use client as ec;
mod doctor;
mod entries;
mod slots;
mod status;
mod turn;

use entries::{Entry, holder_from, holding, mode_of, side_key};
use turn::EtcdTurn;

pub struct EtcdBackend {
    shown: String,
    client: ec::Client,
    timeout: Duration,
    /// Every endpoint in the URL, and how to connect, for `doctor`.
    listed: Vec<String>,
    opts: ec::ConnectOptions,
    /// Our keys, by (namespace, key): (etcd key, lease id).
    mine: Mutex<HashMap<(String, String), (String, i64)>>,
    /// Leases of queue entries not yet resolved: registered as soon as the
    /// lease is granted, so a waiter that is interrupted revokes it (and its
    /// key with it) in `close` instead of leaving it for its TTL.
    queued: Queued<i64>,
}

/// What kind of failure an etcd error is.
fn kind(e: &ec::Error) -> Kind {
    match e {
        // gRPC codes: PERMISSION_DENIED 7, RESOURCE_EXHAUSTED 8,
        // UNAUTHENTICATED 16.
        ec::Error::GRpcStatus(s) => match s.code() as i32 {
            7 | 16 => Kind::Denied,
            8 => Kind::Full,
            _ => Kind::Outage,
        },
        _ => Kind::Outage,
    }
}

/// Whether an error says that the member we asked cannot serve us now
/// (unreachable, no leader, a leader change, a time-out), so that another
/// member may.
fn elsewhere(e: &ec::Error) -> bool {
    use tonic::Code;
    match e {
        ec::Error::GRpcStatus(s) => matches!(
            s.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Unknown
                | Code::Internal
                | Code::Aborted
        ),
        ec::Error::Watch(_) => true,
        ec::Error::InvalidArgs(_) => false,
    }
}

impl EtcdBackend {
    pub async fn connect(url: &str, timeout: Duration) -> Result<EtcdBackend> {
        let shown = redact_url(url);
        let rest = url.split_once("://").map(|(_, r)| r).unwrap_or_default();
        let (auth, hosts) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()), h),
            None => (None, rest),
        };
        let hosts = hosts.trim_end_matches('/');
        if hosts.is_empty() {
            return Err(usage(format!(
                "{shown}: expected etcd://HOST:PORT[,HOST:PORT...]"
            )));
        }
        // etcds:// is TLS, verified against the system's roots (or the CA
        // file in SSL_CERT_FILE).
        let tls = url.starts_with("etcds://");
        let scheme = if tls { "https" } else { "http" };
        let endpoints: Vec<String> = hosts
            .split(',')
            .map(|h| format!("{scheme}://{h}"))
            .collect();
        // Every call below is bounded by `timeout` (kit::bounded and the
        // like), streams included.
        let mut opts = ec::ConnectOptions::new().with_connect_timeout(timeout);
        if tls {
            opts = opts.with_tls(ec::TlsOptions::new().with_native_roots());
        }
        if let Some(a) = auth {
            let (user, pass) = a.split_once(':').unwrap_or((&a, ""));
            opts = opts.with_user(user, pass);
        }
        // The client uses the first endpoint that takes a connection, and a
        // member that takes it but does not answer (frozen, say) would hold
        // every call up: start with the members that answer now (those that
        // answer within a moment of the first), and keep the others last,
        // to fail over to.
        let listed = endpoints.clone();
        let endpoints = if endpoints.len() > 1 {
            use futures_util::stream::{FuturesUnordered, StreamExt};
            let mut probes: FuturesUnordered<_> = endpoints
                .iter()
                .enumerate()
                .map(|(i, ep)| {
                    let opts = opts.clone();
                    async move {
                        let ok = tokio::time::timeout(timeout, async {
                            let mut c = ec::Client::connect([ep.as_str()], Some(opts)).await?;
                            c.status().await
                        })
                        .await;
                        (i, matches!(ok, Ok(Ok(_))))
                    }
                })
                .collect();
            let mut answered = vec![false; endpoints.len()];
            let mut grace: Option<tokio::time::Instant> = None;
            loop {
                let next = match grace {
                    None => probes.next().await,
                    Some(g) => match tokio::time::timeout_at(g, probes.next()).await {
                        Ok(n) => n,
                        Err(_) => break,
                    },
                };
                let Some((i, ok)) = next else { break };
                if ok {
                    answered[i] = true;
                    grace.get_or_insert_with(|| {
                        tokio::time::Instant::now() + Duration::from_millis(250)
                    });
                }
            }
            drop(probes);
            tracing::debug!(?answered, "etcd members answering");
            let (mut first, rest): (Vec<_>, Vec<_>) = endpoints
                .into_iter()
                .enumerate()
                .partition(|(i, _)| answered[*i]);
            first.extend(rest);
            first.into_iter().map(|(_, e)| e).collect()
        } else {
            endpoints
        };
        let client = kit::bounded(
            &format!("etcd {shown}"),
            "connect",
            timeout,
            ec::Client::connect(&endpoints, Some(opts.clone())),
            kind,
        )
        .await?;
        let b = EtcdBackend {
            shown,
            client,
            timeout,
            listed,
            opts,
            mine: Mutex::new(HashMap::new()),
            queued: Queued::default(),
        };
        // The connection is lazy: make sure somebody answers now (exit 69).
        let mut c = b.client.clone();
        b.bounded("status", c.status()).await?;
        Ok(b)
    }

    /// One call, bounded by `--connect-timeout`. A member that does not
    /// answer, or cannot serve now, is left: the next call goes to the next
    /// endpoint listed.
    async fn bounded<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, ec::Error>>,
    ) -> Result<T> {
        let at = self.client.member().await;
        let r = tokio::time::timeout(self.timeout, f).await;
        let away = match &r {
            Ok(Ok(_)) => false,
            Ok(Err(e)) => elsewhere(e),
            Err(_) => true,
        };
        if away {
            self.client.leave(at).await;
        }
        self.typed(what, r)
    }

    /// A call's outcome as the typed error of a step `what`.
    fn typed<T>(
        &self,
        what: &str,
        r: Result<Result<T, ec::Error>, tokio::time::error::Elapsed>,
    ) -> Result<T> {
        let service = format!("etcd {}", self.shown);
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(kit::typed(kind(&e), format!("{service}: {what}: {e}"))),
            // With other members to try (the call has left this one), a
            // member that did not answer is an outage to ride out on the
            // next, not one already ridden out ([`kit::no_answer`]'s).
            Err(_) if self.client.members() > 1 => Err(kit::typed(
                kit::Kind::Outage,
                format!(
                    "{service}: {what}: no answer from one member in {}",
                    crate::human::human_duration(self.timeout)
                ),
            )),
            Err(_) => Err(kit::no_answer(&service, what, self.timeout)),
        }
    }

    /// A call that must land (a release, a renewal) even while the member
    /// in use is gone, frozen or without a leader: with several endpoints,
    /// each try has a share of `--connect-timeout` (at most `cap`), and a
    /// try that gets no answer, or an answer that another member may not
    /// give, moves to the next endpoint. The call must be safe to repeat.
    /// Returns its result, and whether it was tried more than once.
    async fn failing_over<T, F, Fut>(
        &self,
        what: &str,
        cap: Duration,
        mut f: F,
    ) -> Result<(T, bool)>
    where
        F: FnMut(ec::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, ec::Error>>,
    {
        let n = self.client.members();
        let end = Instant::now() + self.timeout;
        let mut tries = 0;
        loop {
            tries += 1;
            let left = end.saturating_duration_since(Instant::now());
            let last = tries >= n;
            let share = if last {
                left
            } else {
                (left / (n - tries + 1) as u32).min(cap)
            };
            let at = self.client.member().await;
            let r = tokio::time::timeout(share, f(self.client.clone())).await;
            let away = match &r {
                Ok(Ok(_)) => false,
                Ok(Err(e)) => elsewhere(e),
                Err(_) => true,
            };
            if away {
                self.client.leave(at).await;
                if !last {
                    tracing::debug!(what, tries, "etcd: trying the next endpoint");
                    continue;
                }
            }
            return self.typed(what, r).map(|v| (v, tries > 1));
        }
    }

    fn prefix(ns: &str, key: &str) -> String {
        format!("{ns}/{key}/")
    }

    /// The contenders of a key's prefix `NS/KEY/`, oldest first (see
    /// [`mode_of`]). The prefix also matches the contenders of nested keys
    /// (`NS/KEY/sub/<lease>`), which are another lock.
    async fn contenders(&self, prefix: &str) -> Result<(Vec<Entry>, i64)> {
        let (kvs, rev) = self.under(prefix).await?;
        Ok((Self::entries_of(prefix, kvs), rev))
    }

    /// The contenders among the keys listed under `prefix`.
    fn entries_of(prefix: &str, kvs: Vec<ec::KeyValue>) -> Vec<Entry> {
        kvs.into_iter()
            .filter_map(|kv| {
                let tail = kv.key().strip_prefix(prefix.as_bytes())?;
                let shared = mode_of(tail, &kv)?;
                Some(Entry {
                    kv,
                    shared,
                    side: None,
                })
            })
            .collect()
    }

    /// The listing of a key's prefix, oldest first.
    fn listing() -> ec::GetOptions {
        ec::GetOptions::new()
            .with_prefix()
            .with_sort(ec::SortTarget::Create, ec::SortOrder::Ascend)
    }

    /// Every key under a prefix, oldest first, and the revision read at.
    async fn under(&self, prefix: &str) -> Result<(Vec<ec::KeyValue>, i64)> {
        let mut c = self.client.clone();
        let r = self
            .bounded(
                &format!("get {prefix}"),
                c.get(prefix, Some(Self::listing())),
            )
            .await?;
        let rev = r.header().map_or(0, |h| h.revision());
        Ok((r.kvs().to_vec(), rev))
    }

    /// The holders of entries listed without their side keys: read them.
    async fn holders(&self, entries: &[Entry]) -> Vec<Holder> {
        let mut c = self.client.clone();
        let mut out = Vec::new();
        for e in entries {
            let mut h = e.holder();
            if e.may_have_side()
                && let Some(side) = side_key(e.kv.key())
                && let Some(r) = kit::best_effort(self.timeout, c.get(side, None)).await
                && let Some(kv) = r.kvs().first()
            {
                h = Holder {
                    shared: e.shared,
                    ..holder_from(&e.kv, Some(kv.value()))
                };
            }
            out.push(h);
        }
        out
    }

    async fn give_up(&self, key: &str, lease: i64) {
        let mut c = self.client.clone();
        kit::best_effort(self.timeout, c.delete(key, None)).await;
        if kit::best_effort(self.timeout, c.lease_revoke(lease))
            .await
            .is_some()
        {
            self.queued.resolved(&lease);
        }
    }

    /// Revoke the leases of queue entries that earlier attempts left
    /// unresolved (and with them their keys). An outage ends the attempt:
    /// the leases not revoked yet stay registered for the next one.
    async fn drop_queued(&self) -> Result<()> {
        let mut left = self.queued.take().into_iter();
        let mut c = self.client.clone();
        while let Some(lease) = left.next() {
            let revoked = self
                .bounded("revoke an earlier queue lease", async {
                    match c.lease_revoke(lease).await {
                        // Gone already (expired, or revoked).
                        Err(ec::Error::GRpcStatus(s)) if s.code() == tonic::Code::NotFound => {
                            Ok(())
                        }
                        r => r.map(drop),
                    }
                })
                .await;
            if let Err(e) = revoked {
                self.queued.add(lease);
                left.for_each(|l| self.queued.add(l));
                return Err(e);
            }
            tracing::info!(
                event = "dropped_queued",
                lease = format!("{lease:x}"),
                "revoked the queue lease of an earlier attempt"
            );
        }
        Ok(())
    }

    /// Delete a queue entry whose process is gone (see
    /// [`queue::wait_turn`]), with its side key, only if it is unchanged
    /// since it was listed; then revoke its lease (nobody keeps it alive).
    /// True if the queue changed: it went, or changed meanwhile.
    async fn remove_dead(&self, e: &Entry) -> Result<bool> {
        let key = e.kv.key();
        let mut ops = vec![ec::TxnOp::delete(key)];
        if e.may_have_side()
            && let Some(side) = side_key(key)
        {
            ops.push(ec::TxnOp::delete(side));
        }
        let del = ec::Txn::new()
            .when([
                ec::Compare::create_revision(key, ec::CompareOp::Equal, e.kv.create_revision()),
                ec::Compare::mod_revision(key, ec::CompareOp::Equal, e.kv.mod_revision()),
            ])
            .and_then(ops);
        let mut c = self.client.clone();
        let r = self.bounded("delete a dead entry", c.txn(del)).await?;
        if r.succeeded && e.kv.lease() != 0 {
            kit::best_effort(self.timeout, c.lease_revoke(e.kv.lease())).await;
        }
        Ok(true)
    }

    async fn find_mine(&self, lease: &Lease) -> Result<Option<(String, i64)>> {
        if let Some(m) = self
            .mine
            .lock()
            .await
            .get(&(lease.namespace.clone(), lease.key.clone()))
        {
            return Ok(Some(m.clone()));
        }
        // From a handle: our key's lease id is in the handle's id.
        let Ok(id) = i64::from_str_radix(&lease.id, 16) else {
            return Ok(None);
        };
        let prefix = Self::prefix(&lease.namespace, &lease.key);
        Ok(Some((Self::entry_key(&prefix, id, lease.shared), id)))
    }

    /// Our entry's key under `prefix` (`NS/KEY/`): the lease id in hex, as
    /// `concurrency.Mutex`'s; a shared one's under `read/`, as a
    /// `recipes.RWMutex` reader's.
    fn entry_key(prefix: &str, lease: i64, shared: bool) -> String {
        if shared {
            format!("{prefix}read/{lease:x}")
        } else {
            format!("{prefix}{lease:x}")
        }
    }
}

#[async_trait]
impl Backend for EtcdBackend {
    fn describe(&self) -> String {
        self.shown.clone()
    }

    fn capabilities(&self) -> super::Capabilities {
        super::Capabilities {
            shares: true,
            keeps_values: true,
        }
    }

    async fn acquire(
        &self,
        spec: &LockSpec,
        me: &Owner,
        deadline: Option<Instant>,
    ) -> Result<Attempt> {
        // What an earlier, failed attempt left (its queue key on a lease
        // we no longer keep alive: after an outage, say) goes first: our
        // own key ahead of us would keep us waiting for ourselves.
        self.drop_queued().await?;
        let mut c = self.client.clone();
        let granted_at = Instant::now();
        // etcd leases are whole seconds: round up (the keeper still works to
        // the shorter --ttl, so the child stops in time).
        let secs = spec.ttl.as_millis().div_ceil(1000).max(1) as i64;
        let lease = self
            .bounded("lease grant", c.lease_grant(secs, None))
            .await?
            .id();
        self.queued.add(lease);
        let prefix = Self::prefix(&spec.namespace, &spec.key);
        let key = Self::entry_key(&prefix, lease, spec.shared);
        // N: the limit of an exclusive entry, 0 for a shared one.
        let rec = Record {
            limit: (!spec.shared).then_some(spec.limit),
            shared: spec.shared,
            ..Record::new(format!("{lease:x}"), me)
        };
        let record = rec.encode(NField::Limit);
        let on_lease = || Some(ec::PutOptions::new().with_lease(lease));
        // An elect candidate's entry holds its value, its record the side
        // key: both on the lease, in one transaction.
        let (mut ops, record_key) = match me.value.as_ref().filter(|_| !spec.shared) {
            None => (
                vec![ec::TxnOp::put(key.as_str(), record, on_lease())],
                key.clone().into_bytes(),
            ),
            Some(v) => {
                let side = side_key(key.as_bytes()).unwrap_or_default();
                (
                    vec![
                        ec::TxnOp::put(key.as_str(), v.as_str(), on_lease()),
                        ec::TxnOp::put(side.clone(), record, on_lease()),
                    ],
                    side,
                )
            }
        };
        // The first listing of the prefix in the same transaction, after
        // the put (a read there sees the transaction's writes): one round
        // trip where the put and the listing were two.
        ops.push(ec::TxnOp::get(prefix.as_str(), Some(Self::listing())));
        let put = ec::Txn::new()
            .when([ec::Compare::create_revision(
                key.as_str(),
                ec::CompareOp::Equal,
                0,
            )])
            .and_then(ops);
        let first = match self.bounded("put", c.txn(put)).await {
            Ok(r) => r
                .last_range()
                .filter(|_| r.succeeded())
                .map(|l| (Self::entries_of(&prefix, l.kvs().to_vec()), r.revision())),
            Err(e) => {
                self.give_up(&key, lease).await;
                return Err(e);
            }
        };
        let mut turn = EtcdTurn {
            b: self,
            c,
            spec,
            me,
            prefix,
            key,
            lease,
            rev: 0,
            // The lease is safe for its TTL from the last keep-alive we sent.
            alive_since: granted_at,
            sides: HashMap::new(),
            record: rec,
            record_key,
            first,
        };
        queue::wait_turn(&mut turn, spec.mode(), deadline).await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Renewal> {
        // A keep-alive restarts the TTL the lease was granted with; etcd
        // cannot change it, so a different one is refused, never ignored.
        let secs = |d: Duration| d.as_millis().div_ceil(1000).max(1);
        if secs(ttl) != secs(lease.ttl) {
            return Err(usage(format!(
                "etcd cannot change a lease's TTL: the lease of {:?} was granted for {}s, and \
                 renewing restarts that; renew without --ttl (or with --ttl {}s), or acquire \
                 anew with the TTL you want",
                lease.key,
                secs(lease.ttl),
                secs(lease.ttl)
            )));
        }
        let Some((key, id)) = self.find_mine(lease).await? else {
            return Ok(Renewal::Lost);
        };
        // Two tries fit in the keeper's renewal period (a third of the TTL).
        let cap = lease.ttl / 6;
        let (alive, _) = self
            .failing_over("keep-alive", cap, |mut c| async move {
                let kept = async {
                    let (mut k, mut s) = c.lease_keep_alive(id).await?;
                    k.keep_alive().await?;
                    Ok(s.message().await?.map_or(0, |m| m.ttl()))
                };
                match kept.await {
                    // The lease is gone (expired or revoked): not an outage.
                    Err(ec::Error::GRpcStatus(s)) if s.code() == tonic::Code::NotFound => Ok(0),
                    r => r,
                }
            })
            .await?;
        if alive <= 0 {
            return Ok(Renewal::Lost);
        }
        // Someone may have deleted our key (release --force).
        let (r, _) = self
            .failing_over("get", cap, |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok(if r.kvs().is_empty() {
            Renewal::Lost
        } else {
            Renewal::Renewed
        })
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let Some((key, id)) = self.find_mine(lease).await? else {
            return Ok(false);
        };
        self.mine
            .lock()
            .await
            .remove(&(lease.namespace.clone(), lease.key.clone()));
        let cap = self.timeout;
        // Whether our entry is still there once the command has ended (a
        // `release --force` or an expiry may have taken it while it ran): a
        // read, which etcd answers without a raft commit.
        let (r, _) = self
            .failing_over("get", cap, |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        let ours = r.kvs().iter().any(|kv| kv.lease() == id);
        // Revoking the lease deletes our entry with it (and the slot claim
        // or side key on it; the waiter behind sees the same delete): one
        // raft commit, where a delete and then a revoke were two.
        let revoked = self
            .failing_over(
                "revoke",
                cap,
                |mut c| async move { c.lease_revoke(id).await },
            )
            .await;
        match revoked {
            Ok(_) => Ok(ours),
            // Expired since the read: gone, after the command ended.
            Err(e) if format!("{e:#}").contains("lease not found") => Ok(ours),
            Err(e) => Err(e),
        }
    }

    async fn force_release(&self, namespace: &str, key: &str) -> Result<u64> {
        let prefix = Self::prefix(namespace, key);
        let (entries, _) = self.contenders(&prefix).await?;
        let mut c = self.client.clone();
        let mut n = 0;
        // Every holder, by the admission rule: all the readers that hold;
        // with an elect candidate's side key, so no record is left behind.
        for e in holding(&entries) {
            let mut ops = vec![ec::TxnOp::delete(e.kv.key())];
            if e.may_have_side()
                && let Some(side) = side_key(e.kv.key())
            {
                ops.push(ec::TxnOp::delete(side));
            }
            let del = ec::Txn::new().and_then(ops);
            if self.bounded("delete", c.txn(del)).await.is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    async fn status(&self, namespace: &str, keys: &[String]) -> Result<Vec<KeyStatus>> {
        self.statuses(namespace, keys).await
    }

    async fn ping(&self) -> Result<PingInfo> {
        let mut c = self.client.clone();
        let s = self.bounded("status", c.status()).await?;
        Ok(PingInfo {
            kind: "etcd",
            version: s.version().to_string(),
            detail: self.shown.clone(),
        })
    }

    async fn close(&self) {
        // A waiter that was interrupted or gave up revokes its queue lease,
        // and its key with it, so the waiters behind it are not held up.
        let mut c = self.client.clone();
        for lease in self.queued.take() {
            kit::best_effort(self.timeout, c.lease_revoke(lease)).await;
        }
    }

    async fn doctor(&self, ttl: Duration, timeout: Duration) -> Vec<Check> {
        self.checks(ttl, timeout).await
    }
}
