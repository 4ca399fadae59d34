//! ZooKeeper: the standard lock recipe, in Apache Curator's layout (or
//! kazoo's, with `?recipe=kazoo`).
//!
//! Each contender creates a sequential child of `/NAMESPACE/KEY` named like
//! Curator's `InterProcessMutex`: `_c_<uuid>-lock-NNNNNNNNNN` (with
//! `?recipe=kazoo`, like kazoo's `Lock`: `<uuid hex>__lock__NNNNNNNNNN`).
//! Children are ordered by their ten-digit sequence number (the counter is
//! the directory's, so numbers are unique across names). A shared
//! (`--shared`) contender's node is named like the read side of Curator's
//! `InterProcessReadWriteLock`, `_c_<uuid>-__READ__NNNNNNNNNN` (with
//! `?recipe=kazoo`, like kazoo's `ReadLock`: `<uuid hex>__rlock__NNNNNNNNNN`).
//! Every contender's mode comes from its name: `__READ__` and `__rlock__`
//! are shared; `lock-`, kazoo's `__lock__` (`Lock`, `WriteLock`) and
//! Curator's write side `__WRIT__` are exclusive. Which contenders hold and
//! which one a waiter watches is the admission rule's ([`kit::admits`],
//! [`kit::blocker`]) over the modes of every node before ours: the first
//! `--limit` of exclusive ones hold, a shared one holds when no exclusive
//! one is before it (so a waiting writer keeps later readers out), and
//! every waiter watches only the one node whose leaving may let it in (no
//! herd); the wait itself is [`queue::wait_turn`], shared with etcd. The
//! uuid lets us find our node again.
//!
//! What the foreign recipes see of dlock: kazoo's `WriteLock` sees every
//! dlock node of `?recipe=kazoo`, its `ReadLock` dlock's exclusive ones;
//! kazoo's plain `Lock` does not see readers (`__rlock__`), as it does not
//! see kazoo's own. Curator's read-write lock sees dlock's readers (its
//! `__READ__`), but neither its readers nor its writers see `lock-` nodes
//! (Curator's `InterProcessMutex`, dlock's exclusive holders), and
//! `InterProcessMutex` does not see the read-write lock's nodes: in Curator
//! the two recipes do not exclude each other either. dlock sees them all.
//!
//! The session is the lease of a `run`: its node is ephemeral, its timeout
//! follows `--ttl` (the server may clamp it; the lease then follows what
//! was negotiated). The fencing token is our node's `czxid`: zxids are
//! totally ordered across the ensemble and a later holder's node was
//! created later.
//!
//! A node that must outlive its process (a `dlock acquire` handle, or a
//! `run --lock-at-least` left to lapse) is persistent and carries its TTL in
//! its data. It expires when it has gone unmodified for that TTL, judged on
//! the server's clock: its `mtime` against the `mtime` of a write made now
//! (the lock directory's data, rewritten as it was). `renew` rewrites it
//! (moving its `mtime`); any dlock contender, or `status`, that finds one
//! expired deletes it (only if it is unchanged since it was judged). Where
//! the server offers TTL nodes (`zookeeper.extendedTypesEnabled=true`) the
//! node is a TTL node as well, so the server deletes it too, even when no
//! dlock comes by.
//!
//! The queue is fair by construction (sequence numbers, in one total
//! order); `status` lists it ([`status`]). A semaphore's holders claim
//! slots in nodes beside the lock directory ([`slots`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use async_trait::async_trait;
use std::sync::Arc;

use tokio::sync::Mutex;
use zookeeper_client as zk;

use super::kit::{self, Kind, Queued, Record};
use super::queue;
use super::{
    Attempt, Backend, Holder, KeyStatus, Lease, LeaseKind, LockSpec, Owner, PingInfo, Renewal,
    redact_url,
};
use crate::backend::probe::Check;
use crate::error::{Error, unavailable, usage};

mod doctor;
mod expiry;
mod names;
mod node;
mod release;
mod session;
mod slots;
mod status;
mod turn;

use names::{Contender, Recipe, contenders_of, entry_of, modes, parse_url};
use node::{NodeData, encode, expiry_of, fresh_id, ms_of, node_data, outlives_session};
use turn::ZkTurn;

