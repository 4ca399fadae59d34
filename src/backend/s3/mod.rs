//! S3 and S3-compatible object stores, on conditional writes.
//!
//! A lock is one object per key, `[PREFIX/]NAMESPACE/KEY.lock`, holding a
//! JSON document ([`state::LockObject`]): the fencing counter, every
//! holder's record with its expiry, and the waiters. Every change is a
//! compare-and-swap: read the object and its ETag, decide by the engine's
//! rules ([`kit::admits`]), write it back with `If-Match: ETAG` (or create
//! it with `If-None-Match: *`); a store that answers 412 (or 409) had
//! another writer in between, and the step is made again on what is there
//! now. So taking, renewing, releasing, `--limit`, `--shared`, the fair
//! queue and the fencing token are each one conditional PUT: a waiter's
//! entry keeps its place in the object's line, and a request is admitted
//! ([`kit::admits`]) behind the holders and the requests that were waiting
//! before it (for a shared one, the exclusive ones among them). A failed
//! attempt takes its place in line in the same write (arrival order is the
//! order of first attempts), and a semaphore's holder takes the lowest
//! free slot in the write that admits it, recorded in its holder record.
//!
//! Expiry is judged by the store's clock: every answer's `Date` narrows
//! what this process knows of it ([`client::Clock`]), an entry's end is
//! written at the latest the store's time can be plus the TTL, and judged
//! over at the earliest it can be. `Date` is in whole seconds, so a lapsed
//! lease is taken over up to about two seconds late (a second on each
//! side), never early; entries found ended are written out of the object.
//!
//! Releasing removes the holder's entry and keeps the object, so the
//! fencing counter in it keeps rising across releases; `force` empties
//! it. Nothing waits on a watch (S3 has none): a waiter polls with a
//! jittered backoff whose ceiling grows with its place in line
//! ([`poll::Polling`]).
//!
//! A store that does not enforce the conditions (Garage 2.5 accepts and
//! ignores them) would make this no lock at all, so before its first
//! write each process checks that a second create-if-absent of a probe
//! object, and a write with a stale `If-Match`, both fail
//! ([`S3Backend::conditional`]); `doctor` reports the same check.

mod client;
mod config;
mod poll;
mod state;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use async_trait::async_trait;

use super::kit::{self, NField};
use super::probe::{Check, Level};
use super::{Backend, KeyStatus, Lease, PingInfo, Poll, Renewal, Waiting};
use crate::error::denied;
use client::{Client, Req, Response};
use config::S3Url;
use poll::Polling;
use state::LockObject;

/// The end of a lock object's name.
pub const SUFFIX: &str = ".lock";

/// Compare-and-swap rounds one step makes before it calls the store busy.
const CAS_TRIES: usize = 64;

/// What a step does with the object it read.
enum Step<T> {
    /// Nothing to write.
    Done(T),
    /// Write the changed object; `T` once the write succeeds.
    Write(T),
}

pub struct S3Backend {
    url: S3Url,
    shown: String,
    client: Client,
    waiting: Waiting,
    /// Whether the store enforces conditional writes, once known.
    checked: tokio::sync::Mutex<Option<Result<(), String>>>,
    polling: std::sync::Mutex<Polling>,
}

