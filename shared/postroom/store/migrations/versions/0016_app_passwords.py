"""app-passwords: per-device app passwords, and two-factor (TOTP) login for the web console.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07

Expand-only: new tables and nullable or defaulted columns. ``app_passwords``
keeps each app password's scrypt hash (never the secret) with the four-letter
``lookup`` that opens every secret, so a login verifies one hash, not one per
app password; ``protocols`` NULL means every protocol. ``users.totp_secret``
(a :mod:`postroom.secretbox` envelope when POSTROOM_SECRET_KEY_FILE is set),
``users.totp_enabled`` and ``users.totp_last_step`` (replay protection) hold
the second factor; ``totp_recovery_codes`` keeps only the SHA-256 of each
recovery code (docs/security.md, "App passwords and two-factor login"). A
release that does not know them reads and writes as before, but does not
refuse the main password of an account with two-factor login on.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# new tables and nullable or defaulted columns: the previous release reads and writes as before
kind: str = "expand"


def upgrade() -> None:
    op.add_column("users", sa.Column("totp_secret", sa.Text(), nullable=True))
    op.add_column("users", sa.Column("totp_enabled", sa.Boolean(),
                                     server_default=sa.text("false"), nullable=False))
    op.add_column("users", sa.Column("totp_last_step", sa.BigInteger(), nullable=True))
    op.create_table(
        "app_passwords",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("lookup", sa.Text(), nullable=False),
        sa.Column("hash", sa.Text(), nullable=False),
        sa.Column("protocols", postgresql.ARRAY(sa.Text()), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_ip", postgresql.INET(), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "protocols IS NULL OR (cardinality(protocols) > 0 AND protocols <@ "
            "ARRAY['imap', 'pop3', 'submission', 'managesieve']::text[])",
            name=op.f("ck_app_passwords_protocols")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE",
                                name=op.f("fk_app_passwords_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_app_passwords")),
        sa.UniqueConstraint("user_id", "name", name=op.f("uq_app_passwords_user_id_name")),
        sa.UniqueConstraint("user_id", "lookup", name=op.f("uq_app_passwords_user_id_lookup")),
    )
    op.create_table(
        "totp_recovery_codes",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("code_sha256", sa.Text(), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE",
                                name=op.f("fk_totp_recovery_codes_user_id_users")),
        sa.PrimaryKeyConstraint("user_id", "code_sha256", name=op.f("pk_totp_recovery_codes")),
    )


def downgrade() -> None:
    op.drop_table("totp_recovery_codes")
    op.drop_table("app_passwords")
    op.drop_column("users", "totp_last_step")
    op.drop_column("users", "totp_enabled")
    op.drop_column("users", "totp_secret")
