"""learn-durable: spam/ham learning requests in PostgreSQL (``learn_requests``).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07

Expand-only: one new table. The imap service inserts a row per message in the
transaction of the COPY or MOVE into or out of Junk; the dmarc service's learn
worker deletes it once rspamd answered, and re-signals rows left pending
(docs/content-filtering.md, Learning). A release that does not know the table
learns through the ``learn`` stream alone, as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# a new table: the previous release reads and writes as before
kind: str = "expand"


def upgrade() -> None:
    op.create_table(
        "learn_requests",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.Column("klass", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.Column("signalled_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.CheckConstraint("klass IN ('spam', 'ham')", name=op.f("ck_learn_requests_klass")),
        sa.PrimaryKeyConstraint("user_id", "message_id", "klass",
                                name=op.f("pk_learn_requests")),
    )
    op.create_index(op.f("ix_learn_requests_signalled_at"), "learn_requests", ["signalled_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_learn_requests_signalled_at"), table_name="learn_requests")
    op.drop_table("learn_requests")
