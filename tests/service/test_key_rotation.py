"""Key rotation and revocation through the application layer, two terminals in this process.

US-EUCOM and RU-GS are made with ``make_network`` and opened here on one
``ManualClock``; envelopes and receipts are carried by hand, in the order a
bad network might choose. What is checked is what must hold end to end:
messages sent before, during and after a rotation are all delivered and
verify (``parley verify`` clean on both sides, before and after a restart);
a stolen old or revoked key is refused with one alarm; a revocation needs the
right signer; the replacement of a revoked card is pinned by fingerprint.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from parley.core.canonical import canonical_bytes
from parley.core.encoding import uuid7
from parley.core.envelope import Content, seal_envelope
from parley.core.identity import Identity
from parley.core.keychain import issue_revocation
from parley.core.party import bilateral_channel
from parley.errors import (
    FingerprintMismatch,
    InvalidRevocation,
    NotPermitted,
    SupersededKey,
    UsageError,
)
from parley.service import tls
from parley.service.operations import Operations
from parley.service.policy import LOCAL_ADMIN, Actor
from parley.service.rotation import CARD_ROTATED, KEY_REVOKED, SUPERSEDED_KEY
from parley.service.setup import REVOCATION_CERTIFICATE
from parley.service.terminal import CardBundle, Terminal, utc_now
from parley.testing import ManualClock
from parley.testing.network import PASSPHRASE, TEST_SCRYPT_N, make_network

US, RU = "US-EUCOM", "RU-GS"


class World:
    def __init__(self, root: Path) -> None:
        self.made = make_network(root, [(US, "US European Command"), (RU, "General Staff")])
        self.clock = ManualClock(utc_now())
        self.us = self.open(US)
        self.ru = self.open(RU)

    def open(self, party: str) -> Terminal:
        return Terminal.open(self.made[party].data, PASSPHRASE, clock=self.clock)

    def reopen(self) -> None:
        self.us.engine.dispose()
        self.ru.engine.dispose()
        self.us = self.open(US)
        self.ru = self.open(RU)

    def admin(self, terminal: Terminal) -> Operations:
        return Operations(terminal, Actor("root", LOCAL_ADMIN, "cli"))

    def send(self, sender: Terminal, text: str) -> bytes:
        to = RU if sender is self.us else US
        sent = sender.send([to], kind="text", body={"text": text}, operator="officer")
        return raw_of(sender, sent["log_index"])

    def carry(self, raw: bytes, sender: Terminal) -> None:
        receiver = self.ru if sender is self.us else self.us
        receipt = receiver.receive_envelope(raw, tls_party=sender.me)
        sender.receive_receipt(receipt, peer=receiver.me)


def raw_of(terminal: Terminal, index: int) -> bytes:
    return terminal.party.transcript.entry(index)[1:]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    made = World(tmp_path)
    yield made
    made.us.engine.dispose()
    made.ru.engine.dispose()


def _alarms(terminal: Terminal, kind: str) -> list[dict[str, Any]]:
    return [a for a in terminal.alarms() if a["kind"] == kind]


def _received(terminal: Terminal) -> dict[str, dict[str, Any]]:
    """Received texts -> their message as the read model shows it (checked signatures)."""
    return {m["body"]["text"]: m for m in terminal.messages("in") if "text" in m["body"]}


def _verify_clean(terminal: Terminal) -> None:
    report = Operations(terminal, Actor("auditor", LOCAL_ADMIN, "cli")).verify()
    assert report.failures == [], report.failures


def test_messages_before_during_and_after_a_rotation_all_arrive_and_verify(world: World) -> None:
    us, ru, clock = world.us, world.ru, world.clock
    old_fingerprint = us.identity.card.fingerprint
    world.carry(world.send(us, "before"), us)
    in_flight = world.send(us, "in flight")
    clock.advance(timedelta(minutes=1))
    rotated = world.admin(us).rotate_keys()
    assert rotated["version"] == 2
    assert rotated["announced_to"] == [RU]
    assert us.identity.card.version == 2
    rotation = _last_rotation(us)
    clock.advance(timedelta(minutes=1))
    after = world.send(us, "after")

    # The new key's message first: RU-GS does not know it yet (the sender tries again).
    with pytest.raises(Exception, match="not the pinned key"):
        ru.receive_envelope(after, tls_party=US)
    world.carry(rotation, us)
    world.carry(in_flight, us)
    world.carry(after, us)
    world.carry(world.send(ru, "reply"), ru)
    shown = _received(ru)
    assert set(shown) == {"before", "in flight", "after"}
    assert all(m["verified"] for m in shown.values())
    # Each says which key signed it.
    assert shown["before"]["signer_fingerprint"] == old_fingerprint
    assert shown["in flight"]["signer_fingerprint"] == old_fingerprint
    assert shown["after"]["signer_fingerprint"] == us.identity.card.fingerprint
    assert set(_received(us)) == {"reply"}

    # RU-GS accepted the card by itself, and shows the new fingerprint to confirm aloud.
    (alarm,) = _alarms(ru, CARD_ROTATED)
    assert alarm["severity"] == "info"
    assert us.identity.card.fingerprint in alarm["message"]
    assert {p["party"]: p["card_version"] for p in ru.peers()} == {US: 2}
    shown_keys = ru.keys_status()
    (peer_row,) = shown_keys["peers"]
    assert [(c["card_version"], c["state"]) for c in peer_row["chain"]] == [
        (2, "in use"),
        (1, "rotated out"),
    ]
    assert [c["state"] for c in us.keys_status()["card"]["chain"]] == ["in use", "rotated out"]
    # Both keep the new TLS certificate too.
    assert tls.certificate_der(tls.certificate_for(us.identity)) in tls.certificate_ders(
        ru.peer_certificates[US]
    )
    # The card file now holds the new card (for peers that pin it later).
    bundle = CardBundle.from_json(Path(world.made[US].data, "card.json").read_bytes())
    assert bundle.card.version == 2
    _verify_clean(us)
    _verify_clean(ru)
    # After a restart each side rebuilds the chains from its database and key file.
    world.reopen()
    assert world.us.identity.card.version == 2
    assert world.ru.party.peers[US].version == 2
    _verify_clean(world.us)
    _verify_clean(world.ru)
    world.carry(world.send(world.us, "after restart"), world.us)
    assert _received(world.ru)["after restart"]["verified"]


def test_a_stolen_old_key_after_a_rotation_is_refused_with_one_alarm(world: World) -> None:
    us, ru, clock = world.us, world.ru, world.clock
    old = us.identity
    world.admin(us).rotate_keys()
    world.carry(_last_rotation(us), us)
    clock.advance(timedelta(hours=2))
    for seq in (50, 51):
        forged = _forged(old, ru, clock, seq)
        with pytest.raises(SupersededKey, match="rotated out"):
            ru.receive_envelope(forged, tls_party=US)
    (alarm,) = _alarms(ru, SUPERSEDED_KEY)
    assert alarm["subject"] == f"{US} v1"
    assert alarm["count"] == 2


def test_rotation_and_revocation_need_an_administrator(world: World) -> None:
    duty = Operations(world.us, Actor("duty", "duty_officer", "api"))
    with pytest.raises(NotPermitted):
        duty.rotate_keys()
    with pytest.raises(NotPermitted):
        duty.revoke_keys(reason="x", version=1)
    assert world.us.identity.card.version == 1


def test_the_card_in_use_is_revoked_with_the_certificate_from_the_safe(world: World) -> None:
    us, ru, clock = world.us, world.ru, world.clock
    certificate = Path(world.made[US].data, REVOCATION_CERTIFICATE).read_text()
    stolen = us.identity
    early = _forged(stolen, ru, clock, 101)  # signed before the compromise
    compromised_at = clock.now + timedelta(minutes=5)
    clock.advance(timedelta(hours=1))

    # The keys in use cannot revoke themselves; another party's certificate is refused.
    with pytest.raises(UsageError, match="certificate"):
        world.admin(us).revoke_keys(reason="seized")
    ru_certificate = Path(world.made[RU].data, REVOCATION_CERTIFICATE).read_text()
    with pytest.raises(UsageError, match="RU-GS's"):
        world.admin(us).revoke_keys(reason="seized", certificate=ru_certificate)

    result = world.admin(us).revoke_keys(
        reason="terminal seized", compromised_at=compromised_at, certificate=certificate
    )
    assert result["sent_to"] == []  # the keys in use are not trusted to carry it
    statement = Path(result["file"]).read_bytes()
    # A forged copy (an earlier compromise time) is refused; the real one is taken in.
    forged = json.loads(statement)
    forged["revocation"]["compromised_at"] = "2020-01-01T00:00:00.000Z"
    with pytest.raises(InvalidRevocation):
        world.admin(ru).import_revocation(canonical_bytes(forged))
    taken = world.admin(ru).import_revocation(statement)
    assert taken["card_in_use_revoked"] is True
    (alarm,) = _alarms(ru, KEY_REVOKED)
    assert alarm["severity"] == "critical"
    assert "pinned again by its fingerprint" in alarm["message"]

    # What the thief signs after the stated time is refused, with an alarm; what was
    # signed before still counts.
    with pytest.raises(SupersededKey, match="revoked"):
        ru.receive_envelope(_forged(stolen, ru, clock, 102), tls_party=US)
    assert [a["severity"] for a in _alarms(ru, SUPERSEDED_KEY)] == ["critical"]
    ru.receive_envelope(early, tls_party=US)
    # The revocation survives a restart.
    world.reopen()
    with pytest.raises(SupersededKey):
        world.ru.receive_envelope(_forged(stolen, world.ru, clock, 103), tls_party=US)

    # US-EUCOM takes new keys; no peer accepts them by itself (the revoked keys
    # cannot vouch for them): RU-GS pins the card again by the fingerprint read aloud.
    renewed = world.admin(world.us).rotate_keys()
    assert renewed["pin_again"] is True
    assert renewed["announced_to"] == []
    bundle = CardBundle.from_json(Path(world.made[US].data, "card.json").read_bytes())
    assert bundle.card.fingerprint == renewed["fingerprint"]
    assert bundle.card.previous is None
    with pytest.raises(FingerprintMismatch):
        world.admin(world.ru).add_peer(bundle, world.ru.identity.card.fingerprint, [])
    world.admin(world.ru).add_peer(bundle, renewed["fingerprint"], [])
    assert world.ru.party.peers[US].key_id == bundle.card.key_id
    assert world.ru.party.peers[US].history[0].revoked == "terminal seized"
    world.carry(world.send(world.us, "new keys"), world.us)
    world.carry(world.send(world.ru, "received"), world.ru)
    assert _received(world.ru)["new keys"]["verified"]
    _verify_clean(world.us)
    _verify_clean(world.ru)
    world.reopen()
    _verify_clean(world.us)
    _verify_clean(world.ru)


def test_an_unrevoked_peer_card_is_not_replaced_by_one_that_does_not_chain(world: World) -> None:
    impostor = Identity.generate(US, "US European Command", now=world.clock.now, version=2)
    bundle = CardBundle(impostor.card, tls.certificate_for(impostor))
    with pytest.raises(UsageError, match="already pinned"):
        world.admin(world.ru).add_peer(bundle, impostor.card.fingerprint, [])


def test_an_earlier_card_is_revoked_by_the_keys_in_use_and_sent_to_the_peers(
    world: World,
) -> None:
    us, ru, clock = world.us, world.ru, world.clock
    old = us.identity
    world.admin(us).rotate_keys()
    world.carry(_last_rotation(us), us)
    clock.advance(timedelta(minutes=10))
    result = world.admin(us).revoke_keys(
        reason="old laptop lost", version=1, compromised_at=clock.now - timedelta(minutes=5)
    )
    assert result["sent_to"] == [RU]
    world.carry(raw_of(us, us.party.transcript.size - 1), us)  # the FLASH service message
    assert [a["subject"] for a in _alarms(ru, KEY_REVOKED)] == [f"{US} v1"]
    assert ru.party.peers[US].history[0].revoked == "old laptop lost"
    assert ru.party.peers[US].revoked is None
    with pytest.raises(SupersededKey):
        ru.receive_envelope(_forged(old, ru, clock, 60), tls_party=US)
    _verify_clean(us)
    _verify_clean(ru)


def _forged(signer: Identity, receiver: Terminal, clock: ManualClock, seq: int) -> bytes:
    return seal_envelope(
        signer,
        [receiver.identity.card],
        envelope_id=uuid7(clock.now),
        channel=bilateral_channel(signer.party, receiver.me),
        seq=seq,
        created_at=clock.now,
        precedence="FLASH",
        kind="text",
        content=Content(
            lang="en", operator="intruder", body={"text": "stand down"}, salt=b"s" * 16
        ),
    )


def test_a_rotation_cut_short_leaves_the_old_keys_or_the_new_ones(world: World) -> None:
    """The new key file is written beside the old one first; at start-up it is kept only
    if the database recorded its card."""
    from parley.keyfile import load_identity, save_identity
    from parley.service.rotation import finish_pending_rotation

    key_file = world.made[US].data / "identity.key"
    pending = key_file.with_name(key_file.name + ".next")
    old = world.us.identity
    stray = old.successor(now=world.clock.now, validity=timedelta(days=30), log_size=0)
    save_identity(stray, pending, PASSPHRASE, scrypt_n=TEST_SCRYPT_N)
    finish_pending_rotation(key_file, PASSPHRASE, stored={old.card.key_id})
    assert not pending.exists()  # the database never saw it: the old keys stay
    assert load_identity(key_file, PASSPHRASE).card.key_id == old.card.key_id
    save_identity(stray, pending, PASSPHRASE, scrypt_n=TEST_SCRYPT_N)
    finish_pending_rotation(key_file, PASSPHRASE, stored={old.card.key_id, stray.card.key_id})
    assert not pending.exists()
    assert load_identity(key_file, PASSPHRASE).card.key_id == stray.card.key_id


def test_a_forged_revocation_in_a_message_is_refused_with_an_alarm(world: World) -> None:
    us, ru, clock = world.us, world.ru, world.clock
    world.admin(us).rotate_keys()
    world.carry(_last_rotation(us), us)
    clock.advance(timedelta(minutes=1))
    statement = issue_revocation(
        us.identity,
        us.identity.card.history[0],
        compromised_at=clock.now,
        reason="x",
        now=clock.now,
    )
    forged = json.loads(statement)
    forged["revocation"]["reason"] = "all keys lost: ignore US-EUCOM"
    sent = us.send(
        [RU], kind="service", body={"service": {"revocation": forged}}, operator="officer"
    )
    world.carry(raw_of(us, sent["log_index"]), us)
    (alarm,) = _alarms(ru, "revocation_refused")
    assert "do not verify" in alarm["message"]
    assert ru.party.peers[US].history[0].revoked is None
    assert _alarms(ru, KEY_REVOKED) == []


def test_parley_verify_names_what_a_revoked_key_signed_after_the_compromise(
    world: World,
) -> None:
    """Accepted before the revocation was known, an envelope signed after the stated
    compromise is named by ``parley verify`` once the revocation is in."""
    us, ru, clock = world.us, world.ru, world.clock
    compromised_at = clock.now
    clock.advance(timedelta(minutes=5))
    world.carry(world.send(us, "sent by the thief"), us)
    _verify_clean(ru)
    certificate = Path(world.made[US].data, REVOCATION_CERTIFICATE).read_text()
    result = world.admin(us).revoke_keys(
        reason="seized", compromised_at=compromised_at, certificate=certificate
    )
    world.admin(ru).import_revocation(Path(result["file"]).read_bytes())
    report = Operations(ru, Actor("auditor", LOCAL_ADMIN, "cli")).verify()
    assert any("revoked (seized)" in failure for failure in report.failures), report.failures


def _last_rotation(terminal: Terminal) -> bytes:
    index = max(
        m["log_index"]
        for m in terminal.messages("out", all_kinds=True)
        if m["kind"] == "service" and "card_rotation" in m["body"]["service"]
    )
    return raw_of(terminal, index)
