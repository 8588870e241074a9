"""Sealing and opening message envelopes.

An envelope is a DSSE envelope whose payload is canonical JSON::

    {"channel", "ciphertexts": {party: base64}, "content_digest", "created_at",
     ["encrypted_to": {party: key id},] "exercise", "id", "kind", "precedence",
     "recipients", "sender", "seq", "v"}

Each recipient (and the sender itself, so its own transcript stays readable
to it) gets an HPKE base-mode ciphertext of the same inner content; ``info``
binds the envelope id, the sender and that recipient, so a ciphertext cannot
be moved to another envelope or another reader. ``content_digest`` is the
SHA-256 of the inner content, which carries a random salt: the sender's
signature therefore commits to the plaintext itself, and a recipient can
later prove to a mediator what was said by disclosing the inner content
alone, without disclosing any key.

A ciphertext is for the reader's current medium-term key
(``parley.core.enckeys``) when the sender holds one, and ``encrypted_to``
names that key's id (the field is left out when every ciphertext is for a
card's own HPKE key, as in envelopes from before medium-term keys). The key id
is also bound into ``info``. A reader whose key was destroyed learns which key
and when (``KeyDestroyed``), and nothing of the content.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from cryptography.hazmat.primitives import hpke

from parley.core.canonical import (
    JSONValue,
    canonical_bytes,
    parse_canonical,
    require_bool,
    require_int,
    require_keys,
    require_list,
    require_object,
    require_str,
)
from parley.core.dsse import pae, parse_dsse, sign_dsse
from parley.core.enckeys import DestroyedKey, EncryptionKey
from parley.core.encoding import (
    b64decode,
    b64encode,
    check_party_id,
    check_uuid7,
    format_time,
    parse_time,
)
from parley.core.identity import HPKE_SUITE, Identity, IdentityCard
from parley.errors import (
    DecryptionFailed,
    InvalidSignature,
    KeyDestroyed,
    NotARecipient,
    SchemaViolation,
    TimestampInFuture,
    UnknownKind,
    UnknownSender,
    UnknownVersion,
    UsageError,
)

__all__ = [
    "ENVELOPE_PAYLOAD_TYPE",
    "KINDS",
    "PRECEDENCES",
    "Content",
    "EnvelopeHeader",
    "Limits",
    "OpenedEnvelope",
    "decrypt_envelope",
    "envelope_digest",
    "open_envelope",
    "read_envelope",
    "seal_envelope",
]

ENVELOPE_PAYLOAD_TYPE: Final = "application/vnd.parley.envelope.v1+json"
ENVELOPE_VERSION: Final = 1
PRECEDENCES: Final = ("FLASH", "IMMEDIATE", "PRIORITY", "ROUTINE")
KINDS: Final = ("text", "form", "ack", "test", "service", "key")
_MAX_RECIPIENTS: Final = 64

CardLookup = Callable[[str], IdentityCard | None]
#: A key id -> the private key, the date it was destroyed, or None (not held).
PrivateKeyLookup = Callable[[str], hpke.MLKEM768X25519PrivateKey | DestroyedKey | None]
_KEY_ID_LEN: Final = 64


@dataclass(frozen=True, slots=True)
class Limits:
    """Acceptance limits; both are configurable per terminal."""

    #: The largest sealed envelope: a list of about 2,000 persons on a channel of three.
    max_body_bytes: int = 4 * 1024 * 1024
    clock_skew: timedelta = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class Content:
    """The inner, encrypted content of an envelope.

    ``body`` depends on the kind: ``{"text": str}``, ``{"form": {...}}``,
    ``{"ack": {"envelope_id", "digest"}}``, ``{"test": {...}}``,
    ``{"service": {...}}`` or ``{"key": ANNOUNCEMENT}`` (``parley.core.enckeys``).
    """

    lang: str
    operator: str
    body: Mapping[str, JSONValue]
    salt: bytes = field(default_factory=lambda: secrets.token_bytes(16), repr=False)

    def to_bytes(self) -> bytes:
        return canonical_bytes(
            {
                "body": dict(self.body),
                "lang": self.lang,
                "operator": self.operator,
                "salt": b64encode(self.salt),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes, kind: str) -> Content:
        obj = require_object(parse_canonical(data, what="inner content"), "inner content")
        require_keys(obj, "inner content", {"body", "lang", "operator", "salt"})
        body = require_object(obj["body"], "inner content body")
        _check_body(kind, body)
        lang = require_str(obj, "lang", "inner content", max_len=35)
        operator = require_str(obj, "operator", "inner content", max_len=200)
        for name, value in (("lang", lang), ("operator", operator)):
            if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
                raise SchemaViolation(f"the inner content's {name} holds a control character")
        return cls(
            lang=lang,
            operator=operator,
            body=body,
            salt=b64decode(obj["salt"], "inner content salt"),
        )


MAX_BODY_DEPTH = 32
"""Deepest nesting of arrays and objects allowed in a message body."""


def _depth(value: JSONValue) -> int:
    """Nesting depth of a JSON value, computed without recursion."""
    deepest = 0
    stack: list[tuple[JSONValue, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item)
    return deepest


def _check_body(kind: str, body: Mapping[str, JSONValue]) -> None:
    if _depth(dict(body)) > MAX_BODY_DEPTH:
        raise SchemaViolation(f"a message body may nest at most {MAX_BODY_DEPTH} levels deep")
    if set(body) != {kind}:
        raise SchemaViolation(f"a {kind} envelope's content must hold exactly the field {kind!r}")
    value = body[kind]
    if kind == "text":
        if not isinstance(value, str):
            raise SchemaViolation("the text of a text message must be a string")
    elif kind == "ack":
        ack = require_object(value, "acknowledgement")
        require_keys(ack, "acknowledgement", {"envelope_id", "digest"})
        check_uuid7(ack["envelope_id"], "acknowledged envelope id")
        require_str(ack, "digest", "acknowledgement", max_len=64)
    else:
        require_object(value, f"{kind} content")


@dataclass(frozen=True, slots=True)
class EnvelopeHeader:
    """The signed, cleartext fields of an envelope whose signature verified."""

    id: str
    channel: str
    sender: str
    recipients: tuple[str, ...]
    seq: int
    created_at: datetime
    precedence: str
    kind: str
    exercise: bool
    content_digest: str
    ciphertexts: Mapping[str, bytes] = field(repr=False)
    raw: bytes = field(repr=False)
    #: The signing card's key id (DSSE ``keyid``): which card of the sender's chain signed.
    key_id: str = ""
    #: party -> id of the medium-term key its ciphertext is for (absent: the card's key).
    encrypted_to: Mapping[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return envelope_digest(self.raw)


@dataclass(frozen=True, slots=True)
class OpenedEnvelope:
    header: EnvelopeHeader
    content: Content

    @property
    def raw(self) -> bytes:
        return self.header.raw


def envelope_digest(raw: bytes) -> str:
    """Hex SHA-256 of an envelope's exact bytes: how receipts and acks name it."""
    return hashlib.sha256(raw).hexdigest()


