#!/usr/bin/env bash
# Run every `tether bench` figure of docs/benchmarks.md, in the order the page lists them.
# Run from the repository's root after `.venv/bin/tether bench setup`. About 45 minutes on
# 2 cores. Results: bench/results/figures/*.json, one file per command.
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
