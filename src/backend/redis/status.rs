//! `status`: which keys are held in a namespace, and the state of each,
//! agreed by a majority of servers for Redlock.

use std::time::{Duration, SystemTime};

use anyhow::Result;
use redis::{AsyncCommands, Script, Value};

use super::conn::Conn;
use super::errors::{self, call};
use super::scripts::INSPECT;
use super::{RedisBackend, keys, waiter_entry};
use crate::backend::{Holder, KeyStatus, kit};

impl RedisBackend {
    pub(super) async fn status_of(
        &self,
        namespace: &str,
        keys_in: &[String],
    ) -> Result<Vec<KeyStatus>> {
        let mut names: Vec<String> = keys_in.to_vec();
        if names.is_empty() {
            // Every lock in the namespace: SCAN (never KEYS) each server, in
            // one pass of large batches, since a shared Redis may hold
            // millions of other keys. A server that cannot be read makes the
            // answer an error, never "nothing held".
            let prefix = format!("{namespace}:");
            let pattern = format!("*{}*", glob_escape(&prefix));
            let mut errors = Vec::new();
            let mut answered = 0;
            let mut need = 0;
            for n in &self.nodes {
                // A Sentinel-managed node is scanned on its current primary.
                let clients = match &n.conn {
                    Conn::Sentinel(sc) => {
                        match call(&n.shown, "SENTINEL", self.op_timeout, sc.client()).await {
                            Ok(c) => vec![c],
                            Err(e) => {
                                errors.push(e);
                                vec![]
                            }
                        }
                    }
                    _ => n.scan.clone(),
                };
                need += clients.len().max(1);
                for client in &clients {
                    let scan = async {
                        let mut c = client.get_multiplexed_async_connection().await?;
                        let opts = redis::ScanOptions::default()
                            .with_pattern(pattern.as_str())
                            .with_count(20_000);
                        let mut it: redis::AsyncIter<String> = c.scan_options(opts).await?;
                        let mut found = Vec::new();
                        while let Some(k) = it.next_item().await {
                            found.push(k?);
                        }
                        Ok::<_, redis::RedisError>(found)
                    };
                    // Listing may take longer than one step: a few seconds
                    // per million keys.
                    match call(&n.shown, "SCAN", self.op_timeout * 4, scan).await {
                        Ok(found) => {
                            answered += 1;
                            for k in &found {
                                // `NS:KEY` (held), or `{NS:KEY}:sem` (a
                                // semaphore) or `{NS:KEY}:shared` (readers).
                                let name = k.strip_prefix(&prefix).or_else(|| {
                                    let inner = k.strip_prefix('{')?;
                                    inner
                                        .strip_suffix("}:sem")
                                        .or_else(|| inner.strip_suffix("}:shared"))?
                                        .strip_prefix(&prefix)
                                });
                                if let Some(name) = name
                                    && !names.iter().any(|x| x == name)
                                {
                                    names.push(name.to_string());
                                }
                            }
                        }
                        Err(e) => errors.push(e),
                    }
                }
            }
            // Redlock: a lock is held only on a majority, so a majority of
            // answers lists every lock; one server (or cluster node) must answer.
            if self.redlock() {
                need = self.quorum;
            }
            if answered < need {
                let why = errors::too_few(false, answered + errors.len(), need, answered, &errors);
                return Err(
                    why.context(format!("cannot list the locks in namespace {namespace:?}"))
                );
            }
            names.sort();
        }
        let mut out = Vec::new();
        for name in names {
            out.push(self.key_status(namespace, name).await?);
        }
        if keys_in.is_empty() {
            kit::held_only(&mut out);
        }
        Ok(out)
    }

