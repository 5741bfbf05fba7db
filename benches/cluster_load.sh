#!/usr/bin/env bash
# One node against two nodes over NATS, in one run on this machine: the same direct
# load (examples/im_load.rs), where with two nodes every sender is on node a and
# every receiver on node b, so each message crosses NATS once (a request to b and
# its answer). Then one message in flight, for the ACK latency of one NATS hop.
# The same again with --ack-on-receipt on every server (a second NATS, a second pair
# of nodes), where the sender's ACK is the receiver's, crossing back from node b.
#
#   bash benches/cluster_load.sh            # ROUNDS=3 PAIRS=50 MESSAGES=2000 WINDOW=8
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
PAIRS=${PAIRS:-50}
MESSAGES=${MESSAGES:-2000}
WINDOW=${WINDOW:-8}

cargo build --release --features cluster --bin im-server --example im_load
load=target/release/examples/im_load
server=target/release/im-server
flags=(--dialect mobileimsdk-v6 --rate-limit 0 --user-rate-limit 0 --store memory
    --log-level warn)

tmp=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$tmp"' EXIT
nats-server -js -a 127.0.0.1 -p 4299 -sd "$tmp/relay" >/dev/null 2>&1 &
pids+=($!)
nats-server -js -a 127.0.0.1 -p 4298 -sd "$tmp/receipt" >/dev/null 2>&1 &
pids+=($!)
sleep 0.5
"$server" --listen 127.0.0.1:3120 "${flags[@]}" &
pids+=($!)
"$server" --listen 127.0.0.1:3121 "${flags[@]}" --cluster nats://127.0.0.1:4299 --node-id a &
pids+=($!)
"$server" --listen 127.0.0.1:3122 "${flags[@]}" --cluster nats://127.0.0.1:4299 --node-id b &
pids+=($!)
"$server" --listen 127.0.0.1:3130 "${flags[@]}" --ack-on-receipt &
pids+=($!)
"$server" --listen 127.0.0.1:3131 "${flags[@]}" --ack-on-receipt \
    --cluster nats://127.0.0.1:4298 --node-id a &
pids+=($!)
"$server" --listen 127.0.0.1:3132 "${flags[@]}" --ack-on-receipt \
    --cluster nats://127.0.0.1:4298 --node-id b &
pids+=($!)
sleep 1

run() { # name pairs messages window url [receiver-url]
    local extra=()
    if [ -n "${6:-}" ]; then extra=(--receiver-url "$6"); fi
    $load --url "$5" "${extra[@]}" --dialect mobileimsdk-v6 --pairs "$2" --messages "$3" \
        --window "$4" --timeout 300 |
        awk -v name="$1" '
            /^messages=/ { for (i = 1; i <= NF; i++) if ($i ~ /^rate=/) { sub("rate=", "", $i); rate = $i } }
            /^relay_ack_latency/ { p50 = $2; p99 = $4 }
            END { printf "%s rate=%s %s %s\n", name, rate, p50, p99 }'
}

one=ws://127.0.0.1:3120/websocket
a=ws://127.0.0.1:3121/websocket
b=ws://127.0.0.1:3122/websocket
r_one=ws://127.0.0.1:3130/websocket
r_a=ws://127.0.0.1:3131/websocket
r_b=ws://127.0.0.1:3132/websocket
for round in $(seq 1 "$ROUNDS"); do
    echo "round=$round $(run one-node "$PAIRS" "$MESSAGES" "$WINDOW" "$one")"
    echo "round=$round $(run two-nodes "$PAIRS" "$MESSAGES" "$WINDOW" "$a" "$b")"
    echo "round=$round $(run one-node-receipt "$PAIRS" "$MESSAGES" "$WINDOW" "$r_one")"
    echo "round=$round $(run two-nodes-receipt "$PAIRS" "$MESSAGES" "$WINDOW" "$r_a" "$r_b")"
done
echo "one message in flight (1 pair, 2000 messages, window 1):"
run one-node 1 2000 1 "$one"
run two-nodes 1 2000 1 "$a" "$b"
run one-node-receipt 1 2000 1 "$r_one"
run two-nodes-receipt 1 2000 1 "$r_a" "$r_b"
