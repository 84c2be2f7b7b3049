#!/usr/bin/env bash
# One command to many machines, syncfleet against Salt, measured one after the other in one go so
# that the ratio holds on a noisy machine:
#   - fleet-bench's ad-hoc row (a real syncfleet controller, N simulated agents over mTLS): time
#     until every agent has received its run;
#   - Salt's `salt '*' test.ping` to N local minions (master and minions on 127.0.0.1, each with
#     its own root_dir (config, PKI, sockets, logs) under target/sb, no system paths): wall time of the
#     command, which returns when every minion has answered.
# for N = 20 and 50 (SALT_SIZES="20 50" by default). Salt is installed with pip into a
# virtualenv under target/ the first time (it needs PyPI).
#
# Usage: tests/bench/salt-compare.sh            (from the repository root)
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
sizes="${SALT_SIZES:-20 50}"
target="$root/target"
venv="$target/salt-venv"
# Salt puts every path (PKI, cache, IPC sockets, logs) under root_dir, at its default place
# below it; the path is kept short because a Unix socket path may have at most 107 bytes.
work="$target/sb"

echo "building fleet-bench and the daemons (release)..." >&2
cargo build --release -q -p syncfleet-tests --bin fleet-bench -p syncfleet-controller -p syncfleet-agent --bins
bench="$target/release/fleet-bench"

if [ ! -x "$venv/bin/salt-master" ]; then
    echo "installing salt into $venv..." >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q salt
fi

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

# A Salt fleet of $1 minions; prints the seconds `test.ping` to all of them took.
salt_ping() {
    local n="$1"
    local dir="$work/n$n"
    rm -rf "$dir"
    mkdir -p "$dir/master"
    local pub ret user
    pub="$(free_port)"
    ret="$(free_port)"
    user="$(id -un)"
    cat > "$dir/master/master" <<CFG
interface: 127.0.0.1
publish_port: $pub
ret_port: $ret
user: $user
root_dir: $dir/master
auto_accept: True
worker_threads: 2
CFG
    "$venv/bin/salt-master" -c "$dir/master" -l quiet >"$dir/master.out" 2>&1 &
    pids+=("$!")
    for i in $(seq 1 "$n"); do
        local m="$dir/minion-$i"
        mkdir -p "$m"
        cat > "$m/minion" <<CFG
master: 127.0.0.1
master_port: $ret
publish_port: $pub
id: bench-minion-$i
user: $user
root_dir: $m
CFG
        "$venv/bin/salt-minion" -c "$m" -l quiet >"$m.out" 2>&1 &
        pids+=("$!")
    done
    # Wait (at most 5 minutes) until every minion answers.
    local deadline=$((SECONDS + 300)) answered=0
    while [ "$answered" -lt "$n" ]; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "salt: only $answered of $n minions answered test.ping within 300 s; see the logs under $dir/*/var/log/salt/" >&2
            return 1
        fi
        answered="$("$venv/bin/salt" -c "$dir/master" --out=json --static -t 10 'bench-minion-*' test.ping 2>/dev/null \
            | python3 -c 'import json,sys; d=json.load(sys.stdin) if sys.stdin.readable() else {}; print(sum(1 for v in d.values() if v is True))' 2>/dev/null || echo 0)"
    done
    # The measured call, after a warm-up call.
    "$venv/bin/salt" -c "$dir/master" --out=json --static -t 30 'bench-minion-*' test.ping >/dev/null
    local t0 t1
    t0="$(date +%s.%N)"
    "$venv/bin/salt" -c "$dir/master" --out=json --static -t 30 'bench-minion-*' test.ping >/dev/null
    t1="$(date +%s.%N)"
    cleanup
    pids=()
    python3 -c "print(round($t1 - $t0, 3))"
}

# fleet-bench's ad-hoc row for $1 agents; prints seconds.
syncfleet_adhoc() {
    local n="$1" json="$work/fleet-bench-$1.json"
    mkdir -p "$work"
    "$bench" --agents "$n" --only adhoc --json "$json" >/dev/null
    python3 -c "
import json
d = json.load(open('$json'))
f = next(f for f in d['figures'] if f['key'] == 'adhoc.all_accepted_ms')
print(round(f['value'] / 1000, 3))"
}

printf '%-8s %-22s %-22s %s\n' agents "syncfleet ad-hoc (s)" "salt test.ping (s)" "salt / syncfleet"
for n in $sizes; do
    s="$(syncfleet_adhoc "$n")"
    t="$(salt_ping "$n")"
    ratio="$(python3 -c "print(round($t / max($s, 1e-6), 1))")"
    printf '%-8s %-22s %-22s %s\n' "$n" "$s" "$t" "$ratio"
done
