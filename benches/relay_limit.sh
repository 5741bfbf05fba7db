#!/usr/bin/env bash
# im-server against the least a relay must do (examples/min_relay.rs), in one run:
# the same direct load (examples/im_load.rs) against each, alternating, ROUNDS times;
# then one message in flight, for the ACK latency. Each server is its own process,
# so its CPU time per message is its own (`--server-pid`).
#
#   bash benches/relay_limit.sh            # ROUNDS=3 PAIRS=100 MESSAGES=2000 WINDOW=8
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
PAIRS=${PAIRS:-100}
MESSAGES=${MESSAGES:-2000}
WINDOW=${WINDOW:-8}
IM_FLAGS=${IM_FLAGS:-}

cargo build --release --bin im-server --example min_relay --example im_load
load=target/release/examples/im_load

# shellcheck disable=SC2086
target/release/im-server --listen 127.0.0.1:3100 --dialect mobileimsdk-v6 \
    --rate-limit 0 --user-rate-limit 0 --store memory --log-level warn $IM_FLAGS &
im=$!
target/release/examples/min_relay --listen 127.0.0.1:3101 2>/dev/null &
min=$!
trap 'kill $im $min 2>/dev/null' EXIT
sleep 1

run() { # name port pid pairs messages window
    $load --url "ws://127.0.0.1:$2/websocket" --dialect mobileimsdk-v6 \
        --pairs "$4" --messages "$5" --window "$6" --server-pid "$3" --timeout 300 |
        awk -v name="$1" '
            /^messages=/ { for (i = 1; i <= NF; i++) if ($i ~ /^rate=/) { sub("rate=", "", $i); rate = $i } }
            /^relay_ack_latency/ { p50 = $2; p99 = $4 }
            /^server_cpu=/ { split($2, a, "="); us = a[2]; sub("us", "", us) }
            END { printf "%s rate=%s us_per_msg=%s %s %s\n", name, rate, us, p50, p99 }'
}

for round in $(seq 1 "$ROUNDS"); do
    if [ $((round % 2)) -eq 1 ]; then order="im min"; else order="min im"; fi
    for side in $order; do
        if [ "$side" = im ]; then
            run "round=$round im-server " 3100 $im "$PAIRS" "$MESSAGES" "$WINDOW"
        else
            run "round=$round min_relay " 3101 $min "$PAIRS" "$MESSAGES" "$WINDOW"
        fi
    done
done | tee /tmp/relay_limit.txt
awk '
    function field(name,   i, kv) {
        for (i = 1; i <= NF; i++) if (index($i, name "=") == 1) { split($i, kv, "="); return kv[2] }
    }
    { split($1, r, "="); round = r[2] }
    / im-server / { im[round] = field("rate"); imus[round] = field("us_per_msg") }
    / min_relay / { mn[round] = field("rate"); mnus[round] = field("us_per_msg") }
    END {
        for (i = 1; i in im; i++)
            printf "round %d: throughput im-server / min_relay %.3f; CPU per message %.2f us / %.2f us (%.2fx)\n",
                i, im[i] / mn[i], imus[i], mnus[i], imus[i] / mnus[i]
    }
' /tmp/relay_limit.txt

echo "one message in flight (1 pair, 2000 messages, window 1):"
run "im-server " 3100 $im 1 2000 1
run "min_relay " 3101 $min 1 2000 1
