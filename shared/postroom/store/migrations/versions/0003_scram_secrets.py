"""SCRAM-SHA-256 secrets (RFC 7677) on users, so SMTP AUTH and IMAP AUTHENTICATE can offer SCRAM.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26

Written by hand. The column is nullable: accounts whose password was set before
this revision have no secrets (none can be derived from an scrypt hash) and
cannot use SCRAM until their password is set again.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# a nullable column: the previous release neither reads nor needs it
kind: str = "expand"


def upgrade() -> None:
    op.add_column("users", sa.Column("scram_secrets", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("users", "scram_secrets")
