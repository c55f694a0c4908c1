"""Turn a run's results (the dict run.py builds and saves as results.json) into the Markdown table
and the PNG plots.  Can be rerun on a saved file:  python benchmarks/report.py results.json
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Callable, Optional

SUBJECT = "uringloop"
REFERENCES = ("uvloop", "asyncio")
FLOOR = "c-io_uring"       # benchmarks/uring_echo.c, measured at some echo points (run.py)
LOOP_COLORS = {"uringloop": "#d62728", "uvloop": "#1f77b4", "asyncio": "#7f7f7f"}
BUSY_PCT = 10.0            # a run whose server CPU spent this much on anything else is flagged
CLIENT_BOUND_PCT = 90.0    # a load generator this busy may be what limits the rate
MICRO_TITLES = {
    "call_soon": "call_soon throughput",
    "timers": "100k timers",
    "sleep0_tasks": "tasks awaiting sleep(0)",
    "create_close": "loop create + close",
    "threadsafe": "call_soon_threadsafe from a thread",
    "connect": "create_connection (client side)",
    "getaddrinfo": "getaddrinfo (\"localhost\")",
    "add_reader": "add_reader ping-pong",
}


# ---- number formatting ---------------------------------------------------------------------

def fmt_rate(x: Optional[float]) -> str:
    if x is None:
        return "–"
    if x >= 100_000:
        return f"{x / 1000:.0f}k"
    if x >= 1000:
        return f"{x / 1000:.1f}k"
    return f"{x:.0f}"


def fmt_us(x: Optional[float]) -> str:
    if x is None:
        return "–"
    if x >= 10_000:
        return f"{x / 1000:.0f} ms"
    if x >= 1000:
        return f"{x / 1000:.1f} ms"
    return f"{x:.0f} µs"


def fmt_seconds(x: Optional[float]) -> str:
    if x is None:
        return "–"
    if x >= 1:
        return f"{x:.2f} s"
    return f"{x * 1000:.1f} ms"


def fmt_bytes(n: Optional[float]) -> str:
    """An amount of memory: "812 B", "3.4 KiB", "27.1 MiB"; a leading minus when negative."""
    if n is None:
        return "–"
    sign, n = ("−" if n < 0 else ""), abs(n)
    for unit, scale in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if n >= scale:
            value = n / scale
            return f"{sign}{value:.0f} {unit}" if value == int(value) else \
                f"{sign}{value:.1f} {unit}"
    return f"{sign}{n:.0f} B"


def fmt_growth(n: Optional[float]) -> str:
    if n is None:
        return "–"
    return ("+" if n >= 0 else "") + fmt_bytes(n)


def fmt_bytes_exact(n: Optional[float]) -> str:
    """Bytes per connection: "1,624 B" (the figure is small and compared across loops)."""
    return "–" if n is None else f"{n:,.0f} B"


def fmt_size(n: int) -> str:
    if n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)} MiB"
    if n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} B"


def cell(summary: Optional[dict], fmt, error_ref: Optional[str] = None) -> str:
    if summary is None:
        return f"n/a{error_ref or ''}"
    text = fmt(summary["median"])
    if summary.get("n", 1) > 1:
        text += f" [{fmt(summary['min'])}–{fmt(summary['max'])}]"
    return text


def ratio_cell(summary: Optional[dict]) -> str:
    if summary is None:
        return "–"
    text = f"**{summary['median']:.2f}×**"
    if summary.get("n", 1) > 1:
        text += f" [{summary['min']:.2f}–{summary['max']:.2f}]"
    return text


# ---- the performance targets (issue 7) ------------------------------------------------------

KIB = 1024


@dataclasses.dataclass(frozen=True)
class Target:
    what: str
    goal: str
    workload: str                     # echo | http | micro | syscalls
    select: Callable[[dict], bool]    # which points of the run it covers
    metric: str = "rps"
    reference: Optional[str] = "uvloop"
    limit: float = 1.0
    higher_is_better: bool = True


TARGETS = (
    Target("`Protocol` and streams echo, 1 KiB, 10 and 100 connections", "≥ 1.2× uvloop",
           "echo", lambda p: p["style"] in ("protocol", "streams") and p["size"] == KIB
           and p["conns"] in (10, 100), limit=1.2),
    Target("`Protocol`, streams, `BufferedProtocol` echo at 16 KiB, 100 KiB, and 1 connection",
           "≥ 1.0× uvloop", "echo",
           lambda p: p["style"] in ("protocol", "streams", "bufferedprotocol")
           and (p["size"] in (16 * KIB, 100 * KIB) or p["conns"] == 1), limit=1.0),
    Target("`sock_*` echo, 1 KiB, 10 and 100 connections", "≥ 2× uvloop", "echo",
           lambda p: p["style"] == "sock" and p["size"] == KIB and p["conns"] in (10, 100),
           limit=2.0),
    Target("aiohttp hello world under wrk, 10 and 100 connections", "≥ 1.1× uvloop", "http",
           lambda p: p["conns"] in (10, 100), limit=1.1),
    Target("`call_soon` throughput and 100k timers", "≤ 0.3× the stock loop's time", "micro",
           lambda p: p["name"] in ("call_soon", "timers"), metric="seconds",
           reference="asyncio", limit=0.3, higher_is_better=False),
    Target("system calls per echo request at 100 connections", "≤ 0.1", "syscalls",
           lambda p: p["conns"] == 100, metric="per_request", reference=None, limit=0.1,
           higher_is_better=False),
)


def _point_label(p: dict) -> str:
    if p.get("workload") == "http":
        return f"aiohttp ×{p['conns']}"
    if p.get("workload") == "micro":
        return MICRO_TITLES.get(p["name"], p["name"])
    return f"{p['style']} {fmt_size(p['size'])}×{p['conns']}"


def evaluate_target(target: Target, results: dict) -> dict:
    """{"status": met | missed | n/a | not in this run, "values": [(label, value or None)]}."""
    if target.workload == "syscalls":
        points = [dict(sp, workload="syscalls")
                  for sp in results.get("syscalls", {}).get("points", []) if target.select(sp)]
    else:
        points = [p for p in results.get("points", [])
                  if p["workload"] == target.workload and target.select(p)]
    values = []
    for p in points:
        if target.workload == "syscalls":
            entry = p["loops"].get(SUBJECT) or {}
            value = entry.get("per_request")
        else:
            r = _ratio(p, SUBJECT, target.metric, target.reference)
            value = r["median"] if r else None
        label = _point_label(p)
        if target.workload == "echo" and client_bound(p, SUBJECT):
            label += " †"
        values.append((label, value))
    if not values:
        status = "not in this run"
    else:
        measured = [v for _, v in values if v is not None]
        ok = [(v >= target.limit) if target.higher_is_better else (v <= target.limit)
              for v in measured]
        if not all(ok):
            status = "missed"
        elif not measured:
            status = "n/a"
        elif len(measured) < len(values):
            status = "met where measured"
        else:
            status = "met"
    return {"status": status, "values": values}


def targets_lines(results: dict) -> list[str]:
    if SUBJECT not in results["config"]["loops"]:
        return []
    out = ["## Against the performance targets (issue 7)", "",
           "Each figure is uringloop's same-round median ratio at one point of this run "
           "(system calls: per request). n/a: uringloop could not run that point.", "",
           "| target | goal | status | figures |", "|---|---|---|---|"]
    for target in TARGETS:
        ev = evaluate_target(target, results)
        figures = "; ".join(
            f"{label} {'n/a' if v is None else f'{v:.2f}' + ('×' if target.reference else '')}"
            for label, v in ev["values"]) or "–"
        status = ev["status"]
        if status == "missed":
            status = "**missed**"
        out.append(f"| {target.what} | {target.goal} | {status} | {figures} |")
    ev = evaluate_memory_target(results)
    status = "**missed**" if ev["status"] == "missed" else ev["status"]
    requests = (results.get("memory") or {}).get("load", {}).get("requests_per_run")
    after = f"RSS after {fmt_count(requests)} requests" if requests else "RSS after the load runs"
    out.append(f"| memory per idle connection; {after} | ≤ uvloop's, no growth "
               f"(≤ {fmt_bytes(GROWTH_TOLERANCE)} across the runs) | {status} | "
               f"{'; '.join(ev['figures']) or '–'} |")
    out.append("")
    if any("†" in line for line in out):
        out += [f"† the load generator used {CLIENT_BOUND_PCT:.0f}% or more of its CPU in "
                f"uringloop's runs (median): the client may be what limited uringloop's rate "
                f"there (see the CPU figures in the latency table).", ""]
    return out


# "No growth" across the memory benchmark's load runs: RSS moves in pages and the allocator's
# arenas, so a difference this small between the first and the last run is not counted as growth.
GROWTH_TOLERANCE = 256 * 1024


def evaluate_memory_target(results: dict) -> dict:
    """Issue 7's memory row: uringloop's bytes per idle connection and RSS after the load runs
    at most uvloop's (same-round median ratios ≤ 1), and its RSS not growing across the runs.
    {"status": ..., "figures": [text]}."""
    mem = results.get("memory") or {}
    figures, verdicts = [], []
    for p in mem.get("idle", []):
        r = _ratio(p, SUBJECT, "bytes_per_conn", "uvloop")
        figures.append(f"idle ×{p['conns']} " + ("n/a" if r is None else
                                                 f"{r['median']:.2f}×"))
        verdicts.append(None if r is None else r["median"] <= 1.0)
    load = mem.get("load")
    if load:
        r = _ratio(load, SUBJECT, "rss", "uvloop")
        label = f"RSS after {fmt_count(load['requests_per_run'])} requests"
        figures.append(f"{label} " + ("n/a" if r is None else f"{r['median']:.2f}×"))
        verdicts.append(None if r is None else r["median"] <= 1.0)
        growth = _loop_entry(load, SUBJECT).get("growth")
        figures.append("growth " + ("n/a" if growth is None else
                                    f"{fmt_growth(growth)} over {load['runs']} runs"))
        verdicts.append(None if growth is None else growth <= GROWTH_TOLERANCE)
    if not verdicts:
        status = "not in this run"
    elif any(v is False for v in verdicts):
        status = "missed"
    elif all(v is None for v in verdicts):
        status = "n/a"
    elif any(v is None for v in verdicts):
        status = "met where measured"
    else:
        status = "met"
    return {"status": status, "figures": figures}


def fmt_count(n: int) -> str:
    """1000000 -> "1M", 100000 -> "100k", 2000 -> "2k", 2500 -> "2,500"."""
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n % 1000 == 0:
        return f"{n // 1000}k"
    return f"{n:,}"


# ---- Markdown -------------------------------------------------------------------------------

class Footnotes:
    """n/a cells point at numbered notes that give the error once."""

    def __init__(self):
        self.notes: list[str] = []

    def ref(self, text: Optional[str]) -> str:
        if not text:
            return ""
        if text not in self.notes:
            self.notes.append(text)
        return f" ({self.notes.index(text) + 1})"


def _loop_entry(point: dict, loop: str) -> dict:
    return point["loops"].get(loop, {})


def _metric(point: dict, loop: str, metric: str) -> Optional[dict]:
    return _loop_entry(point, loop).get("metrics", {}).get(metric, {}).get("summary")


def _ratio(point: dict, loop: str, metric: str, ref: str) -> Optional[dict]:
    return _loop_entry(point, loop).get("metrics", {}).get(metric, {}).get("ratios", {}).get(ref)


def _na(point: dict, loop: str, notes: Footnotes) -> str:
    entry = _loop_entry(point, loop)
    if not entry:
        return ""
    return notes.ref(entry.get("error"))


def _runs(point: dict, loop: str) -> list:
    return [r for r in _loop_entry(point, loop).get("runs", []) if r.get("ok")]


def _median_of(point: dict, loop: str, key: str) -> Optional[float]:
    values = [r[key] for r in _runs(point, loop) if key in r]
    return statistics.median(values) if values else None


def client_bound(point: dict, loop: str) -> bool:
    """Was the load generator's CPU saturated in this loop's runs of an echo point?"""
    cpu = _median_of(point, loop, "client_cpu_pct")
    return cpu is not None and cpu >= CLIENT_BOUND_PCT


def _latency_cell(point: dict, loop: str) -> str:
    p50, p99 = _metric(point, loop, "p50_us"), _metric(point, loop, "p99_us")
    if p50 is None:
        return "n/a"
    text = f"{fmt_us(p50['median'])} / {fmt_us(p99['median'] if p99 else None)}"
    server = _median_of(point, loop, "server_cpu_pct")
    if server is not None:
        text += f", {server:.0f}%"
    client = _median_of(point, loop, "client_cpu_pct")
    if client is not None:
        text += f" / {client:.0f}%"
    per_request = _median_of(point, loop, "server_cpu_us_per_request")
    if per_request is not None:
        text += f", {per_request:.1f} µs/req"
    return text


def disturbance(run: dict) -> Optional[float]:
    """The most that other processes took of the server's or the client's CPU during a run."""
    values = [run[k] for k in ("cpu_other_pct", "client_cpu_other_pct") if k in run]
    return max(values) if values else None


def _others_cell(point: dict, loops) -> str:
    return _others_text([r for lp in loops for r in _runs(point, lp)])


def _others_text(runs: list) -> str:
    """The worst disturbance of these runs, in bold from BUSY_PCT on."""
    others = [disturbance(r) for r in runs if disturbance(r) is not None]
    if not others:
        return "–"
    worst = max(others)
    return f"**{worst:.0f}%**" if worst >= BUSY_PCT else f"{worst:.0f}%"


def conditions_lines(results: dict) -> list[str]:
    """How undisturbed the runs were: the figures on a shared machine mean little without it."""
    runs = [r for p in results.get("points", []) if p["workload"] in ("echo", "paced", "http")
            for entry in p["loops"].values() for r in entry.get("runs", [])
            if r.get("ok") and disturbance(r) is not None]
    # One micro-benchmark process per loop and round (its benchmarks share it).
    micro = [r for p in results.get("points", [])[:] if p["workload"] == "micro"
             and p["name"] == "call_soon" for entry in p["loops"].values()
             for r in entry.get("runs", []) if r.get("ok") and "cpu_other_pct" in r]
    runs += micro
    if not runs:
        return []
    busy = [disturbance(r) for r in runs if disturbance(r) >= BUSY_PCT]
    client = [r["client_cpu_pct"] for r in runs
              if r.get("client_cpu_pct", 0) >= CLIENT_BOUND_PCT]
    lines = []
    if busy:
        lines.append(f"- **Disturbed runs**: in {len(busy)} of {len(runs)} runs other "
                     f"processes took ≥ {BUSY_PCT:.0f}% of the server's or the load generator's "
                     f"CPU (up to {max(busy):.0f}%); those points have a wider min–max. Rerun "
                     "on a quiet machine for figures to quote.")
    else:
        lines.append(f"- **Run conditions**: in none of the {len(runs)} runs did other "
                     f"processes take ≥ {BUSY_PCT:.0f}% of the server's or the load generator's "
                     "CPU.")
    repeated = [r for r in runs if r.get("attempts", 1) > 1]
    if repeated:
        retry = results["config"].get("retry", {})
        lines.append(f"- **Repeated runs**: {len(repeated)} runs disturbed by ≥ "
                     f"{retry.get('disturbed_pct', '?')}% were run again and the less disturbed "
                     "attempt kept (at most once per run, within a budget of "
                     f"{retry.get('budget', 0) * 100:.0f}% extra time).")
    restarts = results.get("server_restarts", [])
    if restarts:
        lines.append(f"- **Server restarts**: {len(restarts)} server processes died during the "
                     f"run and were replaced (first: {restarts[0]})")
    if client:
        lines.append(f"- **Load generator near saturation** in {len(client)} runs (CPU ≥ "
                     f"{CLIENT_BOUND_PCT:.0f}%): those rates may be limited by the client.")
    return lines


def _glibc_line(tunables: Optional[str]) -> str:
    """What the servers' GLIBC_TUNABLES were, and why (benchmarks/harness.py says more)."""
    if not tunables:
        return "- **glibc**: servers run with glibc's defaults"
    why = []
    if "rep_movsb_threshold" in tunables:
        why.append("`rep movsb` kept out of copies: on AMD Zen 3 it runs ~9x slower for some "
                   "heap layouts")
    if "trim_threshold" in tunables:
        why.append("malloc's trim and mmap thresholds fixed: left to glibc's dynamic adjustment, "
                   "a process that never freed a large chunk trims and regrows its heap top on "
                   "every large request, a page fault per page")
    return (f"- **glibc**: servers run with `GLIBC_TUNABLES={tunables}`"
            + (f" ({'; '.join(why)}; see benchmarks/harness.py)" if why else ""))


