"""SEARCH semantics and the search extensions against the live imap service (issue 18).

SENTBEFORE/SENTON/SENTSINCE on the Date: header's own day, FROM/TO/CC/BCC on
the addresses as a client sees them, ESEARCH (RFC 4731), SEARCHRES (RFC
5182), SORT (RFC 5256), SORT=DISPLAY (RFC 5957) and THREAD (RFC 5256): the
exact lines the server sends, read off the wire after an imaplib login.
"""

from __future__ import annotations

import imaplib
import os
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest

from postroom.store.db import Database
from tests.integration import test_imap_service as base
from tests.integration.test_imap_service import Account, Server, imaps

# the service, domain and account fixtures of the main imap tests, reused by name
certs, server, domain, account = base.certs, base.server, base.domain, base.account


class Wire:
    """Raw command/response exchange on a logged-in imaplib connection."""

    def __init__(self, client: imaplib.IMAP4) -> None:
        self.client = client
        self.n = 0

    def __call__(self, command: str | bytes) -> list[bytes]:
        self.n += 1
        tag = b"W%d" % self.n
        data = command.encode("utf-8") if isinstance(command, str) else command
        self.client.send(tag + b" " + data + b"\r\n")
        lines = []
        while True:
            line = self.client.readline()
            assert line, "connection closed"
            line = line.rstrip(b"\r\n")
            lines.append(line.replace(tag, b"TAG"))
            if line.startswith(tag + b" "):
                return lines


def message(n: int, subject: str = "s", date: str | None = "Mon, 7 Feb 1994 21:52:25 -0800",
            sender: str = "someone@example.org", extra: str = "") -> bytes:
    head = f"From: {sender}\r\nTo: bob@example.org\r\nSubject: {subject}\r\n"
    if date is not None:
        head += f"Date: {date}\r\n"
    head += f"Message-ID: <{n}.{subject.replace(' ', '_')}@test>\r\n{extra}"
    return (head + f"\r\nbody {n}\r\n").encode("utf-8")


def open_wire(server: Server, account: Account) -> tuple[imaplib.IMAP4, Wire]:
    client = imaps(server, account)
    wire = Wire(client)
    assert wire("SELECT INBOX")[-1].startswith(b"TAG OK")
    return client, wire


def test_capability_lists_the_search_extensions(server: Server, account: Account) -> None:
    client = imaps(server, account)
    try:
        caps = Wire(client)("CAPABILITY")[0].split()
        for cap in (b"ESEARCH", b"SEARCHRES", b"SORT", b"SORT=DISPLAY",
                    b"THREAD=ORDEREDSUBJECT", b"THREAD=REFERENCES"):
            assert cap in caps
    finally:
        client.logout()


def test_sent_dates_use_the_date_header_day_in_its_own_zone(server: Server,
                                                            account: Account) -> None:
    account.deliver(message(1, date="Tue, 7 Jan 2025 23:30:00 -0800"))  # 8 Jan UTC
    account.deliver(message(2, date="Wed, 8 Jan 2025 00:30:00 +0200"))  # 7 Jan UTC
    account.deliver(message(3, date="7 Jan 2025 12:00:00 +0000"))  # no day name
    account.deliver(message(4, date=None))  # INTERNALDATE: today
    account.deliver(message(5, date="not a date at all"))  # INTERNALDATE too
    today = datetime.now(UTC).strftime("%d-%b-%Y")
    client, wire = open_wire(server, account)
    try:
        assert wire("SEARCH SENTON 7-Jan-2025") == [b"* SEARCH 1 3", b"TAG OK SEARCH completed"]
        assert wire("SEARCH SENTON 8-Jan-2025")[0] == b"* SEARCH 2"
        assert wire("SEARCH SENTBEFORE 8-Jan-2025")[0] == b"* SEARCH 1 3"
        assert wire("SEARCH SENTSINCE 8-Jan-2025")[0] == b"* SEARCH 2 4 5"
        assert wire("SEARCH SENTSINCE 7-Jan-2025 SENTBEFORE 8-Jan-2025")[0] == b"* SEARCH 1 3"
        assert wire(f"SEARCH SENTON {today}")[0] == b"* SEARCH 4 5"
        assert wire("SEARCH NOT SENTON 7-Jan-2025")[0] == b"* SEARCH 2 4 5"
    finally:
        client.logout()


