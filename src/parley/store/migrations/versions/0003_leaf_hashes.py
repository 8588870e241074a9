"""leaf hashes beside log entries; language tags as long as envelopes carry

A terminal resumes from the leaf hashes (32 bytes an entry) instead of
reading and re-verifying every entry; ``parley verify`` still recomputes
them from the entries. Rows written before this revision have none and are
hashed when read. ``messages.lang`` grows from 16 to 35 characters, the
longest tag an envelope may carry (PostgreSQL refused longer ones).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("log_entries") as batch:
        batch.add_column(sa.Column("leaf", sa.LargeBinary(), nullable=True))
    with op.batch_alter_table("messages") as batch:
        batch.alter_column("lang", type_=sa.String(length=35), existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.alter_column("lang", type_=sa.String(length=16), existing_nullable=False)
    with op.batch_alter_table("log_entries") as batch:
        batch.drop_column("leaf")
