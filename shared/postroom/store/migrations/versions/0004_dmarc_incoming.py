"""Incoming DMARC aggregate reports (from other receivers, about our domains).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

Written by hand; the table is declared in postroom.store.models
(``DmarcIncomingReport``) with the same names, types and constraints.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# a new table: the previous release never reads it
kind: str = "expand"


def upgrade() -> None:
    op.create_table(
        "dmarc_incoming_reports",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("message_sha256", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("org_name", sa.Text(), nullable=True),
        sa.Column("report_id", sa.Text(), nullable=True),
        sa.Column("domain", sa.Text(), nullable=True),
        sa.Column("begin_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("policy", postgresql.JSONB(astext_type=sa.Text()),
                  server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("rows", postgresql.JSONB(astext_type=sa.Text()),
                  server_default=sa.text("'[]'::jsonb"), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.CheckConstraint("status IN ('stored', 'refused', 'duplicate')",
                           name=op.f("ck_dmarc_incoming_reports_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dmarc_incoming_reports")),
        sa.UniqueConstraint("message_sha256",
                            name=op.f("uq_dmarc_incoming_reports_message_sha256")),
    )
    op.create_index("uq_dmarc_incoming_reports_org_name_report_id", "dmarc_incoming_reports",
                    ["org_name", "report_id"], unique=True,
                    postgresql_where=sa.text("status = 'stored'"))
    op.create_index("ix_dmarc_incoming_reports_domain_end_at", "dmarc_incoming_reports",
                    ["domain", "end_at"])


def downgrade() -> None:
    op.drop_index("ix_dmarc_incoming_reports_domain_end_at", "dmarc_incoming_reports")
    op.drop_index("uq_dmarc_incoming_reports_org_name_report_id", "dmarc_incoming_reports")
    op.drop_table("dmarc_incoming_reports")
