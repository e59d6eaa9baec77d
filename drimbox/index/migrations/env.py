"""Alembic environment: runs against the engine drimbox hands over (never a URL in an ini)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

from drimbox.index.models import Base

engine: Engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    context.run_migrations()
