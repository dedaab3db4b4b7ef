"""The IMAP state machine over StringTransport with an in-memory store (no SQL, no Redis)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from postroom.mime import analyze
from postroom_imap.policy import (
    AuthFailed,
    Changes,
    FetchRow,
    FlagUpdate,
    MailboxRow,
    NoSuchMailbox,
    SelectState,
    StoreResult,
)
from postroom_imap.protocol import IMAPFactory
from postroom_imap.spool import SpooledLiteral
from postroom_imap.syntax import Limits

MESSAGE = b"From: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n"


class FakeStore:
    """A user with INBOX holding messages UID 1..n."""

    address = "u@example.org"

    def __init__(self, count: int = 3) -> None:
        self.messages: dict[int, tuple[list[str], bytes]] = {
            uid: ([], MESSAGE) for uid in range(1, count + 1)}
        self.appended: list[tuple[str, bytes, tuple[str, ...], Any]] = []
        self.spooled: list[SpooledLiteral] = []  # messages that came from disk
        self.hold_append: Deferred[None] | None = None  # the next APPEND waits for it
        self.pending: Changes | None = None
        self.watchers: list[Any] = []
        # the latest modseq a change event announced (ChangeListener.latest), and the
        # view's modseq the last watch began with
        self.announced = 0
        self.known: int | None = None
        self.fail_fetch = False

    def list_mailboxes(self) -> Deferred[list[MailboxRow]]:
        return succeed([MailboxRow("INBOX", None, True), MailboxRow("Sent", "\\Sent", True)])

    def select(self, name: str, *, take_recent: bool = False) -> Deferred[SelectState]:
        if name != "INBOX":
            return fail(NoSuchMailbox())
        return succeed(SelectState(1, "INBOX", 7, max(self.messages, default=0) + 1, 10,
                                   sorted(self.messages), None))

    def changes(self, mailbox_id: int, modseq: int, max_uid: int, count: int, *,
                take_recent: bool = False) -> Deferred[Changes]:
        found, self.pending = self.pending, None
        return succeed(found or Changes(modseq, 0, [], None, []))

    def fetch(self, mailbox_id: int, uids: Any, **kw: Any) -> Deferred[list[FetchRow]]:
        if self.fail_fetch:
            return fail(RuntimeError("database exploded"))
        return succeed([FetchRow(uid, tuple(self.messages[uid][0]), 5,
                                 datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
                                 len(self.messages[uid][1]),
                                 analyze(self.messages[uid][1]).to_dict(), self.messages[uid][1])
                        for uid in uids if uid in self.messages])

    def fetch_flags(self, mailbox_id: int, uids: Any, **kw: Any) -> Deferred[list[Any]]:
        if self.fail_fetch:
            return fail(RuntimeError("database exploded"))
        return succeed([(uid, " ".join(self.messages[uid][0]), 5)
                        for uid in uids if uid in self.messages])

    def store(self, mailbox_id: int, uids: Any, mode: str, flags: Any,
              unchangedsince: Any) -> Deferred[StoreResult]:
        for uid in uids:
            if mode == "+":
                self.messages[uid][0].extend(f for f in flags if f not in self.messages[uid][0])
        return succeed(StoreResult([FlagUpdate(u, tuple(self.messages[u][0]), 11) for u in uids],
                                   list(uids), []))

    def search(self, mailbox_id: int, key: Any, max_uid: int) -> Deferred[list[tuple[int, int]]]:
        return succeed([(u, 5) for u in sorted(self.messages)])

    def append(self, name: str, messages: Any, max_size: int = 0,
               **kw: Any) -> Deferred[tuple[int, list[int]]]:
        uids = []
        for data, flags, when in messages:
            if isinstance(data, SpooledLiteral):
                self.spooled.append(data)
                data = data.read()
            self.appended.append((name, data, tuple(flags), when))
            uids.append(100 + len(self.appended))
        if self.hold_append is not None:
            return self.hold_append.addCallback(lambda _: (7, uids))
        return succeed((7, uids))

    def watch(self, mailbox_id: int, callback: Any, known: int | None = None) -> Any:
        self.watchers.append(callback)
        self.known = known
        if known is not None and self.announced > known:
            callback(self.announced)  # as ChangeListener.watch: announced before the watch
        return lambda: self.watchers.remove(callback)

    def close(self) -> None:
        pass


class FakeAccounts:
    def __init__(self, store: FakeStore) -> None:
        self.store = store
        self.logins: list[tuple[str, str]] = []

    def login(self, username: str, password: str, peer: str) -> Deferred[Any]:
        self.logins.append((username, password))
        if password != "secret":
            return fail(AuthFailed())
        return succeed(self.store)


class TLSStringTransport(StringTransport):
    """StringTransport that records STARTTLS."""

    tls_started = False

    def startTLS(self, context: Any) -> None:
        self.tls_started = True


class Harness:
    def __init__(self, *, tls: bool = False, count: int = 3, limits: Limits | None = None,
                 loopback_plaintext: bool = False) -> None:
        self.clock = Clock()
        self.store = FakeStore(count)
        self.accounts = FakeAccounts(self.store)
        self.factory = IMAPFactory(self.accounts, hostname="mx.example", tls=object(),
                                   clock=self.clock, limits=limits, failed_login_delay=0,
                                   allow_plaintext_auth_on_loopback=loopback_plaintext)
        self.server = self.factory.buildProtocol(None)
        self.transport = TLSStringTransport(peerAddress=None)
        self.server.makeConnection(self.transport)
        self.server.tls = tls

    def send(self, data: bytes) -> bytes:
        self.transport.clear()
        self.server.dataReceived(data)
        return self.transport.value()

    def login(self) -> None:
        assert b"a OK" in self.send(b"a LOGIN u@example.org secret\r\n")

    def select(self) -> bytes:
        self.login()
        return self.send(b"s SELECT INBOX\r\n")


def test_greeting_advertises_starttls_and_logindisabled_before_tls() -> None:
    h = Harness()
    greeting = h.transport.value()
    assert greeting.startswith(b"* OK [CAPABILITY IMAP4rev1")
    assert b"STARTTLS" in greeting and b"LOGINDISABLED" in greeting
    assert b"AUTH=PLAIN" not in greeting


def test_login_is_refused_before_tls() -> None:
    h = Harness()
    reply = h.send(b"a LOGIN u@example.org secret\r\n")
    assert reply.startswith(b"a NO [PRIVACYREQUIRED]")
    assert h.accounts.logins == []


def test_loopback_plaintext_login_when_allowed() -> None:
    h = Harness(loopback_plaintext=True)
    h.server.peer_ip = "127.0.0.1"
    assert b"a OK" in h.send(b"a LOGIN u@example.org secret\r\n")


def test_starttls_discards_pipelined_login() -> None:
    h = Harness()
    reply = h.send(b"a STARTTLS\r\nb LOGIN u@example.org secret\r\n")
    assert reply == b"a OK Begin TLS negotiation now\r\n"
    assert h.transport.tls_started and h.server.tls
    assert h.accounts.logins == []  # b was never executed
    assert b"b OK" in h.send(b"b LOGIN u@example.org secret\r\n")


def test_capability_after_starttls_offers_auth_plain() -> None:
    h = Harness()
    h.send(b"a STARTTLS\r\n")
    reply = h.send(b"c CAPABILITY\r\n")
    assert b"AUTH=PLAIN" in reply and b"STARTTLS" not in reply and b"LOGINDISABLED" not in reply


def test_wrong_password_answers_authenticationfailed() -> None:
    h = Harness(tls=True)
    assert h.send(b"a LOGIN u@example.org nope\r\n").startswith(b"a NO [AUTHENTICATIONFAILED]")


def test_authenticate_plain_with_continuation() -> None:
    h = Harness(tls=True)
    assert h.send(b"a AUTHENTICATE PLAIN\r\n") == b"+ \r\n"
    reply = h.send(b"AHVAZXhhbXBsZS5vcmcAc2VjcmV0\r\n")  # \0u@example.org\0secret
    assert reply.startswith(b"a OK [CAPABILITY")
    assert h.accounts.logins == [("u@example.org", "secret")]


def test_authenticate_plain_with_initial_response() -> None:
    h = Harness(tls=True)
    assert h.send(b"a AUTHENTICATE PLAIN AHVAZXhhbXBsZS5vcmcAc2VjcmV0\r\n").startswith(b"a OK")


def test_commands_need_the_right_state() -> None:
    h = Harness(tls=True)
    assert h.send(b"a SELECT INBOX\r\n").startswith(b"a BAD")
    h.login()
    assert h.send(b"b FETCH 1 FLAGS\r\n").startswith(b"b BAD")
    assert h.send(b"c LOGIN u@example.org secret\r\n").startswith(b"c BAD")


def test_garbage_gets_bad_without_disconnecting() -> None:
    h = Harness(tls=True)
    assert h.send(b"\x00\xff garbage (((\r\n").startswith(b"* BAD")
    assert h.send(b"x FROB\r\n").startswith(b"x BAD")
    assert not h.transport.disconnecting
    assert h.send(b"n NOOP\r\n") == b"n OK NOOP completed\r\n"


def test_too_many_errors_close_the_connection() -> None:
    h = Harness(tls=True)
    h.send(b"x FROB\r\n" * 25)
    assert h.transport.disconnecting
    assert b"* BYE too many protocol errors" in h.transport.value()


def test_select_reports_mailbox_state() -> None:
    h = Harness(tls=True)
    reply = h.select()
    for part in (b"* FLAGS (", b"* 3 EXISTS", b"* 0 RECENT", b"[UIDVALIDITY 7]",
                 b"[UIDNEXT 4]", b"[HIGHESTMODSEQ 10]", b"[PERMANENTFLAGS (",
                 b"s OK [READ-WRITE] SELECT completed"):
        assert part in reply


def test_synchronizing_literal_gets_a_continuation() -> None:
    h = Harness(tls=True)
    h.login()
    assert h.send(b"a APPEND INBOX {%d}\r\n" % len(MESSAGE)) == b"+ Ready for literal data\r\n"
    reply = h.send(MESSAGE + b"\r\n")
    assert reply.startswith(b"a OK [APPENDUID 7 101]")
    assert h.store.appended[0][1] == MESSAGE


def test_append_without_flags_works() -> None:
    h = Harness(tls=True)
    h.login()
    reply = h.send(b"a APPEND INBOX {%d+}\r\n%s\r\n" % (len(MESSAGE), MESSAGE))
    assert reply.startswith(b"a OK [APPENDUID")
    assert h.store.appended == [("INBOX", MESSAGE, (), None)]


def test_append_with_flags_and_date() -> None:
    h = Harness(tls=True)
    h.login()
    reply = h.send(b'a APPEND INBOX (\\seen) "05-Jan-2024 10:00:00 +0100" {%d+}\r\n%s\r\n'
                   % (len(MESSAGE), MESSAGE))
    assert reply.startswith(b"a OK")
    _, _, flags, when = h.store.appended[0]
    assert flags == ("\\Seen",) and when.year == 2024


def test_oversized_literal_gets_toobig_before_it_is_sent() -> None:
    h = Harness(tls=True, limits=Limits(max_append_literal=100))
    h.login()
    assert h.send(b"a APPEND INBOX {5000}\r\n") == (
        b"a NO [TOOBIG] literal of 5000 octets is too large\r\n")
    assert h.send(b"n NOOP\r\n") == b"n OK NOOP completed\r\n"


def test_fetch_renders_non_ascii_headers_without_dropping_the_connection() -> None:
    h = Harness(tls=True, count=0)
    raw = "From: Zoë <z@example.org>\r\nSubject: Grüße\r\n\r\nx\r\n".encode()
    h.store.messages[1] = ([], raw)
    h.select()
    reply = h.send(b"f FETCH 1 (ENVELOPE BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n")
    assert "Grüße".encode() in reply and b"f OK FETCH completed" in reply
    assert not h.transport.disconnecting


def test_uid_fetch_includes_uid_and_sections_are_exact() -> None:
    h = Harness(tls=True)
    h.select()
    reply = h.send(b"f UID FETCH 2 (BODY.PEEK[TEXT] RFC822.SIZE)\r\n")
    assert reply.startswith(b"* 2 FETCH (UID 2 BODY[TEXT] {6}\r\nbody\r\n RFC822.SIZE %d)"
                            % len(MESSAGE))


def test_store_answers_with_new_flags() -> None:
    h = Harness(tls=True)
    h.select()
    reply = h.send(b"s STORE 1 +FLAGS (\\flagged)\r\n")
    assert reply == b"* 1 FETCH (FLAGS (\\Flagged))\r\ns OK STORE completed\r\n"


def test_expunge_is_held_back_during_fetch_and_sent_at_noop() -> None:
    h = Harness(tls=True)
    h.select()
    h.store.pending = Changes(12, 4, [], [1, 3], [])
    h.server.selected.dirty = True
    reply = h.send(b"f FETCH 1:* (FLAGS)\r\n")
    assert b"EXPUNGE" not in reply
    reply = h.send(b"n NOOP\r\n")
    assert reply == b"* 2 EXPUNGE\r\nn OK NOOP completed\r\n"


def test_idle_reports_new_messages_until_done() -> None:
    h = Harness(tls=True)
    h.select()
    assert h.send(b"i IDLE\r\n") == b"+ idling\r\n"
    h.store.pending = Changes(12, 5, [4], None, [FlagUpdate(2, ("\\Seen",), 12)])
    h.transport.clear()
    for callback in list(h.store.watchers):
        callback()
    assert h.transport.value() == (b"* 2 FETCH (UID 2 FLAGS (\\Seen))\r\n* 4 EXISTS\r\n")
    assert h.send(b"DONE\r\n") == b"i OK IDLE terminated\r\n"


def test_select_watches_with_its_views_modseq() -> None:
    h = Harness(tls=True)
    h.select()
    assert h.server.selected is not None
    assert h.store.known == h.server.selected.highestmodseq == 10


def test_a_change_announced_between_selects_read_and_its_watch_is_synced() -> None:
    """A change committed after SELECT's read but announced before its watch (a session of
    the same process: delivered without the Redis round trip) is shown before the OK."""
    h = Harness(tls=True)
    h.store.announced = 11
    h.store.pending = Changes(11, 0, [], None, [FlagUpdate(1, ("\\Seen",), 11)])
    reply = h.select()
    assert reply.endswith(b"* 1 FETCH (UID 1 FLAGS (\\Seen))\r\n"
                          b"s OK [READ-WRITE] SELECT completed\r\n")


def test_search_answers_sequence_numbers() -> None:
    h = Harness(tls=True)
    h.select()
    assert h.send(b"s SEARCH HEADER X-Custom foo\r\n").startswith(b"* SEARCH 1 2 3\r\n")


def test_unexpected_store_error_is_serverbug_not_a_traceback() -> None:
    h = Harness(tls=True)
    h.select()
    h.store.fail_fetch = True
    reply = h.send(b"f FETCH 1 BODY[]\r\n")
    assert reply == b"f NO [SERVERBUG] internal server error, logged\r\n"
    assert b"Traceback" not in reply and not h.transport.disconnecting


def test_autologout_after_thirty_idle_minutes() -> None:
    h = Harness(tls=True)
    h.clock.advance(29 * 60)
    assert not h.transport.disconnecting
    h.clock.advance(61)
    assert h.transport.disconnecting
    assert b"* BYE autologout" in h.transport.value()


def test_logout_says_bye_and_closes() -> None:
    h = Harness(tls=True)
    assert h.send(b"z LOGOUT\r\n") == b"* BYE logging out\r\nz OK LOGOUT completed\r\n"
    assert h.transport.disconnecting


@pytest.mark.parametrize("line", [b"a FETCH 1:* (FLAGS)\r\n", b"a SELECT\r\n"])
def test_state_errors_do_not_crash(line: bytes) -> None:
    h = Harness(tls=True)
    h.login()
    assert h.send(line).startswith(b"a BAD")


@pytest.mark.parametrize("line", [
    b"a LIST " + b"(" * 10_000 + b"\r\n",
    b"a APPEND INBOX {4294967296}\r\n",
    b"a FETCH 1:2:3 FLAGS\r\n",
    b"a LOGIN " + b"x" * 200_000 + b"\r\n",
])
def test_hostile_input_gets_an_error_not_a_crash(line: bytes) -> None:
    h = Harness(tls=True)
    h.login()
    reply = h.send(line)
    assert reply.startswith((b"a BAD", b"a NO", b"* BAD")), reply[:100]
    assert h.send(b"n NOOP\r\n").endswith(b"n OK NOOP completed\r\n")
