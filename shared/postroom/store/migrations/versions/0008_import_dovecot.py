"""What `postroom import dovecot` keeps: each message's old POP3 UIDL, each mailbox's import mark.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

Expand-only: two nullable columns, nothing rewritten. A release that does not
know them reads and writes its rows as before (its INSERTs leave them NULL,
which means "the default UIDL" and "never imported").
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# two nullable columns: the previous release reads and writes its rows as before
kind: str = "expand"


def upgrade() -> None:
    op.add_column("mailbox_entries", sa.Column("pop3_uidl", sa.Text(), nullable=True))
    op.add_column("mailboxes", sa.Column("import_uidnext", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("mailboxes", "import_uidnext")
    op.drop_column("mailbox_entries", "pop3_uidl")
