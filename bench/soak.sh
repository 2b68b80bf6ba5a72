#!/usr/bin/env bash
# Soak test: the release demo driven for 10 minutes per backend (cookie, SQLite, Redis) with
# 100,000 distinct sessions, every answer checked. Writes docs/SOAK.md. Arguments go to
# bench/soak.py (--minutes, --sessions, --backends). Starts its own redis-server.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
target="$(cargo metadata --format-version 1 --no-deps --manifest-path "$root/Cargo.toml" | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
cargo build -q --release -p hipflask-demo --manifest-path "$root/Cargo.toml"
exec taskset -c 1 python3 "$here/soak.py" --target "$target" "$@"
