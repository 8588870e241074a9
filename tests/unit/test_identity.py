"""Identities and their self-signed cards: round trips, fingerprints, tampering."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from parley.core.canonical import canonical_bytes
from parley.core.identity import (
    CARD_TYPE,
    Identity,
    IdentityCard,
    format_fingerprint,
    normalize_fingerprint,
)
from parley.errors import (
    FingerprintMismatch,
    InvalidCard,
    LocalError,
    MalformedInput,
    ParleyError,
    RemoteError,
    SchemaViolation,
)

_FINGERPRINT = re.compile(r"[0-9]{5}( [0-9]{5}){11}")


def _reload(identity: Identity) -> Identity:
    material = identity.private_material()
    card = identity.card
    return Identity.from_private_material(
        party=card.party,
        name=card.name,
        valid_from=card.valid_from,
        valid_until=card.valid_until,
        version=card.version,
        ed25519_seed=material["ed25519"],
        mldsa65_seed=material["mldsa65"],
        mlkem_seed=material["mlkem768"],
        x25519_raw=material["x25519"],
    )


def _signed_card(identity: Identity) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(identity.card.signed_bytes)
    return result


def _card_message(card: dict[str, Any]) -> bytes:
    # The signing input as the card format defines it (parley card v1).
    return b"parley card v1\n" + canonical_bytes(card)


def _resign(identity: Identity, card: dict[str, Any]) -> bytes:
    """A card signed properly by ``identity``'s keys, whatever it says."""
    message = _card_message(card)
    return canonical_bytes(
        {
            "card": card,
            "signatures": {
                "ed25519": base64.b64encode(identity.sign_ed25519(message)).decode(),
                "mldsa65": base64.b64encode(identity.sign_mldsa65(message)).decode(),
            },
        }
    )


def _flip_b64(text: str, index: int = 0) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[index] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


# --------------------------------------------------------------------------
# Generation and round trip


def test_generated_identity_has_a_card_with_its_public_keys(
    us_eucom: Identity, now: datetime
) -> None:
    card = us_eucom.card
    assert card.party == "US-EUCOM"
    assert card.name == "US European Command"
    assert card.version == 1
    assert card.valid_at(now)
    assert not card.valid_at(card.valid_until + timedelta(milliseconds=1))
    assert not card.valid_at(card.valid_from - timedelta(milliseconds=1))
    assert card.ed25519_public == us_eucom.ed25519_private.public_key().public_bytes_raw()
    assert card.mldsa65_public == us_eucom.mldsa65_private.public_key().public_bytes_raw()
    assert len(card.hpke_public) == 1184 + 32  # ML-KEM-768 + X25519
    message = b"any message"
    assert card.verify_ed25519(us_eucom.sign_ed25519(message), message)
    assert card.verify_mldsa65(us_eucom.sign_mldsa65(message), message)
    assert not card.verify_ed25519(us_eucom.sign_ed25519(message), b"another message")
    assert not card.verify_mldsa65(us_eucom.sign_mldsa65(message), b"another message")


def test_card_wire_form_is_the_documented_structure(us_eucom: Identity) -> None:
    outer = _signed_card(us_eucom)
    assert set(outer) == {"card", "signatures"}
    assert outer["card"]["type"] == CARD_TYPE
    assert outer["card"]["party"] == "US-EUCOM"
    assert set(outer["card"]["keys"]) == {"ed25519", "mldsa65", "hpke_mlkem768_x25519"}
    assert us_eucom.card.card_bytes == canonical_bytes(outer["card"])
    # The self-signature covers "parley card v1\n" + the canonical card.
    message = _card_message(outer["card"])
    ed_sig = base64.b64decode(outer["signatures"]["ed25519"])
    assert us_eucom.card.verify_ed25519(ed_sig, message)


def test_card_round_trips_through_its_signed_bytes(us_eucom: Identity) -> None:
    card = us_eucom.card
    again = IdentityCard.from_bytes(card.signed_bytes)
    assert again == card
    assert again.signed_bytes == card.signed_bytes
    assert again.card_bytes == card.card_bytes
    assert again.fingerprint == card.fingerprint
    message = b"signed after the round trip"
    assert again.verify_ed25519(us_eucom.sign_ed25519(message), message)


def test_each_party_has_its_own_keys(us_eucom: Identity, ru_gs: Identity, ua_gs: Identity) -> None:
    cards = [us_eucom.card, ru_gs.card, ua_gs.card]
    assert len({c.ed25519_public for c in cards}) == 3
    assert len({c.mldsa65_public for c in cards}) == 3
    assert len({c.hpke_public for c in cards}) == 3
    assert len({c.key_id for c in cards}) == 3


# --------------------------------------------------------------------------
# Fingerprints


def test_fingerprint_is_twelve_groups_of_five_digits(us_eucom: Identity) -> None:
    assert _FINGERPRINT.fullmatch(us_eucom.card.fingerprint)


