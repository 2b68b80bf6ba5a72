"""HTTP benchmark driver: hipflask's backends and its peers, side by side, on one machine.

Run through bench/run.sh, which builds the servers and makes the venv. Every server is pinned
to CPU 0 and wrk to CPU 1 (with the benchmark's own Redis). For each server and route it
records requests/s, latency p50/p99 and the CPU time per request spent by the server process
tree (and by the store's processes, when there is one), read from /proc before and after the
run. Results go to bench/results/latest.json, docs/BENCHMARKS.md and docs/benchmarks.png.

CPU time on a shared machine drifts with its neighbours, so the same servers are also counted
under callgrind: user-space instructions per request, the same on every run of the same
binaries (kernel and store processes excluded).
"""

import argparse
import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICK_US = 1_000_000 / os.sysconf("SC_CLK_TCK")
SERVER_CPU, LOAD_CPU = "0", "1"
ROUTES = ("none", "read", "write")
DEFAULT_OUT = ROOT / "bench" / "results" / "latest.json"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_stat(pid):
    """(ppid, utime + stime in ticks) of one process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def all_pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def tree_ticks(root):
    """CPU ticks of a process and all its descendants (gunicorn's workers, say)."""
    stats = {pid: proc_stat(pid) for pid in all_pids()}
    children = {}
    for pid, st in stats.items():
        if st:
            children.setdefault(st[0], []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        if stats.get(pid):
            total += stats[pid][1]
        todo.extend(children.get(pid, []))
    return total


def named_ticks(names):
    """CPU ticks by pid of every process whose command name is one of `names` (a shared
    database, whose backends come and go)."""
    ticks = {}
    for pid in all_pids():
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        st = proc_stat(pid) if comm in names else None
        if st:
            ticks[pid] = st[1]
    return ticks


def ticks_delta(before, after):
    """CPU ticks spent between two readings. For per-pid readings, a process that appeared
    counts from zero and one that exited drops out, so the delta never goes negative."""
    if isinstance(before, dict):
        return sum(t - before.get(pid, 0) for pid, t in after.items())
    return after - before


def rss_bytes(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Server:
    """One bench server: a command run pinned to the server CPU, and how to count its store."""

    def __init__(self, name, label, argv, env=None, store=None, group="hipflask"):
        self.name, self.label, self.argv, self.group = name, label, argv, group
        self.env = {**os.environ, **(env or {})}
        self.store = store  # ("pid", pid) | ("names", {...}) | None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self):
        argv = [a.replace("{port}", str(self.port)) for a in self.argv]
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(["taskset", "-c", SERVER_CPU, *argv], env=self.env, stdout=self.log, stderr=self.log)
        for _ in range(300):
            if self.proc.poll() is not None:
                break
            try:
                urllib.request.urlopen(self.url + "/bench/none", timeout=1).read()
                return
            except OSError:
                time.sleep(0.1)
        self.log.seek(0)
        raise RuntimeError(f"{self.name} did not start: {self.log.read().decode(errors='replace')[-2000:]}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def server_ticks(self):
        return tree_ticks(self.proc.pid)

    def store_ticks(self):
        if not self.store:
            return 0
        kind, what = self.store
        return tree_ticks(what) if kind == "pid" else named_ticks(what)

    def get(self, path, cookie=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
        resp = conn.getresponse()
        body = resp.read().decode()
        set_cookie = [h.split(";", 1)[0] for h in resp.headers.get_all("Set-Cookie") or []]
        conn.close()
        return resp.status, body, set_cookie

    def seed(self, n, size=None):
        """n fresh sessions with visits=1; returns their Cookie header values."""
        path = "/bench/seed" + (f"?size={size}" if size else "")
        cookies = []
        for i in range(n):
            status, _, set_cookie = self.get(path)
            if status == 200 and self.name == "axum-bare":
                # No sessions here: send a cookie of the same size, so request bytes match.
                cookies.append(f"session=eyJ2aXNpdHMiOjF9.ZVPxAA.{i:027d}")
                continue
            if status != 200 or not set_cookie:
                raise RuntimeError(f"{self.name}: seeding answered {status} {set_cookie}")
            cookies.append(set_cookie[0])
        return cookies

    def metric(self, name):
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def lua_script(cookies, directory):
    """A wrk script that sends the cookies in turn (none: no Cookie header at all)."""
    path = Path(directory) / f"cookies-{len(cookies)}-{time.monotonic_ns()}.lua"
    quoted = ",\n".join(json.dumps(c) for c in cookies)
    path.write_text(
        f"local cookies = {{\n{quoted}\n}}\nlocal i = 0\n"
        "request = function()\n"
        "  if #cookies == 0 then return wrk.format('GET') end\n"
        "  i = i % #cookies + 1\n"
        "  return wrk.format('GET', nil, {['Cookie'] = cookies[i]})\n"
        "end\n"
    )
    return path


UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6}


def wrk(url, seconds, script, connections=32):
    out = subprocess.run(
        ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout
    lat = {p: float(v) * UNITS[u] for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)$", out, re.M)}
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "requests": requests,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_us": lat.get("50"),
        "p99_us": lat.get("99"),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": sum(map(int, errors.groups())) if errors else 0,
    }


def measure(server, route, seconds, script):
    """One wrk run with CPU accounting around it."""
    s0, t0 = server.server_ticks(), server.store_ticks()
    result = wrk(f"{server.url}/bench/{route}", seconds, script)
    s1, t1 = server.server_ticks(), server.store_ticks()
    n = max(result["requests"], 1)
    result["server_us"] = (s1 - s0) * TICK_US / n
    result["store_us"] = ticks_delta(t0, t1) * TICK_US / n
    result["cpu_us"] = result["server_us"] + result["store_us"]
    return result


def redis_commands(url):
    host, port = re.match(r"redis://([^:/]+):(\d+)", url).groups()
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"INFO stats\r\n")
        data = b""
        while b"total_commands_processed" not in data or not data.endswith(b"\r\n"):
            data += s.recv(65536)
    return int(re.search(rb"total_commands_processed:(\d+)", data).group(1))


def sql_scalar(kind, query):
    if kind == "postgresql":
        argv = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-tAc", query]
    else:
        argv = ["mariadb", "-h", "127.0.0.1", "-u", "root", "test", "-N", "-B", "-e", query]
    return int(float(subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()[-1]))


def store_statements(kind, redis_url):
    """A counter of what the store executed: Redis commands, MariaDB statements, PostgreSQL transactions."""
    kind = kind.removesuffix("-before")
    if kind in ("redis", "redis-cached", "tower-redis", "actix-redis", "flask-redis"):
        return redis_commands(redis_url)
    if kind == "postgresql":
        return sql_scalar(kind, "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'test'")
    if kind == "mysql":
        return sql_scalar(kind, "SHOW GLOBAL STATUS LIKE 'Questions'")
    return None


def drop_flask_tables():
    """Drops the Flask peers' session tables from the shared databases (best effort)."""
    table = f"flask_bench_{os.getpid()}"
    for argv in (
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qc", f"DROP TABLE IF EXISTS {table}"],
        ["mariadb", "-h", "127.0.0.1", "-u", "root", "test", "-e", f"DROP TABLE IF EXISTS {table}"],
    ):
        subprocess.run(argv, capture_output=True)


def sqlalchemy_url(url, scheme):
    """A postgres:// or mysql:// URL with SQLAlchemy's driver scheme instead."""
    return scheme + url[url.index("://"):]


def servers(args, tmp, redis_url):
    demo = [str(args.target / "release" / "hipflask-demo"), "--bind", "127.0.0.1:{port}"]
    peer = [str(args.target / "release" / "bench-peer")]
    redis_store = ("pid", args.redis_pid)
    base = {"SECRET_KEY": "bench-secret", "RUST_LOG": "error"}
    # Server-side stores run with the no-lost-updates guarantee on: a save over
    # a key changed since the request loaded it is refused with 409.
    server_side = {**base, "SESSION_CONFLICTS": "reject"}
    pg = os.environ.get("POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
    my = os.environ.get("MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
    gunicorn = [str(args.venv / "bin" / "gunicorn"), "--preload", "-w", "2", "-b", "127.0.0.1:{port}", "--chdir", str(ROOT / "bench"), "flask_app:app"]
    prefix = f"bench-{os.getpid()}:"
    # Flask-Session's SQLAlchemy table, one per run so runs never share rows.
    table = f"flask_bench_{os.getpid()}"
    before = []
    if args.before:
        # The same backends on an older build of the demo, for before/after numbers.
        old = [str(args.before), "--bind", "127.0.0.1:{port}"]
        before = [
            Server("cookie-before", "hipflask before, signed cookie", old, {**base, "SESSION_TYPE": "cookie"}),
            Server("memory-before", "hipflask before, memory", old, {**server_side, "SESSION_TYPE": "memory"}),
            Server("postgresql-before", "hipflask before, PostgreSQL", old,
                   {**server_side, "SESSION_TYPE": "postgresql", "SESSION_DATABASE_URL": pg, "SESSION_KEY_PREFIX": prefix + "b:"},
                   ("names", {"postgres"})),
            Server("mysql-before", "hipflask before, MariaDB", old,
                   {**server_side, "SESSION_TYPE": "mysql", "SESSION_DATABASE_URL": my, "SESSION_KEY_PREFIX": prefix + "b:"},
                   ("names", {"mariadbd", "mysqld"})),
            Server("redis-before", "hipflask before, Redis", old,
                   {**server_side, "SESSION_TYPE": "redis", "SESSION_REDIS": redis_url, "SESSION_KEY_PREFIX": prefix + "b:"}, redis_store),
            Server("redis-cached-before", "hipflask before, Redis + local cache", old,
                   {**server_side, "SESSION_TYPE": "redis", "SESSION_REDIS": redis_url, "SESSION_KEY_PREFIX": prefix + "b:",
                    "SESSION_REDIS_LOCAL_CACHE": "200000"}, redis_store),
            Server("sqlite-before", "hipflask before, SQLite", old,
                   {**server_side, "SESSION_TYPE": "sqlite", "SESSION_DATABASE_URL": f"sqlite://{tmp}/sessions-before.db"}),
            Server("filesystem-before", "hipflask before, filesystem", old,
                   {**server_side, "SESSION_TYPE": "filesystem", "SESSION_FILE_DIR": f"{tmp}/files-before"}),
        ]
    return before + [
        Server("axum-bare", "axum, no session layer", [*peer, "axum-bare", "127.0.0.1:{port}"], group="peer"),
        # The floor of Flask's wire format: a session response's headers, no session.
        Server("axum-wire", "axum, no session layer, a session response's headers", [*peer, "axum-wire", "127.0.0.1:{port}"], group="peer"),
        Server("cookie", "hipflask, signed cookie", demo, {**base, "SESSION_TYPE": "cookie"}),
        Server("memory", "hipflask, memory", demo, {**server_side, "SESSION_TYPE": "memory", "SESSION_MEMORY_CAPACITY": "2000000"}),
        Server("filesystem", "hipflask, filesystem", demo, {**server_side, "SESSION_TYPE": "filesystem", "SESSION_FILE_DIR": f"{tmp}/files"}),
        Server("sqlite", "hipflask, SQLite", demo, {**server_side, "SESSION_TYPE": "sqlite", "SESSION_DATABASE_URL": f"sqlite://{tmp}/sessions.db"}),
        Server("redis", "hipflask, Redis", demo, {**server_side, "SESSION_TYPE": "redis", "SESSION_REDIS": redis_url, "SESSION_KEY_PREFIX": prefix}, redis_store),
        Server("redis-cached", "hipflask, Redis + local cache", demo, {**server_side, "SESSION_TYPE": "redis", "SESSION_REDIS": redis_url, "SESSION_KEY_PREFIX": prefix, "SESSION_REDIS_LOCAL_CACHE": "200000"}, redis_store),
        Server("postgresql", "hipflask, PostgreSQL", demo, {**server_side, "SESSION_TYPE": "postgresql", "SESSION_DATABASE_URL": pg, "SESSION_KEY_PREFIX": prefix}, ("names", {"postgres"})),
        Server("mysql", "hipflask, MariaDB", demo, {**server_side, "SESSION_TYPE": "mysql", "SESSION_DATABASE_URL": my, "SESSION_KEY_PREFIX": prefix}, ("names", {"mariadbd", "mysqld"})),
        Server("tower-memory", "axum + tower-sessions 0.15, MemoryStore", [*peer, "tower-memory", "127.0.0.1:{port}"], group="peer"),
        Server("actix-cookie", "actix-web 4 + actix-session 0.11, signed cookie", [*peer, "actix-cookie", "127.0.0.1:{port}"], group="peer"),
        Server("tower-redis", "axum + tower-sessions 0.14, Redis (fred)", [*peer, "tower-redis", "127.0.0.1:{port}"], {"REDIS_URL": redis_url}, redis_store, group="peer"),
        Server("actix-redis", "actix-web 4 + actix-session 0.11, Redis", [*peer, "actix-redis", "127.0.0.1:{port}"], {"REDIS_URL": redis_url}, redis_store, group="peer"),
        Server("flask-cookie", "Flask 3.1 cookie session, gunicorn 2 sync workers", gunicorn, {"FLASK_BENCH_STORE": "cookie"}, group="flask"),
        Server("flask-redis", "Flask + Flask-Session 0.8, Redis, gunicorn 2 workers", gunicorn, {"FLASK_BENCH_STORE": "redis", "REDIS_URL": redis_url}, redis_store, group="flask"),
        Server("flask-filesystem", "Flask + Flask-Session 0.8, cachelib files, gunicorn 2 workers", gunicorn, {"FLASK_BENCH_STORE": "filesystem", "FLASK_BENCH_DIR": f"{tmp}/flask-files"}, group="flask"),
        Server("flask-sqlite", "Flask + Flask-Session 0.8, SQLAlchemy on SQLite, gunicorn 2 workers", gunicorn, {"FLASK_BENCH_STORE": "sqlite", "FLASK_BENCH_DB": f"sqlite:///{tmp}/flask-sessions.db"}, group="flask"),
        Server("flask-postgresql", "Flask + Flask-Session 0.8, SQLAlchemy on PostgreSQL, gunicorn 2 workers", gunicorn, {"FLASK_BENCH_STORE": "postgresql", "FLASK_BENCH_DB": sqlalchemy_url(pg, "postgresql+psycopg2"), "FLASK_BENCH_TABLE": table}, ("names", {"postgres"}), group="flask"),
        Server("flask-mysql", "Flask + Flask-Session 0.8, SQLAlchemy on MariaDB, gunicorn 2 workers", gunicorn, {"FLASK_BENCH_STORE": "mysql", "FLASK_BENCH_DB": sqlalchemy_url(my, "mysql+pymysql"), "FLASK_BENCH_TABLE": table}, ("names", {"mariadbd", "mysqld"}), group="flask"),
    ]


def median_run(runs):
    """The run with the median CPU per request, so its other figures stay consistent."""
    return sorted(runs, key=lambda r: r["cpu_us"])[len(runs) // 2]


def main_table(all_servers, args, tmp, redis_url, results):
    """Every server started at once (idle ones cost nothing), then measured in
    interleaved rounds, each figure the median of the rounds. Within a round,
    bare axum runs just before and just after every other server: this
    machine's speed drifts by a fifth over a minute, and a round of one route
    takes that long, so each server's ratio is taken against the mean of the
    two bare runs beside it rather than against one bare run a minute away."""
    prepared = []
    try:
        for server in all_servers:
            server.start()
            prepared.append(server)
            server.many = lua_script(server.seed(args.sessions), tmp)
            server.contended = server.seed(1)[0]
            measure(server, "read", 1, server.many)  # warm-up, not recorded
        runs = {(s.name, r): [] for s in prepared for r in ROUTES}
        paired = {(s.name, r): [] for s in prepared for r in ROUTES}
        bare = next((s for s in prepared if s.name == "axum-bare"), None)

        def one(server, round_, route):
            before = store_statements(server.name, redis_url)
            run = measure(server, route, args.seconds, server.many)
            if before is not None:
                run["store_ops"] = (store_statements(server.name, redis_url) - before) / max(run["requests"], 1)
            runs[(server.name, route)].append(run)
            print(f"  round {round_ + 1} {server.name:13} /bench/{route:5} {run['rps']:9.0f} req/s  "
                  f"{run['cpu_us']:6.1f} us/req (server {run['server_us']:.1f} + store {run['store_us']:.1f})  "
                  f"non-2xx {run['non_2xx']}", flush=True)
            return run

        for round_ in range(args.rounds):
            for route in ROUTES:
                last_bare = one(bare, round_, route) if bare else None
                # Flask's rows are not divided by bare axum's: run after the others, unbracketed.
                for server in sorted((s for s in prepared if s is not bare), key=lambda s: s.group == "flask"):
                    one(server, round_, route)
                    if bare and server.group != "flask":
                        next_bare = one(bare, round_, route)
                        paired[(server.name, route)].append((last_bare["cpu_us"] + next_bare["cpu_us"]) / 2)
                        last_bare = next_bare
        for server in prepared:
            row = {"label": server.label, "group": server.group}
            for route in ROUTES:
                row[route] = median_run(runs[(server.name, route)])
                row[route]["rounds_cpu_us"] = [r["cpu_us"] for r in runs[(server.name, route)]]
                if paired[(server.name, route)]:
                    row[route]["rounds_bare_us"] = paired[(server.name, route)]
            results[server.name] = row
        print("== contention: one session, all connections", flush=True)
        for server in prepared:
            if server.name in ("axum-bare", "axum-wire", "cookie", "actix-cookie", "flask-cookie"):
                continue
            # Every connection increments the same session's counter.
            run = measure(server, "write", args.seconds, lua_script([server.contended], tmp))
            status, body, _ = server.get("/bench/read", server.contended)
            succeeded = run["requests"] - run["non_2xx"]
            final = int(body) if status == 200 and body.strip().isdigit() else None
            results[server.name]["contention"] = {**run, "succeeded": succeeded, "final": final}
            print(f"  {server.name:13} {succeeded} increments answered 2xx, counter now {body}", flush=True)
    finally:
        for server in prepared:
            server.stop()


def growth(base, bare, args, tmp, results):
    """Per-request cost as the number of live sessions grows (1k -> 100k -> 1M).

    This machine's speed drifts by a fifth over minutes, more than the 10% being judged, so
    the points are not measured one after another. One server per point runs at once (SQLite
    in a file of its own, Redis with a redis-server of its own, so a point's store holds only
    its own sessions), each seeded to its count; then all are measured in interleaved rounds,
    their order turning from round to round, each run beside a run of bare axum just before
    it. A point's figure is the median of its ratios to bare axum over the rounds."""
    points, redises = [], []
    try:
        for target in args.growth:
            env, store = {}, base.store
            if base.name == "sqlite":
                env["SESSION_DATABASE_URL"] = f"sqlite://{tmp}/growth-{target}.db"
            if base.name == "redis":
                proc, url = start_redis(tmp)
                redises.append(proc)
                env["SESSION_REDIS"], store = url, ("pid", proc.pid)
            server = Server(f"{base.name}-{target}", base.label, base.argv, {**base.env, **env}, store, base.group)
            server.start()
            points.append((target, server))
        bare_script = lua_script(bare.seed(1000), tmp)
        bulk = lua_script([], tmp)
        for target, server in points:
            server.script = lua_script(server.seed(1000), tmp)
            rate = None
            # Seeding runs long enough to reach the target by the last rate
            # seen, so a fast store does not overshoot it by half.
            while (made := server.metric("hipflask_sessions_created_total")) < target:
                seconds = 1 if rate is None else max(1, min(5, math.ceil((target - made) / rate)))
                wrk(f"{server.url}/bench/seed", seconds, bulk)
                rate = max(1.0, (server.metric("hipflask_sessions_created_total") - made) / seconds)
            measure(server, "read", 1, server.script)  # warm-up, not recorded
        runs = {(t, r): [] for t, _ in points for r in ("read", "write")}
        ratios = {(t, r): [] for t, _ in points for r in ("read", "write")}
        for round_ in range(args.rounds):
            turn = round_ % len(points)
            for route in ("read", "write"):
                for target, server in points[turn:] + points[:turn]:
                    beside = measure(bare, route, args.seconds, bare_script)
                    run = measure(server, route, args.seconds, server.script)
                    runs[(target, route)].append(run)
                    ratios[(target, route)].append(run["cpu_us"] / max(beside["cpu_us"], 1e-9))
                    print(f"  round {round_ + 1} {server.name:15} /bench/{route:5} {run['cpu_us']:6.1f} us/req  "
                          f"bare {beside['cpu_us']:6.1f}  ratio {ratios[(target, route)][-1]:.3f}", flush=True)
        results[base.name] = []
        for target, server in points:
            live = int(server.metric("hipflask_sessions_created_total"))
            point = {"sessions": live, "rss": rss_bytes(server.proc.pid)}
            for route in ("read", "write"):
                got = ratios[(target, route)]
                point[route] = {**median_run(runs[(target, route)]), "vs_bare": sorted(got)[len(got) // 2], "rounds_vs_bare": got}
            results[base.name].append(point)
            print(f"  {base.name:13} {live:>8} sessions: read {point['read']['vs_bare']:.3f}x bare, "
                  f"write {point['write']['vs_bare']:.3f}x bare, RSS {point['rss'] / 2**20:.0f} MiB", flush=True)
    finally:
        for _, server in points:
            server.stop()
        for proc in redises:
            proc.terminate()
            proc.wait()


def send(server, conns, cookies, path, n):
    """n GETs of `path` over keep-alive connections, cookies taken in turn; each must be 200."""
    for i in range(n):
        conn = conns[i % len(conns)]
        conn.request("GET", path, headers={"Cookie": cookies[i % len(cookies)]})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{server.name} {path}: {resp.status}")


def callgrind_totals(pid, dumps):
    """Has callgrind dump the counters of `pid` into `dumps`: the dump, and its totals by event."""
    before = set(dumps.iterdir())
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    dump = max(set(dumps.iterdir()) - before, key=lambda f: f.stat().st_mtime)
    lines = dump.read_text().splitlines()
    events = next(line for line in lines if line.startswith("events:")).split()[1:]
    totals = next(line for line in lines if line.startswith(("summary:", "totals:"))).split()[1:]
    # Callgrind leaves out trailing zero counts.
    totals += ["0"] * (len(events) - len(totals))
    return dump, {name: int(v) for name, v in zip(events, totals)}


def growth_counted(base, args, tmp, results, requests=2000):
    """The growth runs' question asked of callgrind, whose counts do not drift: instructions
    and simulated cache misses per request at each live-session count, on the same 1,000
    sessions (all of them, in turn: the working set is the point). Seeding runs with
    instrumentation off, so a million sessions take minutes, not hours; then it is switched on
    for the measured requests. Server process only (a store's own processes are not counted)."""
    results[base.name] = []
    for target in args.growth:
        dumps = Path(tmp) / f"growth-callgrind-{base.name}-{target}"
        dumps.mkdir()
        env = {k: v for k, v in base.env.items() if os.environ.get(k) != v}
        redis = None
        if base.name == "sqlite":
            env["SESSION_DATABASE_URL"] = f"sqlite://{tmp}/growth-counted-{target}.db"
        if base.name == "redis":
            redis, env["SESSION_REDIS"] = start_redis(tmp)
        # The caches of this machine's CPU (L1 32 KiB, L3 32 MiB as the last level): valgrind's
        # own guess inside this VM was a direct-mapped 256 MiB last level.
        caches = ["--I1=32768,8,64", "--D1=32768,8,64", "--LL=33554432,16,64"]
        argv = ["valgrind", "--tool=callgrind", "--cache-sim=yes", *caches, "--instr-atstart=no", f"--callgrind-out-file={dumps}/cg.%p", *base.argv]
        server = Server(f"{base.name}-{target}", base.label, argv, env, group=base.group)
        server.start()
        try:
            cookies = server.seed(1000)
            bulk = lua_script([], tmp)
            while server.metric("hipflask_sessions_created_total") < target:
                wrk(f"{server.url}/bench/seed", 5, bulk)
            conns = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=60) for _ in range(4)]
            subprocess.run(["callgrind_control", "-i", "on", str(server.proc.pid)], check=True, capture_output=True)
            point = {"sessions": int(server.metric("hipflask_sessions_created_total"))}
            for route in ("read", "write"):
                send(server, conns, cookies, f"/bench/{route}", 1000)
                subprocess.run(["callgrind_control", "-z", str(server.proc.pid)], check=True, capture_output=True)
                send(server, conns, cookies, f"/bench/{route}", requests)
                _, totals = callgrind_totals(server.proc.pid, dumps)
                e = {name: n / requests for name, n in totals.items()}
                l1 = e["I1mr"] + e["D1mr"] + e["D1mw"]
                ll = e["ILmr"] + e["DLmr"] + e["DLmw"]
                # kcachegrind's cycle estimate: a first-level miss 10 cycles, a last-level miss 100.
                point[route] = {"instructions": e["Ir"], "l1_misses": l1, "ll_misses": ll, "cycles": e["Ir"] + 10 * l1 + 100 * ll}
            for c in conns:
                c.close()
            results[base.name].append(point)
            print(f"  {base.name:13} {point['sessions']:>8} sessions: "
                  + ", ".join(f"{r} {point[r]['instructions'] / 1000:.1f}k instr, {point[r]['l1_misses']:.0f} L1 / "
                              f"{point[r]['ll_misses']:.1f} LL misses, {point[r]['cycles'] / 1000:.1f}k est. cycles" for r in ("read", "write")),
                  flush=True)
        finally:
            server.stop()
            if redis:
                redis.terminate()
                redis.wait()


def size_curve(server, args, tmp, results):
    server.start()
    try:
        points = []
        for size in args.sizes:
            script = lua_script(server.seed(args.sessions, size), tmp)
            point = {"size": size}
            for route in ("read", "write"):
                # One run moves by a fifth on this machine: the median of three.
                point[route] = median_run([measure(server, route, args.seconds, script) for _ in range(3)])
            points.append(point)
            print(f"  {server.name:13} {size:>5} B: read {point['read']['cpu_us']:.1f} us, write {point['write']['cpu_us']:.1f} us", flush=True)
        results[server.name] = points
    finally:
        server.stop()


def start_redis(tmp):
    port = free_port()
    proc = subprocess.Popen(
        ["taskset", "-c", LOAD_CPU, "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            redis_commands(f"redis://127.0.0.1:{port}")
            return proc, f"redis://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the benchmark's redis-server did not start")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=int, default=4, help="length of each measured wrk run")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the main table (median kept)")
    ap.add_argument("--sessions", type=int, default=1000, help="seeded cookies rotated by wrk")
    ap.add_argument("--only", default="", help="comma-separated server names (default: all)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: main,instructions,growth,growthcount,sizes")
    ap.add_argument("--growth", default="1000,100000,1000000", help="live-session counts for the growth runs")
    ap.add_argument("--sizes", default="100,500,1000,2000,3500", help="session sizes in bytes for the size curve")
    ap.add_argument("--target", type=Path, required=True, help="cargo target directory holding the release binaries")
    ap.add_argument("--before", type=Path, help="an older hipflask-demo binary to measure beside this one")
    ap.add_argument("--venv", type=Path, required=True, help="venv with flask, flask-session, gunicorn, redis")
    ap.add_argument("--callgrind-dir", type=Path, help="keep each callgrind dump here as SERVER-ROUTE.out, for callgrind_annotate")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results file; docs are written only for the default")
    args = ap.parse_args()
    args.growth = [int(x) for x in args.growth.split(",") if x]
    args.sizes = [int(x) for x in args.sizes.split(",") if x]
    only = {x for x in args.only.split(",") if x}
    skip = {x for x in args.skip.split(",") if x}

    tmp = tempfile.mkdtemp(prefix="hipflask-bench-")
    redis_proc, redis_url = start_redis(tmp)
    args.redis_pid = redis_proc.pid
    results = {"machine": machine(), "seconds": args.seconds, "rounds": args.rounds, "sessions": args.sessions, "main": {}, "instructions": {}, "growth": {}, "growthcount": {}, "sizes": {}}
    # The day each part was measured: a part this run skips keeps its own, and
    # the header (machine, rounds, ...) is the main table's, so it stays with it.
    results["dates"] = {}
    if args.out.exists():
        previous = json.loads(args.out.read_text())
        for part in ("main", "instructions", "growth", "growthcount", "sizes"):
            results[part] = previous.get(part, {}) if (part in skip or only) else {}
            if part in skip and part in previous.get("dates", {}):
                results["dates"][part] = previous["dates"][part]
        if "main" in skip:
            for key in ("machine", "seconds", "rounds", "sessions"):
                results[key] = previous.get(key, results[key])
    for part in ("main", "instructions", "growth", "growthcount", "sizes"):
        if part not in skip:
            results["dates"][part] = time.strftime("%Y-%m-%d")
    try:
        if "main" not in skip:
            print("== main table", flush=True)
            chosen = [s for s in servers(args, tmp, redis_url) if not only or s.name in only]
            main_table(chosen, args, tmp, redis_url, results["main"])
        by_name = {s.name: s for s in servers(args, tmp, redis_url)}
        if "instructions" not in skip:
            print("== instructions (callgrind)", flush=True)
            for s in servers(args, tmp, redis_url):
                if s.group != "flask" and (not only or s.name in only):
                    instructions(s, args, tmp, results["instructions"])
        if "growth" not in skip:
            print("== growth", flush=True)
            bare = by_name["axum-bare"]
            bare.start()
            try:
                for name in ("memory", "sqlite", "redis"):
                    if not only or name in only:
                        growth(by_name[name], bare, args, tmp, results["growth"])
            finally:
                bare.stop()
        if "growthcount" not in skip:
            print("== growth, counted (callgrind)", flush=True)
            for name in ("memory", "sqlite", "redis"):
                if not only or name in only:
                    growth_counted(by_name[name], args, tmp, results["growthcount"])
        if "sizes" not in skip:
            print("== size curve", flush=True)
            by_name = {s.name: s for s in servers(args, tmp, redis_url)}
            for name in ("cookie", "memory", "sqlite", "redis"):
                if not only or name in only:
                    size_curve(by_name[name], args, tmp, results["sizes"])
    finally:
        redis_proc.terminate()
        redis_proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
        drop_flask_tables()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    import report

    if args.out == DEFAULT_OUT:
        report.write(results, ROOT / "docs")


def instructions(server, args, tmp, out, requests=1000):
    """User-space instructions per request under callgrind, by route: repeatable where CPU
    time is not. The server runs under valgrind; counters are zeroed after a warm-up and
    dumped after `requests` requests over four keep-alive connections rotating 100 sessions."""
    dumps = Path(tmp) / f"callgrind-{server.name}"
    dumps.mkdir(exist_ok=True)
    counted = Server(server.name, server.label, ["valgrind", "--tool=callgrind", f"--callgrind-out-file={dumps}/cg.%p", *server.argv],
                     {k: v for k, v in server.env.items() if os.environ.get(k) != v}, group=server.group)
    counted.start()
    try:
        cookies = counted.seed(100)
        conns = [http.client.HTTPConnection("127.0.0.1", counted.port, timeout=60) for _ in range(4)]
        out[server.name] = {}
        for route in ROUTES:
            send(counted, conns, cookies, f"/bench/{route}", 200)
            subprocess.run(["callgrind_control", "-z", str(counted.proc.pid)], check=True, capture_output=True)
            send(counted, conns, cookies, f"/bench/{route}", requests)
            dump, totals = callgrind_totals(counted.proc.pid, dumps)
            total = totals["Ir"]
            out[server.name][route] = total / requests
            if args.callgrind_dir:
                args.callgrind_dir.mkdir(parents=True, exist_ok=True)
                shutil.copy(dump, args.callgrind_dir / f"{server.name}-{route}.out")
            print(f"  {server.name:22} {route:5} {total / requests:8.0f} instructions/request", flush=True)
        for c in conns:
            c.close()
    finally:
        counted.stop()


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), "?")
    return {"cpu": cpu, "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "kernel": os.uname().release}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
