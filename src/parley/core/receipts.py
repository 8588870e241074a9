"""Signed machine receipts.

A receipt is a DSSE envelope signed by the receiving terminal. It answers
one envelope and is cumulative per (channel, sender)::

    {"channel", "checkpoint", "envelope_digest", "envelope_id", "inclusion",
     "issued_at", "log_index", "missing", "receiver", "sender",
     "through_seq", "type", "v"}

* ``through_seq`` n: "I hold all of your sequence numbers 1..n";
* ``missing``: sequence numbers below the highest one seen that the receiver
  does not hold (a gap is reported, never papered over);
* ``envelope_digest``: SHA-256 of the exact bytes of the envelope answered;
* ``checkpoint``: the receiver's signed checkpoint, and ``inclusion``/
  ``log_index``: the proof that the envelope is in the receiver's log;
* ``rejection`` (present only in a negative receipt): ``{"code", "reason"}``,
  the receiver's refusal of the content (a form it does not know or finds
  invalid). The envelope is still logged and counted as delivered: the
  record shows what was sent, and why it was refused.

A human acknowledgement is not a receipt: it is an envelope of kind ``ack``
naming the operator who read the message.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from parley import merkle
from parley.core.canonical import (
    JSONValue,
    canonical_bytes,
    parse_canonical,
    require_int,
    require_keys,
    require_list,
    require_object,
    require_str,
)
from parley.core.checkpoint import Checkpoint, verify_checkpoint
from parley.core.dsse import pae, parse_dsse, sign_dsse
from parley.core.encoding import (
    b64decode,
    b64encode,
    check_party_id,
    check_uuid7,
    format_time,
    parse_time,
)
from parley.core.identity import Identity, IdentityCard
from parley.core.transcript import EntryType, entry_bytes
from parley.errors import (
    InvalidReceipt,
    InvalidSignature,
    SchemaViolation,
    UnknownSender,
    UnknownVersion,
    VerificationError,
)

__all__ = [
    "RECEIPT_PAYLOAD_TYPE",
    "Receipt",
    "Rejection",
    "issue_receipt",
    "read_receipt",
    "verify_receipt_inclusion",
    "verify_receipt_leaf",
]

RECEIPT_PAYLOAD_TYPE = "application/vnd.parley.receipt.v1+json"
RECEIPT_TYPE = "parley.receipt/v1"
MAX_RECEIPT_BYTES = 128 * 1024
MAX_MISSING_LISTED = 1000
MAX_REJECTION_REASON = 1000
_REJECTION_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a receiver refused an envelope's content (a negative receipt)."""

    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class Receipt:
    receiver: str
    sender: str
    channel: str
    envelope_id: str
    envelope_digest: str
    through_seq: int
    missing: tuple[int, ...]
    log_index: int
    inclusion: tuple[bytes, ...]
    checkpoint: Checkpoint
    issued_at: datetime
    raw: bytes
    rejection: Rejection | None = None
    #: The key id of the receiver's card that signed it (one of its chain).
    key_id: str = ""


def issue_receipt(
    receiver: Identity,
    *,
    sender: str,
    channel: str,
    envelope_id: str,
    envelope_digest: str,
    through_seq: int,
    missing: Sequence[int],
    log_index: int,
    inclusion: Sequence[bytes],
    checkpoint: Checkpoint,
    now: datetime,
    rejection: Rejection | None = None,
) -> bytes:
    fields: dict[str, JSONValue] = {}
    if rejection is not None:
        fields["rejection"] = {
            "code": rejection.code,
            "reason": "".join(c if c.isprintable() else "\ufffd" for c in rejection.reason)[
                :MAX_REJECTION_REASON
            ],
        }
    payload = canonical_bytes(
        {
            **fields,
            "channel": channel,
            "checkpoint": checkpoint.note,
            "envelope_digest": envelope_digest,
            "envelope_id": envelope_id,
            "inclusion": [b64encode(h) for h in inclusion],
            "issued_at": format_time(now),
            "log_index": log_index,
            "missing": list(missing)[:MAX_MISSING_LISTED],
            "receiver": receiver.party,
            "sender": sender,
            "through_seq": through_seq,
            "type": RECEIPT_TYPE,
            "v": 1,
        }
    )
    return sign_dsse(RECEIPT_PAYLOAD_TYPE, payload, receiver.card.key_id, receiver.sign_ed25519)


