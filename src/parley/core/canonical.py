"""Strict RFC 8785 (JCS) canonical JSON: the only JSON Parley signs or accepts.

``canonical_bytes`` serialises a value; ``parse_canonical`` reads bytes from
the other party and refuses anything that is not exactly what
``canonical_bytes`` would have produced: duplicate keys, floats, integers
beyond +/-2^53, NaN/Infinity, invalid UTF-8, or any other spelling of the
same value. Because the bytes are the only representation, a signature over
them means one thing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, TypeAlias

import rfc8785

from parley.errors import (
    BodyTooLarge,
    DuplicateKey,
    FloatNotAllowed,
    IntegerOutOfRange,
    InvalidJSON,
    NonCanonicalJSON,
    SchemaViolation,
)

__all__ = [
    "MAX_SAFE_INTEGER",
    "JSONValue",
    "canonical_bytes",
    "parse_canonical",
    "require_bool",
    "require_int",
    "require_keys",
    "require_list",
    "require_object",
    "require_str",
]

MAX_SAFE_INTEGER = 2**53 - 1

JSONValue: TypeAlias = Any
"""A value made of dict, list, str, int, bool and None (no floats)."""


def canonical_bytes(value: JSONValue) -> bytes:
    """Serialise ``value`` as RFC 8785 canonical JSON (floats are refused)."""
    if _check_value(value):
        return _stdlib_canonical(value)
    return rfc8785.dumps(value)


def _stdlib_canonical(value: JSONValue) -> bytes:
    """The standard library's C encoder, for values where its output is RFC 8785's.

    With sorted keys, no whitespace and no ASCII escaping, ``json.dumps``
    writes exactly what RFC 8785 prescribes for strings (the same short
    escapes and lowercase ``\\u00xx`` for other control characters),
    integers, booleans and null, and sorts keys the same way as long as no
    key holds a character at or above U+D800 (where UTF-16 order, which
    RFC 8785 uses, and code-point order part). ``_check_value`` makes sure
    of that; a lone surrogate fails the UTF-8 encoding and falls back to
    ``rfc8785``, which refuses it with its own error.
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return rfc8785.dumps(value)


def _check_value(value: JSONValue) -> bool:
    """Refuse floats and unsafe integers; say whether the C encoder is exact for ``value``."""
    if value is None or isinstance(value, (bool, str)):
        return True
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise IntegerOutOfRange(f"integer {value} is beyond +/-2^53")
        return True
    if isinstance(value, float):
        raise FloatNotAllowed(f"float {value!r} cannot be signed; use an integer or a string")
    if isinstance(value, Mapping):
        exact = type(value) is dict
        for k, v in value.items():
            if not (isinstance(k, str) and (k.isascii() or max(k) < "\ud800")):
                exact = False
            exact = _check_value(v) and exact
        return exact
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        exact = type(value) in (list, tuple)
        for v in value:
            exact = _check_value(v) and exact
        return exact
    raise TypeError(f"{type(value).__name__} is not a JSON value")


class _Pairs:
    """``object_pairs_hook``: refuses duplicate keys, notes keys the C encoder would misorder."""

    __slots__ = ("exact",)

    def __init__(self) -> None:
        self.exact = True

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise DuplicateKey(f"the key {key!r} appears twice in one object")
            if not key.isascii() and max(key) >= "\ud800":
                self.exact = False
            result[key] = value
        return result


def _refuse_float(text: str) -> Any:
    raise FloatNotAllowed(f"the number {text} is not an integer; Parley signs no floats")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 16:
        raise IntegerOutOfRange(f"the integer {text[:24]} is beyond +/-2^53")
    value = int(text)
    if abs(value) > MAX_SAFE_INTEGER:
        raise IntegerOutOfRange(f"the integer {text} is beyond +/-2^53")
    return value


def _refuse_constant(text: str) -> Any:
    raise InvalidJSON(f"{text} is not JSON")


