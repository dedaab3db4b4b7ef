"""Per-user delivery rules (a Sieve subset) and the vacation auto-reply log.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

Written by hand; the tables are declared in postroom.store.models (on the store's
metadata) with the same names, types and constraints.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# a new table: the previous release never reads it
kind: str = "expand"


def upgrade() -> None:
    op.create_table(
        "mail_rules",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("rules", postgresql.JSONB(astext_type=sa.Text()),
                  server_default=sa.text("'[]'::jsonb"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"],
                                name=op.f("fk_mail_rules_user_id_users"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_mail_rules")),
    )
    op.create_table(
        "vacation_replies",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("sender", sa.Text(), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"],
                                name=op.f("fk_vacation_replies_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", "sender", name=op.f("pk_vacation_replies")),
    )


def downgrade() -> None:
    op.drop_table("vacation_replies")
    op.drop_table("mail_rules")
