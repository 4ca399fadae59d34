//! The engine: what every adapter uses, written once, by concern.
//!
//! - [`call`]: one bounded call that types its error (outage, full, denied);
//! - [`retry`]: capped jittered backoff, riding out outages and full servers;
//! - [`admission`]: the admission rule by mode and order;
//! - [`line`]: a polling backend's line, and the one ruling on an attempt;
//! - [`record`]: the holder record and the liveness of the process it names;
//! - [`poll`]: the polling engine (try, remove the dead, wait, try again);
//! - [`queued`]: the queue entries a waiter has made, removed on its way out;
//! - [`view`]: a key's state as `status` shows it, from the entries read.
//!
//! Everything is re-exported here, so adapters say `kit::bounded`,
//! `kit::Record`, `kit::admits`.

pub mod admission;
pub mod call;
pub mod line;
pub mod poll;
pub mod queued;
pub mod record;
pub mod retry;
pub mod view;

pub use admission::*;
pub use call::*;
pub use line::{Line, Ruling, Seat};
pub use poll::*;
pub use queued::*;
pub use record::*;
pub use retry::*;
pub use view::{Entry, View, held_only, queue_limit};
