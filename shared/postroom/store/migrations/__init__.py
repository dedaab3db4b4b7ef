"""Alembic migration scripts of the store (run through postroom.store.migrate, no alembic.ini)."""
