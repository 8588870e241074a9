"""Certified translations of received messages, and their countersignatures.

A machine translation is a reading aid and is never signed. A certified
translation is an operator's statement "this is what the message says in
this language": a DSSE envelope signed by the terminal on that operator's
behalf, naming the message by id and by the SHA-256 of its exact bytes::

    {"envelope_digest", "envelope_id", "operator", "party", "source_lang",
     "target_lang", "text", "translated_at",
     "type": "parley.certified-translation/v1", "v": 1}

A second operator checks it and countersigns (a two-person check)::

    {"countersigned_at", "envelope_id", "operator", "party",
     "translation_digest", "type": "parley.translation-countersignature/v1",
     "v": 1}

``translation_digest`` is the SHA-256 of the exact bytes of the certified
translation, so the countersignature vouches for that text and no other.
The translator cannot countersign their own translation: operators are
compared per party, ignoring case, surrounding spaces and Unicode
compatibility forms, so ``Maj.Smith`` and ``maj.smith`` are one person.

Pure: no I/O and no clock (``now`` is the caller's).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final, TypeGuard

from parley.core.canonical import (
    JSONValue,
    canonical_bytes,
    parse_canonical,
    require_keys,
    require_object,
    require_str,
)
from parley.core.dsse import pae, parse_dsse, sign_dsse
from parley.core.encoding import check_party_id, check_uuid7, format_time, parse_time
from parley.core.identity import Identity, IdentityCard
from parley.errors import (
    InvalidSignature,
    SchemaViolation,
    UnknownSender,
    UnknownVersion,
    UsageError,
    VerificationError,
)

__all__ = [
    "CERTIFIED_TRANSLATION_TYPE",
    "COUNTERSIGNATURE_TYPE",
    "CertifiedTranslation",
    "Countersignature",
    "certify_translation",
    "countersign_translation",
    "read_certified_translation",
    "read_countersignature",
    "same_operator",
]

CERTIFIED_TRANSLATION_TYPE: Final = "application/vnd.parley.certified-translation.v1+json"
COUNTERSIGNATURE_TYPE: Final = "application/vnd.parley.translation-countersignature.v1+json"
TRANSLATION_TYPE: Final = "parley.certified-translation/v1"
COUNTERSIGNATURE_PAYLOAD_TYPE: Final = "parley.translation-countersignature/v1"
MAX_TEXT: Final = 256 * 1024
"""Characters in a translation: the longest message body, and then some."""
MAX_TRANSLATION_BYTES: Final = 1024 * 1024
MAX_COUNTERSIGNATURE_BYTES: Final = 16 * 1024
MAX_OPERATOR: Final = 200
_LANG = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{1,8}){0,4}", re.ASCII)
_DIGEST = re.compile(r"[0-9a-f]{64}", re.ASCII)

CardLookup = Callable[[str], IdentityCard | None]

_TRANSLATION_KEYS: Final = frozenset(
    {
        "envelope_digest",
        "envelope_id",
        "operator",
        "party",
        "source_lang",
        "target_lang",
        "text",
        "translated_at",
        "type",
        "v",
    }
)
_COUNTERSIGNATURE_KEYS: Final = frozenset(
    {
        "countersigned_at",
        "envelope_id",
        "operator",
        "party",
        "translation_digest",
        "type",
        "v",
    }
)


@dataclass(frozen=True, slots=True)
class CertifiedTranslation:
    """A verified certified translation; ``digest`` is the SHA-256 (hex) of ``raw``."""

    party: str
    operator: str
    envelope_id: str
    envelope_digest: str
    source_lang: str
    target_lang: str
    text: str
    translated_at: datetime
    raw: bytes
    digest: str


@dataclass(frozen=True, slots=True)
class Countersignature:
    """A verified countersignature of the certified translation ``translation_digest``."""

    party: str
    operator: str
    envelope_id: str
    translation_digest: str
    countersigned_at: datetime
    raw: bytes
    digest: str


def same_operator(party_a: str, operator_a: str, party_b: str, operator_b: str) -> bool:
    """Whether two (party, operator) pairs name one person, for the two-person check."""

    def key(operator: str) -> str:
        return unicodedata.normalize("NFKC", operator).casefold().strip()

    return party_a == party_b and key(operator_a) == key(operator_b)


# Checks shared by the signing side (UsageError) and the reading side (SchemaViolation)


def _operator_problem(operator: object) -> str | None:
    if not isinstance(operator, str) or not operator.strip():
        return "the operator must be a non-empty name"
    if len(operator) > MAX_OPERATOR:
        return f"the operator name is longer than {MAX_OPERATOR} characters"
    if any(unicodedata.category(c) == "Cc" for c in operator):
        return "the operator name holds a control character"
    return None


def _is_lang(lang: object) -> TypeGuard[str]:
    return isinstance(lang, str) and len(lang) <= 35 and _LANG.fullmatch(lang) is not None


def _lang_problem(source: object, target: object) -> str | None:
    if not _is_lang(source):
        return f"source_lang must be a language tag such as en, ru or uk, not {str(source)[:40]!r}"
    if not _is_lang(target):
        return f"target_lang must be a language tag such as en, ru or uk, not {str(target)[:40]!r}"
    if source.split("-")[0] == target.split("-")[0]:
        return f"a translation from {source} into {target} is no translation"
    return None


def _text_problem(text: object) -> str | None:
    if not isinstance(text, str) or not text.strip():
        return "the translation text is empty"
    if len(text) > MAX_TEXT:
        return f"the translation text is longer than {MAX_TEXT} characters"
    return None


def _digest_problem(digest: object, what: str) -> str | None:
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        return f"{what} must be a SHA-256 in 64 lowercase hex digits"
    return None


def _time(now: datetime) -> str:
    try:
        return format_time(now)
    except ValueError as exc:
        raise UsageError(f"now: {exc}") from None


def certify_translation(
    identity: Identity,
    *,
    envelope_id: str,
    envelope_digest: str,
    source_lang: str,
    target_lang: str,
    text: str,
    operator: str,
    now: datetime,
) -> bytes:
    """A certified translation of one message, signed by this terminal for ``operator``."""
    try:
        check_uuid7(envelope_id, "envelope_id")
    except SchemaViolation as exc:
        raise UsageError(str(exc)) from None
    problem = (
        _digest_problem(envelope_digest, "envelope_digest")
        or _lang_problem(source_lang, target_lang)
        or _text_problem(text)
        or _operator_problem(operator)
    )
    if problem is not None:
        raise UsageError(f"cannot certify this translation: {problem}")
    payload = canonical_bytes(
        {
            "envelope_digest": envelope_digest,
            "envelope_id": envelope_id,
            "operator": operator,
            "party": identity.party,
            "source_lang": source_lang,
            "target_lang": target_lang,
            "text": text,
            "translated_at": _time(now),
            "type": TRANSLATION_TYPE,
            "v": 1,
        }
    )
    return sign_dsse(
        CERTIFIED_TRANSLATION_TYPE, payload, identity.card.key_id, identity.sign_ed25519
    )


def countersign_translation(
    identity: Identity,
    translation: bytes,
    *,
    operator: str,
    now: datetime,
    lookup: CardLookup | None = None,
) -> bytes:
    """A second operator's countersignature of a certified translation.

    The translation is verified first (by default it must be signed by this
    terminal; pass ``lookup`` to countersign another terminal's). Refuses
    (``UsageError``) when ``operator`` is the translator, or when ``now`` is
    before the translation was made.
    """
    own: Mapping[str, IdentityCard] = {identity.party: identity.card}
    certified = read_certified_translation(translation, lookup or own.get)
    problem = _operator_problem(operator)
    if problem is not None:
        raise UsageError(f"cannot countersign: {problem}")
    if same_operator(certified.party, certified.operator, identity.party, operator):
        raise UsageError(
            f"{operator} made this translation and cannot countersign it: "
            "a second operator must check it"
        )
    if now < certified.translated_at:
        raise UsageError(
            f"cannot countersign at {_time(now)} a translation made at "
            f"{format_time(certified.translated_at)}"
        )
    payload = canonical_bytes(
        {
            "countersigned_at": _time(now),
            "envelope_id": certified.envelope_id,
            "operator": operator,
            "party": identity.party,
            "translation_digest": certified.digest,
            "type": COUNTERSIGNATURE_PAYLOAD_TYPE,
            "v": 1,
        }
    )
    return sign_dsse(COUNTERSIGNATURE_TYPE, payload, identity.card.key_id, identity.sign_ed25519)


def _verified_payload(
    data: bytes,
    lookup: CardLookup,
    *,
    payload_type: str,
    inner_type: str,
    max_size: int,
    what: str,
    time_key: str,
) -> tuple[dict[str, JSONValue], str, datetime]:
    """Parse, check the version and the signer, verify; (payload, party, signed time)."""
    dsse = parse_dsse(data, payload_type=payload_type, max_size=max_size, what=what)
    obj = require_object(parse_canonical(dsse.payload, what=f"{what} payload"), what)
    version = obj.get("v")
    if type(version) is not int or version != 1 or obj.get("type") != inner_type:
        raise UnknownVersion(f"the {what} is not a {inner_type}")
    party = check_party_id(obj.get("party"), f"{what} party")
    card = lookup(party)
    if card is None or card.party != party:
        raise UnknownSender(f"no pinned card for {party}, who signed this {what}")
    if dsse.key_id != card.key_id or not card.verify_ed25519(
        dsse.signature, pae(payload_type, dsse.payload)
    ):
        raise InvalidSignature(f"the signature of {party} on this {what} does not verify")
    when = parse_time(obj.get(time_key), f"{what} {time_key}")
    if not card.valid_at(when):
        raise InvalidSignature(
            f"the {what} by {party} is dated {format_time(when)}, outside the validity of "
            f"{party}'s card ({format_time(card.valid_from)} to {format_time(card.valid_until)})"
        )
    return obj, party, when


def read_certified_translation(data: bytes, lookup: CardLookup) -> CertifiedTranslation:
    """Verify a certified translation's signature and fields.

    Whether it translates a message the reader holds (``envelope_id`` and
    ``envelope_digest``) is for the caller, who holds the messages.
    """
    what = "certified translation"
    obj, party, when = _verified_payload(
        data,
        lookup,
        payload_type=CERTIFIED_TRANSLATION_TYPE,
        inner_type=TRANSLATION_TYPE,
        max_size=MAX_TRANSLATION_BYTES,
        what=what,
        time_key="translated_at",
    )
    require_keys(obj, what, _TRANSLATION_KEYS)
    problem = (
        _digest_problem(obj["envelope_digest"], "envelope_digest")
        or _lang_problem(obj["source_lang"], obj["target_lang"])
        or _text_problem(obj["text"])
        or _operator_problem(obj["operator"])
    )
    if problem is not None:
        raise SchemaViolation(f"the {what} by {party}: {problem}")
    return CertifiedTranslation(
        party=party,
        operator=require_str(obj, "operator", what, max_len=MAX_OPERATOR),
        envelope_id=check_uuid7(obj["envelope_id"], f"{what} envelope_id"),
        envelope_digest=require_str(obj, "envelope_digest", what, max_len=64),
        source_lang=require_str(obj, "source_lang", what, max_len=35),
        target_lang=require_str(obj, "target_lang", what, max_len=35),
        text=require_str(obj, "text", what, max_len=MAX_TEXT),
        translated_at=when,
        raw=data,
        digest=hashlib.sha256(data).hexdigest(),
    )


def read_countersignature(
    data: bytes, translation: CertifiedTranslation, lookup: CardLookup
) -> Countersignature:
    """Verify a countersignature of ``translation`` by an operator other than the translator."""
    what = "translation countersignature"
    obj, party, when = _verified_payload(
        data,
        lookup,
        payload_type=COUNTERSIGNATURE_TYPE,
        inner_type=COUNTERSIGNATURE_PAYLOAD_TYPE,
        max_size=MAX_COUNTERSIGNATURE_BYTES,
        what=what,
        time_key="countersigned_at",
    )
    require_keys(obj, what, _COUNTERSIGNATURE_KEYS)
    problem = _digest_problem(obj["translation_digest"], "translation_digest") or (
        _operator_problem(obj["operator"])
    )
    if problem is not None:
        raise SchemaViolation(f"the {what} by {party}: {problem}")
    operator = require_str(obj, "operator", what, max_len=MAX_OPERATOR)
    envelope_id = check_uuid7(obj["envelope_id"], f"{what} envelope_id")
    named = require_str(obj, "translation_digest", what, max_len=64)
    if named != translation.digest or envelope_id != translation.envelope_id:
        raise VerificationError(
            f"the {what} by {operator} ({party}) is for translation {named} of message "
            f"{envelope_id}, not translation {translation.digest} of message "
            f"{translation.envelope_id}"
        )
    if same_operator(translation.party, translation.operator, party, operator):
        raise VerificationError(
            f"the {what} is by {operator} ({party}), who made the translation: "
            "a countersignature must be a second operator's"
        )
    if when < translation.translated_at:
        raise VerificationError(
            f"the {what} by {operator} ({party}) is dated {format_time(when)}, before the "
            f"translation it countersigns ({format_time(translation.translated_at)})"
        )
    return Countersignature(
        party=party,
        operator=operator,
        envelope_id=envelope_id,
        translation_digest=named,
        countersigned_at=when,
        raw=data,
        digest=hashlib.sha256(data).hexdigest(),
    )
