"""Rotation and revocation of identity cards in the pure core (``parley.core.keychain``).

Two parties in memory (``PartyPair``) on a ``ManualClock``: US-EUCOM rotates
its keys while messages are in flight, and RU-GS, thinking like the other
side's technical staff, is fed rotation cards that do not chain, replays,
cards going backwards, forged revocations and a stolen old key.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from datetime import timedelta

import pytest

from parley.core.canonical import canonical_bytes
from parley.core.checkpoint import (
    cosign_checkpoint,
    sign_checkpoint,
    verify_checkpoint,
    verify_cosignature,
)
from parley.core.envelope import Content, envelope_digest, read_envelope, seal_envelope
from parley.core.identity import Identity, IdentityCard
from parley.core.keychain import (
    RevocationKeys,
    attach_history,
    check_successor,
    issue_revocation,
    read_revocation,
)
from parley.core.party import (
    CARD_ROTATION,
    CardRotated,
    MessageReceived,
    Outgoing,
    Party,
    bilateral_channel,
)
from parley.core.receipts import issue_receipt
from parley.errors import (
    InvalidRevocation,
    InvalidRotation,
    InvalidSignature,
    SupersededKey,
    UsageError,
)
from parley.testing import ManualClock, PartyPair

US, RU = "US-EUCOM", "RU-GS"
YEAR = timedelta(days=365)


def _announce(identity: Identity) -> dict[str, object]:
    return {"card": json.loads(identity.card.signed_bytes), "tls_certificate": "PEM"}


def _rotate(party: Party, clock: ManualClock) -> tuple[Identity, list[bytes]]:
    """Rotate ``party``'s keys; return the old identity and the rotation messages."""
    old = party.identity
    new = old.successor(now=clock.now, validity=YEAR, log_size=party.transcript.size)
    outs = party.rotate(new, _announce(new))
    return old, [out.raw for out in outs]


