#!/usr/bin/env bash
# The twin host throughput benchmark: updates per second through
# TwinHost::handle in process, then end to end through mosquitto on
# loopback at rising load until latency bends. Prints figures; not part of
# the test command. LANYARD_TWIN_BENCH_DEVICES (200) and
# LANYARD_TWIN_BENCH_RATES (1000,4000,...,32000) change the run; with
# LANYARD_TWIN_BENCH_STORE=dir the host keeps files instead of SQLite.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
fi
ulimit -n "$(ulimit -Hn)"
cargo bench -p lanyard-std --bench twin
