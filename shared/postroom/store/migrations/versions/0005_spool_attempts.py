"""Each recipient's attempt history (delivered, deferred, failed, bounced) for `postroom trace`.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26

Written by hand to match models.SpoolAttempt.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# a new table: the previous release never reads it
kind: str = "expand"


def upgrade() -> None:
    op.create_table(
        "spool_attempts",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("recipient_id", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.Column("result", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.CheckConstraint("result IN ('delivered', 'deferred', 'failed', 'bounced')",
                           name=op.f("ck_spool_attempts_result")),
        sa.ForeignKeyConstraint(["recipient_id"], ["spool_recipients.id"],
                                name=op.f("fk_spool_attempts_recipient_id_spool_recipients"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_spool_attempts")),
    )
    op.create_index(op.f("ix_spool_attempts_recipient_id"), "spool_attempts", ["recipient_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_spool_attempts_recipient_id"), table_name="spool_attempts")
    op.drop_table("spool_attempts")
