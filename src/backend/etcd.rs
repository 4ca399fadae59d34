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
//! The gRPC client is our own (`etcd/client.rs`), over code generated from
//! etcd's protos and committed, so building dlock needs no `protoc`.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use async_trait::async_trait;
use tokio::sync::Mutex;

use super::kit::{self, Kind, NField, Queued, Record};
use super::queue;
use super::{
    Attempt, Backend, Holder, KeyStatus, Lease, LeaseKind, LockSpec, Owner, PingInfo, Renewal,
    redact_url, user_with_value,
};
use crate::backend::probe::{Check, Level};
use crate::error::{unavailable, usage};

mod client;
mod transport;
use client as ec;

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

/// The holder an entry names: dlock's record in its value (`run`); or a
/// published value in its value and dlock's record in its side key
/// (`elect`, `side`: the side key's value); else a foreign client's entry,
/// whose value (empty for `etcdctl lock` and `concurrency.Mutex`, V for
/// `etcdctl elect` and `concurrency.Election`) is all there is to show.
fn holder_from(kv: &ec::KeyValue, side: Option<&[u8]>) -> Holder {
    let value = String::from_utf8_lossy(kv.value());
    let token = Some(kv.create_revision() as u64);
    if let Some(r) = record(&value) {
        return r.holder(token, None);
    }
    let side = side.map(String::from_utf8_lossy);
    let lease = format!("{:x}", kv.lease());
    if let Some(r) = side.as_deref().and_then(record).filter(|r| r.id == lease) {
        // As the other backends show a published value: in the owner,
        // unless it is elect's default (`USER@HOST pid PID`), which they
        // do not publish.
        let h = r.holder(token, None);
        let default = format!("{}@{} pid {}", r.user, r.host, h.pid.unwrap_or(0));
        return Holder {
            owner: Some(if value == default {
                r.user.clone()
            } else {
                user_with_value(&r.user, &value)
            }),
            value: Some(value.into_owned()),
            ..h
        };
    }
    Holder {
        token,
        value: (!value.is_empty()).then(|| value.into_owned()),
        ..Holder::default()
    }
}

/// The side key of an entry `NS/KEY/<lease id>`: `NS/KEY@<lease id>`,
/// where an elect candidate keeps dlock's record of itself (its entry
/// holds its published value), on the entry's lease. It is outside the
/// prefix `NS/KEY/` the Go recipes list, so they see one key per
/// candidate, and its last part is no entry's (see [`mode_of`]).
fn side_key(entry: &[u8]) -> Option<Vec<u8>> {
    let at = entry.iter().rposition(|&b| b == b'/')?;
    let mut k = entry.to_vec();
    k[at] = b'@';
    Some(k)
}

