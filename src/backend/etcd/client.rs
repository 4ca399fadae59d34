//! A thin etcd v3 gRPC client: exactly the calls the etcd backend makes, in
//! the shape of the `etcd-client` crate's API that it used before (so
//! `etcd.rs` reads the same), with `tonic`'s gRPC over our own HTTP/2
//! connection (`transport.rs`, rustls for `etcds://`).
//!
//! The message and client types are generated from etcd's protos
//! (`proto/etcd/`) once and committed in `proto/` next to this file, so a
//! build needs no `protoc`; `tests/etcd_proto.rs` fails when they are stale.
//!
//! With a user and password, the client authenticates when it connects and
//! sends the token with every call; when etcd says the token has expired (or
//! the auth store changed under it), it authenticates again and repeats the
//! call once.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tonic::Request;
use tonic::metadata::{Ascii, MetadataValue};

use super::transport::{self, Transport};

use pb::auth_client::AuthClient;
use pb::cluster_client::ClusterClient;
use pb::kv_client::KvClient;
use pb::lease_client::LeaseClient;
use pb::maintenance_client::MaintenanceClient;
use pb::watch_client::WatchClient;

/// The generated code, kept out of `cargo fmt` and the lints by `include!`.
#[allow(clippy::all, clippy::pedantic, dead_code, missing_docs, rustdoc::all)]
mod generated {
    pub mod authpb {
        include!("proto/authpb.rs");
    }
    pub mod mvccpb {
        include!("proto/mvccpb.rs");
    }
    pub mod etcdserverpb {
        include!("proto/etcdserverpb.rs");
    }
}

use generated::etcdserverpb as pb;
pub use generated::mvccpb::KeyValue;
pub use generated::mvccpb::event::EventType;
pub use pb::compare::CompareResult as CompareOp;
pub use pb::range_request::{SortOrder, SortTarget};
pub use pb::{
    DeleteRangeResponse, LeaseGrantResponse, LeaseKeepAliveResponse, LeaseRevokeResponse,
    LeaseTimeToLiveResponse, MemberListResponse, RangeResponse, ResponseHeader, StatusResponse,
    TxnResponse, WatchResponse,
};

mod ops;
use ops::prefix_end;
pub use ops::{Compare, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};

/// The one header etcd reads the auth token from.
const TOKEN: &str = "token";

#[derive(Debug)]
pub enum Error {
    /// The server (or the connection to it) answered with a gRPC status.
    GRpcStatus(tonic::Status),
    /// A bad endpoint URL or TLS set-up.
    InvalidArgs(String),
    /// The server ended or refused a watch.
    Watch(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::GRpcStatus(s) if s.message().is_empty() => {
                with_causes(f, format!("{:?}", s.code()), s)
            }
            Error::GRpcStatus(s) => with_causes(f, s.message().to_string(), s),
            Error::InvalidArgs(m) | Error::Watch(m) => f.write_str(m),
        }
    }
}

/// `text`, then what the transport under it said (refused, TLS, ...), each
/// cause once: tonic repeats them.
fn with_causes(
    f: &mut std::fmt::Formatter<'_>,
    mut text: String,
    e: &dyn std::error::Error,
) -> std::fmt::Result {
    let mut cause = e.source();
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text = format!("{text}: {c_text}");
        }
        cause = c.source();
    }
    f.write_str(&text)
}

impl std::error::Error for Error {}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Error {
        Error::GRpcStatus(s)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    native_roots: bool,
}

impl TlsOptions {
    pub fn new() -> TlsOptions {
        TlsOptions::default()
    }

    /// Trust the system's roots (or the CA file in `SSL_CERT_FILE`): the
    /// only roots there are.
    pub fn with_native_roots(self) -> TlsOptions {
        TlsOptions { native_roots: true }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    user: Option<(String, String)>,
    tls: Option<TlsOptions>,
    connect_timeout: Option<Duration>,
}

impl ConnectOptions {
    pub fn new() -> ConnectOptions {
        ConnectOptions::default()
    }

    pub fn with_user(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((user.into(), password.into()));
        self
    }

    pub fn with_tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = Some(d);
        self
    }
}

