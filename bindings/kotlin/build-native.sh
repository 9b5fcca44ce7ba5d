#!/usr/bin/env bash
# Builds what the Maven build packages: the native library (linux-x86_64)
# and the Kotlin sources uniffi generates from it.
#
#   bash bindings/kotlin/build-native.sh            # release build
#   bash bindings/kotlin/build-native.sh --debug    # what the tests use
#
# then `mvn -f bindings/kotlin/pom.xml install` packages the jar, with the
# library inside it where JNA finds it (linux-x86-64/), into the local
# Maven repository as dev.lanyard:lanyard-kotlin.
set -euo pipefail
cd "$(dirname "$0")"

profile=release
if [ "${1:-}" = "--debug" ]; then profile=debug; fi
if [ "$profile" = release ]; then cargo build --release; else cargo build; fi
built="target/$profile/liblanyard_kotlin.so"

rm -rf target/generated-kotlin
# uniffi reads the interface from the built library's metadata: the
# unstripped one.
./target/"$profile"/uniffi-bindgen generate --library "$built" \
    --language kotlin --no-format --out-dir target/generated-kotlin

# The jar carries the library without its debug information (a tenth of
# the size).
mkdir -p target/native
strip --strip-debug -o target/native/liblanyard_kotlin.so "$built"
ls -l target/native/liblanyard_kotlin.so | awk '{printf "native library for the jar: %.1f MB\n", $5/1e6}'
