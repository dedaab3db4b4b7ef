"""web-access: console and REST API access (admins, domain managers, API tokens, web sessions).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07

Expand-only: a defaulted column and new tables. ``users.is_admin`` marks global
admins; ``domain_managers`` says which domains a (non-admin) account manages;
``api_tokens`` keeps only the SHA-256 of each token's secret (NULL ``domain_id``:
a token for every domain); ``web_sessions`` keeps only the SHA-256 of each
console session's cookie (docs/operations.md, "Console access"). A release that
does not know them reads and writes as before; none of its services use them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# new tables and a defaulted column: the previous release reads and writes as before
kind: str = "expand"


def upgrade() -> None:
    op.add_column("users", sa.Column("is_admin", sa.Boolean(),
                                     server_default=sa.text("false"), nullable=False))
    op.create_table(
        "domain_managers",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("domain_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE",
                                name=op.f("fk_domain_managers_user_id_users")),
        sa.ForeignKeyConstraint(["domain_id"], ["domains.id"], ondelete="CASCADE",
                                name=op.f("fk_domain_managers_domain_id_domains")),
        sa.PrimaryKeyConstraint("user_id", "domain_id", name=op.f("pk_domain_managers")),
    )
    op.create_index(op.f("ix_domain_managers_domain_id"), "domain_managers", ["domain_id"])
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("token_sha256", sa.Text(), nullable=False),
        sa.Column("domain_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["domain_id"], ["domains.id"], ondelete="CASCADE",
                                name=op.f("fk_api_tokens_domain_id_domains")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("name", name=op.f("uq_api_tokens_name")),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_api_tokens_token_sha256")),
    )
    op.create_table(
        "web_sessions",
        sa.Column("id_sha256", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("csrf_token", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE",
                                name=op.f("fk_web_sessions_user_id_users")),
        sa.PrimaryKeyConstraint("id_sha256", name=op.f("pk_web_sessions")),
    )
    op.create_index(op.f("ix_web_sessions_expires_at"), "web_sessions", ["expires_at"])
    op.create_index(op.f("ix_web_sessions_user_id"), "web_sessions", ["user_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_web_sessions_user_id"), table_name="web_sessions")
    op.drop_index(op.f("ix_web_sessions_expires_at"), table_name="web_sessions")
    op.drop_table("web_sessions")
    op.drop_table("api_tokens")
    op.drop_index(op.f("ix_domain_managers_domain_id"), table_name="domain_managers")
    op.drop_table("domain_managers")
    op.drop_column("users", "is_admin")
