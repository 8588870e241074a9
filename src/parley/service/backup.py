"""Backups of a terminal: its database, key file and configuration in one encrypted file.

``backup_terminal`` takes a consistent copy while the terminal serves
(SQLite's online backup API; PostgreSQL: ``pg_dump`` in a snapshot exported
by a repeatable-read transaction, which also counts the log). Plaintext
copies exist only in a private temporary directory (0700), removed
afterwards. ``restore_terminal`` writes them back into a data directory,
brings the schema to the newest migration and marks the terminal
``recovery_required`` (``settings``): it signs nothing before its peers
have confirmed that its log is not behind what they saw (docs/recovery.md).

File format ``parley-backup/v1``::

    magic    b"parley-backup/v1\\n"
    length   4 bytes, big-endian: the length of the header
    header   canonical JSON: {"aead": "chacha20-poly1305", "chunk": 1048576,
             "format": "parley-backup/v1",
             "kdf": {"n": N, "name": "scrypt", "p": 1, "r": 8, "salt": b64},
             "key_check": b64, "nonce": b64 (7 bytes)}
    chunks   ChaCha20-Poly1305 of the payload in chunks of ``chunk`` bytes,
             each chunk+16 bytes long but the last (which may be empty);
             nonce = nonce (7) | chunk number (4, big-endian) | 1 on the last
             chunk, else 0 (1); associated data = magic, length and header.

The key is scrypt of the key passphrase with the key file's own cost and a
fresh salt (64 bytes: the first 32 are the key, the SHA-256 of the rest is
``key_check``, so a wrong passphrase is told from a modified file). The
chunk numbers and the last-chunk flag refuse reordered, dropped and
truncated chunks; the header is authenticated with every chunk, so its KDF
cost cannot be weakened. The payload is an uncompressed tar stream of
``manifest.json`` (party, time, backend, log size, schema revision, the
SHA-256 of each file), ``parley.toml``, ``identity.key``, ``card.json`` and
``database.sqlite`` or ``database.pgdump`` (``pg_dump --format=custom``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from sqlalchemy import Engine, delete, func, insert, inspect, make_url, select, text

from parley.config import Config, DataDir, write_private
from parley.core.canonical import canonical_bytes
from parley.core.encoding import b64decode, b64encode
from parley.errors import ParleyError, UnreadableFile, UsageError, WrongPassphrase
from parley.keyfile import load_identity
from parley.service import policy
from parley.service.lock import ServeLock
from parley.service.policy import LOCAL_ADMIN, Actor
from parley.service.terminal import Terminal
from parley.store import models as m
from parley.store.db import engine_for, migrate, normalize_url, sqlite_url

__all__ = [
    "FORMAT",
    "RECOVERY_REQUIRED",
    "BackupInfo",
    "BackupSchedule",
    "RestoreInfo",
    "backup_terminal",
    "read_manifest",
    "restore_terminal",
    "schedule_directory",
]

log = structlog.get_logger("parley.backup")

FORMAT = "parley-backup/v1"
MAGIC = b"parley-backup/v1\n"
CHUNK = 1 << 20
_TAG = 16
_MAX_HEADER = 4096
_MAX_SCRYPT_N = 2**22

RECOVERY_REQUIRED = "recovery_required"
"""The ``settings`` key a restore sets to ``"1"``: the terminal must be recovered first."""

#: The files of the payload, in order; the database is one of the last two.
_FILES = ("manifest.json", "parley.toml", "identity.key", "card.json")
_DATABASES = {"sqlite": "database.sqlite", "postgresql": "database.pgdump"}

#: ``progress(step, done, total)``: what is being done and how far (bytes).
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True, slots=True)
class BackupInfo:
    path: Path
    party: str
    backend: str
    #: Entries of the log in the copy (the terminal held exactly these then).
    log_size: int
    size_bytes: int
    seconds: float
    created_at: datetime


@dataclass(frozen=True, slots=True)
class RestoreInfo:
    path: Path
    party: str
    backend: str
    log_size: int
    database: str
    #: When the backup was made.
    created_at: datetime


# The encrypted container ------------------------------------------------------


def _derive(passphrase: str, salt: bytes, n: int) -> tuple[bytes, bytes]:
    out = Scrypt(salt=salt, length=64, n=n, r=8, p=1).derive(passphrase.encode("utf-8"))
    return out[:32], hashlib.sha256(out[32:]).digest()


def _nonce(prefix: bytes, number: int, last: bool) -> bytes:
    return prefix + number.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


class _SealingWriter(io.RawIOBase):
    """A file-like object that encrypts what is written to it into ``sink``, chunk by chunk."""

    def __init__(self, sink: IO[bytes], passphrase: str, scrypt_n: int) -> None:
        super().__init__()
        salt = secrets.token_bytes(16)
        self._prefix = secrets.token_bytes(7)
        key, check = _derive(passphrase, salt, scrypt_n)
        header = canonical_bytes(
            {
                "aead": "chacha20-poly1305",
                "chunk": CHUNK,
                "format": FORMAT,
                "kdf": {"n": scrypt_n, "name": "scrypt", "p": 1, "r": 8, "salt": b64encode(salt)},
                "key_check": b64encode(check),
                "nonce": b64encode(self._prefix),
            }
        )
        self._aad = MAGIC + len(header).to_bytes(4, "big") + header
        self._aead = ChaCha20Poly1305(key)
        self._sink = sink
        self._buffer = bytearray()
        self._number = 0
        self.written = 0
        sink.write(self._aad)

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._buffer += data
        while len(self._buffer) > CHUNK:  # keep one chunk back: it may be the last
            self._seal(bytes(self._buffer[:CHUNK]), last=False)
            del self._buffer[:CHUNK]
        return len(data)

    def _seal(self, chunk: bytes, *, last: bool) -> None:
        nonce = _nonce(self._prefix, self._number, last)
        self._sink.write(self._aead.encrypt(nonce, chunk, self._aad))
        self._number += 1
        self.written += len(chunk)

    def finish(self) -> None:
        self._seal(bytes(self._buffer), last=True)
        self._buffer.clear()


class _OpeningReader(io.RawIOBase):
    """Reads and authenticates a backup file; ``read`` returns the payload."""

    def __init__(self, source: IO[bytes], passphrase: str, name: str) -> None:
        super().__init__()
        self._source = source
        self._name = name
        magic = source.read(len(MAGIC))
        if magic != MAGIC:
            raise UnreadableFile(f"{name} is not a Parley backup ({FORMAT})")
        raw_length = source.read(4)
        length = int.from_bytes(raw_length, "big") if len(raw_length) == 4 else 0
        header_bytes = source.read(length) if 0 < length <= _MAX_HEADER else b""
        try:
            header = json.loads(header_bytes)
            if header["format"] != FORMAT or header["aead"] != "chacha20-poly1305":
                raise ValueError("format")
            kdf = header["kdf"]
            n = int(kdf["n"])
            if kdf["name"] != "scrypt" or kdf["r"] != 8 or kdf["p"] != 1:
                raise ValueError("kdf")
            if not 2 <= n <= _MAX_SCRYPT_N or n & (n - 1):
                raise ValueError("scrypt cost")
            salt = b64decode(kdf["salt"], "salt")
            self._prefix = b64decode(header["nonce"], "nonce")
            check = b64decode(header["key_check"], "key_check")
            self._chunk = int(header["chunk"])
            if len(self._prefix) != 7 or not 1 <= self._chunk <= 64 * CHUNK:
                raise ValueError("nonce or chunk")
        except (ValueError, KeyError, TypeError, AttributeError, ParleyError) as exc:
            raise UnreadableFile(f"{name} has a damaged header ({exc})") from None
        key, expected = _derive(passphrase, salt, n)
        if not secrets.compare_digest(check, expected):
            raise WrongPassphrase(f"the passphrase does not open the backup {name}")
        self._aad = MAGIC + raw_length + header_bytes
        self._aead = ChaCha20Poly1305(key)
        self._number = 0
        self._plain = b""
        self._next = source.read(self._chunk + _TAG)
        self.finished = False

    def readable(self) -> bool:
        return True

    def _open_next(self) -> None:
        current = self._next
        if self.finished:
            self._plain = b""
            return
        if len(current) < _TAG:
            raise UnreadableFile(f"{self._name} is truncated (chunk {self._number} is missing)")
        self._next = self._source.read(self._chunk + _TAG)
        last = not self._next
        try:
            self._plain = self._aead.decrypt(
                _nonce(self._prefix, self._number, last), current, self._aad
            )
        except InvalidTag:
            raise UnreadableFile(
                f"{self._name} was modified or damaged: chunk {self._number} fails "
                "authentication (or the file was cut short)"
            ) from None
        self._number += 1
        self.finished = last

    def read(self, size: int = -1) -> bytes:
        if not self._plain:
            self._open_next()
        if size < 0:
            size = len(self._plain)
        out, self._plain = self._plain[:size], self._plain[size:]
        return out

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        """Read to the end: every chunk authenticated, the last one flagged as last."""
        while not self.finished:
            self._open_next()


# Copies of the database -------------------------------------------------------


def _backend(url: str) -> str:
    return (
        "postgresql"
        if make_url(normalize_url(url)).get_backend_name() == "postgresql"
        else "sqlite"
    )


def _copy_sqlite(url: str, target: Path) -> int:
    """An online copy of the SQLite database (one step: consistent under writes); its log size."""
    source_path = make_url(normalize_url(url)).database
    if not source_path or not Path(source_path).exists():
        raise UsageError(f"the SQLite database {source_path} does not exist")
    source = sqlite3.connect(source_path, timeout=30)
    copy = sqlite3.connect(target)
    try:
        source.execute("PRAGMA busy_timeout=30000")
        # One step (pages=-1) copies a single snapshot: stepwise copying restarts
        # whenever the serving terminal commits, and might never finish.
        source.backup(copy)
        copy.execute("PRAGMA journal_mode=DELETE")
        checked = copy.execute("PRAGMA quick_check").fetchone()
        if checked is None or checked[0] != "ok":
            raise UsageError(f"the copy of {source_path} fails SQLite's quick_check: {checked}")
        size = copy.execute("SELECT count(*) FROM log_entries").fetchone()[0]
    finally:
        copy.close()
        source.close()
    return int(size)


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """A libpq URI for ``url`` without its password (the PostgreSQL tools' command lines
    are visible to every user), and the environment that carries the password."""
    parsed = make_url(normalize_url(url))
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    plain = parsed.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def _psycopg_url(url: str) -> str:
    parsed = make_url(normalize_url(url)).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)


def _pg_tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise UsageError(
            f"{name} is not installed: PostgreSQL backups need the PostgreSQL client tools "
            "(Debian: postgresql-client)"
        )
    return found


def _dump_postgresql(url: str, target: Path) -> int:
    """``pg_dump`` in a snapshot also used to count the log: the two agree."""
    import psycopg

    dump = _pg_tool("pg_dump")
    uri, env = _libpq(url)
    with psycopg.connect(_psycopg_url(url), autocommit=True) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()
        size = conn.execute("SELECT count(*) FROM log_entries").fetchone()
        assert snapshot is not None
        assert size is not None
        result = subprocess.run(  # noqa: S603 - the PostgreSQL client, arguments are ours
            [
                dump,
                "--format=custom",
                "--no-owner",
                "--no-privileges",
                f"--snapshot={snapshot[0]}",
                f"--file={target}",
                f"--dbname={uri}",
            ],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        conn.execute("COMMIT")
    if result.returncode != 0:
        raise UsageError(f"pg_dump failed: {result.stderr.strip()[-500:]}")
    return int(size[0])


def _restore_postgresql(url: str, dump: Path, *, force: bool) -> None:
    engine = engine_for(url)
    try:
        tables = inspect(engine).get_table_names()
        if tables and not force:
            raise UsageError(
                f"the database {make_url(normalize_url(url)).database} already holds "
                f"{len(tables)} tables; restore into an empty database, or add --force to "
                "replace them"
            )
        if tables:
            with engine.begin() as conn:
                for table in tables:
                    conn.execute(text(f'DROP TABLE IF EXISTS "{table}" CASCADE'))
    finally:
        engine.dispose()
    uri, env = _libpq(url)
    result = subprocess.run(  # noqa: S603 - the PostgreSQL client, arguments are ours
        [
            _pg_tool("pg_restore"),
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
            "--single-transaction",
            f"--dbname={uri}",
            str(dump),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise UsageError(f"pg_restore failed: {result.stderr.strip()[-500:]}")


# Backup ---------------------------------------------------------------------------


def _key_file_cost(data: DataDir) -> int:
    try:
        return int(json.loads(data.key_file.read_bytes())["kdf"]["n"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"cannot read the scrypt cost of {data.key_file}: {exc}") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _schema_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


@contextlib.contextmanager
def _private_dir(prefix: str, parent: Path | None = None) -> Iterator[Path]:
    """A directory only this user can enter (mkdtemp: 0700), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _record(engine: Engine, actor: Actor, action: str, subject: str, detail: Any) -> None:
    """The ``operator_actions`` row of a backup or restore (as ``Operations`` writes them)."""
    with engine.begin() as conn:
        conn.execute(
            insert(m.operator_actions).values(
                at=datetime.now(UTC),
                operator=actor.name,
                role=actor.role,
                via=actor.via,
                action=action,
                subject=subject[:500],
                detail=json.dumps(detail, ensure_ascii=False),
            )
        )
    log.info("operator_action", operator=actor.name, role=actor.role, action=action)


