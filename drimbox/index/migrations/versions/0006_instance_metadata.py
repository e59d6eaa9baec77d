"""index: WADO-RS metadata of stored instances in a table (was a `<sop>.meta.gz` file each)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 03:10:00

Metadata files of an older store stay where they are, unused (eviction removes them with their
instance); each instance's metadata is computed again from its file on first request.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "instance_metadata",
        sa.Column("sop_uid", sa.String(length=64), nullable=False),
        sa.Column("document", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["sop_uid"], ["instance.sop_uid"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("sop_uid"),
    )


def downgrade() -> None:
    op.drop_table("instance_metadata")
