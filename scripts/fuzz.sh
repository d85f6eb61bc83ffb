#!/usr/bin/env bash
# Run the atheris harness of the frame decoders (fuzz/fuzz_decoders.py) for a bounded time.
#
#   scripts/fuzz.sh                  short run: 20 s on a temporary corpus, like the CI smoke test
#   scripts/fuzz.sh long [SECONDS]   long run: default 3600 s, corpus kept in fuzz/corpus/
#
# Arguments after the mode (and SECONDS) go to libFuzzer, for example -seed=1 or -max_len=8192.
# Crash inputs are written to fuzz/crashes/. Reproduce one with
#   .venv/bin/python fuzz/fuzz_decoders.py fuzz/crashes/crash-<sha1>
# PYTHON selects the interpreter (default: .venv/bin/python), which needs atheris installed.
set -euo pipefail
cd "$(dirname "$0")/.."

python="${PYTHON:-.venv/bin/python}"
mode="${1:-short}"
[[ $# -gt 0 ]] && shift

case "$mode" in
    short)
        seconds=20
        corpus="$(mktemp -d)"
        trap 'rm -rf "$corpus"' EXIT
        ;;
    long)
        seconds=3600
        if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then
            seconds="$1"
            shift
        fi
        corpus=fuzz/corpus
        mkdir -p "$corpus"
        ;;
    *)
        echo "usage: $0 [short | long [SECONDS]] [libFuzzer flags...]" >&2
        exit 2
        ;;
esac

if ! "$python" -c 'import atheris' 2>/dev/null; then
    echo "atheris is not installed for $python; run: $python -m pip install atheris" >&2
    exit 2
fi

mkdir -p fuzz/crashes
"$python" fuzz/fuzz_decoders.py \
    -max_total_time="$seconds" \
    -artifact_prefix=fuzz/crashes/ \
    -print_final_stats=1 \
    "$@" \
    "$corpus"