FORMS = [
    "user-from@domain.org",
    "<user-from@domain.org>",
    "User From <user-from@domain.org>",
    '"User From" <user-from@domain.org>',
    "user-from@domain.org (User From)",
    "=?utf-8?q?User_From?= <user-from@domain.org>",
    "user-from (a comment) @ domain.org",
    '"user-from"@domain.org',
    "USER-FROM@DOMAIN.ORG",
    "group: user-from@domain.org, other@x.org;",
]


def test_address_keys_match_what_a_client_sees(server: Server, account: Account) -> None:
    for n, form in enumerate(FORMS, 1):
        account.deliver(message(n, sender=form))
    account.deliver(message(90, sender="=?utf-8?b?SsO2cmcgU2NobWlkdA==?= <js@example.net>",
                            extra="Cc: =?iso-8859-1?q?Andr=E9?= <andre@example.net>\r\n"
                                  "Bcc: hidden-one@example.com\r\n"))
    account.deliver(message(91, sender="user-fro@domain.org"))  # a near miss
    everyone = " ".join(str(n) for n in range(1, len(FORMS) + 1))
    client, wire = open_wire(server, account)
    try:
        assert wire('SEARCH FROM "user-from@domain.org"')[0] == b"* SEARCH " + everyone.encode()
        assert wire("SEARCH FROM User-From@Domain.Org")[0] == b"* SEARCH " + everyone.encode()
        # the display name, decoded, in any case
        assert wire('SEARCH FROM "user from"')[0] == b"* SEARCH 3 4 5 6"
        assert wire(b"SEARCH CHARSET UTF-8 FROM {5+}\r\nJ\xc3\xb6rg")[0] == b"* SEARCH 11"
        assert wire(b"SEARCH CHARSET UTF-8 FROM {5+}\r\nJ\xc3\x96RG")[0] == b"* SEARCH 11"
        assert wire(b"SEARCH CHARSET UTF-8 CC {6+}\r\nandr\xc3\xa9")[0] == b"* SEARCH 11"
        assert wire("SEARCH CC andre@example.net")[0] == b"* SEARCH 11"
        assert wire("SEARCH BCC hidden-one")[0] == b"* SEARCH 11"
        assert wire("SEARCH TO BOB@example.org")[0].split()[2:] == [
            str(n).encode() for n in range(1, len(FORMS) + 3)]
        assert wire("SEARCH FROM nobody-here")[0] == b"* SEARCH"
        assert wire("SEARCH NOT FROM user-from")[0] == b"* SEARCH 11 12"
    finally:
        client.logout()


def _flagged_box(account: Account, client: imaplib.IMAP4) -> None:
    """RFC 4731's example mailbox: FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith" is 2, 10, 11."""
    for n in range(1, 12):
        sender = "John Smith <smith@example.org>" if n in (5, 7) else f"u{n}@example.org"
        account.deliver(message(n, sender=sender))
    client.select("INBOX")
    client.store("2,5,7,10,11", "+FLAGS.SILENT", "(\\Flagged)")