def _hpke_info(envelope_id: str, sender: str, recipient: str, key_id: str | None) -> bytes:
    info = f"parley/v1 envelope\n{envelope_id}\n{sender}\n{recipient}"
    return (info if key_id is None else f"{info}\n{key_id}").encode()


def seal_envelope(
    identity: Identity,
    recipients: Sequence[IdentityCard],
    *,
    envelope_id: str,
    channel: str,
    seq: int,
    created_at: datetime,
    precedence: str,
    kind: str,
    content: Content,
    exercise: bool = False,
    encryption_keys: Mapping[str, EncryptionKey] | None = None,
) -> bytes:
    """Sign and encrypt ``content`` for ``recipients``; return the envelope bytes.

    ``encryption_keys`` gives the medium-term key of each reader that has one
    (the sender included); the others' ciphertexts are for their card's key.
    """
    if precedence not in PRECEDENCES:
        raise UsageError(f"precedence must be one of {', '.join(PRECEDENCES)}, not {precedence!r}")
    if kind not in KINDS:
        raise UsageError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if not recipients:
        raise UsageError("an envelope needs at least one recipient")
    _check_body(kind, content.body)
    sender = identity.party
    readers: dict[str, IdentityCard] = {card.party: card for card in recipients}
    if sender in readers:
        raise UsageError("the sender cannot be one of the recipients")
    readers[sender] = identity.card
    inner = content.to_bytes()
    keys = {p: k for p, k in (encryption_keys or {}).items() if p in readers}
    for party, announced in keys.items():
        if announced.party != party:
            raise UsageError(f"the encryption key {announced.key_id[:16]}… is not {party}'s")
    ciphertexts: dict[str, JSONValue] = {}
    for party, card in sorted(readers.items()):
        key = keys.get(party)
        ciphertexts[party] = b64encode(
            HPKE_SUITE.encrypt(
                inner,
                card.hpke_key if key is None else key.hpke_key,
                info=_hpke_info(envelope_id, sender, party, None if key is None else key.key_id),
            )
        )
    fields: dict[str, JSONValue] = {
        "channel": channel,
        "ciphertexts": ciphertexts,
        "content_digest": hashlib.sha256(inner).hexdigest(),
        "created_at": format_time(created_at),
        "exercise": exercise,
        "id": envelope_id,
        "kind": kind,
        "precedence": precedence,
        "recipients": sorted(card.party for card in recipients),
        "sender": sender,
        "seq": seq,
        "v": ENVELOPE_VERSION,
    }
    if keys:
        fields["encrypted_to"] = {p: k.key_id for p, k in sorted(keys.items())}
    payload = canonical_bytes(fields)
    return sign_dsse(ENVELOPE_PAYLOAD_TYPE, payload, identity.card.key_id, identity.sign_ed25519)


