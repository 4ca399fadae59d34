//! `dlock doctor` for Redis and Redlock: what makes a Redis lock unsafe.
//!
//! - No persistence (`appendonly no`): a restart comes back empty, so a
//!   held lock is forgotten and the fencing counter starts again at zero.
//! - `appendfsync` other than `always`: a crash loses the last writes, which
//!   can be the lock just taken. For Redlock this breaks the majority
//!   argument (Kleppmann's and antirez's analyses agree on that much).
//! - An eviction policy with a memory limit: lock keys (which carry a TTL)
//!   can be evicted under memory pressure, and then anyone can take them.
//! - Redlock servers sharing a host, or the same server listed twice: one
//!   failure takes out several votes, so a majority is not independent.
//! - A Redlock member that does not answer.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use redis::AsyncConnectionConfig;
use redis::aio::ConnectionLike;

use super::{Conn, Node, RedisBackend};
use crate::backend::probe::{Check, Level};

/// What one server said about itself.
struct Facts {
    config: BTreeMap<String, String>,
    run_id: Option<String>,
}

/// Each server behind a node, by name: the node itself, or for a cluster
/// every node listed in the URL, asked directly (a cluster connection would
/// route `INFO` to all primaries and `CONFIG GET` to a random one).
async fn servers(n: &Node, timeout: Duration) -> Vec<(String, Result<Facts, String>)> {
    match &n.conn {
        Conn::Cluster(..) => {
            let mut out = Vec::new();
            for client in &n.scan {
                let name = format!("{} node {}", n.shown, client.get_connection_info().addr());
                let cfg = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout));
                let conn = tokio::time::timeout(
                    timeout,
                    client.get_multiplexed_async_connection_with_config(&cfg),
                )
                .await;
                let f = match conn {
                    Ok(Ok(c)) => facts(c, timeout).await,
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {timeout:?}")),
                };
                out.push((name, f));
            }
            out
        }
        _ => {
            vec![(n.shown.clone(), facts(n.conn.clone(), timeout).await)]
        }
    }
}

async fn facts<C: ConnectionLike + Send>(mut c: C, timeout: Duration) -> Result<Facts, String> {
    let info = tokio::time::timeout(
        timeout,
        redis::cmd("INFO")
            .arg("server")
            .query_async::<String>(&mut c),
    )
    .await
    .map_err(|_| format!("no answer within {timeout:?}"))?
    .map_err(|e| e.to_string())?;
    let run_id = info
        .lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(|s| s.trim().to_string());
    let mut config = BTreeMap::new();
    for name in ["appendonly", "appendfsync", "maxmemory", "maxmemory-policy"] {
        // CONFIG may be renamed or disabled (managed services): then the
        // setting stays unknown rather than failing the whole check.
        let r = tokio::time::timeout(
            timeout,
            redis::cmd("CONFIG")
                .arg("GET")
                .arg(name)
                .query_async::<Vec<String>>(&mut c),
        )
        .await;
        if let Ok(Ok(v)) = r
            && v.len() >= 2
        {
            config.insert(v[0].clone(), v[1].clone());
        }
    }
    Ok(Facts { config, run_id })
}

/// The host part of a (redacted) Redis URL.
fn host_port(shown: &str) -> Option<(String, u16)> {
    let rest = shown.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let hp = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match hp.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p.parse().ok()?),
        _ => (hp, 6379),
    };
    Some((host.trim_matches(['[', ']']).to_string(), port))
}

/// The machine an address belongs to, for "sharing a host": every loopback
/// address is this machine.
fn machine(ip: IpAddr) -> String {
    if ip.is_loopback() {
        "this machine (loopback)".to_string()
    } else {
        ip.to_string()
    }
}

impl RedisBackend {
    pub(super) async fn diagnose(&self, timeout: Duration) -> Vec<Check> {
        let redlock = self.redlock();
        let mut out = Vec::new();
        let mut answered = 0;
        let mut by_run_id: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let all =
            futures_util::future::join_all(self.nodes.iter().map(|n| servers(n, timeout))).await;
        for (n, found) in self.nodes.iter().zip(all) {
            let mut node_ok = true;
            for (name, f) in found {
                let f = match f {
                    Ok(f) => f,
                    Err(e) => {
                        node_ok = false;
                        out.push(
                        Check::new(Level::Fail, "member", format!("{name} does not answer: {e}"))
                            .fix(if redlock {
                                format!(
                                    "bring it back: Redlock needs {} of {} servers, and every one down is one fault less it survives",
                                    self.quorum,
                                    self.nodes.len()
                                )
                            } else {
                                "check that the server runs and this host may reach it".to_string()
                            }),
                    );
                        continue;
                    }
                };
                if let Some(id) = &f.run_id {
                    by_run_id
                        .entry(id.clone())
                        .or_default()
                        .push(n.shown.clone());
                }
                out.extend(judge_config(&name, &f.config, redlock));
            }
            if node_ok {
                answered += 1;
            }
        }
        if redlock {
            out.push(if answered == self.nodes.len() {
                Check::ok(
                    "members",
                    format!(
                        "all {} servers answer (a majority is {})",
                        answered, self.quorum
                    ),
                )
            } else {
                Check::new(
                    if answered >= self.quorum {
                        Level::Warn
                    } else {
                        Level::Fail
                    },
                    "members",
                    format!(
                        "{answered} of {} servers answer; a lock needs {}",
                        self.nodes.len(),
                        self.quorum
                    ),
                )
            });
            for (id, shown) in &by_run_id {
                if shown.len() > 1 {
                    out.push(
                        Check::new(
                            Level::Fail,
                            "independence",
                            format!(
                                "{} are the same Redis server (run_id {id}): it votes {} times",
                                shown.join(" and "),
                                shown.len()
                            ),
                        )
                        .fix("list each server once; Redlock needs independent servers"),
                    );
                }
            }
            out.extend(self.shared_hosts(timeout).await);
        }
        out
    }