def test_esearch_rfc4731_examples(server: Server, account: Account) -> None:
    client, wire = open_wire(server, account)
    try:
        _flagged_box(account, client)
        key = 'FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"'
        assert wire(f"SEARCH RETURN (MIN COUNT) {key}") == [
            b'* ESEARCH (TAG "TAG") MIN 2 COUNT 3', b"TAG OK SEARCH completed"]
        assert wire(f"SEARCH RETURN () {key}") == [
            b'* ESEARCH (TAG "TAG") ALL 2,10:11', b"TAG OK SEARCH completed"]
        assert wire(f"SEARCH RETURN (MIN MAX ALL COUNT) {key}")[0] == (
            b'* ESEARCH (TAG "TAG") MIN 2 MAX 11 ALL 2,10:11 COUNT 3')
        assert wire(f"UID SEARCH RETURN (MAX) {key}")[0] == b'* ESEARCH (TAG "TAG") UID MAX 11'
        # nothing found: only COUNT is given
        assert wire("SEARCH RETURN (MIN MAX ALL COUNT) FROM nobody")[0] == (
            b'* ESEARCH (TAG "TAG") COUNT 0')
        assert wire("SEARCH RETURN (MIN) FROM nobody") == [
            b'* ESEARCH (TAG "TAG")', b"TAG OK SEARCH completed"]
        assert wire("SEARCH RETURN (BOGUS) ALL")[-1].startswith(b"TAG BAD")
        # plain SEARCH is unchanged
        assert wire(f"SEARCH {key}")[0] == b"* SEARCH 2 10 11"
        # CONDSTORE's MODSEQ rides along (RFC 7162 3.1.5)
        line = wire("SEARCH RETURN (COUNT) MODSEQ 1 FLAGGED")[0]
        assert line.startswith(b'* ESEARCH (TAG "TAG") COUNT 5 MODSEQ ')
        wire("STORE 11 +FLAGS.SILENT (\\Seen)")  # 11 now has the highest mod-sequence
        highest = int(wire("SEARCH RETURN (COUNT) MODSEQ 1 FLAGGED")[0].split()[-1])
        assert highest > int(line.split()[-1])
        # MIN/MAX alone: the mod-sequence of the messages returned
        assert wire("SEARCH RETURN (MAX) MODSEQ 1 FLAGGED")[0] == (
            b'* ESEARCH (TAG "TAG") MAX 11 MODSEQ %d' % highest)
        assert wire("SEARCH RETURN (MIN) MODSEQ 1 FLAGGED")[0] == (
            b'* ESEARCH (TAG "TAG") MIN 2 MODSEQ %d' % int(line.split()[-1]))
    finally:
        client.logout()


def test_searchres_rfc5182_examples(server: Server, account: Account) -> None:
    client, wire = open_wire(server, account)
    try:
        _flagged_box(account, client)
        key = 'FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"'
        assert wire(f"SEARCH RETURN (SAVE) {key}") == [b"TAG OK SEARCH completed, result saved"]
        assert wire("FETCH $ (UID)") == [b"* 2 FETCH (UID 2)", b"* 10 FETCH (UID 10)",
                                         b"* 11 FETCH (UID 11)", b"TAG OK FETCH completed"]
        assert wire("UID FETCH $ (FLAGS)")[:3] == [
            b"* 2 FETCH (UID 2 FLAGS (\\Flagged \\Recent))",
            b"* 10 FETCH (UID 10 FLAGS (\\Flagged \\Recent))",
            b"* 11 FETCH (UID 11 FLAGS (\\Flagged \\Recent))"]  # the second SELECT took them
        # $ in a later SEARCH, combined with other keys
        assert wire("SEARCH $ UID 10:*")[0] == b"* SEARCH 10 11"
        assert wire("SEARCH OR $ 1")[0] == b"* SEARCH 1 2 10 11"
        # SAVE with MIN and MAX keeps only those; with ALL, the whole result and the response
        assert wire(f"SEARCH RETURN (SAVE MIN MAX) {key}") == [
            b'* ESEARCH (TAG "TAG") MIN 2 MAX 11', b"TAG OK SEARCH completed, result saved"]
        assert wire("SEARCH $")[0] == b"* SEARCH 2 11"
        assert wire(f"UID SEARCH RETURN (SAVE ALL) {key}")[0] == (
            b'* ESEARCH (TAG "TAG") UID ALL 2,10:11')
        assert wire("SEARCH $")[0] == b"* SEARCH 2 10 11"
        # $ drives STORE and COPY
        assert wire("STORE $ +FLAGS.SILENT (\\Seen)") == [b"TAG OK STORE completed"]
        assert wire("SEARCH SEEN")[0] == b"* SEARCH 2 10 11"
        assert wire("COPY $ INBOX")[-1].startswith(b"TAG OK [COPYUID ")
        # a new SELECT forgets $: an empty set, not an error
        wire("SELECT INBOX")
        assert wire("FETCH $ (UID)") == [b"TAG OK FETCH completed"]
        assert wire("SEARCH $") == [b"* SEARCH", b"TAG OK SEARCH completed"]
    finally:
        client.logout()


