"""The searchable text of each message blob, for SEARCH BODY/TEXT (postroom.store.fts).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

Expand-only: a new table with a GIN index, nothing rewritten. A release that
does not know it never reads it; blobs it stores meanwhile have no row and are
searched by their raw bytes until `postroom fts backfill` indexes them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import TSVECTOR

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# a new table: the previous release neither reads nor writes it
kind: str = "expand"


def upgrade() -> None:
    op.create_table(
        "message_texts",
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.Column("head", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("words", TSVECTOR(), nullable=False),
        sa.Column("truncated", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("indexed_at", sa.DateTime(timezone=True), server_default=sa.func.now(),
                  nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"], ondelete="CASCADE",
                                name=op.f("fk_message_texts_message_id_messages")),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_message_texts")),
    )
    op.create_index("ix_message_texts_words", "message_texts", ["words"],
                    postgresql_using="gin")


def downgrade() -> None:
    op.drop_index("ix_message_texts_words", table_name="message_texts")
    op.drop_table("message_texts")
