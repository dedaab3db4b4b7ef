"""relay-transports: smarthost routes per recipient domain (`postroom relay set`).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07

Expand-only: one new table. ``relay_transports`` maps a recipient domain, or
``.parent`` for its subdomains, to a next hop (Postfix ``transport_maps``), its
TLS mode and an optional SASL login. ``password_ref`` is a file path or a
secret name, never the password itself. A release that does not know the table
delivers by MX or by POSTROOM_RELAY_HOST as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# a new table: the previous release reads and writes as before
kind: str = "expand"


def upgrade() -> None:
    op.create_table(
        "relay_transports",
        sa.Column("domain", sa.Text(), nullable=False),
        sa.Column("nexthop", sa.Text(), nullable=False),
        sa.Column("tls", sa.Text(), server_default=sa.text("'starttls'"), nullable=False),
        sa.Column("username", sa.Text(), nullable=True),
        sa.Column("password_ref", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.PrimaryKeyConstraint("domain", name=op.f("pk_relay_transports")),
    )


def downgrade() -> None:
    op.drop_table("relay_transports")
