//! A small S3 client: the five requests the lock needs (GET, conditional
//! PUT, DELETE, LIST, HEAD), signed with AWS Signature Version 4, over
//! HTTP/1.1 on hyper (already in the tree for etcd).
//!
//! Our own rather than a crate's (`object_store`): the lock must read the
//! response `Date` (the server's clock, against which expiry is judged),
//! and tell a failed precondition (412), a conflict (409) and throttling
//! (503 SlowDown) apart without a retry layer of its own in between; and
//! it keeps the binary small. Every request is bounded by the caller's
//! timeout (`--connect-timeout`).

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::backend::kit::{self, Kind};

/// What to sign requests with.
#[derive(Clone)]
pub struct Credentials {
    pub key_id: String,
    pub secret: String,
    pub token: Option<String>,
}

// Never printed: a secret has no business in a log line or a panic.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.key_id)
    }
}

/// Where the bucket is.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub https: bool,
    /// `host` or `host:port`, as the `Host` header says it.
    pub authority: String,
    /// Path-style (`/BUCKET/KEY`, S3-compatible stores) rather than
    /// virtual-hosted (`BUCKET.s3.REGION.amazonaws.com/KEY`).
    pub path_style: bool,
}

/// An answer: its status, `ETag`, `Date` and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub etag: Option<String>,
    pub server: Option<String>,
    pub body: Bytes,
}

impl Response {
    /// The S3 error code in an error body (`SlowDown`, `AccessDenied`).
    pub fn code(&self) -> String {
        tag(&String::from_utf8_lossy(&self.body), "Code").unwrap_or_default()
    }

    /// What the store said, for a message: its code and message.
    pub fn said(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        match (tag(&text, "Code"), tag(&text, "Message")) {
            (Some(c), Some(m)) => format!("HTTP {} {c}: {m}", self.status),
            (Some(c), None) => format!("HTTP {} {c}", self.status),
            _ => format!("HTTP {}", self.status),
        }
    }

    /// How an unexpected answer fails: the store said it is busy
    /// (throttling), down (5xx), or refused us (credentials, bucket).
    pub fn kind(&self) -> Kind {
        let code = self.code();
        match self.status {
            429 => Kind::Full,
            503 if code == "SlowDown" || code == "RequestLimitExceeded" => Kind::Full,
            500..=599 => Kind::Outage,
            // 408 RequestTimeout: the request body was slow to arrive.
            408 => Kind::Outage,
            _ if code == "SlowDown" || code == "Throttling" => Kind::Full,
            _ => Kind::Denied,
        }
    }
}

/// The first `<NAME>...</NAME>` in an XML body, unescaped.
pub fn tag(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(unescape(&xml[start..end]))
}

/// Every `<NAME>...</NAME>` in an XML body, unescaped.
pub fn tags(xml: &str, name: &str) -> Vec<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        rest = &rest[i + open.len()..];
        let Some(j) = rest.find(&close) else { break };
        out.push(unescape(&rest[..j]));
        rest = &rest[j + close.len()..];
    }
    out
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// What this process knows of the server's clock: its offset from ours
/// lies in `[lo, hi]` milliseconds. A `Date` is whole seconds, so one
/// answer pins it to a second and a round trip; every answer narrows it.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    lo: i64,
    hi: i64,
    known: bool,
}

impl Clock {
    const UNKNOWN: Clock = Clock {
        lo: 0,
        hi: 0,
        known: false,
    };

    /// Learn from an answer dated `date` (whole seconds), to a request
    /// sent at `sent` and answered at `got` (our clock, ms).
    pub fn learn(&mut self, date_ms: i64, sent: i64, got: i64) {
        let (lo, hi) = (date_ms - got, date_ms + 1000 - sent);
        if !self.known || lo > self.hi || hi < self.lo {
            // First answer, or our clock jumped: start again.
            *self = Clock {
                lo,
                hi,
                known: true,
            };
        } else {
            self.lo = self.lo.max(lo);
            self.hi = self.hi.min(hi);
        }
    }

    /// The server's time now, at the earliest it can be (ms since the
    /// epoch): what an expiry is judged against, so a lease is never
    /// thought over before the server's clock says so.
    pub fn now_lo(&self) -> i64 {
        local_ms() + self.lo
    }

