//! SQLite on dlock's own thread.
//!
//! sqlx's SQLite driver runs every statement on a worker thread of its own
//! and hands each one over, and each of its rows back, through channels: a
//! `dlock run` made about ten such round trips and 70-100 context switches
//! for what is, on a local file, a few microseconds of work per statement.
//! Here the connection is opened, and every statement run, on the calling
//! thread through SQLite's C API (the SQLite that sqlx bundles), with the
//! flags and pragmas sqlx would use: no worker thread is started at all.
//! The rows come back as [`AnyRow`]s, as the engine reads every database's
//! rows.
//!
//! The tables are created when a statement first finds one missing, not at
//! every start: a run on an existing database parses no DDL.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libsqlite3_sys as ffi;
use sqlx::any::AnyRow;
use sqlx::error::{DatabaseError, ErrorKind};
use sqlx_core::any::{AnyColumn, AnyTypeInfo, AnyTypeInfoKind, AnyValue, AnyValueKind};
use sqlx_core::ext::ustr::UStr;

use super::{Out, Val};

/// A SQLite connection used directly by the thread that has it.
pub struct Direct {
    db: NonNull<ffi::sqlite3>,
    /// The DDL that creates the tables when a statement finds one missing;
    /// emptied once run.
    schema: &'static str,
    /// The busy handler's state, owned here (`Box::into_raw`); SQLite
    /// holds a pointer to it.
    busy: NonNull<Busy>,
    /// How long a statement waits for a lock another connection holds.
    timeout: Duration,
    /// The WAL's length in pages after this connection's last commit, as
    /// the WAL hook was told it (`Box::into_raw`; SQLite holds a pointer).
    wal: NonNull<c_int>,
}

// SAFETY: the handle is only used through `&mut Direct`, so by one thread at
// a time; it is opened in SQLite's multi-thread mode (`SQLITE_OPEN_NOMUTEX`),
// in which a connection may move between threads as long as no two use it
// at once.
unsafe impl Send for Direct {}

