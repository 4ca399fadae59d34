//! The requests' builders, in the shape of the `etcd-client` crate's
//! (`GetOptions`, `PutOptions`, `Compare`, `Txn`, ...): each wraps the
//! generated request message that [`super::Client`] sends.

use super::pb;
use super::{CompareOp, SortOrder, SortTarget};

/// The end of the range of keys that start with `key` (etcd's
/// `GetPrefixRangeEnd`): `key` with its last byte below 0xff raised by one.
pub(super) fn prefix_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff (or no key): to the end of the keyspace.
    vec![0]
}

#[derive(Debug, Clone, Default)]
pub struct GetOptions {
    pub(super) req: pb::RangeRequest,
    pub(super) prefix: bool,
}

impl GetOptions {
    pub fn new() -> GetOptions {
        GetOptions::default()
    }

    /// Every key that starts with the key asked for.
    pub fn with_prefix(mut self) -> Self {
        self.prefix = true;
        self
    }

    pub fn with_sort(mut self, target: SortTarget, order: SortOrder) -> Self {
        self.req.set_sort_target(target);
        self.req.set_sort_order(order);
        self
    }
}

#[derive(Debug, Clone, Default)]
pub struct PutOptions(pub(super) pb::PutRequest);

impl PutOptions {
    pub fn new() -> PutOptions {
        PutOptions::default()
    }

    pub fn with_lease(mut self, lease: i64) -> Self {
        self.0.lease = lease;
        self
    }
}

#[derive(Debug, Clone)]
pub struct Compare(pub(super) pb::Compare);

impl Compare {
    pub fn create_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: i64) -> Compare {
        let mut c = pb::Compare {
            key: key.into(),
            target_union: Some(pb::compare::TargetUnion::CreateRevision(revision)),
            ..Default::default()
        };
        c.set_result(op);
        c.set_target(pb::compare::CompareTarget::Create);
        Compare(c)
    }

    pub fn mod_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: i64) -> Compare {
        let mut c = pb::Compare {
            key: key.into(),
            target_union: Some(pb::compare::TargetUnion::ModRevision(revision)),
            ..Default::default()
        };
        c.set_result(op);
        c.set_target(pb::compare::CompareTarget::Mod);
        Compare(c)
    }
}

#[derive(Debug, Clone)]
pub struct TxnOp(pub(super) pb::RequestOp);

impl TxnOp {
    pub fn put(
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        options: Option<PutOptions>,
    ) -> TxnOp {
        let put = pb::PutRequest {
            key: key.into(),
            value: value.into(),
            ..options.unwrap_or_default().0
        };
        TxnOp(pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(put)),
        })
    }

    /// A read in the transaction, which sees the transaction's own writes
    /// before it.
    pub fn get(key: impl Into<Vec<u8>>, options: Option<GetOptions>) -> TxnOp {
        let o = options.unwrap_or_default();
        let mut r = o.req;
        r.key = key.into();
        if o.prefix {
            r.range_end = prefix_end(&r.key);
        }
        TxnOp(pb::RequestOp {
            request: Some(pb::request_op::Request::RequestRange(r)),
        })
    }

    pub fn delete(key: impl Into<Vec<u8>>) -> TxnOp {
        let del = pb::DeleteRangeRequest {
            key: key.into(),
            ..Default::default()
        };
        TxnOp(pb::RequestOp {
            request: Some(pb::request_op::Request::RequestDeleteRange(del)),
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct Txn(pub(super) pb::TxnRequest);

impl Txn {
    pub fn new() -> Txn {
        Txn::default()
    }

    pub fn when(mut self, compares: impl Into<Vec<Compare>>) -> Self {
        self.0.compare = compares.into().into_iter().map(|c| c.0).collect();
        self
    }

    pub fn and_then(mut self, ops: impl Into<Vec<TxnOp>>) -> Self {
        self.0.success = ops.into().into_iter().map(|o| o.0).collect();
        self
    }
}

#[derive(Debug, Clone, Default)]
pub struct WatchOptions(pub(super) pb::WatchCreateRequest);

impl WatchOptions {
    pub fn new() -> WatchOptions {
        WatchOptions::default()
    }

    pub fn with_start_revision(mut self, revision: i64) -> Self {
        self.0.start_revision = revision;
        self
    }
}