pub struct ZkBackend {
    shown: String,
    cluster: String,
    auth: Option<Vec<u8>>,
    timeout: Duration,
    recipe: Recipe,
    /// The session, made on first use, and made anew once it has ended
    /// (expired: its ephemeral nodes went with it).
    client: Mutex<Option<Arc<zk::Client>>>,
    /// Our nodes, by (namespace, key): full path, and whether it outlives
    /// this process (a handle's node).
    mine: Mutex<HashMap<(String, String), (String, bool)>>,
    /// Our semaphore slot claims, by (namespace, key): the claim's path
    /// ([`slots`]), let go of on release.
    claims: Mutex<HashMap<(String, String), String>>,
    /// Queue entries not yet resolved, as (lock directory, our node-name
    /// prefix): registered before the node is created, so a waiter that is
    /// interrupted even mid-create finds and deletes its node in `close`.
    queued: Queued<(String, String)>,
    /// The server refused a TTL node: it has no extended types, so nodes
    /// that outlive their session are plain persistent ones.
    no_ttl_nodes: AtomicBool,
}

/// What listing a node's children found.
enum Listing {
    Children(Vec<String>),
    /// The client may not read the node: why, naming the path.
    Unreadable(String),
}

/// What kind of failure a ZooKeeper error is.
fn kind(e: &zk::Error) -> Kind {
    match e {
        zk::Error::NoAuth | zk::Error::AuthFailed => Kind::Denied,
        _ => Kind::Outage,
    }
}

fn zk_err(shown: &str, what: &str, e: zk::Error) -> anyhow::Error {
    kit::typed(kind(&e), format!("ZooKeeper {shown}: {what}: {e}"))
}

impl ZkBackend {
    pub fn new(url: &str, timeout: Duration) -> Result<ZkBackend> {
        let shown = redact_url(url);
        let (auth, cluster, recipe) = parse_url(url, &shown)?;
        Ok(ZkBackend {
            shown,
            cluster,
            auth,
            timeout,
            recipe,
            client: Mutex::new(None),
            mine: Mutex::new(HashMap::new()),
            claims: Mutex::new(HashMap::new()),
            queued: Queued::default(),
            no_ttl_nodes: AtomicBool::new(false),
        })
    }
    /// Connect on first use, with a session timeout of `ttl`; and again
    /// once the session has ended (it expired while the server was out of
    /// reach, say: a waiter queues again in a new one).
    async fn client(&self, ttl: Duration) -> Result<Arc<zk::Client>> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.state().is_terminated() {
                return Ok(c.clone());
            }
            tracing::info!(
                event = "session_ended",
                state = ?c.state(),
                "the ZooKeeper session ended: starting a new one"
            );
        }
        let c = Arc::new(self.connect(ttl).await?);
        *slot = Some(c.clone());
        Ok(c)
    }

    /// The session now, if there is one.
    async fn session(&self) -> Option<Arc<zk::Client>> {
        self.client.lock().await.clone()
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

    /// One call bounded by `--connect-timeout` whose ZooKeeper error the
    /// caller looks at itself ([`kit::answer`]).
    async fn answer<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = std::result::Result<T, zk::Error>>,
    ) -> Result<std::result::Result<T, zk::Error>> {
        let service = format!("ZooKeeper {}", self.shown);
        kit::answer(&service, what, self.timeout, f).await
    }

    /// The children of a node (none if it does not exist), or why this
    /// client may not list them (its ACL).
    async fn list(&self, c: &zk::Client, path: &str) -> Result<Listing> {
        let what = format!("list {path}");
        match self.answer(&what, c.list_children(path)).await? {
            Ok(n) => Ok(Listing::Children(n)),
            Err(zk::Error::NoNode) => Ok(Listing::Children(vec![])),
            Err(e @ (zk::Error::NoAuth | zk::Error::AuthFailed)) => Ok(Listing::Unreadable(
                format!("cannot list {path}: {e} (its ACL does not let this client read it)"),
            )),
            Err(e) => Err(zk_err(&self.shown, &what, e)),
        }
    }

    /// Create the lock directory `dir` (and its parents) if missing.
    async fn make_dir(&self, c: &zk::Client, dir: &str) -> Result<()> {
        let parent = zk::CreateMode::Persistent.with_acls(self.acls());
        self.bounded(&format!("create the lock directory {dir}"), async {
            match c.mkdir(dir, &parent).await {
                Err(zk::Error::NodeExists) => Ok(()),
                r => r,
            }
        })
        .await
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
}

