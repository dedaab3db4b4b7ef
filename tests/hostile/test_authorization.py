"""Authorization: alice can never read, change or learn the existence of bob's mailboxes.

Every reply alice gets for one of bob's folder names (or a path trick aimed at
it) must be the reply she gets for a name that exists nowhere; bob's store is
unchanged afterwards and his secret subject never reaches alice's socket.
"""

from __future__ import annotations

import poplib

import pytest

from tests.support.hostile import (
    LEDGER,
    PASSWORD,
    SECRET,
    Conn,
    Suite,
    address,
    no_traceback,
    unverified,
)

TRICKS = ["Secret-Bob", "../bob/Secret-Bob", "INBOX/../Secret-Bob", "~bob/Secret-Bob",
          "~bob/INBOX", "bob@hostile.test/INBOX", "bob/INBOX", "/Secret-Bob",
          "#shared/Secret-Bob", "Other Users/bob/INBOX", "../../bob@hostile.test/INBOX",
          "Secret-%", "Secret-*", "%", "*"]
NOWHERE = "Nowhere-7f3a"
LIST_PATTERNS = [("", "*"), ("", "%"), ("", "*Secret*"), ("", "../*"), ("~bob/", "*"),
                 ("", "~bob/*"), ("#shared/", "*"), ("", "bob@hostile.test/*"),
                 ("", "INBOX/../*"), ("", "*/*/*"), ("Other Users/", "*")]


@pytest.fixture
def alice(hostile_suite: Suite):
    conn = Conn(hostile_suite.ports["imaps-993"], tls=True)
    assert conn.line().startswith(b"* OK")
    conn.send(f'a LOGIN "{address("alice")}" "{PASSWORD}"\r\n'.encode())
    assert conn.tagged(b"a")[1].startswith(b"a OK")
    yield conn
    no_traceback(conn)
    LEDGER.check("imaps-993", SECRET.encode() not in conn.received,
                 "bob's message reached alice")
    conn.close()


def quote(name: str) -> bytes:
    return b'"' + name.encode() + b'"'


def reply_to(conn: Conn, command: bytes) -> bytes:
    conn.send(b"x " + command + b"\r\n")
    _, done = conn.tagged(b"x")
    return done


def shape(reply: bytes, name: str) -> bytes:
    """The reply with the name taken out, to compare with the reply for NOWHERE."""
    return reply.replace(name.encode(), b"NAME").replace(NOWHERE.encode(), b"NAME")


def test_list_never_shows_another_users_folders(hostile_suite: Suite, alice: Conn) -> None:
    own = set(hostile_suite.mailbox_state("alice"))
    for reference, pattern in LIST_PATTERNS:
        for verb in (b"LIST", b"LSUB"):
            alice.send(b"x " + verb + b" " + quote(reference) + b" " + quote(pattern) + b"\r\n")
            untagged, done = alice.tagged(b"x")
            LEDGER.tried_on("imaps-993")
            assert done.startswith((b"x OK", b"x NO", b"x BAD")), done
            listed = b"\n".join(untagged)
            LEDGER.check("imaps-993", b"Secret-Bob" not in listed and b"bob" not in listed,
                         f"{verb!r} {reference!r} {pattern!r} showed {listed!r}")
            for line in untagged:
                name = line.rsplit(b" ", 1)[-1].strip(b'"').decode()
                assert name in own, (verb, pattern, line)


@pytest.mark.parametrize("template", [b"SELECT %s", b"EXAMINE %s", b"STATUS %s (MESSAGES UIDNEXT)",
                                      b"DELETE %s", b"RENAME %s Stolen", b"SUBSCRIBE %s",
                                      b"GETQUOTAROOT %s"])
def test_mailbox_commands_on_another_users_names_look_like_nothing_exists(
        hostile_suite: Suite, alice: Conn, template: bytes) -> None:
    bob_before = hostile_suite.mailbox_state("bob")
    for name in TRICKS:
        got = reply_to(alice, template % quote(name))
        nowhere = reply_to(alice, template % quote(NOWHERE))
        LEDGER.tried_on("imaps-993")
        if name in ("%", "*", "Secret-%", "Secret-*") and template.startswith(b"SUBSCRIBE"):
            continue  # subscribing to an odd name of one's own is harmless
        LEDGER.check("imaps-993", not got.startswith(b"x OK") or template.startswith(
            b"SUBSCRIBE"), f"{template % quote(name)!r} succeeded: {got!r}")
        LEDGER.check("imaps-993", shape(got, name) == shape(nowhere, NOWHERE),
                     f"{template % quote(name)!r} told bob's folder apart: {got!r} vs "
                     f"{nowhere!r}")
        if template.startswith(b"SELECT") or template.startswith(b"EXAMINE"):
            reply_to(alice, b"UNSELECT")
    assert hostile_suite.mailbox_state("bob") == bob_before


