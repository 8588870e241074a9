"""Checkpoints and witness cosignatures in C2SP signed-note form.

A checkpoint (c2sp.org/tlog-checkpoint) is the note text::

    parley.transcript/US-EUCOM
    1234
    <base64 root hash>

signed by the log's owner twice, under the key name ``parley.transcript/<party>``:

* Ed25519, signature type ``0x01`` as in c2sp.org/signed-note;
* ML-DSA-65 (FIPS 204, empty context) over the same note text. Signed-note
  assigns no byte to an ML-DSA-65 signature (its only ML-DSA type, ``0x06``,
  is an ML-DSA-44 cosignature over another message: docs/formats.md), so
  Parley uses the reserved type ``0xff`` followed by the identifier
  ``parley.mldsa65/v1``: the key ID is
  ``SHA-256(name || 0x0A || 0xff || "parley.mldsa65/v1" || public key)[:4]``.

Both signatures must verify: the record must survive a future break of
either scheme.

A witness cosignature (c2sp.org/tlog-cosignature) is one more signature
line, under the key name ``parley.witness/<party>``, over::

    cosignature/v1
    time <seconds since the epoch>
    <checkpoint note text>

Ed25519 with type ``0x04`` and bytes ``key ID || timestamp (8 bytes BE) ||
signature``, exactly as the spec; and, for the same post-quantum reason,
an ML-DSA-65 line of the same layout whose key ID uses ``0xff`` followed by
``parley.mldsa65-cosignature/v1``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from parley.core.encoding import PARTY_ID_PATTERN
from parley.core.identity import Identity, IdentityCard
from parley.errors import (
    InvalidSignature,
    MalformedInput,
    SchemaViolation,
    SupersededKey,
    VerificationError,
)
from parley.merkle import MerkleLog

__all__ = [
    "COSIGNATURE_ED25519_TYPE",
    "COSIGNATURE_MLDSA_TYPE",
    "ED25519_TYPE",
    "MLDSA_TYPE",
    "Checkpoint",
    "NoteSignature",
    "cosign_checkpoint",
    "key_id",
    "log_origin",
    "parse_checkpoint",
    "parse_note",
    "sign_checkpoint",
    "verify_checkpoint",
    "verify_cosignature",
    "verify_log_head",
    "witness_name",
]

ED25519_TYPE = b"\x01"
MLDSA_TYPE = b"\xffparley.mldsa65/v1"
COSIGNATURE_ED25519_TYPE = b"\x04"
COSIGNATURE_MLDSA_TYPE = b"\xffparley.mldsa65-cosignature/v1"
_MAX_NOTE = 64 * 1024
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f]")  # every control character but the newline
_MAX_SIGNATURES = 16
_EM_DASH = "\u2014"
# c2sp.org/tlog-checkpoint: the size is an ASCII decimal without leading zeros (a uint64).
_SIZE_PATTERN = re.compile(r"0|[1-9][0-9]{0,19}")
_MAX_SIZE = 2**64 - 1


def log_origin(party: str) -> str:
    return f"parley.transcript/{party}"


def witness_name(party: str) -> str:
    return f"parley.witness/{party}"


def key_id(name: str, sig_type: bytes, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + sig_type + public_key).digest()[:4]


@dataclass(frozen=True, slots=True)
class NoteSignature:
    name: str
    key_id: bytes
    signature: bytes  # without the key ID

    def line(self) -> str:
        encoded = base64.b64encode(self.key_id + self.signature).decode()
        return f"{_EM_DASH} {self.name} {encoded}\n"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A checkpoint whose owner signatures have been verified (or just made)."""

    origin: str
    size: int
    root: bytes
    body: str
    note: str  # body, blank line, signature lines (owner's, then any cosignatures)

    @property
    def party(self) -> str:
        return self.origin.removeprefix("parley.transcript/")


def parse_note(text: str | bytes) -> tuple[str, list[NoteSignature]]:
    """Split a signed note into its text and signature lines (strictly)."""
    if isinstance(text, bytes):
        if len(text) > _MAX_NOTE:
            raise MalformedInput(f"the signed note is {len(text)} bytes; limit {_MAX_NOTE}")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedInput("the signed note is not valid UTF-8") from None
    if len(text) > _MAX_NOTE:
        raise MalformedInput(f"the signed note is {len(text)} characters; limit {_MAX_NOTE}")
    if _CONTROL.search(text):
        raise MalformedInput("the signed note contains control characters")
    split = text.rfind("\n\n")
    if split < 0 or not text.endswith("\n"):
        raise MalformedInput("the signed note has no blank line before its signatures")
    body, sig_block = text[: split + 1], text[split + 2 :]
    lines = sig_block.split("\n")[:-1]
    if not lines:
        raise MalformedInput("the signed note carries no signature line")
    if len(lines) > _MAX_SIGNATURES:
        raise MalformedInput(f"the signed note has {len(lines)} signature lines; limit 16")
    signatures = []
    for line in lines:
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != _EM_DASH or not parts[1]:
            raise MalformedInput(f"malformed signature line {line[:60]!r}")
        try:
            raw = base64.b64decode(parts[2], validate=True)
        except ValueError:  # binascii.Error, or a non-ASCII character
            raise MalformedInput(f"signature line for {parts[1][:60]} is not base64") from None
        if len(raw) < 5:
            raise MalformedInput(f"signature line for {parts[1][:60]} is too short")
        signatures.append(NoteSignature(parts[1], raw[:4], raw[4:]))
    return body, signatures


