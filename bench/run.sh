#!/usr/bin/env bash
# HTTP benchmarks: hipflask's demo on every backend against axum, tower-sessions, actix-session
# and Flask, side by side. Installs wrk and valgrind when absent, builds the release demo and the peers
# (bench/ is a workspace of its own, so CI never compiles the peers), makes a venv with Flask,
# Flask-Session (Redis, files, SQLAlchemy), gunicorn and matplotlib, then runs bench/run.py, which writes
# docs/BENCHMARKS.md and docs/benchmarks.png. Arguments go to run.py (--seconds, --only, --skip).
# Needs PostgreSQL and MariaDB for those rows (POSTGRES_URL, MYSQL_URL); starts its own Redis.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
if ! command -v wrk >/dev/null || ! command -v valgrind >/dev/null; then
  apt-get update -qq && apt-get install -y -qq wrk valgrind
fi
target="$(cargo metadata --format-version 1 --no-deps --manifest-path "$root/Cargo.toml" | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
cargo build -q --release -p hipflask-demo --manifest-path "$root/Cargo.toml"
# The peers share the main target directory, so tokio, hyper and axum are built once.
CARGO_TARGET_DIR="$target" cargo build -q --release --manifest-path "$here/Cargo.toml"
venv="$target/bench-venv"
if [ ! -x "$venv/bin/gunicorn" ] || ! "$venv/bin/python" -c 'import flask_session, redis, matplotlib, cachelib, flask_sqlalchemy, psycopg2, pymysql' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q flask==3.1.3 flask-session==0.8.0 redis==5.2.1 gunicorn==23.0.0 matplotlib==3.9.2 \
    cachelib==0.13.0 flask-sqlalchemy==3.1.1 sqlalchemy==2.0.36 psycopg2-binary==2.9.10 pymysql==1.1.1
fi
exec "$venv/bin/python" "$here/run.py" --target "$target" --venv "$venv" "$@"
