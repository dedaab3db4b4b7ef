"""QRESYNC (RFC 7162) over the protocol with an in-memory store: the RFC's examples' replies."""

from __future__ import annotations

from array import array
from typing import Any

from twisted.internet.defer import Deferred, succeed

from postroom_imap.policy import Changes, SelectState
from postroom_imap.qresync import outside_view
from postroom_imap.selected import Selected
from postroom_imap.syntax import Command, CommandReader, Limits
from postroom_imap.syntax_types import Qresync, SearchFlag, SearchSet, Select, SequenceSet
from tests.unit.test_imap_protocol import FakeStore, Harness

# RFC 7162 3.2.5.2's example: UIDVALIDITY 67890007, UIDNEXT 600, what survived its expunges
# (the RFC's sequence numbers assume UIDs its text does not give; these are the ones here)
UIDS = [*range(1, 41), 42, 117, 119, 212, 213, *range(541, 600)]
GONE = [(41, 41), (43, 116), (118, 118), (120, 211), (214, 540)]


class Example(FakeStore):
    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[int, Any]] = []

    def select(self, name: str, *, take_recent: bool = False) -> Deferred[SelectState]:
        return succeed(SelectState(1, "INBOX", 67890007, 600, 90060115205545359,
                                   array("I", UIDS), None))

    def vanished(self, mailbox_id: int, since: int,
                 spans: list[tuple[int, int]] | None) -> Deferred[list[tuple[int, int]]]:
        self.asked.append((since, spans))
        return succeed(GONE)

    def fetch_flags(self, mailbox_id: int, uids: Any, **kw: Any) -> Deferred[list[Any]]:
        changed = {117: ("\\Seen \\Answered", 90060115194045001),
                   119: ("\\Draft $MDNSent", 90060115194045308),
                   541: ("\\Seen $Forwarded", 90060115194045001)}
        return succeed([(u, *changed[u]) for u in uids if u in changed])


def session() -> Harness:
    h = Harness(tls=True)
    h.store = h.accounts.store = Example()
    h.login()
    return h


def test_select_qresync_sends_vanished_earlier_then_changed_flags() -> None:
    h = session()
    assert h.send(b"A01 ENABLE QRESYNC\r\n") == (b"* ENABLED QRESYNC\r\n"
                                                  b"A01 OK ENABLE completed\r\n")
    reply = h.send(b"A02 SELECT INBOX (QRESYNC (67890007 90060115194045000 "
                   b"41,43:211,214:541))\r\n")
    assert reply.endswith(
        b"* OK [HIGHESTMODSEQ 90060115205545359] highest modseq\r\n"
        b"* VANISHED (EARLIER) 41,43:116,118,120:211,214:540\r\n"
        b"* 42 FETCH (UID 117 FLAGS (\\Seen \\Answered) MODSEQ (90060115194045001))\r\n"
        b"* 43 FETCH (UID 119 FLAGS (\\Draft $MDNSent) MODSEQ (90060115194045308))\r\n"
        b"* 46 FETCH (UID 541 FLAGS (\\Seen $Forwarded) MODSEQ (90060115194045001))\r\n"
        b"A02 OK [READ-WRITE] SELECT completed\r\n")
    assert h.store.asked == [(90060115194045000, [(41, 41), (43, 211), (214, 541)])]


def test_a_mismatched_uidvalidity_is_a_plain_select() -> None:
    h = session()
    h.send(b"A01 ENABLE QRESYNC\r\n")
    reply = h.send(b"A02 SELECT INBOX (QRESYNC (1 90060115194045000))\r\n")
    assert b"VANISHED" not in reply and b"FETCH" not in reply
    assert reply.endswith(b"A02 OK [READ-WRITE] SELECT completed\r\n")


def test_qresync_needs_enable_and_vanished_needs_uid_fetch_with_changedsince() -> None:
    h = session()
    assert h.send(b"A02 SELECT INBOX (QRESYNC (67890007 1))\r\n").startswith(b"A02 BAD ")
    h.send(b"A03 SELECT INBOX\r\n")
    assert h.send(b"A04 UID FETCH 1:* FLAGS (CHANGEDSINCE 1 VANISHED)\r\n").startswith(
        b"A04 BAD ")  # not enabled
    h.send(b"A05 ENABLE QRESYNC\r\n")
    assert h.send(b"A06 FETCH 1:* FLAGS (CHANGEDSINCE 1 VANISHED)\r\n").startswith(b"A06 BAD ")
    assert h.send(b"A07 UID FETCH 1:* FLAGS (VANISHED)\r\n").startswith(b"A07 BAD ")


