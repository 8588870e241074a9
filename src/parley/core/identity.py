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
    JSONValue,
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
    InvalidSignature,
    SchemaViolation,
    SupersededKey,
    UnacceptableCard,
    UsageError,
)

__all__ = [
    "CARD_TYPE",
    "HPKE_PUBLIC_LEN",
    "HPKE_SUITE",
    "Identity",
    "IdentityCard",
    "check_card_window",
    "describe_span",
    "format_fingerprint",
    "hpke_public_key",
    "normalize_fingerprint",
    "rotation_signing_input",
]

CARD_TYPE = "parley.card/v1"
MAX_CARD_SIZE = 64 * 1024
_MLKEM768_PUBLIC_LEN = 1184
_X25519_PUBLIC_LEN = 32
#: Bytes of an ``MLKEM768_X25519`` public key (a card's, or an announced one).
HPKE_PUBLIC_LEN = _MLKEM768_PUBLIC_LEN + _X25519_PUBLIC_LEN

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


def hpke_public_key(raw: bytes) -> hpke.MLKEM768X25519PublicKey:
    """An ``MLKEM768_X25519`` public key from its bytes (ML-KEM-768, then X25519) of
    ``HPKE_PUBLIC_LEN``; ``ValueError`` if they are not one (callers name the culprit)."""
    return hpke.MLKEM768X25519PublicKey(
        mlkem.MLKEM768PublicKey.from_public_bytes(raw[:_MLKEM768_PUBLIC_LEN]),
        x25519.X25519PublicKey.from_public_bytes(raw[_MLKEM768_PUBLIC_LEN:]),
    )


