"""medium-term encryption keys (forward secrecy)

* ``encryption_keys``: this terminal's keys, the private half sealed under a
  key derived from the key passphrase, overwritten when destroyed;
* ``peer_encryption_keys``: the keys peers announced (signed by their cards);
* ``encryption_key_sent``: which key was announced to which peer.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

Time = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "encryption_keys",
        sa.Column("key_id", sa.String(length=64), primary_key=True),
        sa.Column("serial", sa.Integer(), nullable=False, unique=True),
        sa.Column("announcement", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("retired_at", Time, nullable=True),
        sa.Column("destroy_after", Time, nullable=True),
        sa.Column("destroyed_at", Time, nullable=True),
        sa.Column("sealed", sa.LargeBinary(), nullable=True),
    )
    op.create_table(
        "peer_encryption_keys",
        sa.Column("party", sa.String(length=63), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("serial", sa.Integer(), nullable=False),
        sa.Column("announcement", sa.LargeBinary(), nullable=False),
        sa.Column("envelope_id", sa.String(length=36), nullable=False),
        sa.Column("received_at", Time, nullable=False),
        sa.PrimaryKeyConstraint("party", "key_id"),
    )
    op.create_table(
        "encryption_key_sent",
        sa.Column("party", sa.String(length=63), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("envelope_id", sa.String(length=36), nullable=False),
        sa.Column("at", Time, nullable=False),
        sa.PrimaryKeyConstraint("party", "key_id"),
    )


def downgrade() -> None:
    op.drop_table("encryption_key_sent")
    op.drop_table("peer_encryption_keys")
    op.drop_table("encryption_keys")