def parse_checkpoint(body: str) -> tuple[str, int, bytes]:
    lines = body.split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise SchemaViolation("a checkpoint has an origin, a size and a root hash, one per line")
    origin, size_text, root_text = lines[0], lines[1], lines[2]
    if not origin.startswith("parley.transcript/") or not PARTY_ID_PATTERN.fullmatch(
        origin.removeprefix("parley.transcript/")
    ):
        raise SchemaViolation(f"checkpoint origin {origin[:80]!r} is not a Parley transcript")
    if not _SIZE_PATTERN.fullmatch(size_text) or int(size_text) > _MAX_SIZE:
        raise SchemaViolation(f"checkpoint size {size_text[:30]!r} is not a decimal number")
    try:
        root = base64.b64decode(root_text, validate=True)
    except ValueError:  # binascii.Error, or a non-ASCII character
        raise SchemaViolation("checkpoint root hash is not base64") from None
    if base64.b64encode(root).decode() != root_text:
        raise SchemaViolation("checkpoint root hash is not in canonical base64 form")
    if len(root) != 32:
        raise SchemaViolation(f"checkpoint root hash is {len(root)} bytes, not 32")
    return origin, int(size_text), root


def _body(origin: str, size: int, root: bytes) -> str:
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"


def sign_checkpoint(identity: Identity, size: int, root: bytes) -> Checkpoint:
    origin = log_origin(identity.party)
    body = _body(origin, size, root)
    message = body.encode()
    card = identity.card
    ed = NoteSignature(
        origin, key_id(origin, ED25519_TYPE, card.ed25519_public), identity.sign_ed25519(message)
    )
    ml = NoteSignature(
        origin, key_id(origin, MLDSA_TYPE, card.mldsa65_public), identity.sign_mldsa65(message)
    )
    return Checkpoint(origin, size, root, body, body + "\n" + ed.line() + ml.line())


def verify_checkpoint(note: str | bytes, card: IdentityCard) -> Checkpoint:
    """Verify both owner signatures of ``card``'s party on a checkpoint note.

    ``card`` is the party's newest card; the note's key IDs say which card of
    its chain signed (a checkpoint signed before a rotation still verifies).
    A rotated-out card signs no checkpoint larger than the transcript size
    its successor names (``SupersededKey``).

    Every receipt of a batch carries the same checkpoint: a small memo of
    notes already verified against the same card spares the repeated
    ML-DSA-65 verification (a pure function, so the memo changes nothing but
    the time).
    """
    signer = _owner_card(note, card)
    if isinstance(note, str) and len(note) <= _MEMO_NOTE_MAX:
        checkpoint = _verify_checkpoint_memo(note, signer)
    else:
        checkpoint = _verify_checkpoint(note, signer)
    if signer.max_log_size is not None and checkpoint.size > signer.max_log_size:
        raise SupersededKey(
            f"checkpoint {checkpoint.size} of {card.party} is signed by its card version "
            f"{signer.version}, whose keys stopped at size {signer.max_log_size} when the "
            "card was replaced: an old key never signs again"
        )
    return checkpoint


def verify_log_head(tree: MerkleLog, note: str | bytes, card: IdentityCard) -> Checkpoint:
    """The last checkpoint a party signed of its own log, checked against the stored log.

    ``tree`` holds the leaf hashes of the party's stored entries; the note must
    verify against ``card`` (its chain) and its root must be the tree's root at
    its size. Otherwise the records were changed or lost: ``VerificationError``.
    """
    checkpoint = verify_checkpoint(note, card)
    if checkpoint.size > tree.size or tree.root_at(checkpoint.size) != checkpoint.root:
        raise VerificationError(
            f"the stored transcript does not hash to this terminal's own checkpoint "
            f"{checkpoint.size}: its records were changed or lost; run parley verify"
        )
    return checkpoint


def _owner_card(note: str | bytes, card: IdentityCard) -> IdentityCard:
    """The card of ``card``'s chain whose Ed25519 key signed the note (default: ``card``)."""
    if not card.history:
        return card
    _, signatures = parse_note(note)
    origin = log_origin(card.party)
    ids = {sig.key_id for sig in signatures if sig.name == origin}
    for candidate in card.chain:
        if key_id(origin, ED25519_TYPE, candidate.ed25519_public) in ids:
            return candidate
    return card


_MEMO_NOTE_MAX = 16 * 1024  # an owner-signed note is about 4.5 kB (ML-DSA-65)


