"""RFC 5256 base subject extraction, SORT order and the THREAD algorithms (pure)."""

from __future__ import annotations

import pytest

from postroom.mime import base_subject, reply_subject
from postroom_imap.ordering import (
    SortItem,
    message_ids,
    render_threads,
    sort_items,
    thread_orderedsubject,
    thread_references,
)


@pytest.mark.parametrize(("subject", "base", "reply"), [
    ("Hello", "hello", False),
    ("Re: Hello", "hello", True),
    ("RE: re: Re:Hello", "hello", True),
    ("Re[5]: Hello", "hello", True),
    ("Fwd: Hello", "hello", True),
    ("FW: Hello", "hello", True),
    ("fw : Hello", "hello", True),  # *WSP before the colon
    ("Re: [list] Fwd: Re: Hello (fwd)", "hello", True),
    ("[list] Re: Hello", "hello", True),  # blobs before a reply marker go with it
    ("[list] Hello", "hello", False),  # (4) a leading blob goes when text remains
    ("[a][b] c", "c", False),
    ("[only]", "[only]", False),  # (4) ... but not when it is all there is
    ("Hello (fwd)", "hello", True),  # (2) the trailer
    ("Hello (FWD)  (fwd) ", "hello", True),
    ("[fwd: Hello]", "hello", True),  # (6)
    ("Fwd: [fwd: [b] re: y]", "y", True),
    ("[Fwd: Re: [x] hi (fwd)]", "hi", True),
    ("Reply: about", "reply: about", False),  # "re" must be followed by ":"
    ("Re: ", "", True),
    ("", "", False),
    ("  spaced \t  out  ", "spaced out", False),  # (1) white space collapses
    ("=?utf-8?q?Re=3A_Gr=C3=BC=C3=9Fe?=", "grüße", True),  # (1) decoded first
    ("=?iso-8859-1?q?Fwd=3A?= =?iso-8859-1?q?_caf=E9?=", "café", True),
    ("Re: Re: [fwd: Re: hi] (fwd)", "hi", True),
    ("[unterminated Re: x", "[unterminated re: x", False),
])
def test_base_subject_follows_rfc5256_section_2_1(subject: str, base: str, reply: bool) -> None:
    assert base_subject(subject) == base
    assert reply_subject(subject) is reply


def test_base_subject_is_linear_on_hostile_input() -> None:
    hostile = "[" * 20000 + "Re:" * 20000 + "(fwd)" * 20000
    assert base_subject(hostile)  # returns, without quadratic regex backtracking


def item(uid: int, sent: float = 0.0, subject: str = "s", *, mid: str | None = None,
         refs: str | None = None, irt: str | None = None, **kw: object) -> SortItem:
    return SortItem(uid=uid, arrival=kw.pop("arrival", float(uid)),  # type: ignore[arg-type]
                    sent=sent, size=kw.pop("size", 100), subject=subject,  # type: ignore[arg-type]
                    message_id=mid, references=refs, in_reply_to=irt, **kw)  # type: ignore[arg-type]


def uids(items: list[SortItem]) -> list[int]:
    return [i.uid for i in items]


def test_rfc5256_sort_examples() -> None:
    # A283 SORT (SUBJECT REVERSE DATE) UTF-8 ALL -> * SORT 5 3 4 1 2
    box = [item(1, 20, "Re: gamma"), item(2, 10, "gamma"), item(3, 40, "beta"),
           item(4, 30, "Fwd: beta"), item(5, 50, "alpha")]
    assert uids(sort_items(box, ("SUBJECT", "REVERSE", "DATE"))) == [5, 3, 4, 1, 2]
    assert uids(sort_items(box, ("SUBJECT",))) == [5, 3, 4, 1, 2]  # ties: mailbox order
    assert uids(sort_items(box, ("DATE",))) == [2, 1, 4, 3, 5]
    assert uids(sort_items(box, ("REVERSE", "DATE"))) == [5, 3, 4, 1, 2]
    assert sort_items([], ("SUBJECT",)) == []


def test_sort_keys_and_ties_in_mailbox_order_even_reversed() -> None:
    box = [item(1, size=30, from_="bob", to="zed", cc="", display_from="Zoë"),
           item(2, size=10, from_="Alice", to="amy", cc="carl", display_from="adam@x.org"),
           item(3, size=30, from_="", to="", cc="bea", display_from="Émile")]
    assert uids(sort_items(box, ("SIZE",))) == [2, 1, 3]
    assert uids(sort_items(box, ("REVERSE", "SIZE"))) == [1, 3, 2]  # 1 before 3 (tie)
    assert uids(sort_items(box, ("FROM",))) == [3, 2, 1]  # empty first, casemap
    assert uids(sort_items(box, ("TO",))) == [3, 2, 1]
    assert uids(sort_items(box, ("CC",))) == [1, 3, 2]
    assert uids(sort_items(box, ("DISPLAYFROM",))) == [2, 3, 1]
    assert uids(sort_items(box, ("ARRIVAL",))) == [1, 2, 3]
    assert uids(sort_items(box, ("REVERSE", "ARRIVAL"))) == [3, 2, 1]