fn clean(s: &str) -> String {
    s.replace('|', "_")
}

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl S3Backend {
    pub fn new(url: &str, timeout: Duration) -> Result<S3Backend> {
        let parsed = S3Url::parse(url)?;
        let creds = config::credentials()?;
        let shown = crate::backend::redact_url(url);
        let client = Client::new(
            parsed.endpoint.clone(),
            parsed.bucket.clone(),
            parsed.region.clone(),
            creds,
            timeout,
        )
        .map_err(|e| denied(format!("{shown}: {e}")))?;
        Ok(S3Backend {
            url: parsed,
            shown,
            client,
            waiting: Waiting::new(),
            checked: tokio::sync::Mutex::new(None),
            polling: std::sync::Mutex::new(Polling {
                interval: Duration::from_millis(10),
                place: 0,
            }),
        })
    }

    /// The typed error for an answer that is none of the expected ones.
    fn fail(&self, what: &str, object: &str, r: &Response) -> anyhow::Error {
        let mut msg = format!("{}: {what} {object}: {}", self.shown, r.said());
        match (r.status, r.code().as_str()) {
            (404, "NoSuchBucket") => {
                msg.push_str(&format!(" (create bucket {:?} first)", self.url.bucket))
            }
            (301, _) | (_, "AuthorizationHeaderMalformed") => {
                msg.push_str(" (the bucket is in another region: give ?region=)")
            }
            (403, _) => msg.push_str(
                " (check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the profile, and that they \
                 may read, write and list the bucket)",
            ),
            _ => {}
        }
        kit::typed(r.kind(), msg)
    }

    /// The lock object and its ETag (None: there is none yet).
    async fn read(&self, object: &str) -> Result<(LockObject, Option<String>)> {
        let r = self.client.send("read", Req::new("GET", object)).await?;
        match r.status {
            200 => {
                let o = LockObject::parse(&r.body).map_err(|e| {
                    denied(format!(
                        "{}: {object} is {e}; it is in dlock's place: remove it or choose another \
                         namespace or prefix",
                        self.shown
                    ))
                })?;
                Ok((o, r.etag))
            }
            404 if r.code() != "NoSuchBucket" => Ok((LockObject::default(), None)),
            _ => Err(self.fail("read", object, &r)),
        }
    }

    /// Write `o` if the object is still at `etag` (None: absent); false if
    /// another writer came first.
    async fn write(&self, object: &str, o: &mut LockObject, etag: Option<&str>) -> Result<bool> {
        let mut req = Req::new("PUT", object).header("content-type", "application/json");
        req = match etag {
            Some(e) => req.header("if-match", e),
            None => req.header("if-none-match", "*"),
        };
        req.body = o.encode();
        let r = self.client.send("write", req).await?;
        match r.status {
            200..=299 => Ok(true),
            // 412: the precondition failed; 409: a concurrent conditional
            // write (AWS ConditionalRequestConflict); 404: it was deleted.
            412 | 409 => Ok(false),
            404 if etag.is_some() && r.code() != "NoSuchBucket" => Ok(false),
            _ => Err(self.fail("write", object, &r)),
        }
    }

    /// Read, change and write back `object` until no other writer comes in
    /// between. `f` sees the object without the entries that have ended.
    async fn update<T>(
        &self,
        object: &str,
        f: impl FnMut(&mut LockObject, &client::Clock) -> Step<T>,
    ) -> Result<T> {
        let backoff = kit::Backoff::new(Duration::from_millis(2), Duration::from_millis(100));
        self.update_with(object, backoff, f).await
    }

    /// [`S3Backend::update`], backing off as `backoff` says after another
    /// writer came first.
    async fn update_with<T>(
        &self,
        object: &str,
        mut backoff: kit::Backoff,
        mut f: impl FnMut(&mut LockObject, &client::Clock) -> Step<T>,
    ) -> Result<T> {
        for _ in 0..CAS_TRIES {
            let (mut o, etag) = self.read(object).await?;
            let clock = self.client.clock();
            let before = (o.holders.len(), o.waiters.len());
            o.prune(clock.now_lo());
            let pruned = before != (o.holders.len(), o.waiters.len());
            match f(&mut o, &clock) {
                Step::Done(t) => {
                    // Entries that ended are written out of the object
                    // (best effort), so that a reader who knows the store's
                    // clock less well does not take them for live.
                    if pruned {
                        let _ = self.write(object, &mut o, etag.as_deref()).await;
                    }
                    return Ok(t);
                }
                Step::Write(t) => {
                    if self.write(object, &mut o, etag.as_deref()).await? {
                        return Ok(t);
                    }
                }
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
        Err(kit::typed(
            kit::Kind::Full,
            format!(
                "{}: {object}: {CAS_TRIES} writers in a row came first; the lock object is too busy",
                self.shown
            ),
        ))
    }

    /// Whether the store enforces conditional writes, checked once per
    /// process: a refusal is final (69); an outage is tried again later.
    async fn conditional(&self) -> Result<()> {
        let mut checked = self.checked.lock().await;
        if checked.is_none() {
            *checked = Some(self.check_conditional().await?);
        }
        match checked.as_ref() {
            Some(Err(e)) => Err(denied(e.clone())),
            _ => Ok(()),
        }
    }

    /// The probe: create `[PREFIX/].dlock-probe` if absent (twice if this
    /// made it: the second must fail), then write it with a stale
    /// `If-Match` (which must fail).
    async fn check_conditional(&self) -> Result<Result<(), String>> {
        let object = format!("{}.dlock-probe", self.url.dir());
        let put = |cond: &'static str, v: &'static str| {
            let mut r = Req::new("PUT", &object).header(cond, v);
            r.body = state::nonce().into_bytes();
            r
        };
        let refused = |what: &str| {
            Ok(Err(format!(
                "{}: this store does not enforce conditional writes: {what} (probe object {object}); \
                 a lock on it would be no lock at all. dlock needs a store that honours \
                 If-None-Match: * and If-Match on PUT (AWS S3, MinIO, SeaweedFS, Cloudflare R2)",
                self.shown
            )))
        };
        let r = self.client.send("probe", put("if-none-match", "*")).await?;
        match r.status {
            200..=299 => {
                let again = self.client.send("probe", put("if-none-match", "*")).await?;
                match again.status {
                    200..=299 => {
                        return refused(
                            "a second create-if-absent (If-None-Match: *) of an existing object succeeded",
                        );
                    }
                    412 | 409 => {}
                    _ => return Err(self.fail("probe", &object, &again)),
                }
            }
            412 | 409 => {}
            _ => return Err(self.fail("probe", &object, &r)),
        }
        let stale = self
            .client
            .send("probe", put("if-match", "\"dlock-stale-etag\""))
            .await?;
        match stale.status {
            412 | 409 => Ok(Ok(())),
            200..=299 => refused("a write with a stale If-Match succeeded"),
            _ => Err(self.fail("probe", &object, &stale)),
        }
    }

    /// Every key with a lock object in `namespace`.
    async fn list(&self, namespace: &str) -> Result<Vec<String>> {
        let prefix = format!("{}{namespace}/", self.url.dir());
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut req = Req::new("GET", "");
            req.query = vec![("list-type", "2".into()), ("prefix", prefix.clone())];
            if let Some(t) = &token {
                req.query.push(("continuation-token", t.clone()));
            }
            let r = self.client.send("list", req).await?;
            if r.status != 200 {
                return Err(self.fail("list", &prefix, &r));
            }
            let text = String::from_utf8_lossy(&r.body);
            for k in client::tags(&text, "Key") {
                if let Some(name) = k.strip_prefix(&prefix).and_then(|n| n.strip_suffix(SUFFIX)) {
                    names.push(name.to_string());
                }
            }
            token = client::tag(&text, "NextContinuationToken");
            if client::tag(&text, "IsTruncated").as_deref() != Some("true") || token.is_none() {
                break;
            }
        }
        names.sort();
        Ok(names)
    }

    fn object(&self, namespace: &str, key: &str) -> String {
        self.url.object(namespace, key)
    }

    /// Change our entry of `lease`: None if it is gone (lapsed, broken).
    async fn extend(&self, lease: &Lease, ttl: Duration, outlive_us: bool) -> Result<Option<()>> {
        self.conditional().await?;
        let object = self.object(&lease.namespace, &lease.key);
        self.update(&object, |o, clock| match o.find(&lease.id) {
            None => Step::Done(None),
            Some(i) => {
                let e = &mut o.holders[i];
                e.exp = clock.now_hi() + ms(ttl);
                if outlive_us && let Some(mut r) = e.record() {
                    // Nobody may end it early for our process being gone.
                    r.live = None;
                    e.rec = r.encode(NField::Limit);
                }
                Step::Write(Some(()))
            }
        })
        .await
    }
}

#[async_trait]
impl Backend for S3Backend {
    fn describe(&self) -> String {
        self.shown.clone()
    }

    /// The first contact with the store, made while connecting (so an
    /// outage is bounded from the first attempt, as connecting is): the
    /// check of conditional writes. A refusal is left to the first write,
    /// so that `doctor` reports it as its own check.
    async fn effective_ttl(&self, ttl: Duration) -> Result<Duration> {
        match self.conditional().await {
            Err(e) if crate::error::retry_of(&e) != crate::error::Retry::Never => Err(e),
            _ => Ok(ttl),
        }
    }

    fn poller(&self) -> Option<&dyn Poll> {
        Some(self)
    }

    fn capabilities(&self) -> super::Capabilities {
        super::Capabilities::SHARES
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Renewal> {
        Ok(match self.extend(lease, ttl, false).await? {
            Some(()) => Renewal::Renewed,
            None => Renewal::Lost,
        })
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        self.conditional().await?;
        let object = self.object(&lease.namespace, &lease.key);
        self.update(&object, |o, _| match o.find(&lease.id) {
            None => Step::Done(false),
            Some(i) => {
                o.holders.remove(i);
                Step::Write(true)
            }
        })
        .await
    }

    async fn release_after(&self, lease: &Lease, remaining: Duration) -> Result<bool> {
        let ttl = remaining.max(Duration::from_millis(1));
        Ok(self.extend(lease, ttl, true).await?.is_some())
    }

    async fn force_release(&self, namespace: &str, key: &str) -> Result<u64> {
        self.conditional().await?;
        let object = self.object(namespace, key);
        self.update(&object, |o, _| {
            let n = o.holders.len() as u64;
            if n == 0 {
                return Step::Done(0);
            }
            o.holders.clear();
            Step::Write(n)
        })
        .await
    }

    async fn status(&self, namespace: &str, keys: &[String]) -> Result<Vec<KeyStatus>> {
        let names = if keys.is_empty() {
            self.list(namespace).await?
        } else {
            keys.to_vec()
        };
        let mut out = Vec::new();
        for name in names {
            let (mut o, _) = self.read(&self.object(namespace, &name)).await?;
            // A dead waiter is shown, marked dead (the next contender on
            // its machine removes it).
            o.prune_ended(self.client.clock().now_lo());
            if keys.is_empty() && o.holders.is_empty() {
                continue;
            }
            out.push(o.view(name).status());
        }
        Ok(out)
    }

    async fn ping(&self) -> Result<PingInfo> {
        let r = self.client.send("ping", Req::new("HEAD", "")).await?;
        if !(200..300).contains(&r.status) {
            return Err(self.fail("ping", "the bucket", &r));
        }
        Ok(PingInfo {
            kind: "s3",
            version: r.server.unwrap_or_else(|| "S3".to_string()),
            detail: self.shown.clone(),
        })
    }

    async fn server_time(&self) -> Result<Option<SystemTime>> {
        // A `Date` is whole seconds: ask until one turns over, which pins
        // the store's clock to a round trip (for `doctor`; at most ~1.2 s).
        let t = Instant::now();
        self.ping().await?;
        while self.client.clock().known()
            && self.client.clock().spread() > 50
            && t.elapsed() < Duration::from_millis(1200)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.ping().await?;
        }
        let c = self.client.clock();
        if !c.known() {
            return Ok(None);
        }
        let mid = (c.now_lo() + c.now_hi()) / 2;
        Ok(Some(UNIX_EPOCH + Duration::from_millis(mid.max(0) as u64)))
    }

    async fn doctor(&self, _ttl: Duration, _timeout: Duration) -> Vec<Check> {
        let mut checks = Vec::new();
        match self.check_conditional().await {
            Ok(Ok(())) => checks.push(Check::ok(
                "conditional-writes",
                "the store refuses a second create-if-absent (If-None-Match: *) and a write \
                 with a stale If-Match: locks on it hold",
            )),
            Ok(Err(e)) => checks.push(Check::new(Level::Fail, "conditional-writes", e).fix(
                "use a store that enforces conditional writes: AWS S3, MinIO, SeaweedFS or \
                 Cloudflare R2 (Garage 2.5, for one, ignores them)",
            )),
            Err(e) => checks.push(
                Check::new(Level::Fail, "conditional-writes", format!("{e:#}"))
                    .fix("make the bucket reachable and writable with these credentials"),
            ),
        }
        let c = self.client.clock();
        checks.push(if c.known() {
            Check::new(
                Level::Info,
                "server-clock",
                format!(
                    "expiry is judged by the store's clock (its Date header, in whole seconds), \
                     known here to within {} ms: a lapsed lease is taken over up to that much late",
                    c.spread()
                ),
            )
        } else {
            Check::new(
                Level::Warn,
                "server-clock",
                "the store sends no Date header: expiry is judged by each client's own clock",
            )
            .fix("keep the clients' clocks in sync (NTP), or use a store that sends Date")
        });
        checks
    }

    async fn close(&self) {
        // A waiter that gave up takes its entry out now rather than letting
        // it lapse (one that died still lapses).
        for (ns, key) in self.waiting.clear() {
            let object = self.object(&ns, &key);
            let id = self.waiting.id.clone();
            let drop_entry = self.update(&object, |o, _| {
                if o.unwait(&id) {
                    Step::Write(())
                } else {
                    Step::Done(())
                }
            });
            let _ = tokio::time::timeout(
                self.client.timeout.min(Duration::from_millis(1500)),
                drop_entry,
            )
            .await;
        }
        tracing::debug!(
            event = "s3_requests",
            requests = self.client.sent.load(std::sync::atomic::Ordering::Relaxed),
            "requests sent to the store"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_keys_are_two_objects() {
        // One object per key, never a directory of its own, so `p` and
        // `p/q` are two objects (`p.lock`, `p/q.lock`), also on stores
        // with directories (SeaweedFS's filer).
        let u = S3Url::parse("s3://bucket/pre?endpoint=http://h:1").unwrap();
        assert_eq!(u.object("ns", "p"), "pre/ns/p.lock");
        assert_eq!(u.object("ns", "p/q"), "pre/ns/p/q.lock");
    }
}