def backup_terminal(
    path: Path,
    out: Path,
    passphrase: str,
    *,
    actor: Actor | None = None,
    progress: Progress | None = None,
) -> BackupInfo:
    """Back up the terminal in ``path`` (served or not) to ``out``, encrypted.

    ``passphrase`` must open the terminal's key file (the restored terminal
    needs it); the backup is encrypted under it. With ``actor`` the policy
    is asked first (``backup``: administrators) and the backup is recorded in
    the terminal's operator action log.
    """
    started = time.monotonic()
    data = DataDir(Path(path))
    config = data.load_config()
    if actor is not None:
        policy.require(actor, "backup")
    load_identity(data.key_file, passphrase)  # WrongPassphrase before any work
    scrypt_n = _key_file_cost(data)
    backend = _backend(config.database)
    created = datetime.now(UTC)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    step = progress or (lambda _step, _done, _total: None)
    with _private_dir("parley-backup-") as work:
        database = work / _DATABASES[backend]
        step("copying the database", 0, 1)
        if backend == "sqlite":
            log_size = _copy_sqlite(config.database, database)
        else:
            log_size = _dump_postgresql(config.database, database)
        step("copying the database", 1, 1)
        engine = engine_for(config.database)
        try:
            revision = _schema_revision(engine)
        finally:
            engine.dispose()
        files = {
            "parley.toml": data.config_file.read_bytes(),
            "identity.key": data.key_file.read_bytes(),
            "card.json": data.card_file.read_bytes(),
        }
        manifest = {
            "format": FORMAT,
            "party": config.party,
            "created_at": created.isoformat(),
            "backend": backend,
            "log_size": log_size,
            "schema": revision,
            "files": {
                **{name: hashlib.sha256(raw).hexdigest() for name, raw in files.items()},
                database.name: _sha256(database),
            },
        }
        total = database.stat().st_size
        partial = out.with_name(f".{out.name}.{secrets.token_hex(4)}.partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as sink:
                writer = _SealingWriter(sink, passphrase, scrypt_n)
                with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                    _add(tar, "manifest.json", canonical_bytes(manifest))
                    for name, raw in files.items():
                        _add(tar, name, raw)
                    info = tarfile.TarInfo(database.name)
                    info.size = total
                    info.mode = 0o600
                    info.mtime = int(created.timestamp())
                    with database.open("rb") as handle:
                        tar.addfile(info, _Counting(handle, lambda n: step("encrypting", n, total)))
                writer.finish()
                sink.flush()
                os.fsync(sink.fileno())
            os.replace(partial, out)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    info_out = BackupInfo(
        path=out,
        party=config.party,
        backend=backend,
        log_size=log_size,
        size_bytes=out.stat().st_size,
        seconds=time.monotonic() - started,
        created_at=created,
    )
    if actor is not None:
        engine = engine_for(config.database)
        try:
            _record(
                engine,
                actor,
                "backup",
                str(out),
                {"log_size": log_size, "bytes": info_out.size_bytes, "backend": backend},
            )
        finally:
            engine.dispose()
    log.info("backup_written", file=str(out), log_size=log_size, seconds=info_out.seconds)
    return info_out


def _add(tar: tarfile.TarFile, name: str, raw: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(raw)
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(raw))


class _Counting(io.RawIOBase):
    """A file read through, telling ``seen`` how many bytes so far."""

    def __init__(self, handle: IO[bytes], seen: Callable[[int], None]) -> None:
        super().__init__()
        self._handle = handle
        self._seen = seen
        self._count = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self._count += len(data)
        self._seen(self._count)
        return data


# Restore ----------------------------------------------------------------------------


def _unpack(source: Path, passphrase: str, into: Path) -> dict[str, Any]:
    """Decrypt and unpack a backup into ``into`` (private); its manifest, every file checked."""
    wanted = {*_FILES, *_DATABASES.values()}
    with source.open("rb") as handle:
        reader = _OpeningReader(handle, passphrase, str(source))
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                for member in tar:
                    if member.name not in wanted or not member.isfile():
                        raise UnreadableFile(f"{source} holds an unexpected entry {member.name!r}")
                    wanted.discard(member.name)
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    fd = os.open(into / member.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "wb") as sink:
                        shutil.copyfileobj(extracted, sink, CHUNK)
        except tarfile.TarError as exc:
            raise UnreadableFile(f"{source} holds no readable archive: {exc}") from None
        reader.drain()
    try:
        manifest: dict[str, Any] = json.loads((into / "manifest.json").read_bytes())
        database = _DATABASES[manifest["backend"]]
        for name, digest in manifest["files"].items():
            if name not in (*_FILES[1:], database) or _sha256(into / name) != digest:
                raise ValueError(f"{name} does not match the manifest")
        if set(manifest["files"]) != {*_FILES[1:], database}:
            raise ValueError("files are missing")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UnreadableFile(f"{source} is incomplete: {exc}") from None
    return manifest


def read_manifest(source: Path, passphrase: str) -> dict[str, Any]:
    """What a backup holds (party, time, backend, log size), after checking all of it."""
    with _private_dir("parley-restore-") as work:
        return _unpack(Path(source), passphrase, work)


def restore_terminal(
    source: Path,
    path: Path,
    passphrase: str,
    *,
    force: bool = False,
    database: str | None = None,
    operator: str = "operator",
) -> RestoreInfo:
    """Restore the backup ``source`` into the data directory ``path``.

    Refuses a directory that is not empty (and, for PostgreSQL, a database
    that holds tables) unless ``force``; a running terminal's directory
    always. SQLite goes to ``path/parley.db``; PostgreSQL to ``database`` or
    the URL of the backed-up configuration. The schema is migrated to the
    newest revision and ``settings.recovery_required`` is set: the terminal
    checks with its peers before it signs anything. The restore is recorded
    in the restored operator action log (the local administrator, ``operator``).
    """
    source = Path(source)
    data = DataDir(Path(path))
    if data.path.exists() and not data.path.is_dir():
        raise UsageError(f"{data.path} is not a directory")
    if data.path.is_dir() and any(data.path.iterdir()) and not force:
        raise UsageError(
            f"{data.path} is not empty; restore into a new directory, or add --force to "
            "replace the terminal there"
        )
    if not source.is_file():
        raise UsageError(f"no backup file at {source}")
    data.path.mkdir(parents=True, exist_ok=True)
    data.path.chmod(0o700)
    lock = ServeLock(data)
    if not lock.acquire():
        raise UsageError(f"a terminal is running on {data.path}; stop it before restoring")
    try:
        with _private_dir(".restore-", data.path) as work:
            manifest = _unpack(source, passphrase, work)
            config = Config.from_toml(
                (work / "parley.toml").read_text("utf-8"), f"{source}: parley.toml"
            )
            if config.party != manifest["party"]:
                raise UnreadableFile(f"{source}: the configuration is not {manifest['party']}'s")
            backend = str(manifest["backend"])
            if backend == "sqlite":
                if database is not None and _backend(database) != "sqlite":
                    raise UsageError(
                        "this backup holds a SQLite database; it restores into the data "
                        "directory, not into PostgreSQL"
                    )
                target = data.sqlite_file
                for stale in (
                    target,
                    *(target.with_name(target.name + s) for s in ("-wal", "-shm")),
                ):
                    stale.unlink(missing_ok=True)
                os.replace(work / _DATABASES["sqlite"], target)
                url = sqlite_url(target.resolve())
            else:
                url = normalize_url(database or config.database)
                if _backend(url) != "postgresql":
                    raise UsageError(
                        "this backup holds a PostgreSQL database; name one (--database)"
                    )
                _restore_postgresql(url, work / _DATABASES["postgresql"], force=force)
            config.database = url
            write_private(data.key_file, (work / "identity.key").read_bytes())
            write_private(data.card_file, (work / "card.json").read_bytes(), mode=0o644)
            data.save_config(config)
            if not data.token_file.exists():
                data.new_token()
        engine = engine_for(url)
        try:
            migrate(engine)
            with engine.begin() as conn:
                size = conn.execute(select(func.count()).select_from(m.log_entries)).scalar_one()
                conn.execute(delete(m.settings).where(m.settings.c.key == RECOVERY_REQUIRED))
                conn.execute(insert(m.settings).values(key=RECOVERY_REQUIRED, value="1"))
            if size != manifest["log_size"]:
                raise UnreadableFile(
                    f"{source}: the restored log has {size} entries, the backup says "
                    f"{manifest['log_size']}"
                )
            _record(
                engine,
                Actor(operator, LOCAL_ADMIN, "cli"),
                "restore",
                str(source),
                {"backup_created_at": manifest["created_at"], "log_size": size},
            )
        finally:
            engine.dispose()
    finally:
        lock.release()
    log.info("backup_restored", file=str(source), data=str(data.path), log_size=size)
    return RestoreInfo(
        path=data.path,
        party=config.party,
        backend=backend,
        log_size=int(size),
        database=url,
        created_at=datetime.fromisoformat(manifest["created_at"]),
    )


# Scheduled backups --------------------------------------------------------------


def schedule_directory(data: DataDir, config: Config) -> Path:
    """Where automatic backups go: ``backup.dir`` (relative to DIR), else ``DIR/backups``."""
    if not config.backup_dir:
        return data.path / "backups"
    directory = Path(config.backup_dir).expanduser()
    return directory if directory.is_absolute() else data.path / directory


_STAMP = "%Y%m%dT%H%M%SZ"


class BackupSchedule:
    """``parley serve``'s automatic backups: every ``every`` seconds into ``directory``.

    Files are named ``PARTY-YYYYmmddTHHMMSSZ.parley-backup`` (UTC); after each
    backup the oldest beyond ``keep`` are deleted. The work runs in a thread,
    never on the event loop. A failure raises one ``backup_failed`` alarm
    (``raise_alarm(..., once=True)``), cleared by the next success.
    """

    def __init__(
        self,
        path: Path,
        passphrase: str,
        *,
        directory: Path,
        every: float,
        keep: int,
        alarms: Terminal,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if every <= 0 or keep < 1:
            raise UsageError("backup.every must be positive and backup.keep at least 1")
        self.path = Path(path)
        self._passphrase = passphrase
        self.directory = Path(directory)
        self.every = every
        self.keep = keep
        self._alarms = alarms
        self._clock = clock
        self.party = DataDir(self.path).load_config().party
        self.done = 0
        self.failed = 0

    def _pattern(self) -> re.Pattern[str]:
        return re.compile(rf"{re.escape(self.party)}-\d{{8}}T\d{{6}}Z(-\d+)?\.parley-backup")

    def kept(self) -> list[Path]:
        """The scheduled backups in the directory, oldest first."""
        if not self.directory.is_dir():
            return []
        pattern = self._pattern()
        return sorted(p for p in self.directory.iterdir() if pattern.fullmatch(p.name))

    def run_once(self) -> BackupInfo | None:
        """One scheduled backup and the pruning after it (blocking: call it in a thread)."""
        subject = str(self.directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            name = f"{self.party}-{self._clock().strftime(_STAMP)}"
            target = self.directory / f"{name}.parley-backup"
            n = 1
            while target.exists():
                target = self.directory / f"{name}-{n}.parley-backup"
                n += 1
            info = backup_terminal(self.path, target, self._passphrase)
            for old in self.kept()[: -self.keep]:
                old.unlink(missing_ok=True)
        except Exception as exc:
            self.failed += 1
            log.error("scheduled_backup_failed", directory=subject, error=str(exc))
            self._alarms.raise_alarm(
                "backup_failed",
                "critical",
                subject,
                f"the scheduled backup into {subject} failed: {exc}",
                once=True,
            )
            return None
        self.done += 1
        if self.failed:
            self._alarms.clear_alarms("backup_failed", subject)
        return info

    async def run(self, stop: asyncio.Event) -> None:
        """Back up every ``every`` seconds until ``stop`` is set."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every)
                return
            await asyncio.to_thread(self.run_once)
