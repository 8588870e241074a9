"""docs/formats.md's worked example, recomputed from the code: the document cannot drift.

The example card is made from the fixed private keys the document names;
every value in its ``worked-example`` block must be what the code computes,
and every value the test knows must be in the block.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path

from parley.core.checkpoint import (
    COSIGNATURE_ED25519_TYPE,
    COSIGNATURE_MLDSA_TYPE,
    ED25519_TYPE,
    MLDSA_TYPE,
    key_id,
    log_origin,
    parse_note,
    sign_checkpoint,
    witness_name,
)
from parley.core.dsse import pae
from parley.core.envelope import ENVELOPE_PAYLOAD_TYPE
from parley.core.identity import Identity, IdentityCard, format_fingerprint
from parley.merkle import EMPTY_ROOT

DOC = Path(__file__).resolve().parents[2] / "docs" / "formats.md"


def _example_identity() -> Identity:
    return Identity.from_private_material(
        party="US-EUCOM",
        name="US European Command",
        valid_from=datetime(2026, 1, 1, tzinfo=UTC),
        valid_until=datetime(2028, 1, 1, tzinfo=UTC),
        version=1,
        ed25519_seed=bytes(range(0x00, 0x20)),
        mldsa65_seed=bytes(range(0x20, 0x40)),
        mlkem_seed=bytes(range(0x40, 0x80)),
        x25519_raw=bytes(range(0x80, 0xA0)),
    )


def _documented() -> dict[str, str]:
    text = DOC.read_text(encoding="utf-8")
    block = re.search(
        r"<!-- worked-example:begin -->\n```text\n(.*?)```\n<!-- worked-example:end -->",
        text,
        re.DOTALL,
    )
    assert block, "docs/formats.md lost its worked-example block"
    values = {}
    for line in block.group(1).splitlines():
        name, sep, value = line.partition(" = ")
        assert sep, f"not 'name = value': {line!r}"
        values[name.strip()] = value.strip()
    return values


def _computed() -> dict[str, str]:
    identity = _example_identity()
    card = identity.card
    origin, witness = log_origin(card.party), witness_name(card.party)
    checkpoint = sign_checkpoint(identity, 0, EMPTY_ROOT)
    ed_line = checkpoint.note.splitlines()[4]
    return {
        "ed25519_public": card.ed25519_public.hex(),
        "mldsa65_public_sha256": hashlib.sha256(card.mldsa65_public).hexdigest(),
        "hpke_public_sha256": hashlib.sha256(card.hpke_public).hexdigest(),
        "card_bytes_length": str(len(card.card_bytes)),
        "card_signing_input_sha256": hashlib.sha256(
            b"parley card v1\n" + card.card_bytes
        ).hexdigest(),
        "card_sha256": hashlib.sha256(card.card_bytes).hexdigest(),
        "fingerprint": card.fingerprint,
        "dsse_keyid": card.key_id,
        "checkpoint_ed25519_key_id": key_id(origin, ED25519_TYPE, card.ed25519_public).hex(),
        "checkpoint_mldsa65_key_id": key_id(origin, MLDSA_TYPE, card.mldsa65_public).hex(),
        "cosignature_ed25519_key_id": key_id(
            witness, COSIGNATURE_ED25519_TYPE, card.ed25519_public
        ).hex(),
        "cosignature_mldsa65_key_id": key_id(
            witness, COSIGNATURE_MLDSA_TYPE, card.mldsa65_public
        ).hex(),
        "empty_checkpoint_ed25519_line": ed_line,
        "pae_example": pae(ENVELOPE_PAYLOAD_TYPE, b'{"v":1}').decode(),
    }


def test_the_worked_example_is_what_the_code_computes() -> None:
    assert _documented() == _computed()


def test_the_documented_rules_rebuild_the_example_without_parley_helpers() -> None:
    """The rules as the document words them (not the code's helpers) give the same values."""
    documented = _documented()
    card = _example_identity().card
    digest = hashlib.sha256(card.card_bytes).digest()
    digits = f"{int.from_bytes(digest, 'big') % 10**60:060d}"
    assert " ".join(digits[i : i + 5] for i in range(0, 60, 5)) == documented["fingerprint"]
    assert format_fingerprint(digest) == documented["fingerprint"]
    name = b"parley.transcript/US-EUCOM"
    assert (
        hashlib.sha256(name + b"\n" + b"\x01" + card.ed25519_public).digest()[:4].hex()
        == documented["checkpoint_ed25519_key_id"]
    )
    assert (
        hashlib.sha256(name + b"\n" + b"\xff" + b"parley.mldsa65/v1" + card.mldsa65_public)
        .digest()[:4]
        .hex()
        == documented["checkpoint_mldsa65_key_id"]
    )
    # The Ed25519 line verifies over the note text of the empty log, as documented.
    body = "parley.transcript/US-EUCOM\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n"
    [signature] = parse_note(body + "\n" + documented["empty_checkpoint_ed25519_line"] + "\n")[1]
    assert signature.key_id.hex() == documented["checkpoint_ed25519_key_id"]
    assert card.verify_ed25519(signature.signature, body.encode())
    # A card rebuilt from its signed bytes keeps the fingerprint (signatures are not hashed).
    assert IdentityCard.from_bytes(card.signed_bytes).fingerprint == documented["fingerprint"]


def test_the_signature_types_named_in_the_document_are_the_codes() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert ED25519_TYPE == b"\x01"
    assert COSIGNATURE_ED25519_TYPE == b"\x04"
    for identifier in (MLDSA_TYPE, COSIGNATURE_MLDSA_TYPE):
        assert identifier[:1] == b"\xff"
        assert f'0xFF || "{identifier[1:].decode()}"' in text
