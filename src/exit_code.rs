//! The exit codes of the contract, as named constants.
//!
//! They follow `sysexits.h` where a code there fits, so that cron wrappers
//! and CI systems that already know those numbers read dlock correctly.

/// The lock was taken and the command (if any) succeeded.
pub const SUCCESS: i32 = 0;
/// `dlock doctor`: a check failed (or warned, under `--strict`).
pub const CHECK_FAILED: i32 = 1;
/// Usage error: unknown flag, bad duration, bad URL, empty key, `--limit 0`.
pub const USAGE: i32 = 64;
/// The backend could not be reached: refused, timed out, authentication failed.
pub const UNAVAILABLE: i32 = 69;
/// An internal error: a bug in dlock.
pub const SOFTWARE: i32 = 70;
/// The lease was lost (broken, expired, or not renewable) while it was held.
pub const LOST: i32 = 74;
/// The lock was not acquired: busy, or waiting ran out. `-E` overrides it.
pub const BUSY: i32 = 75;
/// The configuration file is missing, unreadable or malformed.
pub const CONFIG: i32 = 78;
/// The command exists but could not be executed.
pub const NOT_EXECUTABLE: i32 = 126;
/// The command was not found.
pub const NOT_FOUND: i32 = 127;
/// Added to a signal number when the child died of that signal.
pub const SIGNAL_BASE: i32 = 128;
