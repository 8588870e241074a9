"""Terminal identities and their public identity cards.

An ``Identity`` is the private side of one terminal: an Ed25519 key for
message signatures, an ML-DSA-65 key for checkpoint signatures (so the
record survives a future break of Ed25519) and an HPKE ``MLKEM768_X25519``
key for encryption. Its ``IdentityCard`` is the public side, self-signed with
both signature keys. The fingerprint is SHA-256 of the canonical card,
written as 12 groups of 5 digits so two duty officers can read it to each
other over a telephone before either trusts the other's card.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, mlkem, x25519

from parley.core.canonical import (
    canonical_bytes,
    parse_canonical,
    require_int,
    require_keys,
    require_object,
    require_str,
)
from parley.core.encoding import b64decode, b64encode, check_party_id, format_time, parse_time
from parley.errors import (
    FingerprintMismatch,
    InvalidCard,
    SchemaViolation,
    UnacceptableCard,
    UsageError,
)

__all__ = [
    "CARD_TYPE",
    "HPKE_SUITE",
    "Identity",
    "IdentityCard",
    "check_card_window",
    "describe_span",
    "format_fingerprint",
    "normalize_fingerprint",
]

CARD_TYPE = "parley.card/v1"
MAX_CARD_SIZE = 64 * 1024
_MLKEM768_PUBLIC_LEN = 1184
_X25519_PUBLIC_LEN = 32

HPKE_SUITE = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
"""RFC 9180 base mode: ML-KEM-768 + X25519 hybrid KEM, HKDF-SHA256, ChaCha20-Poly1305."""


def format_fingerprint(digest: bytes) -> str:
    """Render a SHA-256 digest as 12 groups of 5 decimal digits (~199 bits)."""
    number = int.from_bytes(digest, "big") % 10**60
    digits = f"{number:060d}"
    return " ".join(digits[i : i + 5] for i in range(0, 60, 5))


def normalize_fingerprint(text: str) -> str:
    """Accept a fingerprint with or without spaces; return the grouped form."""
    digits = "".join(text.split())
    if len(digits) != 60 or not (digits.isascii() and digits.isdigit()):
        raise FingerprintMismatch(
            "a fingerprint is 60 digits (12 groups of 5); "
            f"got {len(digits)} characters"
            f"{'' if digits.isascii() and digits.isdigit() else ' with non-digits'}"
        )
    return " ".join(digits[i : i + 5] for i in range(0, 60, 5))


def _hpke_public_from_bytes(raw: bytes) -> hpke.MLKEM768X25519PublicKey:
    if len(raw) != _MLKEM768_PUBLIC_LEN + _X25519_PUBLIC_LEN:
        raise InvalidCard(
            f"the HPKE key is {len(raw)} bytes; ML-KEM-768 + X25519 needs "
            f"{_MLKEM768_PUBLIC_LEN + _X25519_PUBLIC_LEN}"
        )
    try:
        return hpke.MLKEM768X25519PublicKey(
            mlkem.MLKEM768PublicKey.from_public_bytes(raw[:_MLKEM768_PUBLIC_LEN]),
            x25519.X25519PublicKey.from_public_bytes(raw[_MLKEM768_PUBLIC_LEN:]),
        )
    except ValueError as exc:
        raise InvalidCard(f"the HPKE key is not a valid ML-KEM-768 + X25519 key: {exc}") from None


@dataclass(frozen=True, slots=True)
class IdentityCard:
    """The public, self-signed card of one terminal. Immutable and verified."""

    party: str
    name: str
    version: int
    valid_from: datetime
    valid_until: datetime
    ed25519_public: bytes
    mldsa65_public: bytes
    hpke_public: bytes
    #: The canonical bytes of the unsigned card (what the fingerprint hashes).
    card_bytes: bytes
    #: The canonical bytes of the signed card as exchanged between parties.
    signed_bytes: bytes
    _ed25519: ed25519.Ed25519PublicKey = field(repr=False, compare=False)
    _mldsa65: mldsa.MLDSA65PublicKey = field(repr=False, compare=False)
    _hpke: hpke.MLKEM768X25519PublicKey = field(repr=False, compare=False)

    @property
    def fingerprint_digest(self) -> bytes:
        return hashlib.sha256(self.card_bytes).digest()

    @property
    def fingerprint(self) -> str:
        return format_fingerprint(self.fingerprint_digest)

    @property
    def key_id(self) -> str:
        """Hex SHA-256 of the card, used as the DSSE ``keyid``."""
        return self.fingerprint_digest.hex()

    def verify_ed25519(self, signature: bytes, data: bytes) -> bool:
        try:
            self._ed25519.verify(signature, data)
        except _CryptoInvalidSignature:
            return False
        return True

    def verify_mldsa65(self, signature: bytes, data: bytes) -> bool:
        try:
            self._mldsa65.verify(signature, data)
        except _CryptoInvalidSignature:
            return False
        return True

    @property
    def hpke_key(self) -> hpke.MLKEM768X25519PublicKey:
        return self._hpke

    def valid_at(self, moment: datetime) -> bool:
        return self.valid_from <= moment <= self.valid_until

    def pinned(self, fingerprint: str) -> IdentityCard:
        """Return self if ``fingerprint`` (read aloud by the peer) matches."""
        expected = normalize_fingerprint(fingerprint)
        if expected != self.fingerprint:
            # The card's own fingerprint is not shown: a tired operator could copy it
            # and retry, pinning whatever card an attacker slipped in.
            raise FingerprintMismatch(
                f"the card of {self.party} does not match the fingerprint read aloud; "
                "do not trust this card: check the fingerprint again with the other party, "
                "over another channel"
            )
        return self

    @classmethod
    def from_bytes(cls, data: bytes) -> IdentityCard:
        """Parse and verify a signed card; raise ``InvalidCard`` or ``MalformedInput``."""
        outer = require_object(parse_canonical(data, max_size=MAX_CARD_SIZE, what="card"), "card")
        require_keys(outer, "signed card", {"card", "signatures"})
        card = require_object(outer["card"], "card")
        sigs = require_object(outer["signatures"], "card signatures")
        require_keys(sigs, "card signatures", {"ed25519", "mldsa65"})
        require_keys(
            card,
            "card",
            {"type", "party", "name", "version", "valid_from", "valid_until", "keys"},
        )
        if card["type"] != CARD_TYPE:
            raise InvalidCard(f"card type {str(card['type'])[:40]!r} is not {CARD_TYPE}")
        keys = require_object(card["keys"], "card keys")
        require_keys(keys, "card keys", {"ed25519", "mldsa65", "hpke_mlkem768_x25519"})
        party = check_party_id(card["party"], "card party")
        name = require_str(card, "name", "card", max_len=200)
        version = require_int(card, "version", "card", minimum=1)
        valid_from = parse_time(card["valid_from"], "card valid_from")
        valid_until = parse_time(card["valid_until"], "card valid_until")
        if valid_until <= valid_from:
            raise InvalidCard(f"card of {party} expires before it starts")
        ed_raw = b64decode(keys["ed25519"], "card ed25519 key")
        ml_raw = b64decode(keys["mldsa65"], "card mldsa65 key")
        hpke_raw = b64decode(keys["hpke_mlkem768_x25519"], "card HPKE key")
        try:
            ed_key = ed25519.Ed25519PublicKey.from_public_bytes(ed_raw)
            ml_key = mldsa.MLDSA65PublicKey.from_public_bytes(ml_raw)
        except ValueError as exc:
            raise InvalidCard(f"card of {party} holds a malformed signature key: {exc}") from None
        hpke_key = _hpke_public_from_bytes(hpke_raw)
        card_bytes = canonical_bytes(card)
        result = cls(
            party=party,
            name=name,
            version=version,
            valid_from=valid_from,
            valid_until=valid_until,
            ed25519_public=ed_raw,
            mldsa65_public=ml_raw,
            hpke_public=hpke_raw,
            card_bytes=card_bytes,
            signed_bytes=data,
            _ed25519=ed_key,
            _mldsa65=ml_key,
            _hpke=hpke_key,
        )
        message = _card_signing_input(card_bytes)
        if not result.verify_ed25519(b64decode(sigs["ed25519"], "card ed25519 signature"), message):
            raise InvalidCard(f"the Ed25519 self-signature on the card of {party} is invalid")
        if not result.verify_mldsa65(b64decode(sigs["mldsa65"], "card mldsa65 signature"), message):
            raise InvalidCard(f"the ML-DSA-65 self-signature on the card of {party} is invalid")
        return result


def describe_span(span: timedelta) -> str:
    """A length of time as a person says it: "3 years", "1000 years", "90 days"."""
    days = span / timedelta(days=1)
    if days >= 365:
        years = round(days / 365.25, 1)
        return f"{years:g} year{'' if years == 1 else 's'}"
    if days >= 1:
        whole = round(days, 1)
        return f"{whole:g} day{'' if whole == 1 else 's'}"
    if span >= timedelta(hours=1):
        hours = round(span / timedelta(hours=1), 1)
        return f"{hours:g} hour{'' if hours == 1 else 's'}"
    minutes = round(span / timedelta(minutes=1), 1)
    return f"{minutes:g} minute{'' if minutes == 1 else 's'}"


def check_card_window(
    card: IdentityCard, *, now: datetime, max_validity: timedelta, clock_skew: timedelta
) -> None:
    """Refuse a card whose validity this terminal does not accept (``UnacceptableCard``).

    A card is accepted only if its window is at most ``max_validity`` long and
    includes ``now``, allowing ``clock_skew`` for a card that begins a little
    ahead of this terminal's clock. A card valid from 1970 to 2970 would
    otherwise vouch for messages dated anywhere in a thousand years.
    """
    window = f"({format_time(card.valid_from)[:10]} to {format_time(card.valid_until)[:10]})"
    length = card.valid_until - card.valid_from
    if length > max_validity:
        raise UnacceptableCard(
            f"{card.party}'s card is valid for {describe_span(length)} {window}; the most "
            f"this terminal accepts is {describe_span(max_validity)} "
            "(max_card_validity_days): ask for a card with a shorter validity"
        )
    if card.valid_from > now + clock_skew:
        raise UnacceptableCard(
            f"{card.party}'s card begins at {format_time(card.valid_from)}, "
            f"{describe_span(card.valid_from - now)} ahead of this terminal's clock "
            f"({format_time(now)}); the most allowed is {describe_span(clock_skew)} "
            "(max_clock_skew): check both clocks"
        )
    if card.valid_until < now:
        raise UnacceptableCard(
            f"{card.party}'s card expired at {format_time(card.valid_until)} {window}; "
            f"this terminal's clock reads {format_time(now)}: ask for a current card"
        )


def _card_signing_input(card_bytes: bytes) -> bytes:
    return b"parley card v1\n" + card_bytes


@dataclass(frozen=True, slots=True)
class Identity:
    """The private keys of one terminal and its signed card."""

    card: IdentityCard
    ed25519_private: ed25519.Ed25519PrivateKey = field(repr=False)
    mldsa65_private: mldsa.MLDSA65PrivateKey = field(repr=False)
    hpke_private: hpke.MLKEM768X25519PrivateKey = field(repr=False)
    mlkem_seed: bytes = field(repr=False)
    x25519_raw: bytes = field(repr=False)

    @property
    def party(self) -> str:
        return self.card.party

    @classmethod
    def generate(
        cls,
        party: str,
        name: str,
        *,
        now: datetime,
        validity: timedelta = timedelta(days=730),
        version: int = 1,
    ) -> Identity:
        return cls.from_private_material(
            party=party,
            name=name,
            valid_from=now,
            valid_until=now + validity,
            version=version,
            ed25519_seed=ed25519.Ed25519PrivateKey.generate().private_bytes_raw(),
            mldsa65_seed=mldsa.MLDSA65PrivateKey.generate().private_bytes_raw(),
            mlkem_seed=mlkem.MLKEM768PrivateKey.generate().private_bytes_raw(),
            x25519_raw=x25519.X25519PrivateKey.generate().private_bytes_raw(),
        )

    @classmethod
    def from_private_material(
        cls,
        *,
        party: str,
        name: str,
        valid_from: datetime,
        valid_until: datetime,
        version: int,
        ed25519_seed: bytes,
        mldsa65_seed: bytes,
        mlkem_seed: bytes,
        x25519_raw: bytes,
    ) -> Identity:
        """Rebuild an identity (and re-sign its card) from stored private keys.

        Both signature schemes are deterministic for the card (Ed25519 always;
        ML-DSA's hedged signatures differ but verify), so a reloaded identity
        has the same card bytes and therefore the same fingerprint.
        """
        try:
            check_party_id(party, "party id")
        except SchemaViolation as exc:
            raise UsageError(str(exc)) from None
        try:
            ed_key = ed25519.Ed25519PrivateKey.from_private_bytes(ed25519_seed)
            ml_key = mldsa.MLDSA65PrivateKey.from_seed_bytes(mldsa65_seed)
            kem_key = mlkem.MLKEM768PrivateKey.from_seed_bytes(mlkem_seed)
            x_key = x25519.X25519PrivateKey.from_private_bytes(x25519_raw)
        except ValueError as exc:
            raise UsageError(f"the private key material is invalid: {exc}") from None
        hpke_private = hpke.MLKEM768X25519PrivateKey(kem_key, x_key)
        hpke_public_raw = (
            kem_key.public_key().public_bytes_raw() + x_key.public_key().public_bytes_raw()
        )
        card = {
            "type": CARD_TYPE,
            "party": party,
            "name": name,
            "version": version,
            "valid_from": format_time(valid_from),
            "valid_until": format_time(valid_until),
            "keys": {
                "ed25519": b64encode(ed_key.public_key().public_bytes_raw()),
                "mldsa65": b64encode(ml_key.public_key().public_bytes_raw()),
                "hpke_mlkem768_x25519": b64encode(hpke_public_raw),
            },
        }
        message = _card_signing_input(canonical_bytes(card))
        signed = canonical_bytes(
            {
                "card": card,
                "signatures": {
                    "ed25519": b64encode(ed_key.sign(message)),
                    "mldsa65": b64encode(ml_key.sign(message)),
                },
            }
        )
        try:
            public_card = IdentityCard.from_bytes(signed)
        except (SchemaViolation, InvalidCard) as exc:
            raise UsageError(f"cannot build a card for {party!r}: {exc}") from None
        return cls(
            card=public_card,
            ed25519_private=ed_key,
            mldsa65_private=ml_key,
            hpke_private=hpke_private,
            mlkem_seed=mlkem_seed,
            x25519_raw=x25519_raw,
        )

    def sign_ed25519(self, data: bytes) -> bytes:
        return self.ed25519_private.sign(data)

    def sign_mldsa65(self, data: bytes) -> bytes:
        return self.mldsa65_private.sign(data)

    @classmethod
    def from_stored(cls, card: IdentityCard, material: Mapping[str, bytes]) -> Identity:
        """Rebuild an identity from its signed card and ``private_material()``.

        The stored card is kept as it is (its ML-DSA self-signature is not
        reproducible); the keys must be the ones the card names.
        """
        try:
            identity = cls.from_private_material(
                party=card.party,
                name=card.name,
                valid_from=card.valid_from,
                valid_until=card.valid_until,
                version=card.version,
                ed25519_seed=material["ed25519"],
                mldsa65_seed=material["mldsa65"],
                mlkem_seed=material["mlkem768"],
                x25519_raw=material["x25519"],
            )
        except KeyError as exc:
            raise UsageError(f"the private key material lacks the {exc} key") from None
        if identity.card.card_bytes != card.card_bytes:
            raise UsageError(f"the private keys do not match the identity card of {card.party}")
        return dataclasses.replace(identity, card=card)

    def private_material(self) -> dict[str, bytes]:
        """The secrets a key file must keep (see ``parley.keyfile``)."""
        return {
            "ed25519": self.ed25519_private.private_bytes_raw(),
            "mldsa65": self.mldsa65_private.private_bytes_raw(),
            "mlkem768": self.mlkem_seed,
            "x25519": self.x25519_raw,
        }
