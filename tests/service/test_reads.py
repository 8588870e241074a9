"""What is shown is what was signed: index rows are checked against their envelopes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from parley.config import DataDir
from parley.core.canonical import canonical_bytes
from parley.core.envelope import read_envelope
from parley.core.identity import IdentityCard
from parley.errors import VerificationError
from parley.service import reads
from parley.service.audit import audit
from parley.service.reads import Records
from parley.service.terminal import Terminal
from parley.store import models as m
from parley.store.db import engine_for
from parley.testing.network import PASSPHRASE, make_network

PARTIES = [("US-EUCOM", "US European Command"), ("RU-GS", "General Staff")]


@dataclass
class Stopped:
    """A terminal that received and sent a few messages, then stopped."""

    path: Path
    received: str  # id of a text received from US-EUCOM
    sent: str  # id of a text sent to US-EUCOM
    card: IdentityCard

    def change(self, envelope_id: str, **values: Any) -> None:
        engine = engine_for(DataDir(self.path).load_config().database)
        try:
            with engine.begin() as conn:
                conn.execute(
                    update(m.messages)
                    .where(m.messages.c.envelope_id == envelope_id)
                    .values(**values)
                )
        finally:
            engine.dispose()

    def records(self) -> Iterator[Records]:
        engine = engine_for(DataDir(self.path).load_config().database)
        try:
            yield Records(engine, "RU-GS", own_card=self.card)
        finally:
            engine.dispose()


@pytest.fixture
def stopped(tmp_path: Path) -> Stopped:
    terminals = make_network(tmp_path, PARTIES)
    us = Terminal.open(terminals["US-EUCOM"].data, PASSPHRASE)
    ru = Terminal.open(terminals["RU-GS"].data, PASSPHRASE)
    try:
        ids = [
            us.send(
                ["RU-GS"],
                kind="text",
                body={"text": f"hold the bridge {i}"},
                operator="Col. Smith",
                precedence="IMMEDIATE",
            )["id"]
            for i in range(3)
        ]
        for envelope_id in ids:
            index = us.show(envelope_id)["log_index"]
            ru.receive_envelope(us.party.transcript.entry(index)[1:])
        sent = ru.send(["US-EUCOM"], kind="text", body={"text": "understood"}, operator="Maj. P")
        raw = ru.party.transcript.entry(ru.show(sent["id"])["log_index"])[1:]
        receipts = us.receive_batch([raw], tls_party="RU-GS")
        ru.receive_receipts([r for r in receipts if isinstance(r, bytes)], peer="US-EUCOM")
        return Stopped(terminals["RU-GS"].data, ids[1], sent["id"], ru.identity.card)
    finally:
        us.engine.dispose()
        ru.engine.dispose()


def _shown(stopped: Stopped, envelope_id: str) -> dict[str, Any]:
    for records in stopped.records():
        return records.show(envelope_id)
    raise AssertionError("unreachable")


def test_an_untouched_row_verifies_and_shows_the_envelopes_values(stopped: Stopped) -> None:
    shown = _shown(stopped, stopped.received)
    assert shown["verified"] is True
    assert shown["problem"] is None
    assert shown["body"] == {"text": "hold the bridge 1"}
    assert shown["operator"] == "Col. Smith"
    assert shown["precedence"] == "IMMEDIATE"
    assert shown["sender"] == "US-EUCOM"
    assert _shown(stopped, stopped.sent)["verified"] is True


TAMPERED = [
    ("body", json.dumps({"text": "abandon the bridge"}), "body"),
    ("operator", "Gen. Mallory", "operator"),
    ("lang", "de", "lang"),
    ("precedence", "FLASH", "precedence"),
    ("exercise", True, "exercise"),
    ("sender", "UA-GS", "sender"),
    ("recipients", "RU-GS,UA-GS", "recipients"),
    ("channel", "RU-GS.UA-GS", "channel"),
    ("seq", 99, "seq"),
    ("kind", "form", "kind"),
    ("direction", "out", "direction"),
]


@pytest.mark.parametrize(("column", "value", "named"), TAMPERED)
def test_a_changed_column_of_a_received_message_does_not_verify(
    stopped: Stopped, column: str, value: Any, named: str
) -> None:
    stopped.change(stopped.received, **{column: value})
    shown = _shown(stopped, stopped.received)
    assert shown["verified"] is False
    assert shown["problem"].startswith(named + " differs"), shown["problem"]
    assert shown["body"] is None
    assert shown["operator"] is None
    assert shown["precedence"] is None


def test_a_changed_time_does_not_verify(stopped: Stopped) -> None:
    for envelope_id in (stopped.received, stopped.sent):
        for records in stopped.records():
            created = records.show(envelope_id)["created_at"]
        engine = engine_for(DataDir(stopped.path).load_config().database)
        with engine.begin() as conn:
            stored = conn.execute(
                select(m.messages.c.created_at).where(m.messages.c.envelope_id == envelope_id)
            ).scalar_one()
        engine.dispose()
        assert created is not None
        stopped.change(envelope_id, created_at=stored - timedelta(hours=3))
        shown = _shown(stopped, envelope_id)
        assert shown["verified"] is False
        assert shown["problem"] == "created_at differs from the signed envelope"
        assert shown["created_at"] is None


def test_changed_content_with_a_matching_body_does_not_verify(stopped: Stopped) -> None:
    engine = engine_for(DataDir(stopped.path).load_config().database)
    with engine.begin() as conn:
        content = conn.execute(
            select(m.messages.c.content).where(m.messages.c.envelope_id == stopped.received)
        ).scalar_one()
    engine.dispose()
    inner = json.loads(content)
    inner["body"] = {"text": "abandon the bridge"}
    stopped.change(
        stopped.received,
        content=canonical_bytes(inner),
        body=canonical_bytes(inner["body"]).decode(),
    )
    shown = _shown(stopped, stopped.received)
    assert shown["verified"] is False
    assert shown["problem"] == "content: does not match the content digest the sender signed"
    assert shown["body"] is None


def test_an_inbox_lists_a_changed_row_as_not_verifying_and_the_others_as_they_were(
    stopped: Stopped,
) -> None:
    stopped.change(stopped.received, body=json.dumps({"text": "abandon the bridge"}))
    for records in stopped.records():
        inbox = records.messages("in")
    by_id = {item["id"]: item for item in inbox}
    assert len(by_id) == 3
    assert by_id[stopped.received]["verified"] is False
    assert by_id[stopped.received]["problem"] == "body differs from the signed content"
    others = [item for item in inbox if item["id"] != stopped.received]
    assert [item["verified"] for item in others] == [True, True]
    assert all("abandon" not in json.dumps(item) for item in inbox)


def test_the_running_terminal_shows_a_changed_row_as_not_verifying(stopped: Stopped) -> None:
    stopped.change(stopped.received, precedence="FLASH")
    terminal = Terminal.open(stopped.path, PASSPHRASE)
    try:
        shown = terminal.show(stopped.received)
    finally:
        terminal.engine.dispose()
    assert shown["verified"] is False
    assert shown["problem"] == "precedence differs from the signed envelope"


def _change_entry(stopped: Stopped, index: int, *, leaf_too: bool) -> None:
    from parley import merkle

    engine = engine_for(DataDir(stopped.path).load_config().database)
    try:
        with engine.begin() as conn:
            entry = conn.execute(
                select(m.log_entries.c.entry).where(m.log_entries.c.idx == index)
            ).scalar_one()
            changed = entry[:-20] + bytes([entry[-20] ^ 1]) + entry[-19:]
            values: dict[str, Any] = {"entry": changed}
            if leaf_too:
                values["leaf"] = merkle.leaf_hash(changed)
            conn.execute(update(m.log_entries).where(m.log_entries.c.idx == index).values(**values))
    finally:
        engine.dispose()


def test_a_terminal_whose_stored_entry_no_longer_hashes_to_its_leaf_does_not_open(
    stopped: Stopped,
) -> None:
    _change_entry(stopped, 1, leaf_too=False)
    with pytest.raises(VerificationError, match="log entry 1 no longer hashes to its stored leaf"):
        Terminal.open(stopped.path, PASSPHRASE)


def test_an_entry_changed_with_its_leaf_is_refused_by_the_signed_checkpoint(
    stopped: Stopped,
) -> None:
    _change_entry(stopped, 1, leaf_too=True)
    with pytest.raises(VerificationError, match="does not hash to this terminal's own checkpoint"):
        Terminal.open(stopped.path, PASSPHRASE)
    for records in stopped.records():
        with pytest.raises(VerificationError, match="own checkpoint"):
            records.messages("in")


def test_a_signature_is_checked_once_and_remembered_by_leaf_hash(
    stopped: Stopped, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = read_envelope

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(reads, "read_envelope", counting)
    for records in stopped.records():
        first = records.messages("in")
        assert len(calls) == 3
        again = records.messages("in")
        assert len(calls) == 3
        assert first == again


def _audited(stopped: Stopped) -> list[str]:
    engine = engine_for(DataDir(stopped.path).load_config().database)
    try:
        return audit(engine, stopped.card).failures
    finally:
        engine.dispose()


def test_verify_passes_an_untouched_record(stopped: Stopped) -> None:
    assert _audited(stopped) == []


@pytest.mark.parametrize(("column", "value", "named"), TAMPERED)
def test_verify_names_a_changed_message_column(
    stopped: Stopped, column: str, value: Any, named: str
) -> None:
    stopped.change(stopped.received, **{column: value})
    failures = _audited(stopped)
    assert failures, "the change went unnoticed"
    assert failures[0].startswith(f"messages row {stopped.received}"), failures
    assert f"column {named} differs" in failures[0], failures


def test_verify_names_a_changed_time_and_content(stopped: Stopped) -> None:
    engine = engine_for(DataDir(stopped.path).load_config().database)
    with engine.begin() as conn:
        stored = conn.execute(
            select(m.messages.c.created_at).where(m.messages.c.envelope_id == stopped.sent)
        ).scalar_one()
    engine.dispose()
    stopped.change(stopped.sent, created_at=stored + timedelta(days=1))
    failures = _audited(stopped)
    assert failures == [
        f"messages row {stopped.sent} (log entry {failures[0].split('log entry ')[1][:1]}): "
        "column created_at differs from the signed envelope"
    ]
    stopped.change(stopped.sent, created_at=stored, content=b"{}")
    failures = _audited(stopped)
    assert len(failures) == 1
    assert "column content: does not match the content digest" in failures[0]


def test_verify_names_a_changed_receipt_row(stopped: Stopped) -> None:
    engine = engine_for(DataDir(stopped.path).load_config().database)
    try:
        with engine.begin() as conn:
            changed = conn.execute(
                update(m.receipts)
                .where(m.receipts.c.envelope_id == stopped.sent)
                .values(through_seq=7)
            ).rowcount
    finally:
        engine.dispose()
    assert changed == 1
    assert _audited(stopped) == [
        f"receipts row {stopped.sent}/US-EUCOM: column through_seq differs from the signed receipt"
    ]
