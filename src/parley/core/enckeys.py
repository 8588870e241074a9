"""Medium-term encryption keys: forward secrecy for envelopes.

A terminal encrypts with the HPKE key in its card only until it has
announced a medium-term key. Each medium-term key is an HPKE
``MLKEM768_X25519`` key pair of its own, announced to the peers in a
statement signed by the card's two signature keys::

    {"announcement": {"card": hex, "created_at", "hpke_mlkem768_x25519": b64,
                      "key_id": hex, "party", "serial": n,
                      "type": "parley.encryption-key/v1"},
     "signatures": {"ed25519": b64, "mldsa65": b64}}

``key_id`` is the hex SHA-256 of the public key, ``card`` the key id of the
signing card (its fingerprint in hex), ``serial`` counts the owner's keys
from 1. The signed input is ``b"parley encryption-key v1\\n"`` followed by the
canonical bytes of ``announcement``. A peer takes an announcement as the
owner's current key only if its serial is higher than the current one's: an
older announcement replayed cannot bring back a key its owner has since
destroyed (and an attacker may hold).

The private half is destroyed by its owner some time after the next key
replaced it; an envelope encrypted to it then no longer opens anywhere, while
its signature, its receipts and the checkpoints over it still verify.
``Keyring`` holds what one terminal knows: its own key pairs (or the dates they
were destroyed) and the current key of each peer. Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from parley.core.canonical import (
    JSONValue,
    canonical_bytes,
    require_int,
    require_keys,
    require_object,
    require_str,
)
from parley.core.encoding import b64decode, b64encode, check_party_id, format_time, parse_time
from parley.core.identity import HPKE_PUBLIC_LEN, Identity, IdentityCard, hpke_public_key
from parley.errors import InvalidSignature, SchemaViolation, StaleKeyAnnouncement, UsageError

__all__ = [
    "ANNOUNCEMENT_TYPE",
    "DestroyedKey",
    "EncryptionKey",
    "EncryptionKeyPair",
    "Keyring",
    "read_announcement",
]

ANNOUNCEMENT_TYPE = "parley.encryption-key/v1"
_SIGNING_PREFIX = b"parley encryption-key v1\n"
_MATERIAL_LEN = 64 + 32  # ML-KEM-768 seed, X25519 private key


def _public_key(raw: bytes) -> hpke.MLKEM768X25519PublicKey:
    if len(raw) != HPKE_PUBLIC_LEN:
        raise SchemaViolation(
            f"an announced encryption key is {HPKE_PUBLIC_LEN} bytes "
            f"(ML-KEM-768 + X25519), not {len(raw)}"
        )
    try:
        return hpke_public_key(raw)
    except ValueError as exc:
        raise SchemaViolation(f"the announced encryption key is not a valid key: {exc}") from None


@dataclass(frozen=True, slots=True)
class EncryptionKey:
    """The public side of one medium-term key, from an announcement that verified."""

    party: str
    serial: int
    key_id: str
    created_at: datetime
    #: The key id of the card that signed the announcement.
    card: str
    public: bytes = field(repr=False)
    #: The signed announcement, as a JSON object (canonical when serialised).
    announcement: Mapping[str, JSONValue] = field(repr=False, compare=False)
    _hpke: hpke.MLKEM768X25519PublicKey = field(repr=False, compare=False)

    @property
    def hpke_key(self) -> hpke.MLKEM768X25519PublicKey:
        return self._hpke

    @property
    def announcement_bytes(self) -> bytes:
        return canonical_bytes(dict(self.announcement))


@dataclass(frozen=True, slots=True)
class DestroyedKey:
    """A key of this terminal whose private half was destroyed."""

    key_id: str
    destroyed_at: datetime


@dataclass(frozen=True, slots=True)
class EncryptionKeyPair:
    """One of this terminal's medium-term keys, with its private half."""

    key: EncryptionKey
    private: hpke.MLKEM768X25519PrivateKey = field(repr=False)
    material: bytes = field(repr=False)

    @property
    def key_id(self) -> str:
        return self.key.key_id

    @classmethod
    def generate(cls, identity: Identity, *, serial: int, now: datetime) -> EncryptionKeyPair:
        """A fresh key pair, announced (signed) by ``identity``'s card."""
        material = (
            mlkem.MLKEM768PrivateKey.generate().private_bytes_raw()
            + x25519.X25519PrivateKey.generate().private_bytes_raw()
        )
        return cls.from_material(identity, material, serial=serial, now=now)

    @classmethod
    def from_material(
        cls, identity: Identity, material: bytes, *, serial: int, now: datetime
    ) -> EncryptionKeyPair:
        if serial < 1:
            raise UsageError("encryption key serials count from 1")
        private, public = _private_key(material)
        body: dict[str, JSONValue] = {
            "card": identity.card.key_id,
            "created_at": format_time(now),
            "hpke_mlkem768_x25519": b64encode(public),
            "key_id": hashlib.sha256(public).hexdigest(),
            "party": identity.party,
            "serial": serial,
            "type": ANNOUNCEMENT_TYPE,
        }
        message = _SIGNING_PREFIX + canonical_bytes(body)
        signed: dict[str, JSONValue] = {
            "announcement": body,
            "signatures": {
                "ed25519": b64encode(identity.sign_ed25519(message)),
                "mldsa65": b64encode(identity.sign_mldsa65(message)),
            },
        }
        return cls(read_announcement(signed, identity.card), private, material)

    @classmethod
    def restore(cls, key: EncryptionKey, material: bytes) -> EncryptionKeyPair:
        """Rebuild a stored pair; the private half must be the one ``key`` names."""
        private, public = _private_key(material)
        if public != key.public:
            raise UsageError(f"the stored private key does not match encryption key {key.key_id}")
        return cls(key, private, material)


