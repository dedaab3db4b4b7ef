"""message-headers: each blob's header block in a narrow table, for SEARCH HEADER (issue 23).

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07

Expand-only: a new table, a function and a trigger on ``messages``, nothing
rewritten. ``message_headers`` holds each blob up to its first empty line
(CRLF CRLF), or all of it when it has none: the text SEARCH HEADER's
pre-tests read (postroom.store.search, docs/decisions/0025). The trigger
fills it for every row inserted into ``messages``, whatever inserts it (the
mda, APPEND, imports, the previous release), so no insert path changes; it
runs as the owner (SECURITY DEFINER), so no service role needs INSERT on
the table. A header longer than 64 kB gets no row: such blobs are searched
the old way, as are blobs a backfill has not reached yet.

The upgrade backfills existing blobs in batches of ids (``INSERT ... ON
CONFLICT DO NOTHING``, so running it again is harmless) before it creates
the trigger, so deliveries go on meanwhile; CREATE TRIGGER then holds off
writes to ``messages`` while the blobs stored during the backfill get their
rows (one anti-join over ``messages``) until the upgrade commits. The cost
per million messages is in docs/upgrades.md. The header is stored uncompressed
(STORAGE EXTERNAL): the pre-tests read every row of a mailbox, and
decompressing costs more than the bytes saved.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# a new table kept by a trigger: the previous release never reads it, its inserts fill it
kind: str = "expand"

# messages per backfill statement
BATCH = 20000

# the blob up to its first CRLF CRLF (inclusive), or all of it; NULL past 64 kB. Only the
# first 64 kB are read (a sliced detoast), so a big message costs no more than a small one.
_PREFIX_FUNCTION = """
CREATE OR REPLACE FUNCTION message_header_prefix(blob bytea) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE
        WHEN position('\\x0d0a0d0a'::bytea IN substring(blob FROM 1 FOR 65536)) > 0
        THEN substring(blob FROM 1
                       FOR position('\\x0d0a0d0a'::bytea IN substring(blob FROM 1 FOR 65536)) + 3)
        WHEN octet_length(blob) <= 65536 THEN blob
    END
$$
"""

_TRIGGER_FUNCTION = """
CREATE OR REPLACE FUNCTION message_headers_fill() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    head bytea := message_header_prefix(NEW.blob);
BEGIN
    IF head IS NULL THEN
        DELETE FROM message_headers WHERE message_id = NEW.id;
    ELSE
        INSERT INTO message_headers (message_id, header, plain)
        VALUES (NEW.id, head, octet_length(encode(head, 'escape')) = octet_length(head))
        ON CONFLICT (message_id) DO UPDATE SET header = EXCLUDED.header, plain = EXCLUDED.plain;
    END IF;
    RETURN NULL;
END
$$
"""


_CATCH_UP = """
INSERT INTO message_headers (message_id, header, plain)
SELECT id, head, octet_length(encode(head, 'escape')) = octet_length(head)
FROM (SELECT m.id, message_header_prefix(m.blob) AS head FROM messages m
      WHERE NOT EXISTS (SELECT 1 FROM message_headers h WHERE h.message_id = m.id)) b
WHERE head IS NOT NULL
ON CONFLICT (message_id) DO NOTHING
"""


def backfill(conn: sa.engine.Connection, batch: int = BATCH) -> int:
    """Give every blob without a header row its row, ``batch`` ids at a time; rows added."""
    added = 0
    low = 0
    top = conn.execute(sa.text("SELECT coalesce(max(id), 0) FROM messages")).scalar_one()
    while low < top:
        done = conn.execute(sa.text(
            "INSERT INTO message_headers (message_id, header, plain) "
            "SELECT id, head, octet_length(encode(head, 'escape')) = octet_length(head) "
            "FROM (SELECT id, message_header_prefix(blob) AS head FROM messages "
            "WHERE id > :lo AND id <= :hi) b WHERE head IS NOT NULL "
            "ON CONFLICT (message_id) DO NOTHING"), {"lo": low, "hi": low + batch})
        added += done.rowcount or 0
        low += batch
    return added


def upgrade() -> None:
    op.create_table(
        "message_headers",
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.Column("header", sa.LargeBinary(), nullable=False),
        sa.Column("plain", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"], ondelete="CASCADE",
                                name=op.f("fk_message_headers_message_id_messages")),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_message_headers")),
    )
    op.execute("ALTER TABLE message_headers ALTER COLUMN header SET STORAGE EXTERNAL")
    op.execute(_PREFIX_FUNCTION)
    op.execute(_TRIGGER_FUNCTION)
    # the backfill first: it takes no lock that stops deliveries; CREATE TRIGGER stops writes
    # to messages until the upgrade commits, so after it only the blobs stored meanwhile
    # (no row yet: searched the old way until then) are added, by one anti-join
    backfill(op.get_bind())
    op.execute("CREATE TRIGGER messages_fill_headers AFTER INSERT OR UPDATE OF blob ON messages "
               "FOR EACH ROW EXECUTE FUNCTION message_headers_fill()")
    op.execute(_CATCH_UP)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS messages_fill_headers ON messages")
    op.execute("DROP FUNCTION IF EXISTS message_headers_fill()")
    op.execute("DROP FUNCTION IF EXISTS message_header_prefix(bytea)")
    op.drop_table("message_headers")
