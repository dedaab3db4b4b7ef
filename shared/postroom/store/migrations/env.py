"""Alembic environment: online migrations only, on the connection postroom.store.migrate opens."""

from __future__ import annotations

from alembic import context

from postroom.store.models import Base

# one fixed key, so two services starting at once never migrate at the same time
MIGRATION_LOCK_KEY = 0x706F7374726F6F6D  # "postroom"


def run_migrations_online() -> None:
    connection = context.config.attributes["connection"]
    context.configure(connection=connection, target_metadata=Base.metadata,
                      compare_type=True, transaction_per_migration=False)
    with context.begin_transaction():
        context.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline migrations are not supported: run `postroom db upgrade`")
run_migrations_online()
