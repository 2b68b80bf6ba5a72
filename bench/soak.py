"""Soak test: drives the demo for a while with many distinct sessions and checks every answer.

Run through bench/soak.sh. For each backend it starts the release demo, creates SESSIONS
sessions through /bench/seed, then for MINUTES keeps CONNECTIONS clients busy: each takes the
next session, increments its counter with /bench/write (now and then reads it back with
/bench/read) and checks the answer is exactly the count it keeps for that session. Any 5xx,
any wrong count (a lost or doubled write) and the server's RSS over time are recorded; the
results go to bench/results/soak.json and docs/SOAK.md. A backend named `...-pair` runs two
demo instances on the same store and sends each request to one of them at random: a stale
read on one instance after a write on the other is then a wrong count too.
"""

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from run import ROOT, free_port, rss_bytes, start_redis  # noqa: E402


class Client:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, port):
        self.port = port
        self.reader = self.writer = None

    async def get(self, path, cookie):
        for attempt in range(2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            head = f"GET {path} HTTP/1.1\r\nHost: soak\r\n"
            if cookie:
                head += f"Cookie: session={cookie}\r\n"
            self.writer.write((head + "\r\n").encode())
            try:
                return await self.read_response()
            except (ConnectionError, asyncio.IncompleteReadError):
                # The server closed an idle keep-alive connection: once more on a new one.
                self.writer = None
                if attempt:
                    raise

    async def read_response(self):
        status_line = await self.reader.readuntil(b"\r\n")
        status = int(status_line.split()[1])
        length, set_cookie = 0, None
        while True:
            line = await self.reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            name, _, value = line.decode().partition(":")
            name = name.lower()
            if name == "content-length":
                length = int(value)
            elif name == "set-cookie" and value.strip().startswith("session="):
                set_cookie = value.strip()[len("session=") :].split(";", 1)[0]
        body = (await self.reader.readexactly(length)).decode() if length else ""
        return status, body, set_cookie


class Sessions:
    """Every session's cookie and the count its client expects."""

    def __init__(self):
        self.cookies, self.counts = [], []
        self.stats = {"requests": 0, "writes": 0, "reads": 0, "5xx": 0, "other_errors": 0, "wrong_count": 0}
        self.examples = []

    def fail(self, kind, detail):
        self.stats[kind] += 1
        if len(self.examples) < 10:
            self.examples.append(f"{kind}: {detail}")


async def seed(port, n, connections, sessions):
    async def worker(count):
        client = Client(port)
        for _ in range(count):
            status, body, cookie = await client.get("/bench/seed", None)
            if status != 200 or not cookie or body != "1":
                raise RuntimeError(f"seeding answered {status} {body!r}")
            sessions.cookies.append(cookie)
            sessions.counts.append(1)

    share = [n // connections + (1 if i < n % connections else 0) for i in range(connections)]
    await asyncio.gather(*(worker(c) for c in share))


async def drive(ports, seconds, connections, sessions, read_share=0.2):
    order = list(range(len(sessions.cookies)))
    random.shuffle(order)
    queue = asyncio.Queue()
    for i in order:
        queue.put_nowait(i)
    deadline = time.monotonic() + seconds

    async def worker():
        clients = [Client(port) for port in ports]
        while time.monotonic() < deadline:
            client = random.choice(clients)
            # Each session is in one client's hands at a time, as one browser tab's would be.
            i = await queue.get()
            reading = random.random() < read_share
            try:
                status, body, cookie = await client.get("/bench/read" if reading else "/bench/write", sessions.cookies[i])
            except (ConnectionError, asyncio.IncompleteReadError, ValueError) as e:
                sessions.fail("other_errors", repr(e))
                client.writer = None
                queue.put_nowait(i)
                continue
            sessions.stats["requests"] += 1
            expected = sessions.counts[i] + (0 if reading else 1)
            if status >= 500:
                sessions.fail("5xx", f"{status} on session {i}")
            elif status != 200 or body != str(expected):
                sessions.fail("wrong_count", f"session {i}: expected {expected}, got {status} {body!r}")
            else:
                sessions.counts[i] = expected
                sessions.stats["reads" if reading else "writes"] += 1
                if cookie:
                    sessions.cookies[i] = cookie
            queue.put_nowait(i)

    await asyncio.gather(*(worker() for _ in range(connections)))


async def sample_rss(pid, interval, until, samples):
    start = time.monotonic()
    while time.monotonic() < until:
        samples.append((round(time.monotonic() - start), rss_bytes(pid)))
        await asyncio.sleep(interval)


async def soak_one(name, env, args):
    ports = [free_port() for _ in range(2 if name.endswith("-pair") else 1)]
    port = ports[0]
    demo = args.target / "release" / "hipflask-demo"
    log = tempfile.TemporaryFile()
    procs = [subprocess.Popen(["taskset", "-c", "0", str(demo), "--bind", f"127.0.0.1:{p}"],
                              env={**os.environ, **env}, stdout=log, stderr=log) for p in ports]
    proc = procs[0]
    try:
        for p in ports:
            for _ in range(100):
                try:
                    await Client(p).get("/bench/none", None)
                    break
                except OSError:
                    await asyncio.sleep(0.1)
        sessions = Sessions()
        t0 = time.monotonic()
        await seed(port, args.sessions, args.connections, sessions)
        seeded_in = time.monotonic() - t0
        samples = []
        seconds = args.minutes * 60
        sampler = asyncio.create_task(sample_rss(proc.pid, 10, time.monotonic() + seconds, samples))
        t0 = time.monotonic()
        await drive(ports, seconds, args.connections, sessions)
        elapsed = time.monotonic() - t0
        await sampler
        # Afterwards every session must still hold exactly its count.
        final = Sessions()
        clients = [Client(p) for p in ports]
        for i, cookie in enumerate(sessions.cookies):
            status, body, _ = await clients[i % len(clients)].get("/bench/read", cookie)
            if status != 200 or body != str(sessions.counts[i]):
                final.fail("wrong_count", f"session {i}: expected {sessions.counts[i]}, got {status} {body!r}")
        warm = [rss for t, rss in samples if t >= seconds * 0.2]
        result = {
            "backend": name,
            "sessions": args.sessions,
            "seconds": round(elapsed),
            "seeded_in_s": round(seeded_in, 1),
            **sessions.stats,
            "requests_per_s": round(sessions.stats["requests"] / elapsed),
            "final_check_wrong": final.stats["wrong_count"],
            "rss_mib_after_warmup": round(warm[0] / 2**20, 1) if warm else None,
            "rss_mib_end": round(samples[-1][1] / 2**20, 1) if samples else None,
            "rss_mib_max": round(max(r for _, r in samples) / 2**20, 1) if samples else None,
            "examples": sessions.examples + final.examples,
        }
        print(json.dumps(result), flush=True)
        return result
    finally:
        for p in procs:
            p.terminate()
            p.wait()


def write_doc(results, path):
    lines = [
        "# Soak",
        "",
        "Made by `bench/soak.sh` (driver `bench/soak.py`); raw results in `bench/results/soak.json`.",
        "The release demo runs pinned to CPU 0. The driver first creates the sessions through",
        "`/bench/seed`, then keeps its connections busy for the whole run: each takes the next session",
        "(one client at a time per session, as one browser's would be), increments its counter with",
        "`/bench/write` or, one time in five, reads it with `/bench/read`, and checks the answer is exactly",
        "the count it keeps for that session. A lost write, a doubled write or a stale read is a wrong",
        "count. At the end every session is read back once more. RSS is sampled every 10 s; the figure",
        "after warm-up is the first sample past 20% of the run.",
        "",
        "| backend | sessions | run | requests | req/s | 5xx | other errors | wrong counts | final check wrong | RSS after warm-up / end / max |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['backend']} | {r['sessions']:,} | {r['seconds']} s | {r['requests']:,} | {r['requests_per_s']:,} | {r['5xx']} | "
            f"{r['other_errors']} | {r['wrong_count']} | {r['final_check_wrong']} | "
            f"{r['rss_mib_after_warmup']} / {r['rss_mib_end']} / {r['rss_mib_max']} MiB |"
        )
    for r in results:
        if r["examples"]:
            lines += ["", f"First problems on {r['backend']}:", ""] + [f"- {e}" for e in r["examples"]]
    notes = Path(__file__).parent / "soak-notes.md"
    if notes.exists():
        lines += ["", notes.read_text().rstrip()]
    path.write_text("\n".join(lines) + "\n")


async def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--backends", default="cookie,sqlite,redis")
    ap.add_argument("--target", type=Path, required=True)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="hipflask-soak-")
    redis_proc, redis_url = start_redis(tmp)
    envs = {
        "cookie": {"SESSION_TYPE": "cookie"},
        "sqlite": {"SESSION_TYPE": "sqlite", "SESSION_DATABASE_URL": f"sqlite://{tmp}/soak.db"},
        "redis": {"SESSION_TYPE": "redis", "SESSION_REDIS": redis_url},
        # Two instances, each with a local cache big enough for every session.
        "redis-cached-pair": {"SESSION_TYPE": "redis", "SESSION_REDIS": redis_url,
                              "SESSION_REDIS_LOCAL_CACHE": str(args.sessions * 2)},
        "memory": {"SESSION_TYPE": "memory", "SESSION_MEMORY_CAPACITY": str(args.sessions * 2)},
    }
    results = []
    try:
        for name in args.backends.split(","):
            env = {"SECRET_KEY": "soak-secret", "RUST_LOG": "warn", **envs[name]}
            results.append(await soak_one(name, env, args))
    finally:
        redis_proc.terminate()
        redis_proc.wait()
    out = ROOT / "bench" / "results" / "soak.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    # Keep earlier results of backends not run this time, so one can be re-run alone.
    if out.exists():
        ran = {r["backend"] for r in results}
        results = [r for r in json.loads(out.read_text()) if r["backend"] not in ran] + results
    out.write_text(json.dumps(results, indent=1) + "\n")
    write_doc(results, ROOT / "docs" / "SOAK.md")
    bad = sum(r["5xx"] + r["wrong_count"] + r["final_check_wrong"] for r in results)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    asyncio.run(main())
