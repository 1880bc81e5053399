#!/usr/bin/env bash
# CPU per proxied request with metrics on vs off (`--no-metrics`), both without the access log:
# bench/ab.sh's paired, interleaved rounds (its output; ROUNDS, DURATION and CONNS as there).
#
#   bash bench/metrics_overhead.sh               # ROUNDS=5 DURATION=8s
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIGS=$'off||--no-access-log --no-metrics\non||--no-access-log' ROUNDS=${ROUNDS:-5} DURATION=${DURATION:-8s} \
  exec bash bench/ab.sh
