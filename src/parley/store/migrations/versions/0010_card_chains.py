"""card chains: every card of each party (rotations and re-pins) and revocations

* ``card_chain``: the cards of this terminal and of each peer, one row per
  version: how it came (``via``: ``pin`` by fingerprint read aloud, or
  ``rotation``, proved by the card before it) and its TLS certificate. The
  newest is also in ``peers.card`` (or the key file, for our own).
* ``revocations``: each verified revocation, kept as signed.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

Time = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "card_chain",
        sa.Column("party", sa.String(length=63), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False, unique=True),
        sa.Column("card", sa.LargeBinary(), nullable=False),
        sa.Column("fingerprint", sa.String(length=71), nullable=False),
        sa.Column("via", sa.String(length=16), nullable=False),
        sa.Column("tls_certificate", sa.LargeBinary(), nullable=True),
        sa.Column("added_at", Time, nullable=False),
        sa.PrimaryKeyConstraint("party", "version"),
    )
    op.create_table(
        "revocations",
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("party", sa.String(length=63), nullable=False),
        sa.Column("statement", sa.LargeBinary(), nullable=False),
        sa.Column("compromised_at", Time, nullable=False),
        sa.Column("received_at", Time, nullable=False),
        sa.PrimaryKeyConstraint("key_id"),
    )


def downgrade() -> None:
    op.drop_table("revocations")
    op.drop_table("card_chain")
