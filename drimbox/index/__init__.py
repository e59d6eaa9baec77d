"""The index of what the PACS holds and what our store holds (SQLAlchemy 2.0, Alembic)."""
