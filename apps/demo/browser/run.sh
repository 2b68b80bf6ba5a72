#!/usr/bin/env bash
# The demo's browser test: installs Debian's Chromium when it is missing
# (skipping with a reason when it cannot be installed), starts the demo on a
# spare loopback port, drives it with test.mjs, and stops it by PID.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"

if ! command -v chromium >/dev/null 2>&1; then
  echo "browser test: installing Debian's chromium"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/tmp/hipflask-chromium-install.log 2>&1; then
    echo "skipped: browser test: chromium could not be installed (see /tmp/hipflask-chromium-install.log)"
    exit 0
  fi
fi
if ! command -v node >/dev/null 2>&1; then
  echo "skipped: browser test: node is not installed"
  exit 0
fi

(cd "$here" && npm ci --no-audit --no-fund --silent)
cargo build -q -p hipflask-demo --manifest-path "$root/Cargo.toml"
target_dir="$(cargo metadata --format-version 1 --no-deps --manifest-path "$root/Cargo.toml" | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
SECRET_KEY="browser-test-$$" "$target_dir/debug/hipflask-demo" --bind "127.0.0.1:$port" >/tmp/hipflask-demo-browser.log 2>&1 &
demo_pid=$!
trap 'kill "$demo_pid" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/bench/none', timeout=1)" 2>/dev/null; then break; fi
  sleep 0.1
done

BASE_URL="http://127.0.0.1:$port" LIFETIME=2678400 SCREENSHOT="$root/docs/demo-index.png" \
  node "$here/test.mjs"
