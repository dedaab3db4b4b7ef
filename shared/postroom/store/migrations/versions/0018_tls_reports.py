"""tls-reports: outbound TLS session results and incoming TLS reports (RFC 8460, TLS-RPT).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07

Expand-only: two new tables. ``tls_results`` gets one row per outbound TLS
negotiation (or policy failure) the mta's relay makes, read by the dmarc
service's daily TLS report; ``tls_incoming_reports`` keeps the TLS reports
other senders send about our domains, keyed by the mail's SHA-256 as
``dmarc_incoming_reports`` is. The previous release never reads either.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# new tables: the previous release never reads or writes them
kind: str = "expand"


def upgrade() -> None:
    op.create_table(
        "tls_results",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.Column("policy_domain", sa.Text(), nullable=False),
        sa.Column("policy_type", sa.Text(), nullable=False),
        sa.Column("policy_string", postgresql.ARRAY(sa.Text()), nullable=True),
        sa.Column("mx_host", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column("sending_ip", postgresql.INET(), nullable=True),
        sa.Column("receiving_ip", postgresql.INET(), nullable=True),
        sa.Column("result_type", sa.Text(), nullable=True),
        sa.Column("failure_detail", sa.Text(), nullable=True),
        sa.CheckConstraint("policy_type IN ('sts', 'tlsa', 'no-policy-found')",
                           name=op.f("ck_tls_results_policy_type")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tls_results")),
    )
    op.create_index("ix_tls_results_policy_domain_recorded_at", "tls_results",
                    ["policy_domain", "recorded_at"])
    op.create_table(
        "tls_incoming_reports",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("message_sha256", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("org_name", sa.Text(), nullable=True),
        sa.Column("report_id", sa.Text(), nullable=True),
        sa.Column("begin_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("domains", postgresql.ARRAY(sa.Text()),
                  server_default=sa.text("'{}'::text[]"), nullable=False),
        sa.Column("policies", postgresql.JSONB(astext_type=sa.Text()),
                  server_default=sa.text("'[]'::jsonb"), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.CheckConstraint("status IN ('stored', 'refused', 'duplicate')",
                           name=op.f("ck_tls_incoming_reports_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tls_incoming_reports")),
        sa.UniqueConstraint("message_sha256",
                            name=op.f("uq_tls_incoming_reports_message_sha256")),
    )
    op.create_index("uq_tls_incoming_reports_org_name_report_id", "tls_incoming_reports",
                    ["org_name", "report_id"], unique=True,
                    postgresql_where=sa.text("status = 'stored'"))
    op.create_index("ix_tls_incoming_reports_domains", "tls_incoming_reports", ["domains"],
                    postgresql_using="gin")


def downgrade() -> None:
    op.drop_index("ix_tls_incoming_reports_domains", "tls_incoming_reports")
    op.drop_index("uq_tls_incoming_reports_org_name_report_id", "tls_incoming_reports")
    op.drop_table("tls_incoming_reports")
    op.drop_index("ix_tls_results_policy_domain_recorded_at", "tls_results")
    op.drop_table("tls_results")
