"""Who may serve a terminal: one process at a time owns its protocol state.

* ``ServeLock``: an exclusive lock on ``DIR/serve.lock``, held by the process
  serving from that data directory (and, briefly, by a command working on
  the database of a stopped terminal). On SQLite it is the only lock: a
  second ``parley serve`` on the same directory is refused.
* ``DatabaseLock``: on PostgreSQL, a session advisory lock keyed by the party
  id, held on a connection of its own by the active ``parley serve``. Every
  process that would serve the party, on this machine or another one, takes
  it first: a standby waits on it, and takes over when the active process's
  session ends (the process died, or its database connection did).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import time
from typing import IO

import structlog
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from parley.config import DataDir
from parley.store.db import normalize_url

__all__ = ["DatabaseLock", "ServeLock", "advisory_key", "is_postgres"]

log = structlog.get_logger("parley.lock")

#: Server-side TCP settings of the lock's session: a database server that
#: hears nothing from the active host for about this long (idle 2 s, then 3
#: probes 1 s apart, or unacknowledged data for 5 s) ends the session, which
#: releases the lock to a standby on another machine.
SESSION_SETTINGS = {
    "tcp_keepalives_idle": "2",
    "tcp_keepalives_interval": "1",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "5000",
}


class ServeLock:
    """An exclusive lock on ``DIR/serve.lock``: one process owns a terminal's state."""

    def __init__(self, data: DataDir) -> None:
        self.path = data.lock_file
        self._handle: IO[str] | None = None

    def acquire(self) -> bool:
        handle = open(self.path, "a+")  # noqa: SIM115 - held for the lock's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._handle = handle
        return True

    def wait(self, poll: float = 0.1) -> None:
        """Acquire, waiting for whoever holds it (a command on the database) to finish."""
        while not self.acquire():
            time.sleep(poll)

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    @staticmethod
    def held(data: DataDir) -> bool:
        lock = ServeLock(data)
        if lock.acquire():
            lock.release()
            return False
        return True


def is_postgres(url: str) -> bool:
    return normalize_url(url).startswith("postgresql")


def advisory_key(party: str) -> int:
    """The advisory lock key of ``party``: 64 bits of a hash of its id (signed, as PostgreSQL's)."""
    digest = hashlib.sha256(b"parley serve\0" + party.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class DatabaseLock:
    """PostgreSQL's session advisory lock on ``party``: one active ``parley serve`` per party.

    Held on a dedicated connection for as long as the process serves; it is
    released when that session ends, whichever way: a clean stop, a killed
    process (the server sees the socket close), or a lost host or network
    (the server's keepalive probes, ``SESSION_SETTINGS``).
    """

    def __init__(self, url: str, party: str) -> None:
        self.party = party
        self.key = advisory_key(party)
        self.name = f"parley serve {party} pid {os.getpid()} on {socket.gethostname()}"[:63]
        self._engine = create_engine(
            normalize_url(url),
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
            connect_args={
                "application_name": self.name,
                # The client's side too: a lost server is noticed in seconds.
                "keepalives": 1,
                "keepalives_idle": 2,
                "keepalives_interval": 1,
                "keepalives_count": 3,
                "connect_timeout": 10,
            },
        )
        self._conn: Connection | None = None

    def _connect(self) -> Connection:
        conn = self._engine.connect()
        for name, value in SESSION_SETTINGS.items():
            conn.execute(
                text("SELECT set_config(:name, :value, false)"), {"name": name, "value": value}
            )
        return conn

    @property
    def held(self) -> bool:
        return self._conn is not None

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; False if another process does."""
        conn = self._connect()
        got = bool(
            conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": self.key}).scalar()
        )
        if got:
            self._conn = conn
        else:
            conn.close()
        return got

    def holder(self) -> str | None:
        """Who holds the lock (its session's application name), if anyone."""
        with self._engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT a.application_name, a.client_addr FROM pg_locks l "
                    "JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
                    "AND l.classid = :high AND l.objid = :low AND l.database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())"
                ),
                {"high": (self.key >> 32) & 0xFFFFFFFF, "low": self.key & 0xFFFFFFFF},
            ).first()
        if row is None:
            return None
        return f"{row[0] or 'a session'}" + (f" from {row[1]}" if row[1] else "")

    def wait(self, retry: float = 1.0) -> None:
        """Block until the lock is ours (a standby); a lost database connection is retried."""
        while True:
            try:
                conn = self._connect()
            except DBAPIError as exc:
                log.warning("standby_database_unreachable", party=self.party, error=str(exc)[:300])
                time.sleep(retry)
                continue
            try:
                conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": self.key})
            except DBAPIError as exc:
                conn.close()
                log.warning("standby_wait_interrupted", party=self.party, error=str(exc)[:300])
                time.sleep(retry)
                continue
            self._conn = conn
            return

    def check(self) -> bool:
        """Whether the lock's session is still alive (so the lock is still ours)."""
        conn = self._conn
        if conn is None:
            return False
        try:
            conn.execute(text("SELECT 1"))
        except DBAPIError:
            return False
        return True

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # A session that is gone took the lock with it.
            with contextlib.suppress(DBAPIError):
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
            with contextlib.suppress(DBAPIError):
                conn.close()
        self._engine.dispose()