def test_searchres_survives_another_session_expunging(server: Server,
                                                       account: Account) -> None:
    """Two devices: the phone saves a result, the laptop expunges one of its messages."""
    for n in range(1, 6):
        account.deliver(message(n))
    phone, wire = open_wire(server, account)
    laptop = imaps(server, account)
    try:
        laptop.select("INBOX")
        laptop.store("2,3,5", "+FLAGS.SILENT", "(\\Flagged)")
        wire("NOOP")
        assert wire("SEARCH RETURN (SAVE) FLAGGED") == [b"TAG OK SEARCH completed, result saved"]
        laptop.store("3", "+FLAGS.SILENT", "(\\Deleted)")
        laptop.expunge()
        # not announced during FETCH with sequence numbers: $ still names what the view holds
        assert wire("NOOP")[0] == b"* 3 EXPUNGE"
        assert wire("FETCH $ (UID)") == [b"* 2 FETCH (UID 2)", b"* 4 FETCH (UID 5)",
                                         b"TAG OK FETCH completed"]
        assert wire("UID SEARCH $")[0] == b"* SEARCH 2 5"
        assert wire("SEARCH RETURN (COUNT) $")[0] == b'* ESEARCH (TAG "TAG") COUNT 2'
        # the laptop's own $ is its own
        assert Wire(laptop)("FETCH $ (UID)") == [b"TAG OK FETCH completed"]
    finally:
        phone.logout()
        laptop.logout()


def test_sort_rfc5256_examples(server: Server, account: Account) -> None:
    client, wire = open_wire(server, account)
    try:
        # A283 SORT (SUBJECT REVERSE DATE) UTF-8 ALL -> * SORT 5 3 4 1 2
        dates = ["Mon, 7 Feb 1994 21:52:25 -0800", "Mon, 7 Feb 1994 10:00:00 -0800",
                 "Tue, 8 Feb 1994 10:00:00 +0000", "Tue, 8 Feb 1994 09:00:00 +0000",
                 "Wed, 9 Feb 1994 10:00:00 +0000"]
        subjects = ["Re: gamma", "gamma", "[list] beta", "Fwd: beta (fwd)", "alpha"]
        for n, (subject, date) in enumerate(zip(subjects, dates, strict=True), 1):
            account.deliver(message(n, subject=subject, date=date))
        wire("NOOP")
        assert wire("SORT (SUBJECT REVERSE DATE) UTF-8 ALL") == [
            b"* SORT 5 3 4 1 2", b"TAG OK SORT completed"]
        assert wire("SORT (SUBJECT) US-ASCII TEXT \"not in mailbox\"") == [
            b"* SORT", b"TAG OK SORT completed"]
        assert wire("SORT (DATE) UTF-8 ALL")[0] == b"* SORT 2 1 4 3 5"
        assert wire("SORT (REVERSE DATE) UTF-8 SUBJECT beta")[0] == b"* SORT 3 4"
        assert wire("UID SORT (ARRIVAL) UTF-8 2:4")[0] == b"* SORT 2 3 4"
        assert wire("SORT (REVERSE ARRIVAL) UTF-8 ALL")[0] == b"* SORT 5 4 3 2 1"
        assert wire("SORT (SUBJECT) UTF-8 $")[0] == b"* SORT"
        assert wire("SORT (BOGUS) UTF-8 ALL")[-1].startswith(b"TAG BAD")
        assert wire("SORT (SUBJECT) X-UNKNOWN-CHARSET ALL")[-1].startswith(b"TAG NO [BADCHARSET")
    finally:
        client.logout()


def test_sort_addresses_sizes_and_display(server: Server, account: Account) -> None:
    client, wire = open_wire(server, account)
    try:
        senders = ['"Zed" <alpha@example.org>', "charlie@example.org",
                   "=?utf-8?q?=C3=89mile?= <bravo@example.org>", "Adam <delta@example.org>"]
        for n, sender in enumerate(senders, 1):
            account.deliver(message(n, sender=sender, extra="X-Pad: " + "x" * (100 * (5 - n))
                                    + "\r\n"))
        wire("NOOP")
        assert wire("SORT (FROM) UTF-8 ALL")[0] == b"* SORT 1 3 2 4"
        assert wire("SORT (DISPLAYFROM) UTF-8 ALL")[0] == b"* SORT 4 2 3 1"
        assert wire("SORT (REVERSE DISPLAYFROM) UTF-8 ALL")[0] == b"* SORT 1 3 2 4"
        assert wire("SORT (SIZE) UTF-8 ALL")[0] == b"* SORT 4 3 2 1"
        assert wire("SORT (TO DISPLAYTO) UTF-8 ALL")[0] == b"* SORT 1 2 3 4"  # all ties
        assert wire("SORT (CC) UTF-8 ALL")[0] == b"* SORT 1 2 3 4"
    finally:
        client.logout()


