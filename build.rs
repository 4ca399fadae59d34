//! Links GCC's unwinder into the binary instead of loading `libgcc_s.so.1`.
//!
//! On glibc targets the standard library asks the linker for `-lgcc_s`, the
//! shared unwinder, for its `_Unwind_*` functions (backtraces, and panics in
//! test builds). Loading that library costs every `dlock` run an extra
//! `mmap`, its relocations and its constructor, which probes the CPU with
//! `cpuid`: on a virtual machine each `cpuid` traps to the hypervisor, and
//! `bench/counts.sh` measured the library at about 3 % of a run's CPU time.
//! GCC ships the same unwinder as a static archive, `libgcc_eh.a` (what
//! `-static-libgcc` and Rust's own `+crt-static` use). Offering it under the
//! name `libgcc_s.a` in a directory searched first makes the linker take it,
//! so the binary needs only libc, libm and the loader.
//!
//! Nothing changes where the archive is not found (another C toolchain, a
//! cross build): the linker then finds the shared library as before.
//! `DLOCK_SHARED_LIBGCC=1` keeps the shared library on purpose.
//!
//! The static unwinder of a GCC built against glibc 2.35 or later finds
//! unwind tables with glibc's `_dl_find_object`: built on such a system
//! (Debian 12: glibc 2.36), dlock then needs glibc 2.35 at run time, where
//! the shared library left it at 2.34. A binary meant for an older glibc
//! is best built on it (or with `DLOCK_SHARED_LIBGCC=1`).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DLOCK_SHARED_LIBGCC");
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let target_env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let crt_static = features.split(',').any(|f| f == "crt-static");
    if target_os != "linux" || target_env != "gnu" || crt_static {
        return;
    }
    if std::env::var_os("DLOCK_SHARED_LIBGCC").is_some_and(|v| v == "1") {
        return;
    }
    let Some(archive) = libgcc_eh() else {
        println!("cargo:warning=libgcc_eh.a not found: dlock will load libgcc_s.so.1");
        return;
    };
    let Some(out) = std::env::var_os("OUT_DIR") else {
        return;
    };
    let dir = PathBuf::from(out).join("static-unwind");
    let link = dir.join("libgcc_s.a");
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let _ = std::fs::remove_file(&link);
    if std::os::unix::fs::symlink(&archive, &link).is_err() {
        return;
    }
    println!("cargo:rustc-link-search=native={}", dir.display());
}

/// The C compiler's own `libgcc_eh.a`, the one that matches its `libgcc.a`.
fn libgcc_eh() -> Option<PathBuf> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(cc)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    // Asked for a file it does not have, gcc prints the bare name back.
    (path.is_absolute() && path.is_file()).then_some(path)
}
