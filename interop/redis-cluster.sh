#!/usr/bin/env bash
# Starts a 3-master Redis Cluster on free loopback ports from the installed
# redis-server and prints `PIDS=...` and `REDIS_CLUSTER_URLS=...` lines for
# .ci/run to eval; the caller stops it by PID. Prints nothing when
# redis-server or redis-cli is missing.
set -euo pipefail
command -v redis-server >/dev/null && command -v redis-cli >/dev/null || exit 0
dir="$(mktemp -d /tmp/hipflask-cluster-XXXXXX)"
# Ports p and p+10000 (the cluster bus) must both be free.
ports="$(python3 - <<'PY'
import random, socket
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); return True
    except OSError:
        return False
    finally:
        s.close()
found = []
while len(found) < 3:
    p = random.randint(20000, 29999)
    if p not in found and free(p) and free(p + 10000):
        found.append(p)
print(" ".join(map(str, found)))
PY
)"
pids=""
urls=""
for p in $ports; do
  redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes --cluster-config-file "nodes-$p.conf" \
    --dir "$dir" --save "" --appendonly no --daemonize no >"$dir/$p.log" 2>&1 &
  pids="$pids $!"
  urls="${urls:+$urls,}redis://127.0.0.1:$p"
done
for p in $ports; do
  for _ in $(seq 50); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
done
redis-cli --cluster create $(for p in $ports; do printf '127.0.0.1:%s ' "$p"; done) --cluster-replicas 0 --cluster-yes >"$dir/create.log" 2>&1
first="${ports%% *}"
for _ in $(seq 100); do
  redis-cli -p "$first" cluster info 2>/dev/null | grep -q 'cluster_state:ok' && break
  sleep 0.1
done
echo "PIDS=\"$pids\""
echo "REDIS_CLUSTER_URLS=$urls"
