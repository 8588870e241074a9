"""Checkpoints (c2sp.org/tlog-checkpoint) as signed notes, and witness cosignatures.

Key IDs and the cosignature message are recomputed here from the C2SP specs
with hashlib and cryptography alone, independently of parley's own code.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.exceptions import InvalidSignature as CryptoInvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from parley.core.checkpoint import (
    Checkpoint,
    cosign_checkpoint,
    key_id,
    log_origin,
    parse_checkpoint,
    parse_note,
    sign_checkpoint,
    verify_checkpoint,
    verify_cosignature,
    witness_name,
)
from parley.core.identity import Identity
from parley.errors import InvalidSignature, MalformedInput, RemoteError, SchemaViolation

DASH = "\u2014"  # EM DASH, which starts every signature line
ROOT = hashlib.sha256(b"some tree").digest()
ORIGIN = "parley.transcript/US-EUCOM"


def _spec_key_id(name: str, type_bytes: bytes, public_key: bytes) -> bytes:
    """c2sp.org/signed-note: SHA-256(key name || 0x0A || signature type || public key)[:4]."""
    digest = hashlib.sha256()
    digest.update(name.encode("utf-8"))
    digest.update(b"\x0a")
    digest.update(type_bytes)
    digest.update(public_key)
    return digest.digest()[:4]


def _lines(note: str) -> tuple[str, list[str]]:
    body, _, signatures = note.partition("\n\n")
    return body + "\n", signatures.splitlines()


def _line_bytes(line: str) -> tuple[str, bytes]:
    dash, name, encoded = line.split(" ")
    assert dash == DASH
    return name, base64.b64decode(encoded)


@pytest.fixture(scope="module")
def checkpoint(us_eucom: Identity) -> Checkpoint:
    return sign_checkpoint(us_eucom, 5, ROOT)


# --------------------------------------------------------------------------
# Signing and verifying


def test_checkpoint_body_is_the_c2sp_format(checkpoint: Checkpoint) -> None:
    expected_body = f"{ORIGIN}\n5\n{base64.b64encode(ROOT).decode()}\n"
    assert checkpoint.body == expected_body
    assert checkpoint.origin == ORIGIN == log_origin("US-EUCOM")
    assert checkpoint.size == 5
    assert checkpoint.root == ROOT
    assert checkpoint.party == "US-EUCOM"
    body, lines = _lines(checkpoint.note)
    assert body == expected_body
    assert checkpoint.note == expected_body + "\n" + "".join(f"{line}\n" for line in lines)
    assert len(lines) == 2
    assert all(line.startswith(f"{DASH} {ORIGIN} ") for line in lines)


def test_sign_then_verify(checkpoint: Checkpoint, us_eucom: Identity) -> None:
    verified = verify_checkpoint(checkpoint.note, us_eucom.card)
    assert verified == checkpoint
    assert verify_checkpoint(checkpoint.note.encode(), us_eucom.card) == checkpoint


def test_empty_log_checkpoint(us_eucom: Identity) -> None:
    empty_root = hashlib.sha256(b"").digest()
    cp = sign_checkpoint(us_eucom, 0, empty_root)
    assert cp.body.splitlines()[1] == "0"
    assert verify_checkpoint(cp.note, us_eucom.card).size == 0


def test_ed25519_line_matches_an_independent_computation(
    checkpoint: Checkpoint, us_eucom: Identity
) -> None:
    public = us_eucom.card.ed25519_public
    expected_id = _spec_key_id(ORIGIN, b"\x01", public)
    _, lines = _lines(checkpoint.note)
    name, raw = _line_bytes(lines[0])
    assert name == ORIGIN
    assert raw[:4] == expected_id
    assert key_id(ORIGIN, b"\x01", public) == expected_id
    # The signature is plain Ed25519 over the note text, checked with cryptography directly.
    Ed25519PublicKey.from_public_bytes(public).verify(raw[4:], checkpoint.body.encode())
    assert len(raw) == 4 + 64


def test_mldsa_line_uses_the_documented_key_id(checkpoint: Checkpoint, us_eucom: Identity) -> None:
    public = us_eucom.card.mldsa65_public
    expected_id = _spec_key_id(ORIGIN, b"\xff" + b"parley.mldsa65/v1", public)
    _, lines = _lines(checkpoint.note)
    name, raw = _line_bytes(lines[1])
    assert name == ORIGIN
    assert raw[:4] == expected_id
    assert us_eucom.card.verify_mldsa65(raw[4:], checkpoint.body.encode())
    assert len(raw) == 4 + 3309  # FIPS 204 ML-DSA-65 signature length


@pytest.mark.parametrize("drop", [0, 1], ids=["without-ed25519", "without-mldsa65"])
def test_both_owner_signatures_are_required(
    checkpoint: Checkpoint, us_eucom: Identity, drop: int
) -> None:
    body, lines = _lines(checkpoint.note)
    del lines[drop]
    missing = ["Ed25519", "ML-DSA-65"][drop]
    with pytest.raises(InvalidSignature, match=f"checkpoint 5 of US-EUCOM lacks its {missing} sig"):
        verify_checkpoint(body + "\n" + lines[0] + "\n", us_eucom.card)


def test_signatures_by_another_key_do_not_count(us_eucom: Identity, ru_gs: Identity) -> None:
    # RU-GS signs a checkpoint under US-EUCOM's log name: its key IDs are not US-EUCOM's.
    body = f"{ORIGIN}\n5\n{base64.b64encode(ROOT).decode()}\n".encode()
    lines = [
        (key_id(ORIGIN, b"\x01", ru_gs.card.ed25519_public), ru_gs.sign_ed25519(body)),
        (
            key_id(ORIGIN, b"\xffparley.mldsa65/v1", ru_gs.card.mldsa65_public),
            ru_gs.sign_mldsa65(body),
        ),
    ]
    note = body.decode() + "\n"
    note += "".join(f"{DASH} {ORIGIN} {base64.b64encode(k + s).decode()}\n" for k, s in lines)
    with pytest.raises(InvalidSignature, match="lacks its Ed25519 and ML-DSA-65 signature"):
        verify_checkpoint(note, us_eucom.card)


def test_checkpoint_of_one_log_offered_as_another(checkpoint: Checkpoint, ru_gs: Identity) -> None:
    with pytest.raises(
        SchemaViolation, match=r"parley\.transcript/US-EUCOM offered as the log of RU"
    ):
        verify_checkpoint(checkpoint.note, ru_gs.card)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("\n5\n", "\n6\n"),
        ("\n5\n", "\n4\n"),
        (base64.b64encode(ROOT).decode(), base64.b64encode(bytes(32)).decode()),
    ],
    ids=["size-up", "size-down", "root"],
)
def test_tampered_size_or_root_is_refused(
    checkpoint: Checkpoint, us_eucom: Identity, old: str, new: str
) -> None:
    assert checkpoint.note.count(old) == 1
    tampered = checkpoint.note.replace(old, new)
    with pytest.raises(InvalidSignature, match="Ed25519 signature of US-EUCOM on its checkpoint"):
        verify_checkpoint(tampered, us_eucom.card)


@pytest.mark.parametrize(("line", "scheme"), [(0, "Ed25519"), (1, "ML-DSA-65")])
def test_tampered_signature_is_refused(
    checkpoint: Checkpoint, us_eucom: Identity, line: int, scheme: str
) -> None:
    body, lines = _lines(checkpoint.note)
    name, raw = _line_bytes(lines[line])
    flipped = raw[:20] + bytes([raw[20] ^ 0x80]) + raw[21:]
    lines[line] = f"{DASH} {name} {base64.b64encode(flipped).decode()}"
    note = body + "\n" + "".join(f"{x}\n" for x in lines)
    with pytest.raises(InvalidSignature, match=f"{scheme} signature of US-EUCOM .* is invalid"):
        verify_checkpoint(note, us_eucom.card)


def test_unknown_signature_lines_are_ignored(checkpoint: Checkpoint, us_eucom: Identity) -> None:
    # signed-note: verifiers ignore signatures from keys they do not know.
    extra = f"{DASH} example.com/other {base64.b64encode(b'abcd' + bytes(64)).decode()}\n"
    assert verify_checkpoint(checkpoint.note + extra, us_eucom.card).size == 5


# --------------------------------------------------------------------------
# Malformed notes


@pytest.mark.parametrize(
    ("note", "message"),
    [
        (f"{ORIGIN}\n5\nAAAA\n{DASH} a AAAAAAAA\n", "no blank line"),
        (f"{ORIGIN}\n5\nAAAA\n\n{DASH} a AAAAAAAA", "no blank line"),
        (f"{ORIGIN}\n5\nAAAA\n\n", "no signature line"),
        (f"{ORIGIN}\r\n5\n\n{DASH} a AAAAAAAA\n", "control characters"),
        (f"{ORIGIN}\t\n5\n\n{DASH} a AAAAAAAA\n", "control characters"),
        (f"{ORIGIN}\n5\n\x00\n\n{DASH} a AAAAAAAA\n", "control characters"),
        (f"{ORIGIN}\n5\n\n{DASH} a AAAA*AAA\n", "is not base64"),
        (f"{ORIGIN}\n5\n\n{DASH} a AAAAAAA\n", "is not base64"),
        (f"{ORIGIN}\n5\n\n{DASH} a AAAAAA\u00e9A\n", "is not base64"),
        (f"{ORIGIN}\n5\n\n{DASH} a AAAA\n", "too short"),
        (f"{ORIGIN}\n5\n\n- a AAAAAAAA\n", "malformed signature line"),
        (f"{ORIGIN}\n5\n\n{DASH}  AAAAAAAA\n", "malformed signature line"),
        (f"{ORIGIN}\n5\n\n{DASH} a b AAAAAAAA\n", "malformed signature line"),
        (f"{ORIGIN}\n5\n\n" + f"{DASH} a AAAAAAAA\n" * 17, "17 signature lines"),
        (f"{ORIGIN}\n5\n" + "x" * 70_000 + f"\n\n{DASH} a AAAAAAAA\n", "limit"),
    ],
)
def test_malformed_notes_are_refused(note: str, message: str) -> None:
    with pytest.raises(MalformedInput, match=message):
        parse_note(note)
    with pytest.raises(MalformedInput, match=message):
        parse_note(note.encode())


def test_note_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(MalformedInput, match="not valid UTF-8"):
        parse_note(b"parley\xff\n\n\xe2\x80\x94 a AAAAAAAA\n")


_B64_ROOT = base64.b64encode(ROOT).decode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (f"{ORIGIN}\n01\n{_B64_ROOT}\n", "size '01' is not a decimal"),
        (f"{ORIGIN}\n+1\n{_B64_ROOT}\n", "is not a decimal"),
        (f"{ORIGIN}\n-1\n{_B64_ROOT}\n", "is not a decimal"),
        (f"{ORIGIN}\n1.0\n{_B64_ROOT}\n", "is not a decimal"),
        (f"{ORIGIN}\n\n{_B64_ROOT}\n", "is not a decimal"),
        (f"{ORIGIN}\n\u00b2\n{_B64_ROOT}\n", "is not a decimal"),  # SUPERSCRIPT TWO
        (f"{ORIGIN}\n\u0661\u0662\n{_B64_ROOT}\n", "is not a decimal"),  # ARABIC-INDIC 12
        (f"{ORIGIN}\n{2**64}\n{_B64_ROOT}\n", "is not a decimal"),
        (f"{ORIGIN}\n{'9' * 5000}\n{_B64_ROOT}\n", "is not a decimal"),
        (f"{ORIGIN}\n5\n{_B64_ROOT[:-2]}\n", "not base64"),
        (f"{ORIGIN}\n5\n{_B64_ROOT[:-2]}\u00e9=\n", "not base64"),
        (f"{ORIGIN}\n5\nAAAA\n", "root hash is 3 bytes"),
        (f"{ORIGIN}\n5\n{'A' * 42}B=\n", "canonical base64"),
        (f"{ORIGIN}\n5\n", "origin, a size and a root hash"),
        (f"{ORIGIN}\n5\n{_B64_ROOT}", "origin, a size and a root hash"),
        (f"example.com/log\n5\n{_B64_ROOT}\n", "is not a Parley transcript"),
        (f"parley.transcript/us-eucom\n5\n{_B64_ROOT}\n", "is not a Parley transcript"),
    ],
)
def test_malformed_checkpoint_bodies_are_refused(body: str, message: str) -> None:
    with pytest.raises(SchemaViolation, match=message):
        parse_checkpoint(body)


def test_largest_size_is_accepted() -> None:
    assert parse_checkpoint(f"{ORIGIN}\n{2**64 - 1}\n{_B64_ROOT}\n") == (ORIGIN, 2**64 - 1, ROOT)


def test_malformed_note_through_verify_is_a_remote_error(
    checkpoint: Checkpoint, us_eucom: Identity
) -> None:
    for note in (
        checkpoint.note.replace("\n5\n", "\n05\n"),
        checkpoint.note.replace("\n\n", "\n"),
        checkpoint.note[:-10],
        checkpoint.note.replace(DASH, "\u00e9"),
    ):
        with pytest.raises(RemoteError):
            verify_checkpoint(note, us_eucom.card)


# --------------------------------------------------------------------------
# Cosignatures


def test_cosign_and_verify(checkpoint: Checkpoint, ru_gs: Identity, now: datetime) -> None:
    lines = cosign_checkpoint(ru_gs, checkpoint, now)
    assert lines.count("\n") == 2
    assert all(line.startswith(f"{DASH} parley.witness/RU-GS ") for line in lines.splitlines())
    note = checkpoint.note + lines
    assert verify_cosignature(checkpoint, note, ru_gs.card) == int(now.timestamp())


def test_cosigned_note_still_verifies_as_the_owners_checkpoint(
    checkpoint: Checkpoint, us_eucom: Identity, ru_gs: Identity, now: datetime
) -> None:
    note = checkpoint.note + cosign_checkpoint(ru_gs, checkpoint, now)
    assert verify_checkpoint(note, us_eucom.card).size == 5


@pytest.mark.parametrize(
    "moment",
    [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2026, 2, 5, 12, 0, 0, 999_999, tzinfo=UTC),
        datetime(2099, 12, 31, 23, 59, 59, tzinfo=UTC),
    ],
)
def test_cosignature_timestamp_round_trips(
    checkpoint: Checkpoint, ru_gs: Identity, moment: datetime
) -> None:
    note = checkpoint.note + cosign_checkpoint(ru_gs, checkpoint, moment)
    expected = int((moment - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds())
    assert verify_cosignature(checkpoint, note, ru_gs.card) == expected


def test_cosignature_line_verifies_independently(
    checkpoint: Checkpoint, ru_gs: Identity, now: datetime
) -> None:
    """c2sp.org/tlog-cosignature, checked with cryptography and hashlib only."""
    lines = cosign_checkpoint(ru_gs, checkpoint, now).splitlines()
    name, raw = _line_bytes(lines[0])
    assert name == "parley.witness/RU-GS" == witness_name("RU-GS")
    public = ru_gs.card.ed25519_public
    # key ID || timestamp (8 bytes, big-endian) || Ed25519 signature
    assert len(raw) == 4 + 8 + 64
    assert raw[:4] == _spec_key_id(name, b"\x04", public)
    timestamp = int.from_bytes(raw[4:12], "big")
    assert timestamp == 1770292800  # 2026-02-05T12:00:00Z
    message = f"cosignature/v1\ntime {timestamp}\n".encode() + checkpoint.body.encode()
    Ed25519PublicKey.from_public_bytes(public).verify(raw[12:], message)
    # ...and not over the bare body, nor with another time.
    with pytest.raises(CryptoInvalidSignature):
        Ed25519PublicKey.from_public_bytes(public).verify(raw[12:], checkpoint.body.encode())
    other = f"cosignature/v1\ntime {timestamp + 1}\n".encode() + checkpoint.body.encode()
    with pytest.raises(CryptoInvalidSignature):
        Ed25519PublicKey.from_public_bytes(public).verify(raw[12:], other)


def test_mldsa_cosignature_line_layout(
    checkpoint: Checkpoint, ru_gs: Identity, now: datetime
) -> None:
    lines = cosign_checkpoint(ru_gs, checkpoint, now).splitlines()
    name, raw = _line_bytes(lines[1])
    public = ru_gs.card.mldsa65_public
    assert raw[:4] == _spec_key_id(name, b"\xffparley.mldsa65-cosignature/v1", public)
    timestamp = int.from_bytes(raw[4:12], "big")
    message = f"cosignature/v1\ntime {timestamp}\n".encode() + checkpoint.body.encode()
    assert ru_gs.card.verify_mldsa65(raw[12:], message)


@pytest.mark.parametrize("drop", [0, 1], ids=["without-ed25519", "without-mldsa65"])
def test_both_cosignature_lines_are_required(
    checkpoint: Checkpoint, ru_gs: Identity, now: datetime, drop: int
) -> None:
    lines = cosign_checkpoint(ru_gs, checkpoint, now).splitlines(keepends=True)
    del lines[drop]
    with pytest.raises(InvalidSignature, match="lacks a complete cosignature from RU-GS"):
        verify_cosignature(checkpoint, checkpoint.note + lines[0], ru_gs.card)


def test_cosignature_from_another_witness_does_not_count(
    checkpoint: Checkpoint, ru_gs: Identity, ua_gs: Identity, now: datetime
) -> None:
    note = checkpoint.note + cosign_checkpoint(ua_gs, checkpoint, now)
    with pytest.raises(InvalidSignature, match="lacks a complete cosignature from RU-GS"):
        verify_cosignature(checkpoint, note, ru_gs.card)


def test_cosignature_with_a_changed_timestamp_is_refused(
    checkpoint: Checkpoint, ru_gs: Identity, now: datetime
) -> None:
    lines = cosign_checkpoint(ru_gs, checkpoint, now).splitlines()
    name, raw = _line_bytes(lines[0])
    later = raw[:4] + (int.from_bytes(raw[4:12], "big") + 60).to_bytes(8, "big") + raw[12:]
    lines[0] = f"{DASH} {name} {base64.b64encode(later).decode()}"
    note = checkpoint.note + "".join(f"{x}\n" for x in lines)
    with pytest.raises(InvalidSignature, match="Ed25519 cosignature of RU-GS is invalid"):
        verify_cosignature(checkpoint, note, ru_gs.card)


def test_cosignature_of_another_checkpoint_is_refused(
    checkpoint: Checkpoint, us_eucom: Identity, ru_gs: Identity, now: datetime
) -> None:
    newer = sign_checkpoint(us_eucom, 6, ROOT)
    lines = cosign_checkpoint(ru_gs, newer, now)
    with pytest.raises(SchemaViolation, match="different checkpoint"):
        verify_cosignature(checkpoint, newer.note + lines, ru_gs.card)
    # Lines moved onto the older checkpoint do not verify.
    with pytest.raises(InvalidSignature, match="cosignature of RU-GS is invalid"):
        verify_cosignature(checkpoint, checkpoint.note + lines, ru_gs.card)


def test_too_short_cosignature_is_refused(checkpoint: Checkpoint, ru_gs: Identity) -> None:
    name = witness_name("RU-GS")
    kid = _spec_key_id(name, b"\x04", ru_gs.card.ed25519_public)
    note = checkpoint.note + f"{DASH} {name} {base64.b64encode(kid + b'1234').decode()}\n"
    with pytest.raises(MalformedInput, match="cosignature of RU-GS is too short"):
        verify_cosignature(checkpoint, note, ru_gs.card)


def test_cosigning_later_gives_a_later_timestamp(
    checkpoint: Checkpoint, ru_gs: Identity, now: datetime
) -> None:
    first = verify_cosignature(
        checkpoint, checkpoint.note + cosign_checkpoint(ru_gs, checkpoint, now), ru_gs.card
    )
    later = now + timedelta(hours=1)
    second = verify_cosignature(
        checkpoint, checkpoint.note + cosign_checkpoint(ru_gs, checkpoint, later), ru_gs.card
    )
    assert second - first == 3600
