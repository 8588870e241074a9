"""The delivery worker's schedule: failed witness rounds back off instead of hammering."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from parley.service.delivery import (
    WITNESS_EVERY,
    WITNESS_IDLE,
    WITNESS_IDLE_MAX,
    WITNESS_JITTER,
    DeliveryWorker,
    LinkFailed,
    first_round_window,
)
from parley.service.terminal import Terminal
from parley.testing.network import PASSPHRASE, make_network

US, RU = "US-EUCOM", "RU-GS"


@pytest.fixture
def us(tmp_path: Path) -> Iterator[Terminal]:
    made = make_network(tmp_path, [(US, "US European Command"), (RU, "General Staff")])
    terminal = Terminal.open(made[US].data, PASSPHRASE)
    yield terminal
    terminal.engine.dispose()


def test_failed_witness_rounds_back_off_up_to_a_minute(
    us: Terminal, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = DeliveryWorker(us, rng=random.Random(7))
    asked: list[str] = []

    async def any_link(peer: str, method: str, path: str, **kwargs: Any) -> bytes:
        asked.append(path)
        raise LinkFailed("connection refused")

    monkeypatch.setattr(worker, "_any_link", any_link)
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])

    async def rounds() -> list[float]:
        delays = []
        for _ in range(8):
            await worker._witness(RU)
            delays.append(worker._next_idle_round[RU] - clock[0])
            clock[0] += 61.0  # well past any retry
        return delays

    delays = asyncio.run(rounds())
    expected = [min(WITNESS_EVERY * 2.0**n, WITNESS_IDLE_MAX) for n in range(8)]
    for got, want in zip(delays, expected, strict=True):
        assert want * 0.8 <= got <= want * 1.2
    assert worker._witness_failures[RU] == 8
    assert asked == ["/v1/checkpoint-offers"] * 8  # one small request per attempt


def test_a_log_grown_by_third_party_traffic_does_not_bring_idle_rounds_back(
    us: Terminal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The peer's log grows at every round (its traffic with others): the rounds
    with it still back off to a minute; traffic with us brings them back."""
    worker = DeliveryWorker(us, rng=random.Random(7))
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    size = [5]

    class Grown:
        @property
        def size(self) -> int:
            return size[0]

    monkeypatch.setattr(us.party, "last_cosigned_of", lambda peer: Grown())

    async def witness(peer: str) -> None:  # a round that cosigned a larger log
        worker._last_witness[peer] = clock[0]
        worker._witness_due.discard(peer)
        size[0] += 3

    monkeypatch.setattr(worker, "_witness", witness)

    async def rounds() -> list[float]:
        delays = []
        for n in range(7):
            await worker._witness_scheduled(RU, traffic=n == 4)
            delays.append(worker._next_idle_round[RU] - clock[0])
            clock[0] += 61.0
        return delays

    delays = asyncio.run(rounds())
    streaks = [1, 2, 3, 4, 0, 1, 2]
    expected = [min(WITNESS_IDLE * 2.0**n, WITNESS_IDLE_MAX) for n in streaks]
    for got, want in zip(delays, expected, strict=True):
        assert want * (1 - WITNESS_JITTER) <= got <= want * (1 + WITNESS_JITTER)


def test_the_first_rounds_of_a_large_network_are_spread_over_a_minute() -> None:
    assert first_round_window(3) == WITNESS_IDLE
    assert first_round_window(30) == 30.0
    assert first_round_window(56) == 56.0
    assert first_round_window(200) == WITNESS_IDLE_MAX


def _ru_answers(ru: Terminal, path: str, kwargs: dict[str, Any]) -> bytes:
    """RU-GS's peer listener for a witness round of US-EUCOM's, in process."""
    if path.endswith("/checkpoint-offers"):
        return ru.offer_checkpoint(kwargs["content"], tls_party=US)
    if path.endswith("/log/leaves"):
        params = kwargs["params"]
        return b"".join(ru.log_leaves(params["start"], params["limit"]))
    ru.accept_cosignature(kwargs["content"], tls_party=US)
    return b"{}"