    /// One key's state: a holder, and an entry in line, count where a
    /// majority of servers agree on it (every one, on one server).
    async fn key_status(&self, namespace: &str, name: String) -> Result<KeyStatus> {
        let k = keys(namespace, &name);
        let results = self
            .everywhere(
                "INSPECT",
                &Script::new(INSPECT),
                &k.all(),
                &[],
                self.op_timeout,
            )
            .await;
        let mut seen: Vec<(String, Holder, usize)> = Vec::new();
        // (entry, ticket, waiter, servers that list it, its --limit).
        let mut line: Vec<(String, f64, Holder, usize, Option<u32>)> = Vec::new();
        let mut answered = 0;
        let mut waiters = 0u64;
        let mut limit = None::<u32>;
        for r in results.iter().flatten() {
            answered += 1;
            let s = strings(r);
            let num = |i: usize| s.get(i).and_then(|w| w.parse::<u64>().ok());
            waiters = waiters.max(num(1).unwrap_or(0));
            if let Some(l) = num(2) {
                limit = limit.max(Some(l.min(u64::from(u32::MAX)) as u32));
            }
            let queued = num(3).unwrap_or(0) as usize;
            let rest = &s[4.min(s.len())..];
            let (entries, holders) = rest.split_at((queued * 4).min(rest.len()));
            for e in entries.chunks(4).filter(|e| e.len() == 4) {
                match line.iter_mut().find(|(m, ..)| *m == e[0]) {
                    Some(x) => x.3 += 1,
                    None => {
                        // An entry whose record is unreadable still waits.
                        let (w, l) = waiter_of(&e[2]).unwrap_or_else(|| {
                            let h = Holder {
                                waiting: true,
                                shared: e[0].starts_with("s|"),
                                ..Holder::default()
                            };
                            (h, None)
                        });
                        line.push((e[0].clone(), e[1].parse().unwrap_or(f64::MAX), w, 1, l));
                    }
                }
            }
            for (id, h) in holders_from(holders) {
                match seen.iter_mut().find(|(i, _, _)| *i == id) {
                    Some(e) => e.2 += 1,
                    None => seen.push((id, h, 1)),
                }
            }
        }
        if answered == 0 {
            let errors: Vec<anyhow::Error> = results.into_iter().filter_map(|r| r.err()).collect();
            return Err(self.too_few(&errors));
        }
        // A semaphore's holders (those with a slot) took the --limit the
        // servers keep beside them; a waiter's record gives its own.
        let held = |h: Holder| {
            let l = limit.filter(|_| !h.shared && h.slot.is_some());
            kit::Entry::new(h, l)
        };
        let holders = seen
            .into_iter()
            .filter(|(_, _, c)| *c >= self.quorum)
            .map(|(_, h, _)| held(h))
            .collect();
        // First in line first: by ticket, then by entry, as the servers
        // order it.
        line.retain(|e| e.3 >= self.quorum);
        line.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        let queue = line
            .into_iter()
            .map(|e| kit::Entry::new(e.2, e.4))
            .collect();
        Ok(kit::View::split(name, holders, queue)
            .counted(Some(waiters))
            .status())
    }
}

/// A value as a holder: ours (`dlock1|...`) in full, anyone else's as a
/// foreign holder with only the expiry known.
pub(super) fn parse_holder(value: &str, ttl_ms: i64, now: SystemTime) -> (Option<String>, Holder) {
    let expires_at = (ttl_ms >= 0).then(|| now + Duration::from_millis(ttl_ms as u64));
    // The scripts write the token as `N` (0 until Redlock fences it).
    match kit::Record::parse(value, kit::NField::Token) {
        Some(r) => (Some(r.id.clone()), r.holder(None, expires_at)),
        None => (
            None,
            Holder {
                expires_at,
                ..Holder::default()
            },
        ),
    }
}

pub(super) fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                Value::SimpleString(s) => s.clone(),
                Value::Int(n) => n.to_string(),
                _ => String::new(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Holders from a list of (value, ms left, mode) triples, each with a
/// name unique to it; the mode is `s` for a shared holder, `x` for any
/// other, `q` or `qs` for a waiter ahead in line (an exclusive or shared
/// request: [`Holder::waiting`], its `entry` named `q:ENTRY` for
/// `BREAK_DEAD`).
pub(super) fn holders_from(triples: &[String]) -> Vec<(String, Holder)> {
    let now = SystemTime::now();
    triples
        .chunks(3)
        .filter(|c| c.len() == 3)
        .filter_map(|c| {
            if c[2].starts_with('q') {
                let h = waiter(&c[0])?;
                let name = h.entry.clone()?;
                return Some((name, h));
            }
            let (id, mut h) = parse_holder(&c[0], c[1].parse().unwrap_or(-1), now);
            h.shared = c[2] == "s";
            h.entry = id.clone();
            Some((id.unwrap_or_else(|| format!("foreign:{}", c[0])), h))
        })
        .collect()
}

/// A waiter's record in the line (`N` is its `--limit`, 0 for a shared
/// request) as a [`Holder`] that waits: since when, in which mode, and
/// whether its process is known dead.
pub(super) fn waiter(record: &str) -> Option<Holder> {
    waiter_of(record).map(|(h, _)| h)
}

/// [`waiter`], with the `--limit` of an exclusive request.
fn waiter_of(record: &str) -> Option<(Holder, Option<u32>)> {
    let r = kit::Record::parse(record, kit::NField::Limit)?;
    let limit = r.limit.filter(|_| !r.shared);
    let mut h = r.holder(None, None);
    h.waiting = true;
    h.entry = Some(format!("q:{}", waiter_entry(&r.id, r.shared)));
    Some((h, limit))
}

fn glob_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            o.push('\\');
        }
        o.push(c);
    }
    o
}
