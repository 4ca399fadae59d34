//! The database file and its `.wait` directory on disk: who may have made
//! them, and with which modes dlock makes them.
//!
//! A lock database shared by several users lives in a directory they can
//! all write (`/shared`, mode 1777; or a group's, mode 2775). dlock then
//! creates the database writable by the same users as that directory
//! (0666, or 0664 with the directory's group), whatever the umask, and
//! SQLite gives its `-wal` and `-shm` files the database's mode. The
//! `.wait` directory it creates beside it is sticky then (1777, 3775), so
//! nobody can replace another user's wake files. Wake files are only
//! `flock`ed, so they are opened read-only and created 0644.
//!
//! What another user may have planted there is refused: a `.wait` that is
//! a symbolic link, or owned by anyone but this user, root or the
//! database's owner, or writable by others without the sticky bit; a
//! database path (or its `-wal`, `-shm` or `-journal`) that is a symbolic
//! link owned by another user, or a database that is not a regular file.
//! Wake files are opened with `O_NOFOLLOW` inside the
//! checked directory, and must be regular files.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::error::denied;

/// The name of user `uid`, for messages.
fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ => format!("uid {uid}"),
    }
}

fn group_name(gid: u32) -> String {
    match nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)) {
        Ok(Some(g)) => g.name,
        _ => format!("gid {gid}"),
    }
}

fn me() -> u32 {
    nix::unistd::geteuid().as_raw()
}

fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn wait_dir_of(db: &Path) -> PathBuf {
    let mut d = db.as_os_str().to_os_string();
    d.push(".wait");
    PathBuf::from(d)
}

/// The group and other write bits (and setgid) of the database's
/// directory: whom the files dlock creates there are for.
fn sharing(db: &Path) -> u32 {
    std::fs::metadata(dir_of(db)).map_or(0, |m| m.mode() & (0o022 | libc::S_ISGID))
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| crate::error::usage(format!("{} contains a NUL byte", p.display())))
}

/// Before SQLite opens `db`: refuse what another user may have planted,
/// create the file with the modes above if it is missing, and say at
/// once what to change when this user may not write it.
pub fn prepare(db: &Path) -> Result<()> {
    let share = sharing(db);
    match std::fs::symlink_metadata(db) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_db(db, share)?,
        Err(_) => {}
        Ok(m) if m.file_type().is_symlink() && m.uid() != me() && m.uid() != 0 => {
            return Err(denied(format!(
                "refusing SQLite database {}: it is a symbolic link owned by {}, who may \
                 have made it to point dlock at another file; remove it, or give the \
                 file's own path",
                db.display(),
                user_name(m.uid())
            )));
        }
        Ok(_) => {}
    }
    let m = match std::fs::metadata(db) {
        Ok(m) => m,
        // SQLite says why, and creates it if it was removed meanwhile.
        Err(_) => return Ok(()),
    };
    if !m.file_type().is_file() {
        return Err(denied(format!(
            "refusing SQLite database {}: it is not a regular file",
            db.display()
        )));
    }
    // SQLite opens its own files beside the database by name, following
    // links: one planted there would have it write elsewhere.
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut side = db.as_os_str().to_os_string();
        side.push(suffix);
        let side = PathBuf::from(side);
        if let Ok(m) = std::fs::symlink_metadata(&side)
            && m.file_type().is_symlink()
            && m.uid() != me()
            && m.uid() != 0
        {
            return Err(denied(format!(
                "refusing SQLite database {}: {} is a symbolic link owned by {}, who may \
                 have made it to have SQLite write elsewhere; remove it",
                db.display(),
                side.display(),
                user_name(m.uid())
            )));
        }
    }
    let c = cstr(db)?;
    // SAFETY: access reads a NUL-terminated path we own.
    if unsafe { libc::access(c.as_ptr(), libc::R_OK | libc::W_OK) } != 0 {
        return Err(denied(format!(
            "cannot write SQLite database {} (mode {:o}, owner {}, group {}): every user \
             of a shared lock database must be able to write it: `chmod 666 {0}`, or \
             `chgrp GROUP {0}; chmod 664 {0}` for a group all of them are in (a database \
             that dlock creates in a directory they can all write gets that mode by itself)",
            db.display(),
            m.mode() & 0o7777,
            user_name(m.uid()),
            group_name(m.gid()),
        )));
    }
    check_wait_dir(db, m.uid())?;
    Ok(())
}