def metadata_lines(results: dict) -> list[str]:
    meta, cfg = results["meta"], results["config"]
    pk = meta.get("packages", {})

    def ver(name):
        info = pk.get(name) or {}
        return info.get("version") or f"n/a ({info.get('error', 'not installed')})"

    pin = cfg.get("pinning", {})
    lines = [
        f"- **Run**: `{cfg['command']}` ({cfg['mode']} mode), {meta['started_utc']} UTC, "
        f"{cfg['reps']} rounds per point, loops interleaved "
        f"{' '.join(cfg['loops'])} in the first round, the order rotated by one each round; "
        f"echo runs {cfg['duration']} s after "
        f"{cfg['warmup']} s warm-up; total {meta.get('elapsed_s', 0):.0f} s"
        + (" — **interrupted, partial results**" if results.get("interrupted") else ""),
        f"- **Machine**: {meta['cpu_model']}, {meta['cpus']} CPUs, "
        f"{meta['memory_gib']:.0f} GiB; kernel {meta['kernel']}; load average at start "
        f"{meta['loadavg_start']}, at end {meta.get('loadavg_end', '?')}",
        f"- **Python** {meta['python']} ({meta['python_executable']}); uringloop "
        f"{ver('uringloop')} (git {meta.get('git', '?')}), uvloop {ver('uvloop')}, aiohttp "
        f"{ver('aiohttp')}, matplotlib {ver('matplotlib')}; "
        f"{meta.get('wrk') or 'wrk: not installed'}",
        f"- **Pinning**: server process on CPU {pin.get('server', '–')}, load generator on CPU "
        f"{pin.get('client', '–')} (benchmarks/loadgen.c, `{meta.get('loadgen_build', '?')}`)",
        _glibc_line(cfg.get("glibc_tunables")),
        "- **Loops verified** (type of the running loop, printed by each server): "
        + ", ".join(f"{k} → `{v}`" for k, v in sorted(results.get("loop_types", {}).items())),
    ]
    return lines


