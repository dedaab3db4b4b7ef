"""The session side of \\Recent and keyword announcement, and LSUB's parents (pure, no store)."""

from __future__ import annotations

from array import array

from postroom.store.search import SearchAll, SearchFlag, SearchNot, SearchSet
from postroom_imap.handlers_mailbox import list_lines, list_matchers
from postroom_imap.policy import Changes, MailboxRow, SelectState
from postroom_imap.selected import Selected


def _box(uids: list[int], recent_from: int | None, readonly: bool = False,
         keywords: tuple[str, ...] = ()) -> Selected:
    state = SelectState(1, "INBOX", 7, (uids[-1] if uids else 0) + 1, 10, array("I", uids),
                        None, list(keywords), recent_from)
    return Selected(state, readonly)


def test_recent_set_is_the_view_from_the_mark_up() -> None:
    box = _box([1, 2, 5, 9], recent_from=3)
    assert [u for u in (1, 2, 5, 9) if box.is_recent(u)] == [5, 9]
    assert box.recent_count() == 2
    assert box.with_recent(5, ("\\Seen",)) == ("\\Seen", "\\Recent")
    assert box.with_recent(2, ("\\Seen",)) == ("\\Seen",)
    assert _box([1, 2], recent_from=3).recent_count() == 0
    assert _box([1, 2], recent_from=None).recent_count() == 0


def test_search_recent_binds_to_the_session_set() -> None:
    box = _box([1, 2, 5, 9], recent_from=3)
    bound = box.bind_search(SearchFlag("\\Recent", True))
    assert isinstance(bound, SearchSet) and bound.sequence.ranges == ((3, 9),)
    assert box.bind_search(SearchFlag("\\Recent", False)) == SearchNot(bound)
    none = _box([1, 2], recent_from=None)
    assert none.bind_search(SearchFlag("\\Recent", True)) == SearchNot(SearchAll())


def test_new_mail_taken_by_this_session_is_announced_with_recent() -> None:
    box = _box([1, 2], recent_from=2)
    lines = box.apply(Changes(11, 5, [3, 4], None, [], recent=[4]), allow_expunge=True,
                      condstore=False)
    assert lines == [b"* 4 EXISTS\r\n", b"* 2 RECENT\r\n"]
    assert [u for u in (1, 2, 3, 4) if box.is_recent(u)] == [2, 4]
    box.apply(Changes(12, 6, [5], None, [], recent=[5]), allow_expunge=True, condstore=False)
    assert box.recent == [(2, 2), (4, 5)]  # contiguous takes stay one range
    # taken by another session: EXISTS alone
    assert box.apply(Changes(13, 7, [6], None, [], recent=[]), allow_expunge=True,
                     condstore=False) == [b"* 6 EXISTS\r\n"]


def test_own_append_recent_waits_until_the_view_has_the_messages() -> None:
    """An APPEND took UIDs 3..5 (4 and 5 its own, 3 delivered meanwhile): the range joins the
    session's set only when a sync brought all of them, and an expunge before that loses none."""
    box = _box([1, 2], recent_from=None)
    box.took_recent(3, 5)
    assert not box.claim_pending_recent() and box.recent_count() == 0
    assert box.forget([2]) == [b"* 2 EXPUNGE\r\n"]  # the shrinking of ranges happens first
    lines = box.apply(Changes(11, 6, [3, 4, 5], None, [], recent=[]), allow_expunge=True,
                      condstore=False)
    assert lines == [b"* 4 EXISTS\r\n", b"* 3 RECENT\r\n"]
    assert box.recent == [(3, 5)] and not box.pending_recent
    # a rev2 session (no \\Recent) takes nothing
    rev2 = _box([1], recent_from=None)
    rev2.drop_recent()
    rev2.took_recent(2, 2)
    assert rev2.pending_recent == []


def test_keywords_are_announced_once_and_before_fetch() -> None:
    from postroom_imap.policy import FlagUpdate

    box = _box([1], recent_from=None, keywords=("$a",))
    change = Changes(11, 2, [], None, [FlagUpdate(1, ("$b",), 11)], keywords=("$a", "$b"))
    lines = box.apply(change, allow_expunge=True, condstore=False)
    assert lines == [
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $a $b)\r\n",
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $a $b \\*)] "
        b"flags permitted\r\n",
        b"* 1 FETCH (UID 1 FLAGS ($b))\r\n"]
    assert box.announce_keywords(("$a", "$b")) == []
    readonly = _box([1], recent_from=None, readonly=True)
    assert readonly.announce_keywords(("$c",))[1] == b"* OK [PERMANENTFLAGS ()] flags permitted\r\n"


def _lsub(rows: list[MailboxRow], pattern: str) -> list[bytes]:
    return list_lines(rows, list_matchers("", (pattern,)), lsub=True)


def test_lsub_parent_of_a_subscribed_child_is_noselect_only_when_the_child_is_hidden() -> None:
    rows = [MailboxRow("foo", None, False), MailboxRow("foo/bar", None, True),
            MailboxRow("foo/baz", None, False), MailboxRow("x/y/z", None, True)]
    assert _lsub(rows, "%") == [b'* LSUB (\\Noselect \\HasChildren) "/" foo\r\n',
                                b'* LSUB (\\Noselect \\HasChildren) "/" x\r\n']
    assert _lsub(rows, "*") == [b'* LSUB (\\HasNoChildren) "/" foo/bar\r\n',
                                b'* LSUB (\\HasNoChildren) "/" x/y/z\r\n']
    assert _lsub(rows, "x/%") == [b'* LSUB (\\Noselect \\HasChildren) "/" x/y\r\n']
    assert _lsub(rows, "foo/%") == [b'* LSUB (\\HasNoChildren) "/" foo/bar\r\n']
    subscribed_parent = [MailboxRow("foo", None, True), MailboxRow("foo/bar", None, True)]
    assert _lsub(subscribed_parent, "%") == [b'* LSUB (\\HasChildren) "/" foo\r\n']