def _forged_envelope(signer: Identity, to: IdentityCard, clock: ManualClock, seq: int) -> bytes:
    return seal_envelope(
        signer,
        [to],
        envelope_id="01900000-0000-7000-8000-" + f"{seq:012d}",
        channel=bilateral_channel(signer.party, to.party),
        seq=seq,
        created_at=clock.now,
        precedence="ROUTINE",
        kind="text",
        content=Content(
            lang="en", operator="intruder", body={"text": "stand down"}, salt=b"s" * 16
        ),
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def pair(clock: ManualClock) -> PartyPair:
    return PartyPair.create(clock)


def _text(party: Party, text: str) -> Outgoing:
    return party.send(
        [RU if party.party == US else US], kind="text", body={"text": text}, operator="o"
    )


def test_messages_before_during_and_after_a_rotation_are_all_delivered_and_verifiable(
    pair: PartyPair, clock: ManualClock
) -> None:
    us, ru = pair.a, pair.b
    before = us.send([RU], kind="text", body={"text": "before"}, operator="o")
    pair.deliver(before, us)
    in_flight = us.send([RU], kind="text", body={"text": "in flight"}, operator="o")
    clock.advance(timedelta(minutes=1))
    old, (rotation,) = _rotate(us, clock)
    assert us.identity.card.version == 2
    assert us.identity.card.history[0].key_id == old.card.key_id
    clock.advance(timedelta(minutes=1))
    after = us.send([RU], kind="text", body={"text": "after"}, operator="o")

    # The message signed by the new key arrives first: RU-GS does not know the key yet;
    # the sender's delivery tries again later.
    with pytest.raises(InvalidSignature, match="not the pinned key"):
        ru.receive_envelope(after.raw)
    result = ru.receive_envelope(rotation)
    rotated = [e for e in result.events if isinstance(e, CardRotated)]
    assert rotated
    assert rotated[0].card.version == 2
    assert rotated[0].card.fingerprint == us.identity.card.fingerprint
    assert ru.peers[US].version == 2
    assert ru.peers[US].history[0].key_id == old.card.key_id
    us.receive_receipt(result.receipt)
    # The old key's message written before the change is still good after it.
    pair.deliver(in_flight, us)
    events, _ = pair.deliver(after, us)
    assert isinstance(events[0], MessageReceived)
    texts = [
        e.envelope.content.body.get("text")
        for e in pair.events[RU]
        if isinstance(e, MessageReceived) and e.envelope.header.kind == "text"
    ]
    assert texts == ["before", "in flight", "after"]

    # RU-GS answers; US-EUCOM's receipts and checkpoints come from both keys.
    pair.deliver(ru.send([US], kind="text", body={"text": "ack"}, operator="r"), ru)
    # Each witnesses the other across the change: checkpoints of both keys, cosigned.
    assert pair.witness_both() == (us.transcript.size, ru.transcript.size)
    # Every envelope in RU-GS's log verifies against the chain RU-GS holds.
    for raw in [before.raw, in_flight.raw, rotation, after.raw]:
        assert read_envelope(raw, ru.card_of).sender == US


def test_a_rotated_party_is_witnessed_and_its_old_checkpoints_still_verify(
    pair: PartyPair, clock: ManualClock
) -> None:
    us, ru = pair.a, pair.b
    pair.deliver(_text(us, "one"), us)
    pair.witness(us)
    old_checkpoint = us.checkpoint()
    _, (rotation,) = _rotate(us, clock)
    pair.deliver(us.sent(json.loads(_payload(rotation))["id"]), us)
    pair.deliver(_text(us, "two"), us)
    assert pair.witness(us) == us.transcript.size
    assert verify_checkpoint(old_checkpoint.note, ru.peers[US]).size == old_checkpoint.size
    # And US-EUCOM, after rotating, still cosigns RU-GS's log (its new witness key).
    pair.deliver(_text(ru, "three"), ru)
    assert pair.witness(ru) == ru.transcript.size


def _payload(raw: bytes) -> bytes:
    return base64.b64decode(json.loads(raw)["payload"])


def test_a_stolen_old_key_signs_nothing_after_the_rotation(
    pair: PartyPair, clock: ManualClock
) -> None:
    us, ru = pair.a, pair.b
    old, (rotation,) = _rotate(us, clock)
    ru.receive_envelope(rotation)
    clock.advance(timedelta(hours=1))
    # An envelope: refused, dated after the old key stopped.
    with pytest.raises(SupersededKey, match="rotated out"):
        ru.receive_envelope(_forged_envelope(old, ru.identity.card, clock, 99))
    # A checkpoint beyond the size at which the old key stopped.
    forged = sign_checkpoint(old, us.transcript.size + 5, b"\0" * 32)
    with pytest.raises(SupersededKey, match="stopped at size"):
        verify_checkpoint(forged.note, ru.peers[US])
    # A cosignature dated after the change.
    checkpoint = ru.checkpoint()
    note = checkpoint.note + cosign_checkpoint(old, checkpoint, clock.now)
    with pytest.raises(SupersededKey):
        verify_cosignature(checkpoint, note, ru.peers[US])
    # A receipt dated after the change.
    sent = ru.send([US], kind="text", body={"text": "x"}, operator="r")
    receipt = issue_receipt(
        old,
        sender=RU,
        channel=sent.channel,
        envelope_id=sent.envelope_id,
        envelope_digest=envelope_digest(sent.raw),
        through_seq=sent.seq,
        missing=(),
        log_index=0,
        inclusion=(),
        checkpoint=sign_checkpoint(old, 1, b"\0" * 32),
        now=clock.now,
    )
    with pytest.raises(SupersededKey):
        ru.receive_receipt(receipt)
    # The old key cannot make another successor either: the chain moved on.
    rival = old.successor(now=clock.now, validity=YEAR, log_size=0)
    with pytest.raises(InvalidRotation, match="not newer"):
        check_successor(ru.peers[US], rival.card)


def test_rotation_cards_that_do_not_chain_are_refused(pair: PartyPair, clock: ManualClock) -> None:
    us, ru = pair.a, pair.b
    pinned = ru.peers[US]
    # A stranger's keys vouching for a card in US-EUCOM's name.
    stranger = Identity.generate(US, "impostor", now=clock.now)
    forged = stranger.successor(now=clock.now, validity=YEAR, log_size=0)
    with pytest.raises(InvalidRotation, match="does not chain"):
        check_successor(pinned, forged.card)
    # A card that is not a rotation card at all (a fresh identity).
    with pytest.raises(InvalidRotation, match="not a rotation card"):
        check_successor(pinned, dataclasses.replace(stranger.card, version=2))
    # A card for another party.
    ru_next = ru.identity.successor(now=clock.now, validity=YEAR, log_size=0)
    with pytest.raises(InvalidRotation, match="cannot replace"):
        check_successor(pinned, ru_next.card)
    # A version that skips one.
    v2 = us.identity.successor(now=clock.now, validity=YEAR, log_size=0)
    v3 = v2.successor(now=clock.now, validity=YEAR, log_size=0)
    with pytest.raises(InvalidRotation, match="does not chain"):
        check_successor(pinned, v3.card)
    # The old keys' signature replaced by one over other bytes.
    other = us.identity.successor(now=clock.now, validity=YEAR, log_size=1)
    assert v2.card.previous_signatures
    assert other.card.previous_signatures
    swapped = dataclasses.replace(v2.card, previous_signatures=other.card.previous_signatures)
    with pytest.raises(InvalidRotation, match="does not verify"):
        check_successor(pinned, swapped)
    # Sent in a message by the real sender: refused whole (nothing logged).
    size = ru.transcript.size
    out = us.send(
        [RU],
        kind="service",
        body={"service": {CARD_ROTATION: _announce(forged)}},
        operator="o",
    )
    with pytest.raises(InvalidRotation):
        ru.receive_envelope(out.raw)
    assert ru.transcript.size == size
    assert ru.peers[US].version == 1


def test_a_replayed_rotation_and_a_card_going_backwards_change_nothing(
    pair: PartyPair, clock: ManualClock
) -> None:
    us, ru = pair.a, pair.b
    _, (first,) = _rotate(us, clock)
    ru.receive_envelope(first)
    v2 = ru.peers[US]
    clock.advance(timedelta(days=1))
    _, (second,) = _rotate(us, clock)
    ru.receive_envelope(second)
    assert ru.peers[US].version == 3
    # The same message again is a duplicate; the v2 card announced again in a new
    # message is already in the chain: nothing changes.
    ru.receive_envelope(first)
    out = us.send(
        [RU],
        kind="service",
        body={
            "service": {
                CARD_ROTATION: {"card": json.loads(v2.signed_bytes), "tls_certificate": "PEM"}
            }
        },
        operator="o",
    )
    events = ru.receive_envelope(out.raw).events
    assert not any(isinstance(e, CardRotated) for e in events)
    assert ru.peers[US].version == 3
    # A card going backwards (version 2 offered as the successor of version 3): refused.
    assert [c.version for c in ru.peers[US].chain] == [3, 2, 1]
    with pytest.raises(InvalidRotation, match="not newer"):
        check_successor(ru.peers[US], v2)


def test_a_stored_chain_is_rebuilt_and_checked(pair: PartyPair, clock: ManualClock) -> None:
    us = pair.a
    v1 = us.identity.card
    _rotate(us, clock)
    clock.advance(timedelta(days=1))
    _rotate(us, clock)
    cards = [dataclasses.replace(c, history=()) for c in reversed(us.identity.card.chain)]
    rebuilt = attach_history([IdentityCard.from_bytes(c.signed_bytes) for c in cards])
    assert [c.version for c in rebuilt.chain] == [3, 2, 1]
    assert rebuilt.history[-1].key_id == v1.key_id
    assert rebuilt.history[0].signs_until == rebuilt.valid_from
    with pytest.raises(InvalidRotation):
        attach_history([IdentityCard.from_bytes(cards[0].signed_bytes), cards[2]])


# Revocation ------------------------------------------------------------------------------


@pytest.fixture
def guarded(clock: ManualClock) -> tuple[PartyPair, RevocationKeys]:
    """A pair whose US-EUCOM card names offline revocation keys."""
    offline = RevocationKeys.generate()
    us = Party(
        Identity.generate(
            US,
            "US European Command",
            now=clock.now - timedelta(days=1),
            revocation=offline.commitment,
        ),
        clock=clock,
    )
    ru = Party(
        Identity.generate(RU, "General Staff", now=clock.now - timedelta(days=1)), clock=clock
    )
    us.add_peer(ru.identity.card, ru.identity.card.fingerprint)
    ru.add_peer(us.identity.card, us.identity.card.fingerprint)
    return PartyPair(us, ru), offline


def test_the_offline_certificate_revokes_the_current_card(
    guarded: tuple[PartyPair, RevocationKeys], clock: ManualClock
) -> None:
    pair, offline = guarded
    us, ru = pair.a, pair.b
    stolen = us.identity
    early = _forged_envelope(stolen, ru.identity.card, clock, 1)  # before the compromise
    compromised_at = clock.now + timedelta(minutes=10)
    clock.advance(timedelta(hours=1))
    party, keys = RevocationKeys.from_text(offline.to_text(US))
    assert party == US
    assert keys.commitment == us.identity.card.revocation
    revocation = issue_revocation(
        keys,
        us.identity.card,
        compromised_at=compromised_at,
        reason="terminal seized",
        now=clock.now,
    )
    found, chain = ru.accept_revocation(revocation)
    assert found.compromised_at == compromised_at
    assert chain.revoked == "terminal seized"
    # Signed before the stated time: still good. After it: refused.
    ru.receive_envelope(early)
    with pytest.raises(SupersededKey, match="revoked"):
        ru.receive_envelope(_forged_envelope(stolen, ru.identity.card, clock, 2))
    # The thief cannot rotate its way out: the next card is pinned by fingerprint.
    thief_card = stolen.successor(now=clock.now, validity=YEAR, log_size=0).card
    with pytest.raises(InvalidRotation, match="revoked"):
        check_successor(ru.peers[US], thief_card)
    # The same revocation twice changes nothing.
    assert ru.accept_revocation(revocation)[1].signs_until == compromised_at


def test_a_later_card_revokes_an_earlier_one_and_not_the_reverse(
    pair: PartyPair, clock: ManualClock
) -> None:
    us, ru = pair.a, pair.b
    old, (rotation,) = _rotate(us, clock)
    ru.receive_envelope(rotation)
    clock.advance(timedelta(hours=1))
    # A stolen old key tries to revoke the card that replaced it.
    with pytest.raises(UsageError):
        issue_revocation(old, us.identity.card, compromised_at=clock.now, reason="x", now=clock.now)
    statement = issue_revocation(
        us.identity, old.card, compromised_at=clock.now, reason="x", now=clock.now
    )
    forged = json.loads(statement)
    forged["revocation"]["key_id"] = us.identity.card.key_id
    forged["revocation"]["version"] = 2
    forged["revocation"]["signer"] = old.card.key_id
    with pytest.raises(InvalidRevocation, match="cannot revoke"):
        read_revocation(canonical_bytes(forged), ru.peers[US])
    # The new card revokes the old one (found in the old laptop's backup, say):
    # the old key's signatures before the compromise still verify.
    compromised_at = old.card.valid_from + timedelta(minutes=1)
    good = issue_revocation(
        us.identity, old.card, compromised_at=compromised_at, reason="backup lost", now=clock.now
    )
    _, chain = ru.accept_revocation(good)
    assert chain.history[0].signs_until == compromised_at
    assert chain.revoked is None  # the current card is untouched


def test_forged_revocations_are_refused(
    guarded: tuple[PartyPair, RevocationKeys], clock: ManualClock
) -> None:
    pair, offline = guarded
    us, ru = pair.a, pair.b
    real = issue_revocation(
        offline, us.identity.card, compromised_at=clock.now, reason="seized", now=clock.now
    )
    # Offline keys the card does not name.
    other = issue_revocation(
        RevocationKeys.generate(),
        us.identity.card,
        compromised_at=clock.now,
        reason="x",
        now=clock.now,
    )
    with pytest.raises(InvalidRevocation, match="does not name"):
        ru.accept_revocation(other)
    # The statement changed after signing (an earlier compromise time).
    tampered = json.loads(real)
    tampered["revocation"]["compromised_at"] = "2020-01-01T00:00:00.000Z"
    with pytest.raises(InvalidRevocation, match="do not verify"):
        ru.accept_revocation(canonical_bytes(tampered))
    # A revocation of a card that is not in the chain.
    stranger = Identity.generate(US, "x", now=clock.now)
    with pytest.raises(InvalidRevocation, match="not in"):
        ru.accept_revocation(
            issue_revocation(
                offline, stranger.card, compromised_at=clock.now, reason="x", now=clock.now
            )
        )
    # A card without offline keys cannot be revoked by any offline keys.
    with pytest.raises(InvalidRevocation, match="does not name"):
        us.accept_revocation(
            issue_revocation(
                offline, ru.identity.card, compromised_at=clock.now, reason="x", now=clock.now
            )
        )
    assert ru.peers[US].revoked is None


def test_the_rotation_message_is_dated_when_the_new_card_begins(
    pair: PartyPair, clock: ManualClock
) -> None:
    """Regression: writing the new key file takes time; the announcement signed after
    that by the old keys must not be dated after they stopped (it would not verify)."""
    us, ru = pair.a, pair.b
    new = us.identity.successor(now=clock.now, validity=YEAR, log_size=us.transcript.size)
    clock.advance(timedelta(milliseconds=40))
    (out,) = us.rotate(new, _announce(new))
    ru.receive_envelope(out.raw)
    header = read_envelope(out.raw, ru.card_of)  # checked against the chain as it is now
    assert header.created_at == new.card.valid_from
