"""A fabricated larger checkpoint, then a restart: a real ``parley serve`` forgets nothing.

RU-GS runs as a real ``parley serve`` process on loopback; US-EUCOM's keys
and listener are in the attacker's hands (``test_peer_attacks.FakePeer``).
US-EUCOM's real key signs a receipt whose checkpoint claims a log of 1,006
entries over a made-up root, when its real log holds a few. RU-GS accepts it
(the signature is real) and stores the checkpoint with the receipt; it is then
restarted; the real, smaller log US-EUCOM offers afterwards is a rollback:
no cosignature, one ``rollback`` alarm whose count grows with every round,
one evidence row.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from parley.core.checkpoint import verify_checkpoint
from parley.core.receipts import read_receipt
from parley.store import models as m
from parley.testing.network import make_network, wait_until
from tests.service.conftest import RU, US
from tests.service.test_peer_attacks import Scene, _forged_receipt, open_scene

pytestmark = [pytest.mark.subprocess, pytest.mark.slow, pytest.mark.timeout(300)]

US_ID = US[0]


@pytest.fixture
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    with contextlib.ExitStack() as stack:
        terminals = make_network(tmp_path_factory.mktemp("witness-restart"), (US, RU))
        yield open_scene(terminals, "sqlite", stack)


def _rollback_alarms(s: Scene) -> list[dict[str, Any]]:
    return [a for a in s.api("GET", "/alarms") if a["subject"] == US_ID]


def test_a_fabricated_larger_checkpoint_survives_a_restart(scene: Scene) -> None:
    s = scene
    s.deliver(s.send("witness me"))
    wait_until(lambda: s.witnessed() > 0, timeout=30, what="an honest witness round")
    forged: list[bytes] = []

    def fabricated(raw: bytes) -> bytes:
        forged.append(_forged_receipt(s, raw, size=1006))
        return forged[-1]

    s.peer.receipt_attack = fabricated
    envelope_id = s.ru_sends("a receipt from a log of 1,006 entries")
    wait_until(lambda: s.delivery(envelope_id)["state"] == "delivered", timeout=30)
    assert read_receipt(forged[0], s.lookup).checkpoint.size == 1006
    with s.db.connect() as conn:
        sizes = conn.execute(
            select(m.observed_checkpoints.c.size).where(m.observed_checkpoints.c.party == US_ID)
        ).scalars()
        assert 1006 in set(sizes)

    s.ru.stop()
    s.ru.start()
    cosigned_before = s.witnessed()
    s.deliver(s.send("the real log grows"))  # a witness round at once, and every 2 s after
    wait_until(
        lambda: [a["count"] for a in _rollback_alarms(s)] and _rollback_alarms(s)[0]["count"] >= 3,
        timeout=60,
        what="three witness rounds refused",
    )
    alarms = _rollback_alarms(s)
    assert [(a["kind"], a["severity"]) for a in alarms] == [("rollback", "critical")], json.dumps(
        alarms
    )
    assert s.witnessed() == cosigned_before  # nothing cosigned since
    with s.db.connect() as conn:
        rows = [json.loads(r) for r in conn.execute(select(m.evidence.c.evidence)).scalars()]
    # One row per distinct pair: the log may have grown between rounds (link tests).
    pairs = {(r["earlier"], r["later"]) for r in rows}
    assert len(pairs) == len(rows) <= int(alarms[0]["count"])
    assert {verify_checkpoint(r["earlier"], s.identity.card).size for r in rows} == {1006}
    with s.peer.lock:
        now = s.us.transcript.size
    assert {verify_checkpoint(r["later"], s.identity.card).size for r in rows} <= set(
        range(1, now + 1)
    )
