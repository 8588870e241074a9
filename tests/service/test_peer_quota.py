"""A peer cannot flood a terminal: its quota, the 429, one security event and one alarm
per incident, and nothing lost (the sender's outbox sends it again once the rate allows).

The buckets are checked alone (``PeerQuotas``), then a terminal's peer API is
flooded in process (its clock is a ``ManualClock``, so the refill is the test's
to give), then two real terminals: a sender whose burst of IMMEDIATE messages
goes past the receiver's quota, and is all delivered, exactly once, in the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from parley.config import Config
from parley.core.party import bilateral_channel
from parley.errors import QuotaExceeded
from parley.service.peer_api import create_peer_app, frame
from parley.service.quotas import BULK_RESERVE, PeerQuotas
from parley.service.terminal import Draft, Terminal, utc_now
from parley.store import models as m
from parley.testing import ManualClock
from parley.testing.network import PASSPHRASE, make_network, set_peer_quota, wait_until
from tests.service.conftest import RU, US, NetworkFactory

CHANNEL = bilateral_channel("US-EUCOM", "RU-GS")


def _config(per_minute: int = 60, burst: int = 10, per_day: int = 0) -> Config:
    return Config(
        "RU-GS",
        "RU",
        "sqlite://",
        quota_envelopes_per_minute=per_minute,
        quota_burst=burst,
        quota_bytes_per_day=per_day,
    )


# The buckets -------------------------------------------------------------------


def test_a_burst_then_the_rate_then_a_refusal_that_says_when() -> None:
    clock = ManualClock()
    quotas = PeerQuotas(_config(per_minute=60, burst=10))
    for _ in range(10):
        assert quotas.charge("US-EUCOM", 1, 100, bulk=False, now=clock.now) is None
    refusal = quotas.charge("US-EUCOM", 1, 100, bulk=False, now=clock.now)
    assert refusal is not None
    assert refusal.error.retry_after == 1  # one envelope a second
    assert refusal.error.new_incident
    assert refusal.count == 1
    # Another peer has buckets of its own.
    assert quotas.charge("UA-GS", 1, 100, bulk=False, now=clock.now) is None
    clock.advance(timedelta(seconds=3))
    for _ in range(3):
        assert quotas.charge("US-EUCOM", 1, 100, bulk=False, now=clock.now) is None
    assert quotas.charge("US-EUCOM", 1, 100, bulk=False, now=clock.now) is not None


def test_one_incident_until_the_buckets_are_full_again_and_counts_written_once_a_second() -> None:
    clock = ManualClock()
    quotas = PeerQuotas(_config(per_minute=60, burst=10))
    for _ in range(10):
        quotas.charge("US-EUCOM", 1, 1, bulk=False, now=clock.now)
    first = quotas.charge("US-EUCOM", 1, 1, bulk=False, now=clock.now)
    assert first is not None
    assert (first.error.new_incident, first.count) == (True, 1)
    more = [quotas.charge("US-EUCOM", 1, 1, bulk=False, now=clock.now) for _ in range(5)]
    assert all(r is not None and not r.error.new_incident and r.count == 0 for r in more)
    clock.advance(timedelta(seconds=0.5))  # half an envelope back: still refused
    later = quotas.charge("US-EUCOM", 1, 1, bulk=False, now=clock.now)
    assert later is not None
    assert later.count == 0
    clock.advance(timedelta(seconds=0.6))
    assert quotas.charge("US-EUCOM", 1, 1, bulk=False, now=clock.now) is None
    flushed = quotas.charge("US-EUCOM", 1, 1, bulk=False, now=clock.now)
    assert flushed is not None
    assert (flushed.error.new_incident, flushed.count) == (False, 7)  # 5 + 1 + this one
    clock.advance(timedelta(seconds=11))  # full again: the incident is over
    assert quotas.charge("US-EUCOM", 10, 1, bulk=False, now=clock.now) is None
    again = quotas.charge("US-EUCOM", 1, 1, bulk=False, now=clock.now)
    assert again is not None
    assert again.error.new_incident


def test_a_bulk_backlog_leaves_room_for_a_flash() -> None:
    """Bulk batches stop short of the last tenth of the burst; single deliveries
    (FLASH, IMMEDIATE) may spend it."""
    clock = ManualClock()
    quotas = PeerQuotas(_config(per_minute=600, burst=3000))
    taken = 0
    while quotas.charge("US-EUCOM", 256, 256 * 5000, bulk=True, now=clock.now) is None:
        taken += 256
    assert taken == 256 * int((3000 * (1 - BULK_RESERVE)) // 256)
    for _ in range(int(3000 * BULK_RESERVE)):
        assert quotas.charge("US-EUCOM", 1, 5000, bulk=False, now=clock.now) is None


def test_stored_bytes_a_day() -> None:
    clock = ManualClock()
    quotas = PeerQuotas(_config(per_minute=0, burst=0, per_day=10_000))
    assert quotas.charge("US-EUCOM", 1, 6000, bulk=False, now=clock.now) is None
    refusal = quotas.charge("US-EUCOM", 1, 6000, bulk=False, now=clock.now)
    assert refusal is not None
    assert refusal.error.retry_after == 17280  # 2,000 bytes at 10,000 a day
    clock.advance(timedelta(hours=5))
    assert quotas.charge("US-EUCOM", 1, 6000, bulk=False, now=clock.now) is None


def test_a_delivery_larger_than_a_bucket_is_taken_when_it_is_full() -> None:
    clock = ManualClock()
    quotas = PeerQuotas(_config(per_minute=60, burst=10, per_day=1000))
    assert quotas.charge("US-EUCOM", 256, 5000, bulk=True, now=clock.now) is None
    refusal = quotas.charge("US-EUCOM", 1, 1, bulk=False, now=clock.now)
    assert refusal is not None


def test_no_limit_when_set_to_zero() -> None:
    clock = ManualClock()
    quotas = PeerQuotas(_config(per_minute=0, burst=0, per_day=0))
    for _ in range(100):
        assert quotas.charge("US-EUCOM", 256, 1 << 24, bulk=True, now=clock.now) is None


def test_the_defaults_are_written_and_read_back() -> None:
    config = Config("RU-GS", "RU", "sqlite://")
    text = config.to_toml()
    assert "[peer_quota]" in text
    back = Config.from_toml(text, "parley.toml")
    assert (back.quota_envelopes_per_minute, back.quota_burst, back.quota_bytes_per_day) == (
        600,
        3000,
        1 << 30,
    )
    changed = Config.from_toml(text.replace("burst = 3000", "burst = 7"), "parley.toml")
    assert changed.quota_burst == 7


# A terminal's peer API, in process -------------------------------------------------


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[tuple[Terminal, Terminal, ManualClock, TestClient]]:
    network = make_network(tmp_path, [US, RU])
    set_peer_quota(network["RU-GS"].data, envelopes_per_minute=60, burst=10)
    clock = ManualClock(utc_now())  # within the cards' validity
    us = Terminal.open(network["US-EUCOM"].data, PASSPHRASE, clock=lambda: clock.now)
    ru = Terminal.open(network["RU-GS"].data, PASSPHRASE, clock=lambda: clock.now)
    client = TestClient(create_peer_app(ru, tls_party_of=lambda request: "US-EUCOM"))
    try:
        yield us, ru, clock, client
    finally:
        us.engine.dispose()
        ru.engine.dispose()


def _flash(us: Terminal, n: int) -> list[bytes]:
    sent = us.send_many(
        [Draft(("RU-GS",), "text", {"text": f"f{i}"}, "duty", precedence="FLASH") for i in range(n)]
    )
    return [us.party.sent(s["id"]).raw for s in sent]


def _quota_rows(ru: Terminal) -> tuple[list[Any], list[Any]]:
    with ru.engine.connect() as conn:
        events = conn.execute(
            select(m.security_events).where(m.security_events.c.code == "quota_exceeded")
        ).all()
        alarms = conn.execute(
            select(m.alarms).where(m.alarms.c.kind == "peer_quota_exceeded")
        ).all()
    return list(events), list(alarms)


def test_a_flood_is_refused_with_429_one_event_and_one_alarm_per_incident(
    scene: tuple[Terminal, Terminal, ManualClock, TestClient],
) -> None:
    us, ru, clock, client = scene
    raws = _flash(us, 40)
    answers = [client.post("/v1/envelopes", content=raw) for raw in raws[:25]]
    assert [a.status_code for a in answers] == [200] * 10 + [429] * 15
    refused = answers[-1]
    assert refused.json()["error"] == "quota_exceeded"
    assert refused.json()["culprit"] == "peer"
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["retry_after"] == 1
    events, alarms = _quota_rows(ru)
    assert len(events) == 1
    assert events[0].tls_party == "US-EUCOM"
    assert len(alarms) == 1
    assert alarms[0].subject == "US-EUCOM"
    first_count = alarms[0].count
    assert first_count >= 1
    # The flood goes on a second later: counted on the one alarm, no new event.
    clock.advance(timedelta(seconds=1.2))
    more = [client.post("/v1/envelopes", content=raw) for raw in raws[25:35]]
    assert [a.status_code for a in more] == [200] + [429] * 9
    events, alarms = _quota_rows(ru)
    assert len(events) == 1
    assert len(alarms) == 1
    assert alarms[0].count > first_count
    # A batch over the quota is refused whole.
    batch = client.post(
        "/v1/envelopes/batch",
        content=frame(raws[35:40]),
        headers={"content-type": "application/x-parley-frames"},
    )
    assert batch.status_code == 429
    assert batch.json()["error"] == "quota_exceeded"
    # Quiet until the buckets are full: a new incident is a new security event,
    # counted on the alarm that is still open.
    clock.advance(timedelta(minutes=1))
    statuses = [client.post("/v1/envelopes", content=raw).status_code for raw in raws[10:22]]
    assert statuses == [200] * 10 + [429] * 2
    events, alarms = _quota_rows(ru)
    assert len(events) == 2
    assert len(alarms) == 1
    # Nothing refused was stored; everything is taken once the rate allows.
    clock.advance(timedelta(minutes=1))
    for raw in raws:
        clock.advance(timedelta(seconds=1))
        assert client.post("/v1/envelopes", content=raw).status_code == 200
    assert ru.party.held_through(CHANNEL, "US-EUCOM") == (40, ())
    assert len(ru.messages("in")) == 40


def test_a_catch_up_is_charged_never_refused_and_not_asked_for_over_the_quota(
    scene: tuple[Terminal, Terminal, ManualClock, TestClient],
) -> None:
    """Refused deliveries leave gaps; filling them by catch-up must not let the same
    traffic in past the quota."""
    us, ru, clock, _ = scene
    _flash(us, 30)
    assert ru.catch_up_allowed("US-EUCOM")
    got = ru.apply_catch_up("US-EUCOM", us.catch_up(CHANNEL, 0, for_party="RU-GS"))
    assert len(got) == 30
    assert all(isinstance(r, bytes) for r in got)  # asked for: taken, though over the burst
    assert _quota_rows(ru) == ([], [])  # our own request is no incident
    assert not ru.catch_up_allowed("US-EUCOM")
    with pytest.raises(QuotaExceeded):
        ru.receive_envelope(_flash(us, 1)[0], tls_party="US-EUCOM")
    clock.advance(timedelta(seconds=21))  # 20 owed, then one to spend
    assert ru.catch_up_allowed("US-EUCOM")


# Two real terminals ----------------------------------------------------------------


@pytest.mark.subprocess
def test_a_burst_past_the_quota_is_all_delivered_once_the_rate_allows(
    network: NetworkFactory,
) -> None:
    terminals = network(start=False)
    set_peer_quota(terminals["RU-GS"].data, envelopes_per_minute=600, burst=10)  # 10 a second
    for terminal in terminals.values():
        terminal.start(wait=False)
    for terminal in terminals.values():
        terminal.wait_ready()
    us, ru = terminals["US-EUCOM"], terminals["RU-GS"]
    sent = us.api(
        "POST",
        "/messages/batch",
        {
            "messages": [
                {"to": ["RU-GS"], "text": f"i{i}", "precedence": "IMMEDIATE"} for i in range(40)
            ]
        },
    )["messages"]

    def inbox() -> list[dict[str, Any]]:
        return list(ru.api("GET", "/inbox"))

    wait_until(lambda: len(inbox()) >= 40, timeout=120, what="every message past the quota")
    assert sorted(msg["id"] for msg in inbox()) == sorted(s["id"] for s in sent)  # each once
    alarms = [a for a in ru.api("GET", "/alarms") if a["kind"] == "peer_quota_exceeded"]
    assert len(alarms) == 1
    assert alarms[0]["subject"] == "US-EUCOM"
    events = [e for e in ru.api("GET", "/security-events") if e["code"] == "quota_exceeded"]
    assert len(events) >= 1
