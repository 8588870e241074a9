"""The private key file of a terminal: one file, encrypted under a passphrase.

Format (canonical JSON)::

    {"aead": "chacha20-poly1305", "ciphertext": b64, "format": "parley-keys/v1",
     "kdf": {"n": 131072, "name": "scrypt", "p": 1, "r": 8, "salt": b64},
     "nonce": b64}

The key comes from scrypt (memory-hard; 128 MiB at the default cost), the
secrets are sealed with ChaCha20-Poly1305 whose associated data is the
header (everything but ``ciphertext``), so the KDF parameters cannot be
weakened without detection. The file is written atomically with mode 0600.
A wrong passphrase and a damaged file are told apart where the format allows:
a file that parses but fails authentication is reported as a wrong
passphrase *or* a modified file, since the two cannot be distinguished.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from parley.core.canonical import canonical_bytes
from parley.core.encoding import b64decode, b64encode
from parley.core.identity import Identity, IdentityCard
from parley.errors import DamagedKeyFile, MalformedInput, ParleyError, WrongPassphrase

__all__ = ["DEFAULT_SCRYPT_N", "load_identity", "save_identity"]

FORMAT = "parley-keys/v1"
DEFAULT_SCRYPT_N = 2**17
_MAX_SCRYPT_N = 2**22


def _derive(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))


def save_identity(
    identity: Identity, path: Path, passphrase: str, *, scrypt_n: int = DEFAULT_SCRYPT_N
) -> None:
    """Encrypt ``identity`` under ``passphrase`` and write it to ``path`` (mode 0600)."""
    if not passphrase:
        raise ValueError("an empty passphrase would leave the keys unprotected")
    salt = secrets.token_bytes(16)
    nonce = secrets.token_bytes(12)
    header: dict[str, Any] = {
        "aead": "chacha20-poly1305",
        "format": FORMAT,
        "kdf": {"n": scrypt_n, "name": "scrypt", "p": 1, "r": 8, "salt": b64encode(salt)},
        "nonce": b64encode(nonce),
    }
    card = identity.card
    secret = canonical_bytes(
        {
            "card": card.signed_bytes.decode("utf-8"),
            "keys": {k: b64encode(v) for k, v in sorted(identity.private_material().items())},
        }
    )
    key = _derive(passphrase, salt, scrypt_n, 8, 1)
    ciphertext = ChaCha20Poly1305(key).encrypt(nonce, secret, canonical_bytes(header))
    document = canonical_bytes({**header, "ciphertext": b64encode(ciphertext)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".keys-", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(document)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_identity(path: Path, passphrase: str) -> Identity:
    """Read and decrypt a key file; raise ``WrongPassphrase`` or ``DamagedKeyFile``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DamagedKeyFile(f"no key file at {path}") from None
    except OSError as exc:
        raise DamagedKeyFile(f"cannot read the key file {path}: {exc.strerror}") from None
    try:
        doc = json.loads(data)
        header = {k: doc[k] for k in ("aead", "format", "kdf", "nonce")}
        if header["format"] != FORMAT or header["aead"] != "chacha20-poly1305":
            raise DamagedKeyFile(f"{path} is not a {FORMAT} key file")
        kdf = header["kdf"]
        if kdf.get("name") != "scrypt":
            raise DamagedKeyFile(f"{path} names an unknown key derivation {kdf.get('name')!r}")
        n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
        if not (2 <= n <= _MAX_SCRYPT_N and r == 8 and p == 1) or n & (n - 1):
            raise DamagedKeyFile(f"{path} has implausible scrypt parameters")
        salt = b64decode(kdf["salt"], "salt")
        nonce = b64decode(header["nonce"], "nonce")
        ciphertext = b64decode(doc["ciphertext"], "ciphertext")
        if len(nonce) != 12:
            raise DamagedKeyFile(f"{path} has a nonce of the wrong length")
    except DamagedKeyFile:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, MalformedInput):
        raise DamagedKeyFile(f"{path} is damaged: it is not a readable Parley key file") from None
    key = _derive(passphrase, salt, n, r, p)
    try:
        secret = ChaCha20Poly1305(key).decrypt(nonce, ciphertext, canonical_bytes(header))
    except InvalidTag:
        raise WrongPassphrase(
            f"the passphrase does not open {path} (or the file was modified since it was written)"
        ) from None
    try:
        inner = json.loads(secret)
        card = IdentityCard.from_bytes(inner["card"].encode("utf-8"))
        keys = {k: b64decode(v, k) for k, v in inner["keys"].items()}
        return Identity.from_stored(card, keys)
    except (ValueError, KeyError, TypeError, AttributeError, ParleyError) as exc:
        raise DamagedKeyFile(f"{path} decrypts but its contents are damaged: {exc}") from None