def _private_key(material: bytes) -> tuple[hpke.MLKEM768X25519PrivateKey, bytes]:
    if len(material) != _MATERIAL_LEN:
        raise UsageError(f"encryption key material is {_MATERIAL_LEN} bytes, not {len(material)}")
    try:
        kem = mlkem.MLKEM768PrivateKey.from_seed_bytes(material[:64])
        xkey = x25519.X25519PrivateKey.from_private_bytes(material[64:])
    except ValueError as exc:
        raise UsageError(f"the encryption key material is invalid: {exc}") from None
    public = kem.public_key().public_bytes_raw() + xkey.public_key().public_bytes_raw()
    return hpke.MLKEM768X25519PrivateKey(kem, xkey), public


def read_announcement(value: JSONValue, card: IdentityCard) -> EncryptionKey:
    """Verify a signed announcement against ``card``; raise a ``RemoteError`` if it fails."""
    outer = require_object(value, "encryption key announcement")
    require_keys(outer, "encryption key announcement", {"announcement", "signatures"})
    body = require_object(outer["announcement"], "encryption key announcement")
    sigs = require_object(outer["signatures"], "announcement signatures")
    require_keys(sigs, "announcement signatures", {"ed25519", "mldsa65"})
    require_keys(
        body,
        "encryption key announcement",
        {"card", "created_at", "hpke_mlkem768_x25519", "key_id", "party", "serial", "type"},
    )
    if body["type"] != ANNOUNCEMENT_TYPE:
        raise SchemaViolation(f"an encryption key announcement has type {ANNOUNCEMENT_TYPE}")
    party = check_party_id(body["party"], "announcement party")
    if party != card.party:
        raise InvalidSignature(
            f"an encryption key announcement for {party} cannot be signed by {card.party}'s card"
        )
    message = _SIGNING_PREFIX + canonical_bytes(body)
    ed = b64decode(sigs["ed25519"], "announcement ed25519 signature")
    ml = b64decode(sigs["mldsa65"], "announcement mldsa65 signature")
    # The signing card may be an earlier card of the party's chain (identity rotation).
    signer = card.for_key(body["card"]) if isinstance(body["card"], str) else None
    if signer is None or not (
        signer.verify_ed25519(ed, message) and signer.verify_mldsa65(ml, message)
    ):
        raise InvalidSignature(
            f"the encryption key announcement of {party} is not signed by its pinned card"
        )
    created_at = parse_time(body["created_at"], "announcement created_at")
    signer.check_signed_at(created_at, f"the encryption key announcement of {party}")
    public = b64decode(body["hpke_mlkem768_x25519"], "announced encryption key")
    key_id = require_str(body, "key_id", "announcement", max_len=64)
    if key_id != hashlib.sha256(public).hexdigest():
        raise SchemaViolation("an announcement's key_id is the SHA-256 of its key")
    return EncryptionKey(
        party=party,
        serial=require_int(body, "serial", "announcement", minimum=1),
        key_id=key_id,
        created_at=created_at,
        card=signer.key_id,
        public=public,
        announcement=dict(outer),
        _hpke=_public_key(public),
    )


class Keyring:
    """One terminal's medium-term keys and its peers' current ones."""

    def __init__(self) -> None:
        self._own: dict[str, EncryptionKeyPair | DestroyedKey] = {}
        self._current: EncryptionKeyPair | None = None
        self._peers: dict[str, EncryptionKey] = {}

    # This terminal's keys -------------------------------------------------------

    @property
    def current(self) -> EncryptionKeyPair | None:
        """The key peers should encrypt to now (None: the card's key)."""
        return self._current

    def add_own(self, pair: EncryptionKeyPair, *, current: bool) -> None:
        self._own[pair.key_id] = pair
        if current:
            self._current = pair

    def destroyed(self, key_id: str, at: datetime) -> None:
        """Forget the private half of ``key_id``; it was destroyed at ``at``."""
        self._own[key_id] = DestroyedKey(key_id, at)
        if self._current is not None and self._current.key_id == key_id:
            self._current = None

    def private(self, key_id: str) -> hpke.MLKEM768X25519PrivateKey | DestroyedKey | None:
        """The private key ``key_id`` names, the date it was destroyed, or None (unknown)."""
        held = self._own.get(key_id)
        return held.private if isinstance(held, EncryptionKeyPair) else held

    # Peers' keys ----------------------------------------------------------------

    def peer_key(self, party: str) -> EncryptionKey | None:
        return self._peers.get(party)

    def check_announcement(self, key: EncryptionKey) -> bool:
        """Whether ``key`` is news (True), the current key again (False); else raise.

        An announcement with a lower serial than the current key's, or the
        same serial for another key, is refused (``StaleKeyAnnouncement``).
        """
        held = self._peers.get(key.party)
        if held is None or key.serial > held.serial:
            return True
        if key.key_id == held.key_id:
            return False
        raise StaleKeyAnnouncement(
            f"{key.party} announced encryption key {key.key_id[:16]}… with serial {key.serial}, "
            f"but its current key {held.key_id[:16]}… has serial {held.serial}: an older key "
            "is never taken back"
        )

    def adopt(self, key: EncryptionKey) -> None:
        """Take ``key`` as its owner's current key (after ``check_announcement``)."""
        self._peers[key.party] = key

    def forget_peers(self, parties: Iterable[str]) -> None:
        for party in parties:
            self._peers.pop(party, None)

    def recipient_keys(self, parties: Iterable[str]) -> dict[str, EncryptionKey]:
        """The medium-term key to encrypt to for each party that has one (self included)."""
        keys: dict[str, EncryptionKey] = {}
        for party in parties:
            held = self._peers.get(party)
            if held is not None:
                keys[party] = held
        return keys
