"""DKIM key lifecycle: pending (generated, not yet in DNS), active (signs), retired.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

Written by hand to match models.DkimKey. Every existing key keeps its
``active`` flag and gets pending = false: the keys that signed before still
sign, the deactivated ones read as retired.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# new columns with defaults; the previous release signs with `active` keys, which a
# pending key never is, and its inserts (no pending column) make active keys as before.
# No constraint ties `active` to `pending`: the previous release's `set_key_active` sets
# `active` alone, and `active` wins (models.DkimKey).
kind: str = "expand"


def upgrade() -> None:
    op.add_column("dkim_keys", sa.Column("pending", sa.Boolean(),
                                         server_default=sa.text("false"), nullable=False))
    op.add_column("dkim_keys", sa.Column("replaces_id", sa.Integer(), nullable=True))
    op.add_column("dkim_keys", sa.Column("retired_at", sa.DateTime(timezone=True),
                                         nullable=True))
    op.create_foreign_key(op.f("fk_dkim_keys_replaces_id_dkim_keys"), "dkim_keys",
                          "dkim_keys", ["replaces_id"], ["id"], ondelete="SET NULL")


def downgrade() -> None:
    op.drop_constraint(op.f("fk_dkim_keys_replaces_id_dkim_keys"), "dkim_keys",
                       type_="foreignkey")
    op.drop_column("dkim_keys", "retired_at")
    op.drop_column("dkim_keys", "replaces_id")
    op.drop_column("dkim_keys", "pending")
