"""A party's chain of identity cards: rotation and revocation, with no I/O.

Keys that must last for decades are replaced, not extended. A **rotation**
card (version n+1) names the card it replaces (``previous``, that card's key
id) and the size of its owner's transcript at the change (``log_size``); it is
signed by its own new keys and by the old ones (``rotation_signing_input``).
A peer that pinned card n accepts card n+1 by itself: ``check_successor``
proves the chain. The old card stays in the chain (``IdentityCard.history``)
so everything it signed still verifies, but its keys never sign again: a
signature dated after the new card begins, or a checkpoint larger than
``log_size``, is refused (``SupersededKey``).

A **revocation** says that a card's keys were compromised at a stated time.
It is signed either by a later card of the chain (the keys that are not
compromised) or by the offline revocation keys whose digest the card names
(``revocation``), made at ``parley init`` and printed for the safe. Once
applied, nothing signed by the revoked card dated after that time is
accepted; if the revoked card is the party's current one, the party's next
card must be pinned again by its fingerprint read aloud.

Formats are in docs/formats.md ("Rotation" and "Revocation").
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from dataclasses import dataclass, field
from datetime import datetime

from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from parley.core.canonical import (
    JSONValue,
    canonical_bytes,
    parse_canonical,
    require_keys,
    require_object,
    require_str,
)
from parley.core.encoding import b64decode, b64encode, check_party_id, format_time, parse_time
from parley.core.identity import Identity, IdentityCard, rotation_signing_input
from parley.errors import InvalidRevocation, InvalidRotation, UsageError

__all__ = [
    "REVOCATION_TYPE",
    "Revocation",
    "RevocationKeys",
    "apply_revocation",
    "attach_history",
    "check_successor",
    "issue_revocation",
    "read_revocation",
]

REVOCATION_TYPE = "parley.revocation/v1"
MAX_REVOCATION_SIZE = 16 * 1024
_MAX_REASON = 500
_OFFLINE_PREFIX = "parley-revocation-keys/v1"


def _verify(
    key: ed25519.Ed25519PublicKey | mldsa.MLDSA65PublicKey, sig: bytes, data: bytes
) -> bool:
    try:
        key.verify(sig, data)
    except _CryptoInvalidSignature:
        return False
    return True


# Rotation -----------------------------------------------------------------------------


def check_successor(current: IdentityCard, new: IdentityCard) -> IdentityCard:
    """Prove that ``new`` replaces ``current``; return ``new`` holding the chain.

    ``current`` is the card pinned now (with its history). Refused with
    ``InvalidRotation``: another party, a card that does not name ``current``,
    a version other than ``current.version + 1`` (a replayed or backward
    card), a card that begins before ``current``, old-key signatures that do
    not verify, or a ``current`` card that was revoked (a compromised key
    cannot vouch for its successor: that one is pinned by fingerprint).
    """
    if new.party != current.party:
        raise InvalidRotation(
            f"a rotation card for {new.party} cannot replace the card of {current.party}"
        )
    if new.previous is None or new.previous_signatures is None:
        raise InvalidRotation(
            f"{new.party}'s card version {new.version} is not a rotation card (it names no "
            "previous card): a card that does not chain must be pinned by its fingerprint"
        )
    if new.version <= current.version:
        raise InvalidRotation(
            f"{new.party}'s card version {new.version} is not newer than the pinned version "
            f"{current.version}: a replayed or backward card"
        )
    if new.previous != current.key_id or new.version != current.version + 1:
        raise InvalidRotation(
            f"{new.party}'s card version {new.version} replaces card {new.previous[:16]}…, "
            f"not the pinned version {current.version} ({current.key_id[:16]}…): it does not chain"
        )
    if current.revoked is not None:
        raise InvalidRotation(
            f"{current.party}'s card version {current.version} was revoked ({current.revoked}); "
            "its keys cannot vouch for a new card: pin the new card by its fingerprint read aloud"
        )
    if new.valid_from < current.valid_from:
        raise InvalidRotation(
            f"{new.party}'s card version {new.version} begins at {format_time(new.valid_from)}, "
            f"before the card it replaces ({format_time(current.valid_from)})"
        )
    message = rotation_signing_input(new.card_bytes)
    ed_sig, ml_sig = new.previous_signatures
    if not current.verify_ed25519(ed_sig, message):
        raise InvalidRotation(
            f"the Ed25519 signature of {current.party}'s card version {current.version} on "
            f"version {new.version} does not verify"
        )
    if not current.verify_mldsa65(ml_sig, message):
        raise InvalidRotation(
            f"the ML-DSA-65 signature of {current.party}'s card version {current.version} on "
            f"version {new.version} does not verify"
        )
    retired = dataclasses.replace(
        current,
        history=(),
        signs_until=_earliest(current.signs_until, new.valid_from),
        max_log_size=new.log_size,
    )
    return dataclasses.replace(new, history=(retired, *current.history))


def attach_history(cards: list[IdentityCard]) -> IdentityCard:
    """Rebuild a stored chain (oldest first): each card checked against the one before.

    Revocations are applied afterwards (``apply_revocation``).
    """
    if not cards:
        raise UsageError("an empty card chain")
    chained = cards[0]
    for card in cards[1:]:
        chained = check_successor(chained, card)
    return chained


def _earliest(a: datetime | None, b: datetime) -> datetime:
    return b if a is None else min(a, b)


# Offline revocation keys ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RevocationKeys:
    """The offline revocation keys (Ed25519 + ML-DSA-65) made at ``parley init``.

    Their ``commitment`` (hex SHA-256 of the canonical public keys) is in the
    card, so a peer knows them before it needs them; the private seeds are
    printed once (``to_text``) and kept in a safe, never on the terminal.
    """

    ed25519_private: ed25519.Ed25519PrivateKey = field(repr=False)
    mldsa65_private: mldsa.MLDSA65PrivateKey = field(repr=False)

    @classmethod
    def generate(cls) -> RevocationKeys:
        return cls(ed25519.Ed25519PrivateKey.generate(), mldsa.MLDSA65PrivateKey.generate())

    @property
    def public(self) -> dict[str, str]:
        return {
            "ed25519": b64encode(self.ed25519_private.public_key().public_bytes_raw()),
            "mldsa65": b64encode(self.mldsa65_private.public_key().public_bytes_raw()),
        }

    @property
    def commitment(self) -> str:
        return _commitment(self.public)

    def to_text(self, party: str) -> str:
        """The revocation certificate as printed for the safe (one line of text)."""
        seeds = self.ed25519_private.private_bytes_raw() + self.mldsa65_private.private_bytes_raw()
        return f"{_OFFLINE_PREFIX} {party} {base64.b64encode(seeds).decode()}"

    @classmethod
    def from_text(cls, text: str) -> tuple[str, RevocationKeys]:
        """Read a printed revocation certificate; return (party, keys)."""
        parts = text.split()
        if len(parts) != 3 or parts[0] != _OFFLINE_PREFIX:
            raise UsageError(
                f"a revocation certificate is one line: {_OFFLINE_PREFIX} <party> <base64>"
            )
        try:
            seeds = base64.b64decode(parts[2], validate=True)
            if len(seeds) != 64:
                raise ValueError("64 bytes expected")
            keys = cls(
                ed25519.Ed25519PrivateKey.from_private_bytes(seeds[:32]),
                mldsa.MLDSA65PrivateKey.from_seed_bytes(seeds[32:]),
            )
        except ValueError as exc:
            raise UsageError(f"the revocation certificate is damaged: {exc}") from None
        return parts[1], keys


def _commitment(public: dict[str, str]) -> str:
    return hashlib.sha256(canonical_bytes(dict(public))).hexdigest()


# Revocations ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Revocation:
    """A verified revocation of one card of a party's chain."""

    party: str
    key_id: str  # the revoked card's
    version: int
    compromised_at: datetime
    issued_at: datetime
    reason: str
    #: "offline" or the key id of the later card that signed it.
    signer: str
    signed_bytes: bytes


