"""sieve: each account's Sieve scripts (``sieve_scripts``), at most one active.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07

Expand-only: one new table. The mda runs an account's active script at
delivery (docs/mda.md, "Sieve"); `postroom sieve` and ManageSieve (RFC 5804)
edit the scripts. A partial unique index keeps one active script per account.
A release that does not know the table reads and writes as before.

Data: each account's JSON rules (``mail_rules``, migration 0002) are written
as the Sieve script they stand for (postroom.sieve.convert), named ``rules``
and made active. ``mail_rules`` itself is left as it was (expand-only: the
previous release still reads it; a later contract migration drops it), so a
downgrade returns to the rules.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

log = logging.getLogger("alembic.runtime.migration")

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# a new table: the previous release reads and writes as before
kind: str = "expand"


def upgrade() -> None:
    op.create_table(
        "sieve_scripts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("active", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE",
                                name=op.f("fk_sieve_scripts_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sieve_scripts")),
        sa.UniqueConstraint("user_id", "name", name=op.f("uq_sieve_scripts_user_id_name")),
    )
    op.create_index(op.f("ix_sieve_scripts_user_id_active"), "sieve_scripts", ["user_id"],
                    unique=True, postgresql_where=sa.text("active"))
    _convert_rules()


def _convert_rules() -> None:
    """Every account's JSON rules as its active Sieve script ``rules``."""
    from postroom.rules import RulesError
    from postroom.sieve.convert import SCRIPT_NAME, rules_to_sieve

    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT user_id, rules FROM mail_rules ORDER BY user_id")).all()
    for user_id, rules in rows:
        if not rules:
            continue
        try:
            script = rules_to_sieve(rules)
        except RulesError as exc:
            # stored before a validation change: the mda ran none of them either
            log.warning("rules of user %s not converted: %s", user_id, exc)
            continue
        bind.execute(sa.text(
            "INSERT INTO sieve_scripts (user_id, name, content, active, size)"
            " VALUES (:u, :n, :c, true, :s)"),
            {"u": user_id, "n": SCRIPT_NAME, "c": script, "s": len(script.encode("utf-8"))})


def downgrade() -> None:
    op.drop_index(op.f("ix_sieve_scripts_user_id_active"), table_name="sieve_scripts")
    op.drop_table("sieve_scripts")
