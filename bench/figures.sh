#!/usr/bin/env bash
# Run every `tether bench` figure of docs/benchmarks.md, in the order the page lists them.
# Run from the repository's root after `.venv/bin/pip install -e '.[bench]'` and
# `.venv/bin/tether bench setup`, on a quiet machine. About 2 hours on 2 cores. Results:
# bench/results/figures/*.json, one file per command, with the runner's plots beside them; the
# last command draws them again into docs/images/bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/results/figures
mkdir -p "$out"
bench=".venv/bin/tether bench"
peers="tether,python-socketio,node-socketio"

$bench idle --connections 5000 --duration 20 --repeat 3 --targets tether,floor \
    --output "$out/idle-tcp.json"
$bench idle --connections 5000 --duration 20 --repeat 3 --transport ws --targets "$peers" \
    --output "$out/idle-ws.json"
$bench idle --mode cluster --gateways 2 --connections 30000 --duration 20 \
    --output "$out/idle-cluster-30000.json"
$bench direct --pairs 100 --rate 1000 --duration 10 --repeat 3 --targets tether,floor \
    --output "$out/direct-tcp.json"
$bench direct --pairs 100 --rate 2500 --duration 10 --repeat 3 --targets tether,floor \
    --output "$out/direct-tcp-2500.json"
$bench direct --pairs 100 --rate 1000 --duration 10 --repeat 3 --transport ws --targets "$peers" \
    --output "$out/direct-ws.json"
$bench direct --mode cluster --pairs 100 --rate 1000 --duration 10 --repeat 3 --transport ws \
    --targets "$peers" --output "$out/direct-cluster-ws.json"
$bench presence --mode cluster --repeat 3 --transport ws --targets "$peers" \
    --output "$out/presence-cluster-ws.json"
$bench storm --connections 2000 --repeat 3 --output "$out/storm.json"
$bench crash --repeat 3 --transport ws --targets "$peers" --output "$out/crash.json"
$bench group --members 10000 --messages 100 --rate 1 --repeat 3 --transport ws \
    --targets "$peers" --output "$out/group-ws.json"
$bench group --mode cluster --gateways 3 --members 10000 --messages 100 --rate 1 --repeat 3 \
    --transport ws --targets "$peers" --output "$out/group-cluster-ws.json"
$bench group --mode cluster --gateways 3 --members 10000 --messages 100 --rate 1 --repeat 3 \
    --output "$out/group-cluster-tcp.json"
$bench group --mode cluster --gateways 3 --member-gateways 2 --members 10000 --messages 30 \
    --rate 1 --transport ws --targets "$peers" --output "$out/group-cluster-2-of-3.json"
$bench idle --mode cluster --gateways 6 --connections 100000 --duration 20 \
    --output "$out/idle-cluster-100000.json"
$bench direct --pairs 100 --rate 1000 --duration 10 --profile --output "$out/direct-profile.json"
$bench direct --mode cluster --pairs 100 --rate 1000 --duration 10 --profile \
    --output "$out/direct-cluster-profile.json"
.venv/bin/tether bench plot "$out"/*.json --output-dir docs/images/bench