def parse_canonical(data: bytes, *, max_size: int | None = None, what: str = "body") -> JSONValue:
    """Parse ``data`` as strict canonical JSON, or raise a ``MalformedInput``.

    ``what`` names the thing being parsed in error messages ("envelope
    payload", "receipt"...). The checks run in an order that gives the most
    specific reason: size first, then syntax, keys and numbers, then the
    exact canonical form.
    """
    if max_size is not None and len(data) > max_size:
        raise BodyTooLarge(f"the {what} is {len(data)} bytes; the limit is {max_size} bytes")
    if data.startswith(b"\xef\xbb\xbf"):
        raise NonCanonicalJSON(
            f"the {what} begins with a byte order mark, which canonical JSON never has"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJSON(f"the {what} is not valid UTF-8 (byte {exc.start})") from None
    pairs = _Pairs()
    try:
        value = json.loads(
            text,
            object_pairs_hook=pairs,
            parse_float=_refuse_float,
            parse_int=_bounded_int,
            parse_constant=_refuse_constant,
        )
    except (DuplicateKey, FloatNotAllowed, IntegerOutOfRange, InvalidJSON):
        raise
    except RecursionError:
        raise InvalidJSON(f"the {what} is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise InvalidJSON(f"the {what} is not JSON: {exc.msg} at byte {exc.pos}") from None
    try:
        # json.loads made only dicts, lists, strings, bounded ints, booleans and
        # None (floats and big integers were refused by its hooks): the C
        # encoder is exact unless a key needs UTF-16 ordering.
        expected = _stdlib_canonical(value) if pairs.exact else rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, RecursionError, UnicodeError) as exc:
        # UnicodeError: a lone surrogate escape (such as "\ud800") in an object
        # key, which rfc8785 sorts by its UTF-16 encoding before writing it.
        raise NonCanonicalJSON(f"the {what} cannot be canonicalised: {exc}") from None
    if expected != data:
        raise NonCanonicalJSON(
            f"the {what} is valid JSON but not in RFC 8785 canonical form "
            f"(first difference at byte {_first_difference(expected, data)})"
        )
    return value


def _first_difference(a: bytes, b: bytes) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


# Field accessors: schema checks with messages that name the field.


def require_object(value: JSONValue, what: str) -> dict[str, JSONValue]:
    if not isinstance(value, dict):
        raise SchemaViolation(f"{what} must be a JSON object")
    return value


def require_keys(
    obj: Mapping[str, JSONValue],
    what: str,
    required: AbstractSet[str],
    optional: AbstractSet[str] = frozenset(),
) -> None:
    missing = required - obj.keys()
    if missing:
        raise SchemaViolation(f"{what} lacks the field(s) {', '.join(sorted(missing))}")
    extra = obj.keys() - required - optional
    if extra:
        raise SchemaViolation(f"{what} has unexpected field(s) {', '.join(sorted(extra))}")


def require_str(obj: Mapping[str, JSONValue], key: str, what: str, *, max_len: int = 4096) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise SchemaViolation(f"{what}: {key} must be a string")
    if len(value) > max_len:
        raise SchemaViolation(f"{what}: {key} is longer than {max_len} characters")
    return value


def require_int(obj: Mapping[str, JSONValue], key: str, what: str, *, minimum: int = 0) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise SchemaViolation(f"{what}: {key} must be an integer")
    if value < minimum:
        raise SchemaViolation(f"{what}: {key} must be at least {minimum}")
    return value


def require_bool(obj: Mapping[str, JSONValue], key: str, what: str) -> bool:
    value = obj.get(key)
    if not isinstance(value, bool):
        raise SchemaViolation(f"{what}: {key} must be true or false")
    return value


def require_list(obj: Mapping[str, JSONValue], key: str, what: str) -> list[JSONValue]:
    value = obj.get(key)
    if not isinstance(value, list):
        raise SchemaViolation(f"{what}: {key} must be a list")
    return value