def _hpke_public_from_bytes(raw: bytes) -> hpke.MLKEM768X25519PublicKey:
    if len(raw) != HPKE_PUBLIC_LEN:
        raise InvalidCard(
            f"the HPKE key is {len(raw)} bytes; ML-KEM-768 + X25519 needs {HPKE_PUBLIC_LEN}"
        )
    try:
        return hpke_public_key(raw)
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
    #: A rotation card names the card it replaces (its ``key_id``); None for a first card.
    previous: str | None = None
    #: A rotation card: the size of its owner's transcript when the old keys stopped
    #: signing. No checkpoint signed by the old keys may be larger.
    log_size: int | None = None
    #: Hex SHA-256 of the offline revocation keys (``parley.core.revocation``), or None.
    revocation: str | None = None
    #: The old keys' signatures over a rotation card (Ed25519, ML-DSA-65), checked
    #: against the pinned card by ``parley.core.rotation.check_successor``.
    previous_signatures: tuple[bytes, bytes] | None = field(default=None, repr=False, compare=False)
    # What the holder of a chain knows about this card (set by parley.core.rotation,
    # never part of the signed bytes):
    #: The cards this one replaced, newest first, each with its ``signs_until``.
    history: tuple[IdentityCard, ...] = field(default=(), repr=False, compare=False)
    #: No signature by these keys dated later is accepted (rotated out or revoked).
    signs_until: datetime | None = field(default=None, compare=False)
    #: No checkpoint signed by these keys may be larger (rotated out).
    max_log_size: int | None = field(default=None, compare=False)
    #: Set when the card was revoked: the revocation's reason.
    revoked: str | None = field(default=None, compare=False)

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

    def signs_at(self, moment: datetime) -> bool:
        """Whether a signature by these keys dated ``moment`` can be accepted."""
        return self.valid_at(moment) and (self.signs_until is None or moment <= self.signs_until)

    @property
    def chain(self) -> tuple[IdentityCard, ...]:
        """This card and every card it replaced, newest first."""
        return (self, *self.history)

    def for_key(self, key_id: str) -> IdentityCard | None:
        """The card of this chain whose keys have ``key_id`` (as DSSE ``keyid``), or None."""
        for card in self.chain:
            if card.key_id == key_id:
                return card
        return None

    def check_signed_at(self, moment: datetime, what: str) -> None:
        """Refuse a signature dated outside this card's window or after its keys stopped."""
        if not self.valid_at(moment):
            raise InvalidSignature(
                f"{what} is dated {format_time(moment)}, outside the validity of "
                f"{self.party}'s card version {self.version} ({format_time(self.valid_from)} "
                f"to {format_time(self.valid_until)})"
            )
        if self.signs_until is not None and moment > self.signs_until:
            why = f"revoked ({self.revoked})" if self.revoked is not None else "rotated out"
            exc = SupersededKey(
                f"{what} is signed by {self.party}'s card version {self.version}, whose keys "
                f"were {why} at {format_time(self.signs_until)}; it is dated "
                f"{format_time(moment)}: an old key never signs again"
            )
            exc.card = f"{self.party} v{self.version}"
            exc.revoked = self.revoked is not None
            raise exc

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
        rotation = "previous" in card
        require_keys(
            sigs,
            "card signatures",
            {"ed25519", "mldsa65", *(_ROTATION_SIGNATURES if rotation else ())},
        )
        require_keys(
            card,
            "card",
            {
                "type",
                "party",
                "name",
                "version",
                "valid_from",
                "valid_until",
                "keys",
                *(("previous", "log_size") if rotation else ()),
                *(("revocation",) if "revocation" in card else ()),
            },
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
        previous = _hex_digest(card, "previous", party) if rotation else None
        log_size = require_int(card, "log_size", "card", minimum=0) if rotation else None
        if rotation and version < 2:
            raise InvalidCard(f"the rotation card of {party} has version {version}; it must be 2+")
        revocation = _hex_digest(card, "revocation", party) if "revocation" in card else None
        previous_signatures = (
            (
                b64decode(sigs["previous_ed25519"], "card previous ed25519 signature"),
                b64decode(sigs["previous_mldsa65"], "card previous mldsa65 signature"),
            )
            if rotation
            else None
        )
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
            previous=previous,
            log_size=log_size,
            revocation=revocation,
            previous_signatures=previous_signatures,
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


def rotation_signing_input(card_bytes: bytes) -> bytes:
    """What the old keys sign over a rotation card (another domain than the self-signature)."""
    return b"parley card rotation v1\n" + card_bytes


_ROTATION_SIGNATURES = ("previous_ed25519", "previous_mldsa65")


def _hex_digest(card: Mapping[str, object], key: str, party: str) -> str:
    value = card[key]
    if (
        not isinstance(value, str)
        or len(value) != 64
        or any(c not in "0123456789abcdef" for c in value)
    ):
        raise InvalidCard(f"the card of {party}: {key} must be 64 lowercase hex digits")
    return value


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
        revocation: str | None = None,
    ) -> Identity:
        return cls.from_private_material(
            revocation=revocation,
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
        previous: Identity | None = None,
        log_size: int | None = None,
        revocation: str | None = None,
    ) -> Identity:
        """Build an identity (and sign its card) from private keys.

        Both signature schemes are deterministic for the card (Ed25519 always;
        ML-DSA's hedged signatures differ but verify), so a reloaded identity
        has the same card bytes and therefore the same fingerprint. With
        ``previous`` the card is a rotation card: it names the previous card
        and the transcript size ``log_size`` at which the old keys stop, and
        the old keys sign it too (``rotation_signing_input``).
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
        card: dict[str, JSONValue] = {
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
        if revocation is not None:
            card["revocation"] = revocation
        if previous is not None:
            card["previous"] = previous.card.key_id
            card["log_size"] = log_size if log_size is not None else 0
        card_bytes = canonical_bytes(card)
        message = _card_signing_input(card_bytes)
        signatures: dict[str, JSONValue] = {
            "ed25519": b64encode(ed_key.sign(message)),
            "mldsa65": b64encode(ml_key.sign(message)),
        }
        if previous is not None:
            endorsed = rotation_signing_input(card_bytes)
            signatures["previous_ed25519"] = b64encode(previous.sign_ed25519(endorsed))
            signatures["previous_mldsa65"] = b64encode(previous.sign_mldsa65(endorsed))
        signed = canonical_bytes({"card": card, "signatures": signatures})
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

    def successor(
        self, *, now: datetime, validity: timedelta, log_size: int, name: str | None = None
    ) -> Identity:
        """A new identity for a rotation: card version n+1 with fresh signature keys.

        The new card is signed by the new keys and by these (``previous``); it
        keeps the encryption key (encryption keys have their own schedule) and
        the offline revocation keys this card names. ``log_size`` is this
        terminal's transcript size now: checkpoints the old keys signed go no
        further.
        """
        return self._next(now, validity, name, previous=self, log_size=log_size)

    def replacement(self, *, now: datetime, validity: timedelta) -> Identity:
        """New signature keys after this card was revoked: version n+1 that does not
        chain (no revoked key vouches for it; the peers pin it by its fingerprint)."""
        return self._next(now, validity, None, previous=None, log_size=None)

    def _next(
        self,
        now: datetime,
        validity: timedelta,
        name: str | None,
        *,
        previous: Identity | None,
        log_size: int | None,
    ) -> Identity:
        return Identity.from_private_material(
            party=self.party,
            name=name if name is not None else self.card.name,
            valid_from=now,
            valid_until=now + validity,
            version=self.card.version + 1,
            ed25519_seed=ed25519.Ed25519PrivateKey.generate().private_bytes_raw(),
            mldsa65_seed=mldsa.MLDSA65PrivateKey.generate().private_bytes_raw(),
            mlkem_seed=self.mlkem_seed,
            x25519_raw=self.x25519_raw,
            previous=previous,
            log_size=log_size,
            revocation=self.card.revocation,
        )

    def sign_ed25519(self, data: bytes) -> bytes:
        return self.ed25519_private.sign(data)

    def sign_mldsa65(self, data: bytes) -> bytes:
        return self.mldsa65_private.sign(data)

    @classmethod
    def from_stored(cls, card: IdentityCard, material: Mapping[str, bytes]) -> Identity:
        """Rebuild an identity from its signed card and ``private_material()``.

        The stored card is kept as it is (its ML-DSA signatures are not
        reproducible, nor are a rotation card's old-key signatures); the keys
        must be the ones the card names.
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
        rebuilt = identity.card
        if (rebuilt.ed25519_public, rebuilt.mldsa65_public, rebuilt.hpke_public) != (
            card.ed25519_public,
            card.mldsa65_public,
            card.hpke_public,
        ):
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
