"""Medium-term encryption keys in the pure core: announcements, envelopes, destruction.

Two ``Party`` objects in memory (``PartyPair``); each attack on the keys is
one test: an announcement not signed by the card, an older key replayed as
current, a ciphertext for a key that was destroyed.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from parley.core.canonical import JSONValue, canonical_bytes
from parley.core.enckeys import EncryptionKeyPair, Keyring, read_announcement
from parley.core.envelope import decrypt_envelope, read_envelope
from parley.core.identity import Identity
from parley.core.party import KeyAnnounced, MessageReceived, Party
from parley.errors import (
    DecryptionFailed,
    InvalidSignature,
    KeyDestroyed,
    SchemaViolation,
    StaleKeyAnnouncement,
    SupersededKey,
)
from parley.testing import ManualClock, PartyPair


def _announce(pair: PartyPair, owner: Party, key: EncryptionKeyPair) -> tuple[Any, ...]:
    """``owner`` takes ``key`` as its current key and announces it to the other party."""
    owner.keyring.add_own(key, current=True)
    out = owner.send(
        [pair.peer_of(owner).party],
        kind="key",
        body={"key": dict(key.key.announcement)},
        operator="keys",
    )
    events, _ = pair.deliver(out, owner)
    return events


@pytest.fixture
def pair() -> PartyPair:
    return PartyPair.create(ManualClock())


def test_an_announced_key_is_used_by_the_sender_and_named_in_the_envelope(
    pair: PartyPair,
) -> None:
    us, ru = pair.a, pair.b
    before = us.send_text([ru.party], "card key", operator="o")
    assert b"encrypted_to" not in before.raw  # nothing announced: the card's key, old format
    key = EncryptionKeyPair.generate(ru.identity, serial=1, now=pair.a.clock())
    events = _announce(pair, ru, key)
    assert [e.key.key_id for e in events if isinstance(e, KeyAnnounced)] == [key.key_id]
    assert us.keyring.peer_key(ru.party) == key.key

    out = us.send_text([ru.party], "to the medium-term key", operator="o")
    header = read_envelope(out.raw, us.card_of)
    assert header.encrypted_to == {ru.party: key.key_id}  # us has no key of its own yet
    events, _ = pair.deliver(out, us)
    [received] = [e for e in events if isinstance(e, MessageReceived)]
    assert received.envelope.content.body == {"text": "to the medium-term key"}
    # The card's key does not open it: only the medium-term key does.
    with pytest.raises(DecryptionFailed, match="never held"):
        decrypt_envelope(header, ru.identity)
    # An envelope from before the announcement still opens with the card's key.
    assert decrypt_envelope(read_envelope(before.raw, ru.card_of), ru.identity, ru.keyring.private)


def test_the_senders_own_copy_goes_to_its_own_current_key(pair: PartyPair) -> None:
    us, ru = pair.a, pair.b
    own = EncryptionKeyPair.generate(us.identity, serial=1, now=us.clock())
    us.keyring.add_own(own, current=True)
    out = us.send_text([ru.party], "x", operator="o")
    header = read_envelope(out.raw, us.card_of)
    assert header.encrypted_to == {us.party: own.key_id}
    assert decrypt_envelope(header, us.identity, us.keyring.private).content.body == {"text": "x"}


def test_a_destroyed_key_opens_nothing_and_says_which_key_and_when(pair: PartyPair) -> None:
    us, ru = pair.a, pair.b
    key = EncryptionKeyPair.generate(ru.identity, serial=1, now=us.clock())
    _announce(pair, ru, key)
    out = us.send_text([ru.party], "secret", operator="o")
    header = read_envelope(out.raw, ru.card_of)
    when = us.clock() + timedelta(days=21)
    ru.keyring.destroyed(key.key_id, when)
    with pytest.raises(KeyDestroyed) as caught:
        decrypt_envelope(header, ru.identity, ru.keyring.private)
    assert key.key_id[:16] in str(caught.value)
    assert "destroyed on 2026-02-26T12:00:00.000Z" in str(caught.value)
    # A sender that still uses the destroyed key is refused: nothing is logged.
    size = ru.transcript.size
    with pytest.raises(KeyDestroyed):
        ru.receive_envelope(out.raw)
    assert ru.transcript.size == size
    assert ru.keyring.current is None  # the destroyed key is no longer current


def test_an_announcement_not_signed_by_the_card_is_refused(pair: PartyPair) -> None:
    us, ru = pair.a, pair.b
    impostor = Identity.generate(ru.party, "impostor", now=us.clock() - timedelta(days=1))
    forged = EncryptionKeyPair.generate(impostor, serial=1, now=us.clock())
    with pytest.raises(InvalidSignature, match="not signed by its pinned card"):
        read_announcement(dict(forged.key.announcement), ru.identity.card)
    # Sent inside a genuine envelope of RU-GS, it is refused and nothing is logged.
    out = ru.send(
        [us.party],
        kind="key",
        body={"key": dict(forged.key.announcement)},
        operator="o",
    )
    size = us.transcript.size
    with pytest.raises(InvalidSignature):
        us.receive_envelope(out.raw)
    assert us.transcript.size == size
    assert us.keyring.peer_key(ru.party) is None
    # A key of UA-GS announced by RU-GS's envelope is not RU-GS's key either.
    other = Identity.generate("UA-GS", "x", now=us.clock() - timedelta(days=1))
    third = EncryptionKeyPair.generate(other, serial=1, now=us.clock())
    with pytest.raises(InvalidSignature, match="cannot be signed by RU-GS"):
        read_announcement(dict(third.key.announcement), ru.identity.card)


def test_a_changed_announcement_does_not_verify(pair: PartyPair) -> None:
    ru = pair.b
    key = EncryptionKeyPair.generate(ru.identity, serial=1, now=ru.clock())
    changed = json.loads(key.key.announcement_bytes)
    changed["announcement"]["serial"] = 9
    with pytest.raises(InvalidSignature):
        read_announcement(changed, ru.identity.card)
    swapped = json.loads(key.key.announcement_bytes)
    swapped["announcement"]["key_id"] = "0" * 64
    with pytest.raises((InvalidSignature, SchemaViolation)):
        read_announcement(swapped, ru.identity.card)


def test_an_older_key_replayed_as_current_is_refused(pair: PartyPair) -> None:
    us, ru = pair.a, pair.b
    first = EncryptionKeyPair.generate(ru.identity, serial=1, now=us.clock())
    second = EncryptionKeyPair.generate(ru.identity, serial=2, now=us.clock())
    _announce(pair, ru, first)
    _announce(pair, ru, second)
    assert us.keyring.peer_key(ru.party) == second.key
    # The old announcement again, in a new envelope (a sender tricked, or its old key stolen):
    body: dict[str, JSONValue] = {"key": dict(first.key.announcement)}
    out = ru.send([us.party], kind="key", body=body, operator="o")
    size = us.transcript.size
    with pytest.raises(StaleKeyAnnouncement, match="never taken back"):
        us.receive_envelope(out.raw)
    assert us.transcript.size == size
    assert us.keyring.peer_key(ru.party) == second.key
    # The current key announced again is no news, and accepted.
    again = ru.send(
        [us.party],
        kind="key",
        body={"key": dict(second.key.announcement)},
        operator="o",
    )
    events, _ = pair.deliver(again, ru)
    assert not [e for e in events if isinstance(e, KeyAnnounced)]


def test_the_keyring_refuses_the_same_serial_for_another_key() -> None:
    clock = ManualClock()
    owner = Identity.generate("RU-GS", "x", now=clock.now)
    ring = Keyring()
    a = EncryptionKeyPair.generate(owner, serial=3, now=clock.now).key
    b = EncryptionKeyPair.generate(owner, serial=3, now=clock.now).key
    assert ring.check_announcement(a)
    ring.adopt(a)
    with pytest.raises(StaleKeyAnnouncement):
        ring.check_announcement(b)


def test_a_stored_pair_is_restored_only_with_its_own_private_half() -> None:
    clock = ManualClock()
    owner = Identity.generate("RU-GS", "x", now=clock.now)
    a = EncryptionKeyPair.generate(owner, serial=1, now=clock.now)
    b = EncryptionKeyPair.generate(owner, serial=2, now=clock.now)
    assert EncryptionKeyPair.restore(a.key, a.material).key_id == a.key_id
    with pytest.raises(Exception, match="does not match"):
        EncryptionKeyPair.restore(a.key, b.material)


def test_encrypted_to_must_name_readers_with_key_ids(pair: PartyPair) -> None:
    us, ru = pair.a, pair.b
    key = EncryptionKeyPair.generate(ru.identity, serial=1, now=us.clock())
    _announce(pair, ru, key)
    out = us.send_text([ru.party], "x", operator="o")
    payload = json.loads(read_envelope(out.raw, us.card_of).raw)
    assert set(payload) == {"payload", "payloadType", "signatures"}
    assert canonical_bytes(payload) == out.raw


def test_keys_survive_an_identity_rotation_and_an_old_card_cannot_announce_after_it(
    pair: PartyPair,
) -> None:
    us, ru = pair.a, pair.b
    clock = us.clock
    assert isinstance(clock, ManualClock)
    first = EncryptionKeyPair.generate(ru.identity, serial=1, now=clock.now)
    _announce(pair, ru, first)
    old = ru.identity
    clock.advance(timedelta(hours=1))
    new = old.successor(now=clock.now, validity=timedelta(days=365), log_size=ru.transcript.size)
    announcement: dict[str, JSONValue] = {
        "card": json.loads(new.card.signed_bytes),
        "tls_certificate": "PEM",
    }
    for out in ru.rotate(new, announcement):
        pair.deliver(out, ru)
    assert us.card_of(ru.party) is not None
    # The medium-term key announced under the old card is still RU-GS's current key:
    # what US-EUCOM sends still opens at RU-GS (the key is not the card's).
    out = us.send_text([ru.party], "after the card rotation", operator="o")
    assert read_envelope(out.raw, us.card_of).encrypted_to == {ru.party: first.key_id}
    events, _ = pair.deliver(out, us)
    assert [e.envelope.content.body for e in events if isinstance(e, MessageReceived)] == [
        {"text": "after the card rotation"}
    ]
    # The old card's keys, stolen, cannot announce a key after the rotation.
    clock.advance(timedelta(minutes=1))
    forged = EncryptionKeyPair.generate(old, serial=5, now=clock.now)
    with pytest.raises(SupersededKey, match="never signs again"):
        read_announcement(dict(forged.key.announcement), us.card_of(ru.party))  # type: ignore[arg-type]
    # The new card announces the next key, and it is taken.
    second = EncryptionKeyPair.generate(ru.identity, serial=2, now=clock.now)
    events = _announce(pair, ru, second)
    assert [e.key.key_id for e in events if isinstance(e, KeyAnnounced)] == [second.key_id]
    assert second.key.card == new.card.key_id
