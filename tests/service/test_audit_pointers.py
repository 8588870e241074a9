"""``parley verify`` checks every row that points into the log.

A receipt, message, acknowledgement, checkpoint or cosignature row that
points past the end of the log (a log rolled back under its indexes) or at
an entry that is not the one it claims fails, named by table, row and rule.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, delete, func, select, update

from parley.config import DataDir
from parley.core.identity import IdentityCard
from parley.service.audit import audit
from parley.service.terminal import Terminal
from parley.store import models as m
from parley.store.db import engine_for
from parley.testing.network import PASSPHRASE, make_network

PARTIES = [("US-EUCOM", "US European Command"), ("RU-GS", "General Staff")]


@dataclass
class Records:
    """RU-GS's stopped terminal: messages both ways, a receipt, an ack, cosignatures."""

    path: Path
    card: IdentityCard
    sent: str  # a text RU-GS sent, receipted and acknowledged by US-EUCOM
    received: str  # a text RU-GS received
    ack: str  # US-EUCOM's acknowledgement of ``sent``

    @property
    def engine(self) -> Engine:
        return engine_for(DataDir(self.path).load_config().database)

    def execute(self, *statements: Any) -> None:
        engine = self.engine
        try:
            with engine.begin() as conn:
                for statement in statements:
                    conn.execute(statement)
        finally:
            engine.dispose()

    def scalar(self, query: Any) -> Any:
        engine = self.engine
        try:
            with engine.begin() as conn:
                return conn.execute(query).scalar()
        finally:
            engine.dispose()

    def log_index(self, envelope_id: str) -> int:
        index: int = self.scalar(
            select(m.messages.c.log_index).where(m.messages.c.envelope_id == envelope_id)
        )
        return index

    def size(self) -> int:
        return int(self.scalar(select(func.count()).select_from(m.log_entries)))

    def failures(self) -> list[str]:
        engine = self.engine
        try:
            return audit(engine, self.card).failures
        finally:
            engine.dispose()


def _witness(owner: Terminal, witness: Terminal) -> None:
    offer = owner.offer_checkpoint(witness.checkpoint_request(owner.me))
    owner.accept_cosignature(
        witness.witness(owner.me, offer, owner.log_leaves), tls_party=witness.me
    )


@pytest.fixture
def records(tmp_path: Path) -> Iterator[Records]:
    terminals = make_network(tmp_path, PARTIES)
    us = Terminal.open(terminals["US-EUCOM"].data, PASSPHRASE)
    ru = Terminal.open(terminals["RU-GS"].data, PASSPHRASE)
    try:
        received = us.send(["RU-GS"], kind="text", body={"text": "hold"}, operator="Col. S")
        ru.receive_envelope(us.party.transcript.entry(us.show(received["id"])["log_index"])[1:])
        sent = ru.send(["US-EUCOM"], kind="text", body={"text": "holding"}, operator="Maj. P")
        raw = ru.party.transcript.entry(ru.show(sent["id"])["log_index"])[1:]
        receipts = us.receive_batch([raw], tls_party="RU-GS")
        ru.receive_receipts([r for r in receipts if isinstance(r, bytes)], peer="US-EUCOM")
        ack = us.acknowledge(sent["id"], operator="Col. S")
        ru.receive_envelope(us.party.transcript.entry(us.show(ack["id"])["log_index"])[1:])
        _witness(ru, us)
        _witness(us, ru)
        yield Records(
            terminals["RU-GS"].data, ru.identity.card, sent["id"], received["id"], ack["id"]
        )
    finally:
        us.engine.dispose()
        ru.engine.dispose()


def test_the_untouched_records_verify(records: Records) -> None:
    assert records.failures() == []
    assert records.scalar(select(func.count()).select_from(m.acks)) == 1
    assert records.scalar(select(func.count()).select_from(m.cosignatures)) == 2


def _receipt_entry(records: Records) -> int:
    """The log index of the receipt US-EUCOM returned for ``sent``."""
    index: int = records.scalar(
        select(m.receipts.c.log_index).where(m.receipts.c.envelope_id == records.sent)
    )
    return index


def test_a_receipt_row_pointing_past_the_end_is_named(records: Records) -> None:
    size = records.size()
    records.execute(
        update(m.receipts).where(m.receipts.c.envelope_id == records.sent).values(log_index=size)
    )
    assert records.failures() == [
        f"receipts row {records.sent}/US-EUCOM: column log_index points past the end of "
        f"the log (log entry {size}; the log has {size} entries)"
    ]


