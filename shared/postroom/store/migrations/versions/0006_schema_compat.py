"""The compatibility window: which releases' code runs on the schema as it is now.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

Written by hand to match models.SchemaCompat. `postroom db upgrade` fills the
table from the migrations' kinds (docs/upgrades.md); an older release reads it
to learn whether a schema newer than its own head still fits it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# a new table nothing older reads: the previous release runs on this schema unchanged
kind: str = "expand"


def upgrade() -> None:
    op.create_table(
        "schema_compat",
        sa.Column("revision", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("revision", name=op.f("pk_schema_compat")),
    )


def downgrade() -> None:
    op.drop_table("schema_compat")
