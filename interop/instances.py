"""Two demo processes on one store, and a store that goes down and comes back.

Drives the real hipflask-demo binary (DEMO_BIN) over HTTP on loopback:
- on Redis (REDIS_URL), also with both instances keeping a local cache of
  sessions, and on PostgreSQL (POSTGRES_URL): two instances, one client
  alternating between them, nothing lost, logout on one is logout on both;
- a redis-server and a PostgreSQL of its own on spare ports (never the
  shared ones), each stopped by PID while the demo runs and restarted: 503
  while it is down, recovery without restarting the demo, the session intact;
  with the Redis local cache on, a change made in Redis after the restart is
  still seen (the cache was emptied and tracking turned back on).
Python's standard library only.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

DEMO = os.environ["DEMO_BIN"]
results = []


def check(name, got, want):
    ok = got == want
    results.append(ok)
    print(("ok   " if ok else "FAIL ") + f"{name}: got {got!r}, want {want!r}", flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_until_up(url, seconds=10):
    end = time.time() + seconds
    while time.time() < end:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def start_demo(env):
    port = free_port()
    full = dict(os.environ, SECRET_KEY="instances-secret", **env)
    proc = subprocess.Popen([DEMO, "--bind", f"127.0.0.1:{port}"], env=full,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    wait_until_up(base + "/bench/none")
    return proc, base


class Client:
    """One browser: keeps the session cookie, whichever instance it talks to."""

    def __init__(self):
        self.cookie = None

    def request(self, url, method="GET", data=None):
        headers = {"Cookie": f"session={self.cookie}"} if self.cookie else {}
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                status, body, set_cookie = r.status, r.read().decode(), r.headers.get("Set-Cookie")
        except urllib.error.HTTPError as e:
            status, body, set_cookie = e.code, e.read().decode(), e.headers.get("Set-Cookie")
        if set_cookie and set_cookie.startswith("session="):
            value = set_cookie.split(";")[0][len("session="):]
            self.cookie = value or None
        return status, body


def two_instances(label, env):
    a, url_a = start_demo(env)
    b, url_b = start_demo(env)
    try:
        c = Client()
        c.request(url_a + "/bench/seed")
        last = None
        for i in range(20):
            last = c.request((url_a, url_b)[i % 2] + "/bench/write")[1]
        check(f"{label}: 20 writes alternating between two instances", last, "21")
        check(f"{label}: both instances read the same", (c.request(url_a + "/bench/read")[1], c.request(url_b + "/bench/read")[1]), ("21", "21"))
        for i in range(10):
            c.request((url_a, url_b)[i % 2] + f"/api/session/k{i}", "PUT", str(i).encode())
        body = c.request(url_b + "/api/session")[1]
        check(f"{label}: keys set through both instances are all kept", all(f'"k{i}":{i}' in body for i in range(10)), True)
        old_cookie = c.cookie
        status, _ = c.request(url_a + "/api/session", "DELETE")
        check(f"{label}: logout (clear) on one instance", status, 204)
        stale = Client()
        stale.cookie = old_cookie
        body = stale.request(url_b + "/api/session")[1]
        check(f"{label}: the old cookie opens nothing on the other instance", '"k0"' in body or '"visits"' in body, False)
    finally:
        for p in (a, b):
            p.terminate()
            p.wait()


def outage(label, url, stop, start):
    """Writes, stops the store with `stop()`, expects 503, restarts it with
    `start()` and expects the app to recover with the session intact."""
    c = Client()
    c.request(url + "/bench/seed")
    check(f"{label}: before the outage", c.request(url + "/bench/write")[1], "2")
    stop()
    statuses = {c.request(url + "/bench/write")[0] for _ in range(3)}
    check(f"{label}: 503 while the store is down", statuses, {503})
    check(f"{label}: pages without the session still work", c.request(url + "/bench/none"), (200, "ok"))
    start()
    ok = None
    for _ in range(50):
        status, body = c.request(url + "/bench/read")
        if status == 200:
            ok = body
            break
        time.sleep(0.2)
    check(f"{label}: recovered without restarting the app, session intact", ok, "2")
    check(f"{label}: and writable again", c.request(url + "/bench/write")[1], "3")
    return c


def start_redis(port, data_dir):
    server = shutil.which("redis-server")
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--dir", data_dir,
                             "--appendonly", "yes", "--save", ""], stdout=subprocess.DEVNULL)
    end = time.time() + 10
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def redis_set(port, key, value):
    """SET key value EX 600 on the Redis at `port`, as another process would."""
    parts = [b"SET", key.encode(), value, b"EX", b"600"]
    command = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(command)
        s.recv(64)


def redis_fault(local_cache):
    if not shutil.which("redis-server"):
        print("skipped: fault test needs redis-server")
        return
    label = "redis fault, local cache" if local_cache else "redis fault"
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="hipflask-fault-")
    redis = start_redis(port, data_dir)
    env = {"SESSION_TYPE": "redis", "SESSION_REDIS": f"redis://127.0.0.1:{port}"}
    if local_cache:
        env["SESSION_REDIS_LOCAL_CACHE"] = "1000"
    demo, url = start_demo(env)
    procs = {"redis": redis}
    try:

        def stop():
            procs["redis"].terminate()
            procs["redis"].wait()

        def start():
            procs["redis"] = start_redis(port, data_dir)

        client = outage(label, url, stop, start)
        if local_cache:
            # Flask-Session's bytes for {'visits': 9}, written behind the demo's back.
            redis_set(port, "session:" + client.cookie, b"\x81\xa6visits\x09")
            seen = None
            for _ in range(50):
                seen = client.request(url + "/bench/read")[1]
                if seen == "9":
                    break
                time.sleep(0.05)
            check(f"{label}: a change made in Redis after the restart is seen", seen, "9")
    finally:
        demo.terminate()
        demo.wait()
        procs["redis"].terminate()
        procs["redis"].wait()
        shutil.rmtree(data_dir, ignore_errors=True)


def pg_bin(name):
    import glob
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def as_postgres(args):
    # PostgreSQL refuses to run as root; run as its own user when we are root.
    return (["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []) + args


def start_postgres(data_dir, port):
    subprocess.run(as_postgres([pg_bin("pg_ctl"), "-D", data_dir, "-l", f"{data_dir}/log", "-w", "-o",
                                f"-p {port} -k {data_dir} -c listen_addresses=127.0.0.1", "start"]),
                   check=True, stdout=subprocess.DEVNULL)
    with open(f"{data_dir}/postmaster.pid") as f:
        return int(f.readline())


def postgres_fault():
    if not pg_bin("initdb"):
        print("skipped: fault test needs PostgreSQL's initdb")
        return
    data_dir = tempfile.mkdtemp(prefix="hipflask-pgfault-")
    if os.geteuid() == 0:
        shutil.chown(data_dir, "postgres", "postgres")
    subprocess.run(as_postgres([pg_bin("initdb"), "-D", data_dir, "-A", "trust", "-U", "postgres"]),
                   check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    pid = start_postgres(data_dir, port)
    demo, url = start_demo({"SESSION_TYPE": "postgresql",
                            "SESSION_DATABASE_URL": f"postgres://postgres@127.0.0.1:{port}/postgres"})
    pids = {"pg": pid}
    try:

        def stop():
            os.kill(pids["pg"], 2)  # SIGINT: PostgreSQL's fast shutdown, by PID
            for _ in range(100):
                if not os.path.exists(f"{data_dir}/postmaster.pid"):
                    break
                time.sleep(0.1)

        def start():
            pids["pg"] = start_postgres(data_dir, port)

        outage("pg fault", url, stop, start)
    finally:
        demo.terminate()
        demo.wait()
        try:
            os.kill(pids["pg"], 2)
        except ProcessLookupError:
            pass
        time.sleep(0.5)
        shutil.rmtree(data_dir, ignore_errors=True)


if os.environ.get("REDIS_URL"):
    two_instances("redis", {"SESSION_TYPE": "redis", "SESSION_REDIS": os.environ["REDIS_URL"],
                            "SESSION_KEY_PREFIX": f"instances-{os.getpid()}:"})
    # Strict, as without a cache: each instance reads Redis' invalidations
    # before serving a cached session, so it never answers from a copy older
    # than the other instance's last answered write.
    two_instances("redis, local cache", {"SESSION_TYPE": "redis", "SESSION_REDIS": os.environ["REDIS_URL"],
                                         "SESSION_KEY_PREFIX": f"instances-{os.getpid()}-cached:",
                                         "SESSION_REDIS_LOCAL_CACHE": "1000"})
else:
    print("skipped: set REDIS_URL")
if os.environ.get("POSTGRES_URL"):
    two_instances("postgresql", {"SESSION_TYPE": "postgresql", "SESSION_DATABASE_URL": os.environ["POSTGRES_URL"],
                                 "SESSION_KEY_PREFIX": f"instances-{os.getpid()}:"})
else:
    print("skipped: set POSTGRES_URL")
redis_fault(local_cache=False)
redis_fault(local_cache=True)
postgres_fault()

failed = results.count(False)
print(f"{len(results) - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