    /// The server's time now, at the latest it can be: what an expiry is
    /// counted from, so a lease never ends earlier on the server than on
    /// its holder's clock.
    pub fn now_hi(&self) -> i64 {
        local_ms() + self.hi
    }

    /// Whether any answer carried a `Date` (else our own clock stands in).
    pub fn known(&self) -> bool {
        self.known
    }

    /// How uncertain the server's time is, in ms.
    pub fn spread(&self) -> i64 {
        self.hi - self.lo
    }
}

pub fn local_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub struct Client {
    pub endpoint: Endpoint,
    pub bucket: String,
    pub region: String,
    creds: Credentials,
    tls: Option<tokio_rustls::TlsConnector>,
    /// Idle connections, reused.
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    pub timeout: Duration,
    pub clock: Mutex<Clock>,
    /// Requests sent, logged at exit (`-vv`: event `s3_requests`).
    pub sent: std::sync::atomic::AtomicU64,
}

/// The rustls configuration for `https` endpoints: the system's roots, or
/// the CA file in `SSL_CERT_FILE`, and HTTP/1.1.
fn tls_config() -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(std::sync::Arc::new(cfg))
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// One request to make.
pub struct Req<'a> {
    pub method: &'static str,
    /// The object key, or "" for the bucket itself.
    pub key: &'a str,
    pub query: Vec<(&'a str, String)>,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl<'a> Req<'a> {
    pub fn new(method: &'static str, key: &'a str) -> Req<'a> {
        Req {
            method,
            key,
            query: Vec::new(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Req<'a> {
        self.headers.push((name, value.into()));
        self
    }
}

impl Client {
    pub fn new(
        endpoint: Endpoint,
        bucket: String,
        region: String,
        creds: Credentials,
        timeout: Duration,
    ) -> Result<Client, String> {
        let tls = if endpoint.https {
            Some(tokio_rustls::TlsConnector::from(tls_config()?))
        } else {
            None
        };
        Ok(Client {
            endpoint,
            bucket,
            region,
            creds,
            tls,
            idle: Mutex::new(Vec::new()),
            timeout,
            clock: Mutex::new(Clock::UNKNOWN),
            sent: Default::default(),
        })
    }

    pub fn clock(&self) -> Clock {
        *self.clock.lock().unwrap()
    }

    fn host(&self) -> String {
        if self.endpoint.path_style {
            self.endpoint.authority.clone()
        } else {
            format!("{}.{}", self.bucket, self.endpoint.authority)
        }
    }

    /// The path of `key` (or of the bucket), each byte encoded as SigV4
    /// wants it (the path as sent is the path as signed).
    fn path(&self, key: &str) -> String {
        let mut p = String::from("/");
        if self.endpoint.path_style {
            p.push_str(&encode(&self.bucket, false));
            if !key.is_empty() {
                p.push('/');
            }
        }
        p.push_str(&encode(key, true));
        p
    }

    /// Send one request and read its whole answer, within the timeout:
    /// an answer of any status is `Ok`; no answer (refused, reset, timed
    /// out) is an outage naming `what`.
    pub async fn send(&self, what: &str, req: Req<'_>) -> anyhow::Result<Response> {
        let service = format!("S3 {}", self.endpoint.authority);
        // Not `kit::bounded`: its time-out reads as a server that never
        // answers, an outage already ridden out for the whole bound. A
        // store that answers one request slowly (a crowd rewriting one hot
        // lock object) is retried for `--connect-timeout` more; a store
        // that never answers is given up on while connecting.
        let Ok(answer) = tokio::time::timeout(self.timeout, self.exchange(req)).await else {
            return Err(kit::typed(
                Kind::Outage,
                format!(
                    "{service}: {what}: no answer in {}",
                    crate::human::human_duration(self.timeout)
                ),
            ));
        };
        answer.map_err(|e| {
            // A certificate we do not trust is a refusal, never retried;
            // anything else on the way (refused, reset) is an outage.
            let kind =
                if e.starts_with("TLS with") && e.to_ascii_lowercase().contains("certificate") {
                    Kind::Denied
                } else {
                    Kind::Outage
                };
            kit::typed(kind, format!("{service}: {what}: {e}"))
        })
    }

    async fn exchange(&self, req: Req<'_>) -> Result<Response, String> {
        self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let host = self.host();
        let path = self.path(req.key);
        let mut query = req.query.clone();
        query.sort();
        let qs = query
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k, false), encode(v, false)))
            .collect::<Vec<_>>()
            .join("&");
        let now = SystemTime::now();
        let amz_date = amz_date(now);
        let payload = hex(&sha256(&req.body));
        // Signed: host and the x-amz-* headers; the conditions (If-Match,
        // If-None-Match) travel unsigned, as the SDKs send them.
        let mut signed: Vec<(String, String)> = vec![
            ("host".into(), host.clone()),
            ("x-amz-content-sha256".into(), payload.clone()),
            ("x-amz-date".into(), amz_date.clone()),
        ];
        if let Some(t) = &self.creds.token {
            signed.push(("x-amz-security-token".into(), t.clone()));
        }
        signed.sort();
        let canonical = format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            req.method,
            path,
            qs,
            signed
                .iter()
                .map(|(k, v)| format!("{k}:{}\n", v.trim()))
                .collect::<String>(),
            signed
                .iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>()
                .join(";"),
            payload
        );
        let day = &amz_date[..8];
        let scope = format!("{day}/{}/s3/aws4_request", self.region);
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex(&sha256(canonical.as_bytes()))
        );
        let mut k = hmac(format!("AWS4{}", self.creds.secret).as_bytes(), day);
        k = hmac(&k, &self.region);
        k = hmac(&k, "s3");
        k = hmac(&k, "aws4_request");
        let signature = hex(&hmac(&k, &to_sign));
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={}, Signature={signature}",
            self.creds.key_id,
            signed
                .iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>()
                .join(";")
        );
        let uri = if qs.is_empty() {
            path
        } else {
            format!("{path}?{qs}")
        };
        let body = Bytes::from(req.body);
        let request = || {
            let mut b = http::Request::builder()
                .method(req.method)
                .uri(uri.as_str())
                .header("authorization", auth.as_str())
                .header("content-length", body.len());
            for (k, v) in &signed {
                b = b.header(k.as_str(), v.as_str());
            }
            for (k, v) in &req.headers {
                b = b.header(*k, v.as_str());
            }
            b.body(Full::new(body.clone()))
                .map_err(|e| format!("bad request: {e}"))
        };
        let (mut conn, reused) = self.conn().await?;
        let mut sent = local_ms();
        let mut t0 = Instant::now();
        let first = match conn.ready().await {
            Ok(()) => conn.send_request(request()?).await,
            Err(e) => Err(e),
        };
        let resp = match first {
            Ok(r) => r,
            // A kept connection the store had closed meanwhile (its idle
            // timeout): the request never reached it; once more, afresh.
            Err(e) if reused && (e.is_canceled() || e.is_closed() || e.is_incomplete_message()) => {
                conn = self.connect().await?;
                sent = local_ms();
                t0 = Instant::now();
                conn.ready().await.map_err(|e| format!("connection: {e}"))?;
                conn.send_request(request()?)
                    .await
                    .map_err(|e| format!("{e}"))?
            }
            Err(e) => return Err(format!("{e}")),
        };
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        let got = sent + t0.elapsed().as_millis() as i64;
        let header = |n: &str| {
            parts
                .headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        if let Some(d) = header("date").as_deref().and_then(parse_http_date) {
            self.clock.lock().unwrap().learn(d, sent, got);
        }
        let keep = !parts
            .headers
            .get("connection")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        if keep && !conn.is_closed() {
            let mut idle = self.idle.lock().unwrap();
            if idle.len() < 4 {
                idle.push(conn);
            }
        }
        Ok(Response {
            status: parts.status.as_u16(),
            etag: header("etag"),
            server: header("server"),
            body,
        })
    }

    /// An idle connection (true), or a new one.
    async fn conn(&self) -> Result<(SendRequest<Full<Bytes>>, bool), String> {
        loop {
            let c = self.idle.lock().unwrap().pop();
            match c {
                Some(c) if !c.is_closed() => return Ok((c, true)),
                Some(_) => continue,
                None => break,
            }
        }
        Ok((self.connect().await?, false))
    }

    /// A new connection.
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let addr = self.host_port();
        let tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match &self.tls {
            Some(tls) => {
                let host = self.host();
                let name = host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h);
                let name = name.trim_start_matches('[').trim_end_matches(']');
                let name = rustls::pki_types::ServerName::try_from(name.to_string())
                    .map_err(|e| format!("{addr}: {e}"))?;
                Box::new(
                    tls.connect(name, tcp)
                        .await
                        .map_err(|e| format!("TLS with {addr}: {e}"))?,
                )
            }
            None => Box::new(tcp),
        };
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP with {addr}: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("S3 connection ended: {e}");
            }
        });
        Ok(send)
    }

    fn host_port(&self) -> String {
        let host = self.host();
        let has_port = match host.rfind(':') {
            Some(i) => !host[i..].contains(']'),
            None => false,
        };
        if has_port {
            host
        } else if self.endpoint.https {
            format!("{host}:443")
        } else {
            format!("{host}:80")
        }
    }
}