def _revocation_input(statement_bytes: bytes) -> bytes:
    return b"parley revocation v1\n" + statement_bytes


def issue_revocation(
    signer: Identity | RevocationKeys,
    revoked: IdentityCard,
    *,
    compromised_at: datetime,
    reason: str,
    now: datetime,
) -> bytes:
    """Sign a revocation of ``revoked``: by a later card's identity or the offline keys."""
    reason = reason.strip()
    if not reason or len(reason) > _MAX_REASON:
        raise UsageError(f"a revocation needs a reason of 1 to {_MAX_REASON} characters")
    if compromised_at > now:
        raise UsageError("the time of the compromise cannot be in the future")
    statement: dict[str, JSONValue] = {
        "type": REVOCATION_TYPE,
        "party": revoked.party,
        "key_id": revoked.key_id,
        "version": revoked.version,
        "compromised_at": format_time(compromised_at),
        "issued_at": format_time(now),
        "reason": reason,
        "signer": "offline" if isinstance(signer, RevocationKeys) else signer.card.key_id,
    }
    message = _revocation_input(canonical_bytes(statement))
    outer: dict[str, JSONValue]
    if isinstance(signer, RevocationKeys):
        outer = {
            "revocation": statement,
            "offline_keys": dict(signer.public),
            "signatures": {
                "ed25519": b64encode(signer.ed25519_private.sign(message)),
                "mldsa65": b64encode(signer.mldsa65_private.sign(message)),
            },
        }
    else:
        if signer.party != revoked.party or signer.card.version <= revoked.version:
            raise UsageError(
                "only a later card of the same party (or the offline revocation keys) "
                "can revoke a card"
            )
        outer = {
            "revocation": statement,
            "signatures": {
                "ed25519": b64encode(signer.sign_ed25519(message)),
                "mldsa65": b64encode(signer.sign_mldsa65(message)),
            },
        }
    return canonical_bytes(outer)