def test_uid_fetch_vanished_leaves_out_uids_the_session_still_shows() -> None:
    # RFC 7162 3.2.6's example form: UID FETCH 300:500 (FLAGS) (CHANGEDSINCE n VANISHED)
    h = session()
    h.send(b"A01 ENABLE QRESYNC\r\n")
    h.send(b"A02 SELECT INBOX\r\n")
    reply = h.send(b"s100 UID FETCH 300:500 (FLAGS) (CHANGEDSINCE 12345 VANISHED)\r\n")
    assert reply == (b"* VANISHED (EARLIER) 41,43:116,118,120:211,214:540\r\n"
                     b"s100 OK FETCH completed\r\n")
    assert outside_view([(100, 120), (540, 545)], selected_with([117, 119, 541, 542])) == [
        (100, 116), (118, 118), (120, 120), (540, 540), (543, 545)]


def test_store_responses_carry_the_uid_once_enabled() -> None:
    h = session()
    h.send(b"A01 ENABLE QRESYNC\r\n")
    h.send(b"A02 SELECT INBOX\r\n")
    assert h.send(b"A03 STORE 1 +FLAGS (\\Seen)\r\n") == (
        b"* 1 FETCH (UID 1 FLAGS (\\Seen) MODSEQ (11))\r\nA03 OK STORE completed\r\n")


def selected_with(uids: list[int]) -> Selected:
    return Selected(SelectState(1, "INBOX", 1, 600, 1, array("I", uids), None), False)


def test_expunges_become_one_vanished_line_once_enabled() -> None:
    box = selected_with([1, 2, 3, 5, 8])
    box.vanished = True
    assert box.forget([2, 3, 8, 9]) == [b"* VANISHED 2:3,8\r\n"]
    assert list(box.uids) == [1, 5]
    plain = selected_with([1, 2, 3])
    assert plain.forget([2, 3]) == [b"* 3 EXPUNGE\r\n", b"* 2 EXPUNGE\r\n"]
    box.vanished = True
    lines = box.apply(Changes(5, 9, [], [5], []), allow_expunge=True, condstore=True)
    assert lines == [b"* VANISHED 1\r\n"]


def test_forget_drops_expunged_uids_from_searchres_and_recent() -> None:
    box = Selected(SelectState(1, "INBOX", 1, 600, 1, array("I", [1, 2, 3, 5, 8]), None,
                               recent_from=3), False)
    box.vanished = True
    box.saved = [2, 3, 8]
    assert box.recent == [(3, 8)] and box.recent_count() == 3
    assert box.forget([3, 8]) == [b"* VANISHED 3,8\r\n"]
    assert box.saved == [2] and box.saved_uids() == [2]
    # the range shrinks to what is left (5), it does not split
    assert box.recent == [(5, 5)] and box.recent_count() == 1
    assert box.bind_search(SearchFlag("\\Recent")) == SearchSet(SequenceSet(((5, 5),)), uid=True)
    # new mail taken after only expunged UIDs joins the range
    lines = box.apply(Changes(9, 11, [9, 10], None, [], recent=[9, 10]),
                      allow_expunge=True, condstore=True)
    assert lines == [b"* 5 EXISTS\r\n", b"* 3 RECENT\r\n"]
    assert box.recent == [(5, 10)]
    assert box.forget([5, 9, 10]) == [b"* VANISHED 5,9:10\r\n"]
    assert box.recent == [] and box.recent_count() == 0


def parse(line: bytes) -> Select:
    (event,) = CommandReader(Limits()).feed(line)
    assert isinstance(event, Command) and isinstance(event.args, Select)
    return event.args


def test_the_qresync_parameter_parses_with_known_uids_and_sequence_match_data() -> None:
    args = parse(b"B02 SELECT INBOX (QRESYNC (67890007 90060115194045000 1:29997 "
                 b"(5000,7500,9000,9990:9999 15000,22500,27000,29970,29973,29976,29979,"
                 b"29982,29985,29988,29991,29994,29997)))\r\n")
    assert isinstance(args.qresync, Qresync)
    assert (args.qresync.uidvalidity, args.qresync.modseq) == (67890007, 90060115194045000)
    assert args.qresync.known_uids is not None and args.qresync.seq_match is not None
    assert parse(b"c SELECT INBOX (QRESYNC (1 2))\r\n").qresync == Qresync(1, 2)
    for bad in (b"d SELECT INBOX (QRESYNC)\r\n", b"e SELECT INBOX (QRESYNC (0 2))\r\n",
                b"f SELECT INBOX (QRESYNC (1 2 3 (4)))\r\n"):
        (event,) = CommandReader(Limits()).feed(bad)
        assert not isinstance(event, Command)