def render_markdown(results: dict, image_prefix: str = "", heading: str = "#") -> str:
    """The results as Markdown.  image_prefix: path from the Markdown file to the plots;
    heading: the level of the title ("#"; sections are one level below)."""
    sub = heading + "#"
    return _render(results, image_prefix).replace("\n## ", f"\n{sub} ").replace(
        "# Benchmark results", f"{heading} Benchmark results", 1)


def _render(results: dict, image_prefix: str) -> str:
    loops = results["config"]["loops"]
    subject_present = SUBJECT in loops
    refs = [r for r in REFERENCES if r in loops]
    notes = Footnotes()
    out = ["# Benchmark results", ""]
    out += metadata_lines(results)
    out += conditions_lines(results)
    out += ["",
            "Cells: median over rounds [min–max]. Ratios: uringloop's figure ÷ the other loop's "
            "figure from the *same round*, median [min–max] over rounds; above 1 means uringloop "
            "is ahead for rates, below 1 means it is ahead for times. n/a: not measurable on "
            "that loop (reason in the notes at the end).", ""]

    ratio_cols = []
    if subject_present:
        ratio_cols = [(SUBJECT, r) for r in refs]
    if "uvloop" in loops and "asyncio" in loops:
        ratio_cols.append(("uvloop", "asyncio"))

    out += targets_lines(results)

    echo = [p for p in results.get("points", []) if p["workload"] == "echo"]
    if echo:
        out += ["## Echo: requests per second (higher is better)", ""]
        header = ["style", "size", "conns"] + loops + [f"{a} ÷ {b}" for a, b in ratio_cols]
        out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for p in echo:
            row = [p["style"], fmt_size(p["size"]), str(p["conns"])]
            row += [cell(_metric(p, lp, "rps"), fmt_rate, _na(p, lp, notes)) for lp in loops]
            row += [ratio_cell(_ratio(p, a, "rps", b)) for a, b in ratio_cols]
            out.append("| " + " | ".join(row) + " |")
        out += ["", "## Echo: latency p50 / p99, the server's and the load generator's CPU use "
                "(medians over rounds)",
                "",
                "CPU: the server process's CPU time ÷ wall time (100% = its CPU saturated; "
                "the kernel's softirq work for the loopback traffic comes on top), then the "
                "load generator's (near 100%, the client limits the rate), then the server's "
                "CPU time per request (over the load generator's whole run, warm-up included: "
                "for a server whose CPU is saturated about the inverse of its rate, below "
                "saturation the CPU each request cost; a server that spins while it waits "
                "counts the spin). "
                "Others: the "
                "most that other processes (or the hypervisor) took of the server's or the load "
                "generator's CPU in any run of the point — a disturbance, not part of the "
                "measurement.", ""]
        header = ["style", "size", "conns"] + loops + ["others (max)"]
        out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for p in echo:
            row = [p["style"], fmt_size(p["size"]), str(p["conns"])]
            row += [_latency_cell(p, lp) for lp in loops]
            row.append(_others_cell(p, loops))
            out.append("| " + " | ".join(row) + " |")
        out.append("")
        out += floor_lines(echo, notes)

    out += paced_lines(results, loops, notes)

    http = [p for p in results.get("points", []) if p["workload"] == "http"]
    if http or results.get("http_skipped"):
        out += ["## aiohttp hello world under wrk: requests per second (higher is better)", ""]
        if results.get("http_skipped"):
            out += [f"**Not run: {results['http_skipped']}**", ""]
        if http:
            header = ["conns"] + loops + [f"{a} ÷ {b}" for a, b in ratio_cols] + \
                     [f"{lp} p50 / p99, CPU" for lp in loops]
            out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for p in http:
                row = [str(p["conns"])]
                row += [cell(_metric(p, lp, "rps"), fmt_rate, _na(p, lp, notes)) for lp in loops]
                row += [ratio_cell(_ratio(p, a, "rps", b)) for a, b in ratio_cols]
                row += [_latency_cell(p, lp) for lp in loops]
                out.append("| " + " | ".join(row) + " |")
            out.append("")

    micro = [p for p in results.get("points", []) if p["workload"] == "micro"]
    if micro:
        out += ["## Loop micro-benchmarks: time (lower is better)", ""]
        header = ["benchmark", "work"] + loops + [f"{a} ÷ {b}" for a, b in ratio_cols]
        out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for p in micro:
            row = [MICRO_TITLES.get(p["name"], p["name"]), p.get("work", "")]
            row += [cell(_metric(p, lp, "seconds"), fmt_seconds, _na(p, lp, notes))
                    for lp in loops]
            row += [ratio_cell(_ratio(p, a, "seconds", b)) for a, b in ratio_cols]
            out.append("| " + " | ".join(row) + " |")
        out.append("")

    sys_points = results.get("syscalls", {})
    if sys_points.get("points"):
        out += ["## System calls per echo request (server process, all threads)", "",
                f"Counted with {sys_points.get('method_description', '?')}; the count covers "
                "the whole load-generator run (connection set-up and teardown included) and is "
                "divided by every request completed in it; one run per loop.", ""]
        header = ["point", "loop", "syscalls / request", "io_uring_enter / request",
                  "most frequent (per request)"]
        out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for sp in sys_points["points"]:
            label = f"{sp['style']} {fmt_size(sp['size'])} × {sp['conns']}"
            for lp in loops:
                entry = sp["loops"].get(lp)
                if not entry:
                    continue
                if entry.get("error"):
                    out.append(f"| {label} | {lp} | n/a{notes.ref(entry['error'])} | | |")
                    continue
                top = ", ".join(f"{k} {v:.2f}" for k, v in entry["top_per_request"].items())
                enter = entry["by_name"].get("io_uring_enter", 0) / entry["requests"]
                out.append(f"| {label} | {lp} | **{entry['per_request']:.3f}** | {enter:.3f} | "
                           f"{top} |")
        out.append("")
    elif sys_points.get("skipped"):
        out += ["## System calls per echo request", "", f"Not measured: {sys_points['skipped']}",
                ""]

    out += memory_lines(results, loops, ratio_cols, notes)

    plots = results.get("plots", [])
    if plots:
        out += ["## Plots", ""]
        out += [f"![{name}]({image_prefix}{name})" for name in plots]
        out.append("")
    elif results.get("plots_skipped"):
        out += [f"Plots not drawn: {results['plots_skipped']}", ""]

    if notes.notes:
        out += ["## Notes (n/a)", ""]
        out += [f"{i}. {text}" for i, text in enumerate(notes.notes, 1)]
        out.append("")
    return "\n".join(out)


