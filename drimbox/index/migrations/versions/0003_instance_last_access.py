"""index: instance.last_access indexed (eviction order of the store cache)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 14:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE instance SET last_access = stored_at WHERE last_access IS NULL AND stored_at IS NOT NULL")
    with op.batch_alter_table("instance", schema=None) as batch_op:
        batch_op.create_index("ix_instance_last_access", ["last_access"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("instance", schema=None) as batch_op:
        batch_op.drop_index("ix_instance_last_access")
