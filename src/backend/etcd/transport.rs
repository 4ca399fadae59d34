//! The HTTP/2 connection the etcd client's gRPC calls travel on: one
//! connection to one member at a time, made on first use and made again,
//! to the next member that answers, when it breaks or when the caller
//! leaves a member that does not answer ([`Transport::leave`]).
//!
//! Our own rather than tonic's `transport` channel, which brings a pool, a
//! balancer, request buffers and a DNS resolver that dlock's short-lived
//! process does not use (a smaller binary and a shorter build). Every call is
//! bounded by the caller (`etcd.rs`), so there is no timeout here but the
//! connection's.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::body::Body;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One member: where to connect, and the `:scheme` and `:authority` of the
/// requests sent to it.
#[derive(Debug, Clone)]
struct Member {
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
}

#[derive(Clone)]
pub struct Transport(Arc<Inner>);

struct Inner {
    members: Vec<Member>,
    /// For `https://` members.
    tls: Option<tokio_rustls::TlsConnector>,
    connect_timeout: Option<Duration>,
    /// The member we are connected to (or try first), and the connection.
    conn: tokio::sync::Mutex<(usize, Option<SendRequest<Body>>)>,
}

impl Transport {
    /// A transport over `urls` (`http://host:port` or `https://host:port`);
    /// it connects on the first request. `tls` verifies `https` members.
    pub fn new(
        urls: &[&str],
        tls: Option<Arc<rustls::ClientConfig>>,
        connect_timeout: Option<Duration>,
    ) -> Result<Transport, String> {
        let mut members = Vec::new();
        for url in urls {
            let uri: http::Uri = url
                .parse()
                .map_err(|e| format!("bad etcd endpoint {url}: {e}"))?;
            let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
                return Err(format!(
                    "bad etcd endpoint {url}: expected http(s)://HOST:PORT"
                ));
            };
            // etcd's client port when none is given, as etcdctl does.
            let authority = match authority.port() {
                Some(_) => authority.clone(),
                None => format!("{authority}:2379")
                    .parse()
                    .map_err(|e| format!("bad etcd endpoint {url}: {e}"))?,
            };
            members.push(Member {
                scheme: scheme.clone(),
                authority,
            });
        }
        if members.is_empty() {
            return Err("no etcd endpoint".into());
        }
        Ok(Transport(Arc::new(Inner {
            members,
            tls: tls.map(tokio_rustls::TlsConnector::from),
            connect_timeout,
            conn: tokio::sync::Mutex::new((0, None)),
        })))
    }

    /// How many members it knows.
    pub fn members(&self) -> usize {
        self.0.members.len()
    }

    /// The member in use (or to be tried first).
    pub async fn member(&self) -> usize {
        self.0.conn.lock().await.0
    }

    /// Member `i` did not answer (or said it cannot serve now): if it is
    /// still the one in use, leave it, and make the next request to the
    /// next member (then the others in turn).
    pub async fn leave(&self, i: usize) {
        let mut conn = self.0.conn.lock().await;
        if conn.0 == i && self.0.members.len() > 1 {
            tracing::debug!(
                member = %self.0.members[i].authority,
                "etcd member left for the next one"
            );
            *conn = ((i + 1) % self.0.members.len(), None);
        }
    }
}

/// The rustls configuration for `etcds://`: the system's roots, or the CA
/// file in `SSL_CERT_FILE` (read by `rustls-native-certs`), and HTTP/2.
pub fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A certificate rustls cannot use is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

impl Inner {
    /// The live connection, or a new one: to the member we used last, then
    /// to each of the others in turn.
    async fn sender(&self) -> Result<(usize, SendRequest<Body>), tonic::Status> {
        let mut conn = self.conn.lock().await;
        let start = match &*conn {
            (i, Some(s)) if !s.is_closed() => return Ok((*i, s.clone())),
            (i, _) => *i,
        };
        let mut last = String::new();
        for k in 0..self.members.len() {
            let i = (start + k) % self.members.len();
            match self.connect(&self.members[i]).await {
                Ok(s) => {
                    *conn = (i, Some(s.clone()));
                    return Ok((i, s));
                }
                Err(e) => last = e,
            }
        }
        Err(tonic::Status::unavailable(last))
    }

    async fn connect(&self, m: &Member) -> Result<SendRequest<Body>, String> {
        let addr = m.authority.as_str();
        let tcp = async {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
            let _ = tcp.set_nodelay(true);
            Ok::<_, String>(tcp)
        };
        let tcp = match self.connect_timeout {
            Some(d) => tokio::time::timeout(d, tcp)
                .await
                .map_err(|_| format!("cannot connect to {addr}: no answer within {d:?}"))??,
            None => tcp.await?,
        };
        if m.scheme == http::uri::Scheme::HTTPS {
            let tls = self
                .tls
                .as_ref()
                .ok_or_else(|| format!("{addr}: https without a TLS set-up"))?;
            let host = m
                .authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| format!("{addr}: {e}"))?;
            let io = tls
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {addr}: {e}"))?;
            handshake(addr, io).await
        } else {
            handshake(addr, tcp).await
        }
    }
}

async fn handshake<T>(addr: &str, io: T) -> Result<SendRequest<Body>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP/2 with {addr}: {e}"))?;
    // Drive the connection until it ends; `SendRequest::is_closed` says so.
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("etcd connection ended: {e}");
        }
    });
    Ok(send)
}

impl tower_service::Service<http::Request<Body>> for Transport {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Connecting and waiting for the connection happen in `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move {
            let (i, mut send) = inner.sender().await?;
            let m = &inner.members[i];
            let mut parts = req.uri().clone().into_parts();
            parts.scheme = Some(m.scheme.clone());
            parts.authority = Some(m.authority.clone());
            *req.uri_mut() = http::Uri::from_parts(parts)?;
            let unavailable =
                |e: hyper::Error| tonic::Status::unavailable(format!("{}: {e}", m.authority));
            send.ready().await.map_err(unavailable)?;
            Ok(send.send_request(req).await.map_err(unavailable)?)
        })
    }
}
