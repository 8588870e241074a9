"""Small, strict encodings shared by the protocol: base64, timestamps, ids.

Everything here is pure. Decoders refuse every alternative spelling (base64
without padding, lowercase ``z``, timestamps with offsets) so that a value
has exactly one textual form inside signed bytes.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from parley.errors import SchemaViolation

__all__ = [
    "PARTY_ID_PATTERN",
    "Clock",
    "b64decode",
    "b64encode",
    "check_party_id",
    "check_uuid7",
    "format_time",
    "parse_time",
    "uuid7",
]

Clock = Callable[[], datetime]
"""A function returning the current time as an aware UTC datetime."""

PARTY_ID_PATTERN = re.compile(r"[A-Z0-9][A-Z0-9._-]{0,62}")
# ASCII digits only: ``\d`` alone would also accept other scripts' digits
# (which ``strptime`` reads), a second spelling of the same signed time.
_TIME_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z", re.ASCII)


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: object, what: str) -> bytes:
    """Decode standard padded base64, refusing any non-canonical spelling."""
    if not isinstance(text, str):
        raise SchemaViolation(f"{what} must be a base64 string")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise SchemaViolation(f"{what} is not valid base64") from None
    # With validate=True, the only other spelling of the same bytes sets unused
    # bits in the last group: re-encoding that group is enough to refuse it.
    rest = len(raw) % 3
    if rest and base64.b64encode(raw[-rest:]) != text[-4:].encode("ascii"):
        raise SchemaViolation(f"{what} is not in canonical base64 form")
    return raw


def format_time(moment: datetime) -> str:
    """UTC, millisecond precision, ``Z`` suffix: ``2026-02-05T12:00:00.000Z``."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_time(text: object, what: str) -> datetime:
    if not isinstance(text, str) or not _TIME_PATTERN.fullmatch(text):
        raise SchemaViolation(f"{what} must be a UTC time like 2026-02-05T12:00:00.000Z")
    try:
        # The pattern fixed the form; fromisoformat (C) only checks the calendar.
        return datetime.fromisoformat(text[:-1]).replace(tzinfo=UTC)
    except ValueError:
        raise SchemaViolation(f"{what} is not a real date and time: {text}") from None


def check_party_id(value: object, what: str) -> str:
    if not isinstance(value, str) or not PARTY_ID_PATTERN.fullmatch(value):
        raise SchemaViolation(
            f"{what} must be a party id of capital letters, digits, '.', '_' or '-' "
            f"(such as US-EUCOM), not {str(value)[:70]!r}"
        )
    return value


def uuid7(now: datetime, rand: Callable[[int], bytes] = secrets.token_bytes) -> str:
    """A UUIDv7 (RFC 9562) for ``now``; the clock is the caller's.

    Written by hand because the libraries for UUIDv7 read the system clock,
    and the core takes its clock from the caller.
    """
    millis = int(now.timestamp() * 1000) & ((1 << 48) - 1)
    tail = bytearray(rand(10))
    tail[0] = 0x70 | (tail[0] & 0x0F)  # version 7 in the high nibble of byte 6
    tail[2] = 0x80 | (tail[2] & 0x3F)  # RFC 9562 variant in byte 8
    return str(uuid.UUID(bytes=millis.to_bytes(6, "big") + bytes(tail)))


def check_uuid7(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise SchemaViolation(f"{what} must be a UUID string")
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise SchemaViolation(f"{what} is not a UUID: {value[:40]!r}") from None
    if str(parsed) != value or parsed.version != 7:
        raise SchemaViolation(f"{what} must be a lowercase UUIDv7, not {value[:40]!r}")
    return value
