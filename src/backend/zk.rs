//! ZooKeeper: the standard lock recipe, in Apache Curator's layout.
//!
//! Each contender creates an ephemeral sequential child of `/NAMESPACE/KEY`
//! named like Curator's `InterProcessMutex`: `_c_<uuid>-lock-NNNNNNNNNN`.
//! Children are ordered by the number after the last `lock-` (kazoo's
//! `...__lock__NNNNNNNNNN` count as contenders too); the first `--limit`
//! hold the lock, and every other contender watches only the one `--limit`
//! places before it (no herd). The uuid lets us find our node again.
//!
//! The session is the lease: its timeout follows `--ttl` (the server may
//! clamp it; the lease then follows what was negotiated). The fencing token
//! is our node's `czxid`: zxids are totally ordered across the ensemble and
//! a later holder's node was created later.
//!
//! `dlock acquire` cannot use an ephemeral node (its process exits), so it
//! creates a persistent sequential node with a server-side TTL (ZooKeeper
//! TTL nodes, which need `zookeeper.extendedTypesEnabled=true`); `renew`
//! touches it, and the server deletes it when it goes untouched for the TTL.

use std::collections::HashMap;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::Result;
use async_trait::async_trait;
use tokio::sync::{Mutex, OnceCell};
use zookeeper_client as zk;

use super::kit::{self, Kind, Queued};
use super::{
    Attempt, Backend, Holder, KeyStatus, Lease, LeaseKind, LockSpec, Owner, PingInfo, Renewal,
    redact_url,
};
use crate::backend::probe::{Check, Level};
use crate::error::{Error, unavailable, usage};

pub struct ZkBackend {
    shown: String,
    cluster: String,
    auth: Option<Vec<u8>>,
    timeout: Duration,
    client: OnceCell<zk::Client>,
    /// Our nodes, by (namespace, key): full path, and whether it is a
    /// handle's TTL node (which must outlive this process).
    mine: Mutex<HashMap<(String, String), (String, bool)>>,
    /// Queue entries not yet resolved, as (lock directory, our node-name
    /// prefix): registered before the node is created, so a waiter that is
    /// interrupted even mid-create finds and deletes its node in `close`.
    queued: Queued<(String, String)>,
}

struct Contender {
    name: String,
    seq: i64,
}

/// What listing a node's children found.
enum Listing {
    Children(Vec<String>),
    /// The client may not read the node: why, naming the path.
    Unreadable(String),
}

/// The sequence number of a contender's node (ZooKeeper appends ten
/// digits); None for any other child, such as a nested key's directory.
fn seq_of(name: &str) -> Option<i64> {
    let tail = match name.rfind("lock-") {
        Some(i) => &name[i + 5..],
        None => &name[name.rfind("__lock__")? + 8..],
    };
    if tail.len() != 10 || !tail.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    tail.parse().ok()
}

/// The contenders among a lock directory's children, in lock order.
fn contenders_of(names: Vec<String>) -> Vec<Contender> {
    let mut v: Vec<Contender> = names
        .into_iter()
        .filter_map(|name| seq_of(&name).map(|seq| Contender { name, seq }))
        .collect();
    v.sort_by_key(|c| c.seq);
    v
}

