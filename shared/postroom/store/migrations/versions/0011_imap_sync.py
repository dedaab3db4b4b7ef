"""imap-sync: QRESYNC's expunged UIDs (RFC 7162) and METADATA's annotations (RFC 5464).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

Expand-only: new tables and a column with a default. ``server_annotations``
and ``mailbox_annotations`` hold METADATA entries (docs/imap.md, METADATA).
``vanished_floor`` starts at each mailbox's HIGHESTMODSEQ: what was expunged
before this revision is not known, so a client resyncing from an older modseq
is told the UIDs it may know that are gone (RFC 7162 3.2.5.1 allows that), not
the exact list. A release that does not know the tables expunges as before;
its expunges are missed by VANISHED until the upgrade is complete (docs/imap.md,
QRESYNC).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# a new table and a defaulted column: the previous release reads and writes as before
kind: str = "expand"


def upgrade() -> None:
    op.add_column("mailboxes", sa.Column("vanished_floor", sa.BigInteger(),
                                         server_default=sa.text("0"), nullable=False))
    op.execute("UPDATE mailboxes SET vanished_floor = highestmodseq")
    op.create_table(
        "expunged_entries",
        sa.Column("mailbox_id", sa.Integer(),
                  sa.ForeignKey("mailboxes.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("uid", sa.BigInteger(), primary_key=True),
        sa.Column("modseq", sa.BigInteger(), nullable=False),
        sa.Column("expunged_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
    )
    op.create_index("ix_expunged_entries_mailbox_id_modseq", "expunged_entries",
                    ["mailbox_id", "modseq"])
    op.create_table(
        "server_annotations",
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("value", sa.LargeBinary(), nullable=False),
    )
    op.create_table(
        "mailbox_annotations",
        sa.Column("mailbox_id", sa.Integer(),
                  sa.ForeignKey("mailboxes.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("value", sa.LargeBinary(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("mailbox_annotations")
    op.drop_table("server_annotations")
    op.drop_index("ix_expunged_entries_mailbox_id_modseq", table_name="expunged_entries")
    op.drop_table("expunged_entries")
    op.drop_column("mailboxes", "vanished_floor")
