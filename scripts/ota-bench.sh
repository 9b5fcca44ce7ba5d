#!/usr/bin/env bash
# Firmware update throughput: a 256 KiB image moved through mosquitto as an
# update (1 KiB and 4 KiB blocks), against the same bytes published raw
# between two clients. Needs mosquitto (scripts/test-all.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release -p lanyard-std --test ota update_throughput_against_the_raw_link \
    -- --ignored --nocapture