def test_fingerprint_is_sha256_of_the_unsigned_card(us_eucom: Identity) -> None:
    card = us_eucom.card
    digest = hashlib.sha256(canonical_bytes(_signed_card(us_eucom)["card"])).digest()
    assert card.fingerprint_digest == digest
    assert card.key_id == digest.hex()
    digits = f"{int.from_bytes(digest, 'big') % 10**60:060d}"
    assert card.fingerprint.replace(" ", "") == digits


def test_format_fingerprint_keeps_leading_zeros() -> None:
    assert format_fingerprint(bytes(32)) == " ".join(["00000"] * 12)
    assert format_fingerprint((7).to_bytes(32, "big")) == " ".join(["00000"] * 11 + ["00007"])


def test_fingerprint_is_stable_for_a_reloaded_identity(us_eucom: Identity) -> None:
    reloaded = _reload(us_eucom)
    assert reloaded.card.fingerprint == us_eucom.card.fingerprint
    assert reloaded.card.card_bytes == us_eucom.card.card_bytes
    assert reloaded.private_material() == us_eucom.private_material()


def test_fingerprint_differs_between_identities(us_eucom: Identity, ru_gs: Identity) -> None:
    assert us_eucom.card.fingerprint != ru_gs.card.fingerprint


def test_fingerprint_differs_for_same_party_with_new_keys(us_eucom: Identity) -> None:
    other = Identity.generate("US-EUCOM", us_eucom.card.name, now=us_eucom.card.valid_from)
    assert other.card.fingerprint != us_eucom.card.fingerprint


def test_normalize_fingerprint_accepts_with_and_without_spaces(us_eucom: Identity) -> None:
    grouped = us_eucom.card.fingerprint
    digits = grouped.replace(" ", "")
    assert normalize_fingerprint(digits) == grouped
    assert normalize_fingerprint(grouped) == grouped
    assert normalize_fingerprint(f"  {digits[:30]}\t{digits[30:]}\n") == grouped
    assert normalize_fingerprint(" ".join(digits[i : i + 3] for i in range(0, 60, 3))) == grouped


@pytest.mark.parametrize(
    "text",
    [
        "1" * 59,
        "1" * 61,
        "",
        "1" * 59 + "a",
        "ABCDE " * 12,
        "12345-" * 11 + "12345",
        "\u0663" * 60,  # ARABIC-INDIC DIGIT THREE: a digit, but not one read aloud here
        "\u00b2" * 60,  # SUPERSCRIPT TWO
    ],
    ids=["59", "61", "empty", "letter", "letters", "dashes", "arabic-indic", "superscript"],
)
def test_normalize_fingerprint_refuses_what_is_not_60_digits(text: str) -> None:
    with pytest.raises(FingerprintMismatch, match="60 digits"):
        normalize_fingerprint(text)


def test_pinned_accepts_the_right_fingerprint(us_eucom: Identity) -> None:
    card = us_eucom.card
    assert card.pinned(card.fingerprint) is card
    assert card.pinned(card.fingerprint.replace(" ", "")) is card


def test_pinned_refuses_the_wrong_fingerprint(us_eucom: Identity, ru_gs: Identity) -> None:
    with pytest.raises(FingerprintMismatch, match="do not trust this card") as info:
        us_eucom.card.pinned(ru_gs.card.fingerprint)
    assert isinstance(info.value, LocalError)
    # The card's real fingerprint is not shown (an operator could copy it and retry).
    assert "does not match the fingerprint read aloud" in str(info.value)
    for group in us_eucom.card.fingerprint.split():
        assert group not in str(info.value)
    # One digit off is enough.
    digits = us_eucom.card.fingerprint.replace(" ", "")
    off_by_one = digits[:-1] + str((int(digits[-1]) + 1) % 10)
    with pytest.raises(FingerprintMismatch):
        us_eucom.card.pinned(off_by_one)


# --------------------------------------------------------------------------
# Tampered cards


def _tampered(identity: Identity, change: Callable[[dict[str, Any]], None]) -> bytes:
    outer = _signed_card(identity)
    change(outer)
    return canonical_bytes(outer)


def test_tampered_name_is_refused(us_eucom: Identity) -> None:
    def rename(outer: dict[str, Any]) -> None:
        outer["card"]["name"] = "US European Command (spoofed)"

    with pytest.raises(InvalidCard, match="Ed25519 self-signature on the card of US-EUCOM"):
        IdentityCard.from_bytes(_tampered(us_eucom, rename))


def test_tampered_party_is_refused(us_eucom: Identity) -> None:
    def reparty(outer: dict[str, Any]) -> None:
        outer["card"]["party"] = "RU-GS"

    with pytest.raises(InvalidCard, match="self-signature on the card of RU-GS is invalid"):
        IdentityCard.from_bytes(_tampered(us_eucom, reparty))