/// A lease id as `concurrency.Mutex` and dlock write it: lowercase hex
/// (of an i64: at most 16 digits).
fn is_lease_id(tail: &[u8]) -> bool {
    !tail.is_empty()
        && tail.len() <= 16
        && tail.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The name `recipes.RWMutex` gives its keys: `time.Now().UnixNano()`.
fn is_nanos(tail: &[u8]) -> bool {
    tail.len() >= 17 && tail.iter().all(u8::is_ascii_digit)
}

/// dlock's record in a value (`N` is the limit, 0 for a shared entry).
fn record(value: &str) -> Option<Record> {
    Record::parse(value, NField::Limit)
}

/// dlock's record in an entry's value; None for a foreign client's value
/// (or an elect candidate's, whose record is in its side key).
fn record_of(kv: &ec::KeyValue) -> Option<Record> {
    record(&String::from_utf8_lossy(kv.value()))
}

/// Whether the key `NS/KEY/<tail>` is an entry in the queue of `KEY`, and
/// then whether it is shared:
///
/// - `<lease id>`: exclusive (dlock, `etcdctl lock`, `concurrency.Mutex`);
/// - `read/<lease id>` with dlock's value for a shared entry: shared;
/// - `read/<nanos>` and `write/<nanos>`: the reader and writer of a Go
///   `recipes.RWMutex` on `NS/KEY`.
///
/// The rest (nested keys' entries, among them those of a key `KEY/read`)
/// is another lock's. A dlock reader of `KEY/..` is not an exclusive
/// entry of `KEY/read`, whose prefix its key is under too.
fn mode_of(tail: &[u8], kv: &ec::KeyValue) -> Option<bool> {
    // dlock's record says shared (Some(true)) or not; None: a foreign value.
    let marked = record_of(kv).map(|r| r.shared);
    let slash = tail.iter().position(|&b| b == b'/');
    let Some(at) = slash else {
        return (is_lease_id(tail) && marked != Some(true)).then_some(false);
    };
    let (dir, id) = (&tail[..at], &tail[at + 1..]);
    match (dir, marked) {
        (b"read", Some(true)) => is_lease_id(id).then_some(true),
        (b"read", None) => is_nanos(id).then_some(true),
        (b"write", None) => is_nanos(id).then_some(false),
        _ => None,
    }
}

/// The key (below `NS/`) and mode of an entry `NS/<rest>`, as listed
/// namespace-wide.
fn entry_in(rest: &[u8], kv: &ec::KeyValue) -> Option<(String, bool)> {
    let at = rest.iter().rposition(|&b| b == b'/')?;
    // `KEY/read/<id>` or `KEY/write/<id>`: shared or foreign entries of KEY.
    if let Some(k) = rest[..at].iter().rposition(|&b| b == b'/')
        && let Some(shared) = mode_of(&rest[k + 1..], kv)
    {
        return Some((String::from_utf8_lossy(&rest[..k]).into_owned(), shared));
    }
    let shared = mode_of(&rest[at + 1..], kv)?;
    Some((String::from_utf8_lossy(&rest[..at]).into_owned(), shared))
}

/// A queue entry: its key-value, whether it is shared, and its side
/// key's value if it was read ([`side_key`]).
struct Entry {
    kv: ec::KeyValue,
    shared: bool,
    side: Option<Vec<u8>>,
}

impl Entry {
    fn mode(&self, limit: u32) -> kit::Mode {
        if self.shared {
            kit::Mode::Shared
        } else {
            kit::Mode::Exclusive { limit }
        }
    }

    fn holder(&self) -> Holder {
        Holder {
            shared: self.shared,
            ..holder_from(&self.kv, self.side.as_deref())
        }
    }

    /// Whether its holder record may be in a side key: its value is not
    /// one (an elect candidate's, or a foreign client's with none).
    fn may_have_side(&self) -> bool {
        !self.shared && record_of(&self.kv).is_none()
    }
}

fn modes(entries: &[Entry], limit: u32) -> Vec<kit::Mode> {
    entries.iter().map(|e| e.mode(limit)).collect()
}

/// A queue's `--limit`: its first exclusive dlock entry's (else 1).
fn queue_limit(entries: &[Entry]) -> u32 {
    entries
        .iter()
        .filter(|e| !e.shared)
        .find_map(|e| record_of(&e.kv)?.limit)
        .unwrap_or(1)
        .max(1)
}

/// The holders of a queue, by the admission rule.
fn holding(entries: &[Entry]) -> &[Entry] {
    &entries[..kit::holding(&modes(entries, queue_limit(entries)))]
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
                    crate::status::human_duration(self.timeout)
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
        let entries = kvs
            .into_iter()
            .filter_map(|kv| {
                let tail = kv.key().strip_prefix(prefix.as_bytes())?;
                let shared = mode_of(tail, &kv)?;
                Some(Entry {
                    kv,
                    shared,
                    side: None,
                })
            })
            .collect();
        Ok((entries, rev))
    }

    /// Every key under a prefix, oldest first, and the revision read at.
    async fn under(&self, prefix: &str) -> Result<(Vec<ec::KeyValue>, i64)> {
        let mut c = self.client.clone();
        let opts = ec::GetOptions::new()
            .with_prefix()
            .with_sort(ec::SortTarget::Create, ec::SortOrder::Ascend);
        let r = self
            .bounded(&format!("get {prefix}"), c.get(prefix, Some(opts)))
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
                && let Ok(Ok(r)) = tokio::time::timeout(self.timeout, c.get(side, None)).await
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
        let _ = tokio::time::timeout(self.timeout, c.delete(key, None)).await;
        if matches!(
            tokio::time::timeout(self.timeout, c.lease_revoke(lease)).await,
            Ok(Ok(_))
        ) {
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
            let _ = tokio::time::timeout(self.timeout, c.lease_revoke(e.kv.lease())).await;
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

/// One `acquire`'s key under its lock's prefix, waiting its turn.
struct EtcdTurn<'a> {
    b: &'a EtcdBackend,
    c: ec::Client,
    spec: &'a LockSpec,
    me: &'a Owner,
    prefix: String,
    key: String,
    lease: i64,
    /// The revision of the last listing: watches start after it.
    rev: i64,
    alive_since: Instant,
    /// The records read from side keys, by entry key and create revision.
    sides: HashMap<(Vec<u8>, i64), Option<Record>>,
}

#[async_trait]
impl queue::Turn for EtcdTurn<'_> {
    type Entry = Entry;

    async fn entries(&mut self) -> Result<(Vec<Entry>, Option<usize>)> {
        let (entries, rev) = match self.b.contenders(&self.prefix).await {
            Ok(v) => v,
            Err(e) => {
                self.b.give_up(&self.key, self.lease).await;
                return Err(e);
            }
        };
        self.rev = rev;
        let ours = entries
            .iter()
            .position(|e| e.kv.key() == self.key.as_bytes());
        Ok((entries, ours))
    }

    fn mode(&self, e: &Entry) -> kit::Mode {
        e.mode(self.spec.limit)
    }

    async fn record(&mut self, e: &Entry) -> Result<Option<Record>> {
        if let Some(r) = record_of(&e.kv) {
            return Ok(Some(r));
        }
        if !e.may_have_side() {
            return Ok(None);
        }
        let at = (e.kv.key().to_vec(), e.kv.create_revision());
        if let Some(r) = self.sides.get(&at) {
            return Ok(r.clone());
        }
        let Some(side) = side_key(e.kv.key()) else {
            return Ok(None);
        };
        let got = self.b.bounded("get", self.c.get(side, None)).await?;
        // The side record of this entry's lease, not of another's.
        let lease = format!("{:x}", e.kv.lease());
        let r = got
            .kvs()
            .first()
            .and_then(|kv| record(&String::from_utf8_lossy(kv.value())))
            .filter(|r| r.id == lease);
        self.sides.insert(at, r.clone());
        Ok(r)
    }

    async fn remove_dead(&mut self, e: &Entry) -> Result<bool> {
        self.b.remove_dead(e).await
    }

    async fn vanished(&mut self) -> anyhow::Error {
        self.b.give_up(&self.key, self.lease).await;
        unavailable(format!(
            "etcd {}: our queue key {} vanished (its lease expired?)",
            self.b.shown, self.key
        ))
    }

    async fn admitted(&mut self, entries: &[Entry], ours: usize) -> Result<Lease> {
        let (spec, lease) = (self.spec, self.lease);
        self.b.mine.lock().await.insert(
            (spec.namespace.clone(), spec.key.clone()),
            (self.key.clone(), lease),
        );
        self.b.queued.resolved(&lease);
        Ok(Lease {
            namespace: spec.namespace.clone(),
            key: spec.key.clone(),
            token: entries[ours].kv.create_revision() as u64,
            // The handle carries the lease id: it names our key.
            id: if self.me.kind == LeaseKind::Handle {
                format!("{lease:x}")
            } else {
                self.me.id.clone()
            },
            ttl: spec.ttl,
            granted_at: self.alive_since,
            shared: spec.shared,
            slot: spec.fixed_slot(),
        })
    }

    async fn give_up(&mut self, holding: &[Entry]) -> Result<Vec<Holder>> {
        let holders = self.b.holders(holding).await;
        self.b.give_up(&self.key, self.lease).await;
        Ok(holders)
    }

    async fn wait(&mut self, blocker: &Entry, deadline: Option<Instant>) -> Result<()> {
        let (c, lease) = (&mut self.c, self.lease);
        // While waiting, keep our own lease alive.
        let sent = Instant::now();
        // (A member that does not answer is left for the next one.)
        let kept = self
            .b
            .bounded("keep-alive", async {
                let (mut k, mut s) = c.lease_keep_alive(lease).await?;
                k.keep_alive().await?;
                Ok::<_, ec::Error>(s.message().await?.is_some_and(|m| m.ttl() > 0))
            })
            .await;
        if matches!(kept, Ok(true)) {
            self.alive_since = sent;
        }
        let pred = blocker.kv.key().to_vec();
        let opts = ec::WatchOptions::new().with_start_revision(self.rev + 1);
        let watch = self.b.bounded("watch", c.watch(pred, Some(opts))).await;
        let recheck = Instant::now() + (self.spec.ttl / 3).min(Duration::from_secs(2));
        let until = deadline.map_or(recheck, |d| d.min(recheck));
        if let Ok(mut stream) = watch {
            let _ = tokio::time::timeout_at(until.into(), async {
                while let Ok(Some(resp)) = stream.message().await {
                    if resp
                        .events()
                        .iter()
                        .any(|e| e.event_type() == ec::EventType::Delete)
                    {
                        break;
                    }
                }
            })
            .await;
        } else {
            tokio::time::sleep_until(
                until
                    .min(Instant::now() + Duration::from_millis(200))
                    .into(),
            )
            .await;
        }
        Ok(())
    }
}

#[async_trait]
impl Backend for EtcdBackend {
    fn describe(&self) -> String {
        self.shown.clone()
    }

    fn shares(&self) -> bool {
        true
    }

    fn keeps_values(&self) -> bool {
        true
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
        let record = Record {
            limit: (!spec.shared).then_some(spec.limit),
            shared: spec.shared,
            ..Record::new(format!("{lease:x}"), me)
        }
        .encode(NField::Limit);
        let on_lease = || Some(ec::PutOptions::new().with_lease(lease));
        // An elect candidate's entry holds its value, its record the side
        // key: both on the lease, in one transaction.
        let ops = match me.value.as_ref().filter(|_| !spec.shared) {
            None => vec![ec::TxnOp::put(key.as_str(), record, on_lease())],
            Some(v) => vec![
                ec::TxnOp::put(key.as_str(), v.as_str(), on_lease()),
                ec::TxnOp::put(
                    side_key(key.as_bytes()).unwrap_or_default(),
                    record,
                    on_lease(),
                ),
            ],
        };
        let put = ec::Txn::new()
            .when([ec::Compare::create_revision(
                key.as_str(),
                ec::CompareOp::Equal,
                0,
            )])
            .and_then(ops);
        if let Err(e) = self.bounded("put", c.txn(put)).await {
            self.give_up(&key, lease).await;
            return Err(e);
        }
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
        let (r, again) = self
            .failing_over("delete", cap, |mut c| {
                let key = key.clone();
                async move { c.delete(key, None).await }
            })
            .await?;
        let _ = self
            .failing_over(
                "revoke",
                cap,
                |mut c| async move { c.lease_revoke(id).await },
            )
            .await;
        // Tried again on another member: the first try may have deleted it.
        Ok(r.deleted() > 0 || again)
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
        let mut by_key: std::collections::BTreeMap<String, Vec<Entry>> = Default::default();
        for k in keys {
            by_key.insert(k.clone(), Vec::new());
        }
        let ns = format!("{namespace}/");
        let (kvs, _) = self.under(&ns).await?;
        // Elect candidates' records, by side key (the namespace's keys
        // with an `@`, few: the entries' keys have none unless KEY has).
        let sides: HashMap<Vec<u8>, Vec<u8>> = kvs
            .iter()
            .filter(|kv| kv.key().contains(&b'@'))
            .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
            .collect();
        for kv in kvs {
            // NS/KEY/<lease id> (or NS/KEY/read/..): KEY may itself hold
            // slashes (nested keys).
            let Some(rest) = kv.key().strip_prefix(ns.as_bytes()) else {
                continue;
            };
            let Some((name, shared)) = entry_in(rest, &kv) else {
                continue;
            };
            if keys.is_empty() || by_key.contains_key(&name) {
                let side = side_key(kv.key()).and_then(|k| sides.get(&k).cloned());
                by_key
                    .entry(name)
                    .or_default()
                    .push(Entry { kv, shared, side });
            }
        }
        let mut out = Vec::new();
        let mut c = self.client.clone();
        for (name, mut entries) in by_key {
            entries.sort_by_key(|e| e.kv.create_revision());
            let limit = queue_limit(&entries);
            let mut holders = Vec::new();
            for e in holding(&entries) {
                let mut h = e.holder();
                if let Ok(Ok(t)) =
                    tokio::time::timeout(self.timeout, c.lease_time_to_live(e.kv.lease(), None))
                        .await
                    && t.ttl() >= 0
                {
                    h.expires_at = Some(SystemTime::now() + Duration::from_secs(t.ttl() as u64));
                }
                holders.push(h);
            }
            let waiters = entries.len().saturating_sub(holders.len()) as u64;
            out.push(KeyStatus {
                key: name,
                limit,
                holders,
                waiters: Some(waiters),
                queue: vec![],
                unreadable: None,
            });
        }
        Ok(out)
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
            let _ = tokio::time::timeout(self.timeout, c.lease_revoke(lease)).await;
        }
    }

    async fn doctor(&self, ttl: Duration, timeout: Duration) -> Vec<Check> {
        let mut out = Vec::new();
        // What lease the server really grants for this TTL (a test lease,
        // revoked at once).
        let asked = ttl.as_millis().div_ceil(1000).max(1) as i64;
        let mut c = self.client.clone();
        if let Ok(Ok(g)) = tokio::time::timeout(timeout, c.lease_grant(asked, None)).await {
            let _ = tokio::time::timeout(timeout, c.lease_revoke(g.id())).await;
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
        if let Ok(Ok(m)) = tokio::time::timeout(timeout, c.member_list()).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(value: &str) -> ec::KeyValue {
        ec::KeyValue {
            value: value.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn entries_and_their_modes() {
        let x = kv("dlock1|694d|1|me|h|1|0");
        let r = kv("dlock1|694d|0|me|h|1|0");
        let foreign = kv("");
        let nanos = "1764161234567890123";
        // dlock's and etcdctl's exclusive entries, dlock's readers.
        assert_eq!(mode_of(b"694d9a3b5e0c1234", &x), Some(false));
        assert_eq!(mode_of(b"694d9a3b5e0c1234", &foreign), Some(false));
        assert_eq!(mode_of(b"read/694d9a3b5e0c1234", &r), Some(true));
        // A Go recipes.RWMutex's reader and writer.
        let rw = |d: &str| format!("{d}/{nanos}");
        assert_eq!(mode_of(rw("read").as_bytes(), &foreign), Some(true));
        assert_eq!(mode_of(rw("write").as_bytes(), &foreign), Some(false));
        // Another lock's: the nested key KEY/read's exclusive entries (dlock's,
        // etcdctl's), a dlock reader of KEY/read seen from KEY/read's parent.
        assert_eq!(mode_of(b"read/694d9a3b5e0c1234", &x), None);
        assert_eq!(mode_of(b"read/694d9a3b5e0c1234", &foreign), None);
        assert_eq!(mode_of(b"write/694d", &foreign), None);
        assert_eq!(mode_of(b"694d", &r), None);
        assert_eq!(mode_of(b"sub/694d", &x), None);
        assert_eq!(mode_of(b"read/read/694d", &r), None);
        assert_eq!(mode_of(nanos.as_bytes(), &foreign), None);
        // Namespace-wide: which key an entry is of.
        let of = |rest: &str, kv: &ec::KeyValue| entry_in(rest.as_bytes(), kv);
        assert_eq!(of("job/694d", &x), Some(("job".into(), false)));
        assert_eq!(of("a/job/694d", &x), Some(("a/job".into(), false)));
        assert_eq!(of("job/read/694d", &r), Some(("job".into(), true)));
        assert_eq!(of("job/read/694d", &x), Some(("job/read".into(), false)));
        assert_eq!(
            of("job/read/read/694d", &r),
            Some(("job/read".into(), true))
        );
        assert_eq!(
            of(&format!("job/{}", rw("write")), &foreign),
            Some(("job".into(), false))
        );
        assert_eq!(
            of(&format!("job/{}", rw("read")), &foreign),
            Some(("job".into(), true))
        );
        assert_eq!(of("694d", &x), None);
    }

    #[test]
    fn elect_entries_keep_their_record_in_a_side_key() {
        assert_eq!(
            side_key(b"dlock/job/694d"),
            Some(b"dlock/job@694d".to_vec())
        );
        assert_eq!(
            side_key(b"dlock/a/job/694d"),
            Some(b"dlock/a/job@694d".to_vec())
        );
        // A side key is no entry, of its key or of a parent.
        let rec = kv("dlock1|694d|1|me|h|7|0");
        assert_eq!(mode_of(b"job@694d", &rec), None);
        assert_eq!(entry_in(b"job@694d", &rec), None);
        assert_eq!(entry_in(b"a/job@694d", &rec), None);
        assert_eq!(entry_in(b"a/read@694d", &rec), None);
        assert_eq!(entry_in(b"a/b/read@694d", &rec), None);
        // The candidate's entry holds V (read as exclusive), on lease 694d.
        let entry = |v: &str| ec::KeyValue {
            value: v.as_bytes().to_vec(),
            lease: 0x694d,
            create_revision: 9,
            ..Default::default()
        };
        assert_eq!(mode_of(b"694d", &entry("web-1:8080")), Some(false));
        let side = b"dlock1|694d|1|me|h|7|1764161234567".as_slice();
        let h = holder_from(&entry("web-1:8080 (a|b)"), Some(side));
        assert_eq!(h.value.as_deref(), Some("web-1:8080 (a|b)"));
        assert_eq!(h.value(), Some("web-1:8080 (a|b)"));
        assert_eq!(h.owner.as_deref(), Some("me (web-1:8080 (a_b))"));
        assert_eq!(
            (h.host.as_deref(), h.pid, h.token),
            (Some("h"), Some(7), Some(9))
        );
        assert!(h.acquired_at.is_some());
        // elect's default value is the owner's own name, not published in it.
        let h = holder_from(&entry("me@h pid 7"), Some(side));
        assert_eq!(h.owner.as_deref(), Some("me"));
        assert_eq!(h.value(), Some("me@h pid 7"));
        // Another lease's record is not this entry's: a foreign candidate
        // (`etcdctl elect`), whose value is still what it publishes.
        let h = holder_from(
            &entry("etcd-side"),
            Some(b"dlock1|abcd|1|me|h|7|0".as_slice()),
        );
        assert_eq!((h.owner.as_deref(), h.value()), (None, Some("etcd-side")));
        let h = holder_from(&entry("etcd-side"), None);
        assert_eq!(
            (h.owner.as_deref(), h.value(), h.token),
            (None, Some("etcd-side"), Some(9))
        );
        // `etcdctl lock` stores nothing; `run` stores its record.
        let h = holder_from(&entry(""), None);
        assert_eq!((h.owner.as_deref(), h.value()), (None, None));
        let h = holder_from(&entry("dlock1|694d|1|me|h|7|0"), None);
        assert_eq!((h.owner.as_deref(), h.value()), (Some("me"), None));
    }

    #[test]
    fn holders_by_the_rule() {
        let e = |shared: bool, n: u32| Entry {
            kv: kv(&format!("dlock1|1|{n}|me|h|1|0")),
            shared,
            side: None,
        };
        assert_eq!(
            holding(&[e(true, 0), e(true, 0), e(false, 1), e(true, 0)]).len(),
            2
        );
        assert_eq!(holding(&[e(false, 2), e(false, 2), e(false, 2)]).len(), 2);
        assert_eq!(holding(&[e(true, 0), e(false, 3), e(false, 3)]).len(), 1);
        assert_eq!(queue_limit(&[e(true, 0), e(false, 3)]), 3);
        assert_eq!(queue_limit(&[e(true, 0)]), 1);
    }
}
