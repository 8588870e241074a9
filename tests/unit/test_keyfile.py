"""The encrypted private key file: round trip, permissions, and clear failures."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from parley.core.identity import Identity
from parley.errors import DamagedKeyFile, WrongPassphrase
from parley.keyfile import load_identity, save_identity

FAST = 2**10  # scrypt cost for tests; the default is 2**17


@pytest.fixture(scope="module")
def identity() -> Identity:
    return Identity.generate(
        "US-EUCOM", "US European Command", now=datetime(2026, 2, 5, tzinfo=UTC)
    )


def test_round_trip_keeps_keys_card_and_fingerprint(identity: Identity, tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    save_identity(identity, path, "correct horse", scrypt_n=FAST)
    loaded = load_identity(path, "correct horse")
    assert loaded.card.signed_bytes == identity.card.signed_bytes
    assert loaded.card.fingerprint == identity.card.fingerprint
    assert loaded.private_material() == identity.private_material()
    message = b"proof that the loaded key signs"
    assert identity.card.verify_ed25519(loaded.sign_ed25519(message), message)


def test_file_is_private_and_holds_no_secret_in_clear(identity: Identity, tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    save_identity(identity, path, "pw", scrypt_n=FAST)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = path.read_bytes()
    for secret in identity.private_material().values():
        assert secret not in data
    assert json.loads(data)["kdf"]["name"] == "scrypt"


def test_wrong_passphrase_is_a_clear_error(identity: Identity, tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    save_identity(identity, path, "right", scrypt_n=FAST)
    with pytest.raises(WrongPassphrase, match="passphrase does not open"):
        load_identity(path, "wrong")


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[: len(b) // 2],
        lambda b: b"not json at all",
        lambda b: b"{}",
        lambda b: b.replace(b'"scrypt"', b'"md5"'),
        lambda b: b.replace(b'"n":1024', b'"n":1000'),
    ],
    ids=["truncated", "not-json", "empty-object", "unknown-kdf", "bad-scrypt-cost"],
)
def test_damaged_file_is_a_clear_error(identity: Identity, tmp_path: Path, damage: object) -> None:
    path = tmp_path / "keys.json"
    save_identity(identity, path, "pw", scrypt_n=FAST)
    assert callable(damage)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DamagedKeyFile):
        load_identity(path, "pw")


def test_modified_ciphertext_or_header_fails_authentication(
    identity: Identity, tmp_path: Path
) -> None:
    path = tmp_path / "keys.json"
    save_identity(identity, path, "pw", scrypt_n=FAST)
    doc = json.loads(path.read_bytes())
    first = doc["ciphertext"][0]
    doc["ciphertext"] = ("B" if first == "A" else "A") + doc["ciphertext"][1:]
    path.write_text(json.dumps(doc))
    with pytest.raises(WrongPassphrase):
        load_identity(path, "pw")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DamagedKeyFile, match="no key file"):
        load_identity(tmp_path / "absent.json", "pw")


def test_empty_passphrase_is_refused(identity: Identity, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty passphrase"):
        save_identity(identity, tmp_path / "k.json", "")