def read_receipt(data: bytes, lookup: Callable[[str], IdentityCard | None]) -> Receipt:
    """Verify a receipt's signature, its checkpoint and its inclusion proof.

    Whether the receipt answers an envelope that was really sent is for the
    caller (who holds the envelopes) to decide.
    """
    dsse = parse_dsse(
        data, payload_type=RECEIPT_PAYLOAD_TYPE, max_size=MAX_RECEIPT_BYTES, what="receipt"
    )
    obj = require_object(parse_canonical(dsse.payload, what="receipt payload"), "receipt")
    version = obj.get("v")
    if type(version) is not int or version != 1 or obj.get("type") != RECEIPT_TYPE:
        raise UnknownVersion("the receipt is not a parley.receipt/v1")
    receiver = check_party_id(obj.get("receiver"), "receipt receiver")
    card = lookup(receiver)
    if card is None or card.party != receiver:
        raise UnknownSender(f"no pinned card for {receiver}, who signed this receipt")
    signer = card.for_key(dsse.key_id)
    if signer is None or not signer.verify_ed25519(
        dsse.signature, pae(RECEIPT_PAYLOAD_TYPE, dsse.payload)
    ):
        raise InvalidSignature(f"the signature of {receiver} on this receipt does not verify")
    if signer.signs_until is not None:
        signer.check_signed_at(parse_time(obj.get("issued_at"), "receipt issued_at"), "the receipt")
    require_keys(
        obj,
        "receipt",
        {
            "channel",
            "checkpoint",
            "envelope_digest",
            "envelope_id",
            "inclusion",
            "issued_at",
            "log_index",
            "missing",
            "receiver",
            "sender",
            "through_seq",
            "type",
            "v",
        },
        optional={"rejection"},
    )
    rejection = None
    if "rejection" in obj:
        rejected = require_object(obj["rejection"], "receipt rejection")
        require_keys(rejected, "receipt rejection", {"code", "reason"})
        code = require_str(rejected, "code", "receipt rejection", max_len=64)
        if not _REJECTION_CODE.fullmatch(code):
            raise SchemaViolation("a receipt's rejection code must be a snake_case word")
        reason = require_str(rejected, "reason", "receipt rejection", max_len=MAX_REJECTION_REASON)
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in reason):
            raise SchemaViolation("a receipt's rejection reason holds a control character")
        rejection = Rejection(code, reason)
    checkpoint = verify_checkpoint(require_str(obj, "checkpoint", "receipt", max_len=65536), card)
    missing_raw = require_list(obj, "missing", "receipt")
    if len(missing_raw) > MAX_MISSING_LISTED or not all(
        isinstance(m, int) and not isinstance(m, bool) and m > 0 for m in missing_raw
    ):
        raise SchemaViolation("receipt 'missing' must list positive sequence numbers")
    inclusion_raw = require_list(obj, "inclusion", "receipt")
    if len(inclusion_raw) > 64:
        raise SchemaViolation("receipt inclusion proof is longer than any log allows")
    receipt = Receipt(
        receiver=receiver,
        sender=check_party_id(obj["sender"], "receipt sender"),
        channel=check_party_id(obj["channel"], "receipt channel"),
        envelope_id=check_uuid7(obj["envelope_id"], "receipt envelope_id"),
        envelope_digest=require_str(obj, "envelope_digest", "receipt", max_len=64),
        through_seq=require_int(obj, "through_seq", "receipt", minimum=0),
        missing=tuple(missing_raw),
        log_index=require_int(obj, "log_index", "receipt", minimum=0),
        inclusion=tuple(b64decode(h, "receipt inclusion hash") for h in inclusion_raw),
        checkpoint=checkpoint,
        issued_at=parse_time(obj["issued_at"], "receipt issued_at"),
        raw=data,
        rejection=rejection,
        key_id=dsse.key_id,
    )
    return receipt


def verify_receipt_inclusion(receipt: Receipt, envelope_raw: bytes) -> None:
    """Check that ``envelope_raw`` is in the receiver's log at the receipt's checkpoint."""
    verify_receipt_leaf(receipt, merkle.leaf_hash(entry_bytes(EntryType.ENVELOPE, envelope_raw)))


def verify_receipt_leaf(receipt: Receipt, leaf: bytes) -> None:
    """As ``verify_receipt_inclusion``, given the envelope's leaf hash.

    The leaf hash is the same in the sender's log and the receiver's: both
    log the same entry bytes.
    """
    try:
        merkle.verify_inclusion(
            leaf,
            receipt.log_index,
            receipt.checkpoint.size,
            receipt.inclusion,
            receipt.checkpoint.root,
        )
    except VerificationError as exc:
        raise InvalidReceipt(
            f"the receipt from {receipt.receiver} for envelope {receipt.envelope_id} "
            f"does not prove the envelope is in its log: {exc}"
        ) from None