def test_a_receipt_row_pointing_at_an_envelope_is_named(records: Records) -> None:
    index = records.log_index(records.received)
    records.execute(
        update(m.receipts).where(m.receipts.c.envelope_id == records.sent).values(log_index=index)
    )
    assert records.failures() == [
        f"receipts row {records.sent}/US-EUCOM: column log_index points at log entry "
        f"{index}, which is not a receipt"
    ]


def test_a_receipt_row_pointing_at_another_receipt_is_named(records: Records) -> None:
    # The receipt RU-GS issued for the message it received is logged right after it.
    index = records.log_index(records.received) + 1
    assert index != _receipt_entry(records)
    records.execute(
        update(m.receipts).where(m.receipts.c.envelope_id == records.sent).values(log_index=index)
    )
    assert records.failures() == [
        f"receipts row {records.sent}/US-EUCOM: column log_index points at log entry "
        f"{index}, the receipt for another envelope ({records.received})"
    ]


def test_a_message_row_pointing_past_the_end_is_named(records: Records) -> None:
    size = records.size()
    records.execute(
        update(m.messages)
        .where(m.messages.c.envelope_id == records.received)
        .values(log_index=size + 10)
    )
    assert records.failures() == [
        f"messages row {records.received}: column log_index points past the end of the log "
        f"(log entry {size + 10}; the log has {size} entries)"
    ]


def test_a_message_row_pointing_at_a_receipt_is_named(records: Records) -> None:
    index = _receipt_entry(records)
    old = records.log_index(records.received)
    records.execute(
        update(m.messages)
        .where(m.messages.c.envelope_id == records.received)
        .values(log_index=index)
    )
    failures = records.failures()
    assert failures[0] == (
        f"messages row {records.received}: column log_index points at log entry {index}, "
        "which is not an envelope"
    )
    # The receipt row checked against its entry is still right; the envelope at
    # ``old`` now has no message row, which the index check does not claim.
    assert all(str(old) not in f or "messages row" in f for f in failures)


def test_a_message_row_pointing_at_another_envelope_is_named(records: Records) -> None:
    a, b = records.log_index(records.received), records.log_index(records.sent)
    cols = m.messages.c
    records.execute(
        update(m.messages).where(cols.envelope_id == records.received).values(log_index=-1),
        update(m.messages).where(cols.envelope_id == records.sent).values(log_index=a),
        update(m.messages).where(cols.envelope_id == records.received).values(log_index=b),
    )
    failures = records.failures()
    assert (
        f"messages row {records.sent}: column log_index points at log entry {a}, "
        f"which holds another envelope ({records.received})"
    ) in failures
    assert (
        f"messages row {records.received}: column log_index points at log entry {b}, "
        f"which holds another envelope ({records.sent})"
    ) in failures


def test_an_ack_row_whose_acknowledgement_is_past_the_end_is_named(records: Records) -> None:
    size = records.size()
    records.execute(
        update(m.messages).where(m.messages.c.envelope_id == records.ack).values(log_index=size)
    )
    failures = records.failures()
    assert (
        f"acks row {records.sent}/US-EUCOM: column ack_envelope_id names an acknowledgement "
        f"whose log entry {size} is past the end of the log ({size} entries)"
    ) in failures
    assert (
        f"messages row {records.ack}: column log_index points past the end of the log "
        f"(log entry {size}; the log has {size} entries)"
    ) in failures


def test_an_ack_row_naming_another_envelope_is_named(records: Records) -> None:
    records.execute(
        update(m.acks)
        .where(m.acks.c.envelope_id == records.sent)
        .values(ack_envelope_id=records.received)
    )
    assert records.failures() == [
        f"acks row {records.sent}/US-EUCOM: column ack_envelope_id names no acknowledgement "
        "received"
    ]


def test_an_ack_row_whose_message_row_lies_is_named(records: Records) -> None:
    # The acknowledgement's message row points at the text it acknowledges.
    index = records.log_index(records.received)
    cols = m.messages.c
    records.execute(
        update(m.messages).where(cols.envelope_id == records.received).values(log_index=-1),
        update(m.messages).where(cols.envelope_id == records.ack).values(log_index=index),
    )
    failures = records.failures()
    assert (
        f"acks row {records.sent}/US-EUCOM: column ack_envelope_id names an acknowledgement "
        f"whose message row does not verify (log entry {index})"
    ) in failures


