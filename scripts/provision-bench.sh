#!/usr/bin/env bash
# Provisioning by claim at fleet scale: a thousand devices (or
# LANYARD_PROVISION_DEVICES) each make a key pair and get a certificate
# from the provisioning service through mosquitto, 50 at a time. Prints the
# time taken. Needs mosquitto (scripts/test-all.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release -p lanyard-std --test credentials a_thousand_devices_provision_by_claim \
    -- --ignored --nocapture