@functools.lru_cache(maxsize=256)
def _verify_checkpoint_memo(note: str, card: IdentityCard) -> Checkpoint:
    return _verify_checkpoint(note, card)


def _verify_checkpoint(note: str | bytes, card: IdentityCard) -> Checkpoint:
    body, signatures = parse_note(note)
    origin, size, root = parse_checkpoint(body)
    expected = log_origin(card.party)
    if origin != expected:
        raise SchemaViolation(f"checkpoint of {origin} offered as the log of {card.party}")
    message = body.encode()
    ed_id = key_id(origin, ED25519_TYPE, card.ed25519_public)
    ml_id = key_id(origin, MLDSA_TYPE, card.mldsa65_public)
    ed_ok = ml_ok = False
    for sig in signatures:
        if sig.name != origin:
            continue  # cosignatures and unknown keys are ignored, as signed-note requires
        if sig.key_id == ed_id:
            if not card.verify_ed25519(sig.signature, message):
                raise InvalidSignature(
                    f"the Ed25519 signature of {card.party} on its checkpoint {size} is invalid"
                )
            ed_ok = True
        elif sig.key_id == ml_id:
            if not card.verify_mldsa65(sig.signature, message):
                raise InvalidSignature(
                    f"the ML-DSA-65 signature of {card.party} on its checkpoint {size} is invalid"
                )
            ml_ok = True
    if not (ed_ok and ml_ok):
        missing = " and ".join(n for n, ok in (("Ed25519", ed_ok), ("ML-DSA-65", ml_ok)) if not ok)
        raise InvalidSignature(
            f"the checkpoint {size} of {card.party} lacks its {missing} signature"
        )
    text = note.decode() if isinstance(note, bytes) else note
    return Checkpoint(origin, size, root, body, text)


def _cosignature_message(body: str, timestamp: int) -> bytes:
    return f"cosignature/v1\ntime {timestamp}\n{body}".encode()


def cosign_checkpoint(witness: Identity, checkpoint: Checkpoint, now: datetime) -> str:
    """Return the two cosignature lines ``witness`` adds to ``checkpoint``."""
    timestamp = int(now.timestamp())
    name = witness_name(witness.party)
    message = _cosignature_message(checkpoint.body, timestamp)
    ts = timestamp.to_bytes(8, "big")
    card = witness.card
    ed = NoteSignature(
        name,
        key_id(name, COSIGNATURE_ED25519_TYPE, card.ed25519_public),
        ts + witness.sign_ed25519(message),
    )
    ml = NoteSignature(
        name,
        key_id(name, COSIGNATURE_MLDSA_TYPE, card.mldsa65_public),
        ts + witness.sign_mldsa65(message),
    )
    return ed.line() + ml.line()


def verify_cosignature(checkpoint: Checkpoint, note: str | bytes, witness: IdentityCard) -> int:
    """Verify that ``note`` carries ``witness``'s two cosignatures on ``checkpoint``.

    Returns the cosignature timestamp.
    """
    body, signatures = parse_note(note)
    if body != checkpoint.body:
        raise SchemaViolation("the cosigned note is for a different checkpoint")
    name = witness_name(witness.party)
    if witness.history:
        # The key IDs say which card of the witness's chain cosigned.
        ids = {sig.key_id for sig in signatures if sig.name == name}
        chain = witness.chain
        witness = next(
            (c for c in chain if key_id(name, COSIGNATURE_ED25519_TYPE, c.ed25519_public) in ids),
            witness,
        )
    ed_id = key_id(name, COSIGNATURE_ED25519_TYPE, witness.ed25519_public)
    ml_id = key_id(name, COSIGNATURE_MLDSA_TYPE, witness.mldsa65_public)
    found: dict[str, int] = {}
    for sig in signatures:
        if sig.name != name or sig.key_id not in (ed_id, ml_id):
            continue
        if len(sig.signature) < 8:
            raise MalformedInput(f"cosignature of {witness.party} is too short")
        timestamp = int.from_bytes(sig.signature[:8], "big")
        message = _cosignature_message(body, timestamp)
        if sig.key_id == ed_id:
            if not witness.verify_ed25519(sig.signature[8:], message):
                raise InvalidSignature(f"the Ed25519 cosignature of {witness.party} is invalid")
            found["ed"] = timestamp
        else:
            if not witness.verify_mldsa65(sig.signature[8:], message):
                raise InvalidSignature(f"the ML-DSA-65 cosignature of {witness.party} is invalid")
            found["ml"] = timestamp
    if set(found) != {"ed", "ml"}:
        raise InvalidSignature(
            f"the checkpoint {checkpoint.size} lacks a complete cosignature from {witness.party}"
        )
    if found["ed"] != found["ml"]:
        raise InvalidSignature(
            f"the two cosignatures of {witness.party} carry different timestamps"
        )
    if witness.signs_until is not None:
        witness.check_signed_at(
            datetime.fromtimestamp(found["ed"], UTC), f"the cosignature of {witness.party}"
        )
    return found["ed"]
