"""Turns bench/results/latest.json into docs/BENCHMARKS.md and docs/benchmarks.png."""

import json
import statistics
import sys
import textwrap
from pathlib import Path

# Each hipflask backend against the Flask deployment it replaces: the same kind of store under
# Flask-Session where it has one; the memory store (Flask-Session has none that two workers share)
# against Flask-Session on Redis.
FLASK_PEER = {
    "cookie": "flask-cookie",
    "filesystem": "flask-filesystem",
    "sqlite": "flask-sqlite",
    "postgresql": "flask-postgresql",
    "mysql": "flask-mysql",
}
SERVER_SIDE_FLASK = "flask-redis"
TARGETS = {"cookie": (1.05, 1.2), "memory": (1.1, 1.15), "redis": (1.8, 3.0), "redis-cached": (1.8, 3.0)}


def fmt_rps(r):
    return f"{r['rps'] / 1000:.1f}k" if r["rps"] >= 1000 else f"{r['rps']:.0f}"


def fmt_lat(us):
    if us is None:
        return "?"
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} us"


def cpu(r):
    if r.get("store_us", 0) >= 0.05:
        return f"{r['server_us']:.1f} + {r['store_us']:.1f}"
    return f"{r['server_us']:.1f}"


def cell(r):
    bad = f", **{r['non_2xx']} non-2xx**" if r["non_2xx"] else ""
    return f"{fmt_rps(r)}; {cpu(r)} us; p50 {fmt_lat(r['p50_us'])}, p99 {fmt_lat(r['p99_us'])}{bad}"


def round_ratios(run, bare):
    """Median, lowest and highest of the per-round CPU ratios to bare axum: to
    the bare runs just before and after it when the run kept them, else to
    bare axum's run of the same round."""
    ours, base = run.get("rounds_cpu_us"), run.get("rounds_bare_us") or bare.get("rounds_cpu_us")
    if not ours or not base or len(ours) != len(base):
        ratio = run["cpu_us"] / bare["cpu_us"]
        return ratio, ratio, ratio
    ratios = sorted(a / b for a, b in zip(ours, base))
    return statistics.median(ratios), ratios[0], ratios[-1]


