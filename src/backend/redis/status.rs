//! `status`: which keys are held in a namespace, and the state of each,
//! agreed by a majority of servers for Redlock.

use std::time::{Duration, SystemTime};

use anyhow::Result;
use redis::{AsyncCommands, Script, Value};

use super::conn::Conn;
use super::scripts::INSPECT;
use super::{RedisBackend, keys};
use crate::backend::{Holder, KeyStatus, kit};
use crate::error::unavailable;

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
                        match tokio::time::timeout(self.op_timeout, sc.client()).await {
                            Ok(Ok(c)) => vec![c],
                            Ok(Err(e)) => {
                                errors.push(format!("{}: {e}", n.shown));
                                vec![]
                            }
                            Err(_) => {
                                errors.push(format!("{}: the sentinels did not answer", n.shown));
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
                    match tokio::time::timeout(self.op_timeout * 4, scan).await {
                        Ok(Ok(found)) => {
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
                        Ok(Err(e)) => errors.push(format!("{}: SCAN: {e}", n.shown)),
                        Err(_) => errors.push(format!(
                            "{}: SCAN: no answer within {}",
                            n.shown,
                            crate::status::human_duration(self.op_timeout * 4)
                        )),
                    }
                }
            }
            // Redlock: a lock is held only on a majority, so a majority of
            // answers lists every lock; one server (or cluster node) must answer.
            if self.redlock() {
                need = self.quorum;
            }
            if answered < need {
                return Err(unavailable(format!(
                    "cannot list the locks in namespace {namespace:?}: {}",
                    errors.join("; ")
                )));
            }
            names.sort();
        }
        let mut out = Vec::new();
        for name in names {
            let k = keys(namespace, &name);
            let results = self
                .everywhere(
                    &Script::new(INSPECT),
                    &[&k.main, &k.sem, &k.waiters, &k.shared],
                    &[],
                    self.op_timeout,
                )
                .await;
            // A holder counts where a majority of servers agree on it.
            let mut seen: Vec<(String, Holder, usize)> = Vec::new();
            let mut answered = 0;
            let mut waiters = 0u64;
            for r in results.iter().flatten() {
                answered += 1;
                let s = strings(r);
                waiters = waiters.max(s.get(1).and_then(|w| w.parse().ok()).unwrap_or(0));
                for (id, h) in holders_from(&s[2.min(s.len())..]) {
                    match seen.iter_mut().find(|(i, _, _)| *i == id) {
                        Some(e) => e.2 += 1,
                        None => seen.push((id, h, 1)),
                    }
                }
            }
            if answered == 0 {
                let errors: Vec<String> = results.into_iter().filter_map(|r| r.err()).collect();
                return Err(self.too_few(&errors));
            }
            let holders: Vec<Holder> = seen
                .into_iter()
                .filter(|(_, _, c)| *c >= self.quorum)
                .map(|(_, h, _)| h)
                .collect();
            out.push(KeyStatus {
                key: name,
                // Readers are not slots of a limit.
                limit: holders.iter().filter(|h| !h.shared).count().max(1) as u32,
                holders,
                waiters: Some(waiters),
                queue: vec![],
                unreadable: None,
            });
        }
        if keys_in.is_empty() {
            out.retain(|k| !k.holders.is_empty());
        }
        Ok(out)
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

/// Holders from a list of (value, ms left, mode) triples; the mode is `s`
/// for a shared holder, `x` for any other.
pub(super) fn holders_from(triples: &[String]) -> Vec<(String, Holder)> {
    let now = SystemTime::now();
    triples
        .chunks(3)
        .filter(|c| c.len() == 3)
        .map(|c| {
            let (id, mut h) = parse_holder(&c[0], c[1].parse().unwrap_or(-1), now);
            h.shared = c[2] == "s";
            h.entry = id.clone();
            (id.unwrap_or_else(|| format!("foreign:{}", c[0])), h)
        })
        .collect()
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
