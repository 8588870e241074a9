"""witness state that survives a restart; one alarm per incident; issued receipts

* ``observed_checkpoints``: every checkpoint of a peer's log this terminal
  has seen (in a receipt, an offer, a request), stored before it is relied
  on; ``verified`` once it was checked against the peer's leaf hashes.
* ``witnessed_leaves``: the leaf hashes of each peer's log this terminal was
  shown while witnessing it (what the peer needs to recover its own order).
* ``issued_receipts``: the receipts this terminal signed for envelopes it
  received (what a peer needs to recover the receipts in its own log).
* ``alarms.count`` / ``alarms.last_at``: repeated evidence of one incident
  updates one alarm; ``evidence.pair`` keeps each pair of checkpoints once.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

Time = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "observed_checkpoints",
        sa.Column("party", sa.String(length=63), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("root", sa.LargeBinary(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("seen_at", Time, nullable=False),
        sa.Column("verified", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.PrimaryKeyConstraint("party", "size"),
    )
    op.create_table(
        "witnessed_leaves",
        sa.Column("party", sa.String(length=63), nullable=False),
        sa.Column("idx", sa.BigInteger(), nullable=False),
        sa.Column("leaf", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("party", "idx"),
    )
    op.create_table(
        "issued_receipts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("envelope_id", sa.String(length=36), nullable=False),
        sa.Column("sender", sa.String(length=63), nullable=False),
        sa.Column("receipt", sa.LargeBinary(), nullable=False),
        sa.Column("issued_at", Time, nullable=False),
    )
    op.create_index("issued_receipts_by_sender", "issued_receipts", ["sender", "envelope_id"])
    with op.batch_alter_table("alarms") as batch:
        batch.add_column(sa.Column("count", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("last_at", Time, nullable=True))
    with op.batch_alter_table("evidence") as batch:
        batch.add_column(sa.Column("pair", sa.String(length=64), nullable=True))
        batch.create_unique_constraint("evidence_once_per_pair", ["party", "pair"])


def downgrade() -> None:
    with op.batch_alter_table("evidence") as batch:
        batch.drop_constraint("evidence_once_per_pair", type_="unique")
        batch.drop_column("pair")
    with op.batch_alter_table("alarms") as batch:
        batch.drop_column("last_at")
        batch.drop_column("count")
    op.drop_index("issued_receipts_by_sender", table_name="issued_receipts")
    op.drop_table("issued_receipts")
    op.drop_table("witnessed_leaves")
    op.drop_table("observed_checkpoints")