#[derive(Clone)]
pub struct Client {
    kv: KvClient<Transport>,
    watch: WatchClient<Transport>,
    lease: LeaseClient<Transport>,
    cluster: ClusterClient<Transport>,
    maintenance: MaintenanceClient<Transport>,
    auth: AuthClient<Transport>,
    /// The connection under them all, to move to another member.
    channel: Transport,
    user: Option<(String, String)>,
    /// The auth token, shared by every clone, replaced on re-authentication.
    token: Arc<RwLock<Option<MetadataValue<Ascii>>>>,
}

/// Call `$client.$method(message)` with the auth token; if the token has
/// expired, authenticate again and call once more.
macro_rules! call {
    ($self:ident, $client:ident, $method:ident, $msg:expr) => {{
        let msg = $msg;
        let mut again = true;
        loop {
            let req = $self.request(msg.clone());
            match $self.$client.$method(req).await {
                Ok(r) => break Ok(r.into_inner()),
                Err(s) if again && $self.stale_token(&s) => {
                    again = false;
                    $self.refresh_token().await?;
                }
                Err(s) => break Err(Error::GRpcStatus(s)),
            }
        }
    }};
}

impl Client {
    /// A client over `endpoints` (`http://host:port` or `https://...`),
    /// connected to one of them at a time. The connection is made by the
    /// first call (here, if there are credentials: authentication).
    pub async fn connect<E: AsRef<str>, S: AsRef<[E]>>(
        endpoints: S,
        options: Option<ConnectOptions>,
    ) -> Result<Client> {
        let o = options.unwrap_or_default();
        let urls: Vec<&str> = endpoints.as_ref().iter().map(|e| e.as_ref()).collect();
        let tls = match &o.tls {
            Some(t) if t.native_roots => Some(transport::tls_config().map_err(Error::InvalidArgs)?),
            _ => None,
        };
        let channel = Transport::new(&urls, tls, o.connect_timeout).map_err(Error::InvalidArgs)?;
        let c = Client {
            kv: KvClient::new(channel.clone()),
            watch: WatchClient::new(channel.clone()),
            lease: LeaseClient::new(channel.clone()),
            cluster: ClusterClient::new(channel.clone()),
            maintenance: MaintenanceClient::new(channel.clone()),
            auth: AuthClient::new(channel.clone()),
            channel,
            user: o.user,
            token: Arc::default(),
        };
        c.refresh_token().await?;
        Ok(c)
    }

    /// How many members (endpoints) the client knows.
    pub fn members(&self) -> usize {
        self.channel.members()
    }

    /// The member in use (or to be tried first), for [`Client::leave`].
    pub async fn member(&self) -> usize {
        self.channel.member().await
    }

    /// Member `i` did not answer, or cannot serve now (no leader): the
    /// next call goes to the next member, if it is still the one in use.
    pub async fn leave(&self, i: usize) {
        self.channel.leave(i).await;
    }

    /// Authenticate with the user and password, if there are any, and use
    /// the new token from now on.
    pub async fn refresh_token(&self) -> Result<()> {
        let Some((name, password)) = self.user.clone() else {
            return Ok(());
        };
        let r = self
            .auth
            .clone()
            .authenticate(pb::AuthenticateRequest { name, password })
            .await?
            .into_inner();
        let token = r
            .token
            .parse()
            .map_err(|_| Error::InvalidArgs("etcd sent an auth token that is not ASCII".into()))?;
        *self.token.write().unwrap_or_else(|e| e.into_inner()) = Some(token);
        Ok(())
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if let Some(t) = &*self.token.read().unwrap_or_else(|e| e.into_inner()) {
            r.metadata_mut().insert(TOKEN, t.clone());
        }
        r
    }

    /// Whether `s` says our token is no longer good, so that authenticating
    /// again can help (what etcd's Go client checks too).
    fn stale_token(&self, s: &tonic::Status) -> bool {
        self.user.is_some()
            && match s.code() {
                tonic::Code::Unauthenticated => s.message().contains("invalid auth token"),
                tonic::Code::InvalidArgument => {
                    s.message().contains("revision of auth store is old")
                        || s.message().contains("user name is empty")
                }
                _ => false,
            }
    }