/// A new database file, writable by whoever may write its directory.
fn create_db(db: &Path, share: u32) -> Result<()> {
    let c = cstr(db)?;
    // SAFETY: open with a NUL-terminated path we own.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    };
    if fd < 0 {
        // Someone else made it first (or SQLite will say why not).
        return Ok(());
    }
    // SAFETY: a fresh descriptor, ours alone.
    let f = unsafe { File::from_raw_fd(fd) };
    let mode = 0o644 | (share & 0o022);
    let _ = f.set_permissions(std::fs::Permissions::from_mode(mode));
    Ok(())
}

/// Open the `.wait` directory without following a link, and check
/// who made it: `None` if it does not exist.
fn open_wait_dir(db: &Path) -> Result<Option<OwnedFd>> {
    let dir = wait_dir_of(db);
    let c = cstr(&dir)?;
    // SAFETY: open with a NUL-terminated path we own.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT) => Ok(None),
            Some(libc::ELOOP | libc::ENOTDIR) => Err(denied(format!(
                "refusing {}: it is not a directory (a symbolic link?); another user may \
                 have made it to make dlock create files elsewhere: remove it (dlock makes \
                 it again)",
                dir.display()
            ))),
            _ => Err(denied(format!("cannot open {}: {e}", dir.display()))),
        };
    }
    // SAFETY: a fresh descriptor, ours alone.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Whether the `.wait` directory, if there is one, is safe to create
/// files in: made by this user, root or the database's owner, and not
/// open to others' renames (sticky when others may write it).
fn check_wait_dir(db: &Path, db_owner: u32) -> Result<Option<OwnedFd>> {
    let Some(fd) = open_wait_dir(db)? else {
        return Ok(None);
    };
    let dir = wait_dir_of(db);
    let m = File::from(fd.try_clone()?).metadata()?;
    let owner = m.uid();
    if owner != me() && owner != 0 && owner != db_owner {
        return Err(denied(format!(
            "refusing {}: it is owned by {}, not by you, root or the database's owner ({}); \
             whoever owns it can make dlock create files wherever they like: remove it \
             (dlock makes it again)",
            dir.display(),
            user_name(owner),
            user_name(db_owner)
        )));
    }
    let mode = m.mode();
    if mode & 0o022 != 0 && mode & libc::S_ISVTX == 0 {
        return Err(denied(format!(
            "refusing {}: others may write it (mode {:o}) and it is not sticky, so any of \
             them can replace the wake files in it: `chmod +t {0}`",
            dir.display(),
            mode & 0o7777
        )));
    }
    Ok(Some(fd))
}

/// The checked `.wait` directory beside `db`, made if missing.
fn wait_dir(db: &Path, db_owner: u32) -> Result<OwnedFd> {
    if let Some(d) = check_wait_dir(db, db_owner)? {
        return Ok(d);
    }
    let path = wait_dir_of(db);
    let c = cstr(&path)?;
    // SAFETY: mkdir with a NUL-terminated path we own.
    let made = unsafe { libc::mkdir(c.as_ptr(), 0o700) } == 0;
    let fd = check_wait_dir(db, db_owner)?
        .ok_or_else(|| anyhow::anyhow!("cannot create {}", path.display()))?;
    if made {
        let share = sharing(db);
        let sticky = if share & 0o022 != 0 { libc::S_ISVTX } else { 0 };
        let mode = 0o755 | (share & (0o022 | libc::S_ISGID)) | sticky;
        // SAFETY: fchmod on a descriptor we own.
        unsafe { libc::fchmod(fd.as_raw_fd(), mode) };
    }
    Ok(fd)
}