def read_revocation(data: bytes, chain: IdentityCard) -> Revocation:
    """Verify a revocation against a party's chain (``chain`` = its newest card).

    The revoked card must be in the chain. The signer must be the offline
    keys the revoked card names, or a later card of the chain that is not
    itself revoked: a superseded (possibly stolen) key cannot revoke the key
    that replaced it. Anything else is ``InvalidRevocation``.
    """
    outer = require_object(
        parse_canonical(data, max_size=MAX_REVOCATION_SIZE, what="revocation"), "revocation"
    )
    offline = "offline_keys" in outer
    require_keys(
        outer,
        "revocation",
        {"revocation", "signatures", *(("offline_keys",) if offline else ())},
    )
    statement = require_object(outer["revocation"], "revocation statement")
    require_keys(
        statement,
        "revocation statement",
        {
            "type",
            "party",
            "key_id",
            "version",
            "compromised_at",
            "issued_at",
            "reason",
            "signer",
        },
    )
    if statement["type"] != REVOCATION_TYPE:
        raise InvalidRevocation(f"revocation type {str(statement['type'])[:40]!r} is unknown")
    party = check_party_id(statement["party"], "revocation party")
    if party != chain.party:
        raise InvalidRevocation(f"a revocation for {party} cannot revoke a card of {chain.party}")
    key_id = require_str(statement, "key_id", "revocation", max_len=64)
    revoked = chain.for_key(key_id)
    if revoked is None:
        raise InvalidRevocation(
            f"the revocation names card {key_id[:16]}…, which is not in {party}'s chain"
        )
    if statement["version"] != revoked.version:
        raise InvalidRevocation("the revocation names the wrong version of the card")
    reason = require_str(statement, "reason", "revocation", max_len=_MAX_REASON)
    signer = require_str(statement, "signer", "revocation", max_len=64)
    compromised_at = parse_time(statement["compromised_at"], "revocation compromised_at")
    issued_at = parse_time(statement["issued_at"], "revocation issued_at")
    if compromised_at > issued_at:
        raise InvalidRevocation("the revocation dates the compromise after its own issue")
    sigs = require_object(outer["signatures"], "revocation signatures")
    require_keys(sigs, "revocation signatures", {"ed25519", "mldsa65"})
    ed_sig = b64decode(sigs["ed25519"], "revocation ed25519 signature")
    ml_sig = b64decode(sigs["mldsa65"], "revocation mldsa65 signature")
    message = _revocation_input(canonical_bytes(statement))
    if offline:
        if signer != "offline":
            raise InvalidRevocation("a revocation with offline keys must name signer 'offline'")
        public = require_object(outer["offline_keys"], "revocation offline keys")
        require_keys(public, "revocation offline keys", {"ed25519", "mldsa65"})
        text = {k: require_str(public, k, "revocation offline keys", max_len=4096) for k in public}
        if revoked.revocation is None or _commitment(text) != revoked.revocation:
            raise InvalidRevocation(
                f"the revocation is signed by offline keys that {party}'s card version "
                f"{revoked.version} does not name"
            )
        try:
            ed_key = ed25519.Ed25519PublicKey.from_public_bytes(
                b64decode(text["ed25519"], "offline ed25519 key")
            )
            ml_key = mldsa.MLDSA65PublicKey.from_public_bytes(
                b64decode(text["mldsa65"], "offline mldsa65 key")
            )
        except ValueError:
            raise InvalidRevocation("the revocation's offline keys are malformed") from None
        good = _verify(ed_key, ed_sig, message) and _verify(ml_key, ml_sig, message)
    else:
        card = chain.for_key(signer)
        if card is None:
            raise InvalidRevocation(
                f"the revocation is signed by card {signer[:16]}…, not in {party}'s chain"
            )
        if card.version <= revoked.version:
            raise InvalidRevocation(
                f"{party}'s card version {card.version} cannot revoke version {revoked.version}: "
                "only a later card or the offline revocation keys can"
            )
        if card.revoked is not None:
            raise InvalidRevocation(
                f"{party}'s card version {card.version} was itself revoked; it revokes nothing"
            )
        good = card.verify_ed25519(ed_sig, message) and card.verify_mldsa65(ml_sig, message)
        if good and card.signs_until is not None and issued_at > card.signs_until:
            raise InvalidRevocation(
                f"the revocation is dated after {party}'s card version {card.version} "
                "stopped signing"
            )
    if not good:
        raise InvalidRevocation(f"the signatures on the revocation of {party}'s card do not verify")
    return Revocation(
        party=party,
        key_id=key_id,
        version=revoked.version,
        compromised_at=compromised_at,
        issued_at=issued_at,
        reason=reason,
        signer=signer,
        signed_bytes=data,
    )


def apply_revocation(chain: IdentityCard, revocation: Revocation) -> IdentityCard:
    """Return the chain with the revoked card's keys stopped at the compromise.

    Applying the same revocation twice changes nothing; of two revocations of
    one card, the earlier compromise time holds.
    """

    def revoke(card: IdentityCard) -> IdentityCard:
        if card.key_id != revocation.key_id:
            return card
        return dataclasses.replace(
            card,
            signs_until=_earliest(card.signs_until, revocation.compromised_at),
            revoked=card.revoked or revocation.reason,
        )

    head = revoke(chain)
    return dataclasses.replace(head, history=tuple(revoke(c) for c in chain.history))