    pub async fn get(
        &mut self,
        key: impl Into<Vec<u8>>,
        options: Option<GetOptions>,
    ) -> Result<RangeResponse> {
        let o = options.unwrap_or_default();
        let mut r = o.req;
        r.key = key.into();
        if o.prefix {
            r.range_end = prefix_end(&r.key);
        }
        call!(self, kv, range, r)
    }

    pub async fn delete(
        &mut self,
        key: impl Into<Vec<u8>>,
        _options: Option<()>,
    ) -> Result<DeleteRangeResponse> {
        let r = pb::DeleteRangeRequest {
            key: key.into(),
            ..Default::default()
        };
        call!(self, kv, delete_range, r)
    }

    pub async fn txn(&mut self, txn: Txn) -> Result<TxnResponse> {
        call!(self, kv, txn, txn.0)
    }

    pub async fn lease_grant(
        &mut self,
        ttl: i64,
        _options: Option<()>,
    ) -> Result<LeaseGrantResponse> {
        call!(
            self,
            lease,
            lease_grant,
            pb::LeaseGrantRequest { ttl, id: 0 }
        )
    }

    pub async fn lease_revoke(&mut self, id: i64) -> Result<LeaseRevokeResponse> {
        call!(self, lease, lease_revoke, pb::LeaseRevokeRequest { id })
    }

    pub async fn lease_time_to_live(
        &mut self,
        id: i64,
        _options: Option<()>,
    ) -> Result<LeaseTimeToLiveResponse> {
        let r = pb::LeaseTimeToLiveRequest { id, keys: false };
        call!(self, lease, lease_time_to_live, r)
    }

    /// A keep-alive stream for lease `id`: each `keeper.keep_alive()` asks
    /// for one renewal, and `stream.message()` reads its answer (TTL 0: the
    /// lease is gone). The stream opens with the first request, so a renewal
    /// is one round trip.
    pub async fn lease_keep_alive(
        &mut self,
        id: i64,
    ) -> Result<(LeaseKeeper, LeaseKeepAliveStream)> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let requests =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
            );
        let mut lease = self.lease.clone();
        let req = self.request(requests);
        let opening = Box::pin(async move { lease.lease_keep_alive(req).await });
        Ok((
            LeaseKeeper { id, tx },
            LeaseKeepAliveStream(KeepAlive::Opening(opening)),
        ))
    }

    /// Watch `key` (one key) from the options' start revision. The watch is
    /// created (and confirmed by the server) before this returns.
    pub async fn watch(
        &mut self,
        key: impl Into<Vec<u8>>,
        options: Option<WatchOptions>,
    ) -> Result<WatchStream> {
        let create = pb::WatchCreateRequest {
            key: key.into(),
            ..options.unwrap_or_default().0
        };
        let mut again = true;
        loop {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let first = pb::WatchRequest {
                request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                    create.clone(),
                )),
            };
            tx.send(first)
                .await
                .map_err(|_| Error::Watch("watch request not sent".into()))?;
            let requests = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|r| (r, rx))
            });
            let req = self.request(requests);
            let mut stream = match self.watch.watch(req).await {
                Ok(r) => r.into_inner(),
                Err(s) if again && self.stale_token(&s) => {
                    again = false;
                    self.refresh_token().await?;
                    continue;
                }
                Err(s) => return Err(s.into()),
            };
            let Some(created) = stream.message().await? else {
                return Err(Error::Watch("the server ended the watch".into()));
            };
            if created.canceled {
                // A watch refused for want of a (valid) token.
                if again && self.user.is_some() {
                    again = false;
                    self.refresh_token().await?;
                    continue;
                }
                return Err(Error::Watch(format!(
                    "watch refused: {}",
                    created.cancel_reason
                )));
            }
            return Ok(WatchStream {
                _requests: tx,
                stream,
            });
        }
    }

    pub async fn status(&mut self) -> Result<StatusResponse> {
        call!(self, maintenance, status, pb::StatusRequest {})
    }

    pub async fn member_list(&mut self) -> Result<MemberListResponse> {
        let r = pb::MemberListRequest {};
        call!(self, cluster, member_list, r)
    }
}