impl ZkBackend {
    /// The path of a lease's node: ours from this process, else found by
    /// the lease id in its name (in either recipe's naming, so a handle is
    /// found whichever `?recipe=` renews it).
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
        let tags = [Recipe::Curator, Recipe::Kazoo].map(|r| r.tag(&lease.id, lease.shared));
        Ok(self
            .contenders(c, &dir)
            .await?
            .into_iter()
            .find(|ct| tags.iter().any(|t| ct.name.starts_with(t.as_str())))
            .map(|ct| format!("{dir}/{}", ct.name)))
    }
}

#[async_trait]
impl Backend for ZkBackend {
    fn describe(&self) -> String {
        self.shown.clone()
    }

    fn capabilities(&self) -> super::Capabilities {
        super::Capabilities::SHARES
    }

    async fn effective_ttl(&self, ttl: Duration) -> Result<Duration> {
        let session = self.client(ttl).await?;
        let c = &*session;
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
        let session = self.client(spec.ttl).await?;
        let c = &*session;
        let dir = Self::dir(&spec.namespace, &spec.key)?;
        // What an earlier, failed attempt left in this queue goes first: our
        // own node ahead of us would keep us waiting for ourselves.
        self.drop_queued(c).await?;
        let acls = self.acls();
        let handle = me.kind == LeaseKind::Handle;
        let data = NodeData {
            limit: Some(spec.limit),
            ttl_ms: handle.then(|| ms_of(spec.ttl)),
            ..Record::new(me.id.clone(), me)
        };
        let tag = self.recipe.tag(&me.id, spec.shared);
        let prefix = format!("{dir}/{tag}");
        let entry = (dir.clone(), tag.clone());
        self.queued.add(entry.clone());
        // A handle's node lives from the last write to it: when that write
        // was sent is when its lease can have started, at the earliest.
        let mut touched = Instant::now();
        // The node is created first, and the lock directory only when the
        // server says it is missing (as Curator does): a key used before
        // costs no write to find its directory there.
        let mut made_dir = false;
        let (stat, seq, data) = loop {
            let created = if handle {
                self.create_outliving(c, &prefix, data.clone(), spec.ttl)
                    .await?
            } else {
                let data = encode(&data);
                let opts = zk::CreateMode::EphemeralSequential.with_acls(acls);
                let what = format!("create a lock node in {dir}");
                match self.answer(&what, c.create(&prefix, &data, &opts)).await? {
                    Ok((stat, seq)) => Some((stat, seq, data)),
                    Err(zk::Error::NoNode) => None,
                    Err(e) => return Err(zk_err(&self.shown, &what, e)),
                }
            };
            match created {
                Some(made) => break made,
                // Made just now and gone again (a `dlock` tidying keys, an
                // operator): it is not ours to insist.
                None if made_dir => {
                    return Err(unavailable(format!(
                        "ZooKeeper {}: the lock directory {dir} vanished as it was made",
                        self.shown
                    )));
                }
                None => {
                    self.make_dir(c, &dir).await?;
                    made_dir = true;
                    touched = Instant::now();
                }
            }
        };
        let name = format!("{tag}{seq}");
        let path = format!("{dir}/{name}");
        let mut turn = ZkTurn {
            b: self,
            c: session.clone(),
            spec,
            me,
            dir,
            name,
            path,
            entry,
            token: stat.czxid as u64,
            data,
            handle,
            touched,
            checked: Instant::now(),
            waited: false,
            lasting: HashSet::new(),
            records: HashMap::new(),
            next_expiry: None,
            watching: None,
        };
        queue::wait_turn(&mut turn, spec.mode(), deadline).await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Renewal> {
        let session = self.client(ttl).await?;
        let c = &*session;
        let Some(path) = self.find_mine(c, lease).await? else {
            return Ok(Renewal::Lost);
        };
        let what = format!("renew {path}");
        for _ in 0..5 {
            let (data, stat) = match self.answer(&what, c.get_data(&path)).await? {
                Ok(r) => r,
                Err(zk::Error::NoNode | zk::Error::SessionExpired) => {
                    return Ok(Renewal::Lost);
                }
                Err(e) => return Err(zk_err(&self.shown, &what, e)),
            };
            // A run's ephemeral node lives while the session does.
            if !outlives_session(&stat) {
                return Ok(Renewal::Renewed);
            }
            // A TTL node restarts the TTL it was created with when touched;
            // ZooKeeper cannot change it, so a different one is refused,
            // never ignored. A plain node carries its TTL in its data.
            let parsed = node_data(&data);
            let ttl_node = parsed.as_ref().is_some_and(|d| d.ttl_node);
            if ttl_node && ttl != lease.ttl {
                return Err(usage(format!(
                    "ZooKeeper cannot change a TTL node's TTL: the lease of {:?} was created with {}, \
                     and renewing restarts that; renew without --ttl (or with --ttl {}), or acquire \
                     anew with the TTL you want",
                    lease.key,
                    humantime::format_duration(lease.ttl),
                    humantime::format_duration(lease.ttl)
                )));
            }
            let expiry = expiry_of(&data, &stat);
            let new = match parsed {
                Some(mut d) if !ttl_node => {
                    d.ttl_ms = Some(ms_of(ttl));
                    encode(&d)
                }
                _ => data.clone(),
            };
            let write = c.set_data(&path, &new, Some(stat.version));
            match self.answer(&what, write).await? {
                // Written after its TTL ran out (nobody had deleted it
                // yet): the lease had ended, so this is no renewal.
                Ok(s) if expiry.is_some_and(|at| s.mtime > at) => {
                    kit::best_effort(self.timeout, c.delete(&path, Some(s.version))).await;
                    return Ok(Renewal::Lost);
                }
                Ok(_) => return Ok(Renewal::Renewed),
                Err(zk::Error::NoNode) => return Ok(Renewal::Lost),
                Err(zk::Error::BadVersion) => continue,
                Err(e) => return Err(zk_err(&self.shown, &what, e)),
            }
        }
        Err(unavailable(format!(
            "ZooKeeper {}: renew {path}: the node kept changing under us",
            self.shown
        )))
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let session = self.client(lease.ttl).await?;
        let c = &*session;
        let Some(path) = self.find_mine(c, lease).await? else {
            return Ok(false);
        };
        let k = (lease.namespace.clone(), lease.key.clone());
        let ours = self.mine.lock().await.remove(&k);
        // Our slot is free again first: while our node is there, the
        // claim is still ours to delete.
        if let Some(claim) = self.claims.lock().await.remove(&k) {
            self.unclaim(c, &path, &claim).await;
        }
        // A `run`'s node lives with our session: it cannot have expired
        // while the session is alive, so it is deleted at once (the waiter
        // behind it is woken by this delete; a read first would add a round
        // trip to every hand-off). A handle's node is judged first.
        let released = match ours {
            Some((_, false)) => self.delete_ephemeral(c, &path).await,
            _ => self.release_on(c, &path).await,
        };
        match released {
            // The server of our session does not answer (frozen, cut off):
            // our session's node is deleted through another server.
            Err(e)
                if matches!(ours, Some((_, false)))
                    && crate::error::retry_of(&e) == crate::error::Retry::Outage =>
            {
                match self.delete_elsewhere(&path).await {
                    Some(()) => Ok(true),
                    None => Err(e),
                }
            }
            r => r,
        }
    }

    /// `--lock-at-least`: our ephemeral node is replaced, in one
    /// transaction, by a node that outlives the session and expires after
    /// `remaining`, with the same sequence number (so it keeps our place
    /// ahead of every waiter, for Curator and kazoo too) and our fencing
    /// token in its data.
    async fn release_after(&self, lease: &Lease, remaining: Duration) -> Result<bool> {
        let Some(session) = self.session().await else {
            return Ok(false);
        };
        let c = &*session;
        let k = (lease.namespace.clone(), lease.key.clone());
        let Some((path, false)) = self.mine.lock().await.get(&k).cloned() else {
            return Ok(false);
        };
        let (data, stat) = self.bounded("read", c.get_data(&path)).await?;
        let Some(mut d) = node_data(&data) else {
            return Ok(false);
        };
        let Some((dir, name)) = path.rsplit_once('/') else {
            return Ok(false);
        };
        let Some((_, shared)) = entry_of(name) else {
            return Ok(false);
        };
        if outlives_session(&stat) {
            return Ok(false);
        }
        let seq = &name[name.len() - 10..];
        d.ttl_ms = Some(ms_of(remaining));
        d.token = Some(lease.token);
        // It outlives this process by design: no process's liveness.
        d.live = None;
        // Its semaphore slot stays its own: the claim, made in this
        // session, is replaced in the same step by a persistent one of the
        // new node, which is free again once that node has gone.
        let claim = self.claims.lock().await.get(&k).cloned();
        if claim.is_none() {
            d.slot = None;
        }
        let new_name = format!("{}{seq}", self.recipe.tag(&fresh_id(), shared));
        let new_path = format!("{dir}/{new_name}");
        let acls = self.acls();
        for with_ttl in [true, false] {
            if with_ttl && self.no_ttl_nodes.load(Ordering::Relaxed) {
                continue;
            }
            let opts = zk::CreateMode::Persistent.with_acls(acls);
            let opts = if with_ttl {
                opts.with_ttl(remaining)
            } else {
                opts
            };
            d.ttl_node = with_ttl;
            let mut m = c.new_multi_writer();
            m.add_create(&new_path, &encode(&d), &opts)?;
            m.add_delete(&path, Some(stat.version))?;
            if let Some(claim) = &claim {
                let lasting = zk::CreateMode::Persistent.with_acls(acls);
                m.add_delete(claim, None)?;
                m.add_create(claim, new_name.as_bytes(), &lasting)?;
            }
            match tokio::time::timeout(self.timeout, m.commit()).await {
                Ok(Ok(_)) => {
                    self.mine.lock().await.remove(&k);
                    self.claims.lock().await.remove(&k);
                    return Ok(true);
                }
                Ok(Err(e)) => {
                    let e = zk::Error::from(e);
                    if with_ttl && e == zk::Error::Unimplemented {
                        self.no_ttl_nodes.store(true, Ordering::Relaxed);
                        continue;
                    }
                    tracing::debug!("cannot leave {path} to lapse: {e}");
                    return Ok(false);
                }
                Err(_) => return Ok(false),
            }
        }
        Ok(false)
    }

    async fn force_release(&self, namespace: &str, key: &str) -> Result<u64> {
        let session = self.client(Duration::from_secs(30)).await?;
        let c = &*session;
        let dir = Self::dir(namespace, key)?;
        let contenders = self.contenders(c, &dir).await?;
        let mut n = 0;
        // Break the holders, as the admission rule counts them (every
        // shared one; exclusive ones by their own limit, else one);
        // waiters stay queued.
        let limit = self.limit_of(c, &dir, &contenders).await;
        let holding = kit::holding(&modes(&contenders, limit));
        for ct in &contenders[..holding] {
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
        self.statuses(namespace, keys).await
    }

    async fn ping(&self) -> Result<PingInfo> {
        let session = self.client(Duration::from_secs(30)).await?;
        let c = &*session;
        self.bounded("ping", c.check_stat("/")).await?;
        Ok(PingInfo {
            kind: "zookeeper",
            version: format!("session {:?}", c.session_timeout()),
            detail: self.shown.clone(),
        })
    }

    async fn doctor(&self, ttl: Duration, timeout: Duration) -> Vec<Check> {
        self.checks(ttl, timeout).await
    }

    async fn close(&self) {
        let Some(session) = self.session().await else {
            return;
        };
        let c = &*session;
        // A waiter that was interrupted or gave up leaves no queue entry to
        // hold up the waiters behind it.
        let _ = self.drop_queued(c).await;
        // Delete what we still hold before the session goes, so waiters
        // wake now rather than when the session expires.
        let mine: Vec<((String, String), String)> = self
            .mine
            .lock()
            .await
            .drain()
            .filter(|(_, (_, handle))| !handle)
            .map(|(k, (p, _))| (k, p))
            .collect();
        let mut claims = std::mem::take(&mut *self.claims.lock().await);
        for (k, p) in mine {
            if let Some(claim) = claims.remove(&k) {
                self.unclaim(c, &p, &claim).await;
            }
            kit::best_effort(self.timeout, c.delete(&p, None)).await;
        }
        drop(session);
        self.end_session().await;
    }
}
