"""The FLASH path in one process, stage by stage, without HTTP.

Two terminals (SQLite, WAL, ``synchronous=FULL``) opened in this process; for
each of ``--messages`` FLASH messages: the sender accepts it (seal, commit),
finds it due, the receiver takes it (open, checkpoint, receipt, commit) and
the sender keeps the receipt (verify, commit). Medians in milliseconds. Set
beside ``parley bench``'s latency, the difference is what HTTP, TLS and the
hops between the event loop and worker threads cost.

Usage: ``python -m benchmarks.flash_path [--messages N]``
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import structlog

from parley.service.terminal import Terminal
from parley.testing.network import PASSPHRASE, make_network


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    stages: dict[str, list[float]] = {"accept": [], "due": [], "receive": [], "receipt": []}
    with tempfile.TemporaryDirectory(prefix="parley-flash-") as tmp:
        terminals = make_network(Path(tmp), [("US-EUCOM", "US"), ("RU-GS", "RU")])
        us = Terminal.open(terminals["US-EUCOM"].data, PASSPHRASE)
        ru = Terminal.open(terminals["RU-GS"].data, PASSPHRASE)
        try:
            for i in range(args.messages):
                t0 = time.perf_counter()
                us.send(
                    ["RU-GS"],
                    kind="text",
                    body={"text": f"p {i}"},
                    operator="duty",
                    precedence="FLASH",
                )
                t1 = time.perf_counter()
                raw = us.due_deliveries("RU-GS", 32, urgent=True)[0]["raw"]
                t2 = time.perf_counter()
                receipt = ru.receive_envelope(raw, tls_party="US-EUCOM")
                t3 = time.perf_counter()
                us.receive_receipts([receipt], peer="RU-GS")
                t4 = time.perf_counter()
                for stage, seconds in zip(
                    stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True
                ):
                    stages[stage].append(seconds * 1000)
        finally:
            us.engine.dispose()
            ru.engine.dispose()
    medians = {stage: statistics.median(values) for stage, values in stages.items()}
    for stage, value in medians.items():
        print(f"{stage:8} {value:6.2f} ms")
    print(f"{'total':8} {sum(medians.values()):6.2f} ms (sum of the medians)")


if __name__ == "__main__":
    main()
