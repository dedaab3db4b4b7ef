"""Full-text SEARCH BODY/TEXT: the index filled by the mda, APPEND and backfill, asked over IMAP.

Real parts: PostgreSQL, Redis, the imap service in its own process, the mda's
delivery functions, and `postroom fts backfill` as an operator runs it.
"""

from __future__ import annotations

import base64
import functools
import imaplib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from sqlalchemy import text

from postroom.auth.passwords import hash_password
from postroom.mime import analyze
from postroom.queue import events
from postroom.store import domains, fts, mailboxes, messages, spool, users
from postroom.store.db import Database
from postroom.store.search import SearchAnd, SearchSet, SearchText, SequenceSet, search_where
from postroom_mda.delivery import Options, deliver_recipient
from tests.integration.test_imap_service import start_imap, unverified
from tests.support.redisdb import delete_prefix

cheap = functools.partial(hash_password, ln=4)
PASSWORD = "correct horse"


def mime(parts: list[bytes], subject: bytes = b"parts") -> bytes:
    body = b"".join(b"--BB\r\n" + p + b"\r\n" for p in parts) + b"--BB--\r\n"
    return (b"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\nSubject: " + subject
            + b"\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=BB\r\n\r\n"
            + body)


BASE64_UTF8 = mime([b"Content-Type: text/plain; charset=utf-8\r\n"
                    b"Content-Transfer-Encoding: base64\r\n\r\n"
                    + base64.encodebytes("Grüße aus Köln: the xylophone arrives.".encode())])
QP_LATIN1 = mime([b"Content-Type: text/plain; charset=iso-8859-1\r\n"
                  b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
                  b"Caf=E9 Montr=E9al serves a marvel=\r\nlous cr=E8me br=FBl=E9e."])
HTML = mime([b"Content-Type: text/html; charset=utf-8\r\n\r\n"
             b"<html><head><style>.zanzibar{}</style></head>"
             b"<body><p>Meet <b>Hello</b>world at the <i>quayside</i></p></body></html>"])
