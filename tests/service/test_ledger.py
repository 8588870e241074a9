"""A terminal's memory does not grow with its transcript, and nothing is forgotten."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from parley.service import ledger as ledger_module
from parley.service.terminal import Draft, Terminal
from parley.testing.network import PASSPHRASE, make_network

PARTIES = [("US-EUCOM", "US European Command"), ("RU-GS", "General Staff")]
CHANNEL = "RU-GS.US-EUCOM"


@pytest.fixture
def pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Terminal, Terminal]]:
    monkeypatch.setattr(ledger_module, "CACHE_SIZE", 8)
    terminals = make_network(tmp_path, PARTIES)
    us = Terminal.open(terminals["US-EUCOM"].data, PASSPHRASE)
    ru = Terminal.open(terminals["RU-GS"].data, PASSPHRASE)
    yield us, ru
    us.engine.dispose()
    ru.engine.dispose()


def _send(us: Terminal, n: int) -> list[bytes]:
    sent = us.send_many([Draft(("RU-GS",), "text", {"text": f"m{i}"}, "duty") for i in range(n)])
    return [us.party.sent(s["id"]).raw for s in sent]


def test_records_and_entries_leave_memory_once_stored(pair: tuple[Terminal, Terminal]) -> None:
    us, ru = pair
    raws = _send(us, 60)
    receipts = ru.receive_batch(raws, tls_party="US-EUCOM")
    assert ru.ledger.held <= 16  # 8 sent + 8 received at most, after a commit
    assert len(ru.party.transcript.held()) == 0  # every entry is in the store
    # Receipts for envelopes long out of the cache are still checked and kept.
    answers = us.receive_receipts([r for r in receipts if isinstance(r, bytes)], peer="RU-GS")
    assert all(isinstance(a, dict) for a in answers), answers
    assert us.party.receipted_through(CHANNEL, "RU-GS") == 60
    assert us.ledger.held <= 16
    assert len(us.party.transcript.held()) == 0


def test_an_old_duplicate_is_answered_again_and_logged_once(
    pair: tuple[Terminal, Terminal],
) -> None:
    us, ru = pair
    raws = _send(us, 30)
    ru.receive_batch(raws, tls_party="US-EUCOM")
    size = ru.party.transcript.size
    again = ru.receive_batch([raws[0]], tls_party="US-EUCOM")  # evicted long ago
    assert isinstance(again[0], bytes)
    assert ru.party.transcript.size == size
    assert len(ru.messages("in")) == 30


def test_catch_up_reaches_back_past_the_cache_and_across_a_restart(
    pair: tuple[Terminal, Terminal], tmp_path: Path
) -> None:
    us, ru = pair
    raws = _send(us, 25)
    answer = json.loads(us.catch_up(CHANNEL, 0, for_party="RU-GS"))
    assert len(answer["envelopes"]) == 25
    reopened = Terminal.open(tmp_path / "us-eucom", PASSPHRASE)
    try:
        answer = json.loads(reopened.catch_up(CHANNEL, 20, for_party="RU-GS"))
        assert len(answer["envelopes"]) == 5
        # The reopened terminal goes on with the next sequence number.
        more = reopened.send(["RU-GS"], kind="text", body={"text": "next"}, operator="duty")
        assert more["seq"] == 26
        assert reopened.party.transcript.tree.root_at(25) == us.party.transcript.root()
        results = ru.receive_batch([*raws, reopened.party.sent(more["id"]).raw])
        assert all(isinstance(r, bytes) for r in results)
        assert ru.party.held_through(CHANNEL, "US-EUCOM") == (26, ())
    finally:
        reopened.engine.dispose()


def test_a_changed_store_is_refused_at_start(
    pair: tuple[Terminal, Terminal], tmp_path: Path
) -> None:
    from sqlalchemy import update

    from parley.errors import VerificationError
    from parley.store import models as m

    us, _ = pair
    _send(us, 5)
    us.party.checkpoint()  # a signed checkpoint of the 5 entries, stored with the next commit
    _send(us, 1)
    with us.engine.begin() as conn:
        conn.execute(
            update(m.log_entries).where(m.log_entries.c.idx == 2).values(leaf=b"\x00" * 32)
        )
    # The entry no longer hashes to its (changed) stored leaf: named before any checkpoint.
    with pytest.raises(VerificationError, match="log entry 2 no longer hashes to its stored leaf"):
        Terminal.open(tmp_path / "us-eucom", PASSPHRASE)


def test_gaps_are_read_back_as_ranges_across_a_restart(
    pair: tuple[Terminal, Terminal], tmp_path: Path
) -> None:
    """The ranges held come back from the message index (one row per range), so a
    restarted receiver reports the same gaps and fills them the same way."""
    us, ru = pair
    raws = _send(us, 30)
    kept = [raws[i] for i in range(30) if i + 1 not in (1, 7, 8, 20)]
    assert all(isinstance(r, bytes) for r in ru.receive_batch(kept, tls_party="US-EUCOM"))
    before = ru.party.held_through(CHANNEL, "US-EUCOM")
    assert before == (0, (1, 7, 8, 20))
    ru.engine.dispose()
    reopened = Terminal.open(tmp_path / "ru-gs", PASSPHRASE)
    try:
        assert reopened.party.held_ranges(CHANNEL, "US-EUCOM") == [(2, 6), (9, 19), (21, 30)]
        assert reopened.party.held_through(CHANNEL, "US-EUCOM") == before
        reopened.receive_batch([raws[0], raws[6], raws[7], raws[19]], tls_party="US-EUCOM")
        assert reopened.party.held_ranges(CHANNEL, "US-EUCOM") == [(1, 30)]
        assert reopened.party.held_through(CHANNEL, "US-EUCOM") == (30, ())
    finally:
        reopened.engine.dispose()