@pytest.mark.parametrize("verb", [b"COPY", b"MOVE", b"UID COPY", b"UID MOVE"])
def test_copy_and_move_into_another_users_folder_fail_like_a_missing_folder(
        hostile_suite: Suite, alice: Conn, verb: bytes) -> None:
    hostile_suite.deliver("alice", b"Subject: bait\r\n\r\nbait\r\n")
    bob_before = hostile_suite.mailbox_state("bob")
    assert reply_to(alice, b"SELECT INBOX").startswith(b"x OK")
    for name in TRICKS:
        got = reply_to(alice, verb + b" 1:* " + quote(name))
        nowhere = reply_to(alice, verb + b" 1:* " + quote(NOWHERE))
        LEDGER.tried_on("imaps-993")
        LEDGER.check("imaps-993", not got.startswith(b"x OK"), f"{verb!r} into {name!r} worked")
        LEDGER.check("imaps-993", shape(got, name) == shape(nowhere, NOWHERE),
                     f"{verb!r} told bob's folder apart: {got!r} vs {nowhere!r}")
    assert hostile_suite.mailbox_state("bob") == bob_before


def test_append_to_another_users_folder_fails_like_a_missing_folder(
        hostile_suite: Suite, alice: Conn) -> None:
    bob_before = hostile_suite.mailbox_state("bob")
    message = b"Subject: planted\r\n\r\nplanted\r\n"
    for name in TRICKS:
        got = reply_to(alice, b"APPEND " + quote(name) + b" {%d+}\r\n" % len(message) + message)
        nowhere = reply_to(alice, b"APPEND " + quote(NOWHERE) + b" {%d+}\r\n" % len(message)
                           + message)
        LEDGER.tried_on("imaps-993")
        LEDGER.check("imaps-993", not got.startswith(b"x OK"), f"APPEND into {name!r} worked")
        LEDGER.check("imaps-993", shape(got, name) == shape(nowhere, NOWHERE),
                     f"APPEND told bob's folder apart: {got!r} vs {nowhere!r}")
    assert hostile_suite.mailbox_state("bob") == bob_before


def test_created_folders_with_path_tricks_stay_in_the_creators_account(
        hostile_suite: Suite, alice: Conn) -> None:
    bob_before = hostile_suite.mailbox_state("bob")
    for name in ("../bob/Planted", "~bob/Planted", "bob@hostile.test/Planted",
                 "INBOX/../Secret-Bob"):
        reply_to(alice, b"CREATE " + quote(name))
        LEDGER.tried_on("imaps-993")
    LEDGER.check("imaps-993", hostile_suite.mailbox_state("bob") == bob_before,
                 "alice's CREATE changed bob's folders")


def pop3_alice(suite: Suite) -> poplib.POP3_SSL:
    client = poplib.POP3_SSL("127.0.0.1", suite.ports["pop3s-995"], context=unverified(),
                             timeout=30)
    client.user(address("alice"))
    client.pass_(PASSWORD)
    return client


def test_pop3_shows_only_the_users_own_messages(hostile_suite: Suite) -> None:
    client = pop3_alice(hostile_suite)
    try:
        count, _ = client.stat()
        assert count == hostile_suite.mailbox_state("alice")["INBOX"]
        seen = b"".join(b"\n".join(client.retr(i + 1)[1]) for i in range(count))
        LEDGER.check("pop3s-995", SECRET.encode() not in seen, "bob's message reached alice")
    finally:
        client.quit()
    # one session per number: a session with too many errors is ended by the server
    for number in (count + 1, count + 2, 0, -1, 2**31, 2**64):
        client = pop3_alice(hostile_suite)
        try:
            for command in ("RETR %d", "TOP %d 0", "LIST %d", "UIDL %d", "DELE %d"):
                client._putcmd(command % number)  # raw, one line: the reply is all we want
                reply = client._getline()[0]
                LEDGER.tried_on("pop3s-995")
                LEDGER.check("pop3s-995", reply.startswith(b"-ERR"),
                             f"{command % number!r} answered {reply!r}")
                LEDGER.check("pop3s-995", SECRET.encode() not in reply, "bob's data leaked")
        finally:
            client.quit()