fn uuid_of(id: &str) -> String {
    let h: String = id.chars().chain(std::iter::repeat('0')).take(32).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// What kind of failure a ZooKeeper error is.
fn kind(e: &zk::Error) -> Kind {
    match e {
        zk::Error::NoAuth | zk::Error::AuthFailed => Kind::Denied,
        _ => Kind::Outage,
    }
}

fn unreadable(key: &str, why: String) -> KeyStatus {
    KeyStatus {
        key: key.to_string(),
        limit: 1,
        holders: vec![],
        waiters: None,
        unreadable: Some(why),
    }
}

fn zk_err(shown: &str, what: &str, e: zk::Error) -> anyhow::Error {
    kit::typed(kind(&e), format!("ZooKeeper {shown}: {what}: {e}"))
}

fn holder_from(data: &[u8], stat: &zk::Stat) -> (Holder, Option<u32>) {
    let s = String::from_utf8_lossy(data);
    let token = Some(stat.czxid as u64);
    if let Some(r) = kit::Record::parse(&s) {
        // The third field is the --limit here.
        (r.holder(token, None), r.n.map(|n| n as u32))
    } else {
        // Curator stores the client's IP, kazoo an identifier: show it as the host.
        let host = (!s.is_empty()).then(|| s.chars().take(64).collect());
        let acquired_at = Some(UNIX_EPOCH + Duration::from_millis(stat.ctime.max(0) as u64));
        (
            Holder {
                host,
                token,
                acquired_at,
                ..Holder::default()
            },
            None,
        )
    }
}

impl ZkBackend {
    pub fn new(url: &str, timeout: Duration) -> Result<ZkBackend> {
        let shown = redact_url(url);
        let rest = url.split_once("://").map(|(_, r)| r).unwrap_or_default();
        let (auth, cluster) = match rest.rsplit_once('@') {
            Some((userinfo, c)) => (Some(userinfo.as_bytes().to_vec()), c.to_string()),
            None => (None, rest.to_string()),
        };
        if cluster.is_empty() || cluster.starts_with('/') {
            return Err(usage(format!(
                "{shown}: expected zk://HOST:PORT[,HOST:PORT...][/chroot]"
            )));
        }
        Ok(ZkBackend {
            shown,
            cluster,
            auth,
            timeout,
            client: OnceCell::new(),
            mine: Mutex::new(HashMap::new()),
            queued: Queued::default(),
        })
    }

    /// Connect on first use, with a session timeout of `ttl`.
    async fn client(&self, ttl: Duration) -> Result<&zk::Client> {
        self.client
            .get_or_try_init(|| async {
                let mut c = zk::Client::connector()
                    .with_session_timeout(ttl.max(Duration::from_millis(100)))
                    .with_connection_timeout(self.timeout)
                    .with_fail_eagerly();
                if let Some(a) = &self.auth {
                    c = c.with_auth("digest", a);
                }
                let service = format!("ZooKeeper {}", self.shown);
                match tokio::time::timeout(self.timeout, c.connect(&self.cluster)).await {
                    Ok(Ok(client)) => Ok(client),
                    Ok(Err(e)) => {
                        // A server past `maxClientCnxns` for our address
                        // accepts the connection and closes it at once: up,
                        // but full. A server that is down refuses it.
                        let k = match kind(&e) {
                            Kind::Outage if self.accepts_tcp().await => Kind::Full,
                            k => k,
                        };
                        let why = if k == Kind::Full {
                            " (it accepts connections but drops ours: too many from this address?)"
                        } else {
                            ""
                        };
                        Err(kit::typed(k, format!("{service}: connect: {e}{why}")))
                    }
                    Err(_) => Err(kit::no_answer(&service, "connect", self.timeout)),
                }
            })
            .await
    }

    /// Whether any listed server accepts a TCP connection.
    async fn accepts_tcp(&self) -> bool {
        let hosts = self.cluster.split('/').next().unwrap_or_default();
        for h in hosts.split(',').filter(|h| !h.is_empty()) {
            let c = tokio::net::TcpStream::connect(h);
            if matches!(tokio::time::timeout(self.timeout / 4, c).await, Ok(Ok(_))) {
                return true;
            }
        }
        false
    }

    fn acls(&self) -> zk::Acls<'static> {
        if self.auth.is_some() {
            zk::Acls::creator_all()
        } else {
            zk::Acls::anyone_all()
        }
    }

    fn dir(ns: &str, key: &str) -> Result<String> {
        let p = format!("/{ns}/{key}");
        if p.split('/')
            .skip(1)
            .any(|c| c.is_empty() || c == "." || c == "..")
            || p.contains('\0')
        {
            return Err(usage(format!(
                "{p:?} is not a usable ZooKeeper path (empty, '.' or '..' components)"
            )));
        }
        Ok(p)
    }

    async fn bounded<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = std::result::Result<T, zk::Error>>,
    ) -> Result<T> {
        let service = format!("ZooKeeper {}", self.shown);
        kit::bounded(&service, what, self.timeout, f, kind).await
    }

    /// The children of a node (none if it does not exist), or why this
    /// client may not list them (its ACL).
    async fn list(&self, c: &zk::Client, path: &str) -> Result<Listing> {
        match tokio::time::timeout(self.timeout, c.list_children(path)).await {
            Ok(Ok(n)) => Ok(Listing::Children(n)),
            Ok(Err(zk::Error::NoNode)) => Ok(Listing::Children(vec![])),
            Ok(Err(e @ (zk::Error::NoAuth | zk::Error::AuthFailed))) => Ok(Listing::Unreadable(
                format!("cannot list {path}: {e} (its ACL does not let this client read it)"),
            )),
            Ok(Err(e)) => Err(zk_err(&self.shown, &format!("list {path}"), e)),
            Err(_) => Err(unavailable(format!(
                "ZooKeeper {}: list {path} timed out",
                self.shown
            ))),
        }
    }

    /// The contenders of a lock directory, in lock order.
    async fn contenders(&self, c: &zk::Client, dir: &str) -> Result<Vec<Contender>> {
        match self.list(c, dir).await? {
            Listing::Children(names) => Ok(contenders_of(names)),
            Listing::Unreadable(why) => {
                Err(Error::Unavailable(format!("ZooKeeper {}: {why}", self.shown)).into())
            }
        }
    }

    /// The status of one key from its lock directory's children.
    async fn key_status(
        &self,
        c: &zk::Client,
        key: String,
        dir: &str,
        contenders: &[Contender],
    ) -> KeyStatus {
        let mut limit = 1usize;
        if let Some(first) = contenders.first()
            && let Ok((data, stat)) = self
                .bounded("read", c.get_data(&format!("{dir}/{}", first.name)))
                .await
        {
            limit = holder_from(&data, &stat).1.unwrap_or(1).max(1) as usize;
        }
        let holders = self.holders(c, dir, contenders, limit).await;
        let waiters = contenders.len().saturating_sub(holders.len()) as u64;
        KeyStatus {
            key,
            limit: limit as u32,
            holders,
            waiters: Some(waiters),
            unreadable: None,
        }
    }

    async fn holders(
        &self,
        c: &zk::Client,
        dir: &str,
        contenders: &[Contender],
        limit: usize,
    ) -> Vec<Holder> {
        let mut out = Vec::new();
        for ct in contenders.iter().take(limit) {
            if let Ok(Ok((data, stat))) =
                tokio::time::timeout(self.timeout, c.get_data(&format!("{dir}/{}", ct.name))).await
            {
                out.push(holder_from(&data, &stat).0);
            }
        }
        out
    }

    async fn find_mine(&self, c: &zk::Client, lease: &Lease) -> Result<Option<String>> {
        if let Some(p) = self
            .mine
            .lock()
            .await
            .get(&(lease.namespace.clone(), lease.key.clone()))
        {
            return Ok(Some(p.0.clone()));
        }
        let dir = Self::dir(&lease.namespace, &lease.key)?;
        let tag = format!("_c_{}-lock-", uuid_of(&lease.id));
        Ok(self
            .contenders(c, &dir)
            .await?
            .into_iter()
            .find(|ct| ct.name.starts_with(&tag))
            .map(|ct| format!("{dir}/{}", ct.name)))
    }
}

