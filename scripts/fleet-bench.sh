#!/usr/bin/env bash
# The fleet benchmark: 1,000 and 10,000 simulated devices against mosquitto
# on loopback (LANYARD_FLEET_SIZES=1000,10000 by default). Prints figures;
# not part of the test command (it takes minutes and most of the machine).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
fi
# Every device is a socket on both ends.
ulimit -n "$(ulimit -Hn)"
cargo bench -p lanyard-std --bench fleet
