"""index: KOS grants (which KOS opens which study)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 14:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "kos_grant",
        sa.Column("kos_sop_uid", sa.String(length=64), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kos_sop_uid"),
    )
    with op.batch_alter_table("kos_grant", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_kos_grant_study_uid"), ["study_uid"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("kos_grant", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_kos_grant_study_uid"))
    op.drop_table("kos_grant")