def test_thread_both_algorithms(server: Server, account: Account) -> None:
    client, wire = open_wire(server, account)
    try:
        def mail(n: int, subject: str, day: int, refs: str = "") -> None:
            extra = f"References: {refs}\r\n" if refs else ""
            account.deliver(message(n, subject=subject, extra=extra,
                                    date=f"{day} Feb 1994 10:00:00 +0000"))

        mail(1, "topic", 1)                                  # <1.topic@test>
        mail(2, "other", 2)
        mail(3, "Re: topic", 3, "<1.topic@test>")
        mail(4, "Re: topic", 4, "<1.topic@test>")
        mail(5, "Re: topic", 5, "<1.topic@test> <3.Re:_topic@test>")
        mail(6, "Re: lost", 6, "<gone@test>")
        mail(7, "Re: lost too", 7, "<gone@test>")
        mail(8, "Re: other", 8)                              # no references: by subject
        wire("NOOP")
        assert wire("THREAD REFERENCES UTF-8 ALL") == [
            b"* THREAD (1 (3 5)(4))(2 8)((6)(7))", b"TAG OK THREAD completed"]
        assert wire("UID THREAD REFERENCES UTF-8 1:5")[0] == b"* THREAD (1 (3 5)(4))(2)"
        assert wire("THREAD ORDEREDSUBJECT UTF-8 ALL") == [
            b"* THREAD (1 (3)(4)(5))(2 8)(6)(7)", b"TAG OK THREAD completed"]
        # RFC 5256's second example: nothing matches
        assert wire('THREAD REFERENCES US-ASCII TEXT "gewp"') == [
            b"* THREAD", b"TAG OK THREAD completed"]
        assert wire("THREAD BOGUS UTF-8 ALL")[-1].startswith(b"TAG BAD")
    finally:
        client.logout()


