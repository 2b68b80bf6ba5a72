#!/usr/bin/env bash
# Two demo instances on one store, and a store outage (see instances.py).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cargo build -q -p hipflask-demo --manifest-path "$root/Cargo.toml"
target_dir="$(cargo metadata --format-version 1 --no-deps --manifest-path "$root/Cargo.toml" | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
DEMO_BIN="$target_dir/debug/hipflask-demo" python3 "$root/interop/instances.py"