@pytest.mark.parametrize("key", ["ed25519", "mldsa65", "hpke_mlkem768_x25519"])
def test_substituted_key_is_refused(us_eucom: Identity, ru_gs: Identity, key: str) -> None:
    theirs = _signed_card(ru_gs)["card"]["keys"][key]

    def swap(outer: dict[str, Any]) -> None:
        outer["card"]["keys"][key] = theirs

    with pytest.raises(InvalidCard, match="self-signature on the card of US-EUCOM is invalid"):
        IdentityCard.from_bytes(_tampered(us_eucom, swap))


@pytest.mark.parametrize(
    ("scheme", "message"),
    [("ed25519", "Ed25519 self-signature"), ("mldsa65", "ML-DSA-65 self-signature")],
)
def test_tampered_signature_is_refused(us_eucom: Identity, scheme: str, message: str) -> None:
    def flip(outer: dict[str, Any]) -> None:
        outer["signatures"][scheme] = _flip_b64(outer["signatures"][scheme], index=10)

    with pytest.raises(InvalidCard, match=message):
        IdentityCard.from_bytes(_tampered(us_eucom, flip))


def test_signature_from_another_card_is_refused(us_eucom: Identity, ru_gs: Identity) -> None:
    theirs = _signed_card(ru_gs)["signatures"]["mldsa65"]

    def transplant(outer: dict[str, Any]) -> None:
        outer["signatures"]["mldsa65"] = theirs

    with pytest.raises(InvalidCard, match="ML-DSA-65 self-signature"):
        IdentityCard.from_bytes(_tampered(us_eucom, transplant))


def test_properly_signed_card_that_expires_before_it_starts_is_refused(
    us_eucom: Identity,
) -> None:
    card = _signed_card(us_eucom)["card"]
    card["valid_from"], card["valid_until"] = card["valid_until"], card["valid_from"]
    with pytest.raises(InvalidCard, match="expires before it starts"):
        IdentityCard.from_bytes(_resign(us_eucom, card))
    card["valid_until"] = card["valid_from"]
    with pytest.raises(InvalidCard, match="expires before it starts"):
        IdentityCard.from_bytes(_resign(us_eucom, card))


def test_resign_helper_produces_an_accepted_card(us_eucom: Identity) -> None:
    # The control for the test above: an unchanged card re-signed is accepted.
    card = _signed_card(us_eucom)["card"]
    assert IdentityCard.from_bytes(_resign(us_eucom, card)).card_bytes == us_eucom.card.card_bytes


def test_generating_a_card_that_expires_before_it_starts_fails(now: datetime) -> None:
    with pytest.raises(ParleyError, match="expires before it starts"):
        Identity.generate("US-EUCOM", "US European Command", now=now, validity=-timedelta(days=1))


def test_properly_signed_card_of_unknown_type_is_refused(us_eucom: Identity) -> None:
    card = _signed_card(us_eucom)["card"]
    card["type"] = "parley.card/v2"
    with pytest.raises(InvalidCard, match=r"is not parley\.card/v1"):
        IdentityCard.from_bytes(_resign(us_eucom, card))


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda c: c.update(party="us-eucom"), SchemaViolation, "party id"),
        (lambda c: c.update(version=0), SchemaViolation, "version must be at least 1"),
        (lambda c: c.update(version=True), SchemaViolation, "version must be an integer"),
        (lambda c: c.update(valid_from="2026-02-05"), SchemaViolation, "valid_from"),
        (lambda c: c.update(extra="x"), SchemaViolation, "unexpected field"),
        (lambda c: c.pop("name"), SchemaViolation, "lacks the field"),
        (lambda c: c["keys"].update(ed25519="AAAA"), InvalidCard, "malformed signature key"),
        (lambda c: c["keys"].update(hpke_mlkem768_x25519="AAAA"), InvalidCard, "HPKE key is 3"),
        (lambda c: c["keys"].update(mldsa65="not base64!"), SchemaViolation, "base64"),
    ],
)
def test_properly_signed_but_malformed_card_is_refused(
    us_eucom: Identity,
    change: Callable[[dict[str, Any]], object],
    error: type[Exception],
    message: str,
) -> None:
    card = _signed_card(us_eucom)["card"]
    change(card)
    with pytest.raises(error, match=message):
        IdentityCard.from_bytes(_resign(us_eucom, card))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{}",
        b'{"card":{},"signatures":{}}',
        b"[]",
        b'{"card":1,"signatures":{"ed25519":"","mldsa65":""}}',
    ],
)
def test_garbage_is_refused_as_the_peers_fault(data: bytes) -> None:
    with pytest.raises(MalformedInput):
        IdentityCard.from_bytes(data)


def test_non_canonical_card_bytes_are_refused(us_eucom: Identity) -> None:
    pretty = json.dumps(_signed_card(us_eucom), indent=1).encode()
    with pytest.raises(MalformedInput, match="canonical"):
        IdentityCard.from_bytes(pretty)


def test_every_card_refusal_is_a_remote_error(us_eucom: Identity) -> None:
    signed = us_eucom.card.signed_bytes
    for cut in (1, len(signed) // 2, len(signed) - 1):
        with pytest.raises(RemoteError):
            IdentityCard.from_bytes(signed[:cut])
