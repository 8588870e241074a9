"""Forward secrecy end to end: two terminals in one process on a manual clock.

Keys are made, announced, rotated and destroyed by the call ``parley serve``'s
deadlines loop makes every few seconds (``Terminal.check_deadlines``); the
clock is moved by hand, never slept on. After destruction, nothing in the
recipient's data directory or database opens a message sent under the
destroyed key, while every signature, receipt and checkpoint still verifies
and the recipient still shows what it decrypted at the time.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from parley.core.enckeys import EncryptionKeyPair
from parley.core.envelope import decrypt_envelope, read_envelope
from parley.core.identity import HPKE_SUITE
from parley.errors import DecryptionFailed, KeyDestroyed
from parley.keyfile import load_identity
from parley.service.audit import audit
from parley.service.kernel import utc
from parley.service.keys import (
    ANNOUNCE_AT_ONCE,
    ANNOUNCE_PER_PEER,
    ANNOUNCE_WINDOW_MAX,
    announcement_window,
)
from parley.service.keystore import _unseal, key_store_key
from parley.service.terminal import Terminal, utc_now
from parley.store import models as m
from parley.testing import ManualClock
from parley.testing.network import PASSPHRASE, make_network, postgres_database

US, RU = "US-EUCOM", "RU-GS"
POSTGRES_ADMIN = os.environ.get("PARLEY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
WEEK = timedelta(days=7)
GRACE = timedelta(days=14)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Terminal, Terminal, ManualClock]]:
    made = make_network(tmp_path, [(US, "US European Command"), (RU, "General Staff")])
    clock = ManualClock(utc_now())
    us = Terminal.open(made[US].data, PASSPHRASE, clock=clock)
    ru = Terminal.open(made[RU].data, PASSPHRASE, clock=clock)
    yield us, ru, clock
    us.engine.dispose()
    ru.engine.dispose()


def deliver(src: Terminal, dst: Terminal) -> int:
    """Carry what ``src`` has due for ``dst`` across, and the receipts back."""
    due = src.due_deliveries(dst.party.party)
    for item in due:
        receipt = dst.receive_envelope(item["raw"], tls_party=src.party.party)
        src.receive_receipt(receipt, peer=dst.party.party)
    return len(due)


def exchange(us: Terminal, ru: Terminal) -> None:
    while deliver(us, ru) + deliver(ru, us):
        pass


def tick(us: Terminal, ru: Terminal) -> None:
    """One pass of both terminals' deadlines loops, then delivery both ways."""
    us.check_deadlines()
    ru.check_deadlines()
    exchange(us, ru)


def _raw(terminal: Terminal, envelope_id: str) -> bytes:
    return terminal.party.transcript.entry(terminal.show(envelope_id)["log_index"])[1:]


