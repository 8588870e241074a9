"""Recovery in one process: what a peer answers of another's log, and a frozen terminal."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from parley.core.envelope import read_envelope
from parley.core.receipts import read_receipt
from parley.core.transcript import EntryType, split_entry
from parley.errors import RolledBack, UsageError
from parley.service.receiving import REISSUED_KEPT
from parley.service.terminal import Terminal
from parley.store import models as m
from parley.store.db import reading
from parley.testing.network import PASSPHRASE, make_network

PARTIES = [("US-EUCOM", "US European Command"), ("RU-GS", "General Staff")]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Terminal, Terminal]]:
    terminals = make_network(tmp_path, PARTIES)
    us = Terminal.open(terminals["US-EUCOM"].data, PASSPHRASE)
    ru = Terminal.open(terminals["RU-GS"].data, PASSPHRASE)
    yield us, ru
    us.engine.dispose()
    ru.engine.dispose()


def _raw(terminal: Terminal, message_id: str) -> bytes:
    index = terminal.show(message_id)["log_index"]
    return terminal.party.transcript.entry(index)[1:]


def _exchange(us: Terminal, ru: Terminal, count: int = 3) -> list[str]:
    ids = []
    for n in range(count):
        sent = us.send(["RU-GS"], kind="text", body={"text": f"m{n}"}, operator="o")["id"]
        us.receive_receipt(ru.receive_envelope(_raw(us, sent)), peer="RU-GS")
        ids.append(sent)
    back = ru.send(["US-EUCOM"], kind="text", body={"text": "reply"}, operator="o")["id"]
    ru.receive_receipt(us.receive_envelope(_raw(ru, back)), peer="US-EUCOM")
    return ids


def _decoded(answer: dict[str, object]) -> list[tuple[bytes, bytes | None]]:
    items = answer["items"]
    assert isinstance(items, list)
    return [
        (
            base64.b64decode(i["entry"]),
            base64.b64decode(i["content"]) if i["content"] else None,
        )
        for i in items
    ]


def test_a_peer_answers_every_entry_of_the_callers_log_it_holds(
    pair: tuple[Terminal, Terminal],
) -> None:
    us, ru = pair
    ids = _exchange(us, ru)
    items = _decoded(ru.recovery_entries("US-EUCOM", -1, 1000))
    own_log = {us.party.transcript.entry(i) for i in range(us.party.transcript.size)}
    # Every envelope of US-EUCOM's log that RU-GS holds, both ways, and RU-GS's receipts.
    offered = {entry for entry, _ in items}
    envelopes = [e for e in own_log if split_entry(e)[0] is EntryType.ENVELOPE]
    assert set(envelopes) <= offered
    receipts_from_ru = [
        e
        for e in own_log
        if split_entry(e)[0] is EntryType.RECEIPT
        and read_receipt(split_entry(e)[1], us.party.card_of).receiver == "RU-GS"
    ]
    assert len(receipts_from_ru) == len(ids)
    # Between two terminals the other holds every entry: its receipts for ours, and
    # ours for its envelopes (which it logged when they came back).
    assert own_log <= offered
    # US-EUCOM cannot open its own envelopes: RU-GS gives the content it decrypted,
    # which US-EUCOM checks against the digest it signed.
    for entry, content in items:
        kind, raw = split_entry(entry)
        if kind is not EntryType.ENVELOPE:
            assert content is None
            continue
        header = read_envelope(raw, ru.party.card_of)
        if header.sender == "US-EUCOM":
            assert content is not None
            assert hashlib.sha256(content).hexdigest() == header.content_digest
        else:
            assert content is None  # US-EUCOM decrypts what was sent to it

    # Paged: the pages together hold the same, in order, and say when they end.
    first = ru.recovery_entries("US-EUCOM", -1, 2)
    assert first["more"] is True
    rest = ru.recovery_entries("US-EUCOM", int(first["next"]), 1000)
    assert rest["more"] is False
    assert [e for e, _ in _decoded(first) + _decoded(rest)] == [e for e, _ in items]

    with pytest.raises(UsageError):
        ru.recovery_entries("UA-GS", -1, 10)  # not a pinned peer: nothing to say


def test_receipts_issued_again_for_duplicates_are_kept_for_the_sender_within_a_bound(
    pair: tuple[Terminal, Terminal],
) -> None:
    us, ru = pair
    sent = us.send(["RU-GS"], kind="text", body={"text": "once"}, operator="o")["id"]
    raw = _raw(us, sent)
    first = ru.receive_envelope(raw)
    again = [ru.receive_envelope(raw) for _ in range(REISSUED_KEPT + 4)]
    distinct = set(again)  # a fresh receipt each time (equal bytes within one clock tick)
    with reading(ru.engine) as conn:
        kept = conn.execute(select(func.count()).select_from(m.issued_receipts)).scalar()
    assert kept == min(REISSUED_KEPT, len(distinct))
    # Whichever of them reached US-EUCOM first is in its log: the kept ones are offered.
    us.receive_receipt(again[0], peer="RU-GS")
    offered = {e for e, _ in _decoded(ru.recovery_entries("US-EUCOM", -1, 1000))}
    receipt_entries = {bytes([EntryType.RECEIPT]) + r for r in (first, again[0])}
    assert receipt_entries <= offered


def test_a_frozen_terminal_signs_nothing_and_stays_frozen_across_a_restart(
    pair: tuple[Terminal, Terminal],
) -> None:
    us, ru = pair
    _exchange(us, ru, 1)
    size = us.party.transcript.size
    us.freeze("rolled back: RU-GS saw checkpoint 99")
    assert us.status()["frozen"] == "rolled back: RU-GS saw checkpoint 99"
    with pytest.raises(RolledBack):
        us.send(["RU-GS"], kind="text", body={"text": "no"}, operator="o")
    incoming = ru.send(["US-EUCOM"], kind="text", body={"text": "to a frozen one"}, operator="o")
    with pytest.raises(RolledBack):
        us.receive_envelope(_raw(ru, incoming["id"]))
    with pytest.raises(RolledBack):
        us.offer_checkpoint(ru.checkpoint_request("US-EUCOM"))
    assert us.party.transcript.size == size

    us.engine.dispose()
    reopened = Terminal.open(us.data.path, PASSPHRASE)
    try:
        assert reopened.frozen == "rolled back: RU-GS saw checkpoint 99"
        with pytest.raises(RolledBack):
            reopened.send(["RU-GS"], kind="text", body={"text": "no"}, operator="o")
        reopened.thaw()
        assert reopened.frozen is None
        reopened.receive_envelope(_raw(ru, incoming["id"]))
    finally:
        reopened.engine.dispose()
