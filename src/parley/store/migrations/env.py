"""Alembic environment: migrations run on the connection Parley hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from parley.store.models import metadata

config = context.config
connection = config.attributes.get("connection")
if not isinstance(connection, Connection):  # pragma: no cover - only via parley.store.db
    raise RuntimeError("Parley's migrations run through parley.store.db.migrate()")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
