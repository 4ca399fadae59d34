//! The lease handle printed by `dlock acquire`: one shell-safe word that
//! carries the namespace, keys, fencing tokens and the secret lease ids.
//!
//! Format: `dlock1.` followed by unpadded URL-safe base64 of a small JSON
//! document. The secret makes it a bearer credential: whoever has the handle
//! can renew or release the lease, nobody else can (short of `--force`).

use std::time::{Duration, Instant};

use anyhow::Result;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::backend::Lease;
use crate::error::usage;

const PREFIX: &str = "dlock1.";

#[derive(Debug, Serialize, Deserialize)]
pub struct Handle {
    pub ns: String,
    pub ttl_ms: u64,
    pub leases: Vec<HandleLease>,
    /// The backend that issued it, password removed (older handles have
    /// none), so one used against another backend can say so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct HandleLease {
    pub key: String,
    pub token: u64,
    pub id: String,
    /// Taken with `--shared` (absent: exclusive).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
}

impl Handle {
    pub fn new(namespace: &str, ttl: Duration, leases: &[Lease]) -> Handle {
        Handle {
            ns: namespace.to_string(),
            ttl_ms: ttl.as_millis() as u64,
            leases: leases
                .iter()
                .map(|l| HandleLease {
                    key: l.key.clone(),
                    token: l.token,
                    id: l.id.clone(),
                    shared: l.shared,
                })
                .collect(),
            backend: None,
        }
    }

    /// Record the issuing backend (shown without its password).
    pub fn issued_by(mut self, backend: String) -> Handle {
        self.backend = Some(backend);
        self
    }

    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("a handle always serializes");
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }

    pub fn decode(s: &str) -> Result<Handle> {
        let bad = || {
            usage(format!(
                "{:?} is not a dlock lease handle (one is printed by `dlock acquire`)",
                shorten(s)
            ))
        };
        let body = s.trim().strip_prefix(PREFIX).ok_or_else(bad)?;
        let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| bad())?;
        let h: Handle = serde_json::from_slice(&bytes).map_err(|_| bad())?;
        if h.leases.is_empty() {
            return Err(bad());
        }
        Ok(h)
    }

    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }

    pub fn leases(&self) -> Vec<Lease> {
        self.leases
            .iter()
            .map(|l| Lease {
                namespace: self.ns.clone(),
                key: l.key.clone(),
                token: l.token,
                id: l.id.clone(),
                ttl: self.ttl(),
                granted_at: Instant::now(),
                shared: l.shared,
                slot: None,
            })
            .collect()
    }
}

fn shorten(s: &str) -> String {
    if s.chars().count() > 40 {
        format!("{}...", s.chars().take(40).collect::<String>())
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_shell_safe() {
        let h = Handle {
            ns: "dlock".into(),
            ttl_ms: 1000,
            leases: vec![HandleLease {
                key: "a b'\"$;".into(),
                token: 7,
                id: "ff".into(),
                shared: false,
            }],
            backend: None,
        };
        let s = h.encode();
        assert!(
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
            "{s}"
        );
        let back = Handle::decode(&s).unwrap();
        assert_eq!(back.leases[0].key, "a b'\"$;");
        assert!(Handle::decode("dlock1.!!!").is_err());
        assert!(Handle::decode("nonsense").is_err());
    }
}
