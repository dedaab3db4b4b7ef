"""Alembic revisions, one file each; Alembic itself skips this __init__."""
