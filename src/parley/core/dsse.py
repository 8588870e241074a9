"""DSSE (Dead Simple Signing Envelope) with Ed25519, over canonical JSON.

The signature covers the DSSE pre-authentication encoding (PAE) of the exact
payload bytes. The envelope itself is serialised as canonical JSON too, so
the bytes that travel, the bytes that are logged and the bytes that are
verified are one and the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from parley.core.canonical import (
    canonical_bytes,
    parse_canonical,
    require_keys,
    require_list,
    require_object,
    require_str,
)
from parley.core.encoding import b64decode, b64encode
from parley.errors import MissingSignature, SchemaViolation, UnknownVersion

__all__ = ["SignedEnvelope", "pae", "parse_dsse", "sign_dsse"]


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(type_bytes), type_bytes, len(payload), payload)


@dataclass(frozen=True, slots=True)
class SignedEnvelope:
    """A parsed but not yet verified DSSE envelope."""

    payload_type: str
    payload: bytes
    key_id: str
    signature: bytes
    raw: bytes


def sign_dsse(
    payload_type: str, payload: bytes, key_id: str, sign: Callable[[bytes], bytes]
) -> bytes:
    signature = sign(pae(payload_type, payload))
    return canonical_bytes(
        {
            "payload": b64encode(payload),
            "payloadType": payload_type,
            "signatures": [{"keyid": key_id, "sig": b64encode(signature)}],
        }
    )


def parse_dsse(data: bytes, *, payload_type: str, max_size: int, what: str) -> SignedEnvelope:
    """Parse the DSSE wrapper strictly; the caller verifies the signature."""
    outer = require_object(parse_canonical(data, max_size=max_size, what=what), what)
    require_keys(outer, what, {"payload", "payloadType", "signatures"})
    found_type = require_str(outer, "payloadType", what, max_len=200)
    if found_type != payload_type:
        raise UnknownVersion(
            f"the {what} has payload type {found_type!r}; this terminal reads {payload_type!r}"
        )
    signatures = require_list(outer, "signatures", what)
    if not signatures:
        raise MissingSignature(f"the {what} carries no signature")
    if len(signatures) != 1:
        raise SchemaViolation(f"the {what} must carry exactly one signature")
    sig = require_object(signatures[0], f"{what} signature")
    if "sig" not in sig or sig.get("sig") == "":
        raise MissingSignature(f"the {what} signature entry is empty")
    require_keys(sig, f"{what} signature", {"keyid", "sig"})
    key_id = require_str(sig, "keyid", f"{what} signature", max_len=128)
    signature = b64decode(sig["sig"], f"{what} signature")
    payload = b64decode(outer["payload"], f"{what} payload")
    return SignedEnvelope(found_type, payload, key_id, signature, data)
