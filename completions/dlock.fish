# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_dlock_global_optspecs
    string join \n b/backend= namespace= config= profile= connect-timeout= v/verbose q/quiet log-format= color= h/help V/version
end

function __fish_dlock_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_dlock_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_dlock_using_subcommand
    set -l cmd (__fish_dlock_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c dlock -n "__fish_dlock_needs_command" -s b -l backend -d 'Backend URL; several Redis URLs (comma-separated or repeated) mean Redlock' -r
complete -c dlock -n "__fish_dlock_needs_command" -l namespace -d 'Namespace that every key lives under [default: dlock]' -r
complete -c dlock -n "__fish_dlock_needs_command" -l config -d 'Config file [default: $XDG_CONFIG_HOME/dlock/config.toml, then /etc/dlock/config.toml]' -r -F
complete -c dlock -n "__fish_dlock_needs_command" -l profile -d 'Use the [profile.NAME] table of the config file' -r
complete -c dlock -n "__fish_dlock_needs_command" -l connect-timeout -d 'Bound on connecting and on each request, and the longest outage a waiter rides out [default: 5s]' -r
complete -c dlock -n "__fish_dlock_needs_command" -l log-format -d 'Format of log lines on stderr' -r -f -a "text\t'Human-readable lines'
json\t'One JSON object per line'"
complete -c dlock -n "__fish_dlock_needs_command" -l color -d 'Colour in `status` and `doctor` output [default: auto: on a terminal, unless NO_COLOR is set]' -r -f -a "auto\t'On a terminal, unless NO_COLOR is set'
always\t''
never\t''"
complete -c dlock -n "__fish_dlock_needs_command" -s v -l verbose -d 'Log what dlock does on stderr (-v: events with timings, -vv: debug)'
complete -c dlock -n "__fish_dlock_needs_command" -s q -l quiet -d 'Print nothing but errors'
complete -c dlock -n "__fish_dlock_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c dlock -n "__fish_dlock_needs_command" -s V -l version -d 'Print version'
complete -c dlock -n "__fish_dlock_needs_command" -f -a "run" -d 'Acquire the lock(s), run CMD as a child, release when it ends'
complete -c dlock -n "__fish_dlock_needs_command" -f -a "acquire" -d 'Acquire without a child; print a lease handle on stdout'
complete -c dlock -n "__fish_dlock_needs_command" -f -a "renew" -d 'Extend a lease by its handle'
complete -c dlock -n "__fish_dlock_needs_command" -f -a "release" -d 'Release a lease by its handle, or break a key\'s lock with --force'
complete -c dlock -n "__fish_dlock_needs_command" -f -a "elect" -d 'Leader election: run CMD only while leader of KEY, stand by otherwise'
complete -c dlock -n "__fish_dlock_needs_command" -f -a "leader" -d 'Print the current leader of KEY (see `elect`); exit 75 if there is none'
complete -c dlock -n "__fish_dlock_needs_command" -f -a "status" -d 'Show who holds which lock'
complete -c dlock -n "__fish_dlock_needs_command" -f -a "ping" -d 'Connect to the backend and print its kind, version and round-trip time'
complete -c dlock -n "__fish_dlock_needs_command" -f -a "doctor" -d 'Check the backend for what would make locks unsafe or slow, and say how to fix it'
complete -c dlock -n "__fish_dlock_needs_command" -f -a "completions" -d 'Print a shell completion script'
complete -c dlock -n "__fish_dlock_needs_command" -f -a "man" -d 'Print the man page (of a subcommand, if named) as roff: `dlock man run | man -l -`'
complete -c dlock -n "__fish_dlock_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c dlock -n "__fish_dlock_using_subcommand run" -s k -l key -d 'Lock name; repeat for several locks, taken all or nothing in sorted order' -r
complete -c dlock -n "__fish_dlock_using_subcommand run" -s t -l ttl -d 'Lease length, renewed about every third of it while CMD runs [default: 30s]' -r
complete -c dlock -n "__fish_dlock_using_subcommand run" -s w -l wait -d 'Give up after waiting D for the lock [default: wait as long as it takes]' -r
complete -c dlock -n "__fish_dlock_using_subcommand run" -s E -l conflict-exit-code -d 'Exit code when the lock is not acquired [default: 75]' -r
complete -c dlock -n "__fish_dlock_using_subcommand run" -s l -l limit -d 'Semaphore: at most N holders of each key at once [default: 1]' -r
complete -c dlock -n "__fish_dlock_using_subcommand run" -l kill-after -d 'How long CMD gets to stop before SIGKILL [default: 10s]' -r
complete -c dlock -n "__fish_dlock_using_subcommand run" -l stop-signal -d 'The signal dlock sends CMD\'s process group when it must stop it itself (lease lost) [default: TERM]' -r
complete -c dlock -n "__fish_dlock_using_subcommand run" -l on-lost -d 'What to do when the lease is lost while CMD runs [default: kill]' -r -f -a "kill\t'Send the stop signal to the child\'s process group, SIGKILL after --kill-after, exit 74'
ignore\t'Only warn on stderr; the child runs on, and dlock exits with its status'"
complete -c dlock -n "__fish_dlock_using_subcommand run" -l lock-at-least -d 'Keep the lock until D after it was taken, even if CMD ends sooner' -r
complete -c dlock -n "__fish_dlock_using_subcommand run" -l metrics-file -d 'Write Prometheus metrics of this run to FILE when it ends (atomically)' -r -F
complete -c dlock -n "__fish_dlock_using_subcommand run" -s b -l backend -d 'Backend URL; several Redis URLs (comma-separated or repeated) mean Redlock' -r
complete -c dlock -n "__fish_dlock_using_subcommand run" -l namespace -d 'Namespace that every key lives under [default: dlock]' -r
complete -c dlock -n "__fish_dlock_using_subcommand run" -l config -d 'Config file [default: $XDG_CONFIG_HOME/dlock/config.toml, then /etc/dlock/config.toml]' -r -F
complete -c dlock -n "__fish_dlock_using_subcommand run" -l profile -d 'Use the [profile.NAME] table of the config file' -r
complete -c dlock -n "__fish_dlock_using_subcommand run" -l connect-timeout -d 'Bound on connecting and on each request, and the longest outage a waiter rides out [default: 5s]' -r
complete -c dlock -n "__fish_dlock_using_subcommand run" -l log-format -d 'Format of log lines on stderr' -r -f -a "text\t'Human-readable lines'
json\t'One JSON object per line'"
complete -c dlock -n "__fish_dlock_using_subcommand run" -l color -d 'Colour in `status` and `doctor` output [default: auto: on a terminal, unless NO_COLOR is set]' -r -f -a "auto\t'On a terminal, unless NO_COLOR is set'
always\t''
never\t''"
complete -c dlock -n "__fish_dlock_using_subcommand run" -s n -l no-wait -d 'Give up at once if the lock is held'
complete -c dlock -n "__fish_dlock_using_subcommand run" -s s -l shared -d 'Take the lock shared, as `flock -s`: beside any number of other shared holders, never beside an exclusive one'
complete -c dlock -n "__fish_dlock_using_subcommand run" -s c -l shell -d 'Run CMD through /bin/sh -c (its words joined by spaces)'
complete -c dlock -n "__fish_dlock_using_subcommand run" -s v -l verbose -d 'Log what dlock does on stderr (-v: events with timings, -vv: debug)'
complete -c dlock -n "__fish_dlock_using_subcommand run" -s q -l quiet -d 'Print nothing but errors'
complete -c dlock -n "__fish_dlock_using_subcommand run" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -s k -l key -d 'Lock name; repeat for several locks, taken all or nothing in sorted order' -r
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -s w -l wait -d 'Give up after waiting D for the lock [default: wait as long as it takes]' -r
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -s E -l conflict-exit-code -d 'Exit code when the lock is not acquired [default: 75]' -r
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -s l -l limit -d 'Semaphore: at most N holders of each key at once [default: 1]' -r
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -s t -l ttl -d 'Lease length [default: 30s]; nothing renews it: it ends after D unless `dlock renew` extends it' -r
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -s b -l backend -d 'Backend URL; several Redis URLs (comma-separated or repeated) mean Redlock' -r
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -l namespace -d 'Namespace that every key lives under [default: dlock]' -r
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -l config -d 'Config file [default: $XDG_CONFIG_HOME/dlock/config.toml, then /etc/dlock/config.toml]' -r -F
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -l profile -d 'Use the [profile.NAME] table of the config file' -r
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -l connect-timeout -d 'Bound on connecting and on each request, and the longest outage a waiter rides out [default: 5s]' -r
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -l log-format -d 'Format of log lines on stderr' -r -f -a "text\t'Human-readable lines'
json\t'One JSON object per line'"
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -l color -d 'Colour in `status` and `doctor` output [default: auto: on a terminal, unless NO_COLOR is set]' -r -f -a "auto\t'On a terminal, unless NO_COLOR is set'
always\t''
never\t''"
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -s n -l no-wait -d 'Give up at once if the lock is held'
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -s s -l shared -d 'Take the lock shared, as `flock -s`: beside any number of other shared holders, never beside an exclusive one'
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -s v -l verbose -d 'Log what dlock does on stderr (-v: events with timings, -vv: debug)'
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -s q -l quiet -d 'Print nothing but errors'
complete -c dlock -n "__fish_dlock_using_subcommand acquire" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c dlock -n "__fish_dlock_using_subcommand renew" -s t -l ttl -d 'New lease length, from now [default: the TTL it was acquired with]' -r
complete -c dlock -n "__fish_dlock_using_subcommand renew" -s b -l backend -d 'Backend URL; several Redis URLs (comma-separated or repeated) mean Redlock' -r
complete -c dlock -n "__fish_dlock_using_subcommand renew" -l namespace -d 'Namespace that every key lives under [default: dlock]' -r
complete -c dlock -n "__fish_dlock_using_subcommand renew" -l config -d 'Config file [default: $XDG_CONFIG_HOME/dlock/config.toml, then /etc/dlock/config.toml]' -r -F
complete -c dlock -n "__fish_dlock_using_subcommand renew" -l profile -d 'Use the [profile.NAME] table of the config file' -r
complete -c dlock -n "__fish_dlock_using_subcommand renew" -l connect-timeout -d 'Bound on connecting and on each request, and the longest outage a waiter rides out [default: 5s]' -r
complete -c dlock -n "__fish_dlock_using_subcommand renew" -l log-format -d 'Format of log lines on stderr' -r -f -a "text\t'Human-readable lines'
json\t'One JSON object per line'"
complete -c dlock -n "__fish_dlock_using_subcommand renew" -l color -d 'Colour in `status` and `doctor` output [default: auto: on a terminal, unless NO_COLOR is set]' -r -f -a "auto\t'On a terminal, unless NO_COLOR is set'
always\t''
never\t''"
complete -c dlock -n "__fish_dlock_using_subcommand renew" -s v -l verbose -d 'Log what dlock does on stderr (-v: events with timings, -vv: debug)'
complete -c dlock -n "__fish_dlock_using_subcommand renew" -s q -l quiet -d 'Print nothing but errors'
complete -c dlock -n "__fish_dlock_using_subcommand renew" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c dlock -n "__fish_dlock_using_subcommand release" -s k -l key -d 'With --force: the key whose holders to evict' -r
complete -c dlock -n "__fish_dlock_using_subcommand release" -s b -l backend -d 'Backend URL; several Redis URLs (comma-separated or repeated) mean Redlock' -r
complete -c dlock -n "__fish_dlock_using_subcommand release" -l namespace -d 'Namespace that every key lives under [default: dlock]' -r
complete -c dlock -n "__fish_dlock_using_subcommand release" -l config -d 'Config file [default: $XDG_CONFIG_HOME/dlock/config.toml, then /etc/dlock/config.toml]' -r -F
complete -c dlock -n "__fish_dlock_using_subcommand release" -l profile -d 'Use the [profile.NAME] table of the config file' -r
complete -c dlock -n "__fish_dlock_using_subcommand release" -l connect-timeout -d 'Bound on connecting and on each request, and the longest outage a waiter rides out [default: 5s]' -r
complete -c dlock -n "__fish_dlock_using_subcommand release" -l log-format -d 'Format of log lines on stderr' -r -f -a "text\t'Human-readable lines'
json\t'One JSON object per line'"
complete -c dlock -n "__fish_dlock_using_subcommand release" -l color -d 'Colour in `status` and `doctor` output [default: auto: on a terminal, unless NO_COLOR is set]' -r -f -a "auto\t'On a terminal, unless NO_COLOR is set'
always\t''
never\t''"
complete -c dlock -n "__fish_dlock_using_subcommand release" -l force -d 'Break the lock whoever holds it (administrator\'s tool)'
complete -c dlock -n "__fish_dlock_using_subcommand release" -l if-held -d 'Exit 0 when the handle holds nothing any more (already released, expired or broken): an idempotent release for cleanup steps'
complete -c dlock -n "__fish_dlock_using_subcommand release" -s v -l verbose -d 'Log what dlock does on stderr (-v: events with timings, -vv: debug)'
complete -c dlock -n "__fish_dlock_using_subcommand release" -s q -l quiet -d 'Print nothing but errors'
complete -c dlock -n "__fish_dlock_using_subcommand release" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c dlock -n "__fish_dlock_using_subcommand elect" -s k -l key -d 'The election\'s name: a lock key, shared with `run` on the same key' -r
complete -c dlock -n "__fish_dlock_using_subcommand elect" -s t -l ttl -d 'Lease length, renewed about every third of it while leader [default: 30s]' -r
complete -c dlock -n "__fish_dlock_using_subcommand elect" -s w -l wait -d 'Give up the first campaign after D (exit 75) [default: wait as long as it takes]' -r
complete -c dlock -n "__fish_dlock_using_subcommand elect" -l value -d 'What this candidate says about itself while leader [default: USER@HOST pid PID]' -r
complete -c dlock -n "__fish_dlock_using_subcommand elect" -l restart -d 'After CMD exits by itself: exit with its status (never), campaign again unless it succeeded (on-failure), or campaign again (always)' -r -f -a "never\t'Exit with CMD\'s status'
on-failure\t'Campaign again if CMD failed; exit 0 if it succeeded'
always\t'Always campaign again'"
complete -c dlock -n "__fish_dlock_using_subcommand elect" -l restart-delay -d 'How long to stand aside before campaigning again after CMD exited' -r
complete -c dlock -n "__fish_dlock_using_subcommand elect" -l kill-after -d 'How long CMD gets to stop before SIGKILL [default: 10s]' -r
complete -c dlock -n "__fish_dlock_using_subcommand elect" -l stop-signal -d 'The signal dlock sends CMD\'s process group when it must stop it itself (leadership lost) [default: TERM]' -r
complete -c dlock -n "__fish_dlock_using_subcommand elect" -l metrics-file -d 'Keep Prometheus metrics of this candidate\'s leadership in FILE (atomically)' -r -F
complete -c dlock -n "__fish_dlock_using_subcommand elect" -s b -l backend -d 'Backend URL; several Redis URLs (comma-separated or repeated) mean Redlock' -r
complete -c dlock -n "__fish_dlock_using_subcommand elect" -l namespace -d 'Namespace that every key lives under [default: dlock]' -r
complete -c dlock -n "__fish_dlock_using_subcommand elect" -l config -d 'Config file [default: $XDG_CONFIG_HOME/dlock/config.toml, then /etc/dlock/config.toml]' -r -F
complete -c dlock -n "__fish_dlock_using_subcommand elect" -l profile -d 'Use the [profile.NAME] table of the config file' -r
complete -c dlock -n "__fish_dlock_using_subcommand elect" -l connect-timeout -d 'Bound on connecting and on each request, and the longest outage a waiter rides out [default: 5s]' -r
complete -c dlock -n "__fish_dlock_using_subcommand elect" -l log-format -d 'Format of log lines on stderr' -r -f -a "text\t'Human-readable lines'
json\t'One JSON object per line'"
complete -c dlock -n "__fish_dlock_using_subcommand elect" -l color -d 'Colour in `status` and `doctor` output [default: auto: on a terminal, unless NO_COLOR is set]' -r -f -a "auto\t'On a terminal, unless NO_COLOR is set'
always\t''
never\t''"
complete -c dlock -n "__fish_dlock_using_subcommand elect" -s n -l no-wait -d 'Give up at once (exit 75) if another candidate leads'
complete -c dlock -n "__fish_dlock_using_subcommand elect" -s c -l shell -d 'Run CMD through /bin/sh -c (its words joined by spaces)'
complete -c dlock -n "__fish_dlock_using_subcommand elect" -s v -l verbose -d 'Log what dlock does on stderr (-v: events with timings, -vv: debug)'
complete -c dlock -n "__fish_dlock_using_subcommand elect" -s q -l quiet -d 'Print nothing but errors'
complete -c dlock -n "__fish_dlock_using_subcommand elect" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c dlock -n "__fish_dlock_using_subcommand leader" -s b -l backend -d 'Backend URL; several Redis URLs (comma-separated or repeated) mean Redlock' -r
complete -c dlock -n "__fish_dlock_using_subcommand leader" -l namespace -d 'Namespace that every key lives under [default: dlock]' -r
complete -c dlock -n "__fish_dlock_using_subcommand leader" -l config -d 'Config file [default: $XDG_CONFIG_HOME/dlock/config.toml, then /etc/dlock/config.toml]' -r -F
complete -c dlock -n "__fish_dlock_using_subcommand leader" -l profile -d 'Use the [profile.NAME] table of the config file' -r
complete -c dlock -n "__fish_dlock_using_subcommand leader" -l connect-timeout -d 'Bound on connecting and on each request, and the longest outage a waiter rides out [default: 5s]' -r
complete -c dlock -n "__fish_dlock_using_subcommand leader" -l log-format -d 'Format of log lines on stderr' -r -f -a "text\t'Human-readable lines'
json\t'One JSON object per line'"
complete -c dlock -n "__fish_dlock_using_subcommand leader" -l color -d 'Colour in `status` and `doctor` output [default: auto: on a terminal, unless NO_COLOR is set]' -r -f -a "auto\t'On a terminal, unless NO_COLOR is set'
always\t''
never\t''"
complete -c dlock -n "__fish_dlock_using_subcommand leader" -l json -d 'Print JSON: {"key", "value", "token", "since"}, or null when there is no leader'
complete -c dlock -n "__fish_dlock_using_subcommand leader" -l watch -d 'Print a line at each change of leader until interrupted'
complete -c dlock -n "__fish_dlock_using_subcommand leader" -s v -l verbose -d 'Log what dlock does on stderr (-v: events with timings, -vv: debug)'
complete -c dlock -n "__fish_dlock_using_subcommand leader" -s q -l quiet -d 'Print nothing but errors'
complete -c dlock -n "__fish_dlock_using_subcommand leader" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c dlock -n "__fish_dlock_using_subcommand status" -l watch -d 'Refresh every D (default 2s) until interrupted; with --json, one array per line' -r
complete -c dlock -n "__fish_dlock_using_subcommand status" -s b -l backend -d 'Backend URL; several Redis URLs (comma-separated or repeated) mean Redlock' -r
complete -c dlock -n "__fish_dlock_using_subcommand status" -l namespace -d 'Namespace that every key lives under [default: dlock]' -r
complete -c dlock -n "__fish_dlock_using_subcommand status" -l config -d 'Config file [default: $XDG_CONFIG_HOME/dlock/config.toml, then /etc/dlock/config.toml]' -r -F
complete -c dlock -n "__fish_dlock_using_subcommand status" -l profile -d 'Use the [profile.NAME] table of the config file' -r
complete -c dlock -n "__fish_dlock_using_subcommand status" -l connect-timeout -d 'Bound on connecting and on each request, and the longest outage a waiter rides out [default: 5s]' -r
complete -c dlock -n "__fish_dlock_using_subcommand status" -l log-format -d 'Format of log lines on stderr' -r -f -a "text\t'Human-readable lines'
json\t'One JSON object per line'"
complete -c dlock -n "__fish_dlock_using_subcommand status" -l color -d 'Colour in `status` and `doctor` output [default: auto: on a terminal, unless NO_COLOR is set]' -r -f -a "auto\t'On a terminal, unless NO_COLOR is set'
always\t''
never\t''"
complete -c dlock -n "__fish_dlock_using_subcommand status" -l json -d 'Print a JSON array, one object per key'
complete -c dlock -n "__fish_dlock_using_subcommand status" -s v -l verbose -d 'Log what dlock does on stderr (-v: events with timings, -vv: debug)'
complete -c dlock -n "__fish_dlock_using_subcommand status" -s q -l quiet -d 'Print nothing but errors'
complete -c dlock -n "__fish_dlock_using_subcommand status" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c dlock -n "__fish_dlock_using_subcommand ping" -s b -l backend -d 'Backend URL; several Redis URLs (comma-separated or repeated) mean Redlock' -r
complete -c dlock -n "__fish_dlock_using_subcommand ping" -l namespace -d 'Namespace that every key lives under [default: dlock]' -r
complete -c dlock -n "__fish_dlock_using_subcommand ping" -l config -d 'Config file [default: $XDG_CONFIG_HOME/dlock/config.toml, then /etc/dlock/config.toml]' -r -F
complete -c dlock -n "__fish_dlock_using_subcommand ping" -l profile -d 'Use the [profile.NAME] table of the config file' -r
complete -c dlock -n "__fish_dlock_using_subcommand ping" -l connect-timeout -d 'Bound on connecting and on each request, and the longest outage a waiter rides out [default: 5s]' -r
complete -c dlock -n "__fish_dlock_using_subcommand ping" -l log-format -d 'Format of log lines on stderr' -r -f -a "text\t'Human-readable lines'
json\t'One JSON object per line'"
complete -c dlock -n "__fish_dlock_using_subcommand ping" -l color -d 'Colour in `status` and `doctor` output [default: auto: on a terminal, unless NO_COLOR is set]' -r -f -a "auto\t'On a terminal, unless NO_COLOR is set'
always\t''
never\t''"
complete -c dlock -n "__fish_dlock_using_subcommand ping" -s v -l verbose -d 'Log what dlock does on stderr (-v: events with timings, -vv: debug)'
complete -c dlock -n "__fish_dlock_using_subcommand ping" -s q -l quiet -d 'Print nothing but errors'
complete -c dlock -n "__fish_dlock_using_subcommand ping" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c dlock -n "__fish_dlock_using_subcommand doctor" -s t -l ttl -d 'The TTL you mean to use, to judge round-trip times and clamping against [default: 30s]' -r
complete -c dlock -n "__fish_dlock_using_subcommand doctor" -l max-skew -d 'The largest clock difference with the server that passes [default: 1s]' -r
complete -c dlock -n "__fish_dlock_using_subcommand doctor" -s b -l backend -d 'Backend URL; several Redis URLs (comma-separated or repeated) mean Redlock' -r
complete -c dlock -n "__fish_dlock_using_subcommand doctor" -l namespace -d 'Namespace that every key lives under [default: dlock]' -r
complete -c dlock -n "__fish_dlock_using_subcommand doctor" -l config -d 'Config file [default: $XDG_CONFIG_HOME/dlock/config.toml, then /etc/dlock/config.toml]' -r -F
complete -c dlock -n "__fish_dlock_using_subcommand doctor" -l profile -d 'Use the [profile.NAME] table of the config file' -r
complete -c dlock -n "__fish_dlock_using_subcommand doctor" -l connect-timeout -d 'Bound on connecting and on each request, and the longest outage a waiter rides out [default: 5s]' -r
complete -c dlock -n "__fish_dlock_using_subcommand doctor" -l log-format -d 'Format of log lines on stderr' -r -f -a "text\t'Human-readable lines'
json\t'One JSON object per line'"
complete -c dlock -n "__fish_dlock_using_subcommand doctor" -l color -d 'Colour in `status` and `doctor` output [default: auto: on a terminal, unless NO_COLOR is set]' -r -f -a "auto\t'On a terminal, unless NO_COLOR is set'
always\t''
never\t''"
complete -c dlock -n "__fish_dlock_using_subcommand doctor" -l strict -d 'Count warnings as failures too'
complete -c dlock -n "__fish_dlock_using_subcommand doctor" -l json -d 'Print a JSON object (backend, ttl_seconds, checks) instead of lines'
complete -c dlock -n "__fish_dlock_using_subcommand doctor" -s v -l verbose -d 'Log what dlock does on stderr (-v: events with timings, -vv: debug)'
complete -c dlock -n "__fish_dlock_using_subcommand doctor" -s q -l quiet -d 'Print nothing but errors'
complete -c dlock -n "__fish_dlock_using_subcommand doctor" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c dlock -n "__fish_dlock_using_subcommand completions" -s b -l backend -d 'Backend URL; several Redis URLs (comma-separated or repeated) mean Redlock' -r
complete -c dlock -n "__fish_dlock_using_subcommand completions" -l namespace -d 'Namespace that every key lives under [default: dlock]' -r
complete -c dlock -n "__fish_dlock_using_subcommand completions" -l config -d 'Config file [default: $XDG_CONFIG_HOME/dlock/config.toml, then /etc/dlock/config.toml]' -r -F
complete -c dlock -n "__fish_dlock_using_subcommand completions" -l profile -d 'Use the [profile.NAME] table of the config file' -r
complete -c dlock -n "__fish_dlock_using_subcommand completions" -l connect-timeout -d 'Bound on connecting and on each request, and the longest outage a waiter rides out [default: 5s]' -r
complete -c dlock -n "__fish_dlock_using_subcommand completions" -l log-format -d 'Format of log lines on stderr' -r -f -a "text\t'Human-readable lines'
json\t'One JSON object per line'"
complete -c dlock -n "__fish_dlock_using_subcommand completions" -l color -d 'Colour in `status` and `doctor` output [default: auto: on a terminal, unless NO_COLOR is set]' -r -f -a "auto\t'On a terminal, unless NO_COLOR is set'
always\t''
never\t''"
complete -c dlock -n "__fish_dlock_using_subcommand completions" -s v -l verbose -d 'Log what dlock does on stderr (-v: events with timings, -vv: debug)'
complete -c dlock -n "__fish_dlock_using_subcommand completions" -s q -l quiet -d 'Print nothing but errors'
complete -c dlock -n "__fish_dlock_using_subcommand completions" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c dlock -n "__fish_dlock_using_subcommand man" -s b -l backend -d 'Backend URL; several Redis URLs (comma-separated or repeated) mean Redlock' -r
complete -c dlock -n "__fish_dlock_using_subcommand man" -l namespace -d 'Namespace that every key lives under [default: dlock]' -r
complete -c dlock -n "__fish_dlock_using_subcommand man" -l config -d 'Config file [default: $XDG_CONFIG_HOME/dlock/config.toml, then /etc/dlock/config.toml]' -r -F
complete -c dlock -n "__fish_dlock_using_subcommand man" -l profile -d 'Use the [profile.NAME] table of the config file' -r
complete -c dlock -n "__fish_dlock_using_subcommand man" -l connect-timeout -d 'Bound on connecting and on each request, and the longest outage a waiter rides out [default: 5s]' -r
complete -c dlock -n "__fish_dlock_using_subcommand man" -l log-format -d 'Format of log lines on stderr' -r -f -a "text\t'Human-readable lines'
json\t'One JSON object per line'"
complete -c dlock -n "__fish_dlock_using_subcommand man" -l color -d 'Colour in `status` and `doctor` output [default: auto: on a terminal, unless NO_COLOR is set]' -r -f -a "auto\t'On a terminal, unless NO_COLOR is set'
always\t''
never\t''"
complete -c dlock -n "__fish_dlock_using_subcommand man" -s v -l verbose -d 'Log what dlock does on stderr (-v: events with timings, -vv: debug)'
complete -c dlock -n "__fish_dlock_using_subcommand man" -s q -l quiet -d 'Print nothing but errors'
complete -c dlock -n "__fish_dlock_using_subcommand man" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c dlock -n "__fish_dlock_using_subcommand help; and not __fish_seen_subcommand_from run acquire renew release elect leader status ping doctor completions man help" -f -a "run" -d 'Acquire the lock(s), run CMD as a child, release when it ends'
complete -c dlock -n "__fish_dlock_using_subcommand help; and not __fish_seen_subcommand_from run acquire renew release elect leader status ping doctor completions man help" -f -a "acquire" -d 'Acquire without a child; print a lease handle on stdout'
complete -c dlock -n "__fish_dlock_using_subcommand help; and not __fish_seen_subcommand_from run acquire renew release elect leader status ping doctor completions man help" -f -a "renew" -d 'Extend a lease by its handle'
complete -c dlock -n "__fish_dlock_using_subcommand help; and not __fish_seen_subcommand_from run acquire renew release elect leader status ping doctor completions man help" -f -a "release" -d 'Release a lease by its handle, or break a key\'s lock with --force'
complete -c dlock -n "__fish_dlock_using_subcommand help; and not __fish_seen_subcommand_from run acquire renew release elect leader status ping doctor completions man help" -f -a "elect" -d 'Leader election: run CMD only while leader of KEY, stand by otherwise'
complete -c dlock -n "__fish_dlock_using_subcommand help; and not __fish_seen_subcommand_from run acquire renew release elect leader status ping doctor completions man help" -f -a "leader" -d 'Print the current leader of KEY (see `elect`); exit 75 if there is none'
complete -c dlock -n "__fish_dlock_using_subcommand help; and not __fish_seen_subcommand_from run acquire renew release elect leader status ping doctor completions man help" -f -a "status" -d 'Show who holds which lock'
complete -c dlock -n "__fish_dlock_using_subcommand help; and not __fish_seen_subcommand_from run acquire renew release elect leader status ping doctor completions man help" -f -a "ping" -d 'Connect to the backend and print its kind, version and round-trip time'
complete -c dlock -n "__fish_dlock_using_subcommand help; and not __fish_seen_subcommand_from run acquire renew release elect leader status ping doctor completions man help" -f -a "doctor" -d 'Check the backend for what would make locks unsafe or slow, and say how to fix it'
complete -c dlock -n "__fish_dlock_using_subcommand help; and not __fish_seen_subcommand_from run acquire renew release elect leader status ping doctor completions man help" -f -a "completions" -d 'Print a shell completion script'
complete -c dlock -n "__fish_dlock_using_subcommand help; and not __fish_seen_subcommand_from run acquire renew release elect leader status ping doctor completions man help" -f -a "man" -d 'Print the man page (of a subcommand, if named) as roff: `dlock man run | man -l -`'
complete -c dlock -n "__fish_dlock_using_subcommand help; and not __fish_seen_subcommand_from run acquire renew release elect leader status ping doctor completions man help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
