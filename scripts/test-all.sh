#!/usr/bin/env bash
# Runs every test of the project, installing what the tests need when it is
# missing (Rust components, the Cortex-M target, cargo-fuzz, mosquitto,
# qemu-system-arm, the ARM binutils, Java and Maven, PostgreSQL, promtool). `.ci/run` calls
# exactly this. Set LANYARD_FUZZ_SECONDS to change the fuzz smoke time.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS="${LANYARD_FUZZ_SECONDS:-20}"
step() { printf '\n==> %s\n' "$*"; }

step "toolchain: clippy, rustfmt, thumbv7em-none-eabihf, cargo-fuzz"
rustup component add clippy rustfmt >/dev/null 2>&1 || true
if ! rustup target list --installed | grep -qx thumbv7em-none-eabihf; then
    rustup target add thumbv7em-none-eabihf
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

step "Debian packages: mosquitto and its clients (MQTT tests), qemu-system-arm (STM32 firmware), binutils-arm-none-eabi (size report), Java and Maven (Kotlin bindings), openssl (certificates for the Python bindings' TLS test), PostgreSQL (twin hosts on one database)"
missing=()
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    missing+=(mosquitto)
fi
command -v qemu-system-arm >/dev/null 2>&1 || missing+=(qemu-system-arm)
command -v arm-none-eabi-size >/dev/null 2>&1 || missing+=(binutils-arm-none-eabi)
command -v mosquitto_sub >/dev/null 2>&1 || missing+=(mosquitto-clients)
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# PostgreSQL for the twin hosts sharing one database (each test starts a
# server of its own from these binaries).
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
if [ "${#missing[@]}" -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# promtool (checks the shipped alert rules) comes with Debian's prometheus;
# its recommends (exporters, a web UI) are not needed.
if ! command -v promtool >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

step "rustfmt"
cargo fmt --all -- --check
(cd fuzz && cargo fmt -- --check)

step "clippy (-D warnings)"
cargo clippy --workspace --all-targets -- -D warnings
# Without lanyard-core's optional capabilities (persistence, arrays,
# diagnostic commands), as the STM32 reference firmware builds it.
cargo clippy -p lanyard-core -p lanyard-nostd --no-default-features --all-targets -- -D warnings
# With firmware updates (off by default).
cargo clippy -p lanyard-core -p lanyard-nostd --features update --all-targets -- -D warnings

step "no_std, no allocator: lanyard-core and lanyard-nostd for thumbv7em-none-eabihf"
cargo build -p lanyard-core -p lanyard-nostd --target thumbv7em-none-eabihf
cargo build -p lanyard-core -p lanyard-nostd --no-default-features --features update --target thumbv7em-none-eabihf

step "Prometheus alert rules (deploy/prometheus): promtool check and unit tests"
promtool check rules deploy/prometheus/lanyard-alerts.yml
(cd deploy/prometheus && promtool test rules lanyard-alerts.test.yml)

step "unit, integration, property and doc tests (incl. the hex examples of docs/wire-format.md)"
cargo test --workspace
# lanyard-core without its optional capabilities: what the agent does
# instead (tests/capabilities.rs), and everything that does not need them.
cargo test -p lanyard-core --no-default-features
# Firmware updates on the device (the core's tests/update.rs, the flash
# slot's power cuts in lanyard-nostd's tests/update_slot.rs).
cargo test -p lanyard-core -p lanyard-nostd --features update

step "STM32 reference firmware (examples/stm32): build, size report, end to end in qemu"
(cd examples/stm32 && cargo fmt -- --check && cargo clippy --release -- -D warnings && cargo build --release)
firmware="$PWD/examples/stm32/target/thumbv7em-none-eabihf/release/lanyard-stm32"
baseline="$PWD/examples/stm32/target/thumbv7em-none-eabihf/release/baseline"
# The size baseline (the same board without Lanyard) must boot too, or the
# difference below would compare against a broken image.
booted=$(timeout 30 qemu-system-arm -machine netduinoplus2 -nographic -monitor none \
    -semihosting-config enable=on,target=native -serial null -kernel "$baseline")
echo "$booted"
grep -q "baseline: board up, led toggles=2" <<< "$booted"
# The issue's budget (32 KiB flash, 16 KiB static RAM): the report exits 1
# past it, so a change that grows the firmware over it fails here.
python3 scripts/size-report.py "$firmware" --baseline "$baseline" --budget-flash 32 --budget-ram 16
# What the capabilities left out of it would cost (built, not run).
(cd examples/stm32 && cargo build --release --features all-capabilities --target-dir target/all-capabilities)
echo "with every capability (--features all-capabilities):"
python3 scripts/size-report.py examples/stm32/target/all-capabilities/thumbv7em-none-eabihf/release/lanyard-stm32 | sed -n 2,3p
LANYARD_STM32_ELF="$firmware" cargo test -p lanyard-std --test qemu_stm32 -- --ignored --nocapture
# The board's telemetry as a serde struct (lanyard-core's typed state): what
# it costs, and that it runs the same scenario.
(cd examples/stm32 && cargo clippy --release --features serde --target-dir target/serde -- -D warnings \
    && cargo build --release --features serde --target-dir target/serde)
typed="$PWD/examples/stm32/target/serde/thumbv7em-none-eabihf/release/lanyard-stm32"
echo "with typed telemetry (--features serde):"
python3 scripts/size-report.py "$typed" | sed -n 2,3p
LANYARD_STM32_ELF="$typed" cargo test -p lanyard-std --test qemu_stm32 -- --ignored
# Firmware updates (--features update): three builds signed for a fleet key
# made here (0.1.0 runs first; 0.2.0 is a good update; 0.3.0 fails its
# self-test), as raw images, and the update and rollback in qemu.
updates="$PWD/target/stm32-update"
rm -rf "$updates" && mkdir -p "$updates"
cargo run -q -p lanyard-std --bin lanyard -- ota keygen --out "$updates/fleet"
export LANYARD_FLEET_KEY
LANYARD_FLEET_KEY=$(cat "$updates/fleet.pub")
(cd examples/stm32 && cargo clippy --release --features update --target-dir target/update -- -D warnings)
for build in 0.1.0 0.2.0 0.3.0-bad; do
    version=${build%-bad}
    self_test=pass
    [ "$build" != "$version" ] && self_test=fail
    (cd examples/stm32 && LANYARD_FIRMWARE_VERSION=$version LANYARD_SELF_TEST=$self_test \
        cargo build --release --features update --target-dir target/update)
    arm-none-eabi-objcopy -O binary \
        examples/stm32/target/update/thumbv7em-none-eabihf/release/lanyard-stm32 "$updates/$build.bin"
done
echo "with firmware updates (--features update), against the firmware without them:"
python3 scripts/size-report.py examples/stm32/target/update/thumbv7em-none-eabihf/release/lanyard-stm32 \
    --without "$firmware" --goal-added 12 | grep -E "^  (flash|RAM):|against|goal"
# The serial link's raw rate, which the update's download is set against.
cp examples/stm32/target/thumbv7em-none-eabihf/release/linkrate "$updates/linkrate.elf"
LANYARD_STM32_UPDATE="$updates" cargo test -p lanyard-std --test qemu_stm32_update -- --ignored --nocapture

step "Python bindings: the abi3 wheel (maturin, through pip), installed into a fresh virtual environment, then their tests there"
(cd bindings/python && cargo fmt -- --check && cargo clippy -- -D warnings)
# What users install is what is tested: the wheel, in an environment that
# has nothing else of this checkout.
wheels="$(mktemp -d)"
venv="$(mktemp -d)/venv"
python3 -m pip wheel -q --no-deps --wheel-dir "$wheels" ./bindings/python
ls "$wheels"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q "$wheels"/lanyard-*.whl "mypy==2.4.1"
# The app client's tests run a `lanyard twin` and a `lanyard device`.
cargo build -p lanyard-std --bin lanyard --example valve
(cd bindings/python && LANYARD_BIN="$PWD/../../target/debug/lanyard" \
    LANYARD_VALVE_BIN="$PWD/../../target/debug/examples/valve" \
    "$venv/bin/python" -m unittest discover -s tests -v)
# Types: the stub of the native part against the built module, and the
# package and the example under mypy --strict.
(cd /tmp && "$venv/bin/python" -m mypy.stubtest lanyard._lanyard)
"$venv/bin/python" -m mypy --strict bindings/python/python/lanyard examples/python/gateway.py examples/python/hello.py

step "Kotlin bindings: uniffi generates the sources, Maven compiles them, runs their tests (against mosquitto, lanyard twin and lanyard device) and installs the jar; the example project uses it by coordinate against lanyard demo"
bash scripts/test-kotlin.sh

step "fuzz smoke: ${FUZZ_SECONDS}s per target"
(
    cd fuzz
    export RUSTC_BOOTSTRAP=1
    for target in $(cargo fuzz list); do
        # New inputs go to a scratch corpus; the committed seeds stay as they are.
        scratch="$(mktemp -d)"
        log="$scratch/log"
        # Inputs up to the largest message Lanyard accepts (256 KiB), tried
        # at every length from the start (-len_control=0) rather than grown
        # slowly from libFuzzer's default 4 KiB.
        if ! cargo fuzz run "$target" "$scratch" "seeds/$target" -- \
            -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 \
            -max_len=262144 -len_control=0 >"$log" 2>&1; then
            tail -n 60 "$log" >&2
            echo "fuzz target $target failed: see fuzz/artifacts/$target" >&2
            exit 1
        fi
        echo "$target: $(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1)"
        rm -rf "$scratch"
    done
)

step "benchmark: shadow update + delta vs serde_json, CBOR vs AWS JSON size"
# The codecs only: no need to build the network runtime in release.
cargo bench -p lanyard-std --no-default-features --bench shadow -- --warm-up-time 1 --measurement-time 3

step "all tests passed"
