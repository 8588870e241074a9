"""Sealing and opening envelopes, and one test per way an envelope is refused."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parley.core.canonical import MAX_SAFE_INTEGER, canonical_bytes
from parley.core.dsse import pae, sign_dsse
from parley.core.encoding import format_time, uuid7
from parley.core.envelope import (
    ENVELOPE_PAYLOAD_TYPE,
    KINDS,
    PRECEDENCES,
    Content,
    Limits,
    envelope_digest,
    open_envelope,
    read_envelope,
    seal_envelope,
)
from parley.core.identity import Identity, IdentityCard
from parley.errors import (
    BodyTooLarge,
    DecryptionFailed,
    DuplicateKey,
    FloatNotAllowed,
    IntegerOutOfRange,
    InvalidSignature,
    MissingSignature,
    NonCanonicalJSON,
    NotARecipient,
    RemoteError,
    SchemaViolation,
    TimestampInFuture,
    UnknownKind,
    UnknownSender,
    UnknownVersion,
    UsageError,
)
from tests.scale import scaled

CHANNEL = "HOTLINE"
Lookup = Callable[[str], IdentityCard | None]


def _text(text: str = "Request immediate contact.", **kwargs: Any) -> Content:
    return Content(lang="en", operator="maj.smith", body={"text": text}, **kwargs)


def _seal(
    sender: Identity,
    recipients: Sequence[Identity],
    now: datetime,
    *,
    content: Content | None = None,
    kind: str = "text",
    precedence: str = "IMMEDIATE",
    seq: int = 1,
    exercise: bool = False,
    created_at: datetime | None = None,
) -> bytes:
    return seal_envelope(
        sender,
        [r.card for r in recipients],
        envelope_id=uuid7(now),
        channel=CHANNEL,
        seq=seq,
        created_at=now if created_at is None else created_at,
        precedence=precedence,
        kind=kind,
        content=content or _text(),
        exercise=exercise,
    )


def _outer(raw: bytes) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(raw)
    return result


def _payload_bytes(raw: bytes) -> bytes:
    return base64.b64decode(_outer(raw)["payload"])


def _payload(raw: bytes) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(_payload_bytes(raw))
    return result


def _sign(signer: Identity, payload: bytes, key_id: str | None = None) -> bytes:
    """A DSSE envelope over ``payload`` with a valid signature by ``signer``."""
    return sign_dsse(
        ENVELOPE_PAYLOAD_TYPE,
        payload,
        signer.card.key_id if key_id is None else key_id,
        signer.sign_ed25519,
    )


def _resign(signer: Identity, raw: bytes, change: Callable[[dict[str, Any]], object]) -> bytes:
    """``raw`` with its payload changed by ``change`` and properly re-signed."""
    payload = _payload(raw)
    change(payload)
    return _sign(signer, canonical_bytes(payload))


def _with_outer(raw: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    outer = _outer(raw)
    change(outer)
    return canonical_bytes(outer)


# --------------------------------------------------------------------------
# Round trips


def test_text_round_trip(
    us_eucom: Identity, ru_gs: Identity, lookup: Lookup, now: datetime
) -> None:
    content = _text("Проверка связи / radio check", salt=bytes(range(16)))
    raw = _seal(us_eucom, [ru_gs], now, content=content, seq=7)
    opened = open_envelope(raw, me=ru_gs, lookup=lookup, now=now)
    assert opened.content == content
    assert opened.content.body == {"text": "Проверка связи / radio check"}
    assert opened.raw == raw
    header = opened.header
    assert header.sender == "US-EUCOM"
    assert header.recipients == ("RU-GS",)
    assert header.channel == CHANNEL
    assert header.seq == 7
    assert header.created_at == now
    assert header.kind == "text"
    assert header.precedence == "IMMEDIATE"
    assert header.exercise is False
    assert header.content_digest == hashlib.sha256(content.to_bytes()).hexdigest()
    assert header.digest == hashlib.sha256(raw).hexdigest() == envelope_digest(raw)


def test_form_round_trip(
    us_eucom: Identity, ru_gs: Identity, lookup: Lookup, now: datetime
) -> None:
    form = {"form": {"type": "NOTAM", "fields": {"area": "BLACK SEA", "radius_nm": 40}}}
    content = Content(lang="en", operator="lt.jones", body=form)
    raw = _seal(us_eucom, [ru_gs], now, content=content, kind="form")
    opened = open_envelope(raw, me=ru_gs, lookup=lookup, now=now)
    assert opened.header.kind == "form"
    assert opened.content.body == form
    assert opened.content.operator == "lt.jones"


def test_envelope_is_canonical_dsse_with_the_documented_payload(
    us_eucom: Identity, ru_gs: Identity, now: datetime
) -> None:
    raw = _seal(us_eucom, [ru_gs], now)
    outer = _outer(raw)
    assert canonical_bytes(outer) == raw
    assert outer["payloadType"] == "application/vnd.parley.envelope.v1+json"
    assert outer["signatures"][0]["keyid"] == us_eucom.card.key_id
    payload = _payload_bytes(raw)
    signature = base64.b64decode(outer["signatures"][0]["sig"])
    assert us_eucom.card.verify_ed25519(signature, pae(ENVELOPE_PAYLOAD_TYPE, payload))
    fields = _payload(raw)
    assert set(fields) == {
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
    }
    assert fields["v"] == 1
    assert fields["created_at"] == "2026-02-05T12:00:00.000Z"
    assert set(fields["ciphertexts"]) == {"RU-GS", "US-EUCOM"}


def test_plaintext_is_not_in_the_envelope(
    us_eucom: Identity, ru_gs: Identity, now: datetime
) -> None:
    secret = "launch window 0400Z"
    raw = _seal(us_eucom, [ru_gs], now, content=_text(secret))
    assert secret.encode() not in raw
    assert secret.encode() not in _payload_bytes(raw)


def test_several_recipients_and_the_sender_can_each_open(
    us_eucom: Identity, ru_gs: Identity, ua_gs: Identity, lookup: Lookup, now: datetime
) -> None:
    content = _text("to both")
    raw = _seal(us_eucom, [ua_gs, ru_gs], now, content=content)
    for reader in (ru_gs, ua_gs, us_eucom):
        opened = open_envelope(raw, me=reader, lookup=lookup, now=now)
        assert opened.content == content
        assert opened.header.recipients == ("RU-GS", "UA-GS")


@pytest.mark.parametrize("exercise", [True, False])
def test_exercise_flag_is_signed_and_kept(
    us_eucom: Identity, ru_gs: Identity, lookup: Lookup, now: datetime, exercise: bool
) -> None:
    raw = _seal(us_eucom, [ru_gs], now, exercise=exercise)
    assert _payload(raw)["exercise"] is exercise
    assert open_envelope(raw, me=ru_gs, lookup=lookup, now=now).header.exercise is exercise


def test_exercise_flag_cannot_be_flipped_in_transit(
    us_eucom: Identity, ru_gs: Identity, lookup: Lookup, now: datetime
) -> None:
    raw = _seal(us_eucom, [ru_gs], now, exercise=True)
    payload = _payload(raw)
    payload["exercise"] = False

    def swap_payload(outer: dict[str, Any]) -> None:
        outer["payload"] = base64.b64encode(canonical_bytes(payload)).decode()

    with pytest.raises(InvalidSignature, match="does not verify"):
        open_envelope(_with_outer(raw, swap_payload), me=ru_gs, lookup=lookup, now=now)


@pytest.mark.parametrize("precedence", PRECEDENCES)
def test_every_precedence(
    us_eucom: Identity, ru_gs: Identity, lookup: Lookup, now: datetime, precedence: str
) -> None:
    raw = _seal(us_eucom, [ru_gs], now, precedence=precedence)
    assert open_envelope(raw, me=ru_gs, lookup=lookup, now=now).header.precedence == precedence


def test_precedences_and_kinds_are_as_specified() -> None:
    assert PRECEDENCES == ("FLASH", "IMMEDIATE", "PRIORITY", "ROUTINE")
    assert set(KINDS) == {"text", "form", "ack", "test", "service", "key"}


def test_read_envelope_verifies_without_decrypting(
    us_eucom: Identity, ru_gs: Identity, lookup: Lookup, now: datetime
) -> None:
    # An auditor without keys reads a stored envelope, whatever its age.
    raw = _seal(us_eucom, [ru_gs], now - timedelta(days=300))
    header = read_envelope(raw, lookup)
    assert header.sender == "US-EUCOM"
    assert set(header.ciphertexts) == {"RU-GS", "US-EUCOM"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"precedence": "URGENT"}, "precedence must be one of"),
        ({"kind": "telegram"}, "kind must be one of"),
        ({"content": Content(lang="en", operator="x", body={"form": {}})}, "exactly the field"),
    ],
)
def test_sealing_refuses_bad_arguments(
    us_eucom: Identity, ru_gs: Identity, now: datetime, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises((UsageError, SchemaViolation), match=message):
        _seal(us_eucom, [ru_gs], now, **kwargs)


def test_sealing_needs_recipients_other_than_the_sender(
    us_eucom: Identity, ru_gs: Identity, now: datetime
) -> None:
    with pytest.raises(UsageError, match="at least one recipient"):
        _seal(us_eucom, [], now)
    with pytest.raises(UsageError, match="sender cannot be one of the recipients"):
        _seal(us_eucom, [ru_gs, us_eucom], now)


# --------------------------------------------------------------------------
# One test per rejection class


def test_duplicate_key_in_a_properly_signed_payload(
    us_eucom: Identity, ru_gs: Identity, lookup: Lookup, now: datetime
) -> None:
    payload = _payload_bytes(_seal(us_eucom, [ru_gs], now))
    assert payload.startswith(b'{"channel":"HOTLINE",')
    doubled = payload.replace(b'{"channel":"HOTLINE",', b'{"channel":"HOTLINE","channel":"X",', 1)
    raw = _sign(us_eucom, doubled)
    with pytest.raises(DuplicateKey, match="'channel' appears twice"):
        open_envelope(raw, me=ru_gs, lookup=lookup, now=now)


def test_float_in_a_properly_signed_payload(
    us_eucom: Identity, ru_gs: Identity, lookup: Lookup, now: datetime
) -> None:
    payload = _payload_bytes(_seal(us_eucom, [ru_gs], now))
    assert b'"seq":1,' in payload
    raw = _sign(us_eucom, payload.replace(b'"seq":1,', b'"seq":1.0,'))
    with pytest.raises(FloatNotAllowed, match=r"the number 1\.0 is not an integer"):
        open_envelope(raw, me=ru_gs, lookup=lookup, now=now)


@pytest.mark.parametrize("seq", [MAX_SAFE_INTEGER + 1, -(MAX_SAFE_INTEGER + 1), 10**30])
def test_integer_out_of_range_in_a_properly_signed_payload(
    us_eucom: Identity, ru_gs: Identity, lookup: Lookup, now: datetime, seq: int
) -> None:
    payload = _payload_bytes(_seal(us_eucom, [ru_gs], now))
    raw = _sign(us_eucom, payload.replace(b'"seq":1,', b'"seq":%d,' % seq))
    with pytest.raises(IntegerOutOfRange, match=str(seq)[:16]):
        open_envelope(raw, me=ru_gs, lookup=lookup, now=now)


def test_largest_safe_sequence_number_is_accepted(
    us_eucom: Identity, ru_gs: Identity, lookup: Lookup, now: datetime
) -> None:
    raw = _seal(us_eucom, [ru_gs], now, seq=MAX_SAFE_INTEGER)
    assert open_envelope(raw, me=ru_gs, lookup=lookup, now=now).header.seq == MAX_SAFE_INTEGER


def test_non_canonical_properly_signed_payload(
    us_eucom: Identity, ru_gs: Identity, lookup: Lookup, now: datetime
) -> None:
    pretty = json.dumps(_payload(_seal(us_eucom, [ru_gs], now)), indent=2).encode()
    raw = _sign(us_eucom, pretty)
    with pytest.raises(NonCanonicalJSON, match="envelope payload is valid JSON but not in RFC"):
        open_envelope(raw, me=ru_gs, lookup=lookup, now=now)


def test_non_canonical_outer_envelope(
    us_eucom: Identity, ru_gs: Identity, lookup: Lookup, now: datetime
) -> None:
    raw = _seal(us_eucom, [ru_gs], now)
    spaced = json.dumps(_outer(raw), sort_keys=True).encode()  # ", " and ": " separators
    assert spaced != raw
    with pytest.raises(NonCanonicalJSON, match="the envelope is valid JSON but not in RFC"):
        open_envelope(spaced, me=ru_gs, lookup=lookup, now=now)
    unsorted = json.dumps(dict(reversed(_outer(raw).items())), separators=(",", ":")).encode()
    with pytest.raises(NonCanonicalJSON, match="the envelope"):
        open_envelope(unsorted, me=ru_gs, lookup=lookup, now=now)


@pytest.mark.parametrize("version", [2, 0, "1", True])
def test_unknown_version_properly_signed(
    us_eucom: Identity, ru_gs: Identity, lookup: Lookup, now: datetime, version: object
) -> None:
    def set_version(payload: dict[str, Any]) -> None:
        payload["v"] = version

    raw = _resign(us_eucom, _seal(us_eucom, [ru_gs], now), set_version)
    with pytest.raises(UnknownVersion, match=f"envelope version {version} is not one"):
        open_envelope(raw, me=ru_gs, lookup=lookup, now=now)


def test_unknown_payload_type(
    us_eucom: Identity, ru_gs: Identity, lookup: Lookup, now: datetime
) -> None:
    payload = _payload_bytes(_seal(us_eucom, [ru_gs], now))
    v2 = "application/vnd.parley.envelope.v2+json"
    raw = sign_dsse(v2, payload, us_eucom.card.key_id, us_eucom.sign_ed25519)
    with pytest.raises(
        UnknownVersion, match=r"payload type 'application/vnd\.parley\.envelope\.v2"
    ):
        open_envelope(raw, me=ru_gs, lookup=lookup, now=now)


def test_unknown_kind_properly_signed(
    us_eucom: Identity, ru_gs: Identity, lookup: Lookup, now: datetime
) -> None:
    def set_kind(payload: dict[str, Any]) -> None:
        payload["kind"] = "telegram"

    raw = _resign(us_eucom, _seal(us_eucom, [ru_gs], now), set_kind)
    with pytest.raises(UnknownKind, match="envelope kind 'telegram' is not one of"):
        open_envelope(raw, me=ru_gs, lookup=lookup, now=now)


def test_body_over_the_limit(
    us_eucom: Identity, ru_gs: Identity, lookup: Lookup, now: datetime
) -> None:
    raw = _seal(us_eucom, [ru_gs], now, content=_text("x" * 5000))
    exact = Limits(max_body_bytes=len(raw))
    assert open_envelope(raw, me=ru_gs, lookup=lookup, now=now, limits=exact).content
    small = Limits(max_body_bytes=len(raw) - 1)
    with pytest.raises(BodyTooLarge, match=f"the envelope is {len(raw)} bytes; the limit is"):
        open_envelope(raw, me=ru_gs, lookup=lookup, now=now, limits=small)
    with pytest.raises(BodyTooLarge, match=str(len(raw) - 1)):
        read_envelope(raw, lookup, small)


def test_default_limit_refuses_a_huge_envelope(
    us_eucom: Identity, ru_gs: Identity, lookup: Lookup, now: datetime
) -> None:
    raw = _seal(us_eucom, [ru_gs], now, content=_text("x" * (2 * 1024 * 1024)))
    with pytest.raises(BodyTooLarge, match="the limit is 4194304 bytes"):
        open_envelope(raw, me=ru_gs, lookup=lookup, now=now)


def test_missing_signature(
    us_eucom: Identity, ru_gs: Identity, lookup: Lookup, now: datetime
) -> None:
    raw = _seal(us_eucom, [ru_gs], now)

    def drop(outer: dict[str, Any]) -> None:
        outer["signatures"] = []

    with pytest.raises(MissingSignature, match="the envelope carries no signature"):
        open_envelope(_with_outer(raw, drop), me=ru_gs, lookup=lookup, now=now)

    def empty(outer: dict[str, Any]) -> None:
        outer["signatures"][0]["sig"] = ""

    with pytest.raises(MissingSignature, match="signature entry is empty"):
        open_envelope(_with_outer(raw, empty), me=ru_gs, lookup=lookup, now=now)


def test_flipped_signature_byte(
    us_eucom: Identity, ru_gs: Identity, lookup: Lookup, now: datetime
) -> None:
    raw = _seal(us_eucom, [ru_gs], now)

    def flip(outer: dict[str, Any]) -> None:
        sig = bytearray(base64.b64decode(outer["signatures"][0]["sig"]))
        sig[17] ^= 0x40
        outer["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()

    with pytest.raises(InvalidSignature, match="signature of US-EUCOM on this envelope does not"):
        open_envelope(_with_outer(raw, flip), me=ru_gs, lookup=lookup, now=now)


def test_payload_signed_by_another_party_claiming_to_be_the_sender(
    us_eucom: Identity, ru_gs: Identity, ua_gs: Identity, lookup: Lookup, now: datetime
) -> None:
    # UA-GS forges an envelope "from US-EUCOM" to RU-GS.
    payload = _payload_bytes(_seal(us_eucom, [ru_gs], now))
    honest_key_id = _sign(ua_gs, payload)  # names UA-GS's own key
    with pytest.raises(InvalidSignature, match="not the pinned key of US-EUCOM"):
        open_envelope(honest_key_id, me=ru_gs, lookup=lookup, now=now)
    lying_key_id = _sign(ua_gs, payload, key_id=us_eucom.card.key_id)
    with pytest.raises(InvalidSignature, match="signature of US-EUCOM on this envelope does not"):
        open_envelope(lying_key_id, me=ru_gs, lookup=lookup, now=now)


def test_unknown_sender(us_eucom: Identity, ru_gs: Identity, now: datetime) -> None:
    raw = _seal(us_eucom, [ru_gs], now)
    with pytest.raises(UnknownSender, match="no pinned card for the sender US-EUCOM"):
        open_envelope(raw, me=ru_gs, lookup=lambda party: None, now=now)
    with pytest.raises(UnknownSender, match="US-EUCOM"):
        read_envelope(raw, lambda party: None)


def test_not_a_recipient(
    us_eucom: Identity, ru_gs: Identity, ua_gs: Identity, lookup: Lookup, now: datetime
) -> None:
    raw = _seal(us_eucom, [ru_gs], now)
    with pytest.raises(NotARecipient, match="is addressed to RU-GS, not to UA-GS"):
        open_envelope(raw, me=ua_gs, lookup=lookup, now=now)


def test_ciphertexts_swapped_between_envelopes(
    us_eucom: Identity, ru_gs: Identity, lookup: Lookup, now: datetime
) -> None:
    # Same sender, recipient and content digest: only the envelope ids differ,
    # and HPKE's info binds the ciphertext to its envelope id.
    content = _text("same words")
    first = _seal(us_eucom, [ru_gs], now, content=content)
    second = _seal(us_eucom, [ru_gs], now, content=content)
    other_ciphertext = _payload(second)["ciphertexts"]["RU-GS"]

    def swap(payload: dict[str, Any]) -> None:
        payload["ciphertexts"]["RU-GS"] = other_ciphertext

    raw = _resign(us_eucom, first, swap)
    assert read_envelope(raw, lookup).sender == "US-EUCOM"  # the signature is valid
    with pytest.raises(
        DecryptionFailed, match=r"ciphertext for RU-GS in envelope .* does not open"
    ):
        open_envelope(raw, me=ru_gs, lookup=lookup, now=now)


def test_ciphertext_transplanted_between_recipients(
    us_eucom: Identity, ru_gs: Identity, ua_gs: Identity, lookup: Lookup, now: datetime
) -> None:
    raw = _seal(us_eucom, [ru_gs, ua_gs], now)

    def transplant(payload: dict[str, Any]) -> None:
        payload["ciphertexts"]["UA-GS"] = payload["ciphertexts"]["RU-GS"]

    forged = _resign(us_eucom, raw, transplant)
    with pytest.raises(DecryptionFailed, match="ciphertext for UA-GS"):
        open_envelope(forged, me=ua_gs, lookup=lookup, now=now)
    # RU-GS's own, untouched ciphertext still opens.
    assert open_envelope(forged, me=ru_gs, lookup=lookup, now=now).content


def test_content_not_matching_the_signed_digest(
    us_eucom: Identity, ru_gs: Identity, lookup: Lookup, now: datetime
) -> None:
    def redigest(payload: dict[str, Any]) -> None:
        payload["content_digest"] = hashlib.sha256(b"something else was said").hexdigest()

    raw = _resign(us_eucom, _seal(us_eucom, [ru_gs], now), redigest)
    with pytest.raises(DecryptionFailed, match="does not match the digest US-EUCOM signed"):
        open_envelope(raw, me=ru_gs, lookup=lookup, now=now)


def test_truncated_ciphertext(
    us_eucom: Identity, ru_gs: Identity, lookup: Lookup, now: datetime
) -> None:
    def truncate(payload: dict[str, Any]) -> None:
        payload["ciphertexts"]["RU-GS"] = base64.b64encode(b"\x00" * 10).decode()

    raw = _resign(us_eucom, _seal(us_eucom, [ru_gs], now), truncate)
    with pytest.raises(DecryptionFailed, match="does not open"):
        open_envelope(raw, me=ru_gs, lookup=lookup, now=now)


def test_timestamp_too_far_in_the_future(
    us_eucom: Identity, ru_gs: Identity, lookup: Lookup, now: datetime
) -> None:
    limits = Limits(clock_skew=timedelta(minutes=10))
    edge = _seal(us_eucom, [ru_gs], now, created_at=now + timedelta(minutes=10))
    assert open_envelope(edge, me=ru_gs, lookup=lookup, now=now, limits=limits).content
    late = now + timedelta(minutes=10, milliseconds=1)
    raw = _seal(us_eucom, [ru_gs], now, created_at=late)
    with pytest.raises(TimestampInFuture, match=f"dated {format_time(late)}, more than 0:10:00"):
        open_envelope(raw, me=ru_gs, lookup=lookup, now=now, limits=limits)
    # A terminal with a wider tolerance accepts it.
    wide = Limits(clock_skew=timedelta(minutes=11))
    assert open_envelope(raw, me=ru_gs, lookup=lookup, now=now, limits=wide).content


def test_message_six_hours_old_is_accepted(
    us_eucom: Identity, ru_gs: Identity, lookup: Lookup, now: datetime
) -> None:
    raw = _seal(us_eucom, [ru_gs], now, created_at=now - timedelta(hours=6))
    opened = open_envelope(raw, me=ru_gs, lookup=lookup, now=now)
    assert opened.header.created_at == now - timedelta(hours=6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.pop("seq"), "lacks the field"),
        (lambda p: p.update(extra=1), "unexpected field"),
        (lambda p: p.update(precedence="URGENT"), "precedence 'URGENT'"),
        (lambda p: p.update(recipients=[]), "1 to 64 recipients"),
        (lambda p: p.update(recipients=["RU-GS", "RU-GS"]), "sorted, distinct"),
        (lambda p: p.update(recipients=["RU-GS", "US-EUCOM"]), "exclude the sender"),
        (lambda p: p["ciphertexts"].pop("US-EUCOM"), "one ciphertext per recipient"),
        (lambda p: p.update(content_digest="AB" * 32), "64 lowercase hex"),
        (lambda p: p.update(id="not-a-uuid"), "envelope id is not a UUID"),
        (lambda p: p.update(seq=0), "seq must be at least 1"),
        (lambda p: p.update(created_at="2026-02-05T12:00:00Z"), "created_at must be a UTC time"),
        (lambda p: p.update(created_at="2026-02-30T12:00:00.000Z"), "not a real date"),
        # Fullwidth digits: the same moment spelled another way.
        (
            lambda p: p.update(created_at="\uff12\uff10\uff12\uff16-02-05T12:00:00.000Z"),
            "created_at must be a UTC time",
        ),
        (lambda p: p.update(exercise="no"), "exercise must be true or false"),
        (lambda p: p.update(channel="hotline"), "envelope channel must be a party id"),
    ],
)
def test_properly_signed_but_malformed_payload(
    us_eucom: Identity,
    ru_gs: Identity,
    lookup: Lookup,
    now: datetime,
    change: Callable[[dict[str, Any]], object],
    message: str,
) -> None:
    raw = _resign(us_eucom, _seal(us_eucom, [ru_gs], now), change)
    with pytest.raises(SchemaViolation, match=message):
        open_envelope(raw, me=ru_gs, lookup=lookup, now=now)


def test_resign_helper_alone_changes_nothing(
    us_eucom: Identity, ru_gs: Identity, lookup: Lookup, now: datetime
) -> None:
    # The control for the re-signed forgeries above.
    raw = _seal(us_eucom, [ru_gs], now)
    assert _resign(us_eucom, raw, lambda payload: None) == raw
    assert open_envelope(_resign(us_eucom, raw, lambda p: None), me=ru_gs, lookup=lookup, now=now)


# --------------------------------------------------------------------------
# Hostile input never escapes as anything but RemoteError

_FUZZ = settings(
    max_examples=scaled(150), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def _only_remote_errors(data: bytes, me: Identity, lookup: Lookup, now: datetime) -> None:
    with contextlib.suppress(RemoteError):
        open_envelope(data, me=me, lookup=lookup, now=now)


@pytest.fixture(scope="module")
def valid_envelope(us_eucom: Identity, ru_gs: Identity, ua_gs: Identity, now: datetime) -> bytes:
    return _seal(us_eucom, [ru_gs, ua_gs], now, content=_text("fuzz me"))


@_FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_raise_only_remote_errors(
    ru_gs: Identity, lookup: Lookup, now: datetime, data: bytes
) -> None:
    _only_remote_errors(data, ru_gs, lookup, now)


@st.composite
def _mutations(draw: st.DrawFn, raw: bytes) -> bytes:
    data = bytearray(raw)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        operation = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "replace"]))
        at = draw(st.integers(min_value=0, max_value=max(len(data) - 1, 0)))
        if operation == "flip" and data:
            data[at] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif operation == "truncate":
            del data[at:]
        elif operation == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif operation == "delete":
            del data[at : at + draw(st.integers(min_value=1, max_value=8))]
        elif data:
            data[at] = draw(st.sampled_from(b'{}[]",:0123456789-eE.\\ \x00\xff'))
    return bytes(data)


@_FUZZ
@given(st.data())
def test_mutated_envelopes_raise_only_remote_errors(
    valid_envelope: bytes, ru_gs: Identity, lookup: Lookup, now: datetime, data: st.DataObject
) -> None:
    mutated = data.draw(_mutations(valid_envelope), label="mutated")
    _only_remote_errors(mutated, ru_gs, lookup, now)


# JSON values to put into a payload that the sender then signs properly: the
# checks after the signature must hold against an authenticated but careless
# (or hostile) peer too.
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
    | st.text(max_size=80)
    | st.sampled_from(["RU-GS", "US-EUCOM", "UA-GS", "text", "FLASH", "AAAA", "0" * 64]),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["RU-GS", "US-EUCOM", "a"]), children, max_size=3)
    ),
    max_leaves=8,
)


@_FUZZ
@given(st.data())
def test_properly_signed_mutated_payloads_raise_only_remote_errors(
    valid_envelope: bytes,
    us_eucom: Identity,
    ru_gs: Identity,
    lookup: Lookup,
    now: datetime,
    data: st.DataObject,
) -> None:
    payload = _payload(valid_envelope)
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        key = data.draw(st.sampled_from([*sorted(payload), "new"]))
        if data.draw(st.booleans()):
            payload.pop(key, None)
        else:
            payload[key] = data.draw(_json_values)
    if data.draw(st.booleans()):
        signed = canonical_bytes(payload)
    else:  # the payload bytes themselves mangled, then signed
        signed = data.draw(_mutations(canonical_bytes(payload)))
    _only_remote_errors(_sign(us_eucom, signed), ru_gs, lookup, now)
