"""LIST-EXTENDED (RFC 5258) and LIST-STATUS (RFC 5819): exact replies over the protocol."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred, fail, succeed

from postroom_imap.list_extended import parse_options
from postroom_imap.policy import MailboxRow, MailboxStatus, NoSuchMailbox
from postroom_imap.syntax_lexer import SyntaxProblem
from tests.unit.test_imap_protocol import FakeStore, Harness

# the mailboxes of RFC 5258 section 5's examples (Fruit/Peach, subscribed but gone, cannot
# exist here: a subscription is a property of a mailbox)
RFC5258 = [("INBOX", True), ("Fruit", False), ("Fruit/Apple", False), ("Fruit/Banana", True),
           ("Tofu", False), ("Vegetable", True), ("Vegetable/Broccoli", True),
           ("Vegetable/Corn", False)]


class Produce(FakeStore):
    def __init__(self, rows: list[tuple[str, bool]] = RFC5258) -> None:
        super().__init__()
        self.rows = [MailboxRow(name, None, subscribed) for name, subscribed in rows]

    def list_mailboxes(self) -> Deferred[list[MailboxRow]]:
        return succeed(self.rows)

    def status(self, name: str) -> Deferred[MailboxStatus]:
        if name == "Tofu":
            return fail(NoSuchMailbox())  # deleted between LIST and STATUS
        n = len(name)
        return succeed(MailboxStatus(messages=n, uidnext=n + 1, uidvalidity=7, unseen=1,
                                     highestmodseq=9, size=100, deleted=0, recent=2))


def session(rows: list[tuple[str, bool]] = RFC5258) -> Harness:
    h = Harness(tls=True)
    h.store = h.accounts.store = Produce(rows)
    h.login()
    return h


def test_subscribed_selection_lists_only_subscribed_names_with_their_real_children() -> None:
    h = session()
    assert h.send(b'A02 LIST (SUBSCRIBED) "" "*"\r\n') == (
        b'* LIST (\\Subscribed \\HasNoChildren) "/" INBOX\r\n'
        b'* LIST (\\Subscribed \\HasNoChildren) "/" Fruit/Banana\r\n'
        b'* LIST (\\Subscribed \\HasChildren) "/" Vegetable\r\n'
        b'* LIST (\\Subscribed \\HasNoChildren) "/" Vegetable/Broccoli\r\n'
        b"A02 OK LIST completed\r\n")


def test_return_children_on_plain_selection() -> None:
    h = session()
    assert h.send(b'A03 LIST () "" "%" RETURN (CHILDREN)\r\n') == (
        b'* LIST (\\HasNoChildren) "/" INBOX\r\n'
        b'* LIST (\\HasChildren) "/" Fruit\r\n'
        b'* LIST (\\HasNoChildren) "/" Tofu\r\n'
        b'* LIST (\\HasChildren) "/" Vegetable\r\n'
        b"A03 OK LIST completed\r\n")


def test_recursivematch_gives_childinfo_to_parents_of_unmatched_subscribed_names() -> None:
    h = session()
    assert h.send(b'A04 LIST (SUBSCRIBED RECURSIVEMATCH) "" "%" RETURN (CHILDREN)\r\n') == (
        b'* LIST (\\Subscribed \\HasNoChildren) "/" INBOX\r\n'
        b'* LIST (\\HasChildren) "/" Fruit ("CHILDINFO" ("SUBSCRIBED"))\r\n'
        b'* LIST (\\Subscribed \\HasChildren) "/" Vegetable ("CHILDINFO" ("SUBSCRIBED"))\r\n'
        b"A04 OK LIST completed\r\n")
    # the subscribed descendants match "*" themselves: no CHILDINFO is redundant
    reply = h.send(b'A05 LIST (SUBSCRIBED RECURSIVEMATCH) "" "*"\r\n')
    assert b"CHILDINFO" not in reply and reply.count(b"* LIST") == 4


def test_recursivematch_lists_a_missing_level_as_nonexistent() -> None:
    h = session([("INBOX", True), ("Gone/Deep/Box", True)])
    assert h.send(b'A1 LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"\r\n') == (
        b'* LIST (\\Subscribed \\HasNoChildren) "/" INBOX\r\n'
        b'* LIST (\\NonExistent \\HasChildren) "/" Gone ("CHILDINFO" ("SUBSCRIBED"))\r\n'
        b"A1 OK LIST completed\r\n")
    # plain LIST keeps the RFC 3501 form for the same level
    assert h.send(b'A2 LIST "" "Gone" RETURN (CHILDREN)\r\n') == (
        b'* LIST (\\Noselect \\HasChildren) "/" Gone\r\nA2 OK LIST completed\r\n')


def test_remote_is_accepted_and_return_subscribed_marks_state() -> None:
    h = session()
    assert h.send(b'A06 LIST (REMOTE) "" "V*" RETURN (SUBSCRIBED)\r\n') == (
        b'* LIST (\\Subscribed \\HasChildren) "/" Vegetable\r\n'
        b'* LIST (\\Subscribed \\HasNoChildren) "/" Vegetable/Broccoli\r\n'
        b'* LIST (\\HasNoChildren) "/" Vegetable/Corn\r\n'
        b"A06 OK LIST completed\r\n")


def test_multiple_patterns() -> None:
    h = session()
    assert h.send(b'A07 LIST "" ("INBOX" "Fruit/%")\r\n') == (
        b'* LIST (\\HasNoChildren) "/" INBOX\r\n'
        b'* LIST (\\HasNoChildren) "/" Fruit/Apple\r\n'
        b'* LIST (\\HasNoChildren) "/" Fruit/Banana\r\n'
        b"A07 OK LIST completed\r\n")


def test_list_status_follows_each_selectable_mailbox() -> None:
    # RFC 5819 section 2's example, on these mailboxes
    h = session()
    assert h.send(b'A01 LIST "" % RETURN (STATUS (MESSAGES UNSEEN))\r\n') == (
        b'* LIST (\\HasNoChildren) "/" INBOX\r\n'
        b"* STATUS INBOX (MESSAGES 5 UNSEEN 1)\r\n"
        b'* LIST (\\HasChildren) "/" Fruit\r\n'
        b"* STATUS Fruit (MESSAGES 5 UNSEEN 1)\r\n"
        b'* LIST (\\HasNoChildren) "/" Tofu\r\n'
        b'* LIST (\\HasChildren) "/" Vegetable\r\n'
        b"* STATUS Vegetable (MESSAGES 9 UNSEEN 1)\r\n"
        b"A01 OK LIST completed\r\n")


def test_list_status_skips_names_listed_only_for_childinfo() -> None:
    h = session([("INBOX", True), ("Gone/Box", True), ("Fruit", False), ("Fruit/A", True)])
    assert h.send(b'A2 LIST (SUBSCRIBED RECURSIVEMATCH) "" "%" '
                  b"RETURN (STATUS (MESSAGES UIDNEXT))\r\n") == (
        b'* LIST (\\Subscribed \\HasNoChildren) "/" INBOX\r\n'
        b"* STATUS INBOX (MESSAGES 5 UIDNEXT 6)\r\n"
        b'* LIST (\\HasChildren) "/" Fruit ("CHILDINFO" ("SUBSCRIBED"))\r\n'
        b'* LIST (\\NonExistent \\HasChildren) "/" Gone ("CHILDINFO" ("SUBSCRIBED"))\r\n'
        b"A2 OK LIST completed\r\n")


@pytest.mark.parametrize("line", [
    b'x LIST (RECURSIVEMATCH) "" "*"',
    b'x LIST (BOGUS) "" "*"',
    b'x LIST "" "*" RETURN (BOGUS)',
    b'x LIST "" "*" RETURN (STATUS)',
    b'x LIST "" "*" RETURN (STATUS (MESSAGES BOGUS))',
    b'x LIST "" "*" RETURN (STATUS (MESSAGES) STATUS (UNSEEN))',
])
def test_bad_options_are_refused_and_the_session_goes_on(line: bytes) -> None:
    h = session()
    assert h.send(line + b"\r\n").startswith(b"x BAD ")
    assert h.send(b"y NOOP\r\n") == b"y OK NOOP completed\r\n"


def test_parse_options_implied_return_subscribed() -> None:
    options = parse_options(("SUBSCRIBED", "RECURSIVEMATCH"), ("CHILDREN",))
    assert options.subscribed and options.recursive and options.return_subscribed
    assert parse_options((), ("STATUS", "(MESSAGES)")).status == ("MESSAGES",)
    with pytest.raises(SyntaxProblem):
        parse_options(("SPECIAL-USE", "RECURSIVEMATCH"), ())


def test_list_status_recent_is_the_one_status_reports() -> None:
    """LIST-STATUS and STATUS render the same values, RECENT included (not a fixed 0)."""
    h = session([("INBOX", True)])
    items = b"(MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ SIZE DELETED)"
    listed = h.send(b'A01 LIST "" INBOX RETURN (STATUS %s)\r\n' % items)
    status = h.send(b"A02 STATUS INBOX %s\r\n" % items)
    line = (b"* STATUS INBOX (MESSAGES 5 RECENT 2 UIDNEXT 6 UIDVALIDITY 7 UNSEEN 1 "
            b"HIGHESTMODSEQ 9 SIZE 100 DELETED 0)\r\n")
    assert listed == b'* LIST (\\HasNoChildren) "/" INBOX\r\n' + line + b"A01 OK LIST completed\r\n"
    assert status == line + b"A02 OK STATUS completed\r\n"
