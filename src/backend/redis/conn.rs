//! The connections: a plain server, a Sentinel-managed primary (re-resolved
//! after a failover) or a Redis Cluster, each one logical server that the
//! scripts run on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, RedisResult, Value};
use tokio::sync::Mutex;

use super::errors::{call, kind};
use crate::backend::{kit, redact_url};
use crate::error::usage;

pub(super) struct Node {
    pub(super) shown: String,
    pub(super) db: i64,
    pub(super) conn: Conn,
    /// Direct clients to SCAN (every node listed for a cluster).
    pub(super) scan: Vec<redis::Client>,
}

/// One logical Redis server: a plain server, a Sentinel-managed primary
/// (re-resolved after a failover), or a Redis Cluster.
#[derive(Clone)]
pub(super) enum Conn {
    Direct(ConnectionManager, redis::Client),
    Cluster(ClusterConnection, redis::Client),
    Sentinel(Arc<SentinelConn>),
}

pub(super) struct SentinelConn {
    sentinel: Mutex<SentinelClient>,
    current: Mutex<Option<MultiplexedConnection>>,
    timeout: Duration,
}

/// Errors after which the primary may have moved: ask the sentinels again.
fn moved(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.to_string().contains("READONLY")
}

impl SentinelConn {
    async fn conn(&self) -> RedisResult<MultiplexedConnection> {
        let mut cur = self.current.lock().await;
        if let Some(c) = cur.as_ref() {
            return Ok(c.clone());
        }
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let c = self
            .sentinel
            .lock()
            .await
            .get_async_connection_with_config(&cfg)
            .await?;
        *cur = Some(c.clone());
        Ok(c)
    }

    pub(super) async fn client(&self) -> RedisResult<redis::Client> {
        self.sentinel.lock().await.async_get_client().await
    }

    /// Send to the primary; while the primary seems to have moved (a
    /// failover in progress), ask the sentinels again, within the timeout.
    async fn send(&self, req: Req<'_>) -> RedisResult<Resp> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let r = match self.conn().await {
                Ok(mut c) => match req {
                    Req::One(cmd) => c.req_packed_command(cmd).await.map(Resp::One),
                    Req::Many(p, offset, count) => c
                        .req_packed_commands(p, offset, count)
                        .await
                        .map(Resp::Many),
                },
                Err(e) => Err(e),
            };
            match r {
                Err(e) if moved(&e) && Instant::now() + Duration::from_millis(100) < deadline => {
                    *self.current.lock().await = None;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                r => return r,
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Req<'a> {
    One(&'a Cmd),
    Many(&'a Pipeline, usize, usize),
}

enum Resp {
    One(Value),
    Many(Vec<Value>),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Direct(c, _) => c.req_packed_command(cmd),
            Conn::Cluster(c, _) => c.req_packed_command(cmd),
            Conn::Sentinel(s) => Box::pin(async move {
                match s.send(Req::One(cmd)).await? {
                    Resp::One(v) => Ok(v),
                    Resp::Many(_) => unreachable!("one command, one reply"),
                }
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        p: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Direct(c, _) => c.req_packed_commands(p, offset, count),
            Conn::Cluster(c, _) => c.req_packed_commands(p, offset, count),
            Conn::Sentinel(s) => Box::pin(async move {
                match s.send(Req::Many(p, offset, count)).await? {
                    Resp::Many(v) => Ok(v),
                    Resp::One(_) => unreachable!("a pipeline, many replies"),
                }
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Direct(c, _) => c.get_db(),
            Conn::Cluster(c, _) => c.get_db(),
            Conn::Sentinel(_) => 0,
        }
    }
}

impl Conn {
    /// A client to subscribe with. In a cluster, PUBLISH reaches every node.
    pub(super) async fn pubsub_client(&self) -> RedisResult<redis::Client> {
        match self {
            Conn::Direct(_, c) | Conn::Cluster(_, c) => Ok(c.clone()),
            Conn::Sentinel(s) => s.client().await,
        }
    }
}

/// `redis+sentinel://h:p[,h:p]/MASTER[/DB]` and `redis+cluster://h:p[,h:p]`:
/// the hosts of the URL, as plain `redis://` URLs, and the path.
fn hosts_and_path(url: &str) -> (Vec<String>, String) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    let hosts = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("redis://{userinfo}{h}"))
        .collect();
    (hosts, path.to_string())
}

pub(super) fn db_of(url: &str) -> i64 {
    url.split("://")
        .nth(1)
        .and_then(|r| r.split_once('/'))
        .and_then(|(_, p)| p.split(['?', '#']).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

impl Node {
    pub(super) async fn open(url: &str, timeout: Duration) -> Result<Node> {
        let shown = redact_url(url);
        let bad = |e: &dyn std::fmt::Display| {
            usage(format!(
                "bad Redis URL {shown}: {}",
                e.to_string().replace(url, &shown)
            ))
        };
        if let Some(_rest) = url.strip_prefix("redis+sentinel://") {
            let (hosts, path) = hosts_and_path(url);
            let mut parts = path.split('/');
            let master = parts.next().filter(|m| !m.is_empty()).ok_or_else(|| {
                usage(format!(
                    "{shown}: name the master: redis+sentinel://HOST:PORT[,HOST:PORT]/MASTER"
                ))
            })?;
            let db: i64 = parts.next().and_then(|d| d.parse().ok()).unwrap_or(0);
            let node_info = redis::sentinel::SentinelNodeConnectionInfo::default()
                .set_redis_connection_info(redis::RedisConnectionInfo::default().set_db(db));
            let sentinel =
                SentinelClient::build(hosts, master, Some(node_info), SentinelServerType::Master)
                    .map_err(|e| bad(&e))?;
            let conn = Conn::Sentinel(Arc::new(SentinelConn {
                sentinel: Mutex::new(sentinel),
                current: Mutex::new(None),
                timeout,
            }));
            return Ok(Node {
                shown,
                db,
                conn,
                scan: vec![],
            });
        }
        if url.starts_with("redis+cluster://") {
            let (hosts, _) = hosts_and_path(url);
            let scan = hosts
                .iter()
                .map(|h| redis::Client::open(h.as_str()))
                .collect::<RedisResult<Vec<_>>>()
                .map_err(|e| bad(&e))?;
            let client = redis::cluster::ClusterClient::builder(hosts)
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(1)
                .build()
                .map_err(|e| bad(&e))?;
            let conn = call(&shown, "connect", timeout, client.get_async_connection()).await?;
            return Ok(Node {
                shown,
                db: 0,
                conn: Conn::Cluster(conn, scan[0].clone()),
                scan,
            });
        }
        let client = redis::Client::open(url).map_err(|e| bad(&e))?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), cfg)
            .map_err(|e| kit::typed(kind(&e), format!("{shown}: {e}")))?;
        Ok(Node {
            shown,
            db: db_of(url),
            conn: Conn::Direct(conn, client.clone()),
            scan: vec![client],
        })
    }
}