impl Direct {
    /// Open (and create) the database at `path`, then run `pragmas`.
    /// `schema` is run (once) when a statement finds a table missing.
    pub fn open(
        path: &Path,
        pragmas: &str,
        schema: &'static str,
        busy_timeout: Duration,
    ) -> sqlx::Result<Direct> {
        let name = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| sqlx::Error::Protocol("the database path contains a NUL byte".into()))?;
        // sqlx's flags: `file:` URIs as sqlx took them, no mutex of SQLite's
        // own (one thread at a time, see `Send`), a private cache.
        let flags = ffi::SQLITE_OPEN_URI
            | ffi::SQLITE_OPEN_NOMUTEX
            | ffi::SQLITE_OPEN_CREATE
            | ffi::SQLITE_OPEN_READWRITE
            | ffi::SQLITE_OPEN_PRIVATECACHE;
        let mut raw = ptr::null_mut();
        // SAFETY: `name` is NUL-terminated; SQLite writes the new handle
        // (or null, out of memory) into `raw`.
        let rc = unsafe { ffi::sqlite3_open_v2(name.as_ptr(), &mut raw, flags, ptr::null()) };
        let db = NonNull::new(raw).ok_or_else(|| {
            sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::OutOfMemory,
                "SQLite cannot allocate a connection",
            ))
        })?;
        let busy = NonNull::from(Box::leak(Box::new(Busy {
            timeout: busy_timeout.min(IN_HANDLER),
            since: None,
        })));
        let wal = NonNull::from(Box::leak(Box::new(0)));
        // From here `Drop` closes the handle, even if it failed to open.
        let mut d = Direct {
            db,
            schema,
            busy,
            timeout: busy_timeout,
            wal,
        };
        d.check(rc)?;
        // SAFETY: `db` is open and ours; `busy` outlives the handler, which
        // `Drop` removes before freeing it.
        unsafe {
            ffi::sqlite3_extended_result_codes(db.as_ptr(), 1);
            ffi::sqlite3_busy_handler(db.as_ptr(), Some(busy_handler), busy.as_ptr().cast());
        }
        d.exec(pragmas)?;
        // After the pragmas: this hook replaces SQLite's automatic
        // checkpoint (`wal_autocheckpoint` is that same hook). SAFETY: as
        // for `busy`.
        unsafe { ffi::sqlite3_wal_hook(db.as_ptr(), Some(wal_hook), wal.as_ptr().cast()) };
        Ok(d)
    }

    /// Checkpoint the WAL if it has grown to [`CHECKPOINT_AT`] pages since
    /// the last one (its fsyncs, a few milliseconds on a VM's disk).
    /// SQLite would do it in whichever commit crossed the mark, often the
    /// one that takes a key, so that the holder's command started only
    /// after the fsyncs; dlock does it once it has let a key go and woken
    /// the next in line.
    ///
    /// A PASSIVE checkpoint waits for nobody: whatever it cannot copy now,
    /// a later one does. When it copied everything, the WAL is also cut to
    /// nothing if that needs no wait (no other connection reading it): a
    /// process that opens the database alone rebuilds the WAL's index from
    /// the file and counts every page in it as not yet copied, so a WAL
    /// that was only checkpointed, never restarted by a later write of the
    /// same connection, would be checkpointed again by every run.
    pub(super) fn checkpoint_if_due(&mut self) {
        // SAFETY: `wal` is ours, and the hook writes it only inside calls on
        // this connection, which `&mut self` excludes now.
        let frames = unsafe { *self.wal.as_ptr() };
        if frames < CHECKPOINT_AT {
            return;
        }
        let db = self.db.as_ptr();
        let (mut log, mut copied) = (0, 0);
        // SAFETY: `db` is open; the main database; SQLite writes the two
        // counts.
        let rc = unsafe {
            ffi::sqlite3_wal_checkpoint_v2(
                db,
                ptr::null(),
                ffi::SQLITE_CHECKPOINT_PASSIVE,
                &mut log,
                &mut copied,
            )
        };
        if rc != ffi::SQLITE_OK {
            return;
        }
        // SAFETY: as above.
        unsafe { *self.wal.as_ptr() = 0 };
        if log != copied {
            return;
        }
        // Without the busy handler, a TRUNCATE checkpoint that would wait
        // for a reader or a writer gives up at once (SQLITE_BUSY).
        // SAFETY: `db` is open; the handler and its state (still owned by
        // `self`) are put back before returning.
        unsafe {
            ffi::sqlite3_busy_handler(db, None, ptr::null_mut());
            ffi::sqlite3_wal_checkpoint_v2(
                db,
                ptr::null(),
                ffi::SQLITE_CHECKPOINT_TRUNCATE,
                ptr::null_mut(),
                ptr::null_mut(),
            );
            ffi::sqlite3_busy_handler(db, Some(busy_handler), self.busy.as_ptr().cast());
        }
    }

    /// [`Direct::run`], waiting out a lock another connection holds for
    /// longer than the busy handler does (it blocks this thread, and with
    /// it dlock's timers and signals, for at most [`IN_HANDLER`]) until the
    /// busy timeout. A statement refused as busy has done nothing, so it
    /// is simply run again.
    pub(super) async fn run_waiting(&mut self, sql: &str, args: &[Val<'_>]) -> sqlx::Result<Out> {
        let start = Instant::now();
        loop {
            match self.run(sql, args) {
                Err(e) if is_busy(&e) && start.elapsed() < self.timeout => {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                r => return r,
            }
        }
    }

    /// [`Direct::exec`] as [`Direct::run_waiting`] runs statements.
    pub(super) async fn exec_waiting(&mut self, sql: &str) -> sqlx::Result<()> {
        let start = Instant::now();
        loop {
            match self.exec(sql) {
                Err(e) if is_busy(&e) && start.elapsed() < self.timeout => {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                r => return r,
            }
        }
    }

    /// Run one statement with `args` bound to `?1`, `?2`, ... in order:
    /// its rows, and the rows it changed. A missing table is created (once)
    /// and the statement run again.
    pub(super) fn run(&mut self, sql: &str, args: &[Val<'_>]) -> sqlx::Result<Out> {
        match self.run_once(sql, args) {
            Err(e) if !self.schema.is_empty() && no_such_table(&e) => {
                // Kept until it has run: a process creating the tables in
                // its own transaction makes this one wait (and be refused
                // as busy, and run again).
                let schema = self.schema;
                self.exec(schema)?;
                self.schema = "";
                self.run_once(sql, args)
            }
            r => r,
        }
    }

    /// Run statements without parameters or rows (`BEGIN`, DDL).
    pub(super) fn exec(&mut self, sql: &str) -> sqlx::Result<()> {
        let c = CString::new(sql).map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
        // SAFETY: `db` is open; `c` is NUL-terminated; no callback.
        let rc = unsafe {
            ffi::sqlite3_exec(
                self.db.as_ptr(),
                c.as_ptr(),
                None,
                ptr::null_mut(),
                ptr::null_mut(),
            )
        };
        self.check(rc)
    }

    fn check(&self, rc: c_int) -> sqlx::Result<()> {
        if rc == ffi::SQLITE_OK || rc == ffi::SQLITE_DONE || rc == ffi::SQLITE_ROW {
            Ok(())
        } else {
            Err(self.error())
        }
    }

    /// The connection's last error.
    fn error(&self) -> sqlx::Error {
        let db = self.db.as_ptr();
        // SAFETY: `db` is open; the message is a NUL-terminated string
        // SQLite owns until the next call, copied at once.
        let (code, message) = unsafe {
            let msg = ffi::sqlite3_errmsg(db);
            let message = if msg.is_null() {
                String::new()
            } else {
                CStr::from_ptr(msg).to_string_lossy().into_owned()
            };
            (ffi::sqlite3_extended_errcode(db), message)
        };
        sqlx::Error::Database(Box::new(SqliteError { code, message }))
    }

    fn run_once(&mut self, sql: &str, args: &[Val<'_>]) -> sqlx::Result<Out> {
        let db = self.db.as_ptr();
        let mut raw = ptr::null_mut();
        // SAFETY: `db` is open; `sql` is valid for its length.
        let rc = unsafe {
            ffi::sqlite3_prepare_v2(
                db,
                sql.as_ptr().cast::<c_char>(),
                c_int::try_from(sql.len()).unwrap_or(c_int::MAX),
                &mut raw,
                ptr::null_mut(),
            )
        };
        self.check(rc)?;
        let Some(stmt) = NonNull::new(raw) else {
            // Only a comment or white space.
            return Ok(Out::default());
        };
        let stmt = Statement(stmt);
        let s = stmt.0.as_ptr();
        // SAFETY (the block): `s` is a prepared statement of `db`, finalized
        // by `stmt`'s drop; text is bound with SQLITE_TRANSIENT (copied).
        unsafe {
            let count = ffi::sqlite3_bind_parameter_count(s);
            for (i, v) in (1..=count).zip(args) {
                let text = |t: &str| {
                    ffi::sqlite3_bind_text64(
                        s,
                        i,
                        t.as_ptr().cast::<c_char>(),
                        t.len() as u64,
                        ffi::SQLITE_TRANSIENT(),
                        ffi::SQLITE_UTF8 as u8,
                    )
                };
                let rc = match v {
                    Val::Str(t) | Val::Opt(Some(t)) => text(t),
                    Val::Owned(t) => text(t),
                    Val::Opt(None) => ffi::sqlite3_bind_null(s, i),
                    Val::I64(n) => ffi::sqlite3_bind_int64(s, i, *n),
                    Val::I32(n) => ffi::sqlite3_bind_int64(s, i, i64::from(*n)),
                };
                self.check(rc)?;
            }
            let mut out = Out::default();
            let mut names: Option<Columns> = None;
            loop {
                match ffi::sqlite3_step(s) {
                    ffi::SQLITE_ROW => {
                        let (index, cols) = names.get_or_insert_with(|| column_names(s));
                        out.rows.push(row(s, index, cols));
                    }
                    ffi::SQLITE_DONE => break,
                    _ => return Err(self.error()),
                }
            }
            if ffi::sqlite3_stmt_readonly(s) == 0 {
                out.affected = ffi::sqlite3_changes64(db).max(0) as u64;
            }
            Ok(out)
        }
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        // SAFETY: every statement is finalized by now (each call finalizes
        // its own), so the handle closes at once; the busy handler goes with
        // it, before its state is freed.
        unsafe {
            ffi::sqlite3_close(self.db.as_ptr());
            drop(Box::from_raw(self.busy.as_ptr()));
            drop(Box::from_raw(self.wal.as_ptr()));
        }
    }
}

/// A prepared statement, finalized when dropped.
struct Statement(NonNull<ffi::sqlite3_stmt>);

impl Drop for Statement {
    fn drop(&mut self) {
        // SAFETY: prepared by us and finalized only here.
        unsafe { ffi::sqlite3_finalize(self.0.as_ptr()) };
    }
}

/// A statement's result columns: their index by name, and their names in
/// order.
type Columns = (Arc<sqlx_core::HashMap<UStr, usize>>, Vec<UStr>);

/// The result columns of `s`.
///
/// # Safety
/// `s` is a prepared statement.
unsafe fn column_names(s: *mut ffi::sqlite3_stmt) -> Columns {
    // SAFETY: the caller's; names are NUL-terminated strings SQLite owns.
    unsafe {
        let n = ffi::sqlite3_column_count(s);
        let mut index = sqlx_core::HashMap::default();
        let mut cols = Vec::with_capacity(n as usize);
        for i in 0..n {
            let p = ffi::sqlite3_column_name(s, i);
            let name = if p.is_null() {
                UStr::new("")
            } else {
                UStr::new(&CStr::from_ptr(p).to_string_lossy())
            };
            index.insert(name.clone(), i as usize);
            cols.push(name);
        }
        (Arc::new(index), cols)
    }
}

/// The current row of `s` as an [`AnyRow`].
///
/// # Safety
/// `s` has just returned `SQLITE_ROW`.
unsafe fn row(
    s: *mut ffi::sqlite3_stmt,
    index: &Arc<sqlx_core::HashMap<UStr, usize>>,
    names: &[UStr],
) -> AnyRow {
    let mut columns = Vec::with_capacity(names.len());
    let mut values = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let c = i as c_int;
        // SAFETY: the caller's; text and blobs are copied at once.
        let kind = unsafe {
            match ffi::sqlite3_column_type(s, c) {
                ffi::SQLITE_INTEGER => AnyValueKind::BigInt(ffi::sqlite3_column_int64(s, c)),
                ffi::SQLITE_FLOAT => AnyValueKind::Double(ffi::sqlite3_column_double(s, c)),
                ffi::SQLITE_TEXT => {
                    let p = ffi::sqlite3_column_text(s, c);
                    let n = ffi::sqlite3_column_bytes(s, c).max(0) as usize;
                    let bytes = if p.is_null() {
                        &[][..]
                    } else {
                        std::slice::from_raw_parts(p, n)
                    };
                    AnyValueKind::Text(Arc::new(String::from_utf8_lossy(bytes).into_owned()))
                }
                ffi::SQLITE_BLOB => {
                    let p = ffi::sqlite3_column_blob(s, c).cast::<u8>();
                    let n = ffi::sqlite3_column_bytes(s, c).max(0) as usize;
                    let bytes = if p.is_null() {
                        Vec::new()
                    } else {
                        std::slice::from_raw_parts(p, n).to_vec()
                    };
                    AnyValueKind::Blob(Arc::new(bytes))
                }
                _ => AnyValueKind::Null(AnyTypeInfoKind::Null),
            }
        };
        let value = AnyValue { kind };
        columns.push(AnyColumn {
            ordinal: i,
            name: name.clone(),
            type_info: AnyTypeInfo {
                kind: sqlx::Value::type_info(&value).kind,
            },
        });
        values.push(value);
    }
    AnyRow {
        column_names: index.clone(),
        columns,
        values,
    }
}

/// Whether `e` is SQLITE_BUSY or SQLITE_LOCKED (with their extended codes).
fn is_busy(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d)
        if d.code().and_then(|c| c.parse::<i32>().ok()).is_some_and(|c| matches!(c & 0xff, 5 | 6)))
}

/// How long the busy handler waits, on dlock's thread, before the statement
/// is refused as busy and [`Direct::run_waiting`] waits on the runtime.
const IN_HANDLER: Duration = Duration::from_millis(20);

/// The WAL's length in pages at which a connection checkpoints it once it
/// has let a key go ([`Direct::checkpoint_if_due`]). A run writes about 3
/// pages, a waiter's place in line about as many; a process that opens the
/// database alone replays the WAL at about 2 us a page.
const CHECKPOINT_AT: c_int = 64;

/// The WAL's length at which a commit checkpoints it at once, as SQLite's
/// own hook does at 1000: a process that commits often and lets nothing go
/// (`dlock elect` renewing its lease) keeps it bounded.
const CHECKPOINT_NOW: c_int = 512;

/// Told after every commit how many pages the WAL holds: keeps the count
/// for [`Direct::checkpoint_if_due`], and checkpoints at once only past
/// [`CHECKPOINT_NOW`].
unsafe extern "C" fn wal_hook(
    state: *mut c_void,
    db: *mut ffi::sqlite3,
    name: *const c_char,
    frames: c_int,
) -> c_int {
    // SAFETY: `state` is the count that `Direct` registered and owns, only
    // touched during calls on the connection by the thread making them.
    unsafe { *state.cast::<c_int>() = frames };
    if frames >= CHECKPOINT_NOW {
        // SAFETY: `db` and `name` are SQLite's own, valid during the hook
        // (what SQLite's default hook does here).
        let rc = unsafe {
            ffi::sqlite3_wal_checkpoint_v2(
                db,
                name,
                ffi::SQLITE_CHECKPOINT_PASSIVE,
                ptr::null_mut(),
                ptr::null_mut(),
            )
        };
        if rc == ffi::SQLITE_OK {
            // SAFETY: as above.
            unsafe { *state.cast::<c_int>() = 0 };
        }
    }
    ffi::SQLITE_OK
}

/// Whether `e` is SQLite's "no such table" (SQLITE_ERROR at prepare).
fn no_such_table(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.message().starts_with("no such table"))
}