    /// Redlock servers on one machine fail together.
    async fn shared_hosts(&self, timeout: Duration) -> Vec<Check> {
        let mut by_machine: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for n in &self.nodes {
            let Some((host, port)) = host_port(&n.shown) else {
                continue;
            };
            let ips = match host.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => {
                    tokio::time::timeout(timeout, tokio::net::lookup_host((host.as_str(), port)))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .map(|a| a.map(|s| s.ip()).collect())
                        .unwrap_or_default()
                }
            };
            if let Some(ip) = ips.first() {
                by_machine.entry(machine(*ip)).or_default().push(&n.shown);
            }
        }
        let shared: Vec<Check> = by_machine
            .iter()
            .filter(|(_, v)| v.len() > 1)
            .map(|(m, v)| {
                Check::new(
                    Level::Fail,
                    "independence",
                    format!(
                        "{} servers share one host, {m}: {}; losing that host loses {} votes at once",
                        v.len(),
                        v.join(", "),
                        v.len()
                    ),
                )
                .fix("run each Redlock server on its own machine (and power, network, and ideally zone)")
            })
            .collect();
        if shared.is_empty() {
            vec![Check::ok(
                "independence",
                "every server is on a host of its own",
            )]
        } else {
            shared
        }
    }
}

/// Persistence and eviction settings of one server.
fn judge_config(shown: &str, c: &BTreeMap<String, String>, redlock: bool) -> Vec<Check> {
    let mut out = Vec::new();
    match (c.get("appendonly").map(String::as_str), c.get("appendfsync").map(String::as_str)) {
        (None, _) => out.push(Check::new(
            Level::Warn,
            "persistence",
            format!("{shown}: CONFIG GET is not allowed, so its persistence is unknown"),
        ).fix("check by hand that appendonly is yes and appendfsync is always")),
        (Some("no"), _) => out.push(
            Check::new(
                Level::Fail,
                "persistence",
                format!("{shown} has appendonly no: a restart comes back empty, forgetting every held lock and resetting the fencing counter, so a second holder can get the lock and an older token"),
            )
            .fix("CONFIG SET appendonly yes; CONFIG SET appendfsync always; CONFIG REWRITE (or set them in redis.conf)"),
        ),
        (Some(_), Some("always")) => out.push(Check::ok(
            "persistence",
            format!("{shown} has appendonly yes, appendfsync always"),
        )),
        (Some(_), fsync) => out.push(
            Check::new(
                if redlock { Level::Fail } else { Level::Warn },
                "persistence",
                format!(
                    "{shown} has appendfsync {}: a crash can lose the last writes, a lock just taken among them{}",
                    fsync.unwrap_or("unknown"),
                    if redlock { ", and a restarted server then votes for a second holder" } else { "" }
                ),
            )
            .fix("CONFIG SET appendfsync always; CONFIG REWRITE (or keep a crashed server down for one TTL before it rejoins)"),
        ),
    }
    let limit = c.get("maxmemory").and_then(|m| m.parse::<u64>().ok());
    match (limit, c.get("maxmemory-policy").map(String::as_str)) {
        (Some(m), Some(p)) if m > 0 && p != "noeviction" => out.push(
            Check::new(
                Level::Fail,
                "eviction",
                format!("{shown} has maxmemory {m} with policy {p}: under memory pressure it may evict a held lock, and anyone can then take it"),
            )
            .fix("CONFIG SET maxmemory-policy noeviction, or keep locks on a Redis of their own without a memory limit"),
        ),
        (Some(_), Some(p)) => out.push(Check::ok(
            "eviction",
            format!("{shown} never evicts lock keys (maxmemory-policy {p} or no memory limit)"),
        )),
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_urls() {
        assert_eq!(
            host_port("redis://127.0.0.1:7000/2"),
            Some(("127.0.0.1".into(), 7000))
        );
        assert_eq!(
            host_port("redis://u:***@cache.example"),
            Some(("cache.example".into(), 6379))
        );
        assert_eq!(host_port("redis://[::1]:6380"), Some(("::1".into(), 6380)));
    }

    #[test]
    fn settings_are_judged() {
        let cfg = |a: &str, f: &str, m: &str, p: &str| {
            [
                ("appendonly", a),
                ("appendfsync", f),
                ("maxmemory", m),
                ("maxmemory-policy", p),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>()
        };
        let worst = |c: &BTreeMap<String, String>, r| {
            judge_config("s", c, r)
                .iter()
                .map(|c| c.level)
                .max()
                .unwrap()
        };
        assert_eq!(
            worst(&cfg("yes", "always", "0", "noeviction"), true),
            Level::Ok
        );
        assert_eq!(
            worst(&cfg("no", "always", "0", "noeviction"), false),
            Level::Fail
        );
        assert_eq!(
            worst(&cfg("yes", "everysec", "0", "noeviction"), false),
            Level::Warn
        );
        assert_eq!(
            worst(&cfg("yes", "everysec", "0", "noeviction"), true),
            Level::Fail
        );
        assert_eq!(
            worst(&cfg("yes", "always", "100mb", "allkeys-lru"), false),
            Level::Ok
        );
        assert_eq!(
            worst(&cfg("yes", "always", "104857600", "volatile-ttl"), false),
            Level::Fail
        );
    }
}
