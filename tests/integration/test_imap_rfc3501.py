"""RFC 3501 behaviour against the live imap service, with the exact server replies (issue 18).

Mailbox names made of atom-special-ish characters, LIST/LSUB patterns
fuzzed over one live connection, LSUB's ``\\Noselect`` parents (6.3.9),
``\\Recent`` taken by exactly one session, and keywords announced with
``FLAGS`` before any FETCH uses them. Raw sockets where the exact bytes
matter; imaplib for the multi-session scenarios.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postroom.mime import analyze
from postroom.store import mailboxes, messages
from postroom.store.mailboxes import MAX_KEYWORDS
from tests.integration import test_imap_service as base
from tests.integration.test_imap_service import (
    MESSAGE,
    PASSWORD,
    Account,
    Server,
    imaps,
    unverified,
)

# the service, domain and account fixtures of the main imap tests, reused by name
certs, server, domain, account = base.certs, base.server, base.domain, base.account

# every printable ASCII character an atom may hold but letters, as a compliance run sends them
ODD = b"!#$&'+,-.0123456789:;<=>?@^_`|[}"
# the same name written as modified UTF-7 (a literal & is "&-")
ODD_WIRE = ODD.replace(b"&", b"&-")


class Wire:
    """One logged-in connection that sends raw command lines and returns the raw replies."""

    def __init__(self, server: Server, account: Account) -> None:
        raw = socket.create_connection((server.host, server.tls_port), timeout=10)
        self.sock = unverified().wrap_socket(raw, server_hostname="localhost")
        self.buffer = b""
        self.count = 0
        self.line()  # greeting
        self.send(b'LOGIN "%s" "%s"' % (account.address.encode(), PASSWORD.encode()))

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"server closed the connection: {self.buffer!r}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line + b"\r\n"

    def send(self, command: bytes) -> list[bytes]:
        """Every line up to and including the tagged reply; literals are read in with their line."""
        self.count += 1
        tag = b"t%d" % self.count
        self.sock.sendall(tag + b" " + command + b"\r\n")
        out = []
        while True:
            line = self.line()
            size = re.search(rb"\{(\d+)\}\r\n$", line)
            if size:
                while len(self.buffer) < int(size.group(1)):
                    self.buffer += self.sock.recv(65536)
                line += self.buffer[:int(size.group(1))]
                self.buffer = self.buffer[int(size.group(1)):]
                line += self.line()
            out.append(line)
            if line.startswith(tag + b" "):
                return [re.sub(rb"^t\d+ ", b"TAG ", x) for x in out]

    def close(self) -> None:
        try:
            self.sock.sendall(b"z LOGOUT\r\n")
        except (OSError, ssl.SSLError):
            pass
        self.sock.close()


@pytest.fixture
def wire(server: Server, account: Account) -> Wire:
    connection = Wire(server, account)
    yield connection
    connection.close()


# --- mailbox names of atom-special-ish characters


def test_names_of_atom_specials_are_no_not_bad_and_list_keeps_the_connection(
        wire: Wire) -> None:
    missing = wire.send(b"SELECT " + ODD)
    assert missing == [b"TAG NO [NONEXISTENT] no such mailbox\r\n"]
    assert wire.send(b'SELECT "' + ODD + b'"') == missing
    assert wire.send(b'LIST "" ' + ODD + b"%*") == [b"TAG OK LIST completed\r\n"]
    assert wire.send(b'LSUB "" ' + ODD + b"%*") == [b"TAG OK LSUB completed\r\n"]
    assert wire.send(b"STATUS " + ODD + b" (MESSAGES)") == missing
    # not modified UTF-7 (an unterminated &-sequence): never created under another form
    assert wire.send(b"CREATE " + ODD) == [
        b"TAG NO [CANNOT] mailbox name is not modified UTF-7: bad &-sequence\r\n"]
    # more than the session's error budget (20 BADs close it): none of these spend it
    for _ in range(25):
        assert wire.send(b'LIST "" ' + ODD + b"%*") == [b"TAG OK LIST completed\r\n"]
    assert wire.send(b"CREATE " + ODD_WIRE + b"/child") == [b"TAG OK CREATE completed\r\n"]
    assert wire.send(b'LIST "" ' + ODD_WIRE + b"%*") == [
        b'* LIST (\\HasChildren) "/" ' + ODD_WIRE + b"\r\n",
        b'* LIST (\\HasNoChildren) "/" ' + ODD_WIRE + b"/child\r\n",
        b"TAG OK LIST completed\r\n"]
    assert wire.send(b'LIST "" ' + ODD_WIRE + b"%") == [
        b'* LIST (\\HasChildren) "/" ' + ODD_WIRE + b"\r\n", b"TAG OK LIST completed\r\n"]
    selected = wire.send(b"SELECT " + ODD_WIRE)
    assert selected[-1] == b"TAG OK [READ-WRITE] SELECT completed\r\n"
    assert wire.send(b"NOOP") == [b"TAG OK NOOP completed\r\n"]


PATTERN_CHARS = list("!#$&'+,-.0123456789:;<=>?@^_`|[}~%*/aINBOXib ]{()\\\"")


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def _fuzz(wire: Wire, data: st.DataObject) -> None:
    verb = data.draw(st.sampled_from([b"LIST", b"LSUB"]))
    reference = data.draw(st.text(st.sampled_from(PATTERN_CHARS), max_size=8)).encode()
    pattern = data.draw(st.text(st.sampled_from(PATTERN_CHARS), max_size=40)).encode()

    def quoted(text: bytes) -> bytes:
        return b'"' + text.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'

    as_literal = data.draw(st.booleans())
    pattern_arg = b"{%d+}\r\n%s" % (len(pattern), pattern) if as_literal else quoted(pattern)
    reply = wire.send(verb + b" " + quoted(reference) + b" " + pattern_arg)
    *untagged, tagged = reply
    assert re.fullmatch(rb"TAG (OK %s completed|NO \[LIMIT\] .*)\r\n" % verb, tagged), reply
    for line in untagged:
        # * LIST (attrs) "/" name, the name an atom, a quoted string or a literal
        assert re.fullmatch(rb'\* %s \((\\\w+( \\\w+)*)?\) "/" '
                            rb'([^\s(){%%*"\\\]]+|"([^"\\]|\\.)*"|\{\d+\}\r\n.*)\r\n' % verb,
                            line, re.S), line


def test_list_and_lsub_patterns_fuzzed_over_one_live_connection(wire: Wire) -> None:
    for name in (ODD_WIRE, ODD_WIRE + b"/x", b"a/b/c", b"[x]/y", b"&AOk-t&AOk-"):
        assert wire.send(b'CREATE "' + name + b'"')[-1] == b"TAG OK CREATE completed\r\n"
    wire.send(b'SUBSCRIBE "a/b/c"')
    _fuzz(wire)
    assert wire.count > 200  # every example reached the server
    assert wire.send(b"NOOP") == [b"TAG OK NOOP completed\r\n"]


# --- LSUB (RFC 3501 6.3.9)


def test_lsub_percent_returns_an_unsubscribed_parent_as_noselect(wire: Wire) -> None:
    for name in (b"foo", b"foo/bar", b"foo/baz", b"other", b"other/sub"):
        wire.send(b"CREATE " + name)
    # CREATE subscribes; leave foo/bar and other subscribed, the rest not
    for name in (b"foo", b"foo/baz", b"other/sub"):
        assert wire.send(b"UNSUBSCRIBE " + name) == [b"TAG OK UNSUBSCRIBE completed\r\n"]
    # (INBOX, Sent, Drafts... are subscribed at creation: the patterns leave them out)
    assert wire.send(b'LSUB "" f%') == [
        b'* LSUB (\\Noselect \\HasChildren) "/" foo\r\n', b"TAG OK LSUB completed\r\n"]
    assert wire.send(b'LSUB "" o%') == [
        b'* LSUB (\\HasChildren) "/" other\r\n', b"TAG OK LSUB completed\r\n"]
    # * reaches foo/bar itself: the parent is not listed; nothing unsubscribed is
    assert wire.send(b'LSUB "" f*') == [
        b'* LSUB (\\HasNoChildren) "/" foo/bar\r\n', b"TAG OK LSUB completed\r\n"]
    assert wire.send(b'LSUB "" o*') == [
        b'* LSUB (\\HasChildren) "/" other\r\n', b"TAG OK LSUB completed\r\n"]
    assert b"foo" in b"".join(wire.send(b'LSUB "" %'))
    assert wire.send(b'LSUB "" foo/%') == [
        b'* LSUB (\\HasNoChildren) "/" foo/bar\r\n', b"TAG OK LSUB completed\r\n"]
    assert wire.send(b'LSUB "" other/%') == [b"TAG OK LSUB completed\r\n"]
    # LIST is unchanged: foo is a real, selectable mailbox
    assert wire.send(b'LIST "" foo') == [
        b'* LIST (\\HasChildren) "/" foo\r\n', b"TAG OK LIST completed\r\n"]


# --- \Recent (RFC 3501 2.3.2): one session, the first read-write SELECT that sees it

FLAGS_LINE = b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"


def _select_lines(reply: list[bytes]) -> list[bytes]:
    """The EXISTS/RECENT lines of a SELECT reply (the rest has UIDVALIDITY, dates...)."""
    return [line for line in reply if re.fullmatch(rb"\* \d+ (EXISTS|RECENT)\r\n", line)]


def test_recent_belongs_to_the_first_read_write_select_only(server: Server,
                                                            account: Account) -> None:
    account.deliver(MESSAGE)
    account.deliver(MESSAGE)
    first, second = Wire(server, account), Wire(server, account)
    try:
        assert first.send(b"STATUS INBOX (MESSAGES RECENT)") == [
            b"* STATUS INBOX (MESSAGES 2 RECENT 2)\r\n", b"TAG OK STATUS completed\r\n"]
        # EXAMINE reports the recent messages without taking them
        examined = first.send(b"EXAMINE INBOX")
        assert _select_lines(examined) == [b"* 2 EXISTS\r\n", b"* 2 RECENT\r\n"]
        assert first.send(b"FETCH 1:2 (FLAGS)") == [
            b"* 1 FETCH (FLAGS (\\Recent))\r\n", b"* 2 FETCH (FLAGS (\\Recent))\r\n",
            b"TAG OK FETCH completed\r\n"]
        # the first read-write SELECT takes them
        assert _select_lines(second.send(b"SELECT INBOX")) == [
            b"* 2 EXISTS\r\n", b"* 2 RECENT\r\n"]
        assert second.send(b"SEARCH RECENT") == [b"* SEARCH 1 2\r\n",
                                                 b"TAG OK SEARCH completed\r\n"]
        assert second.send(b"SEARCH NEW") == [b"* SEARCH 1 2\r\n", b"TAG OK SEARCH completed\r\n"]
        assert second.send(b"SEARCH OLD") == [b"* SEARCH\r\n", b"TAG OK SEARCH completed\r\n"]
        assert second.send(b"STORE 1 +FLAGS (\\Seen)") == [
            b"* 1 FETCH (FLAGS (\\Seen \\Recent))\r\n", b"TAG OK STORE completed\r\n"]
        assert second.send(b"SEARCH NEW") == [b"* SEARCH 2\r\n", b"TAG OK SEARCH completed\r\n"]
        assert second.send(b"UID FETCH 1:* (FLAGS)") == [
            b"* 1 FETCH (UID 1 FLAGS (\\Seen \\Recent))\r\n",
            b"* 2 FETCH (UID 2 FLAGS (\\Recent))\r\n", b"TAG OK FETCH completed\r\n"]
        # nobody else sees them as recent any more
        assert _select_lines(first.send(b"SELECT INBOX")) == [
            b"* 2 EXISTS\r\n", b"* 0 RECENT\r\n"]
        assert first.send(b"SEARCH RECENT") == [b"* SEARCH\r\n", b"TAG OK SEARCH completed\r\n"]
        assert first.send(b"SEARCH OLD") == [b"* SEARCH 1 2\r\n", b"TAG OK SEARCH completed\r\n"]
        assert first.send(b"FETCH 2 (FLAGS)") == [b"* 2 FETCH (FLAGS ())\r\n",
                                                  b"TAG OK FETCH completed\r\n"]
        assert first.send(b"STATUS INBOX (RECENT)") == [
            b"* STATUS INBOX (RECENT 0)\r\n", b"TAG OK STATUS completed\r\n"]

        # new mail while both have it selected: the session that syncs first takes it
        account.deliver(MESSAGE)
        assert second.send(b"NOOP") == [b"* 3 EXISTS\r\n", b"* 3 RECENT\r\n",
                                        b"TAG OK NOOP completed\r\n"]
        assert first.send(b"NOOP") == [b"* 3 EXISTS\r\n", b"TAG OK NOOP completed\r\n"]
        assert second.send(b"FETCH 3 (FLAGS)") == [b"* 3 FETCH (FLAGS (\\Recent))\r\n",
                                                   b"TAG OK FETCH completed\r\n"]
        assert first.send(b"FETCH 3 (FLAGS)") == [b"* 3 FETCH (FLAGS ())\r\n",
                                                  b"TAG OK FETCH completed\r\n"]
    finally:
        first.close()
        second.close()


def test_own_append_to_the_selected_mailbox_is_recent_in_that_session(
        server: Server, account: Account) -> None:
    """RFC 3501 2.3.2 and 6.3.11: the appending session is the first told of the message (its
    EXISTS comes with the APPEND), so it takes \\Recent, as a read-write SELECT would."""
    account.deliver(MESSAGE)
    appender, other, viewer = Wire(server, account), Wire(server, account), Wire(server, account)
    literal = b"APPEND INBOX (\\Seen) {%d+}\r\n%s" % (len(MESSAGE), MESSAGE)
    try:
        assert _select_lines(appender.send(b"SELECT INBOX")) == [
            b"* 1 EXISTS\r\n", b"* 1 RECENT\r\n"]
        assert _select_lines(other.send(b"SELECT INBOX")) == [
            b"* 1 EXISTS\r\n", b"* 0 RECENT\r\n"]
        appended = appender.send(literal)
        assert appended[:2] == [b"* 2 EXISTS\r\n", b"* 2 RECENT\r\n"]
        assert appended[2].startswith(b"TAG OK [APPENDUID ") and appended[2].endswith(
            b" 2] APPEND completed\r\n")
        assert appender.send(b"FETCH 2 (FLAGS)") == [b"* 2 FETCH (FLAGS (\\Seen \\Recent))\r\n",
                                                     b"TAG OK FETCH completed\r\n"]
        assert appender.send(b"SEARCH RECENT") == [b"* SEARCH 1 2\r\n",
                                                   b"TAG OK SEARCH completed\r\n"]
        # the other read-write session is told of it too, but second: not recent there
        assert other.send(b"NOOP") == [b"* 2 EXISTS\r\n", b"TAG OK NOOP completed\r\n"]
        # a MULTIAPPEND: one EXISTS, one RECENT for both messages
        appended = appender.send(literal + b" {%d+}\r\n%s" % (len(MESSAGE), MESSAGE))
        assert appended[:2] == [b"* 4 EXISTS\r\n", b"* 4 RECENT\r\n"]
        # nothing is left for the next session, nor reported by STATUS
        assert viewer.send(b"STATUS INBOX (MESSAGES RECENT)")[0] == (
            b"* STATUS INBOX (MESSAGES 4 RECENT 0)\r\n")
        # EXAMINE takes nothing: an APPEND there leaves the message recent for the next session
        assert _select_lines(viewer.send(b"EXAMINE INBOX")) == [
            b"* 4 EXISTS\r\n", b"* 0 RECENT\r\n"]
        assert viewer.send(literal)[0] == b"* 5 EXISTS\r\n"
        assert viewer.send(b"STATUS INBOX (RECENT)")[0] == b"* STATUS INBOX (RECENT 1)\r\n"
        # and an APPEND to another mailbox takes nothing either
        appender.send(b"CREATE Other")
        appender.send(b"APPEND Other {%d+}\r\n%s" % (len(MESSAGE), MESSAGE))
        assert appender.send(b"STATUS Other (RECENT)")[0] == b"* STATUS Other (RECENT 1)\r\n"
    finally:
        appender.close()
        other.close()
        viewer.close()


def test_new_mail_is_recent_in_exactly_one_of_two_racing_sessions(server: Server,
                                                                  account: Account) -> None:
    clients = [imaps(server, account), imaps(server, account)]
    try:
        for client in clients:
            client.select("INBOX")
            client.untagged_responses.clear()
        for round_ in range(1, 6):
            account.deliver(MESSAGE)
            barrier = threading.Barrier(2)
            replies: list[tuple[list[bytes], list[bytes]]] = [([], []), ([], [])]

            def sync(i: int, barrier: threading.Barrier = barrier,
                     replies: list[tuple[list[bytes], list[bytes]]] = replies) -> None:
                barrier.wait()
                clients[i].noop()
                replies[i] = (clients[i].untagged_responses.pop("EXISTS", []),
                              clients[i].untagged_responses.pop("RECENT", []))

            threads = [threading.Thread(target=sync, args=(i,)) for i in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert [r[0] for r in replies] == [[str(round_).encode()]] * 2
            took = [i for i in range(2) if replies[i][1]]
            assert len(took) == 1, replies
            _, data = clients[took[0]].search(None, "RECENT")
            assert str(round_).encode() in data[0].split()
            _, data = clients[1 - took[0]].search(None, "RECENT")
            assert str(round_).encode() not in data[0].split()
    finally:
        for client in clients:
            client.logout()


# --- keywords announced before a FETCH uses them


def test_a_new_keyword_is_announced_to_every_session_before_fetch_uses_it(
        server: Server, account: Account) -> None:
    account.deliver(MESSAGE)
    account.deliver(MESSAGE)
    actor, watcher, reader = Wire(server, account), Wire(server, account), Wire(server, account)
    try:
        assert actor.send(b"SELECT INBOX")[:2] == [
            FLAGS_LINE,
            b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] "
            b"flags permitted\r\n"]
        watcher.send(b"SELECT INBOX")
        reader.send(b"EXAMINE INBOX")
        announced = [
            b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $hello)\r\n",
            b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $hello \\*)] "
            b"flags permitted\r\n"]
        assert actor.send(b"STORE 1 +FLAGS ($hello)") == [
            *announced, b"* 1 FETCH (FLAGS ($hello \\Recent))\r\n", b"TAG OK STORE completed\r\n"]
        assert watcher.send(b"NOOP") == [*announced, b"* 1 FETCH (UID 1 FLAGS ($hello))\r\n",
                                         b"TAG OK NOOP completed\r\n"]
        # read-only: the same FLAGS, and no flag may be changed permanently
        assert reader.send(b"NOOP") == [
            announced[0], b"* OK [PERMANENTFLAGS ()] flags permitted\r\n",
            b"* 1 FETCH (UID 1 FLAGS ($hello))\r\n", b"TAG OK NOOP completed\r\n"]
        # a keyword already announced is not announced again
        assert actor.send(b"STORE 2 +FLAGS ($hello)") == [
            b"* 2 FETCH (FLAGS ($hello \\Recent))\r\n", b"TAG OK STORE completed\r\n"]
        assert watcher.send(b"NOOP") == [b"* 2 FETCH (UID 2 FLAGS ($hello))\r\n",
                                         b"TAG OK NOOP completed\r\n"]
        # the list persists: a new SELECT lists it, even once no message has it
        actor.send(b"STORE 1:2 -FLAGS ($hello)")
        assert Wire(server, account).send(b"SELECT INBOX")[:2] == announced
        # APPEND with a new keyword into the selected mailbox: announced before its tagged OK
        appended = watcher.send(b"APPEND INBOX ($keyword1) {%d+}\r\n" % len(MESSAGE)
                                + MESSAGE)
        assert appended[:2] == [
            b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $hello $keyword1)\r\n",
            b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $hello "
            b"$keyword1 \\*)] flags permitted\r\n"]
        assert actor.send(b"NOOP")[:1] == [appended[0]]
    finally:
        for connection in (actor, watcher, reader):
            connection.close()


def test_keywords_over_imaplib_two_devices(server: Server, account: Account) -> None:
    account.deliver(MESSAGE)
    phone, laptop = imaps(server, account), imaps(server, account)
    try:
        phone.select("INBOX")
        laptop.select("INBOX")
        laptop.untagged_responses.clear()
        typ, _ = phone.store("1", "+FLAGS", "($label1)")
        assert typ == "OK"
        laptop.noop()
        assert laptop.untagged_responses["FLAGS"] == [
            b"(\\Answered \\Flagged \\Deleted \\Seen \\Draft $label1)"]
        assert b"$label1" in laptop.untagged_responses["FETCH"][0]
    finally:
        phone.logout()
        laptop.logout()


def test_a_mailbox_keyword_list_is_bounded(wire: Wire, account: Account) -> None:
    account.deliver(MESSAGE)
    wire.send(b"SELECT INBOX")
    first = b" ".join(b"$k%d" % i for i in range(MAX_KEYWORDS))
    reply = wire.send(b"STORE 1 +FLAGS.SILENT (" + first + b")")
    assert reply[-1] == b"TAG OK STORE completed\r\n" and reply[0].startswith(b"* FLAGS (")
    assert wire.send(b"STORE 1 +FLAGS.SILENT ($one-too-many)") == [
        b"TAG NO [LIMIT] too many keywords in this mailbox\r\n"]
    # nothing of the refused STORE stayed
    assert wire.send(b"SEARCH KEYWORD $one-too-many") == [
        b"* SEARCH\r\n", b"TAG OK SEARCH completed\r\n"]


def test_recent_is_taken_once_across_two_imap_processes(
        server: Server, account: Account, database_url: str, redis_url: str,
        certs: Path) -> None:
    process, _, tls_port = base.start_imap(database_url, redis_url, certs, server.prefix)
    try:
        other = Server(server.host, server.port, tls_port, server.prefix, server.domain,
                       server.redis_url, process)
        account.deliver(MESSAGE)
        here, there = Wire(server, account), Wire(other, account)
        try:
            assert _select_lines(there.send(b"SELECT INBOX")) == [
                b"* 1 EXISTS\r\n", b"* 1 RECENT\r\n"]
            assert _select_lines(here.send(b"SELECT INBOX")) == [
                b"* 1 EXISTS\r\n", b"* 0 RECENT\r\n"]
            account.deliver(MESSAGE)
            assert here.send(b"NOOP") == [b"* 2 EXISTS\r\n", b"* 1 RECENT\r\n",
                                          b"TAG OK NOOP completed\r\n"]
            assert there.send(b"NOOP") == [b"* 2 EXISTS\r\n", b"TAG OK NOOP completed\r\n"]
            assert there.send(b"STORE 2 +FLAGS ($two)")[:1] == [
                b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $two)\r\n"]
            assert here.send(b"NOOP") == [
                b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $two)\r\n",
                b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $two \\*)]"
                b" flags permitted\r\n",
                b"* 2 FETCH (UID 2 FLAGS ($two \\Recent))\r\n", b"TAG OK NOOP completed\r\n"]
        finally:
            here.close()
            there.close()
    finally:
        process.close()


def test_a_delivery_with_a_sieve_keyword_is_announced_before_its_exists(
        wire: Wire, account: Account) -> None:
    account.deliver(MESSAGE)
    wire.send(b"SELECT INBOX")

    def deliver_flagged(session: Any) -> int:
        message_id = messages.store_message(session, MESSAGE, analyze(MESSAGE).to_dict())
        uid, _ = mailboxes.deliver_to_mailbox(
            session, user_id=account.user_id, mailbox_name="INBOX", message_id=message_id,
            spool_recipient_id=None, flags=["\\Flagged", "$sieve"])
        return uid

    account.database.run_sync(deliver_flagged)
    assert wire.send(b"NOOP") == [
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $sieve)\r\n",
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $sieve \\*)] "
        b"flags permitted\r\n",
        b"* 2 EXISTS\r\n", b"* 2 RECENT\r\n", b"TAG OK NOOP completed\r\n"]
    assert wire.send(b"FETCH 2 (FLAGS)") == [b"* 2 FETCH (FLAGS (\\Flagged $sieve \\Recent))\r\n",
                                             b"TAG OK FETCH completed\r\n"]
