"""An inbox read of 200 rows, checked against the signed record, in one process.

Two terminals (SQLite); the sender's ``--messages`` texts are received by the
other, which then reads its inbox (200 rows, as the console's inbox page does
every second) in four ways, median of ``--repeat`` reads in milliseconds:

* ``index only``: the rows of ``messages`` and nothing checked (what pages read before);
* ``running, cold``: the running terminal, first read (every signature checked);
* ``running, warm``: the running terminal again (leaf hash compared with the
  verified tree, signature remembered by leaf hash, content digest recomputed);
* ``stopped, cold`` / ``stopped, warm``: ``Records`` on the stopped terminal's
  database (as ``parley inbox`` reads it): the tree of stored leaves verified
  against the signed checkpoint, then the same checks.

Usage: ``python -m benchmarks.signed_reads [--messages N] [--repeat N]``
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import select

from parley.service.reads import Records
from parley.service.terminal import Draft, Terminal
from parley.store import models as m
from parley.store.db import engine_for, reading
from parley.testing.network import PASSPHRASE, make_network


def _ms(action: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        action()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="parley-reads-") as tmp:
        terminals = make_network(Path(tmp), [("US-EUCOM", "US"), ("RU-GS", "RU")])
        us = Terminal.open(terminals["US-EUCOM"].data, PASSPHRASE)
        ru = Terminal.open(terminals["RU-GS"].data, PASSPHRASE)
        try:
            sent = us.send_many(
                [
                    Draft(("RU-GS",), "text", {"text": f"situation report {i} " * 20}, "duty")
                    for i in range(args.messages)
                ]
            )
            raws = [us.party.sent(s["id"]).raw for s in sent]
            for lo in range(0, len(raws), 50):
                ru.receive_batch(raws[lo : lo + 50], tls_party="US-EUCOM")

            def index_only() -> Any:
                with reading(ru.engine) as conn:
                    return conn.execute(
                        select(m.messages)
                        .where(m.messages.c.direction == "in")
                        .order_by(m.messages.c.log_index.desc())
                        .limit(200)
                    ).all()

            results["index only"] = _ms(index_only, args.repeat)
            results["running, cold"] = _ms(lambda: ru.messages("in"), 1)
            assert len(ru.messages("in")) == 200
            assert all(item["verified"] for item in ru.messages("in"))
            results["running, warm"] = _ms(lambda: ru.messages("in"), args.repeat)
            card = ru.identity.card
        finally:
            us.engine.dispose()
            ru.engine.dispose()
        engine = engine_for(ru.config.database)
        try:
            records = Records(engine, "RU-GS", own_card=card)
            results["stopped, cold"] = _ms(lambda: records.messages("in"), 1)
            results["stopped, warm"] = _ms(lambda: records.messages("in"), args.repeat)
        finally:
            engine.dispose()
    print(f"inbox of 200 rows ({args.messages} received), median ms:")
    for name, value in results.items():
        print(f"  {name:<15} {value:8.2f}")


if __name__ == "__main__":
    main()