def read_envelope(data: bytes, lookup: CardLookup, limits: Limits = Limits()) -> EnvelopeHeader:
    """Verify an envelope's bytes and signature and return its cleartext header.

    Does not decrypt and does not look at the clock: auditors use this on
    stored transcripts.
    """
    dsse = parse_dsse(
        data, payload_type=ENVELOPE_PAYLOAD_TYPE, max_size=limits.max_body_bytes, what="envelope"
    )
    obj = require_object(parse_canonical(dsse.payload, what="envelope payload"), "envelope payload")
    version = obj.get("v")
    if isinstance(version, bool) or version != ENVELOPE_VERSION:  # true == 1 in Python
        raise UnknownVersion(f"envelope version {str(version)[:20]} is not one this terminal reads")
    sender = check_party_id(obj.get("sender"), "envelope sender")
    card = lookup(sender)
    if card is None:
        raise UnknownSender(
            f"no pinned card for the sender {sender}; the envelope cannot be trusted"
        )
    signer = card.for_key(dsse.key_id)
    if signer is None:
        raise InvalidSignature(
            f"the envelope names signing key {dsse.key_id[:16]}…, not the pinned key of {sender} "
            "nor one its chain replaced"
        )
    if not signer.verify_ed25519(dsse.signature, pae(ENVELOPE_PAYLOAD_TYPE, dsse.payload)):
        raise InvalidSignature(f"the signature of {sender} on this envelope does not verify")
    if signer.signs_until is not None:
        # A rotated-out or revoked key: only what it signed before it stopped counts.
        signer.check_signed_at(
            parse_time(obj.get("created_at"), "envelope created_at"), "the envelope"
        )
    # From here on the sender is authenticated: what remains are its own mistakes.
    require_keys(
        obj,
        "envelope payload",
        {
            "channel",
            "ciphertexts",
            "content_digest",
            "created_at",
            "exercise",
            "id",
            "kind",
            "precedence",
            "recipients",
            "sender",
            "seq",
            "v",
        },
        {"encrypted_to"},
    )
    kind = require_str(obj, "kind", "envelope", max_len=40)
    if kind not in KINDS:
        raise UnknownKind(f"envelope kind {kind!r} is not one of {', '.join(KINDS)}")
    precedence = require_str(obj, "precedence", "envelope", max_len=40)
    if precedence not in PRECEDENCES:
        raise SchemaViolation(f"precedence {precedence!r} is not one of {', '.join(PRECEDENCES)}")
    recipients = require_list(obj, "recipients", "envelope")
    if not recipients or len(recipients) > _MAX_RECIPIENTS:
        raise SchemaViolation(f"an envelope names 1 to {_MAX_RECIPIENTS} recipients")
    checked = tuple(check_party_id(r, "envelope recipient") for r in recipients)
    if list(checked) != sorted(set(checked)) or sender in checked:
        raise SchemaViolation("envelope recipients must be sorted, distinct and exclude the sender")
    raw_cts = require_object(obj["ciphertexts"], "envelope ciphertexts")
    if set(raw_cts) != {*checked, sender}:
        raise SchemaViolation("the envelope must hold one ciphertext per recipient and the sender")
    encrypted_to: dict[str, str] = {}
    if "encrypted_to" in obj:
        named = require_object(obj["encrypted_to"], "envelope encrypted_to")
        if not named or not set(named) <= set(raw_cts):
            raise SchemaViolation("encrypted_to names key ids of some of the envelope's readers")
        for party in named:
            key_id = require_str(named, party, "envelope encrypted_to", max_len=_KEY_ID_LEN)
            if len(key_id) != _KEY_ID_LEN or any(c not in "0123456789abcdef" for c in key_id):
                raise SchemaViolation("an encryption key id is 64 lowercase hex digits")
            encrypted_to[party] = key_id
    digest = require_str(obj, "content_digest", "envelope", max_len=64)
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise SchemaViolation("content_digest must be 64 lowercase hex digits")
    return EnvelopeHeader(
        id=check_uuid7(obj["id"], "envelope id"),
        channel=check_party_id(obj["channel"], "envelope channel"),
        sender=sender,
        recipients=checked,
        seq=require_int(obj, "seq", "envelope", minimum=1),
        created_at=parse_time(obj["created_at"], "envelope created_at"),
        precedence=precedence,
        kind=kind,
        exercise=require_bool(obj, "exercise", "envelope"),
        content_digest=digest,
        ciphertexts={p: b64decode(c, f"ciphertext for {p}") for p, c in raw_cts.items()},
        raw=data,
        key_id=dsse.key_id,
        encrypted_to=encrypted_to,
    )


