"""leaf hashes beside log entries

A terminal resumes from the leaf hashes (32 bytes an entry) instead of
reading and re-verifying every entry; ``parley verify`` still recomputes
them from the entries. Rows written before this revision have none and are
hashed when read.

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


def downgrade() -> None:
    with op.batch_alter_table("log_entries") as batch:
        batch.drop_column("leaf")
