"""What an idle terminal costs: CPU time of each ``parley serve`` in a full mesh.

Starts ``--terminals`` real terminals on loopback (``parley serve`` processes,
SQLite, mutual TLS), every one pinning every other (so each has N-1 peers),
lets them settle (the first link tests and witness rounds), then reads each
process's CPU time (user + system, all threads, from ``/proc/PID/stat``) at
the start and the end of an idle window in which nobody sends anything. The
figure is CPU seconds per wall second, as a percentage of one core: CPU time
a process used is not inflated by other load on the machine, so the numbers
hold on a shared machine as long as the terminals keep up.

Usage: ``python -m benchmarks.idle_cpu [--terminals N] [--window S] [--settle S] [--every S]
[--json FILE]`` (``--every``: print how the start-up settles, interval by interval)
(``make bench-idle`` runs 4 and 16 terminals).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

from parley.testing.network import TerminalProcess, make_network

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (every thread), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # Fields 14 and 15 of proc(5) (utime, stime), counted after the command name.
    return (int(fields[11]) + int(fields[12])) / TICKS


def measure(terminals: int, window: float, settle: float, every: float = 0.0) -> dict[str, Any]:
    parties = [(f"T{i:02d}", f"Terminal {i}") for i in range(1, terminals + 1)]
    with tempfile.TemporaryDirectory(prefix="parley-idle-") as tmp:
        began = time.monotonic()
        # The loop guard is a test aid: the benchmark runs terminals as deployed.
        quiet = {"PARLEY_LOOP_GUARD": ""}
        network = make_network(Path(tmp), parties, serve_env={party: quiet for party, _ in parties})
        pinned = time.monotonic() - began
        procs: list[TerminalProcess] = list(network.values())
        try:
            for terminal in procs:
                terminal.start(wait=False)
            for terminal in procs:
                terminal.wait_ready(timeout=60 + 5 * terminals)
            started = time.monotonic() - began - pinned
            print(
                f"{terminals} terminals pinned in {pinned:.0f} s, up in {started:.0f} s; "
                f"settling {settle:.0f} s",
                flush=True,
            )
            pids = {t.party: t.proc.pid for t in procs if t.proc is not None}
            timeline = []
            if every > 0:  # how the start-up settles: all terminals' share, interval by interval
                settled_at = time.monotonic() + settle
                before = sum(cpu_seconds(pid) for pid in pids.values())
                at = time.monotonic()
                while at + every <= settled_at:
                    time.sleep(every)
                    now, used = time.monotonic(), sum(cpu_seconds(pid) for pid in pids.values())
                    share = 100.0 * (used - before) / (now - at)
                    timeline.append(round(share, 1))
                    print(f"  {now - began:5.0f} s after start: {share:5.1f} % of a core in all")
                    before, at = used, now
                time.sleep(max(0.0, settled_at - time.monotonic()))
            else:
                time.sleep(settle)
            first = {party: cpu_seconds(pid) for party, pid in pids.items()}
            t0 = time.monotonic()
            time.sleep(window)
            last = {party: cpu_seconds(pid) for party, pid in pids.items()}
            elapsed = time.monotonic() - t0
            dead = [t.party for t in procs if not t.running]
            if dead:
                raise RuntimeError(f"terminals exited during the window: {dead}")
        finally:
            for terminal in procs:  # all at once: a large mesh stops in seconds, not minutes
                if terminal.proc is not None and terminal.proc.poll() is None:
                    terminal.proc.send_signal(signal.SIGTERM)
            for terminal in procs:
                terminal.stop()
    percent = {p: 100.0 * (last[p] - first[p]) / elapsed for p in pids}
    return {
        "terminals": terminals,
        "peers_each": terminals - 1,
        "window_s": round(elapsed, 1),
        "percent_of_a_core": {
            "mean": round(statistics.fmean(percent.values()), 2),
            "median": round(statistics.median(percent.values()), 2),
            "max": round(max(percent.values()), 2),
            "total": round(sum(percent.values()), 1),
        },
        "per_terminal": {p: round(v, 2) for p, v in sorted(percent.items())},
        "settling_percent_of_a_core_in_all": timeline,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--terminals", type=int, nargs="+", default=[4])
    parser.add_argument("--window", type=float, default=60.0, help="idle seconds measured")
    parser.add_argument("--settle", type=float, default=30.0, help="seconds before the window")
    parser.add_argument(
        "--every",
        type=float,
        default=0.0,
        help="print all terminals' CPU share every S seconds while settling (0: do not)",
    )
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    results = []
    for count in args.terminals:
        result = measure(count, args.window, args.settle, args.every)
        share = result["percent_of_a_core"]
        print(
            f"{count} terminals ({count - 1} peers each), idle {result['window_s']} s: "
            f"{share['mean']} % of a core per terminal on average "
            f"(median {share['median']} %, max {share['max']} %, all {share['total']} %)",
            flush=True,
        )
        results.append(result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