def _fmt_pct(x: Optional[float]) -> str:
    return "–" if x is None else f"{x:.1f}%"


def _fmt_cpu_us(x: Optional[float]) -> str:
    return "–" if x is None else f"{x:.1f} µs"


def _fmt_count(x: Optional[float]) -> str:
    return "–" if x is None else f"{x:,.0f}"


def paced_lines(results: dict, loops, notes: Footnotes) -> list[str]:
    """The paced workload: a table per point of what each loop's server spent at that rate."""
    points = [p for p in results.get("points", []) if p["workload"] == "paced"]
    if not points:
        return []
    limit = points[0].get("shortfall_limit", 0.03)
    refs = [r for r in REFERENCES if r in loops]
    out = ["## Paced load: the server's CPU at fixed request rates (lower CPU is better)", "",
           "Echo at request rates that every loop sustains (`loadgen.c --rate`: each connection "
           "keeps at most one request in flight and sleeps until its next one is due, so the "
           "server sees idle gaps between requests), measuring what the throughput tables "
           "cannot show: the CPU a loop spends on a given load. uringloop's waits spin before "
           "they sleep (`URINGLOOP_SPIN_US`, default 100 µs); closed-loop throughput shows what "
           "that buys, not what it costs. **Server CPU**: the server process's CPU time (all "
           "its threads) over the load generator's measurement window ÷ the window's wall "
           "time (100% = one CPU). **CPU / request**: that CPU time ÷ the requests completed in "
           "the window. **p50 / p99**: the client's latency, send to last byte echoed. "
           "**÷ uvloop, ÷ asyncio**: the loop's CPU per request ÷ the other loop's from the "
           "same round, median [min–max] over rounds — **below 1 = less CPU than that loop "
           f"(better)**. A run that achieved less than the rate by more than {limit:.0%} did "
           "not sustain it: it is reported as such and left out of the medians and ratios. "
           "Others: the most that other processes took of the server's or the load "
           "generator's CPU in the loop's runs.", ""]
    header = ["loop", "achieved req/s", "server CPU", "CPU / request", "p50 / p99"] + \
             [f"CPU ÷ {r}" for r in refs] + ["others (max)"]
    for p in points:
        conns = f"{p['conns']} connection" + ("s" if p["conns"] != 1 else "")
        out += [f"**{p['style']} {fmt_size(p['size'])} × {conns} at {p['rate']:,.0f} "
                "requests/s**", ""]
        out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for lp in loops:
            entry = _loop_entry(p, lp)
            if not entry:
                continue
            runs = entry.get("runs", [])
            short = [r for r in runs if r.get("short")]
            if short and len(short) == len(runs):
                achieved = sorted(r["rps"] for r in short)
                row = [lp, f"**could not sustain the rate**: achieved "
                           f"{_fmt_count(achieved[len(achieved) // 2])}"
                           + (f" [{_fmt_count(achieved[0])}–{_fmt_count(achieved[-1])}]"
                              if len(achieved) > 1 else "")]
                row += ["–"] * (len(header) - 3)
                row.append(_others_text(short))
                out.append("| " + " | ".join(row) + " |")
                continue
            achieved = cell(_metric(p, lp, "rps"), _fmt_count, _na(p, lp, notes))
            if short:
                achieved += (f" — **{len(short)} of {len(runs)} runs short of the rate** "
                             "(achieved " + ", ".join(_fmt_count(r["rps"]) for r in short)
                             + ")")
            p50, p99 = _metric(p, lp, "p50_us"), _metric(p, lp, "p99_us")
            latency = "–" if p50 is None else \
                f"{fmt_us(p50['median'])} / {fmt_us(p99['median'] if p99 else None)}"
            row = [lp, achieved, cell(_metric(p, lp, "server_cpu_pct"), _fmt_pct),
                   cell(_metric(p, lp, "cpu_us_per_request"), _fmt_cpu_us), latency]
            row += [ratio_cell(_ratio(p, lp, "cpu_us_per_request", r)) if r != lp else "–"
                    for r in refs]
            row.append(_others_text([r for r in runs if r.get("ok") or r.get("short")]))
            out.append("| " + " | ".join(row) + " |")
        out.append("")
    return out