ATTACHMENT = mime([b"Content-Type: text/plain\r\n\r\nsee the file",
                   b"Content-Type: application/pdf; name=\"x.pdf\"\r\n"
                   b"Content-Disposition: attachment; filename=\"Quarterly-Budget.pdf\"\r\n"
                   b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK"])
HEADER_ONLY = (b"From: carol@example.org\r\nTo: bob@example.org\r\n"
               b"Subject: =?utf-8?b?w5xiZXJyYXNjaHVuZw==?=\r\n\r\nnothing here\r\n")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from postroom.net.tls import make_self_signed

    path: Path = tmp_path_factory.mktemp("fts-tls")
    make_self_signed(path / "cert.pem", path / "key.pem", "localhost")
    return path


@pytest.fixture(scope="module")
def server(database_url: str, redis_url: str, certs: Path) -> Iterator[tuple[int, str]]:
    prefix = f"prtest:{secrets.token_hex(6)}:"
    process, _port, tls_port = start_imap(database_url, redis_url, certs, prefix)
    try:
        yield tls_port, prefix
    finally:
        process.close()
        client = redis.Redis.from_url(redis_url)
        try:
            delete_prefix(client, prefix)
        finally:
            client.close()


class Box:
    """An account with its own domain, filled by the mda's delivery functions."""

    def __init__(self, database: Database, server: tuple[int, str], redis_url: str) -> None:
        self.database, (self.port, self.prefix), self.redis_url = database, server, redis_url
        domain = f"fts{secrets.token_hex(4)}.example"
        database.run_sync(domains.add_domain, domain)
        self.address = f"u@{domain}"
        self.user_id = database.run_sync(users.add_user, self.address, PASSWORD,
                                         hash_fn=cheap).id

    def deliver(self, data: bytes) -> None:
        """Spool and deliver as the mda service does (its fast path parses the blob)."""
        qid = self.database.run_sync(spool.create_spool, kind="inbound",
                                     mail_from="alice@example.org",
                                     recipients=[(self.address, "deliver", None, None)],
                                     message=data, disposition="inbox")
        [rid] = [r.id for r in self.database.run_sync(spool.get_spool, qid).recipients]
        outcome = self.database.run_sync(deliver_recipient, rid, Options(),
                                         datetime.now(UTC))
        assert outcome.result == "delivered", outcome
        self._announce(outcome.mailbox_id, outcome.uid)

    def store_unindexed(self, data: bytes) -> None:
        """A message stored as a release before the index did: no text row."""
        def work(session: object) -> tuple[int, int]:
            message_id = messages.store_message(session, data,  # type: ignore[arg-type]
                                                analyze(data).to_dict())
            uid, _ = mailboxes.deliver_to_mailbox(
                session, user_id=self.user_id, mailbox_name="INBOX",  # type: ignore[arg-type]
                message_id=message_id, spool_recipient_id=None)
            box = mailboxes.get_mailbox(session, self.user_id, "INBOX")  # type: ignore[arg-type]
            return box.id, uid
        self._announce(*self.database.run_sync(work))

    def _announce(self, mailbox_id: int | None, uid: int | None) -> None:
        client = redis.Redis.from_url(self.redis_url)
        try:
            events.publish(client, self.prefix,
                           events.ChangeEvent(events.EXISTS, int(mailbox_id or 0), "test",
                                              uid=uid))
        finally:
            client.close()

    def imap(self) -> imaplib.IMAP4_SSL:
        client = imaplib.IMAP4_SSL("127.0.0.1", self.port, ssl_context=unverified(), timeout=30)
        client.login(self.address, PASSWORD)
        client.select("INBOX")
        return client


@pytest.fixture
def box(database: Database, server: tuple[int, str], redis_url: str) -> Box:
    return Box(database, server, redis_url)


def search(client: imaplib.IMAP4_SSL, *criteria: str) -> list[int]:
    # UTF-8 needles go as a literal with CHARSET UTF-8, as clients send them
    args = list(criteria)
    needle = args[-1]
    client.literal = needle.encode("utf-8")  # type: ignore[attr-defined]
    typ, data = client.uid("SEARCH", "CHARSET", "UTF-8", *args[:-1])
    assert typ == "OK", data
    return [int(x) for x in data[0].split()]


def test_delivered_mail_is_found_by_decoded_words(box: Box) -> None:
    for data in (BASE64_UTF8, QP_LATIN1, HTML, ATTACHMENT, HEADER_ONLY):
        box.deliver(data)
    client = box.imap()
    try:
        # base64 + utf-8, and a non-ASCII word
        assert search(client, "BODY", "xylophone") == [1]
        assert search(client, "BODY", "KÖLN") == [1]
        # quoted-printable + iso-8859-1, a soft line break inside a word
        assert search(client, "BODY", "montréal") == [2]
        assert search(client, "BODY", "marvellous crème") == [2]
        # HTML reduced to text: tags are not words, style is not text
        assert search(client, "BODY", "quayside") == [3]
        assert search(client, "BODY", "hello world") == [3]
        assert search(client, "BODY", "zanzibar") == []
        assert search(client, "BODY", "<b>") == []
        # an attachment's file name, not its base64 bytes
        assert search(client, "BODY", "quarterly-budget") == [4]
        assert search(client, "BODY", "JVBERi0") == []
        # TEXT also covers the (RFC 2047 decoded) header; BODY does not
        assert search(client, "TEXT", "Überraschung") == [5]
        assert search(client, "BODY", "Überraschung") == []
        assert search(client, "TEXT", "carol@example.org") == [5]
    finally:
        client.logout()


def test_partial_words_and_not_body(box: Box) -> None:
    box.deliver(BASE64_UTF8)
    box.deliver(QP_LATIN1)
    client = box.imap()
    try:
        # a needle that starts a word matches, whole or cut short, and across words
        assert search(client, "BODY", "xylo") == [1]
        assert search(client, "BODY", "the xylo") == [1]
        assert search(client, "BODY", "Montr") == [2]
        # every answer holds the needle as a substring: the words must also be adjacent
        assert search(client, "BODY", "arrives xylophone") == []
        # a needle starting inside a word is not found (docs/imap.md, Full-text search)
        assert search(client, "BODY", "lophone") == []
        # NOT BODY: the complement within the mailbox
        assert search(client, "NOT", "BODY", "xylophone") == [2]
        assert search(client, "NOT", "BODY", "nowhere-to-be-found") == [1, 2]
        # an empty needle matches every message (RFC 3501: the empty string is a substring)
        assert search(client, "BODY", "") == [1, 2]
    finally:
        client.logout()


def test_appended_mail_is_indexed(box: Box) -> None:
    client = box.imap()
    try:
        typ, _ = client.append("INBOX", "", None, QP_LATIN1)  # type: ignore[arg-type]
        assert typ == "OK"
        client.select("INBOX")
        assert search(client, "BODY", "brûlée") == [1]
    finally:
        client.logout()


def _cli(database_url: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
    env["POSTROOM_DATABASE_URL"] = database_url
    done = subprocess.run([sys.executable, "-m", "postroom.ops.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_mail_stored_before_the_index_is_found_after_backfill(box: Box,
                                                               database_url: str) -> None:
    # unique bytes: blobs are shared, and the other tests' copy of this one is indexed
    box.store_unindexed(b"X-Nonce: " + secrets.token_hex(8).encode() + b"\r\n" + BASE64_UTF8)
    client = box.imap()
    try:
        # not indexed: matched on its raw bytes, which are base64
        assert search(client, "BODY", "xylophone") == []
        assert "messages indexed" in _cli(database_url, "fts", "backfill", "--batch", "1")
        assert search(client, "BODY", "xylophone") == [1]
        # a second run finds nothing left to do
        assert _cli(database_url, "fts", "backfill").startswith("0 messages indexed")
        assert "messages indexed" in _cli(database_url, "fts", "status")
    finally:
        client.logout()


def _fill(session: object, mailbox_id: int, count: int) -> None:
    """``count`` small messages in one mailbox, each with a word of its own, in SQL."""
    session.execute(text(  # type: ignore[attr-defined]
        "WITH blobs AS (SELECT g, convert_to('Subject: filler ' || g || E'\\r\\n\\r\\n"
        "common words and word' || g || ' ' || :tag, 'UTF8') AS b "
        "FROM generate_series(1, :n) g), "
        "stored AS (INSERT INTO messages (sha256, size, blob) "
        "SELECT encode(sha256(b), 'hex'), octet_length(b), b FROM blobs RETURNING id) "
        "INSERT INTO mailbox_entries (mailbox_id, uid, message_id, modseq, internaldate) "
        "SELECT :box, row_number() OVER (ORDER BY id), id, 1, now() FROM stored"),
        {"n": count, "box": mailbox_id, "tag": secrets.token_hex(8)})
    session.execute(text(  # type: ignore[attr-defined]
        "UPDATE mailboxes SET uidnext = :n + 1 WHERE id = :box"),
        {"n": count, "box": mailbox_id})


def test_mailbox_search_uses_the_gin_index(database: Database, box: Box) -> None:
    mailbox_id = database.run_sync(lambda s: mailboxes.get_mailbox(s, box.user_id, "INBOX").id)
    database.run_sync(_fill, mailbox_id, 4000)
    while database.run_sync(fts.backfill_batch, 0, 2000, 1 << 20)[1]:
        pass
    database.run_sync(lambda s: s.execute(text("ANALYZE message_texts; ANALYZE mailbox_entries")))
    key = SearchAnd((SearchSet(SequenceSet(((1, 10**6),)), uid=True),
                     SearchText("body", "word1234")))
    where, params = search_where(key)
    sql = ("SELECT e.uid FROM mailbox_entries e JOIN messages m ON m.id = e.message_id "
           f"WHERE e.mailbox_id = :mbox AND e.uid <= :maxuid AND ({where})")
    params = {**params, "mbox": mailbox_id, "maxuid": 10**9}

    def explain(session: object) -> str:
        rows = session.execute(text("EXPLAIN " + sql), params).all()  # type: ignore[attr-defined]
        return "\n".join(r[0] for r in rows)
    plan = database.run_sync(explain)
    assert "ix_message_texts_words" in plan, plan
    found = database.run_sync(lambda s: s.execute(text(sql), params).scalars().all())
    assert found == [1234]


def test_imported_mail_is_indexed(box: Box, database_url: str, tmp_path: Path) -> None:
    mbox = tmp_path / "in.mbox"
    mbox.write_bytes(b"From alice@example.org Mon Dec  7 06:00:00 2026\n"
                     + HTML.replace(b"\r\n", b"\n").replace(b"quayside", b"boatyard") + b"\n")
    out = _cli(database_url, "import", "mbox", str(mbox), "--user", box.address,
               "--mailbox", "INBOX")
    assert out
    client = box.imap()
    try:
        assert search(client, "BODY", "boatyard") == [1]
        assert search(client, "BODY", "<i>") == []  # the text was indexed, not the raw HTML
    finally:
        client.logout()
