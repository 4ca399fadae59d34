//! The backend conformance suite, run against every backend this build has.
//! Each backend's tests start their own real server (SQLite needs none).

mod common;

use common::suite::conformance;

conformance!(sqlite, Env::sqlite());