def floor_lines(echo: list, notes: Footnotes) -> list[str]:
    """The echo points where the C io_uring floor ran in the same rounds as the loops."""
    points = [p for p in echo if FLOOR in p["loops"]]
    if not points:
        return []
    out = ["## The C io_uring floor: requests per second (higher is better)", "",
           "`benchmarks/uring_echo.c`: a minimal single-threaded C echo server on the same "
           "io_uring interface (raw system calls, `SINGLE_ISSUER | DEFER_TASKRUN`, one "
           "`io_uring_enter` per iteration, a receive and then a send per request into one "
           "buffer per connection, no copies), run in the same rounds as the loops at these "
           "points. It shows what the kernel and this load generator allow a program with no "
           "interpreter; uringloop ÷ floor is how close the loop comes to it.", ""]
    others = [lp for lp in (SUBJECT,) + REFERENCES if any(lp in p["loops"] for p in points)]
    header = ["style", "size", "conns", FLOOR] + others + \
             [f"{SUBJECT} ÷ floor", "floor ÷ uvloop", "floor p50 / p99, CPU"]
    out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for p in points:
        row = [p["style"], fmt_size(p["size"]), str(p["conns"])]
        row += [cell(_metric(p, lp, "rps"), fmt_rate, _na(p, lp, notes))
                for lp in [FLOOR] + others]
        row += [ratio_cell(_ratio(p, SUBJECT, "rps", FLOOR)),
                ratio_cell(_ratio(p, FLOOR, "rps", "uvloop")), _latency_cell(p, FLOOR)]
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    return out