pub struct LeaseKeeper {
    id: i64,
    tx: tokio::sync::mpsc::Sender<pb::LeaseKeepAliveRequest>,
}

impl LeaseKeeper {
    /// Ask for one renewal of the lease.
    pub async fn keep_alive(&mut self) -> Result<()> {
        self.tx
            .send(pb::LeaseKeepAliveRequest { id: self.id })
            .await
            .map_err(|_| Error::InvalidArgs("the keep-alive stream has ended".into()))
    }
}

type Opening = std::pin::Pin<
    Box<
        dyn Future<
                Output = std::result::Result<
                    tonic::Response<tonic::Streaming<LeaseKeepAliveResponse>>,
                    tonic::Status,
                >,
            > + Send,
    >,
>;

enum KeepAlive {
    Opening(Opening),
    Open(Box<tonic::Streaming<LeaseKeepAliveResponse>>),
}

pub struct LeaseKeepAliveStream(KeepAlive);

impl LeaseKeepAliveStream {
    /// The answer to the next renewal, `None` when the stream has ended.
    pub async fn message(&mut self) -> Result<Option<LeaseKeepAliveResponse>> {
        if let KeepAlive::Opening(f) = &mut self.0 {
            self.0 = KeepAlive::Open(Box::new(f.await?.into_inner()));
        }
        let KeepAlive::Open(s) = &mut self.0 else {
            unreachable!("opened above")
        };
        Ok(s.message().await?)
    }
}

pub struct WatchStream {
    /// Kept open: the server ends a watch whose request stream has ended.
    _requests: tokio::sync::mpsc::Sender<pb::WatchRequest>,
    stream: tonic::Streaming<WatchResponse>,
}

impl WatchStream {
    pub async fn message(&mut self) -> Result<Option<WatchResponse>> {
        Ok(self.stream.message().await?)
    }
}

// The accessors `etcd.rs` reads the answers with.

impl KeyValue {
    pub fn key(&self) -> &[u8] {
        &self.key
    }
    pub fn value(&self) -> &[u8] {
        &self.value
    }
    pub fn create_revision(&self) -> i64 {
        self.create_revision
    }
    pub fn mod_revision(&self) -> i64 {
        self.mod_revision
    }
    pub fn lease(&self) -> i64 {
        self.lease
    }
}

impl generated::mvccpb::Event {
    pub fn event_type(&self) -> EventType {
        self.r#type()
    }
}

impl ResponseHeader {
    pub fn revision(&self) -> i64 {
        self.revision
    }
}

impl RangeResponse {
    pub fn header(&self) -> Option<&ResponseHeader> {
        self.header.as_ref()
    }
    pub fn kvs(&self) -> &[KeyValue] {
        &self.kvs
    }
}

impl TxnResponse {
    /// Whether the comparisons held (the success branch ran).
    pub fn succeeded(&self) -> bool {
        self.succeeded
    }

    /// The revision after the transaction.
    pub fn revision(&self) -> i64 {
        self.header.as_ref().map_or(0, |h| h.revision)
    }

    /// The rows of the transaction's last read, if it made one.
    pub fn last_range(&self) -> Option<&RangeResponse> {
        self.responses.iter().rev().find_map(|r| match &r.response {
            Some(pb::response_op::Response::ResponseRange(rr)) => Some(rr),
            _ => None,
        })
    }
}

impl LeaseGrantResponse {
    pub fn id(&self) -> i64 {
        self.id
    }
    pub fn ttl(&self) -> i64 {
        self.ttl
    }
}

impl LeaseKeepAliveResponse {
    pub fn ttl(&self) -> i64 {
        self.ttl
    }
}

impl LeaseTimeToLiveResponse {
    pub fn ttl(&self) -> i64 {
        self.ttl
    }
}

impl WatchResponse {
    pub fn events(&self) -> &[generated::mvccpb::Event] {
        &self.events
    }
}

impl StatusResponse {
    pub fn version(&self) -> &str {
        &self.version
    }
    pub fn leader(&self) -> u64 {
        self.leader
    }
}

impl MemberListResponse {
    pub fn members(&self) -> &[pb::Member] {
        &self.members
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_etcds() {
        assert_eq!(prefix_end(b"dlock/job/"), b"dlock/job0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }
}
