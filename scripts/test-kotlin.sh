#!/usr/bin/env bash
# The Kotlin bindings' tests: builds the library (bindings/kotlin), has
# uniffi generate its Kotlin sources, and runs the JUnit tests with Maven
# against a real mosquitto, `lanyard twin` and `lanyard device` (started by
# the tests). Called by scripts/test-all.sh, which installs Java, Maven and
# mosquitto; run alone it needs them on the PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -p lanyard-std --bin lanyard
lanyard_bin="$PWD/target/debug/lanyard"

cd bindings/kotlin
cargo fmt -- --check
cargo clippy -- -D warnings
cargo build
rm -rf target/generated-kotlin
./target/debug/uniffi-bindgen generate --library target/debug/liblanyard_kotlin.so \
    --language kotlin --no-format --out-dir target/generated-kotlin
# Debian installs mosquitto in /usr/sbin, not always on the PATH.
mosquitto_bin="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
LANYARD_BIN="$lanyard_bin" MOSQUITTO_BIN="$mosquitto_bin" mvn -B -q test -Djna.library.path="$PWD/target/debug"
