#!/usr/bin/env bash
# Flask + Flask-Session and the hipflask demo on one Redis (REDIS_URL):
# makes a venv with pinned Flask packages, starts the demo on a spare
# loopback port, runs flask_session_interop.py, stops the demo by PID.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
if [ -z "${REDIS_URL:-}" ]; then
  echo "skipped: set REDIS_URL"
  exit 0
fi
venv="$root/target/flask-venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import flask_session, redis' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q flask==3.1.3 flask-session==0.8.0 redis==5.2.1
fi
cargo build -q -p hipflask-demo --manifest-path "$root/Cargo.toml"
target_dir="$(cargo metadata --format-version 1 --no-deps --manifest-path "$root/Cargo.toml" | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export SECRET_KEY="interop-$$" PREFIX="interop-$$-$RANDOM:"
SESSION_TYPE=redis SESSION_REDIS="$REDIS_URL" SESSION_KEY_PREFIX="$PREFIX" \
  "$target_dir/debug/hipflask-demo" --bind "127.0.0.1:$port" >/tmp/hipflask-demo-interop.log 2>&1 &
demo_pid=$!
trap 'kill "$demo_pid" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/bench/none', timeout=1)" 2>/dev/null; then break; fi
  sleep 0.1
done
DEMO_URL="http://127.0.0.1:$port" "$venv/bin/python" "$here/flask_session_interop.py"
