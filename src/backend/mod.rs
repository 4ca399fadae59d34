//! The lock services, behind one contract.
//!
//! - [`contract`]: what a lease, a holder and a key's state are, and the
//!   traits every backend implements: a backend knows how to *try* to take
//!   one key (`try_acquire`), how to wait cheaply until trying again is
//!   worthwhile (`wait_change`), and how to renew, release and inspect
//!   leases; queue-based services (ZooKeeper, etcd) wait in line instead.
//! - [`registry`]: which service a URL names, and connecting to it.
//! - The engine, written once: [`kit`] (bounded calls, retries, the
//!   admission rule, the holder record, the polling loop), [`queue`] (the
//!   queue wait), [`waiting`] (waiter entries), [`typed`] (error typing).
//! - One module (or folder) per service; each networked one is built
//!   only with its cargo feature (SQLite always is).

pub mod contract;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod kit;
pub mod memory;
pub mod probe;
pub mod queue;
#[cfg(feature = "redis")]
pub mod redis;
pub mod registry;
#[cfg(feature = "s3")]
pub mod s3;
pub mod sql;
pub mod typed;
pub mod waiting;
#[cfg(feature = "zookeeper")]
pub mod zk;

pub use contract::*;
pub use registry::{connect, redact_url};
pub use waiting::Waiting;