def memory_lines(results: dict, loops, ratio_cols, notes: Footnotes) -> list[str]:
    mem = results.get("memory") or {}
    out = []
    idle = mem.get("idle") or []
    if idle:
        out += ["## Memory per idle connection (lower is better)", "",
                f"The `{mem.get('style', 'protocol')}` echo server (the echo benchmark's), a "
                "fresh process per loop and round: (VmRSS with N idle connections − VmRSS with "
                "none) ÷ N, in bytes. Each connection has echoed one byte before it counts (the "
                "server has accepted it, made its transport and protocol and served a receive); "
                "the N connections are held together, the smaller count first. The baseline is "
                f"read after {mem.get('warmup_conns', '?')} warm-up connections came and went. "
                "Kernel memory (socket structures, TCP buffers, io_uring's kernel side) is not "
                "in RSS and not counted.", ""]
        header = ["idle connections"] + loops + [f"{a} ÷ {b}" for a, b in ratio_cols]
        out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for p in idle:
            row = [f"{p['conns']:,}"]
            row += [cell(_metric(p, lp, "bytes_per_conn"), fmt_bytes_exact, _na(p, lp, notes))
                    for lp in loops]
            row += [ratio_cell(_ratio(p, a, "bytes_per_conn", b)) for a, b in ratio_cols]
            out.append("| " + " | ".join(row) + " |")
        base = []
        for lp in loops:
            rss0 = [r["rss0"] for r in _runs(idle[0], lp) if "rss0" in r]
            if rss0:
                base.append(f"{lp} {fmt_bytes(statistics.median(rss0))}")
        if base:
            out += ["", "RSS with no connection (median over rounds): " + ", ".join(base) + "."]
        out.append("")
    load = mem.get("load")
    if load:
        n_runs = load["runs"]
        out += ["## Memory across repeated load runs (lower is better)", "",
                f"{n_runs} runs of exactly {load['requests_per_run']:,} echo requests "
                f"({fmt_size(load['size'])}, {load['conns']} connections, benchmarks/loadgen.c) "
                "against the same server process per loop, the loops interleaved run by run; "
                "VmRSS read after each run. Growth: RSS after the last run − after the first "
                f"(“no growth”: within {fmt_bytes(GROWTH_TOLERANCE)}). Ratios: RSS ÷ the other "
                "loop's RSS after the same run, median [min–max] over the runs.", ""]
        refs = [b for b in REFERENCES if b in loops]
        header = (["loop", "before"] + [f"after run {i + 1}" for i in range(n_runs)]
                  + ["growth", "growth / request"] + [f"÷ {b}" for b in refs])
        out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for lp in loops:
            entry = _loop_entry(load, lp)
            if not entry:
                continue
            runs = entry.get("runs", [])
            if entry.get("error"):
                out.append(f"| {lp} | n/a{notes.ref(entry['error'])} |"
                           + " |" * (len(header) - 2))
                continue
            row = [lp, fmt_bytes(entry.get("rss_before"))]
            row += [fmt_bytes(r["rss"]) if r.get("ok") else f"n/a{notes.ref(r.get('error'))}"
                    for r in runs]
            row += [""] * (n_runs - len(runs))
            growth = entry.get("growth")
            row.append(f"**{fmt_growth(growth)}**" if growth is not None else "–")
            per_req = entry.get("growth_per_request")
            row.append("–" if per_req is None else f"{per_req:+.2f} B")
            row += [ratio_cell(_ratio(load, lp, "rss", b)) if b != lp else "–" for b in refs]
            out.append("| " + " | ".join(row) + " |")
        rates = []
        for lp in loops:
            rps = [r["rps"] for r in _runs(load, lp) if "rps" in r]
            if rps:
                rates.append(f"{lp} {fmt_rate(statistics.median(rps))}")
        if rates:
            out += ["", "Echo rate during these runs (median, req/s; not a throughput "
                        "measurement): " + ", ".join(rates) + "."]
        out.append("")
    return out


