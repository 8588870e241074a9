"""each message row keeps the exact inner content its envelope's digest commits to

``messages.content`` holds the decrypted inner content (canonical JSON with
its salt) byte for byte, so a reader without the terminal's private key can
check the shown text, language and operator against the ``content_digest``
the sender signed. Rows stored before this revision are filled in by the
terminal the next time it opens (it decrypts its own copy from the log).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("content", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("content")
