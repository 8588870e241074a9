"""the action log names the role and the front end of every action

``operator_actions.role`` is the role the operator acted in (an account's
role, or ``local_admin`` for the console token); ``operator_actions.via``
the front end: ``console``, ``api`` or ``cli``.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("operator_actions") as batch:
        batch.add_column(sa.Column("role", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("via", sa.String(length=8), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("operator_actions") as batch:
        batch.drop_column("via")
        batch.drop_column("role")
