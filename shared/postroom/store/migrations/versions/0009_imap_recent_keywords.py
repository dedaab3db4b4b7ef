"""IMAP \\Recent and announced keywords: each mailbox's recent mark and keyword list.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

Expand-only: two columns with server defaults, and a backfill the previous
release does not notice. ``recent_uid`` is the first UID no session has
taken as \\Recent yet (RFC 3501 2.3.2: a message is recent in exactly one
session, the first read-write SELECT that sees it); existing mailboxes start
at their UIDNEXT, so nothing already there turns recent by the upgrade.
``keywords`` is the list of keywords the mailbox has ever had, which SELECT
announces in FLAGS; existing mailboxes get the keywords their messages hold.
The previous release inserts mailboxes with the defaults (nothing taken, no
keywords) and never reads either column.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# two columns with server defaults and a backfill: the previous release runs on it unchanged
kind: str = "expand"


def upgrade() -> None:
    op.add_column("mailboxes", sa.Column("recent_uid", sa.BigInteger(), nullable=False,
                                         server_default=sa.text("1")))
    op.add_column("mailboxes", sa.Column("keywords", postgresql.ARRAY(sa.Text()),
                                         nullable=False,
                                         server_default=sa.text("'{}'::text[]")))
    op.execute("UPDATE mailboxes SET recent_uid = uidnext")
    op.execute(
        "UPDATE mailboxes b SET keywords = k.names FROM ("
        "SELECT e.mailbox_id, array_agg(DISTINCT f ORDER BY f) AS names "
        "FROM mailbox_entries e CROSS JOIN LATERAL unnest(e.flags) f "
        "WHERE left(f, 1) <> '\\' GROUP BY e.mailbox_id) k WHERE k.mailbox_id = b.id")


def downgrade() -> None:
    op.drop_column("mailboxes", "keywords")
    op.drop_column("mailboxes", "recent_uid")