impl ZkBackend {
    /// Delete the queue nodes of attempts that were interrupted or failed:
    /// every child of a registered directory that carries our prefix.
    async fn drop_queued(&self, c: &zk::Client) {
        for (dir, tag) in self.queued.take() {
            let Ok(contenders) = self.contenders(c, &dir).await else {
                continue;
            };
            for ct in contenders.iter().filter(|ct| ct.name.starts_with(&tag)) {
                let _ = self
                    .bounded("delete", c.delete(&format!("{dir}/{}", ct.name), None))
                    .await;
            }
        }
    }
}

#[async_trait]
impl Backend for ZkBackend {
    fn describe(&self) -> String {
        self.shown.clone()
    }

    async fn effective_ttl(&self, ttl: Duration) -> Result<Duration> {
        let c = self.client(ttl).await?;
        let negotiated = c.session_timeout();
        if negotiated < ttl {
            tracing::warn!(
                "the ZooKeeper server clamped the session timeout to {negotiated:?}: the lease follows it"
            );
        }
        Ok(negotiated.min(ttl))
    }

    async fn acquire(
        &self,
        spec: &LockSpec,
        me: &Owner,
        deadline: Option<Instant>,
    ) -> Result<Attempt> {
        let c = self.client(spec.ttl).await?;
        let dir = Self::dir(&spec.namespace, &spec.key)?;
        // What an earlier, failed attempt left in this queue goes first: our
        // own node ahead of us would keep us waiting for ourselves.
        self.drop_queued(c).await;
        let acls = self.acls();
        let parent = zk::CreateMode::Persistent.with_acls(acls);
        self.bounded(&format!("create the lock directory {dir}"), async {
            match c.mkdir(&dir, &parent).await {
                Err(zk::Error::NodeExists) => Ok(()),
                r => r,
            }
        })
        .await?;
        let data = kit::Record::write(&me.id, u64::from(spec.limit), me);
        let tag = format!("_c_{}-lock-", uuid_of(&me.id));
        let prefix = format!("{dir}/{tag}");
        let opts = match me.kind {
            LeaseKind::Run => zk::CreateMode::EphemeralSequential.with_acls(acls),
            LeaseKind::Handle => zk::CreateMode::PersistentSequential
                .with_acls(acls)
                .with_ttl(spec.ttl),
        };
        let entry = (dir.clone(), tag.clone());
        self.queued.add(entry.clone());
        let created = self
            .bounded(&format!("create a lock node in {dir}"), async {
                match c.create(&prefix, data.as_bytes(), &opts).await {
                    // No TTL nodes on this server.
                    Err(zk::Error::Unimplemented) => Ok(None),
                    r => r.map(Some),
                }
            })
            .await?;
        let Some((stat, seq)) = created else {
            self.queued.resolved(&entry);
            return Err(unavailable(format!(
                "ZooKeeper {}: `dlock acquire` needs TTL nodes; start the server with \
                 -Dzookeeper.extendedTypesEnabled=true (or use `dlock run`)",
                self.shown
            )));
        };
        let name = format!("{tag}{seq}");
        let path = format!("{dir}/{name}");
        let limit = spec.limit as usize;
        loop {
            let checked = Instant::now();
            let contenders = self.contenders(c, &dir).await?;
            let Some(idx) = contenders.iter().position(|ct| ct.name == name) else {
                return Err(unavailable(format!(
                    "ZooKeeper {}: our queue node {path} vanished (the session expired?)",
                    self.shown
                )));
            };
            if idx < limit {
                let handle = me.kind == LeaseKind::Handle;
                self.mine.lock().await.insert(
                    (spec.namespace.clone(), spec.key.clone()),
                    (path.clone(), handle),
                );
                self.queued.resolved(&entry);
                let ttl = if me.kind == LeaseKind::Run {
                    c.session_timeout().min(spec.ttl)
                } else {
                    spec.ttl
                };
                return Ok(Attempt::Acquired(Lease {
                    namespace: spec.namespace.clone(),
                    key: spec.key.clone(),
                    token: stat.czxid as u64,
                    id: me.id.clone(),
                    ttl,
                    granted_at: checked,
                }));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                let holders = self.holders(c, &dir, &contenders, limit).await;
                if self.bounded("delete", c.delete(&path, None)).await.is_ok() {
                    self.queued.resolved(&entry);
                }
                return Ok(Attempt::Busy(holders));
            }
            // Watch only the contender `limit` places ahead of us.
            let pred = format!("{dir}/{}", contenders[idx - limit].name);
            let watcher = match self
                .bounded(&format!("watch {pred}"), c.check_and_watch_stat(&pred))
                .await?
            {
                (Some(_), w) => w,
                (None, _) => continue,
            };
            // Wake on the predecessor's change, the deadline, or a periodic
            // re-check (a session event can end the watch silently).
            let recheck = Instant::now() + Duration::from_secs(2);
            let until = deadline.map_or(recheck, |d| d.min(recheck));
            let _ = tokio::time::timeout_at(until.into(), watcher.changed()).await;
        }
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Renewal> {
        let handle = !self
            .mine
            .lock()
            .await
            .contains_key(&(lease.namespace.clone(), lease.key.clone()));
        // A handle's TTL node restarts the TTL it was created with when
        // touched; ZooKeeper cannot change it, so a different one is
        // refused, never ignored.
        if handle && ttl != lease.ttl {
            return Err(usage(format!(
                "ZooKeeper cannot change a TTL node's TTL: the lease of {:?} was created with {}, \
                 and renewing restarts that; renew without --ttl (or with --ttl {}), or acquire \
                 anew with the TTL you want",
                lease.key,
                humantime::format_duration(lease.ttl),
                humantime::format_duration(lease.ttl)
            )));
        }
        let c = self.client(ttl).await?;
        let Some(path) = self.find_mine(c, lease).await? else {
            return Ok(Renewal::Lost);
        };
        let r = if handle {
            // A TTL node lives while it is modified: touch it.
            match tokio::time::timeout(self.timeout, c.get_data(&path)).await {
                Ok(Ok((data, _))) => {
                    tokio::time::timeout(self.timeout, c.set_data(&path, &data, None))
                        .await
                        .map(|r| r.map(|_| ()))
                }
                Ok(Err(e)) => Ok(Err(e)),
                Err(e) => Err(e),
            }
        } else {
            tokio::time::timeout(self.timeout, c.check_stat(&path))
                .await
                .map(|r| r.and_then(|s| s.map(|_| ()).ok_or(zk::Error::NoNode)))
        };
        match r {
            Ok(Ok(())) => Ok(Renewal::Renewed),
            Ok(Err(zk::Error::NoNode | zk::Error::SessionExpired)) => Ok(Renewal::Lost),
            Ok(Err(e)) => Err(zk_err(&self.shown, &format!("renew {path}"), e)),
            Err(_) => Err(unavailable(format!(
                "ZooKeeper {}: renew timed out",
                self.shown
            ))),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let c = self.client(lease.ttl).await?;
        let Some(path) = self.find_mine(c, lease).await? else {
            return Ok(false);
        };
        self.mine
            .lock()
            .await
            .remove(&(lease.namespace.clone(), lease.key.clone()));
        // A node already gone (broken with --force, session expired) is a
        // lease we no longer held: not an error.
        match tokio::time::timeout(self.timeout, c.delete(&path, None)).await {
            Ok(Ok(())) => Ok(true),
            Ok(Err(zk::Error::NoNode)) => Ok(false),
            Ok(Err(e)) => Err(zk_err(&self.shown, &format!("release {path}"), e)),
            Err(_) => Err(unavailable(format!(
                "ZooKeeper {}: release {path} timed out",
                self.shown
            ))),
        }
    }

    async fn force_release(&self, namespace: &str, key: &str) -> Result<u64> {
        let c = self.client(Duration::from_secs(30)).await?;
        let dir = Self::dir(namespace, key)?;
        let contenders = self.contenders(c, &dir).await?;
        let mut n = 0;
        // Break the holders (by their own limit, else one); waiters stay queued.
        let limit = match contenders.first() {
            Some(first) => match self
                .bounded("read", c.get_data(&format!("{dir}/{}", first.name)))
                .await
            {
                Ok((data, stat)) => holder_from(&data, &stat).1.unwrap_or(1) as usize,
                Err(_) => 1,
            },
            None => 0,
        };
        for ct in contenders.iter().take(limit) {
            if self
                .bounded("delete", c.delete(&format!("{dir}/{}", ct.name), None))
                .await
                .is_ok()
            {
                n += 1;
            }
        }
        Ok(n)
    }

    async fn status(&self, namespace: &str, keys: &[String]) -> Result<Vec<KeyStatus>> {
        let c = self.client(Duration::from_secs(30)).await?;
        let mut out = Vec::new();
        if !keys.is_empty() {
            for k in keys {
                let dir = Self::dir(namespace, k)?;
                out.push(match self.list(c, &dir).await? {
                    Listing::Children(names) => {
                        self.key_status(c, k.clone(), &dir, &contenders_of(names))
                            .await
                    }
                    Listing::Unreadable(why) => unreadable(k, why),
                });
            }
            return Ok(out);
        }
        // Every held key of the namespace, nested ones (`a/b`) included: a
        // lock directory's children that are not contenders are the
        // directories of nested keys. A key this client may not read is
        // listed as unreadable; the others are listed all the same.
        let root = format!("/{namespace}");
        let mut todo: Vec<String> = match self.list(c, &root).await? {
            Listing::Children(names) => names,
            Listing::Unreadable(why) => {
                return Err(Error::Unavailable(format!("ZooKeeper {}: {why}", self.shown)).into());
            }
        };
        while let Some(k) = todo.pop() {
            let dir = format!("{root}/{k}");
            match self.list(c, &dir).await? {
                Listing::Children(names) => {
                    let (mine, nested): (Vec<String>, Vec<String>) =
                        names.into_iter().partition(|n| seq_of(n).is_some());
                    todo.extend(nested.into_iter().map(|n| format!("{k}/{n}")));
                    let contenders = contenders_of(mine);
                    if contenders.is_empty() {
                        continue;
                    }
                    let st = self.key_status(c, k, &dir, &contenders).await;
                    if !st.holders.is_empty() {
                        out.push(st);
                    }
                }
                Listing::Unreadable(why) => out.push(unreadable(&k, why)),
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn ping(&self) -> Result<PingInfo> {
        let c = self.client(Duration::from_secs(30)).await?;
        self.bounded("ping", c.check_stat("/")).await?;
        Ok(PingInfo {
            kind: "zookeeper",
            version: format!("session {:?}", c.session_timeout()),
            detail: self.shown.clone(),
        })
    }

    async fn doctor(&self, ttl: Duration, timeout: Duration) -> Vec<Check> {
        let mut out = Vec::new();
        if let Ok(c) = self.client(ttl).await {
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
            let mut c = zk::Client::connector()
                .with_session_timeout(ttl.max(Duration::from_millis(100)))
                .with_connection_timeout(timeout)
                .with_fail_eagerly();
            if let Some(a) = &self.auth {
                c = c.with_auth("digest", a);
            }
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

    async fn close(&self) {
        let Some(c) = self.client.get() else { return };
        // A waiter that was interrupted or gave up leaves no queue entry to
        // hold up the waiters behind it.
        self.drop_queued(c).await;
        // Delete what we still hold before the session goes, so waiters
        // wake now rather than when the session expires.
        let mine: Vec<String> = self
            .mine
            .lock()
            .await
            .drain()
            .filter(|(_, (_, handle))| !handle)
            .map(|(_, (p, _))| p)
            .collect();
        for p in mine {
            let _ = tokio::time::timeout(self.timeout, c.delete(&p, None)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            seq_of("_c_0a1b2c3d-0000-0000-0000-000000000000-lock-0000000042"),
            Some(42)
        );
        assert_eq!(seq_of("f00dfeed__lock__0000000007"), Some(7));
        assert_eq!(seq_of("unrelated"), None);
        assert_eq!(
            uuid_of("0123456789abcdef0123456789abcdef"),
            "01234567-89ab-cdef-0123-456789abcdef"
        );
        assert!(ZkBackend::dir("dlock", "a/../b").is_err());
        assert!(ZkBackend::dir("dlock", "a/b").is_ok());
    }
}
