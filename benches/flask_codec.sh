#!/usr/bin/env bash
# Makes a venv with Flask 3.1.3 and times Flask's cookie codec for comparison
# with `cargo bench -p hipflask --bench codec`.
set -euo pipefail
venv="${FLASK_VENV:-target/flask-venv}"
[ -x "$venv/bin/python" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q flask==3.1.3; }
exec "$venv/bin/python" "$(dirname "$0")/flask_codec.py"
