"""Redis' own user-space instructions per HTTP write of the demo, counted with callgrind.

The HTTP benchmark's Redis CPU per request moves with the machine's neighbours by more than a
change to the save script saves; this count does not. For each demo binary given (an older
build beside the current one, say) and each of uncached and local-cache mode, it starts a
private `redis-server` under callgrind, seeds sessions through the demo, sends warm-up writes,
zeroes the counters, sends N writes over eight keep-alive connections and reads the total.

    python3 bench/redis_instructions.py target/release/hipflask-demo /tmp/demo-before
"""

import argparse
import glob
import http.client
import os
import subprocess
import tempfile
import threading
import time

from run import Server, free_port

CONNECTIONS = 8
SESSIONS = 200


def total_instructions(dump):
    with open(dump) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"{dump}: no totals line")


def writes(port, cookies, first, n):
    conn = http.client.HTTPConnection("127.0.0.1", port)
    for i in range(n):
        conn.request("GET", "/bench/write", headers={"Cookie": cookies[(first + i) % len(cookies)]})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"/bench/write answered {resp.status}")
    conn.close()


def count(binary, cache, n, tmp):
    """Redis instructions per write for one demo binary; cache is the local cache's size (0: none)."""
    dumps = tempfile.mkdtemp(dir=tmp)
    redis_port = free_port()
    redis = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={dumps}/cg.%p", "redis-server",
         "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"SECRET_KEY": "bench-secret", "RUST_LOG": "error", "SESSION_CONFLICTS": "reject",
           "SESSION_TYPE": "redis", "SESSION_REDIS": f"redis://127.0.0.1:{redis_port}",
           "SESSION_REDIS_LOCAL_CACHE": str(cache)}
    demo = Server("demo", "demo", [binary, "--bind", "127.0.0.1:{port}"], env)
    try:
        time.sleep(3)  # valgrind's start
        demo.start()
        http_port = demo.port
        cookies = demo.seed(SESSIONS)
        writes(http_port, cookies, 0, SESSIONS)  # loads the script, fills the caches
        subprocess.run(["callgrind_control", "-z", str(redis.pid)], check=True, capture_output=True)
        per = n // CONNECTIONS
        threads = [threading.Thread(target=writes, args=(http_port, cookies, k * 25, per)) for k in range(CONNECTIONS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        subprocess.run(["callgrind_control", "-d", str(redis.pid)], check=True, capture_output=True)
        dump = max(glob.glob(f"{dumps}/cg.*"), key=os.path.getmtime)
        return total_instructions(dump) / (per * CONNECTIONS)
    finally:
        demo.stop()
        redis.terminate()
        redis.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("binaries", nargs="+", help="hipflask-demo release binaries to compare")
    ap.add_argument("--writes", type=int, default=2000, help="writes counted per binary and mode")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for binary in args.binaries:
            for cache in (0, 200_000):
                mode = "local cache" if cache else "no cache"
                print(f"{binary}  {mode:11}  {count(binary, cache, args.writes, tmp):8.0f} Redis instructions per write",
                      flush=True)


if __name__ == "__main__":
    main()