def write(results, docs):
    main = results["main"]
    lines = [
        "# Benchmarks",
        "",
        "Made by `bench/run.sh` (driver `bench/run.py`, report `bench/report.py`); raw numbers in",
        "`bench/results/latest.json`. Every server runs pinned to CPU 0 with `taskset`; `wrk -t1 -c32` runs",
        "on CPU 1, and so does the benchmark's own `redis-server`. PostgreSQL and MariaDB are the machine's",
        "shared services (not pinned). CPU per request is read from `/proc` around each run: the server's",
        "process tree, plus the store's processes after the `+`. At these rates one wrk thread on one core",
        "is itself the ceiling for requests/s, so **CPU microseconds per request is the figure that counts**;",
        "only ratios taken in one run are meaningful, absolute numbers drift on this shared machine.",
        "",
        f"Run of {results['machine']['date']} on {results['machine']['cpu']} ({results['machine']['cores']} cores), "
        f"{results['seconds']} s per measurement, the median of {results.get('rounds', 1)} interleaved rounds, "
        f"{results['sessions']} seeded sessions rotated by a wrk Lua script.",
        "",
        "![CPU per request and size curve](benchmarks.png)",
        "",
        "## Side by side",
        "",
        "Each cell: requests/s; CPU us per request (server + store); latency p50, p99.",
        "",
        "| server | /bench/none | /bench/read | /bench/write |",
        "|---|---|---|---|",
    ]
    for name, row in main.items():
        lines.append(f"| {row['label']} | " + " | ".join(cell(row[r]) for r in ("none", "read", "write")) + " |")

    bare = main.get("axum-bare")
    bracketed = any("rounds_bare_us" in row.get(r, {}) for row in main.values() for r in ("read", "write"))
    if bare:
        lines += [
            "",
            "## CPU per request against bare axum",
            "",
            *textwrap.wrap(
                "Server + store CPU per request divided by "
                + (
                    "the mean of bare axum's two runs just before and just after it in the same round "
                    "(each run is a few seconds; the machine's speed drifts over a round's minute)"
                    if bracketed
                    else "bare axum's in the same round (rounds are interleaved, so the two ran moments apart)"
                )
                + "; the median over the rounds, with the lowest and highest round after it. "
                "Targets from the performance issue in brackets.",
                96,
            ),
            "",
            "| server | /bench/read | /bench/write |",
            "|---|---|---|",
        ]
        for name, row in main.items():
            if name == "axum-bare" or row["group"] == "flask":
                continue
            target = TARGETS.get(name)
            ratios = []
            for i, route in enumerate(("read", "write")):
                ratio, low, high = round_ratios(row[route], bare[route])
                mark = ""
                if target:
                    mark = f" (target {target[i]}x: {'met' if ratio <= target[i] else 'missed'})"
                spread = f" [{low:.2f}-{high:.2f}]" if high > low else ""
                ratios.append(f"{ratio:.2f}x{spread}{mark}")
            lines.append(f"| {row['label']} | {ratios[0]} | {ratios[1]} |")

    counted = results.get("instructions") or {}
    if counted.get("axum-bare"):
        base = counted["axum-bare"]
        labels = {n: r["label"] for n, r in main.items()}
        lines += [
            "",
            "## Instructions per request (callgrind)",
            "",
            "CPU time on a shared machine moves with its neighbours; instruction counts barely do. Each server",
            "below ran under `valgrind --tool=callgrind`, four keep-alive connections sending 1,000 requests",
            "per route over 100 seeded sessions after a warm-up. User-space instructions of the server process",
            "only: the kernel's TCP work (most of a request's CPU time, and the same for every server) and the",
            "store's own processes are not in it. Ratios are to bare axum. The demo runs with its Prometheus",
            "exporter installed: a store call answered in place is a counter's increment (about 20",
            "instructions), one that waited a histogram sample (about 185, and its share of the fold the",
            "exporter makes every five seconds; whether a fold falls inside a count moves a write's count by",
            "up to 1.2k between runs of the same binary, other routes 1%). The allocator's state moves a",
            "count by up to 150 instructions too. The before-and-after counts below were taken side by",
            "side or repeated.",
        ]
        counted_on = results.get("dates", {}).get("instructions")
        if counted_on and counted_on != results["machine"]["date"]:
            lines += ["", f"Counted on {counted_on}, on that day's code (the CPU tables above are of {results['machine']['date']})."]
        lines += [
            "",
            "| server | /bench/none | /bench/read | /bench/write |",
            "|---|---|---|---|",
        ]
        for name, row in counted.items():
            cells = [f"{row[r] / 1000:.1f}k ({row[r] / base[r]:.2f}x)" for r in ("none", "read", "write")]
            lines.append(f"| {labels.get(name, name)} | " + " | ".join(cells) + " |")

    flask_rows = [(n, r) for n, r in main.items() if r["group"] == "hipflask"]
    if flask_rows and any(p in main for p in ("flask-cookie", SERVER_SIDE_FLASK)):
        lines += [
            "",
            "## Against Flask",
            "",
            "Requests/s of each hipflask backend divided by the Flask deployment it replaces, both on the",
            "same core: the built-in cookie session for the cookie backend, Flask-Session 0.8 with the same",
            "kind of store for the others (cachelib files; SQLAlchemy on SQLite, PostgreSQL, MariaDB; Redis),",
            "and Flask-Session on Redis for the memory store. Goal: at least 30x.",
            "",
            "| backend | compared with | /bench/read | /bench/write |",
            "|---|---|---|---|",
        ]
        for name, row in flask_rows:
            peer = main.get(FLASK_PEER.get(name, SERVER_SIDE_FLASK))
            if not peer:
                continue
            ratios = [f"{row[r]['rps'] / peer[r]['rps']:.0f}x" for r in ("read", "write")]
            lines.append(f"| {row['label']} | {peer['label']} | {ratios[0]} | {ratios[1]} |")

    ops = [(n, r) for n, r in main.items() if "store_ops" in r.get("read", {})]
    if ops:
        lines += [
            "",
            "## Store work per request",
            "",
            "Redis: commands executed per request (`INFO stats`); MariaDB: statements per request (`Questions`);",
            "PostgreSQL: transactions per request (`pg_stat_database`, each statement outside a transaction",
            "counts as one). Pipelined commands share one round trip.",
            "",
            "| server | /bench/none | /bench/read | /bench/write |",
            "|---|---|---|---|",
        ]
        for name, row in ops:
            lines.append(f"| {row['label']} | " + " | ".join(f"{row[r].get('store_ops', 0):.2f}" for r in ("none", "read", "write")) + " |")

    contention = [(n, r) for n, r in main.items() if "contention" in r]
    if contention:
        lines += [
            "",
            "## Contention: one session, 32 connections",
            "",
            "wrk sends the same session cookie on all 32 connections to `/bench/write` for the whole run; every",
            "answered request incremented the counter once. Afterwards the counter is read back. A request",
            "still in flight when wrk stops may be applied without being counted, so a store that loses",
            "nothing ends up to 32 above `1 + answered`.",
            "",
            "hipflask's server-side stores run with `SESSION_CONFLICTS=reject`: a save over a key that another",
            "request changed after this one loaded it is refused with 409, so the client knows its increment",
            "did not happen; every increment that was answered 2xx must be in the counter.",
            "",
            "| server | increments answered 2xx | refused (non-2xx) | counter afterwards | acknowledged increments lost |",
            "|---|---|---|---|---|",
        ]
        for name, row in contention:
            c = row["contention"]
            expected = 1 + c["succeeded"]
            final = c["final"]
            lost = "?" if final is None else (f"{max(expected - final, 0)} ({max(expected - final, 0) / expected:.1%})")
            lines.append(f"| {row['label']} | {c['succeeded']} | {c['non_2xx']} | {final} | {lost} |")

    growth = results.get("growth") or {}
    if growth:
        lines += [
            "",
            "## Growth: 1k to 1M live sessions",
            "",
            "1,000 sessions are read and written while the store holds more other live sessions (made",
            "through `/bench/seed`). One server per point runs at once, each with a store of its own, and",
            "all are measured in interleaved rounds (their order turning each round), every run just",
            "after one of bare axum: the drift of this machine over minutes, larger than the 10% being",
            "judged, then hits every point alike. CPU us per request, server + store, of the median",
            "round; in brackets the median over the rounds of the ratio to bare axum, on which the",
            "change is taken.",
            "",
            "| backend | live sessions | /bench/read | /bench/write | server RSS |",
            "|---|---|---|---|---|",
        ]

        def growth_cell(p, route):
            ratio = p[route].get("vs_bare")
            return f"{p[route]['cpu_us']:.1f}" + (f" ({ratio:.2f}x)" if ratio else "")

        for name, points in growth.items():
            for p in points:
                lines.append(f"| {name} | {p['sessions']:,} | {growth_cell(p, 'read')} | {growth_cell(p, 'write')} | {p['rss'] / 2**20:.0f} MiB |")
            first, last = points[0], points[-1]
            key = "vs_bare" if all("vs_bare" in p[r] for p in (first, last) for r in ("read", "write")) else "cpu_us"
            change = [last[r][key] / first[r][key] - 1 for r in ("read", "write")]
            lines.append(f"| {name} | change {first['sessions']:,} -> {last['sessions']:,} | {change[0]:+.0%} | {change[1]:+.0%} | |")
        mem = growth.get("memory")
        if mem and len(mem) > 1:
            per = (mem[-1]["rss"] - mem[0]["rss"]) / (mem[-1]["sessions"] - mem[0]["sessions"])
            lines += ["", f"Memory store: about **{per:.0f} bytes per live session** (`{{\"visits\": 1}}`), from the RSS growth."]

    counted_growth = results.get("growthcount") or {}
    if counted_growth:
        lines += [
            "",
            "## Growth, counted: 1k to 1M live sessions under callgrind",
            "",
            "The CPU times above move with this shared machine by more than the 10% being judged, so the",
            "same question is also asked of callgrind, whose counts do not drift: the server under",
            "`valgrind --tool=callgrind --cache-sim=yes` (first level 32 KiB, last level 32 MiB 16-way, as",
            "this machine's L1 and L3), seeded with instrumentation off, then 2,000",
            "requests per route over the same 1,000 sessions in turn. Per request: user-space",
            "instructions, simulated first- and last-level cache misses, and kcachegrind's cycle",
            "estimate (instructions + 10 per first-level miss + 100 per last-level miss). Server process",
            "only; the kernel and a store's own processes are not in it.",
            "",
            "| backend | live sessions | /bench/read | /bench/write |",
            "|---|---|---|---|",
        ]

        def counted_cell(p, route):
            c = p[route]
            return f"{c['instructions'] / 1000:.1f}k instr, {c['l1_misses']:.0f} / {c['ll_misses']:.1f} misses, {c['cycles'] / 1000:.1f}k cycles"

        for name, points in counted_growth.items():
            for p in points:
                lines.append(f"| {name} | {p['sessions']:,} | {counted_cell(p, 'read')} | {counted_cell(p, 'write')} |")
            first, last = points[0], points[-1]
            change = [last[r]["cycles"] / first[r]["cycles"] - 1 for r in ("read", "write")]
            lines.append(f"| {name} | change {first['sessions']:,} -> {last['sessions']:,} (est. cycles) | {change[0]:+.1%} | {change[1]:+.1%} |")

    sizes = results.get("sizes") or {}
    if sizes:
        lines += [
            "",
            "## Cost against session size",
            "",
            "1,000 sessions each holding `visits` and a pad string of the given size (not compressible),",
            "CPU us per request (server + store).",
            "",
            "| backend | " + " | ".join(f"{p['size']} B read / write" for p in next(iter(sizes.values()))) + " |",
            "|---|" + "---|" * len(next(iter(sizes.values()))),
        ]
        for name, points in sizes.items():
            lines.append(f"| {name} | " + " | ".join(f"{p['read']['cpu_us']:.1f} / {p['write']['cpu_us']:.1f}" for p in points) + " |")

    # What the numbers mean, the optimisations made and what is still missing: written by hand.
    analysis = Path(__file__).parent / "analysis.md"
    if analysis.exists():
        lines += ["", analysis.read_text().rstrip()]
    (docs / "BENCHMARKS.md").write_text("\n".join(lines) + "\n")
    chart(results, docs / "benchmarks.png")


