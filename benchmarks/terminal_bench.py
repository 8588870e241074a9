"""Delivery latency and throughput between two real terminals on this machine.

Two ``parley serve`` processes (SQLite, WAL, synchronous=FULL) on loopback
over mutual TLS. Two runs:

* latency: FLASH messages sent one at a time through the operator API; for
  each, the time from the sender storing it (in the same transaction as the
  outbox row) to the sender storing the receiver's verified receipt, both
  read from the sender's own database clock;
* throughput: ROUTINE messages queued as fast as the operator API takes them,
  then the time until the last receipt is held.

Usage: ``python -m benchmarks.terminal_bench [--latency N] [--throughput N] [--json FILE]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import select

from parley.config import DataDir
from parley.store import models as m
from parley.store.db import engine_for
from parley.testing.network import TerminalProcess, make_network, wait_until


def _latencies(url: str, ids: list[str]) -> list[float]:
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            sent = dict(
                conn.execute(
                    select(m.messages.c.envelope_id, m.messages.c.stored_at).where(
                        m.messages.c.envelope_id.in_(ids)
                    )
                ).all()
            )
            held = dict(
                conn.execute(
                    select(m.receipts.c.envelope_id, m.receipts.c.stored_at).where(
                        m.receipts.c.envelope_id.in_(ids)
                    )
                ).all()
            )
    finally:
        engine.dispose()
    return [(held[i] - sent[i]).total_seconds() * 1000 for i in ids if i in held]


def _receipted(terminal: TerminalProcess, message_id: str) -> Callable[[], bool]:
    return lambda: "RU-GS" in terminal.api("GET", f"/messages/{message_id}")["receipts"]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def run(latency_n: int, throughput_n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as tmp:
        terminals = make_network(
            Path(tmp), [("US-EUCOM", "US European Command"), ("RU-GS", "General Staff")]
        )
        us, ru = terminals["US-EUCOM"], terminals["RU-GS"]
        try:
            for t in (us, ru):
                t.start(wait=False)
            for t in (us, ru):
                t.wait_ready()
            url = DataDir(us.data).load_config().database
            # Warm-up: connections, witnessing.
            for _ in range(5):
                us.api("POST", "/messages", {"to": ["RU-GS"], "precedence": "FLASH", "text": "w"})
            wait_until(lambda: us.api("GET", "/status")["pending"] == 0, timeout=60)

            ids = []
            for i in range(latency_n):
                body = {"to": ["RU-GS"], "precedence": "FLASH", "text": f"latency probe {i}"}
                message_id = us.api("POST", "/messages", body)["id"]
                ids.append(message_id)
                wait_until(_receipted(us, message_id), timeout=60, interval=0.002)
            latencies = _latencies(url, ids)

            started = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                list(
                    pool.map(
                        lambda i: us.api(
                            "POST",
                            "/messages",
                            {"to": ["RU-GS"], "precedence": "ROUTINE", "text": f"bulk {i}"},
                        ),
                        range(throughput_n),
                    )
                )
            queued = time.perf_counter() - started
            wait_until(lambda: us.api("GET", "/status")["pending"] == 0, timeout=600, interval=0.05)
            drained = time.perf_counter() - started
        finally:
            for t in (us, ru):
                t.stop()
    return {
        "latency_messages": len(latencies),
        "latency_ms": {
            "p50": round(statistics.median(latencies), 2),
            "p95": round(_pct(latencies, 95), 2),
            "p99": round(_pct(latencies, 99), 2),
            "max": round(max(latencies), 2),
        },
        "throughput_messages": throughput_n,
        "accept_rate_msgs_per_s": round(throughput_n / queued, 1),
        "throughput_msgs_per_s": round(throughput_n / drained, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=int, default=200, help="FLASH messages, one at a time")
    parser.add_argument("--throughput", type=int, default=1000, help="ROUTINE messages queued")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    result = run(args.latency, args.throughput)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
