"""Full-text search: each blob's searchable text (``message_texts``), and BODY/TEXT over it.

A blob's text (:func:`postroom.mime.fulltext.extract_text`: decoded parts,
HTML reduced to text, attachment file names, RFC 2047-decoded header fields)
is stored once per blob, lowercased and space-normalised, with its words in a
``tsvector`` under a GIN index: header words with weight A, body words with
weight D. It is written in the transaction that files the blob (the mda's
fast path in :mod:`postroom.store.delivery`, its general path, APPEND,
imports) and by ``postroom fts backfill`` for older mail.

The text search configuration is the connection's ``default_text_search_config``
(set from POSTROOM_FTS_CONFIG by :func:`postroom.store.db.make_engine`), so
writers and searches cannot use different ones.

A SEARCH BODY/TEXT needle is answered in two steps, both in SQL (see
docs/imap.md, "Full-text search"): the index finds the blobs holding the
needle's words (every word whole, the last one as a prefix when the needle
ends inside a word, the first one as a prefix when it is the only one), then
the stored text must contain the whole needle as a substring. So every answer
contains the needle; a needle that starts inside a word ("ello" in "hello")
is not found. A blob with no text row yet, or whose text was truncated at
POSTROOM_FTS_MAX_BYTES, is also matched against its raw bytes as before.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from postroom.mime.fulltext import (
    MAX_WORD,
    UNREADABLE,
    MessageText,
    normalise,
    text_or_unreadable,
    words,
)

_WORD = re.compile(r"[^\W_]+")

# the words: header words weight A, body words weight D; the configuration is the connection's
# (`default_text_search_config`, see the module docstring)
WORDS_SQL = ("setweight(to_tsvector(CAST({hw} AS text)), 'A') "
             "|| to_tsvector(CAST({bw} AS text))")

# the row, in a data-modifying statement's WITH list (the mda's fast path) or alone
INSERT_SQL = (
    "INSERT INTO message_texts (message_id, head, body, words, truncated) "
    "SELECT {id}, CAST({h} AS text), CAST({b} AS text), " + WORDS_SQL
    + ", CAST({t} AS boolean) {where} "
    "ON CONFLICT (message_id) DO NOTHING")


def text_params(doc: MessageText) -> dict[str, Any]:
    """The statement parameters of ``doc`` (``h``, ``b``, ``hw``, ``bw``, ``t``)."""
    return {"h": doc.head, "b": doc.body, "hw": " ".join(words(doc.head)),
            "bw": " ".join(words(doc.body)), "t": doc.truncated}


_STORE = INSERT_SQL.format(id=":id", h=":h", b=":b", hw=":hw", bw=":bw", t=":t", where="")


def store_text(session: Session, message_id: int, doc: MessageText) -> None:
    """Keep ``doc`` as blob ``message_id``'s searchable text unless it has one already."""
    session.execute(text(_STORE), {"id": message_id, **text_params(doc)})


def has_text(session: Session, message_id: int) -> bool:
    return session.execute(text("SELECT 1 FROM message_texts WHERE message_id = :id"),
                           {"id": message_id}).first() is not None


def unindexed(session: Session, after: int, limit: int) -> list[tuple[int, bytes]]:
    """Up to ``limit`` (id, blob) of blobs above id ``after`` that have no text yet, by id."""
    rows = session.execute(text(
        "SELECT m.id, m.blob FROM messages m WHERE m.id > :after AND NOT EXISTS "
        "(SELECT 1 FROM message_texts t WHERE t.message_id = m.id) ORDER BY m.id LIMIT :n"),
        {"after": after, "n": limit}).all()
    return [(int(r[0]), bytes(r[1])) for r in rows]


def backfill_batch(session: Session, after: int, limit: int,
                   max_bytes: int) -> tuple[int, int, int]:
    """Index up to ``limit`` blobs above id ``after`` that have no text; (last id, indexed, failed).

    One transaction per call (``postroom fts backfill``); resumable, since only
    blobs with no row are taken. A blob whose MIME cannot be read gets an empty,
    truncated row: it is searched by its raw bytes, and not taken again.
    """
    last, done, failed = after, 0, 0
    for message_id, blob in unindexed(session, after, limit):
        doc = text_or_unreadable(blob, max_bytes)
        failed += doc is UNREADABLE
        store_text(session, message_id, doc)
        last, done = message_id, done + 1
    return last, done, failed


def counts(session: Session) -> tuple[int, int]:
    """(blobs, blobs with their text indexed)."""
    row = session.execute(text(
        "SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM message_texts)")).one()
    return int(row[0]), int(row[1])


# --- SEARCH BODY / TEXT


def tsquery(needle: str, body_only: bool) -> str | None:
    """The ``to_tsquery`` text for normalised ``needle``; None: the index cannot narrow it.

    Whole words are exact; the last word is a prefix when the needle ends
    inside it (``"hel"``, ``"hello wor"``). ``body_only`` restricts every
    word to the body's weight (D).
    """
    found = _WORD.findall(needle)
    if not found:
        return None
    weight = "D" if body_only else ""
    terms = []
    for i, word in enumerate(found):
        if len(word) > MAX_WORD:
            continue  # never indexed as a word: the substring check alone decides
        last = i == len(found) - 1
        prefix = last and bool(_WORD.match(needle[-1]))
        terms.append(f"'{word}':{'*' if prefix else ''}{weight}" if prefix or weight
                     else f"'{word}'")
    return " & ".join(terms) or None


def search_condition(param: Callable[[Any], str], where: str, value: str,
                     raw_match: str, mailbox: str = ":mbox") -> str:
    """The condition over ``mailbox_entries e``, ``messages m`` for BODY or TEXT ``value``.

    ``where`` is ``"body"`` or ``"text"``.

    ``param`` binds a value and returns its placeholder; ``raw_match`` is the
    raw-byte condition used for blobs not (fully) indexed; ``mailbox`` the
    placeholder of the searched mailbox's id. Both parts are uncorrelated
    sub-selects over that mailbox, run once per search (hashed), so the
    planner may answer the first from the GIN index rather than row by row.
    """
    needle = normalise(value)
    body_only = where == "body"
    n = f"CAST({param(needle)} AS text)"
    found = f"strpos(t.body, {n}) > 0"
    if not body_only:
        found = f"(strpos(t.head, {n}) > 0 OR {found})"
    query = tsquery(needle, body_only)
    if query is not None:
        found = f"t.words @@ to_tsquery(CAST({param(query)} AS text)) AND {found}"
    return (
        "(e.message_id IN (SELECT t.message_id FROM message_texts t JOIN mailbox_entries x"  # noqa: S608 -- constant SQL fragments; every value is a bound parameter
        f" ON x.message_id = t.message_id WHERE x.mailbox_id = {mailbox} AND {found})"
        " OR (e.message_id IN (SELECT x.message_id FROM mailbox_entries x"
        f" WHERE x.mailbox_id = {mailbox} AND NOT EXISTS (SELECT 1 FROM message_texts t"
        f" WHERE t.message_id = x.message_id AND NOT t.truncated)) AND {raw_match}))")
