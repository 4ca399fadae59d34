//! Typed errors at the edges where the exit code is decided.
//!
//! Everything else uses `anyhow` with context; an error ends dlock as
//! [`crate::outcome::Outcome::Error`], whose exit code is that of the first
//! [`Error`] in the chain, or 70 (a bug) if none.

use crate::exit_code;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad flags, durations, URLs, keys or handles.
    #[error("{0}")]
    Usage(String),
    /// The configuration file is missing, unreadable or malformed.
    #[error("{0}")]
    Config(String),
    /// The backend could not be reached, or did not answer in time: an
    /// outage, ridden out while waiting for up to `--connect-timeout`.
    #[error("{0}")]
    Unavailable(String),
    /// The backend refused us for good: authentication or authorisation
    /// failed, or TLS was not trusted. Never retried.
    #[error("{0}")]
    Denied(String),
    /// The backend answered but has no room for another client ("too many
    /// connections"): while waiting this is waited out like a busy lock.
    #[error("{0}")]
    Full(String),
    /// A lease we held (or a handle named) is no longer ours.
    #[error("{0}")]
    Lost(String),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => exit_code::USAGE,
            Error::Config(_) => exit_code::CONFIG,
            Error::Unavailable(_) | Error::Denied(_) | Error::Full(_) => exit_code::UNAVAILABLE,
            Error::Lost(_) => exit_code::LOST,
        }
    }
}

/// How a waiter treats an error from the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// An outage: retry with backoff for up to `--connect-timeout`.
    Outage,
    /// The server is full: wait it out like a busy lock.
    Full,
    /// Give up now.
    Never,
}

/// The first typed [`Error`] in a chain: what kind of failure it is.
pub fn typed(err: &anyhow::Error) -> Option<&Error> {
    err.chain().find_map(|e| e.downcast_ref::<Error>())
}

/// How to treat an error chain: by its first typed [`Error`].
pub fn retry_of(err: &anyhow::Error) -> Retry {
    match typed(err) {
        Some(Error::Unavailable(_)) => Retry::Outage,
        Some(Error::Full(_)) => Retry::Full,
        _ => Retry::Never,
    }
}

/// The exit code for an error chain: the first typed [`Error`] in it, else 70.
pub fn exit_code_of(err: &anyhow::Error) -> i32 {
    typed(err).map_or(exit_code::SOFTWARE, Error::exit_code)
}

pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    Error::Usage(msg.into()).into()
}

pub fn unavailable(msg: impl Into<String>) -> anyhow::Error {
    Error::Unavailable(msg.into()).into()
}

pub fn denied(msg: impl Into<String>) -> anyhow::Error {
    Error::Denied(msg.into()).into()
}

pub fn full(msg: impl Into<String>) -> anyhow::Error {
    Error::Full(msg.into()).into()
}
