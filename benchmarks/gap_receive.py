"""Receive time per batch behind a withheld sequence number, beside no gap at all.

Three terminals (SQLite, WAL, ``synchronous=FULL``) opened in this process.
US-EUCOM seals ``--gap`` + ``--batches`` x ``--batch`` messages to each of
RU-GS and UA-GS. RU-GS receives all of them but sequence number 1, so every
batch it takes lands behind a gap that grows to ``--gap`` envelopes; UA-GS
receives everything in order. Each receiver takes its envelopes through
``Terminal.receive_batch`` (open, log, receipts, commit), as the peer
listener does, in batches of ``--batch``. Printed: the median time per batch
for the first and the last ``--batches`` batches of each, as wall time and
as this process's CPU time (the CPU time is what other load on a shared
machine does not inflate). Flat means the gap costs nothing per batch.

Usage: ``python -m benchmarks.gap_receive [--gap 15000] [--batch 256] [--batches 8]``
(``--gap 1000 --batches 4`` checks that it works in a few seconds).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import structlog

from parley.core.party import bilateral_channel
from parley.service.terminal import Draft, Terminal
from parley.testing.network import PASSPHRASE, make_network, set_peer_quota

PARTIES = [("US-EUCOM", "US"), ("RU-GS", "RU"), ("UA-GS", "UA")]


def _seal(us: Terminal, to: str, count: int) -> list[bytes]:
    raws: list[bytes] = []
    while len(raws) < count:
        n = min(1000, count - len(raws))
        drafts = [Draft((to,), "text", {"text": f"m {len(raws) + i}"}, "duty") for i in range(n)]
        raws.extend(us.party.sent(s["id"]).raw for s in us.send_many(drafts))
    return raws


def _receive(terminal: Terminal, raws: Sequence[bytes], batch: int) -> list[tuple[float, float]]:
    """(wall, cpu) seconds per batch."""
    times: list[tuple[float, float]] = []
    for lo in range(0, len(raws), batch):
        wall, cpu = time.perf_counter(), time.process_time()
        answers = terminal.receive_batch(raws[lo : lo + batch], tls_party="US-EUCOM")
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
        if not all(isinstance(a, bytes) for a in answers):
            raise RuntimeError(
                f"envelopes refused: {[a for a in answers if not isinstance(a, bytes)][:3]}"
            )
    return times


def _ms(times: Sequence[tuple[float, float]], which: int) -> float:
    return statistics.median(t[which] for t in times) * 1000


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gap", type=int, default=15_000, help="envelopes behind the gap")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=8, help="batches in each median")
    parser.add_argument("--json", type=Path, help="write every batch's times here")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    total = args.gap + args.batches * args.batch
    with tempfile.TemporaryDirectory(prefix="parley-gap-") as tmp:
        network = make_network(Path(tmp), PARTIES)
        for party, _ in PARTIES:
            set_peer_quota(network[party].data)  # this measures the receive path, not the quota
        us, ru, ua = (Terminal.open(network[p].data, PASSPHRASE) for p, _ in PARTIES)
        try:
            started = time.perf_counter()
            to_ru = _seal(us, "RU-GS", total + 1)
            to_ua = _seal(us, "UA-GS", total)
            sealed = time.perf_counter() - started
            print(f"sealed {len(to_ru) + len(to_ua)} envelopes in {sealed:.1f} s")
            gapped = _receive(ru, to_ru[1:], args.batch)  # sequence number 1 withheld
            held = ru.party.held_through(bilateral_channel("RU-GS", "US-EUCOM"), "US-EUCOM")
            if held[1] != (1,):
                raise RuntimeError(f"expected only sequence number 1 missing, not {held[1][:5]}")
            plain = _receive(ua, to_ua, args.batch)
        finally:
            for terminal in (us, ru, ua):
                terminal.engine.dispose()
    k = args.batches
    print(f"per batch of {args.batch}, median ms (wall / cpu); {len(gapped)} batches each")
    print(f"{'':28} {'first ' + str(k):>18} {'last ' + str(k):>18}")
    for name, times in ((f"gap of 1, {args.gap:,} behind it", gapped), ("no gap", plain)):
        first, last = times[:k], times[-k:]
        print(
            f"{name:28} {_ms(first, 0):8.1f} / {_ms(first, 1):6.1f}  "
            f"{_ms(last, 0):8.1f} / {_ms(last, 1):6.1f}"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": vars(args) | {"json": str(args.json)}, "gap": gapped, "none": plain},
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