def open_envelope(
    data: bytes,
    *,
    me: Identity,
    lookup: CardLookup,
    now: datetime,
    limits: Limits = Limits(),
    keys: PrivateKeyLookup | None = None,
) -> OpenedEnvelope:
    """Verify, check and decrypt an envelope addressed to (or sent by) ``me``."""
    header = read_envelope(data, lookup, limits)
    if me.party not in header.recipients and me.party != header.sender:
        raise NotARecipient(
            f"envelope {header.id} from {header.sender} is addressed to "
            f"{', '.join(header.recipients)}, not to {me.party}"
        )
    if header.created_at > now + limits.clock_skew:
        raise TimestampInFuture(
            f"envelope {header.id} from {header.sender} is dated {format_time(header.created_at)}, "
            f"more than {limits.clock_skew} ahead of this terminal's clock ({format_time(now)})"
        )
    card = lookup(header.sender)
    signer = card.for_key(header.key_id) if card is not None else None
    if signer is not None:
        signer.check_signed_at(header.created_at, f"envelope {header.id}")
    return decrypt_envelope(header, me, keys)


def decrypt_envelope(
    header: EnvelopeHeader, me: Identity, keys: PrivateKeyLookup | None = None
) -> OpenedEnvelope:
    """Open ``me``'s ciphertext: with the medium-term key it names (from ``keys``), else
    with the card's key. Raises ``KeyDestroyed`` for a key whose private half is gone."""
    ciphertext = header.ciphertexts[me.party]
    key_id = header.encrypted_to.get(me.party)
    private = me.hpke_private
    if key_id is not None:
        found = keys(key_id) if keys is not None else None
        if isinstance(found, DestroyedKey):
            raise KeyDestroyed(
                f"envelope {header.id} from {header.sender} is encrypted to key {key_id[:16]}…, "
                f"destroyed on {format_time(found.destroyed_at)}: its content cannot be read "
                "here any more (forward secrecy)"
            )
        if found is None:
            raise DecryptionFailed(
                f"envelope {header.id} from {header.sender} is encrypted to key {key_id[:16]}…, "
                f"which {me.party} never held"
            )
        private = found
    try:
        inner = HPKE_SUITE.decrypt(
            ciphertext, private, info=_hpke_info(header.id, header.sender, me.party, key_id)
        )
    except Exception:  # cryptography raises InvalidTag or ValueError; both mean "does not open"
        raise DecryptionFailed(
            f"the ciphertext for {me.party} in envelope {header.id} from {header.sender} "
            "does not open with this terminal's key"
        ) from None
    if hashlib.sha256(inner).hexdigest() != header.content_digest:
        raise DecryptionFailed(
            f"the content of envelope {header.id} does not match the digest {header.sender} signed"
        )
    return OpenedEnvelope(header, Content.from_bytes(inner, header.kind))
