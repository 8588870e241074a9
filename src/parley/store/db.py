"""Opening the terminal's database and bringing its schema up to date.

SQLite (the default, a file in the data directory) runs in WAL mode with
``synchronous=FULL``: a commit has reached the disk before ``send`` returns
or a receipt is signed. PostgreSQL is used when the configuration names a
``postgresql://`` URL (driven by psycopg 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError

from parley.errors import UsageError

__all__ = [
    "SchemaRevision",
    "engine_for",
    "migrate",
    "normalize_url",
    "reading",
    "schema_is_current",
    "schema_revision",
    "sqlite_url",
]


def sqlite_url(path: Path) -> str:
    return f"sqlite+pysqlite:///{path}"


def normalize_url(url: str) -> str:
    """Accept ``postgresql://`` and ``sqlite:///`` URLs; pick the drivers Parley ships with."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise UsageError(f"not a database URL: {url!r} ({exc})") from None
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+pysqlite").render_as_string(hide_password=False)
    raise UsageError(f"Parley stores its records in SQLite or PostgreSQL, not {backend}")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite's own transaction handling is replaced by explicit BEGIN so that
    # SQLAlchemy's transactions are real SQLite transactions.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    # A reader takes no lock (WAL: it sees the last commit and blocks nobody);
    # a writer takes the write lock at BEGIN, so that two writers queue on the
    # busy timeout instead of failing when a read would turn into a write.
    if conn.get_execution_options().get(_READ_ONLY):
        conn.exec_driver_sql("BEGIN")
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


_READ_ONLY = "parley_read_only"


def reading(engine: Engine) -> Connection:
    """A connection for reading only (``with reading(engine) as conn:``).

    On SQLite it begins a deferred transaction, which takes no write lock: a
    console refreshing its pages never makes a commit wait. Anything it
    writes is rolled back when the block ends.
    """
    return engine.connect().execution_options(**{_READ_ONLY: True})


def engine_for(url: str, *, connect_timeout: int | None = None) -> Engine:
    """An engine for ``url`` with Parley's durability settings.

    ``connect_timeout``: seconds a PostgreSQL connection may take to open
    (default: libpq's, which waits as long as TCP does).
    """
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    connect_args = {} if connect_timeout is None else {"connect_timeout": connect_timeout}
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def _alembic_config(engine: Engine) -> Config:
    config = Config()
    location = resources.files("parley.store") / "migrations"
    config.set_main_option("script_location", str(location))
    return config


def migrate(engine: Engine) -> None:
    """Create or upgrade the schema to the newest migration."""
    config = _alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


@dataclass(frozen=True, slots=True)
class SchemaRevision:
    """Where a database's schema stands against this code's migrations."""

    #: The database's revision; None when it holds no Parley schema.
    current: str | None
    #: The newest migration of this code.
    head: str
    #: Whether ``current`` is one of this code's migrations (False: a newer Parley's).
    known: bool

    @property
    def is_current(self) -> bool:
        return self.current == self.head


def schema_revision(engine: Engine) -> SchemaRevision:
    """The database's schema revision, this code's newest, and whether it knows the first."""
    script = ScriptDirectory.from_config(_alembic_config(engine))
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    head = script.get_current_head()
    assert head is not None  # the migrations ship with the code
    try:
        known = current is None or script.get_revision(current) is not None
    except CommandError:
        known = False
    return SchemaRevision(current, head, known)


def schema_is_current(engine: Engine) -> bool:
    """Whether the database holds the newest schema (``parley`` refuses to run otherwise)."""
    return schema_revision(engine).is_current
