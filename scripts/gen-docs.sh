#!/usr/bin/env bash
# Regenerate completions/ and man/ from the clap definition (src/cli.rs).
# tests/cli.rs fails when the committed files differ from what this writes.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet
d=target/debug/dlock
mkdir -p completions man
"$d" completions bash > completions/dlock.bash
"$d" completions zsh > completions/_dlock
"$d" completions fish > completions/dlock.fish
"$d" man > man/dlock.1
# Every subcommand listed by `dlock --help`, so a new one gets its page.
subs=$("$d" --help | awk '/^Commands:/{on=1; next} on && /^$/{on=0} on {print $1}' | grep -vx help)
rm -f man/dlock-*.1
for sub in $subs; do
  "$d" man "$sub" > "man/dlock-$sub.1"
done
echo "regenerated completions/ and man/"