fn db_owner(db: &Path) -> u32 {
    std::fs::metadata(db).map_or(me(), |m| m.uid())
}

/// Open (creating it if need be) a key's wake file, or our own line file,
/// read-only: `flock` needs no more.
pub fn open_wake(db: &Path, wake: &Path) -> Result<File> {
    let dir = wait_dir(db, db_owner(db))?;
    open_at(&dir, wake, true)?.ok_or_else(|| anyhow::anyhow!("cannot open {}", wake.display()))
}

/// Open the line file of another waiter, never creating it: `None` when it
/// is gone (its waiter has left the line). Created here, it would outlive
/// a waiter that had just left and removed it, with nobody to remove it.
pub fn open_line(db: &Path, line: &Path) -> Result<Option<File>> {
    match check_wait_dir(db, db_owner(db))? {
        Some(dir) => open_at(&dir, line, false),
        None => Ok(None),
    }
}

/// `wake`'s name in the checked directory `dir`, without following a
/// link; `None` if it does not exist and `create` is false.
fn open_at(dir: &OwnedFd, wake: &Path, create: bool) -> Result<Option<File>> {
    let name = wake.file_name().unwrap_or_default();
    let c = CString::new(name.as_bytes())?;
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    let flags = if create { flags | libc::O_CREAT } else { flags };
    // SAFETY: openat on a directory descriptor and a NUL-terminated
    // name we own.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags, 0o644 as libc::c_uint) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ELOOP) {
            return Err(denied(format!(
                "refusing {}: it is a symbolic link (planted by another user?)",
                wake.display()
            )));
        }
        if !create && e.raw_os_error() == Some(libc::ENOENT) {
            return Ok(None);
        }
        return Err(anyhow::Error::new(e).context(format!("cannot open {}", wake.display())));
    }
    // SAFETY: a fresh descriptor, ours alone.
    let f = unsafe { File::from_raw_fd(fd) };
    if !f.metadata()?.file_type().is_file() {
        return Err(denied(format!(
            "refusing {}: it is not a regular file",
            wake.display()
        )));
    }
    Ok(Some(f))
}

/// Whether `path` still names the file `f` is open on: a line file locked
/// after a sweep ([`remove_unheld`]) removed its name is no line file, and
/// its waiter opens and locks the name again.
pub fn still_named(f: &File, path: &Path) -> bool {
    match (f.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Remove the line files among `lines` that nobody holds: a waiter holds
/// its own exclusively for as long as it is in line and removes it when it
/// leaves, so one nobody holds was left by a waiter that died (SIGKILL).
/// Each is removed while we hold it, and only if its name still names the
/// file we hold; a waiter that locks its line file checks the same
/// ([`still_named`]) and starts again on a removed one, so nobody keeps
/// or blocks on a removed file for long. A name we may not remove (another
/// user's, in a sticky shared directory) stays. Returns how many went.
pub fn remove_unheld(db: &Path, lines: &[PathBuf]) -> usize {
    if lines.is_empty() {
        return 0;
    }
    let Ok(Some(dir)) = check_wait_dir(db, db_owner(db)) else {
        return 0;
    };
    let mut removed = 0;
    for line in lines {
        let Ok(Some(f)) = open_at(&dir, line, false) else {
            continue;
        };
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue;
        }
        if !still_named(&f, line) {
            continue;
        }
        let name = line.file_name().unwrap_or_default();
        if nix::unistd::unlinkat(&dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir).is_ok() {
            removed += 1;
        }
        // Dropping `f` lets go of it: a waiter that opened the name
        // before it went is granted it at once, and tries again.
        drop(f);
    }
    removed
}