def test_message_ids_take_bracketed_ids_only() -> None:
    assert message_ids("<a@b> junk <c@d>\t<bad id> <e@f") == ["a@b", "c@d"]
    assert message_ids(None) == []
    assert message_ids("<x@y> <z@w>", 1) == ["x@y"]


def render(roots: list) -> bytes:
    return render_threads(roots, lambda uid: uid)


def test_references_builds_the_rfc5256_syntax_example() -> None:
    # RFC 5256 section 4: (2)(3 6 (4 23)(44 7 96))
    box = [
        item(2, 0, "other", mid="<2@x>"),
        item(3, 1, "topic", mid="<3@x>"),
        item(6, 2, "Re: topic", mid="<6@x>", refs="<3@x>"),
        item(4, 3, "Re: topic", mid="<4@x>", refs="<3@x> <6@x>"),
        item(23, 4, "Re: topic", mid="<23@x>", refs="<3@x> <6@x> <4@x>"),
        item(44, 5, "Re: topic", mid="<44@x>", refs="<3@x> <6@x>"),
        item(7, 6, "Re: topic", mid="<7@x>", refs="<3@x> <6@x> <44@x>"),
        item(96, 7, "Re: topic", mid="<96@x>", refs="<3@x>\r\n <6@x> <44@x> <7@x>"),
    ]
    assert render(thread_references(box)) == b"(2)(3 6 (4 23)(44 7 96))"
    # the order the messages come in does not matter
    assert render(thread_references(list(reversed(box)))) == b"(2)(3 6 (4 23)(44 7 96))"


def test_references_in_reply_to_when_no_references() -> None:
    box = [item(1, 0, "a", mid="<1@x>"), item(2, 1, "Re: a", mid="<2@x>", irt="<1@x> <z@x>")]
    assert render(thread_references(box)) == b"(1 2)"


def test_references_missing_parent_keeps_a_dummy_at_the_root_for_siblings() -> None:
    # both answer <gone@x>, which is not in the mailbox: the dummy root groups them
    box = [item(1, 0, "Re: q", mid="<1@x>", refs="<gone@x>"),
           item(2, 1, "Re: other", mid="<2@x>", refs="<gone@x>")]
    assert render(thread_references(box)) == b"((1)(2))"


def test_references_dummy_with_one_child_is_replaced_by_it() -> None:
    box = [item(1, 0, "Re: q", mid="<1@x>", refs="<gone@x>"), item(2, 1, "zzz", mid="<2@x>")]
    assert render(thread_references(box)) == b"(1)(2)"


def test_references_dummies_inside_a_thread_are_spliced_away() -> None:
    # 1 -> (missing m) -> 2 and 3
    box = [item(1, 0, "t", mid="<1@x>"),
           item(2, 1, "Re: t", mid="<2@x>", refs="<1@x> <m@x>"),
           item(3, 2, "Re: t", mid="<3@x>", refs="<1@x> <m@x>")]
    assert render(thread_references(box)) == b"(1 (2)(3))"


def test_references_loops_and_self_references_do_not_hang() -> None:
    box = [item(1, 0, "a", mid="<1@x>", refs="<2@x>"),
           item(2, 1, "b", mid="<2@x>", refs="<1@x>"),
           item(3, 2, "c", mid="<3@x>", refs="<3@x> <3@x>")]
    out = render(thread_references(box))
    assert sorted(out.replace(b"(", b" ").replace(b")", b" ").split()) == [b"1", b"2", b"3"]


def test_references_duplicate_message_ids_keep_both_messages() -> None:
    box = [item(1, 0, "a", mid="<d@x>"), item(2, 1, "b", mid="<d@x>"),
           item(3, 2, "Re: a", mid="<3@x>", refs="<d@x>")]
    assert render(thread_references(box)) == b"(1 3)(2)"


def test_references_subject_grouping_rules() -> None:
    # a reply subject joins the original under it
    assert render(thread_references([item(1, 0, "Hello", mid="<1@x>"),
                                     item(2, 1, "Re: hello", mid="<2@x>")])) == b"(1 2)"
    # even when the reply is older
    assert render(thread_references([item(1, 1, "Hello", mid="<1@x>"),
                                     item(2, 0, "Re: hello", mid="<2@x>")])) == b"(1 2)"
    # neither a reply: siblings under a dummy
    assert render(thread_references([item(1, 0, "Hello", mid="<1@x>"),
                                     item(2, 1, "hello", mid="<2@x>")])) == b"((1)(2))"
    # both replies: siblings too
    assert render(thread_references([item(1, 0, "Re: Hello", mid="<1@x>"),
                                     item(2, 1, "Fwd: hello", mid="<2@x>")])) == b"((1)(2))"
    # empty base subjects never group
    assert render(thread_references([item(1, 0, "Re:", mid="<1@x>"),
                                     item(2, 1, "", mid="<2@x>")])) == b"(1)(2)"


