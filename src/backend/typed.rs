//! A decorator that types every backend error at the boundary, as
//! object_store's decorator stores add behaviour once for every store: an
//! error from a backend that carries no [`Error`] of its own (a driver's
//! error passed up with `?`) means the backend is unavailable (exit 69),
//! never that dlock has a bug (70). No caller has to remember to classify.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use async_trait::async_trait;

use super::probe::Check;
use super::{Attempt, Backend, KeyStatus, Lease, LockSpec, Owner, PingInfo, Renewal};
use crate::error::Error;

pub struct Typed(pub Arc<dyn Backend>);

impl Typed {
    fn typed<T>(&self, r: Result<T>) -> Result<T> {
        r.map_err(|e| {
            if e.chain().any(|c| c.downcast_ref::<Error>().is_some()) {
                e
            } else {
                Error::Unavailable(format!("backend {}: {e:#}", self.0.describe())).into()
            }
        })
    }
}

#[async_trait]
impl Backend for Typed {
    fn describe(&self) -> String {
        self.0.describe()
    }

    async fn effective_ttl(&self, ttl: Duration) -> Result<Duration> {
        self.typed(self.0.effective_ttl(ttl).await)
    }

    async fn acquire(
        &self,
        spec: &LockSpec,
        me: &Owner,
        deadline: Option<Instant>,
    ) -> Result<Attempt> {
        if spec.shared && !self.0.capabilities().shares {
            return Err(crate::error::usage(format!(
                "{}: this backend does not take shared locks (--shared)",
                self.0.describe()
            )));
        }
        self.typed(self.0.acquire(spec, me, deadline).await)
    }

    fn capabilities(&self) -> super::Capabilities {
        self.0.capabilities()
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Renewal> {
        self.typed(self.0.renew(lease, ttl).await)
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        self.typed(self.0.release(lease).await)
    }

    async fn release_after(&self, lease: &Lease, remaining: Duration) -> Result<bool> {
        self.typed(self.0.release_after(lease, remaining).await)
    }

    async fn force_release(&self, namespace: &str, key: &str) -> Result<u64> {
        self.typed(self.0.force_release(namespace, key).await)
    }

    async fn status(&self, namespace: &str, keys: &[String]) -> Result<Vec<KeyStatus>> {
        self.typed(self.0.status(namespace, keys).await)
    }

    async fn ping(&self) -> Result<PingInfo> {
        self.typed(self.0.ping().await)
    }

    async fn server_time(&self) -> Result<Option<SystemTime>> {
        self.typed(self.0.server_time().await)
    }

    async fn doctor(&self, ttl: Duration, timeout: Duration) -> Vec<Check> {
        self.0.doctor(ttl, timeout).await
    }

    async fn close(&self) {
        self.0.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{exit_code_of, unavailable, usage};

    struct Raw;

    #[async_trait]
    impl Backend for Raw {
        fn describe(&self) -> String {
            "raw://h".into()
        }
        async fn acquire(&self, _: &LockSpec, _: &Owner, _: Option<Instant>) -> Result<Attempt> {
            Err(anyhow::anyhow!("a driver's own error"))
        }
        async fn renew(&self, _: &Lease, _: Duration) -> Result<Renewal> {
            Err(usage("bad key"))
        }
        async fn release(&self, _: &Lease) -> Result<bool> {
            Err(unavailable("refused"))
        }
        async fn force_release(&self, _: &str, _: &str) -> Result<u64> {
            Ok(1)
        }
        async fn status(&self, _: &str, _: &[String]) -> Result<Vec<KeyStatus>> {
            Ok(vec![])
        }
        async fn ping(&self) -> Result<PingInfo> {
            Err(anyhow::anyhow!("io"))
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn untyped_errors_are_unavailable_and_typed_ones_keep_their_code() {
        let b = Typed(Arc::new(Raw));
        let spec = LockSpec {
            namespace: "n".into(),
            key: "k".into(),
            ttl: Duration::from_secs(1),
            limit: 1,
            shared: false,
        };
        let me = Owner {
            id: "i".into(),
            user: "u".into(),
            host: "h".into(),
            pid: 1,
            host_id: String::new(),
            proc_start: 0,
            kind: super::super::LeaseKind::Run,
            value: None,
        };
        let lease = Lease {
            namespace: "n".into(),
            key: "k".into(),
            token: 1,
            id: "i".into(),
            ttl: Duration::from_secs(1),
            granted_at: Instant::now(),
            shared: false,
            slot: Some(0),
        };
        let e = b.acquire(&spec, &me, None).await.unwrap_err();
        assert_eq!(exit_code_of(&e), 69);
        assert!(e.to_string().contains("raw://h"), "{e}");
        assert_eq!(exit_code_of(&b.ping().await.unwrap_err()), 69);
        assert_eq!(
            exit_code_of(&b.renew(&lease, Duration::from_secs(1)).await.unwrap_err()),
            64
        );
        assert_eq!(exit_code_of(&b.release(&lease).await.unwrap_err()), 69);
        assert_eq!(b.force_release("n", "k").await.unwrap(), 1);
    }
}