def chart(results, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: chart not drawn", file=sys.stderr)
        return
    main = results["main"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 6), gridspec_kw={"width_ratios": [3, 2]})
    names = [n for n, r in main.items() if r["group"] != "flask"]
    x = range(len(names))
    for i, route in enumerate(("read", "write")):
        server = [main[n][route]["server_us"] for n in names]
        store = [main[n][route]["store_us"] for n in names]
        pos = [v + (i - 0.5) * 0.4 for v in x]
        colors = ["#4c72b0" if main[n]["group"] == "hipflask" else "#999999" for n in names]
        ax1.bar(pos, server, 0.38, color=colors, alpha=1.0 if route == "read" else 0.6, label=f"/bench/{route} server")
        ax1.bar(pos, store, 0.38, bottom=server, color="#dd8452", alpha=1.0 if route == "read" else 0.6, label=f"/bench/{route} store")
    ax1.set_xticks(list(x))
    ax1.set_xticklabels(names, rotation=35, ha="right")
    ax1.set_ylabel("CPU microseconds per request (lower is better)")
    ax1.set_title("read (solid) and write (light) per server; hipflask blue, peers grey")
    for name, points in (results.get("sizes") or {}).items():
        ax2.plot([p["size"] for p in points], [p["write"]["cpu_us"] for p in points], marker="o", label=f"{name} write")
        ax2.plot([p["size"] for p in points], [p["read"]["cpu_us"] for p in points], marker=".", linestyle="--", label=f"{name} read")
    ax2.set_xlabel("session size (bytes)")
    ax2.set_ylabel("CPU microseconds per request")
    ax2.set_title("cost against session size")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    write(json.loads((root / "bench" / "results" / "latest.json").read_text()), root / "docs")