def test_references_roots_and_siblings_sort_by_sent_date_then_mailbox_order() -> None:
    box = [item(1, 5, "x", mid="<1@x>"), item(2, 1, "y", mid="<2@x>"),
           item(3, 9, "Re: y", mid="<3@x>", refs="<2@x>"),
           item(4, 3, "Re: y", mid="<4@x>", refs="<2@x>"), item(5, 5, "z", mid="<5@x>")]
    assert render(thread_references(box)) == b"(2 (4)(3))(1)(5)"


def test_orderedsubject_like_the_rfc_example() -> None:
    # the shapes of RFC 5256's example reply: (194 195)(196 (197)(198))(199)
    box = [item(194, 1, "one", mid="<a>"), item(195, 2, "Re: one", mid="<b>"),
           item(196, 3, "two"), item(197, 4, "Re: two"), item(198, 5, "Re: Re: two"),
           item(199, 6, "three")]
    assert render(thread_orderedsubject(box)) == b"(194 195)(196 (197)(198))(199)"
    assert render(thread_orderedsubject([])) == b""


def test_render_maps_numbers_and_skips_unknown() -> None:
    roots = thread_orderedsubject([item(10, 1, "a"), item(20, 2, "a"), item(30, 3, "b")])
    assert render_threads(roots, {10: 1, 20: 2, 30: 3}.get) == b"(1 2)(3)"


def test_deep_threads_need_no_recursion() -> None:
    depth = 5000
    box = [item(1, 0, "deep", mid="<1@x>")]
    for n in range(2, depth + 1):
        box.append(item(n, n, "Re: deep", mid=f"<{n}@x>", refs=f"<{n - 1}@x>"))
    box.append(item(depth + 1, depth + 1, "Re: deep", mid="<b@x>", refs=f"<{depth - 1}@x>"))
    out = render(thread_references(box))
    assert out.startswith(b"(1 2 3 ") and out.endswith(b" (%d)(%d))" % (depth, depth + 1))


@pytest.mark.parametrize(("line", "ok"), [
    (b"t THREAD REFERENCES UTF-8 ALL\r\n", True),
    (b"t THREAD orderedsubject us-ascii SINCE 5-MAR-2000\r\n", True),
    (b"t UID THREAD REFERENCES UTF-8 1:*\r\n", True),
    (b"t THREAD REFERENCES UTF-8 $\r\n", True),
    (b"t THREAD JWZ UTF-8 ALL\r\n", False),
    (b"t THREAD REFERENCES UTF-8\r\n", False),
    (b"t THREAD REFERENCES\r\n", False),
    (b"t SORT (REVERSE DISPLAYFROM) UTF-8 ALL\r\n", True),
    (b"t SORT (REVERSE) UTF-8 ALL\r\n", False),
    (b"t SEARCH RETURN (SAVE MIN) FLAGGED\r\n", True),
    (b"t SEARCH RETURN (PARTIAL 1:5) ALL\r\n", False),
])
def test_thread_sort_and_return_syntax(line: bytes, ok: bool) -> None:
    from postroom_imap.syntax import Command, CommandReader

    events = CommandReader().feed(line)
    assert len(events) == 1
    assert isinstance(events[0], Command) is ok


@pytest.mark.parametrize(("date", "day"), [
    ("Tue, 7 Jan 2025 23:30:00 -0800", "2025-01-07"),  # 8 January in UTC
    ("Wed, 8 Jan 2025 00:30:00 +0200", "2025-01-08"),  # 7 January in UTC
    ("8 Jan 25 00:30 +1400", "2025-01-08"),  # two-digit year, no seconds
    ("Wed, 31 Feb 2025 10:00:00 +0000", None),  # no such day
    ("yesterday", None),
])
def test_analysis_keeps_the_date_header_day_as_written(date: str, day: str | None) -> None:
    from postroom.mime import analyze

    meta = analyze(f"From: a@b.example\r\nDate: {date}\r\n\r\nx".encode())
    assert meta.sort["sent_day"] == day


def test_analysis_keeps_address_text_and_display_names() -> None:
    from postroom.mime import analyze

    meta = analyze(b"From: user-from (a comment) @ domain.org\r\n"
                   b"To: =?utf-8?q?J=C3=B6rg?= <j@x.example>, group: a@y.example;\r\n"
                   b"Cc: \"Quoted, Name\" <q@z.example>\r\n\r\nx")
    text = meta.sort["text"]
    assert "user-from@domain.org" in text["from"]
    assert "Jörg <j@x.example>" in text["to"] and "a@y.example" in text["to"]
    assert "Quoted, Name <q@z.example>" in text["cc"]
    assert text["bcc"] == ""
    # the display name is the ENVELOPE's: a comment stands in for a missing phrase
    assert meta.sort["display_from"] == "a comment"
    assert meta.sort["display_to"] == "Jörg"
    bare = analyze(b"From: <bare@x.example>\r\nTo: undisclosed-recipients:;\r\n\r\nx")
    assert bare.sort["display_from"] == "bare@x.example"
    assert bare.sort["display_to"] == ""