# ---- plots ----------------------------------------------------------------------------------

def draw_plots(results: dict, out_dir: Path) -> list[str]:
    """echo.png (req/s per style) and summary.png (ratios, HTTP, micro, syscalls)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.patches
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    loops = results["config"]["loops"]
    points = results.get("points", [])
    written = []

    echo = [p for p in points if p["workload"] == "echo"]
    if echo:
        # One panel per (style, message size), connections along x, a linear scale each: the
        # rates of 1 KiB and 100 KiB messages differ by two orders of magnitude.
        styles = list(dict.fromkeys(p["style"] for p in echo))
        sizes = sorted({p["size"] for p in echo})
        fig, axes = plt.subplots(len(styles), len(sizes),
                                 figsize=(max(3.6 * len(sizes) + 0.6, 8.0), 2.4 * len(styles) + 0.8),
                                 squeeze=False)
        for row, style in enumerate(styles):
            for col, size in enumerate(sizes):
                ax = axes[row, col]
                sp = [p for p in echo if p["style"] == style and p["size"] == size]
                if not sp:
                    ax.set_axis_off()
                    continue
                _grouped_bars(ax, sp, loops, "rps", [f"×{p['conns']}" for p in sp])
                ax.set_title(f"{style}, {fmt_size(size)}: req/s", fontsize=9)
                ax.yaxis.set_major_formatter(
                    matplotlib.ticker.FuncFormatter(lambda v, _: fmt_rate(v)))
                ax.tick_params(axis="y", labelsize=7)
        handles = [matplotlib.patches.Patch(color=LOOP_COLORS.get(lp), label=lp) for lp in loops]
        fig.legend(handles=handles, loc="upper right", ncol=len(loops), fontsize=8)
        fig.suptitle("echo: requests/s by connections (median; whiskers: min–max)",
                     fontsize=10, x=0.01, y=0.99, ha="left", va="top")
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
        fig.savefig(out_dir / "echo.png", dpi=80)
        plt.close(fig)
        written.append("echo.png")

    panels = []
    if SUBJECT in loops and any(p["workload"] in ("echo", "http", "micro") for p in points):
        panels.append("ratios")
    if any(p["workload"] == "http" for p in points):
        panels.append("http")
    if any(p["workload"] == "micro" for p in points):
        panels.append("micro")
    if results.get("syscalls", {}).get("points"):
        panels.append("syscalls")
    if (results.get("memory") or {}).get("idle"):
        panels.append("memory")
    if panels:
        fig, axes = plt.subplots(len(panels), 1, figsize=(11, 3.0 * len(panels) + 0.4),
                                 squeeze=False)
        for ax, panel in zip(axes[:, 0], panels):
            if panel == "ratios":
                _ratio_panel(ax, [p for p in points
                                  if p["workload"] in ("echo", "http", "micro")])
            elif panel == "http":
                hp = [p for p in points if p["workload"] == "http"]
                _grouped_bars(ax, hp, loops, "rps", [f"×{p['conns']}" for p in hp])
                ax.set_title("aiohttp hello world under wrk: requests/s", fontsize=10)
                ax.legend(fontsize=8)
            elif panel == "micro":
                _micro_panel(ax, [p for p in points if p["workload"] == "micro"], loops)
            elif panel == "memory":
                idle = results["memory"]["idle"]
                _grouped_bars(ax, idle, loops, "bytes_per_conn",
                              [f"{p['conns']:,} idle connections" for p in idle])
                ax.set_title("server memory per idle connection: bytes of RSS (lower is "
                             "better)", fontsize=10)
                ax.legend(fontsize=8)
            else:
                _syscall_panel(ax, results["syscalls"]["points"], loops)
        fig.tight_layout()
        fig.savefig(out_dir / "summary.png", dpi=80)
        plt.close(fig)
        written.append("summary.png")
    return written


def _grouped_bars(ax, points, loops, metric, labels):
    width = 0.8 / max(1, len(loops))
    for i, lp in enumerate(loops):
        xs, ys, lo, hi = [], [], [], []
        for x, p in enumerate(points):
            s = _metric(p, lp, metric)
            if s is None:
                ax.text(x + (i - (len(loops) - 1) / 2) * width, 0.03, "n/a", rotation=90,
                        ha="center", va="bottom", fontsize=7, transform=ax.get_xaxis_transform(),
                        color=LOOP_COLORS.get(lp, "k"))
                continue
            xs.append(x + (i - (len(loops) - 1) / 2) * width)
            ys.append(s["median"])
            lo.append(s["median"] - s["min"])
            hi.append(s["max"] - s["median"])
        if xs:
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=lp,
                   color=LOOP_COLORS.get(lp), error_kw={"elinewidth": 0.8})
    ax.set_xticks(range(len(points)))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_xlim(-0.5, len(points) - 0.5)
    ax.grid(axis="y", alpha=0.3)


def _micro_panel(ax, points, loops):
    """Times relative to the stock loop's time in the same round (stock = 1): the four
    benchmarks take from microseconds to seconds, so absolute times share no scale."""
    width = 0.8 / max(1, len(loops))
    for i, lp in enumerate(loops):
        xs, ys = [], []
        for x, p in enumerate(points):
            if lp == "asyncio":
                value = 1.0 if _metric(p, lp, "seconds") else None
            else:
                r = _ratio(p, lp, "seconds", "asyncio")
                value = r["median"] if r else None
            if value is not None:
                xs.append(x + (i - (len(loops) - 1) / 2) * width)
                ys.append(value)
        if xs:
            _bars_from_one(ax, xs, ys, width, lp, "{:.2f}×")
    ax.set_xticks(range(len(points)))
    ax.set_xticklabels([MICRO_TITLES.get(p["name"], p["name"]) for p in points], fontsize=8)
    ax.set_xlim(-0.5, len(points) - 0.5)
    ax.set_title("loop micro-benchmarks: time relative to the stock loop, log scale "
                 "(below 1 = faster than stock)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def _bars_from_one(ax, xs, ys, width, label, fmt):
    """Ratio bars on a log scale, drawn from 1 (parity) up or down to the value, labelled."""
    ax.set_yscale("log")
    heights = [y - 1.0 for y in ys]
    ax.bar(xs, heights, width, bottom=1.0, label=label,
           color=LOOP_COLORS.get(label.replace("vs ", "")))
    for x, y in zip(xs, ys):
        ax.text(x, y, fmt.format(y), ha="center", va="bottom" if y >= 1 else "top",
                fontsize=6)
    ax.axhline(1.0, color="k", linewidth=0.8)


def _ratio_panel(ax, points):
    labels, values = [], {ref: [] for ref in REFERENCES}
    for p in points:
        if p["workload"] == "echo":
            label = f"{p['style']} {fmt_size(p['size'])}×{p['conns']}"
        elif p["workload"] == "http":
            label = f"aiohttp ×{p['conns']}"
        else:
            label = MICRO_TITLES.get(p["name"], p["name"])
        metric = "seconds" if p["workload"] == "micro" else "rps"
        labels.append(label)
        for ref in REFERENCES:
            r = _ratio(p, SUBJECT, metric, ref)
            # Micro-benchmarks are times: invert so that above 1 means "uringloop faster"
            # everywhere in this panel.
            if r is not None and metric == "seconds":
                r = 1.0 / r["median"] if r["median"] else None
            elif r is not None:
                r = r["median"]
            values[ref].append(r)
    width = 0.4
    for i, ref in enumerate(REFERENCES):
        xs = [x + (i - 0.5) * width for x, v in enumerate(values[ref]) if v is not None]
        ys = [v for v in values[ref] if v is not None]
        if xs:
            _bars_from_one(ax, xs, ys, width, f"vs {ref}", "{:.2f}")
    for x in range(len(labels)):
        if all(values[ref][x] is None for ref in REFERENCES):
            ax.text(x, 1.0, "n/a", ha="center", va="center", fontsize=7, color="#d62728")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=6)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.set_title("uringloop's speed-up over the other loops, same-round medians, log scale "
                 "(above 1 = uringloop faster)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def _syscall_panel(ax, sys_points, loops):
    labels = [f"{sp['style']} {fmt_size(sp['size'])}×{sp['conns']}" for sp in sys_points]
    width = 0.8 / max(1, len(loops))
    for i, lp in enumerate(loops):
        xs, ys = [], []
        for x, sp in enumerate(sys_points):
            entry = sp["loops"].get(lp)
            if entry and not entry.get("error"):
                xs.append(x + (i - (len(loops) - 1) / 2) * width)
                ys.append(entry["per_request"])
            elif entry:
                ax.text(x + (i - (len(loops) - 1) / 2) * width, 0.03, "n/a", rotation=90,
                        ha="center", va="bottom", fontsize=7, transform=ax.get_xaxis_transform(),
                        color=LOOP_COLORS.get(lp, "k"))
        if xs:
            ax.bar(xs, ys, width, label=lp, color=LOOP_COLORS.get(lp))
            for x, y in zip(xs, ys):
                ax.text(x, y, f"{y:.2f}" if y < 10 else f"{y:.0f}", ha="center", va="bottom",
                        fontsize=7)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.set_title("system calls per echo request (lower is better)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


README_START = "<!-- latest results: written by benchmarks/run.py, do not edit by hand -->"
README_END = "<!-- end of latest results -->"


def update_readme(results: dict, readme: Path, out_dir: Path) -> bool:
    """Put this run's tables and plots between the markers of benchmarks/README.md, so that the
    README always shows the latest results.  False when the README has no markers."""
    try:
        text = readme.read_text()
    except OSError:
        return False
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return False
    prefix = os.path.relpath(out_dir, readme.parent).replace(os.sep, "/") + "/"
    body = render_markdown(results, image_prefix=prefix, heading="##")
    body = body.replace("## Benchmark results\n", "", 1).strip()
    readme.write_text(text[:start + len(README_START)] + "\n\n" + body + "\n\n" + text[end:])
    return True


def write_all(results: dict, out_dir: Path) -> list[Path]:
    """results.json, results.md and the plots into out_dir; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        results["plots"] = draw_plots(results, out_dir)
        results.pop("plots_skipped", None)
    except ImportError as exc:
        results["plots"] = []
        results["plots_skipped"] = f"matplotlib is not installed ({exc})"
    written += [out_dir / name for name in results["plots"]]
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out_dir / "results.md").write_text(render_markdown(results))
    return [out_dir / "results.json", out_dir / "results.md"] + written


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results" /
                "results.json")
    data = json.loads(path.read_text())
    for p in write_all(data, path.parent):
        print(p)