def test_old_metadata_still_answers(server: Server, account: Account,
                                    database: Database, database_url: str) -> None:
    """Mail analysed before the search text and display keys were kept (lazy fallbacks)."""
    from sqlalchemy import text

    account.deliver(message(1, sender="Old Timer <old@example.org>",
                            date="Tue, 7 Jan 2025 23:30:00 -0800"))
    account.deliver(message(2, subject="Re: s", sender="Young <young@example.org>",
                            date="Wed, 8 Jan 2025 10:00:00 +0000",
                            extra="In-Reply-To: <1.s@test>\r\n"))

    def strip(session: object) -> None:
        session.execute(text(  # type: ignore[attr-defined]
            "UPDATE messages SET metadata = jsonb_set(metadata, '{sort}', "
            "(metadata->'sort') - 'text' - 'sent_day' - 'display_from' - 'display_to' - 'thread') "
            "WHERE id IN (SELECT message_id FROM mailbox_entries e JOIN mailboxes b "
            "ON b.id = e.mailbox_id WHERE b.user_id = :u)"), {"u": account.user_id})

    database.run_sync(strip)
    client, wire = open_wire(server, account)
    try:
        assert wire("SEARCH FROM timer")[0] == b"* SEARCH 1"
        assert wire("SEARCH SENTON 8-Jan-2025")[0] == b"* SEARCH 1 2"  # UTC days, as before
        assert wire("SORT (REVERSE DISPLAYFROM) UTF-8 ALL")[0] == b"* SORT 2 1"
        assert wire("THREAD REFERENCES UTF-8 ALL")[0] == b"* THREAD (1 2)"
        # the backfill brings the old mail to the exact rules
        environ = {k: v for k, v in os.environ.items() if not k.startswith("POSTROOM_")}
        environ["POSTROOM_DATABASE_URL"] = database_url
        result = subprocess.run([sys.executable, "-m", "postroom.ops.cli", "reanalyze",
                                 "--batch", "1"], capture_output=True, text=True, env=environ,
                                timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().endswith("message(s) reanalyzed")
        assert wire("SEARCH SENTON 7-Jan-2025")[0] == b"* SEARCH 1"
        assert wire("SEARCH FROM old@example.org")[0] == b"* SEARCH 1"
        assert wire("THREAD REFERENCES UTF-8 ALL")[0] == b"* THREAD (1 2)"
        rerun = subprocess.run([sys.executable, "-m", "postroom.ops.cli", "reanalyze"],
                               capture_output=True, text=True, env=environ, timeout=120,
                               check=False)
        assert rerun.stdout.strip() == "0 message(s) reanalyzed"
    finally:
        client.logout()


def test_two_devices_see_each_others_changes_in_esearch_sort_and_thread(
        server: Server, account: Account) -> None:
    """The laptop answers, flags and deletes; the phone's views follow after a NOOP."""
    account.deliver(message(1, subject="plans", date="1 Feb 1994 10:00:00 +0000",
                            sender="Zoe <zoe@example.org>"))
    account.deliver(message(2, subject="lunch", date="2 Feb 1994 10:00:00 +0000",
                            sender="Adam <adam@example.org>"))
    phone, wire = open_wire(server, account)
    laptop = imaps(server, account)
    try:
        laptop.select("INBOX")
        assert wire("THREAD REFERENCES UTF-8 ALL")[0] == b"* THREAD (1)(2)"
        reply = message(3, subject="Re: plans", date="3 Feb 1994 10:00:00 +0000",
                        sender="Bea <bea@example.org>", extra="References: <1.plans@test>\r\n")
        assert laptop.append("INBOX", "(\\Flagged)", None, reply)[0] == "OK"
        laptop.store("2", "+FLAGS.SILENT", "(\\Flagged)")
        assert b"* 3 EXISTS" in wire("NOOP")
        assert wire("THREAD REFERENCES UTF-8 ALL")[0] == b"* THREAD (1 3)(2)"
        assert wire("THREAD ORDEREDSUBJECT UTF-8 ALL")[0] == b"* THREAD (1 3)(2)"
        assert wire("SORT (DISPLAYFROM) UTF-8 ALL")[0] == b"* SORT 2 3 1"
        assert wire("SORT (REVERSE ARRIVAL) UTF-8 ALL")[0] == b"* SORT 3 2 1"
        assert wire("SEARCH RETURN (ALL COUNT) FLAGGED")[0] == (
            b'* ESEARCH (TAG "TAG") ALL 2:3 COUNT 2')
        laptop.store("1", "+FLAGS.SILENT", "(\\Deleted)")
        laptop.expunge()
        # held back while THREAD runs (sequence numbers stay valid), then announced
        assert wire("THREAD REFERENCES UTF-8 ALL")[0] == b"* THREAD (2)(3)"
        assert b"* 1 EXPUNGE" in wire("NOOP")
        assert wire("THREAD REFERENCES UTF-8 ALL")[0] == b"* THREAD (1)(2)"
        assert wire("UID THREAD REFERENCES UTF-8 ALL")[0] == b"* THREAD (2)(3)"
        assert wire("SORT (DISPLAYFROM) UTF-8 ALL")[0] == b"* SORT 1 2"
        assert wire("SEARCH RETURN (MIN MAX) FLAGGED")[0] == b'* ESEARCH (TAG "TAG") MIN 1 MAX 2'
    finally:
        phone.logout()
        laptop.logout()


@pytest.mark.slow
def test_sort_thread_and_esearch_on_a_big_mailbox(server: Server, account: Account) -> None:
    """50,000 messages: each command answers from cached metadata in a few seconds."""
    from tests.integration import test_imap_large_mailbox as large

    count = 50_000
    large.fill(account, count)
    client, wire = open_wire(server, account)
    try:
        timings = {}
        for command in ("SORT (REVERSE DATE SUBJECT) UTF-8 ALL", "THREAD REFERENCES UTF-8 ALL",
                        "THREAD ORDEREDSUBJECT UTF-8 ALL", "SORT (DISPLAYFROM) UTF-8 ALL",
                        "SEARCH RETURN (MIN MAX COUNT) FROM alice"):
            started = time.monotonic()
            lines = wire(command)
            timings[command] = time.monotonic() - started
            assert lines[-1].startswith(b"TAG OK"), lines[-1]
        assert wire("SEARCH RETURN (COUNT) FROM alice")[0] == (
            b'* ESEARCH (TAG "TAG") COUNT %d' % count)
        assert max(timings.values()) < 30, timings
        print(timings)
    finally:
        client.logout()
