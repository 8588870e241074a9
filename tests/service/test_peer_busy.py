"""A terminal with more peer requests than it can serve says so at once (``503 busy``
with ``Retry-After``) instead of letting them time out, and its peers wait as asked.

A request that times out at its sender is sent again while the receiver still
works on the first copy: under load that is a congestion collapse (a network
of dozens of terminals on one machine never settled). The gate refuses what
it cannot serve cheaply, before any work; FLASH and IMMEDIATE deliveries and
the health probe are never refused. The sender treats ``busy`` as the peer's
answer, not a link failure: the link keeps its state, nothing is recorded
against it, no alarm is raised, and the request goes again after the wait.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from parley.config import Config
from parley.errors import UsageError
from parley.service.delivery import WITNESS_JITTER, Busy, DeliveryWorker
from parley.service.peer_api import BUSY_RETRY, MAX_PEER_WORK, create_peer_app, frame
from parley.service.terminal import Draft, Terminal
from parley.store import models as m
from parley.testing.network import PASSPHRASE, make_network

US, RU = "US-EUCOM", "RU-GS"


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Terminal, Terminal]]:
    made = make_network(tmp_path, [(US, "US European Command"), (RU, "General Staff")])
    us = Terminal.open(made[US].data, PASSPHRASE)
    ru = Terminal.open(made[RU].data, PASSPHRASE)
    try:
        yield us, ru
    finally:
        us.engine.dispose()
        ru.engine.dispose()


def _security_events(terminal: Terminal) -> int:
    with terminal.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(m.security_events)).scalar_one())


def _raws(us: Terminal, precedence: str, n: int) -> list[bytes]:
    drafts = [
        Draft((RU,), "text", {"text": f"{precedence} {i}"}, "duty", precedence=precedence)
        for i in range(n)
    ]
    return [us.party.sent(s["id"]).raw for s in us.send_many(drafts)]


# The receiver's gate ---------------------------------------------------------------


def test_a_full_gate_refuses_bulk_work_at_once_but_serves_urgent_deliveries(
    pair: tuple[Terminal, Terminal],
) -> None:
    us, ru = pair
    full = TestClient(create_peer_app(ru, tls_party_of=lambda request: US, max_work=0))
    events = _security_events(ru)
    size = ru.party.transcript.size

    routine = _raws(us, "ROUTINE", 2)
    refused = [
        full.post(
            "/v1/envelopes/batch",
            content=frame(routine),
            headers={"content-type": "application/x-parley-frames"},
        ),
        full.post("/v1/checkpoint-offers", content=us.checkpoint_request(RU)),
        full.get("/v1/log/leaves", params={"start": 0, "limit": 10}),
        full.get("/v1/catch-up", params={"channel": "RU-GS.US-EUCOM", "after": 0}),
    ]
    for answer in refused:
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"] == "busy"
        wait = int(answer.headers["retry-after"])
        assert BUSY_RETRY[0] <= wait <= BUSY_RETRY[1]
        assert answer.json()["retry_after"] == wait
    # Refused before any work: nothing stored, no security event (the peer did nothing wrong).
    assert ru.party.transcript.size == size
    assert ru.messages("in") == []
    assert _security_events(ru) == events

    # A FLASH is served whatever the load, and so is the health probe.
    flash = _raws(us, "FLASH", 1)[0]
    assert full.post("/v1/envelopes", content=flash).status_code == 200
    assert full.get("/v1/health").status_code == 200
    assert [row["precedence"] for row in ru.messages("in")] == ["FLASH"]


def test_the_gate_counts_requests_in_progress_only(pair: tuple[Terminal, Terminal]) -> None:
    """One at a time: requests one after the other all pass, a refused one included."""
    us, ru = pair
    app = create_peer_app(ru, tls_party_of=lambda request: US, max_work=1)
    client = TestClient(app)
    for _ in range(3):
        assert (
            client.post("/v1/checkpoint-offers", content=us.checkpoint_request(RU)).status_code
            == 200
        )
        assert client.get("/v1/log/leaves", params={"start": 0, "limit": 0}).status_code == 400
    assert app.state.gate.active == 0
    assert app.state.gate.refused == 0
    app.state.gate.active = 1  # as if one request were being served
    assert client.get("/v1/log/leaves", params={"start": 0}).status_code == 503
    assert app.state.gate.refused == 1


def test_max_concurrent_is_configured_and_checked() -> None:
    config = Config("RU-GS", "RU", "sqlite://")
    text = config.to_toml()
    assert f"max_concurrent = {MAX_PEER_WORK}" in text
    assert Config.from_toml(text, "parley.toml").peer_max_concurrent == MAX_PEER_WORK
    changed = text.replace(f"max_concurrent = {MAX_PEER_WORK}", "max_concurrent = 16")
    assert Config.from_toml(changed, "parley.toml").peer_max_concurrent == 16
    with pytest.raises(UsageError, match=r"peer\.max_concurrent"):
        Config.from_toml(
            text.replace(f"max_concurrent = {MAX_PEER_WORK}", "max_concurrent = 0"), "parley.toml"
        )


# The sender ------------------------------------------------------------------------


def _busy_transport(seen: list[str], retry_after: int = 7) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(
            503,
            json={
                "error": "busy",
                "message": "serving 4 peer requests",
                "retry_after": retry_after,
            },
            headers={"Retry-After": str(retry_after)},
        )

    return httpx.MockTransport(answer)


def _worker_to_busy_peer(
    us: Terminal, monkeypatch: pytest.MonkeyPatch, retry_after: int = 7
) -> tuple[DeliveryWorker, list[str]]:
    """A delivery worker whose every request reaches a peer that answers busy."""
    worker = DeliveryWorker(us, rng=random.Random(3))
    seen: list[str] = []
    client = httpx.AsyncClient(transport=_busy_transport(seen, retry_after=retry_after))
    monkeypatch.setattr(worker, "_client", lambda peer: client)
    return worker, seen


def _links(terminal: Terminal) -> list[dict[str, Any]]:
    return sorted(terminal.links(), key=lambda item: (item["peer"], item["name"]))


def test_a_busy_peer_is_not_a_failed_link_and_its_batch_waits_as_asked(
    pair: tuple[Terminal, Terminal], monkeypatch: pytest.MonkeyPatch
) -> None:
    us, _ = pair
    worker, seen = _worker_to_busy_peer(us, monkeypatch, retry_after=7)
    _raws(us, "ROUTINE", 3)
    links = _links(us)
    items = us.due_deliveries(RU, 10, urgent=False)
    assert len(items) == 3
    before = us.clock()

    asyncio.run(worker._deliver_batch(RU, items))

    assert seen == ["/v1/envelopes/batch"]  # one request: every link leads to the same peer
    assert _links(us) == links  # nothing recorded against the link
    assert worker._link_ok.get(RU) is None
    assert [a for a in us.alarms() if a["subject"].startswith(RU)] == []
    # Each waits at least the peer's Retry-After, then goes again.
    assert us.due_deliveries(RU, 10, urgent=False) == []
    due = us.next_due(RU, urgent=False)
    assert due is not None
    assert due >= before + timedelta(seconds=7)


def test_a_busy_peer_defers_the_witness_round_without_counting_a_failure(
    pair: tuple[Terminal, Terminal], monkeypatch: pytest.MonkeyPatch
) -> None:
    us, _ = pair
    worker = DeliveryWorker(us, rng=random.Random(3))

    async def any_link(peer: str, method: str, path: str, **kwargs: Any) -> bytes:
        raise Busy("primary: busy", retry_after=9.0)

    monkeypatch.setattr(worker, "_any_link", any_link)
    clock = [5000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    asyncio.run(worker._witness_scheduled(RU, traffic=False))
    wait = worker._next_idle_round[RU] - clock[0]
    assert 9.0 <= wait <= 9.0 * (1 + WITNESS_JITTER)
    assert worker._witness_failures[RU] == 0


def test_a_busy_answer_to_a_link_test_passes_the_link(
    pair: tuple[Terminal, Terminal], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The busy answer came over the pinned TLS link from the peer: the link works."""
    us, _ = pair
    worker, seen = _worker_to_busy_peer(us, monkeypatch)
    name = sorted(item["name"] for item in us.links() if item["peer"] == RU)[0]

    asyncio.run(worker._test_link(RU, name))

    assert seen == ["/v1/checkpoint-offers"]
    tested = {item["name"]: item for item in us.links() if item["peer"] == RU}[name]
    assert tested["last_test"] is not None
    assert tested["state"] == "up"
    assert [a for a in us.alarms() if a["kind"] == "link_test_failed"] == []
