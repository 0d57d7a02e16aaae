"""Alembic migrations of the platform's database (see ``werkbund.platform.schema``)."""