def test_a_checkpoint_row_past_the_end_is_named(records: Records) -> None:
    size = records.size()
    largest: int = records.scalar(select(func.max(m.checkpoints.c.size)))
    note: str = records.scalar(select(m.checkpoints.c.note).where(m.checkpoints.c.size == largest))
    # A checkpoint of a longer log (a rolled-back log keeps its checkpoints).
    records.execute(delete(m.log_entries).where(m.log_entries.c.idx >= largest - 1))
    failures = records.failures()
    assert (
        f"checkpoints row {largest}: size {largest} is past the end of the log "
        f"({largest - 1} entries)"
    ) in failures, failures
    assert size >= largest
    assert note


def test_a_checkpoint_row_whose_size_differs_from_its_note_is_named(records: Records) -> None:
    largest: int = records.scalar(select(func.max(m.checkpoints.c.size)))
    records.execute(
        update(m.checkpoints).where(m.checkpoints.c.size == largest).values(size=largest + 100)
    )
    assert records.failures() == [
        f"checkpoints row {largest + 100}: column size differs from the signed checkpoint "
        f"(size {largest})"
    ]


def test_a_checkpoint_row_whose_root_is_not_the_logs_is_named(records: Records) -> None:
    smallest: int = records.scalar(select(func.min(m.checkpoints.c.size)))
    largest: int = records.scalar(select(func.max(m.checkpoints.c.size)))
    assert smallest < largest
    # Another checkpoint's signed note stored under a size the log has.
    note: str = records.scalar(select(m.checkpoints.c.note).where(m.checkpoints.c.size == largest))
    entry: bytes = records.scalar(
        select(m.log_entries.c.entry).where(m.log_entries.c.idx == smallest - 1)
    )
    records.execute(
        update(m.log_entries)
        .where(m.log_entries.c.idx == smallest - 1)
        .values(entry=entry[:-3] + bytes([entry[-3] ^ 1]) + entry[-2:])
    )
    failures = records.failures()
    assert (
        f"checkpoints row {smallest}: the stored log does not hash to the signed root at size "
        f"{smallest} (an entry before it was changed)"
    ) in failures, failures
    assert note


def test_a_rolled_back_log_fails_every_row_that_points_past_its_end(records: Records) -> None:
    """The log loses its tail; every index row past the new end is named."""
    keep = records.log_index(records.sent)  # the entries before the sent text survive
    cosigned: int = records.scalar(
        select(m.cosignatures.c.size).where(m.cosignatures.c.direction == "of-us")
    )
    cosignature: int = records.scalar(
        select(m.cosignatures.c.id).where(m.cosignatures.c.direction == "of-us")
    )
    records.execute(delete(m.log_entries).where(m.log_entries.c.idx >= keep))
    failures = records.failures()
    expected_prefixes = [
        f"messages row {records.sent}: column log_index points past the end of the log",
        f"messages row {records.ack}: column log_index points past the end of the log",
        f"receipts row {records.sent}/US-EUCOM: column log_index points past the end of the log",
        f"acks row {records.sent}/US-EUCOM: column ack_envelope_id names an acknowledgement "
        "whose log entry",
        f"cosignatures row {cosignature} (of-us, US-EUCOM): size {cosigned} is past the end "
        f"of the log ({keep} entries)",
    ]
    for prefix in expected_prefixes:
        assert any(f.startswith(prefix) for f in failures), (prefix, failures)
    assert any(f.startswith("checkpoints row ") for f in failures), failures


def test_a_cosignature_row_whose_root_is_not_the_logs_is_named(records: Records) -> None:
    cosigned, cosignature = (
        records.scalar(select(c).where(m.cosignatures.c.direction == "of-us"))
        for c in (m.cosignatures.c.size, m.cosignatures.c.id)
    )
    entry: bytes = records.scalar(select(m.log_entries.c.entry).where(m.log_entries.c.idx == 0))
    records.execute(
        update(m.log_entries)
        .where(m.log_entries.c.idx == 0)
        .values(entry=entry[:-3] + bytes([entry[-3] ^ 1]) + entry[-2:])
    )
    failures = records.failures()
    assert (
        f"cosignatures row {cosignature} (of-us, US-EUCOM): the log's root at size "
        f"{cosigned} is not the cosigned root"
    ) in failures, failures


def test_a_cosignature_row_whose_size_differs_from_its_note_is_named(records: Records) -> None:
    cosignature = records.scalar(
        select(m.cosignatures.c.id).where(m.cosignatures.c.direction == "of-us")
    )
    records.execute(
        update(m.cosignatures).where(m.cosignatures.c.id == cosignature).values(size=10_000)
    )
    assert records.failures() == [
        f"cosignatures row {cosignature} (of-us, US-EUCOM): column size differs from the "
        "cosigned checkpoint"
    ]
