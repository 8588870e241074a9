"""Where a terminal keeps its medium-term encryption keys, and how it destroys them.

The keys live in the database (table ``encryption_keys``), so that a standby
on the same PostgreSQL has them too. The private half of each is sealed with
ChaCha20-Poly1305 under a key derived by scrypt from the key passphrase (the
key file's own cost, a salt of its own kept in ``settings``), with the key id
as associated data: the database alone opens none of them.

Destroying a key sets its ``sealed`` column to NULL. On SQLite the statement
runs with ``secure_delete`` on (freed space in the page is zeroed) and the
write-ahead log is then truncated, so the sealed bytes are gone from
``parley.db`` and ``parley.db-wal``; on PostgreSQL the table is vacuumed so
the old row version is not kept. What no terminal can reach is listed in the
README: backups taken while the key was alive, copies of the disk, the
memory of a process that was running.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from sqlalchemy import Connection, Engine, insert, select, update

from parley.core.enckeys import EncryptionKeyPair, Keyring, read_announcement
from parley.core.encoding import b64decode, b64encode
from parley.core.identity import Identity, IdentityCard
from parley.errors import ParleyError, WrongPassphrase
from parley.store import models as m

__all__ = ["destroy_key", "key_store_key", "load_keyring", "seal_material", "store_key_pair"]

log = structlog.get_logger("parley.terminal")

_SALT_SETTING = "key_store_salt"
_DEFAULT_N = 2**17


def key_store_key(engine: Engine, key_file: Path, passphrase: str) -> bytes:
    """The key that seals the private halves: scrypt of the passphrase, the key file's cost."""
    try:
        n = int(json.loads(key_file.read_bytes())["kdf"]["n"])
    except (OSError, ValueError, KeyError, TypeError):
        n = _DEFAULT_N
    with engine.begin() as conn:
        stored = conn.execute(
            select(m.settings.c.value).where(m.settings.c.key == _SALT_SETTING)
        ).scalar()
        if stored is None:
            stored = b64encode(secrets.token_bytes(16))
            conn.execute(insert(m.settings).values(key=_SALT_SETTING, value=stored))
    salt = b64decode(stored, "key store salt")
    return Scrypt(salt=salt, length=32, n=n, r=8, p=1).derive(passphrase.encode("utf-8"))


def _aad(key_id: str) -> bytes:
    return b"parley encryption key\n" + key_id.encode()


def seal_material(store_key: bytes, key_id: str, material: bytes) -> bytes:
    nonce = secrets.token_bytes(12)
    return nonce + ChaCha20Poly1305(store_key).encrypt(nonce, material, _aad(key_id))


def _unseal(store_key: bytes, key_id: str, sealed: bytes) -> bytes:
    try:
        return ChaCha20Poly1305(store_key).decrypt(sealed[:12], sealed[12:], _aad(key_id))
    except InvalidTag:
        raise WrongPassphrase(
            f"the private half of encryption key {key_id[:16]}… does not open with this "
            "passphrase (or the row was changed)"
        ) from None


def store_key_pair(
    conn: Connection, store_key: bytes, pair: EncryptionKeyPair, grace: timedelta
) -> None:
    """Keep a new key as the current one; the one it replaces enters its grace period."""
    now = pair.key.created_at
    conn.execute(
        update(m.encryption_keys)
        .where(m.encryption_keys.c.retired_at.is_(None))
        .values(retired_at=now, destroy_after=now + grace)
    )
    conn.execute(
        insert(m.encryption_keys).values(
            key_id=pair.key_id,
            serial=pair.key.serial,
            announcement=pair.key.announcement_bytes,
            created_at=now,
            retired_at=None,
            destroy_after=None,
            destroyed_at=None,
            sealed=seal_material(store_key, pair.key_id, pair.material),
        )
    )


def destroy_key(engine: Engine, key_id: str, now: datetime) -> None:
    """Overwrite the sealed private half of ``key_id`` in the database."""
    sqlite = engine.dialect.name == "sqlite"
    with engine.begin() as conn:
        if sqlite:
            conn.exec_driver_sql("PRAGMA secure_delete = ON")
        conn.execute(
            update(m.encryption_keys)
            .where(m.encryption_keys.c.key_id == key_id)
            .values(sealed=None, destroyed_at=now)
        )
    if sqlite:
        # Outside any transaction (the engine's connections begin one at once): the old
        # page images in the write-ahead log are copied over and the log emptied.
        raw = engine.raw_connection()
        try:
            busy = raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            raw.close()
        if busy and busy[0]:
            log.warning("encryption_key_wal_busy", key_id=key_id)
    elif engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM encryption_keys")
    log.info("encryption_key_destroyed", key_id=key_id)


def load_keyring(
    conn: Connection,
    identity: Identity,
    peers: Mapping[str, IdentityCard],
    store_key: bytes | None,
) -> Keyring:
    """The keyring as the database holds it: own keys (opened with ``store_key``), and each
    peer's current key, whose announcement is verified again against the pinned card."""
    ring = Keyring()
    for row in conn.execute(select(m.encryption_keys).order_by(m.encryption_keys.c.serial)):
        if row.destroyed_at is not None or row.sealed is None:
            at = row.destroyed_at or row.created_at
            ring.destroyed(row.key_id, at if at.tzinfo else at.replace(tzinfo=UTC))
            continue
        if store_key is None:
            continue
        try:
            key = read_announcement(json.loads(row.announcement), identity.card)
            pair = EncryptionKeyPair.restore(key, _unseal(store_key, row.key_id, row.sealed))
        except (ParleyError, ValueError) as exc:
            log.warning("encryption_key_unusable", key_id=row.key_id, error=str(exc))
            continue
        ring.add_own(pair, current=row.retired_at is None)
    latest: dict[str, bytes] = {}
    serials: dict[str, int] = {}
    for row in conn.execute(select(m.peer_encryption_keys)):
        if row.serial > serials.get(row.party, 0):
            serials[row.party] = row.serial
            latest[row.party] = bytes(row.announcement)
    for party, announcement in latest.items():
        card = peers.get(party)
        if card is None:
            continue
        try:
            ring.adopt(read_announcement(json.loads(announcement), card))
        except ParleyError as exc:
            # Not signed by the card pinned now (changed in the database, or a new card):
            # the peer's card key is used until it announces again.
            log.warning("peer_encryption_key_unusable", party=party, error=str(exc))
    return ring
