"""Receipts, transcript entries, card validity and cosignature timestamps."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest

from parley.core.canonical import canonical_bytes
from parley.core.checkpoint import cosign_checkpoint, sign_checkpoint, verify_cosignature
from parley.core.dsse import sign_dsse
from parley.core.envelope import Content, open_envelope, seal_envelope
from parley.core.identity import Identity
from parley.core.receipts import RECEIPT_PAYLOAD_TYPE, read_receipt
from parley.core.transcript import split_entry
from parley.errors import InvalidSignature, SchemaViolation, UnknownVersion
from parley.merkle import EMPTY_ROOT
from parley.testing import PartyPair


def test_a_receipt_claiming_version_true_is_refused() -> None:
    pair = PartyPair.create()
    out = pair.a.send_text(["RU-GS"], "m", operator="o")
    receipt = pair.b.receive_envelope(out.raw).receipt
    payload = json.loads(base64.b64decode(json.loads(receipt)["payload"]))
    payload["v"] = True
    forged = sign_dsse(
        RECEIPT_PAYLOAD_TYPE,
        canonical_bytes(payload),
        pair.b.identity.card.key_id,
        pair.b.identity.sign_ed25519,
    )
    with pytest.raises(UnknownVersion):
        read_receipt(forged, pair.a.card_of)
    assert read_receipt(receipt, pair.a.card_of).through_seq == 1


@pytest.mark.parametrize("entry", [b"", b"\x07payload", b"\x00"])
def test_a_transcript_entry_without_a_known_type_byte_is_refused(entry: bytes) -> None:
    with pytest.raises(SchemaViolation, match="type byte"):
        split_entry(entry)


def test_an_envelope_dated_outside_the_senders_card_is_refused(
    us_eucom: Identity, ru_gs: Identity
) -> None:
    late = us_eucom.card.valid_until + timedelta(days=1)
    raw = seal_envelope(
        us_eucom,
        [ru_gs.card],
        envelope_id="019c2dac-6a00-7c89-bf37-8e083c95fc6f",
        channel="RU-GS.US-EUCOM",
        seq=1,
        created_at=late,
        precedence="ROUTINE",
        kind="text",
        content=Content(lang="en", operator="o", body={"text": "after expiry"}),
    )
    with pytest.raises(InvalidSignature, match="outside the validity"):
        open_envelope(raw, me=ru_gs, lookup={"US-EUCOM": us_eucom.card}.get, now=late)


def test_cosignature_lines_with_different_timestamps_are_refused(
    us_eucom: Identity, ru_gs: Identity
) -> None:
    checkpoint = sign_checkpoint(us_eucom, 0, EMPTY_ROOT)
    first = cosign_checkpoint(ru_gs, checkpoint, us_eucom.card.valid_from)
    second = cosign_checkpoint(ru_gs, checkpoint, us_eucom.card.valid_from + timedelta(hours=1))
    mixed = checkpoint.note + first.splitlines(keepends=True)[0] + second.splitlines(True)[1]
    assert verify_cosignature(checkpoint, checkpoint.note + first, ru_gs.card) > 0
    with pytest.raises(InvalidSignature, match="different timestamps"):
        verify_cosignature(checkpoint, mixed, ru_gs.card)