/// The busy handler's state: when the current wait began.
struct Busy {
    timeout: Duration,
    since: Option<Instant>,
}

/// SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25 ms and more
/// between tries: a lock held for the few hundred microseconds of another
/// process's transaction cost a waiter milliseconds. This one tries again
/// after 50 us, doubling to 1.6 ms, for at most [`IN_HANDLER`] since the
/// call first found the database busy.
unsafe extern "C" fn busy_handler(state: *mut c_void, n: c_int) -> c_int {
    // SAFETY: `state` is the `Busy` that `Direct` registered and owns; it is
    // only touched during calls on the connection, by the thread making them.
    let b = unsafe { &mut *state.cast::<Busy>() };
    let now = Instant::now();
    if n == 0 {
        b.since = Some(now);
    }
    let since = *b.since.get_or_insert(now);
    if now.duration_since(since) >= b.timeout {
        return 0;
    }
    let pause = Duration::from_micros(50 << n.clamp(0, 5) as u32);
    std::thread::sleep(pause);
    1
}

/// A SQLite error as sqlx's driver words it: the extended result code and
/// SQLite's message.
#[derive(Debug)]
struct SqliteError {
    code: c_int,
    message: String,
}

impl std::fmt::Display for SqliteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "(code: {}) {}", self.code, self.message)
    }
}

impl std::error::Error for SqliteError {}

impl DatabaseError for SqliteError {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
        Some(self.code.to_string().into())
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> ErrorKind {
        match self.code {
            ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                ErrorKind::UniqueViolation
            }
            ffi::SQLITE_CONSTRAINT_NOTNULL => ErrorKind::NotNullViolation,
            _ => ErrorKind::Other,
        }
    }
}
