//! The fast path of [`super::parse`]: a command tree with only the
//! subcommand the command line names.
//!
//! Building clap's whole tree (every subcommand, every flag, then their
//! global flags copied into each) is a fifth of an uncontended `dlock run`'s
//! instructions, and a run needs one subcommand of it. This builds the root's
//! global options and that one subcommand, the same calls in the same order
//! as `#[derive(Parser)]` makes for them, and parses with it.
//!
//! Why the result is the full tree's: the partial tree is the full one less
//! the other subcommands. clap parses left to right; up to the subcommand's
//! word both trees have the same root options, and a word naming one of the
//! missing subcommands is an error in the partial tree (the root takes no
//! positional). From the subcommand's word on, both parse with the same
//! subcommand. So a partial parse that succeeds went the full parse's way.
//! Anything else (an error, `--help`, `--version`, a word that is not one of
//! ours) returns `None`, and the caller parses with the whole tree: every
//! message, tip, help text and exit status comes from there, unchanged.

use std::ffi::OsString;

use clap::{Arg, Args, Command, FromArgMatches};

use super::{
    AcquireArgs, Cli, DoctorArgs, ElectArgs, GlobalArgs, LeaderArgs, ReleaseArgs, RenewArgs,
    RunArgs, StatusArgs,
};

/// `Some` when the command line parses with the partial tree; `None` means
/// "parse with the whole tree".
pub(super) fn parse(args: &[OsString]) -> Option<Cli> {
    // As `Cli`'s derive: its own (empty) group, the global options, then
    // the subcommand and the settings a required subcommand brings. Help
    // texts are left out: the partial tree never prints anything.
    let root = Command::new("dlock")
        .group(
            clap::ArgGroup::new("Cli")
                .multiple(true)
                .args([] as [clap::Id; 0]),
        )
        .version(env!("CARGO_PKG_VERSION"));
    let root = GlobalArgs::augment_args(root);
    let name = subcommand_word(&root, args)?;
    let mut root = root
        .subcommand(subcommand(name)?)
        .subcommand_required(true)
        .arg_required_else_help(true);
    let parsed = root.try_get_matches_from_mut(args);
    // As in `super::parse`: freeing the tree costs about what building it
    // did, and the process ends soon.
    std::mem::forget(root);
    <Cli as FromArgMatches>::from_arg_matches_mut(&mut parsed.ok()?).ok()
}

/// The subcommand a command line names: its first word that is neither an
/// option of `root` nor an option's value. `None` for anything this does
/// not know (`-h`, `-V`, `--`, an unknown flag): the whole tree decides.
fn subcommand_word<'a>(root: &Command, args: &'a [OsString]) -> Option<&'a str> {
    let takes_value = |a: &Arg| a.get_action().takes_values();
    let mut words = args.iter().skip(1);
    while let Some(w) = words.next() {
        let w = w.to_str()?;
        if let Some(long) = w.strip_prefix("--") {
            let (name, value) = match long.split_once('=') {
                Some((n, _)) => (n, true),
                None => (long, false),
            };
            let arg = root.get_arguments().find(|a| a.get_long() == Some(name))?;
            if takes_value(arg) && !value {
                words.next()?;
            }
        } else if let Some(shorts) = w.strip_prefix('-') {
            // A cluster such as `-vq` or `-vbURL`: flags, then at most one
            // option whose value is the rest of the word or the next one.
            if shorts.is_empty() {
                return None;
            }
            for (i, c) in shorts.char_indices() {
                let arg = root.get_arguments().find(|a| a.get_short() == Some(c))?;
                if takes_value(arg) {
                    if i + c.len_utf8() == shorts.len() {
                        words.next()?;
                    }
                    break;
                }
            }
        } else {
            return Some(w);
        }
    }
    None
}