def test_keys_are_announced_used_rotated_and_destroyed_after_the_grace_period(
    pair: tuple[Terminal, Terminal, ManualClock], tmp_path: Path
) -> None:
    us, ru, clock = pair
    before = us.send([RU], kind="text", body={"text": "to the card key"}, operator="o")
    exchange(us, ru)
    tick(us, ru)
    first = ru.party.keyring.current
    assert first is not None
    assert first.key.serial == 1
    assert us.party.keyring.peer_key(RU) == first.key  # announced, verified, adopted
    with ru.engine.connect() as conn:
        sealed_first = conn.execute(
            select(m.encryption_keys.c.sealed).where(m.encryption_keys.c.key_id == first.key_id)
        ).scalar()
    assert sealed_first is not None
    assert first.material not in sealed_first

    secret = us.send([RU], kind="text", body={"text": "under the first key"}, operator="o")
    exchange(us, ru)
    header = read_envelope(_raw(ru, secret["id"]), ru.party.card_of)
    assert header.encrypted_to[RU] == first.key_id
    assert ru.show(secret["id"])["body"] == {"text": "under the first key"}

    # A restart keeps the keys: sealed in the database under the passphrase.
    again = Terminal.open(ru.data.path, PASSPHRASE, clock=clock)
    assert again.party.keyring.current is not None
    assert again.party.keyring.current.key_id == first.key_id
    again.engine.dispose()

    # A week on: a new key; the first is in its grace period and still opens.
    clock.advance(WEEK)
    tick(us, ru)
    second = ru.party.keyring.current
    assert second is not None
    assert second.key.serial == 2
    assert us.party.keyring.peer_key(RU) == second.key
    states = {k["serial"]: k["state"] for k in ru.keys_status()["encryption_keys"]}
    assert states == {2: "current", 1: "grace", 0: "fallback"}
    late = us.send([RU], kind="text", body={"text": "after rotation"}, operator="o")
    exchange(us, ru)
    assert read_envelope(_raw(ru, late["id"]), ru.party.card_of).encrypted_to[RU] == second.key_id
    assert decrypt_envelope(header, ru.identity, ru.party.keyring.private)

    # The grace period ends: the first key's private half is overwritten.
    clock.advance(GRACE - WEEK)
    tick(us, ru)
    assert ru.party.keyring.private(first.key_id) is not None  # 14 days after replacement only
    clock.advance(WEEK + timedelta(seconds=1))
    tick(us, ru)
    destroyed_at = clock.now
    shown = {k["serial"]: k for k in ru.keys_status()["encryption_keys"]}
    assert shown[1]["state"] == "destroyed"
    assert shown[1]["destroyed_at"] is not None
    with ru.engine.connect() as conn:
        row = conn.execute(
            select(m.encryption_keys).where(m.encryption_keys.c.key_id == first.key_id)
        ).one()
    assert row.sealed is None
    assert row.destroyed_at is not None

    # --- The data directory is seized, passphrase and all. ---------------------------------
    # Read while the terminal runs (its write-ahead log still open), and after it stopped.
    for running in (True, False):
        if not running:
            ru.engine.dispose()
        files = [p for p in ru.data.path.rglob("*") if p.is_file()]
        assert ru.data.sqlite_file in files
        for path in files:
            assert sealed_first not in path.read_bytes(), (path, running)
    identity = load_identity(ru.data.key_file, PASSPHRASE)
    ciphertext = header.ciphertexts[RU]
    with pytest.raises(DecryptionFailed):  # the card's key: not the one it was sealed to
        decrypt_envelope(header, identity)
    reopened = Terminal.open(ru.data.path, PASSPHRASE, clock=clock)
    with pytest.raises(KeyDestroyed, match=f"key {first.key_id[:16]}…, destroyed on"):
        decrypt_envelope(header, reopened.identity, reopened.party.keyring.private)
    # Every private key the directory still holds, tried on the ciphertext: none opens it.
    store = key_store_key(reopened.engine, reopened.data.key_file, PASSPHRASE)
    with reopened.engine.connect() as conn:
        rows = conn.execute(select(m.encryption_keys)).all()

    candidates = [identity.hpke_private]
    for row in rows:
        if row.sealed is not None:
            material = _unseal(store, row.key_id, row.sealed)
            held = EncryptionKeyPair.from_material(identity, material, serial=9, now=clock())
            candidates.append(held.private)
    assert first.key_id not in {row.key_id for row in rows if row.sealed is not None}
    assert len(candidates) == 1 + sum(row.sealed is not None for row in rows) > 2
    for private in candidates:
        for info in (
            f"parley/v1 envelope\n{header.id}\n{US}\n{RU}\n{first.key_id}".encode(),
            f"parley/v1 envelope\n{header.id}\n{US}\n{RU}".encode(),
        ):
            with pytest.raises(Exception):  # noqa: B017,PT011 - InvalidTag or ValueError
                HPKE_SUITE.decrypt(ciphertext, private, info=info)

    # --- What survives: the record, and what was read at the time. --------------------------
    assert reopened.show(secret["id"])["body"] == {"text": "under the first key"}
    assert reopened.show(before["id"])["body"] == {"text": "to the card key"}
    report = audit(reopened.engine, reopened.identity.card)
    assert report.failures == [], report.failures
    us_report = audit(us.engine, us.identity.card)
    assert us_report.failures == [], us_report.failures
    # Witnessing goes on over the log that holds the undecryptable envelope.
    us.witness(RU, reopened.offer_checkpoint(us.checkpoint_request(RU)), reopened.log_leaves)

    # --- A sender that still uses the destroyed key is refused, with a clear error. ----------
    us.party.keyring.adopt(first.key)  # US-EUCOM missed the rotation (or replays it)
    stale = us.send([RU], kind="text", body={"text": "too late"}, operator="o")
    size = reopened.party.transcript.size
    with pytest.raises(KeyDestroyed, match="destroyed on"):
        reopened.receive_envelope(_raw(us, stale["id"]), tls_party=US)
    assert reopened.party.transcript.size == size  # nothing logged
    assert destroyed_at <= clock.now
    reopened.engine.dispose()


