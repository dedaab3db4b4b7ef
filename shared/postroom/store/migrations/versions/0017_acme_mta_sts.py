"""acme-mta-sts: certificates by ACME, shared by every replica, and each domain's MTA-STS mode.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07

Expand-only: new tables and defaulted columns. ``acme_account`` holds the ACME
account key (sealed with POSTROOM_SECRET_KEY_FILE's key when set) per directory
URL; ``tls_certificates`` the certificate and key every service loads (the key
sealed likewise), by name (``default``); ``acme_challenges`` the HTTP-01 key
authorizations the web service answers while an order is validated.
``domains.mta_sts_mode`` (none / testing / enforce) and ``domains.mta_sts_id``
(the ``id=`` of the ``_mta-sts`` TXT record, new at every change) drive the
policy the web service serves. A release that does not know them reads and
writes as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# new tables and defaulted columns: the previous release reads and writes as before
kind: str = "expand"


def upgrade() -> None:
    op.add_column("domains", sa.Column("mta_sts_mode", sa.Text(),
                                       server_default=sa.text("'none'"), nullable=False))
    op.add_column("domains", sa.Column("mta_sts_id", sa.Text(), nullable=True))
    op.create_check_constraint("mta_sts_mode", "domains",
                               "mta_sts_mode IN ('none', 'testing', 'enforce')")
    op.create_table(
        "acme_account",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("directory", sa.Text(), nullable=False),
        sa.Column("key_pem", sa.Text(), nullable=False),
        sa.Column("uri", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_acme_account")),
        sa.UniqueConstraint("directory", name=op.f("uq_acme_account_directory")),
    )
    op.create_table(
        "tls_certificates",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("cert_pem", sa.Text(), nullable=False),
        sa.Column("key_pem", sa.Text(), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.Column("names", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_tls_certificates")),
    )
    op.create_table(
        "acme_challenges",
        sa.Column("token", sa.Text(), nullable=False),
        sa.Column("key_authorization", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("token", name=op.f("pk_acme_challenges")),
    )


def downgrade() -> None:
    op.drop_table("acme_challenges")
    op.drop_table("tls_certificates")
    op.drop_table("acme_account")
    op.drop_constraint("ck_domains_mta_sts_mode", "domains", type_="check")
    op.drop_column("domains", "mta_sts_id")
    op.drop_column("domains", "mta_sts_mode")
