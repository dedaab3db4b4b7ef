"""The POP3 state machine over StringTransport and task.Clock, with an in-memory policy double."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import pytest
from twisted.internet import interfaces
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import directlyProvides, implementer

from postroom_pop3 import protocol
from postroom_pop3.policy import (
    AuthFailed,
    DropMessage,
    LoginDelayed,
    MaildropInUse,
    MessageGone,
    TemporaryFailure,
)
from postroom_pop3.protocol import CHUNK_SIZE, POP3Factory

UIDVALIDITY = 1700000000


class MemoryMaildrop:
    """A maildrop of byte strings; records commits and releases."""

    def __init__(self, authority: MemoryAuthority, user: str, store: list[tuple[int, bytes]]):
        self.authority = authority
        self.user = user
        self.store = store
        self.snapshot = list(store)
        self.messages = [DropMessage(uid, len(data), f"{UIDVALIDITY}.{uid}")
                         for uid, data in self.snapshot]
        self.released = False
        self.pending: list[Deferred[bytes]] = []

    def retrieve(self, index: int) -> Deferred[bytes]:
        uid, data = self.snapshot[index]
        if self.authority.slow:
            d: Deferred[bytes] = Deferred()
            self.pending.append(d)
            return d
        if all(u != uid for u, _ in self.store):
            return fail(MessageGone())
        return succeed(data)

    def commit(self, deleted: Sequence[int]) -> Deferred[int]:
        uids = {self.snapshot[i][0] for i in deleted}
        before = len(self.store)
        self.store[:] = [(u, d) for u, d in self.store if u not in uids]
        self.authority.commits.append(sorted(uids))
        return succeed(before - len(self.store))

    def release(self) -> None:
        self.released = True
        self.authority.locked.discard(self.user)


class MemoryAuthority:
    """Users with passwords and messages; a per-user lock like the Redis one."""

    def __init__(self) -> None:
        self.users: dict[str, tuple[str, list[tuple[int, bytes]]]] = {}
        self.locked: set[str] = set()
        self.commits: list[list[int]] = []
        self.drops: list[MemoryMaildrop] = []
        self.logins: list[tuple[str, str, str]] = []
        self.refuse_with: Exception | None = None
        self.slow = False

    def add(self, user: str, password: str, *messages: bytes) -> None:
        self.users[user] = (password, [(i + 1, m) for i, m in enumerate(messages)])

    def login(self, username: str, password: str, peer: str) -> Deferred[Any]:
        self.logins.append((username, password, peer))
        if self.refuse_with is not None:
            return fail(self.refuse_with)
        found = self.users.get(username)
        if found is None or found[0] != password:
            return fail(AuthFailed())
        if username in self.locked:
            return fail(MaildropInUse())
        self.locked.add(username)
        drop = MemoryMaildrop(self, username, found[1])
        self.drops.append(drop)
        return succeed(drop)


class TLSStringTransport(StringTransport):
    """A StringTransport that can start TLS (records the context) like a TCP transport."""

    def __init__(self, peer: str) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", peer, 50000))
        directlyProvides(self, interfaces.ITLSTransport)
        self.tls_context: Any = None

    def startTLS(self, context: Any) -> None:
        self.tls_context = context
        directlyProvides(self, interfaces.ITLSTransport, interfaces.ISSLTransport)


@implementer(interfaces.IOpenSSLContextFactory)
class FakeTLS:
    def getContext(self) -> None:
        return None


class Client:
    """Drives one POP3Server: send bytes, pump the RETR producer, read the replies."""

    def __init__(self, authority: MemoryAuthority, *, secure: bool = True,
                 peer: str = "192.0.2.7", **options: Any) -> None:
        self.clock = Clock()
        options.setdefault("tls", FakeTLS())
        self.factory = POP3Factory(authority, hostname="pop.example.org", clock=self.clock,
                                   **options)
        self.transport = TLSStringTransport(peer)
        if secure:
            directlyProvides(self.transport, interfaces.ISSLTransport)
        self.server = self.factory.buildProtocol(None)
        self.server.makeConnection(self.transport)
        self.greeting = self.take()

    def take(self) -> bytes:
        self.pump()
        value = self.transport.value()
        self.transport.clear()
        return bytes(value)

    def pump(self) -> None:
        while self.transport.producer is not None:
            self.transport.producer.resumeProducing()

    def send(self, data: bytes) -> bytes:
        self.server.dataReceived(data)
        return self.take()

    def cmd(self, line: str | bytes) -> bytes:
        raw = line.encode() if isinstance(line, str) else line
        return self.send(raw + b"\r\n")

    def login(self, user: str = "bob@example.org", password: str = "secret") -> bytes:
        self.cmd(f"USER {user}")
        return self.cmd(f"PASS {password}")

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)


MSG1 = b"Subject: one\r\n\r\nfirst body\r\n"
MSG2 = b"Subject: two\r\n\r\n.dotted line\r\n..two dots\r\nend\r\n"


@pytest.fixture
def authority() -> MemoryAuthority:
    auth = MemoryAuthority()
    auth.add("bob@example.org", "secret", MSG1, MSG2)
    return auth


@pytest.fixture
def client(authority: MemoryAuthority) -> Client:
    return Client(authority)


@pytest.fixture
def logged_in(client: Client) -> Client:
    assert client.login().startswith(b"+OK")
    return client


def multiline(reply: bytes) -> list[bytes]:
    assert reply.startswith(b"+OK"), reply
    assert reply.endswith(b"\r\n.\r\n"), reply
    return reply.split(b"\r\n")[1:-2]


# --- greeting, CAPA, states


def test_greeting_is_ok_with_hostname(client: Client) -> None:
    assert client.greeting == b"+OK pop.example.org POP3 server ready\r\n"


def test_capa_in_cleartext_offers_stls_but_no_password_login(authority: MemoryAuthority) -> None:
    caps = multiline(Client(authority, secure=False).cmd("CAPA"))
    assert b"STLS" in caps
    assert b"USER" not in caps
    assert b"SASL PLAIN" not in caps


def test_capa_under_tls_offers_user_and_sasl_plain_and_no_stls(client: Client) -> None:
    caps = multiline(client.cmd("CAPA"))
    for cap in (b"TOP", b"UIDL", b"USER", b"SASL PLAIN", b"RESP-CODES", b"AUTH-RESP-CODE",
                b"PIPELINING", b"EXPIRE NEVER", b"LOGIN-DELAY 0", b"IMPLEMENTATION Postroom"):
        assert cap in caps
    assert b"STLS" not in caps


def test_capa_in_transaction_drops_login_capabilities(logged_in: Client) -> None:
    caps = multiline(logged_in.cmd("CAPA"))
    assert b"USER" not in caps and b"SASL PLAIN" not in caps and b"TOP" in caps


def test_transaction_command_before_login_is_refused(client: Client) -> None:
    assert client.cmd("STAT").startswith(b"-ERR")


def test_unknown_command_is_an_error_and_session_continues(client: Client) -> None:
    assert client.cmd("FROB").startswith(b"-ERR")
    assert client.cmd(b"\x00\xff\xfe garbage").startswith(b"-ERR")
    assert client.cmd("CAPA").startswith(b"+OK")


def test_quit_in_authorization_says_goodbye_and_closes(client: Client) -> None:
    assert client.cmd("QUIT").startswith(b"+OK")
    assert client.closed


def test_utf8_command_is_accepted(client: Client) -> None:
    assert client.cmd("UTF8").startswith(b"+OK")


# --- USER/PASS


def test_user_pass_login_reports_maildrop_size(client: Client) -> None:
    assert client.cmd("USER bob@example.org") == b"+OK send PASS\r\n"
    reply = client.cmd("PASS secret")
    assert reply == f"+OK maildrop has 2 messages ({len(MSG1) + len(MSG2)} octets)\r\n".encode()


def test_password_may_contain_spaces(authority: MemoryAuthority) -> None:
    authority.add("eve@example.org", "two words ")
    assert Client(authority).login("eve@example.org", "two words ").startswith(b"+OK")


def test_bare_user_is_a_syntax_error_not_a_crash(client: Client) -> None:
    assert client.cmd("USER").startswith(b"-ERR")
    assert client.login().startswith(b"+OK")


def test_pass_without_user_is_refused(client: Client) -> None:
    assert client.cmd("PASS secret").startswith(b"-ERR")
    assert client.server.state == protocol.AUTHORIZATION


def test_user_in_cleartext_is_refused_with_auth_code(authority: MemoryAuthority) -> None:
    reply = Client(authority, secure=False).cmd("USER bob@example.org")
    assert reply.startswith(b"-ERR [AUTH]")
    assert authority.logins == []


def test_cleartext_login_from_loopback_when_allowed(authority: MemoryAuthority) -> None:
    client = Client(authority, secure=False, peer="127.0.0.1",
                    allow_plaintext_auth_on_loopback=True)
    assert client.login().startswith(b"+OK")


def test_cleartext_login_from_elsewhere_refused_even_when_loopback_allowed(
        authority: MemoryAuthority) -> None:
    client = Client(authority, secure=False, peer="192.0.2.1",
                    allow_plaintext_auth_on_loopback=True)
    assert client.cmd("USER bob@example.org").startswith(b"-ERR [AUTH]")


def test_failed_login_is_answered_only_after_the_delay(client: Client) -> None:
    client.cmd("USER bob@example.org")
    assert client.cmd("PASS wrong") == b""
    client.clock.advance(protocol.FAILED_LOGIN_DELAY)
    assert client.take() == b"-ERR [AUTH] authentication failed\r\n"
    assert client.server.state == protocol.AUTHORIZATION


def test_commands_pipelined_after_a_failed_login_wait_for_its_delay(client: Client) -> None:
    assert client.send(b"USER bob@example.org\r\nPASS wrong\r\nCAPA\r\n") == b"+OK send PASS\r\n"
    client.clock.advance(protocol.FAILED_LOGIN_DELAY)
    reply = client.take()
    assert reply.startswith(b"-ERR [AUTH]") and b"+OK capability list" in reply


def test_too_many_failed_logins_close_the_connection(client: Client) -> None:
    for _ in range(protocol.MAX_FAILED_LOGINS):
        client.login(password="wrong")
        client.clock.advance(protocol.FAILED_LOGIN_DELAY)
    assert client.take().startswith(b"-ERR [AUTH]")
    assert client.closed


def test_rate_limited_login_says_login_delay(client: Client, authority: MemoryAuthority) -> None:
    authority.refuse_with = LoginDelayed()
    client.login()
    client.clock.advance(protocol.FAILED_LOGIN_DELAY)
    assert client.take().startswith(b"-ERR [LOGIN-DELAY]")


def test_temporary_failure_says_sys_temp(client: Client, authority: MemoryAuthority) -> None:
    authority.refuse_with = TemporaryFailure()
    assert client.login().startswith(b"-ERR [SYS/TEMP]")


def test_second_session_for_same_user_gets_in_use(authority: MemoryAuthority) -> None:
    assert Client(authority).login().startswith(b"+OK")
    assert Client(authority).login() == b"-ERR [IN-USE] maildrop is locked by another session\r\n"


def test_unexpected_authority_error_is_a_temporary_error_without_traceback(
        client: Client, authority: MemoryAuthority) -> None:
    authority.refuse_with = RuntimeError("database exploded at /secret/path")
    reply = client.login()
    assert reply == b"-ERR [SYS/TEMP] internal error, try again later\r\n"
    assert client.cmd("CAPA").startswith(b"+OK")


# --- AUTH PLAIN (RFC 5034)


def plain(user: bytes, password: bytes, authzid: bytes = b"") -> bytes:
    return base64.b64encode(authzid + b"\0" + user + b"\0" + password)


def test_auth_plain_with_initial_response(client: Client) -> None:
    reply = client.cmd(b"AUTH PLAIN " + plain(b"bob@example.org", b"secret"))
    assert reply.startswith(b"+OK maildrop has 2 messages")


def test_auth_plain_with_continuation(client: Client) -> None:
    assert client.cmd("AUTH PLAIN") == b"+ \r\n"
    assert client.cmd(plain(b"bob@example.org", b"secret")).startswith(b"+OK maildrop")


def test_auth_plain_star_cancels(client: Client) -> None:
    client.cmd("AUTH PLAIN")
    assert client.cmd("*").startswith(b"-ERR")
    assert client.login().startswith(b"+OK")


def test_auth_plain_malformed_base64_is_an_error_not_a_crash(client: Client) -> None:
    assert client.cmd("AUTH PLAIN !!!***").startswith(b"-ERR")
    client.cmd("AUTH PLAIN")
    assert client.cmd("%%%").startswith(b"-ERR")
    assert client.login().startswith(b"+OK")


def test_auth_plain_as_another_user_is_refused(client: Client) -> None:
    reply = client.cmd(b"AUTH PLAIN " + plain(b"bob@example.org", b"secret", b"alice@example.org"))
    assert reply.startswith(b"-ERR [AUTH]")


def test_auth_plain_wrong_password_is_delayed_auth_error(client: Client) -> None:
    assert client.cmd(b"AUTH PLAIN " + plain(b"bob@example.org", b"nope")) == b""
    client.clock.advance(protocol.FAILED_LOGIN_DELAY)
    assert client.take().startswith(b"-ERR [AUTH]")


def test_auth_unknown_mechanism_is_refused(client: Client) -> None:
    assert client.cmd("AUTH CRAM-MD5").startswith(b"-ERR")


def test_bare_auth_lists_mechanisms(client: Client) -> None:
    assert multiline(client.cmd("AUTH")) == [b"PLAIN"]


def test_auth_in_cleartext_is_refused(authority: MemoryAuthority) -> None:
    client = Client(authority, secure=False)
    reply = client.cmd(b"AUTH PLAIN " + plain(b"bob@example.org", b"secret"))
    assert reply.startswith(b"-ERR [AUTH]")
    assert authority.logins == []


# --- STLS (RFC 2595)


def test_stls_starts_tls_and_offers_password_login_after(authority: MemoryAuthority) -> None:
    client = Client(authority, secure=False)
    assert client.cmd("STLS") == b"+OK begin TLS negotiation\r\n"
    assert client.transport.tls_context is client.factory.tls
    caps = multiline(client.cmd("CAPA"))
    assert b"USER" in caps and b"STLS" not in caps
    assert client.login().startswith(b"+OK")


def test_commands_pipelined_after_stls_are_discarded(authority: MemoryAuthority) -> None:
    client = Client(authority, secure=False)
    reply = client.send(b"STLS\r\nUSER bob@example.org\r\nPASS secret\r\n")
    assert reply == b"+OK begin TLS negotiation\r\n"
    assert authority.logins == []
    assert client.cmd("STAT").startswith(b"-ERR")  # still AUTHORIZATION: nothing ran


def test_stls_forgets_user_given_before_it(authority: MemoryAuthority) -> None:
    client = Client(authority, secure=False, peer="127.0.0.1",
                    allow_plaintext_auth_on_loopback=True)
    client.cmd("USER bob@example.org")
    client.cmd("STLS")
    assert client.cmd("PASS secret").startswith(b"-ERR")


def test_stls_under_tls_is_refused(client: Client) -> None:
    assert client.cmd("STLS").startswith(b"-ERR")


def test_stls_refused_when_not_configured(authority: MemoryAuthority) -> None:
    client = Client(authority, secure=False, tls=None)
    assert client.cmd("STLS").startswith(b"-ERR")
    assert b"STLS" not in multiline(client.cmd("CAPA"))


def test_stls_in_transaction_is_refused(logged_in: Client) -> None:
    assert logged_in.cmd("STLS").startswith(b"-ERR")


# --- TRANSACTION


def test_stat_counts_messages_and_octets(logged_in: Client) -> None:
    assert logged_in.cmd("STAT") == f"+OK 2 {len(MSG1) + len(MSG2)}\r\n".encode()


def test_list_shows_every_message_size(logged_in: Client) -> None:
    assert multiline(logged_in.cmd("LIST")) == [f"1 {len(MSG1)}".encode(),
                                                f"2 {len(MSG2)}".encode()]


def test_list_one_message(logged_in: Client) -> None:
    assert logged_in.cmd("LIST 2") == f"+OK 2 {len(MSG2)}\r\n".encode()


@pytest.mark.parametrize("argument", ["0", "3", "99999999999999999999999", "-1", "x", "1 2"])
def test_list_bad_message_numbers_are_errors(logged_in: Client, argument: str) -> None:
    assert logged_in.cmd(f"LIST {argument}").startswith(b"-ERR")


def test_uidl_is_uidvalidity_dot_uid(logged_in: Client) -> None:
    assert multiline(logged_in.cmd("UIDL")) == [f"1 {UIDVALIDITY}.1".encode(),
                                                f"2 {UIDVALIDITY}.2".encode()]
    assert logged_in.cmd("UIDL 2") == f"+OK 2 {UIDVALIDITY}.2\r\n".encode()


def test_retr_sends_message_dot_stuffed_with_its_size(logged_in: Client) -> None:
    reply = logged_in.cmd("RETR 2")
    assert reply == (f"+OK {len(MSG2)} octets\r\n".encode()
                     + b"Subject: two\r\n\r\n..dotted line\r\n...two dots\r\nend\r\n.\r\n")


def test_retr_size_equals_list_size(logged_in: Client) -> None:
    listed = int(logged_in.cmd("LIST 1").split()[2])
    assert logged_in.cmd("RETR 1").startswith(f"+OK {listed} octets".encode())


def test_retr_of_message_without_final_crlf_ends_the_response_properly(
        authority: MemoryAuthority) -> None:
    authority.add("amy@example.org", "pw", b"Subject: x\r\n\r\nno newline")
    client = Client(authority)
    client.login("amy@example.org", "pw")
    assert client.cmd("RETR 1").endswith(b"\r\nno newline\r\n.\r\n")


@pytest.mark.parametrize("shift", range(-3, 4))
def test_dot_line_at_the_16k_chunk_boundary_does_not_end_the_message(
        authority: MemoryAuthority, shift: int) -> None:
    # twisted.mail stuffed per chunk: a "." line starting exactly at byte 16384 ended RETR early
    head = b"Subject: big\r\n\r\n"
    filler_len = CHUNK_SIZE + shift - len(head) - 2
    message = head + b"x" * filler_len + b"\r\n.\r\n.\r\nafter\r\n"
    assert message.index(b"\r\n.\r\n") + 2 == CHUNK_SIZE + shift
    authority.add("big@example.org", "pw", message)
    client = Client(authority)
    client.login("big@example.org", "pw")
    reply = client.cmd("RETR 1")
    body = reply.split(b"\r\n", 1)[1]
    assert body.endswith(b"\r\n..\r\n..\r\nafter\r\n.\r\n")
    assert body.count(b"\r\n.\r\n") == 1


def test_retr_streams_in_chunks_through_a_producer(authority: MemoryAuthority) -> None:
    authority.add("big@example.org", "pw", b"a" * (3 * CHUNK_SIZE))
    client = Client(authority)
    client.login("big@example.org", "pw")
    client.server.dataReceived(b"RETR 1\r\n")
    assert client.transport.producer is not None
    assert len(client.transport.value()) < 2 * CHUNK_SIZE
    assert client.take().endswith(b"a\r\n.\r\n")


def test_top_zero_sends_headers_only(logged_in: Client) -> None:
    assert multiline(logged_in.cmd("TOP 1 0")) == [b"Subject: one", b""]


def test_top_with_lines_sends_that_many_body_lines(logged_in: Client) -> None:
    assert multiline(logged_in.cmd("TOP 2 1")) == [b"Subject: two", b"", b"..dotted line"]


def test_top_with_huge_count_sends_whole_message(logged_in: Client) -> None:
    assert logged_in.cmd("TOP 1 4294967295").endswith(b"first body\r\n.\r\n")


@pytest.mark.parametrize("arguments", ["1 -1", "1", "1 x", "0 1", "1 99999999999999999999"])
def test_top_with_bad_arguments_is_an_error(logged_in: Client, arguments: str) -> None:
    assert logged_in.cmd(f"TOP {arguments}").startswith(b"-ERR")


def test_dele_hides_message_from_stat_list_and_retr(logged_in: Client) -> None:
    assert logged_in.cmd("DELE 1") == b"+OK message 1 deleted\r\n"
    assert logged_in.cmd("STAT") == f"+OK 1 {len(MSG2)}\r\n".encode()
    assert multiline(logged_in.cmd("LIST")) == [f"2 {len(MSG2)}".encode()]
    assert logged_in.cmd("RETR 1").startswith(b"-ERR")
    assert logged_in.cmd("DELE 1").startswith(b"-ERR")


def test_rset_undeletes(logged_in: Client) -> None:
    logged_in.cmd("DELE 1")
    assert logged_in.cmd("RSET").startswith(b"+OK maildrop has 2 messages")
    assert logged_in.cmd("STAT").startswith(b"+OK 2 ")


def test_noop(logged_in: Client) -> None:
    assert logged_in.cmd("NOOP") == b"+OK\r\n"


def test_quit_expunges_deleted_messages_and_releases_the_lock(
        logged_in: Client, authority: MemoryAuthority) -> None:
    logged_in.cmd("DELE 2")
    assert logged_in.cmd("QUIT").startswith(b"+OK")
    assert authority.commits == [[2]]
    assert [uid for uid, _ in authority.users["bob@example.org"][1]] == [1]
    assert authority.drops[0].released and logged_in.closed


def test_quit_without_deletions_commits_nothing(logged_in: Client,
                                                authority: MemoryAuthority) -> None:
    assert logged_in.cmd("QUIT").startswith(b"+OK")
    assert authority.commits == []


def test_failed_update_says_so_and_still_releases_the_lock(
        logged_in: Client, authority: MemoryAuthority) -> None:
    logged_in.cmd("DELE 1")
    drop = authority.drops[0]
    drop.commit = lambda deleted: fail(RuntimeError("database went away"))  # type: ignore
    assert logged_in.cmd("QUIT") == b"-ERR [SYS/TEMP] some deleted messages not removed\r\n"
    assert drop.released and logged_in.closed


def test_unexpected_retrieve_error_is_a_temporary_error_and_the_session_goes_on(
        logged_in: Client, authority: MemoryAuthority) -> None:
    authority.drops[0].retrieve = lambda index: fail(RuntimeError("blob lost"))  # type: ignore
    assert logged_in.cmd("RETR 1") == b"-ERR [SYS/TEMP] internal error, try again later\r\n"
    assert logged_in.cmd("NOOP") == b"+OK\r\n"


def test_dropped_connection_does_not_expunge_but_releases_lock(
        logged_in: Client, authority: MemoryAuthority) -> None:
    logged_in.cmd("DELE 1")
    logged_in.server.connectionLost(None)
    assert authority.commits == []
    assert authority.drops[0].released


def test_message_expunged_meanwhile_is_reported_not_fatal(
        logged_in: Client, authority: MemoryAuthority) -> None:
    authority.users["bob@example.org"][1].pop(0)  # IMAP expunged message 1
    assert logged_in.cmd("RETR 1") == b"-ERR [SYS/PERM] message was deleted\r\n"
    assert logged_in.cmd("RETR 2").startswith(b"+OK")


def test_quit_after_imap_expunged_a_deleted_message_still_succeeds(
        logged_in: Client, authority: MemoryAuthority) -> None:
    logged_in.cmd("DELE 1")
    authority.users["bob@example.org"][1].pop(0)
    assert logged_in.cmd("QUIT").startswith(b"+OK")


# --- pipelining, long lines, errors, timeouts


def test_pipelined_commands_are_answered_in_order(client: Client) -> None:
    reply = client.send(b"USER bob@example.org\r\nPASS secret\r\nSTAT\r\nRETR 1\r\nNOOP\r\n")
    lines = reply.split(b"\r\n")
    assert lines[0] == b"+OK send PASS"
    assert lines[1].startswith(b"+OK maildrop")
    assert lines[2].startswith(b"+OK 2 ")
    assert lines[3] == f"+OK {len(MSG1)} octets".encode()
    assert reply.endswith(b"first body\r\n.\r\n+OK\r\n")


def test_pipelined_command_waits_for_a_slow_retrieve(logged_in: Client,
                                                     authority: MemoryAuthority) -> None:
    authority.slow = True
    assert logged_in.send(b"RETR 1\r\nNOOP\r\n") == b""
    authority.drops[0].pending[0].callback(MSG1)
    reply = logged_in.take()
    assert reply.startswith(b"+OK") and reply.endswith(b"first body\r\n.\r\n+OK\r\n")


def test_lf_only_line_endings_are_accepted(client: Client) -> None:
    assert client.send(b"CAPA\n").startswith(b"+OK")


def test_over_long_line_is_an_error_and_the_session_goes_on(client: Client) -> None:
    reply = client.send(b"USER " + b"a" * 300 + b"\r\nCAPA\r\n")
    assert reply.startswith(b"-ERR line too long\r\n+OK capability list")


def test_over_long_line_arriving_in_pieces_gets_one_error(client: Client) -> None:
    assert client.send(b"X" * 1000).startswith(b"-ERR line too long")
    assert client.send(b"Y" * 1000) == b""
    assert client.send(b"Z\r\nNOOP\r\nCAPA\r\n").startswith(b"-ERR NOOP not allowed")


def test_255_octet_command_is_accepted(client: Client) -> None:
    assert client.cmd("USER " + "u" * 250).startswith(b"+OK")


def test_too_many_errors_close_the_connection(client: Client) -> None:
    reply = client.send(b"BAD\r\n" * protocol.MAX_ERRORS)
    assert reply.endswith(b"-ERR too many errors, closing connection\r\n")
    assert client.closed


def test_idle_session_is_logged_out_without_update(logged_in: Client,
                                                   authority: MemoryAuthority) -> None:
    logged_in.cmd("DELE 1")
    logged_in.clock.advance(protocol.IDLE_TIMEOUT - 1)
    assert not logged_in.closed
    logged_in.clock.advance(1)
    assert logged_in.take().startswith(b"-ERR autologout")
    assert logged_in.closed
    logged_in.server.connectionLost(None)
    assert authority.commits == [] and authority.drops[0].released


def test_activity_restarts_the_idle_timer(logged_in: Client) -> None:
    logged_in.clock.advance(protocol.IDLE_TIMEOUT - 1)
    logged_in.cmd("NOOP")
    logged_in.clock.advance(protocol.IDLE_TIMEOUT - 1)
    assert not logged_in.closed


def test_idle_timer_cancelled_on_disconnect(client: Client) -> None:
    client.server.connectionLost(None)
    assert client.clock.getDelayedCalls() == []


def test_connections_per_address_are_limited(authority: MemoryAuthority) -> None:
    first = Client(authority, max_connections_per_ip=1)
    second = first.factory.buildProtocol(None)
    transport = TLSStringTransport("192.0.2.7")
    second.makeConnection(transport)
    assert transport.value().startswith(b"-ERR [SYS/TEMP]") and transport.disconnecting
    second.connectionLost(None)
    first.server.connectionLost(None)
    assert not first.factory.per_address.open


def test_shutdown_closes_sessions_without_update(logged_in: Client,
                                                 authority: MemoryAuthority) -> None:
    logged_in.cmd("DELE 1")
    logged_in.factory.close_sessions()
    assert logged_in.take().startswith(b"-ERR [SYS/TEMP] server shutting down")
    assert logged_in.closed
    logged_in.server.connectionLost(None)
    assert authority.commits == [] and authority.drops[0].released
