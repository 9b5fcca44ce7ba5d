#!/usr/bin/env bash
# The Kotlin bindings' tests: builds the native library and the Kotlin
# sources uniffi generates (bindings/kotlin/build-native.sh), runs the
# JUnit tests with Maven against a real mosquitto, `lanyard twin` and
# `lanyard device` (started by the tests), installs the jar (which carries
# the native library) into the local Maven repository, and runs the example
# project (examples/kotlin), which depends on it by coordinate, against a
# `lanyard demo`. Called by scripts/test-all.sh, which installs Java, Maven
# and mosquitto; run alone it needs them on the PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

cargo build -p lanyard-std --bin lanyard
lanyard_bin="$root/target/debug/lanyard"

(cd bindings/kotlin && cargo fmt -- --check && cargo clippy -- -D warnings)
bash bindings/kotlin/build-native.sh --debug

# Debian installs mosquitto in /usr/sbin, not always on the PATH.
mosquitto_bin="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
# No library path is set: the library loads from the jar's resources, as
# it does for users.
(cd bindings/kotlin && LANYARD_BIN="$lanyard_bin" MOSQUITTO_BIN="$mosquitto_bin" mvn -B -q install)

# The example, as a user runs it: by coordinate, against a demo.
demo_out="$(mktemp)"
"$lanyard_bin" demo --devices 3 --minutes 60 > "$demo_out" 2>&1 &
demo_pid=$!
trap 'kill "$demo_pid" 2>/dev/null || true; rm -f "$demo_out"' EXIT
# As a newcomer would: once the demo shows its devices running.
url=""
for _ in $(seq 1 300); do
    if grep -q 'ly-020000000000 <- register/accepted' "$demo_out"; then
        url="$(head -1 "$demo_out" | grep -o 'mqtt://[0-9.:]*' || true)"
        break
    fi
    sleep 0.1
done
[ -n "$url" ] || { echo "lanyard demo printed no broker:"; cat "$demo_out"; exit 1; }
out="$(cd examples/kotlin && timeout 300 mvn -B -q compile exec:java -Dexec.args="$url")"
echo "$out"
grep -q 'reported: Reported(device=ly-020000000000, state={.*greeting=Text(value=hello from Kotlin)' <<<"$out"
grep -q 'the shadow holds: Text(value=hello from Kotlin)' <<<"$out"
echo "examples/kotlin: ran against lanyard demo ($url)"
