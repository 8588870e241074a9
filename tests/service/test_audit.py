"""``parley verify`` (the audit) in one process and across worker processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from parley.service import audit as audit_module
from parley.service.audit import AuditReport, audit
from parley.service.terminal import Draft, Terminal
from parley.store import models as m
from parley.testing.network import PASSPHRASE, make_network

# Each test also runs the audit across a pool of worker processes.
pytestmark = pytest.mark.subprocess

PARTIES = [("US-EUCOM", "US European Command"), ("RU-GS", "General Staff")]


@pytest.fixture
def exchanged(tmp_path: Path) -> Iterator[tuple[Terminal, Terminal]]:
    """Two terminals that exchanged 40 messages each way, with their receipts."""
    terminals = make_network(tmp_path, PARTIES)
    us = Terminal.open(terminals["US-EUCOM"].data, PASSPHRASE)
    ru = Terminal.open(terminals["RU-GS"].data, PASSPHRASE)
    for a, b in ((us, ru), (ru, us)):
        sent = a.send_many(
            [Draft((b.me,), "text", {"text": f"{a.me} {i}"}, "duty") for i in range(40)]
        )
        raws = [a.party.sent(s["id"]).raw for s in sent]
        for lo in range(0, len(raws), 16):  # batches, as the delivery worker sends them
            receipts = b.receive_batch(raws[lo : lo + 16], tls_party=a.me)
            assert all(isinstance(r, bytes) for r in receipts)
            a.receive_receipts([r for r in receipts if isinstance(r, bytes)], peer=b.me)
    yield us, ru
    us.engine.dispose()
    ru.engine.dispose()


def _both(terminal: Terminal, monkeypatch: pytest.MonkeyPatch) -> tuple[AuditReport, AuditReport]:
    one = audit(terminal.engine, terminal.identity.card)
    with monkeypatch.context() as patch:
        patch.setattr(audit_module, "PARALLEL_FROM", 0)
        patch.setattr(audit_module, "_CHUNK", 7)
        many = audit(terminal.engine, terminal.identity.card)
    return one, many


def test_a_clean_record_verifies_alike_in_one_process_and_in_many(
    exchanged: tuple[Terminal, Terminal], monkeypatch: pytest.MonkeyPatch
) -> None:
    us, _ = exchanged
    one, many = _both(us, monkeypatch)
    assert one.ok, one.failures
    assert one.summary() == many.summary()
    # 40 sent + their 40 receipts, 40 received + the 40 receipts issued for them.
    assert (one.entries, one.envelopes, one.receipts, one.messages) == (160, 80, 80, 80)


def test_a_changed_byte_is_named_alike_in_one_process_and_in_many(
    exchanged: tuple[Terminal, Terminal], monkeypatch: pytest.MonkeyPatch
) -> None:
    us, _ = exchanged
    with us.engine.begin() as conn:
        entry = conn.execute(m.log_entries.select().where(m.log_entries.c.idx == 57)).one().entry
        changed = entry[:-20] + bytes([entry[-20] ^ 1]) + entry[-19:]
        conn.execute(update(m.log_entries).where(m.log_entries.c.idx == 57).values(entry=changed))
    one, many = _both(us, monkeypatch)
    assert not one.ok
    assert one.failures == many.failures
    assert any(f.startswith("log entry 57:") for f in one.failures), one.failures
    assert any("does not hash to the signed root" in f for f in one.failures), one.failures


def test_an_index_row_that_lies_about_its_envelope_is_found(
    exchanged: tuple[Terminal, Terminal], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, ru = exchanged
    row = ru.messages("in")[3]
    with ru.engine.begin() as conn:
        conn.execute(
            update(m.messages)
            .where(m.messages.c.envelope_id == row["id"])
            .values(precedence="FLASH" if row["precedence"] != "FLASH" else "ROUTINE")
        )
    one, many = _both(ru, monkeypatch)
    assert one.failures == many.failures
    assert one.failures == [
        f"messages row {row['id']} (log entry {row['log_index']}): "
        "column precedence differs from the signed envelope"
    ]


def test_a_missing_entry_stops_the_walk_and_is_named(
    exchanged: tuple[Terminal, Terminal], monkeypatch: pytest.MonkeyPatch
) -> None:
    us, _ = exchanged
    with us.engine.begin() as conn:
        conn.execute(m.log_entries.delete().where(m.log_entries.c.idx == 100))
    one, many = _both(us, monkeypatch)
    assert one.failures == many.failures
    assert "log entry 100 is missing (the next stored entry is 101)" in one.failures
