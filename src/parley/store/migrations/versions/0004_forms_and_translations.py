"""negative receipts and refused content; certified translations

``messages.rejection_*`` mark incoming content this terminal refused (an
unknown or invalid form), ``receipts.rejection_*`` a negative receipt from a
peer. ``translations`` holds certified translations signed for the operator
who made them, ``translation_countersignatures`` a second operator's check.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("messages", "receipts"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("rejection_code", sa.String(length=64), nullable=True))
            batch.add_column(sa.Column("rejection_reason", sa.Text(), nullable=True))
    op.create_table(
        "translations",
        sa.Column("digest", sa.String(length=64), primary_key=True),
        sa.Column("envelope_id", sa.String(length=36), nullable=False),
        sa.Column("target_lang", sa.String(length=35), nullable=False),
        sa.Column("operator", sa.Text(), nullable=False),
        sa.Column("statement", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_translations_envelope_id", "translations", ["envelope_id"])
    op.create_table(
        "translation_countersignatures",
        sa.Column(
            "translation",
            sa.String(length=64),
            sa.ForeignKey("translations.digest"),
            nullable=False,
        ),
        sa.Column("operator", sa.Text(), nullable=False),
        sa.Column("statement", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("translation", "operator"),
    )


def downgrade() -> None:
    op.drop_table("translation_countersignatures")
    op.drop_index("ix_translations_envelope_id", "translations")
    op.drop_table("translations")
    for table in ("receipts", "messages"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("rejection_reason")
            batch.drop_column("rejection_code")
