"""the operator console: languages, actions, handovers, held FLASH, link samples

``users.lang`` is each operator's console language; ``operator_actions``
records every console action with its operator; ``handovers`` the shift
handovers; ``held_messages`` FLASH messages waiting for a supervisor's
release; ``link_samples`` round-trip times for the links page's chart.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column("lang", sa.String(length=8), nullable=False, server_default="en")
        )
    op.create_table(
        "operator_actions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", TIME, nullable=False),
        sa.Column("operator", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
    )
    op.create_index("operator_actions_by_time", "operator_actions", ["at"])
    op.create_table(
        "handovers",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("signed_off_by", sa.String(length=64), nullable=False),
        sa.Column("signed_off_at", TIME, nullable=False),
        sa.Column("open_items", sa.Text(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("accepted_by", sa.String(length=64), nullable=True),
        sa.Column("accepted_at", TIME, nullable=True),
    )
    op.create_table(
        "held_messages",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("operator", sa.String(length=64), nullable=False),
        sa.Column("request", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("decided_by", sa.String(length=64), nullable=True),
        sa.Column("decided_at", TIME, nullable=True),
        sa.Column("envelope_id", sa.String(length=36), nullable=True),
    )
    op.create_table(
        "link_samples",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("peer", sa.String(length=63), nullable=False),
        sa.Column("link", sa.String(length=63), nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("rtt_ms", sa.Float(), nullable=True),
    )
    op.create_index("link_samples_by_link", "link_samples", ["peer", "link", "at"])


def downgrade() -> None:
    op.drop_index("link_samples_by_link", "link_samples")
    op.drop_table("link_samples")
    op.drop_table("held_messages")
    op.drop_table("handovers")
    op.drop_index("operator_actions_by_time", "operator_actions")
    op.drop_table("operator_actions")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("lang")
