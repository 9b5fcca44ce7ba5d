#!/usr/bin/env bash
# The fleet benchmark: 1,000 and 10,000 simulated devices against mosquitto
# on loopback (LANYARD_FLEET_SIZES=1000,10000 by default), each fleet then
# rebooted at once; the largest again on two twin hosts sharing the
# subscription and a PostgreSQL database this script starts. Prints
# figures; not part of the test command (it takes minutes and most of the
# machine).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    missing+=(mosquitto)
fi
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
if [ "${#missing[@]}" -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Every device is a socket on both ends.
ulimit -n "$(ulimit -Hn)"

# A PostgreSQL server of its own, as the `postgres` user when run as root.
pgbin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
pgdir="$(mktemp -d)"
as_pg=()
if [ "$(id -u)" = 0 ]; then
    chown -R postgres:postgres "$pgdir"
    as_pg=(runuser -u postgres --)
fi
"${as_pg[@]}" "$pgbin/initdb" -A trust -U postgres --no-sync -D "$pgdir/data" >/dev/null
pgport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"${as_pg[@]}" "$pgbin/postgres" -D "$pgdir/data" -p "$pgport" -k "$pgdir" \
    -c listen_addresses=127.0.0.1 -c max_connections=50 >"$pgdir/log" 2>&1 &
pgpid=$!
trap 'kill "$pgpid" 2>/dev/null || true; wait "$pgpid" 2>/dev/null || true; rm -rf "$pgdir"' EXIT
until "$pgbin/pg_isready" -h 127.0.0.1 -p "$pgport" >/dev/null 2>&1; do sleep 0.2; done

LANYARD_FLEET_PG="host=127.0.0.1 port=$pgport user=postgres dbname=postgres" \
    cargo bench -p lanyard-std --bench fleet