def test_a_peer_pinned_later_gets_the_current_key_and_a_frozen_terminal_makes_none(
    pair: tuple[Terminal, Terminal, ManualClock],
) -> None:
    us, ru, clock = pair
    ru.kernel.freeze("test: recovering")
    assert ru.check_encryption_keys() == {"destroyed": [], "created": [], "announced_to": []}
    ru.kernel.thaw()
    made = ru.check_encryption_keys()
    assert made["announced_to"] == [US]
    assert len(made["created"]) == 1
    # Nothing new is due: no key, no message.
    size = ru.party.transcript.size
    assert ru.check_encryption_keys() == {"destroyed": [], "created": [], "announced_to": []}
    assert ru.party.transcript.size == size
    # The announcement travelled as a logged service message, in both transcripts.
    exchange(us, ru)
    with us.engine.connect() as conn:
        [row] = conn.execute(select(m.peer_encryption_keys)).all()
    assert (row.party, row.serial, row.key_id) == (RU, 1, made["created"][0])
    assert us.show(row.envelope_id)["kind"] == "key"
    assert row.envelope_id not in {m["id"] for m in us.messages("in")}  # not in the inbox
    assert row.envelope_id in {m["id"] for m in us.messages("in", all_kinds=True)}
    status = us.keys_status()
    assert [p["encryption_key"]["key_id"] for p in status["peers"]] == [made["created"][0]]
    # A restart re-verifies the stored announcement against the pinned card.
    again = Terminal.open(us.data.path, PASSPHRASE, clock=clock)
    assert again.party.keyring.peer_key(RU) is not None
    again.engine.dispose()
    # A frozen terminal destroys nothing either: recovery may need the keys.
    clock.advance(WEEK)
    assert len(ru.check_encryption_keys()["created"]) == 1
    clock.advance(GRACE + timedelta(seconds=1))
    ru.kernel.freeze("test: recovering")
    assert ru.check_encryption_keys() == {"destroyed": [], "created": [], "announced_to": []}
    assert ru.party.keyring.private(made["created"][0]) is not None
    ru.kernel.thaw()
    assert ru.check_encryption_keys()["destroyed"] == made["created"]


def test_a_changed_stored_announcement_is_not_used(
    pair: tuple[Terminal, Terminal, ManualClock],
) -> None:
    """An insider who edits the stored peer key (to read what is sent next) gains nothing."""
    us, ru, clock = pair
    tick(us, ru)
    forged = EncryptionKeyPair.generate(us.identity, serial=7, now=clock())
    with us.engine.begin() as conn:
        announcement = json.loads(forged.key.announcement_bytes)
        announcement["announcement"]["party"] = RU  # signed by US-EUCOM's card, not RU-GS's
        conn.execute(
            m.peer_encryption_keys.update().values(
                announcement=json.dumps(announcement).encode(), serial=9
            )
        )
    again = Terminal.open(us.data.path, PASSPHRASE, clock=clock)
    assert again.party.keyring.peer_key(RU) is None  # falls back to RU-GS's card key
    again.engine.dispose()