/// SigV4's URI encoding: every byte but the unreserved ones (and `/` in
/// a path) as `%XX`.
pub fn encode(s: &str, path: bool) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (path && b == b'/') {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// `%XX` decoded (URL query values).
pub fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::sign(&k, data.as_bytes()).as_ref().to_vec()
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `20261206T134510Z`.
fn amz_date(t: SystemTime) -> String {
    let s = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (y, m, d) = civil_from_days(s.div_euclid(86400));
    let r = s.rem_euclid(86400);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        r / 3600,
        r % 3600 / 60,
        r % 60
    )
}

/// An HTTP date (`Sun, 06 Dec 2026 13:45:10 GMT`) in ms since the epoch.
pub fn parse_http_date(s: &str) -> Option<i64> {
    let f: Vec<&str> = s.split_whitespace().collect();
    if f.len() != 6 {
        return None;
    }
    let d: i64 = f[1].parse().ok()?;
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = months.iter().position(|x| *x == f[2])? as i64 + 1;
    let y: i64 = f[3].parse().ok()?;
    let hms: Vec<i64> = f[4].split(':').filter_map(|x| x.parse().ok()).collect();
    if hms.len() != 3 {
        return None;
    }
    let secs = days_from_civil(y, m, d) * 86400 + hms[0] * 3600 + hms[1] * 60 + hms[2];
    Some(secs * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_encoding() {
        assert_eq!(
            parse_http_date("Sun, 06 Dec 2026 13:45:10 GMT"),
            Some(1_796_564_710_000)
        );
        assert_eq!(
            amz_date(UNIX_EPOCH + Duration::from_secs(1_796_564_710)),
            "20261206T134510Z"
        );
        assert_eq!(encode("a b/c+d~", true), "a%20b/c%2Bd~");
        assert_eq!(encode("a/b", false), "a%2Fb");
        assert_eq!(decode("http%3A%2F%2Fh%3A1"), "http://h:1");
        assert_eq!(
            tag("<E><Code>SlowDown</Code></E>", "Code").unwrap(),
            "SlowDown"
        );
        assert_eq!(tags("<K>a&amp;b</K><K>c</K>", "K"), vec!["a&b", "c"]);
    }

    /// AWS's own example (the SigV4 test suite's `get-vanilla`, for S3's
    /// service name and an empty payload), checked through the parts.
    #[test]
    fn signing_key_chain() {
        let mut k = hmac(b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20150830");
        k = hmac(&k, "us-east-1");
        k = hmac(&k, "iam");
        k = hmac(&k, "aws4_request");
        assert_eq!(
            hex(&k),
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
        );
    }

    #[test]
    fn the_clock_narrows() {
        let mut c = Clock::UNKNOWN;
        // Our clock 10 s behind: Date 10 000 ms ahead, a 2 ms round trip.
        c.learn(10_000, 0, 2);
        assert_eq!((c.lo, c.hi), (9_998, 11_000));
        c.learn(11_000, 600, 602);
        assert_eq!((c.lo, c.hi), (10_398, 11_000));
    }
}
