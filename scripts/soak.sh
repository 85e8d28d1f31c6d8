#!/usr/bin/env bash
# `make soak`: SOAK_S seconds (default 600) of mixed traffic, client hang-ups, bad input
# and engine kills through the router against mock engines (bench/soak.rs, release
# build); prints the answers by kind, every unexpected one, and the router's RSS at
# start, after warm-up and at the end. Fails on an unexpected answer or >= 5% growth.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --examples --bins
cargo bench --bench soak