def test_rotation_and_grace_are_configurable(tmp_path: Path) -> None:
    from parley.config import Config
    from parley.errors import UsageError

    text = Config(party=US, name="x", database="sqlite://").to_toml()
    assert 'encryption_key_rotation = "7d"' in text
    short = text.replace('"7d"', '"30m"').replace('"14d"', '"1h"')
    config = Config.from_toml(short, "t")
    assert (config.rotation_interval, config.grace_period) == (
        timedelta(minutes=30),
        timedelta(hours=1),
    )
    with pytest.raises(UsageError, match="cannot be off"):
        Config.from_toml(text.replace('"7d"', '"off"'), "t")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend_pair(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Terminal, Terminal, ManualClock]]:
    with contextlib.ExitStack() as stack:
        databases = None
        if request.param == "postgresql":
            databases = {
                party: stack.enter_context(postgres_database(POSTGRES_ADMIN)) for party in (US, RU)
            }
        made = make_network(tmp_path, [(US, "US"), (RU, "RU")], databases=databases)
        clock = ManualClock(utc_now())
        us = Terminal.open(made[US].data, PASSPHRASE, clock=clock)
        ru = Terminal.open(made[RU].data, PASSPHRASE, clock=clock)
        try:
            yield us, ru, clock
        finally:
            us.engine.dispose()
            ru.engine.dispose()


def test_a_destroyed_key_is_gone_from_the_database_on_each_backend(
    backend_pair: tuple[Terminal, Terminal, ManualClock],
) -> None:
    us, ru, clock = backend_pair
    tick(us, ru)
    first = ru.party.keyring.current
    assert first is not None
    sent = us.send([RU], kind="text", body={"text": "before"}, operator="o")
    exchange(us, ru)
    clock.advance(WEEK)
    tick(us, ru)
    clock.advance(GRACE + timedelta(seconds=1))
    assert ru.check_encryption_keys()["destroyed"] == [first.key_id]
    with ru.engine.connect() as conn:
        row = conn.execute(
            select(m.encryption_keys).where(m.encryption_keys.c.key_id == first.key_id)
        ).one()
    assert row.sealed is None
    reopened = Terminal.open(ru.data.path, PASSPHRASE, clock=clock)
    header = read_envelope(_raw(reopened, sent["id"]), reopened.party.card_of)
    with pytest.raises(KeyDestroyed):
        decrypt_envelope(header, reopened.identity, reopened.party.keyring.private)
    assert reopened.show(sent["id"])["body"] == {"text": "before"}
    assert audit(reopened.engine, reopened.identity.card).failures == []
    reopened.engine.dispose()


def test_announcements_to_many_peers_are_spread_and_not_brought_forward(tmp_path: Path) -> None:
    """A terminal with many peers queues its key announcements at once but spreads their
    first attempts (a network starting together must not ask every delivery of one machine
    at the same instant); a peer answering again brings retries forward, not these."""
    parties = [(f"T{i:02d}", f"Terminal {i}") for i in range(1, 10)]
    made = make_network(tmp_path, parties)
    clock = ManualClock(utc_now())
    first = Terminal.open(made["T01"].data, PASSPHRASE, clock=clock)
    try:
        announced = first.check_encryption_keys()["announced_to"]
        assert sorted(announced) == [p for p, _ in parties[1:]]
        window = announcement_window(len(announced))
        assert window == ANNOUNCE_PER_PEER * 8
        now = clock()
        with first.engine.connect() as conn:
            rows = conn.execute(
                select(m.outbox.c.peer, m.outbox.c.next_attempt, m.outbox.c.precedence)
            ).all()
        assert sorted(r.peer for r in rows) == sorted(announced)
        attempts = [utc(r.next_attempt) for r in rows]
        assert None not in attempts
        offsets = [(at - now).total_seconds() for at in attempts if at is not None]
        assert all(0.0 <= o <= window for o in offsets), offsets
        assert len({round(o, 3) for o in offsets}) > 1, offsets  # spread, not one instant
        assert {r.precedence for r in rows} == {"ROUTINE"}
        later = max(rows, key=lambda r: r.next_attempt)
        assert first.retry_now(later.peer) == 0
        assert first.next_due(later.peer) == utc(later.next_attempt)
        # Once due, it goes like any message; a failed attempt is a retry like any other.
        clock.advance(timedelta(seconds=window + 1))
        assert {i["peer"] for i in first.due_deliveries(later.peer, 10)} == {later.peer}
    finally:
        first.engine.dispose()


def test_few_announcements_go_at_once() -> None:
    assert announcement_window(1) == announcement_window(ANNOUNCE_AT_ONCE) == 0.0
    assert announcement_window(ANNOUNCE_AT_ONCE + 1) > 0.0
    assert announcement_window(10_000) == ANNOUNCE_WINDOW_MAX
