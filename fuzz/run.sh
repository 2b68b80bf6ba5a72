#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 600), two at a time, with
# corpora seeded from the spec vectors, and prints each target's final
# executions and coverage. Needs cargo-fuzz; RUSTC_BOOTSTRAP lets the stable
# toolchain accept the sanitizer flags. A crash stops with the input saved
# under artifacts/; each one becomes a named regression test.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-600}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
python3 - <<'PY'
import json, os
v = json.load(open("../crates/hipflask/tests/fixtures/flask-vectors.json"))
def seed(target, name, data):
    os.makedirs(f"corpus/{target}", exist_ok=True)
    with open(f"corpus/{target}/{name}", "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
for i, c in enumerate(v["cookie_vectors"]):
    seed("cookie_decode", f"v{i}", c["cookie"])
    seed("cookie_header", f"v{i}", "a=1; session=" + c["cookie"])
    if c.get("payload_json"):
        seed("signed_payload", f"v{i}", b"\x00" + c["payload_json"].encode())
        seed("tagged_json", f"v{i}", c["payload_json"])
for t in v["tagged_json_vectors"]:
    seed("tagged_json", "t-" + t["id"], t["json"])
for r in v["flask_session"]["redis"]:
    seed("msgpack", r["id"], bytes.fromhex(r["redis_value_hex"]))
    seed("session_id", r["id"], r["sid"])
for i, s in enumerate(v["flask_session"]["signed_sid"]):
    seed("session_id", f"signed{i}", s["cookie_value"])
# Session files: one record, appended ones with a torn tail, the first format.
for i, t in enumerate(v["tagged_json_vectors"][:8]):
    one = f"hipflask-session 2 1700000000 1800000000 {len(t['json'].encode())}\n{t['json']}\n"
    seed("session_file", f"one{i}", one)
    seed("session_file", f"torn{i}", one + one + one[: len(one) // 2])
    seed("session_file", f"v1-{i}", f"hipflask-session 1 1700000000 1800000000\n{t['json']}")
# Redis answers: a load's GET and PTTL (found, missing), the merge script's.
for r in v["flask_session"]["redis"]:
    value = bytes.fromhex(r["redis_value_hex"])
    seed("redis_reply", r["id"], b"$%d\r\n" % len(value) + value + b"\r\n:2678400000\r\n")
seed("redis_reply", "missing", b"$-1\r\n:-2\r\n")
seed("redis_reply", "merged", b"*2\r\n:1\r\n$7\r\n\x81\xa1a\xa3abc\r\n")
seed("redis_reply", "noscript", b"-NOSCRIPT No matching script\r\n")
seed("redis_reply", "resp3", b"%1\r\n+a\r\n>2\r\n$10\r\ninvalidate\r\n_\r\n#t\r\n")
PY
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O >/dev/null
mkdir -p logs
run() {
  cargo fuzz run -O "$1" -- -max_total_time="$seconds" -print_final_stats=1 >"logs/$1.log" 2>&1 || { echo "$1: CRASH, see logs/$1.log and artifacts/$1"; return 1; }
  printf '%s: %s runs, %s\n' "$1" "$(grep -oP 'stat::number_of_executed_units:\s*\K\d+' "logs/$1.log")" \
    "$(grep -oP 'cov: \d+ ft: \d+' "logs/$1.log" | tail -1)"
}
status=0
for pair in "cookie_decode signed_payload" "tagged_json msgpack" "session_id cookie_header" "session_file redis_reply"; do
  set -- $pair
  run "$1" & a=$!
  if [ -n "${2:-}" ]; then
    run "$2" & b=$!
    wait $b || status=1
  fi
  wait $a || status=1
done
exit $status
