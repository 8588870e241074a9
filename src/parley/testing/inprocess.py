"""Terminals in one process, each reaching its peers over an ASGI transport.

``TerminalSet`` opens terminals made by ``parley.testing.network.make_network``
(on SQLite, or on the databases given) and runs a ``DeliveryWorker`` for each
whose requests go straight into the peer's peer-API application
(``httpx.ASGITransport``): the whole protocol (delivery, receipts,
acknowledgements, catch-up, witnessing) with no sockets, no TLS and no
``parley serve`` process, with short delivery timings (``FAST``). The TLS
layer is replaced by naming the caller: each peer's application is told which
pinned party is asking, as the listener's client certificate would.

    net = TerminalSet.open(tmp_path, [("US-EUCOM", "US"), ("RU-GS", "RU")])
    async with net:  # the workers run while inside
        us = net["US-EUCOM"]
        sent = await net.run(us.send, ["RU-GS"], kind="text", body={"text": "hi"},
                             operator="duty", precedence="FLASH")
        await net.until(lambda: "RU-GS" in us.show(sent["id"])["receipts"])
    net.close()

Terminal calls read and write the database: from the event loop, make them
in a worker thread (``run``, ``until``), as the listeners do; the tests'
``no_db_on_loop`` guard fails a test that does not.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx
from starlette.concurrency import run_in_threadpool

from parley.service.delivery import DeliveryWorker, Timings
from parley.service.peer_api import create_peer_app
from parley.service.terminal import Terminal, utc_now
from parley.testing.network import PASSPHRASE, make_network

__all__ = ["FAST", "TerminalSet"]

T = TypeVar("T")

#: Delivery timings for tests: rounds and retries in tens of milliseconds.
FAST = Timings(
    witness_every=0.05,
    witness_idle=0.2,
    witness_idle_max=1.0,
    first_round_per_peer=0.01,
    idle_wait=0.5,
    links_fresh=0.05,
    catch_up_grace=0.05,
    probe_every=0.1,
)


@dataclass
class TerminalSet:
    """Open terminals by party; ``start``/``stop`` (or ``async with``) run their workers,
    ``close`` (outside the event loop) closes their databases."""

    terminals: dict[str, Terminal]
    timings: Timings = FAST
    workers: dict[str, DeliveryWorker] = field(default_factory=dict)

    @classmethod
    def open(
        cls,
        root: Path,
        parties: Sequence[tuple[str, str]],
        *,
        databases: dict[str, str] | None = None,
        timings: Timings = FAST,
        clock: Callable[[], datetime] = utc_now,
    ) -> TerminalSet:
        made = make_network(root, parties, databases=databases)
        terminals = {
            party: Terminal.open(made[party].data, PASSPHRASE, clock=clock) for party, _ in parties
        }
        return cls(terminals, timings)

    def __getitem__(self, party: str) -> Terminal:
        return self.terminals[party]

    def transport(self, caller: str) -> Callable[[str], httpx.AsyncBaseTransport]:
        """For ``caller``'s worker: a transport into each peer's application."""

        def to(peer: str) -> httpx.AsyncBaseTransport:
            app = create_peer_app(self.terminals[peer], tls_party_of=lambda request: caller)
            return httpx.ASGITransport(app=app)

        return to

    async def start(self) -> None:
        for party, terminal in self.terminals.items():
            worker = DeliveryWorker(terminal, timings=self.timings, transport=self.transport(party))
            self.workers[party] = worker
            await worker.start()

    async def stop(self) -> None:
        for worker in self.workers.values():
            await worker.stop()
        self.workers.clear()

    def close(self) -> None:
        for terminal in self.terminals.values():
            terminal.engine.dispose()

    async def __aenter__(self) -> TerminalSet:
        await self.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def run(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``call(*args, **kwargs)`` in a worker thread (terminal calls use the database)."""
        return await run_in_threadpool(call, *args, **kwargs)

    async def until(
        self, predicate: Callable[[], Any], *, timeout: float = 20.0, every: float = 0.02
    ) -> Any:
        """Wait until ``predicate()`` (run in a worker thread: it may read the
        database) returns something true, and return it; TimeoutError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            value = await run_in_threadpool(predicate)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"not true after {timeout} s: {predicate}")
            await asyncio.sleep(every)