def test_a_scheduled_link_test_is_one_signed_round_over_that_link_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The link test is a witness round over the link tested: the peer's signed offer
    (and, its log having grown, the leaves and our cosignature), no test message and
    nothing logged on either side; a link that does not answer fails the test."""
    made = make_network(tmp_path, [(US, "US European Command"), (RU, "General Staff")])
    us = Terminal.open(made[US].data, PASSPHRASE)
    ru = Terminal.open(made[RU].data, PASSPHRASE)
    worker = DeliveryWorker(us, rng=random.Random(7))
    used: list[tuple[str, str]] = []
    down = [False]

    async def request(link: Any, method: str, path: str, **kwargs: Any) -> bytes:
        used.append((link.name, path))
        if down[0]:
            raise LinkFailed("connection refused")
        return _ru_answers(ru, path, kwargs)

    monkeypatch.setattr(worker, "_request", request)
    try:
        name = sorted(item["name"] for item in us.links() if item["peer"] == RU)[0]
        sizes = us.party.transcript.size, ru.party.transcript.size

        asyncio.run(worker._test_link(RU, name))
        assert {link for link, _ in used} == {name}
        assert used[0][1] == "/v1/checkpoint-offers"
        tested = {item["name"]: item for item in us.links() if item["peer"] == RU}[name]
        assert tested["last_test"] is not None
        assert tested["state"] == "up"
        assert tested["rtt_ms"] is not None
        assert (us.party.transcript.size, ru.party.transcript.size) == sizes

        used.clear()
        asyncio.run(worker._test_link(RU, name))
        assert used == [(name, "/v1/checkpoint-offers")]  # nothing grew: one request

        down[0] = True
        used.clear()
        asyncio.run(worker._test_link(RU, name))
        assert used == [(name, "/v1/checkpoint-offers")]
        failed = {item["name"]: item for item in us.links() if item["peer"] == RU}[name]
        assert failed["state"] == "degraded"
        alarms = [a for a in us.alarms() if a["kind"] == "link_test_failed"]
        assert [a["subject"] for a in alarms] == [f"{RU}/{name}"]
    finally:
        us.engine.dispose()
        ru.engine.dispose()


def test_the_outbox_summary_spares_queries_and_never_hides_new_work(us: Terminal) -> None:
    """With dozens of idle peers the worker asks "anything due?" all the time: one small
    query a second answers it. New work is seen at once, never up to a second late."""
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(us.engine, "before_cursor_execute", count)
    try:
        assert us.due_deliveries(RU, urgent=True) == []
        asked = len(statements)
        for _ in range(50):
            assert us.due_deliveries(RU, urgent=True) == []
            assert us.next_due(RU, urgent=False) is None
        assert len(statements) == asked  # answered by the summary
        # A FLASH sent now is due now, though the summary was read a moment ago.
        sent = us.send([RU], kind="text", body={"text": "now"}, operator="duty", precedence="FLASH")
        due = us.due_deliveries(RU, urgent=True)
        assert [item["envelope_id"] for item in due] == [sent["id"]]
        # A failed attempt moves its next attempt: the summary follows at once.
        later = us.clock() + timedelta(seconds=30)
        us.delivery_failed(sent["id"], RU, "refused", later)
        assert us.due_deliveries(RU, urgent=True) == []
        assert us.next_due(RU, urgent=True) == later
        assert us.retry_now(RU) == 1
        assert [item["envelope_id"] for item in us.due_deliveries(RU, urgent=True)] == [sent["id"]]
    finally:
        event.remove(us.engine, "before_cursor_execute", count)


def test_a_peer_that_lost_our_cosignature_gets_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RU-GS keeps what US-EUCOM cosigned; once RU-GS asks for its recovery status
    (restored from an older backup) or a round with it fails, the next round hands the
    same cosignature again although nothing is new; otherwise a quiet round sends none."""
    made = make_network(tmp_path, [(US, "US European Command"), (RU, "General Staff")])
    us = Terminal.open(made[US].data, PASSPHRASE)
    ru = Terminal.open(made[RU].data, PASSPHRASE)
    worker = DeliveryWorker(us, rng=random.Random(7))
    handed: list[bytes] = []
    down = [False]

    async def any_link(peer: str, method: str, path: str, **kwargs: Any) -> bytes:
        if down[0]:
            raise LinkFailed("connection refused")
        if path.endswith("/cosignatures"):
            handed.append(kwargs["content"])
        return _ru_answers(ru, path, kwargs)

    monkeypatch.setattr(worker, "_any_link", any_link)
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])

    def round_now() -> None:
        clock[0] += 100.0
        asyncio.run(worker._witness(RU))

    try:
        round_now()
        assert len(handed) == 1  # a fresh checkpoint: cosigned and handed over
        round_now()
        assert len(handed) == 1  # nothing new, nothing asked: one request only
        us.recovery_status(RU)  # RU-GS restarts and asks what we hold of its log
        round_now()
        assert handed[1:] == [handed[0]]  # the same cosignature again
        round_now()
        assert len(handed) == 2
        down[0] = True
        round_now()  # fails: RU-GS may have died before storing what we sent
        down[0] = False
        round_now()
        assert handed[2:] == [handed[0]]
    finally:
        us.engine.dispose()
        ru.engine.dispose()