/// The subcommand `name`, as `Command`'s derive builds it (less its help
/// texts); `None` for those left to the whole tree (`completions` and `man`
/// need it anyway; `help` is clap's own).
fn subcommand(name: &str) -> Option<Command> {
    Some(match name {
        "run" => RunArgs::augment_args(Command::new("run")),
        "acquire" => AcquireArgs::augment_args(Command::new("acquire")),
        "renew" => RenewArgs::augment_args(Command::new("renew")),
        "release" => ReleaseArgs::augment_args(Command::new("release")),
        "elect" => ElectArgs::augment_args(Command::new("elect")),
        "leader" => LeaderArgs::augment_args(Command::new("leader")),
        "status" => StatusArgs::augment_args(Command::new("status")),
        "ping" => Command::new("ping"),
        "doctor" => DoctorArgs::augment_args(Command::new("doctor")),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<OsString> {
        std::iter::once("dlock")
            .chain(line.split_whitespace())
            .map(OsString::from)
            .collect()
    }

    /// The whole tree's parse, as `super::super::parse` does it without the
    /// fast path.
    fn full(args: &[OsString]) -> Result<Cli, clap::Error> {
        use clap::Parser;
        Cli::try_parse_from(args)
    }

    const LINES: &[&str] = &[
        "run --key b -- true",
        "run -k b -- sh -c 'exit 3'",
        "run --key a --key b --ttl 10s -w 5 --shared -- ./job --flag -x",
        "run --key a --limit 3 --no-wait -E 0 -c -- echo hi",
        "run -k a -l 2 -s --wait=1m --kill-after 2s --stop-signal QUIT --on-lost ignore -- x",
        "run --key a --lock-at-least 5m --metrics-file /tmp/m.prom -- x -- y",
        "-b sqlite:/tmp/x.db run --key b -- true",
        "--backend=redis://a,redis://b -v run --key b -- true",
        "-vq -bsqlite:/tmp/x.db --namespace ns run --key b -- true",
        "-vv --namespace run run --key b -- true",
        "run --key b -q --backend sqlite:/tmp/y.db --color never --log-format json -- true",
        "--config /tmp/c.toml --profile p --connect-timeout 2s run --key k -- true",
        "acquire --key deploy --ttl 15m",
        "acquire -k a -k b --limit 2 --wait 0.5 --shared",
        "-b redis://h release H",
        "release --force --key a --key b",
        "release --if-held H",
        "renew H --ttl 1m",
        "elect --key leader --value me --restart on-failure --restart-delay 2s -- srv",
        "leader k --json",
        "status --watch a b --json",
        "status",
        "ping -v",
        "doctor --strict -t 10s",
    ];

    /// Held by every test here: one of them sets variables the parses
    /// read, and the environment is the process's.
    static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn same(lines: &[&str]) {
        for line in lines {
            let args = super::super::watch_takes_no_key(words(line));
            let want = full(&args).unwrap_or_else(|e| panic!("{line}: {e}"));
            let got = parse(&args).unwrap_or_else(|| panic!("{line}: not parsed by the fast path"));
            assert_eq!(format!("{got:?}"), format!("{want:?}"), "{line}");
        }
    }

    #[test]
    fn partial_tree_parses_as_the_whole_one() {
        let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
        same(LINES);
        // Values from the environment, overridden by flags where given.
        // SAFETY: no other test of this binary reads or writes these.
        unsafe {
            std::env::set_var("DLOCK_NAMESPACE", "from-env");
            std::env::set_var("DLOCK_METRICS_FILE", "/tmp/env.prom");
            std::env::set_var("DLOCK_CONNECT_TIMEOUT", "7s");
        }
        same(&[
            "run --key b -- true",
            "--namespace flag run --key b --metrics-file /tmp/flag.prom -- true",
            "elect --key k -- srv",
            "acquire --key b",
        ]);
        unsafe {
            std::env::remove_var("DLOCK_NAMESPACE");
            std::env::remove_var("DLOCK_METRICS_FILE");
            std::env::remove_var("DLOCK_CONNECT_TIMEOUT");
        }
    }

    #[test]
    fn everything_else_is_left_to_the_whole_tree() {
        let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
        for line in [
            "",
            "--help",
            "-h run",
            "--version",
            "-V",
            "help run",
            "man run",
            "completions bash",
            "-- run --key b -- true",
            "--bogus run --key b -- true",
            "-x run --key b -- true",
            "-b",
            "run --kye b -- true",
            "run --key b true",
            "run --key b",
            "run --help",
            "run -V --key b -- true",
            "run --key b --wait soon -- true",
            "run --key b --wait 1s --no-wait -- true",
            "release",
            "release --key a",
            "status --watch -1",
            "ping extra",
            "elect --key k --restart sometimes -- srv",
        ] {
            let args = super::super::watch_takes_no_key(words(line));
            assert!(parse(&args).is_none(), "{line}: parsed by the fast path");
            // And the caller's answer is the whole tree's, tip and all.
            match (super::super::parse(args.clone()), full(&args)) {
                (Ok(got), Ok(want)) => assert_eq!(format!("{got:?}"), format!("{want:?}")),
                (Err((e, tip)), Err(want)) => {
                    assert_eq!(e.kind(), want.kind(), "{line}");
                    assert_eq!(e.to_string(), want.to_string(), "{line}");
                    assert_eq!(tip, super::super::better_tip(&want, &args), "{line}");
                }
                (got, want) => panic!("{line}: {got:?} where the whole tree gives {want:?}"),
            }
        }
    }

    #[test]
    fn each_partial_tree_is_consistent() {
        for name in [
            "run", "acquire", "renew", "release", "elect", "leader", "status", "ping", "doctor",
        ] {
            GlobalArgs::augment_args(Command::new("dlock"))
                .subcommand(subcommand(name).expect(name))
                .debug_assert();
        }
    }
}
