"""The database of a terminal that is not running, opened for a front end.

A front end (``parley.cli``) reaches the store only through the application
layer: it opens the configured database here, and checks that its schema is
the one this version of Parley reads (``parley serve`` migrates it).
"""

from __future__ import annotations

from sqlalchemy import Engine

from parley.store.db import engine_for
from parley.store.db import schema_is_current as _schema_is_current

__all__ = ["open_engine", "schema_is_current"]


def open_engine(database: str) -> Engine:
    """An engine on the configured database (``config.database``); dispose of it when done."""
    return engine_for(database)


def schema_is_current(engine: Engine) -> bool:
    """Whether the database's schema is the current one (else ``parley serve`` migrates it)."""
    return _schema_is_current(engine)
