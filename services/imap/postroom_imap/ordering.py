"""SORT (RFC 5256, RFC 5957) and THREAD (RFC 5256 ORDEREDSUBJECT, REFERENCES) over cached metadata.

The store hands over one :class:`SortItem` per matching message, built from
the metadata cached at delivery (no body is read); everything here is pure.
Ties are broken by mailbox order (the UID, which orders as the sequence
number), as RFC 5256 requires, whatever REVERSE says.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from postroom.mime import subject_base


@dataclass(frozen=True)
class SortItem:
    """What SORT and THREAD know of one message (all from cached metadata)."""

    uid: int
    arrival: float  # INTERNALDATE, seconds since the epoch
    sent: float  # the Date: header as an instant, else INTERNALDATE (RFC 5256 2.2)
    size: int
    subject: str  # the Subject: header as written (encoded words and all)
    from_: str = ""  # first From mailbox (local part), lower case
    to: str = ""
    cc: str = ""
    display_from: str = ""  # RFC 5957
    display_to: str = ""
    message_id: str | None = None
    in_reply_to: str | None = None
    references: str | None = None
    # the subject's RFC 5256 base subject and whether it was a reply: worked out once
    base: str = field(init=False, default="")
    reply: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        base, reply = subject_base(self.subject)
        object.__setattr__(self, "base", base)
        object.__setattr__(self, "reply", reply)


def _unicode_casemap(text: str) -> str:
    """i;unicode-casemap (RFC 5051): case folded, then decomposed.

    RFC 5256 asks for I18NLEVEL=1 collation (RFC 5255), which is this comparator; RFC 5957
    names it for DISPLAYFROM/DISPLAYTO.
    """
    return unicodedata.normalize("NFKD", text.casefold())


def _key(item: SortItem, criterion: str) -> Any:
    if criterion == "ARRIVAL":
        return item.arrival
    if criterion == "CC":
        return _unicode_casemap(item.cc)
    if criterion == "DATE":
        return item.sent
    if criterion == "FROM":
        return _unicode_casemap(item.from_)
    if criterion == "SIZE":
        return item.size
    if criterion == "SUBJECT":
        return _unicode_casemap(item.base)
    if criterion == "TO":
        return _unicode_casemap(item.to)
    if criterion == "DISPLAYFROM":
        return _unicode_casemap(item.display_from)
    if criterion == "DISPLAYTO":
        return _unicode_casemap(item.display_to)
    raise ValueError(f"unknown sort criterion {criterion}")


class _Desc:
    """Reverses the order of a key (REVERSE) inside a tuple of keys."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: _Desc) -> bool:
        return bool(other.value < self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and bool(self.value == other.value)

    __hash__ = None  # type: ignore[assignment]


def sort_items(items: Iterable[SortItem], criteria: Sequence[str]) -> list[SortItem]:
    """``items`` ordered by the SORT ``criteria`` (e.g. ("REVERSE", "DATE", "SUBJECT"))."""
    plan: list[tuple[str, bool]] = []
    reverse = False
    for c in criteria:
        if c == "REVERSE":
            reverse = True
            continue
        plan.append((c, reverse))
        reverse = False

    def key(item: SortItem) -> tuple[Any, ...]:
        parts: list[Any] = []
        for c, rev in plan:
            value = _key(item, c)
            parts.append(_Desc(value) if rev else value)
        parts.append(item.uid)
        return tuple(parts)

    return sorted(items, key=key)


# ---- threads

@dataclass(eq=False)
class Node:
    """A thread container: a message, or a dummy (``item`` None) standing for a missing one."""

    item: SortItem | None = None
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)

    def date_item(self) -> SortItem | None:
        """The message that dates this node: its own, or (a dummy) its first child's."""
        node: Node | None = self
        while node is not None and node.item is None:
            node = node.children[0] if node.children else None
        return None if node is None else node.item

    def is_ancestor_of(self, other: Node) -> bool:
        node: Node | None = other
        while node is not None:
            if node is self:
                return True
            node = node.parent
        return False

    def add(self, child: Node) -> None:
        if child.parent is not None:
            child.parent.children.remove(child)
        child.parent = self
        self.children.append(child)


def _date_key(node: Node) -> tuple[float, int]:
    item = node.date_item()
    return (item.sent, item.uid) if item is not None else (0.0, 0)


def _preorder(roots: list[Node]) -> list[Node]:
    """Every node under ``roots``, parents before children (no recursion: threads run deep)."""
    out: list[Node] = []
    stack = list(reversed(roots))
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(reversed(node.children))
    return out


def _sort_siblings(nodes: list[Node]) -> None:
    # children first: a dummy is dated by its first child once those are in order
    for node in reversed(_preorder(nodes)):
        node.children.sort(key=_date_key)
    nodes.sort(key=_date_key)


def message_ids(text: str | None, limit: int = 1000) -> list[str]:
    """The ``<...>`` message ids in a header value, in order (no regular expression)."""
    out: list[str] = []
    if not text:
        return out
    pos = 0
    while len(out) < limit:
        start = text.find("<", pos)
        if start < 0:
            break
        end = text.find(">", start + 1)
        if end < 0:
            break
        inner = text[start + 1:end].strip()
        if inner and "<" not in inner and not any(c.isspace() for c in inner):
            out.append(inner)
        pos = end + 1
    return out


def thread_orderedsubject(items: Iterable[SortItem]) -> list[Node]:
    """RFC 5256 ORDEREDSUBJECT: one thread per base subject, the rest children of the first."""
    ordered = sorted(items, key=lambda i: (i.base, i.sent, i.uid))
    roots: list[Node] = []
    last_subject: str | None = None
    for item in ordered:
        subject = item.base
        if roots and subject == last_subject:
            roots[-1].add(Node(item))
        else:
            roots.append(Node(item))
            last_subject = subject
    roots.sort(key=_date_key)
    return roots


def _link(items: list[SortItem]) -> list[Node]:
    """Step 1 and 2: containers by message id, linked by References/In-Reply-To; the root set."""
    table: dict[str, Node] = {}
    nodes: list[Node] = []
    for item in items:
        own: Node | None = None
        ids = message_ids(item.message_id, 1)
        if ids and ids[0] in table and table[ids[0]].item is None:
            own = table[ids[0]]
            own.item = item
        else:
            own = Node(item)
            if ids and ids[0] not in table:
                table[ids[0]] = own
            # a duplicate message id: the message stands on its own (a unique id)
            nodes.append(own)
        refs = message_ids(item.references)
        if not refs:
            refs = message_ids(item.in_reply_to, 1)
        prev: Node | None = None
        for ref in refs:
            node = table.get(ref)
            if node is None:
                node = table[ref] = Node()
                nodes.append(node)
            if (prev is not None and node.parent is None and node is not prev
                    and not node.is_ancestor_of(prev)):
                prev.add(node)
            prev = node
        # (C) the message's parent is the last reference, unless that makes a loop
        if own.parent is not None and own.parent is not prev:
            own.parent.children.remove(own)
            own.parent = None
        if prev is not None and prev is not own and not own.is_ancestor_of(prev):
            if own.parent is not prev:
                prev.add(own)
    return [n for n in nodes if n.parent is None]


def _prune(roots: list[Node]) -> list[Node]:
    """Step 4: drop empty dummies, splice a dummy's children into its place.

    At the root a dummy stays when it holds several children (they are siblings).
    """
    def pruned(children: list[Node], parent: Node | None) -> list[Node]:
        out: list[Node] = []
        for child in children:
            if child.item is None:
                if not child.children:
                    continue
                if parent is not None or len(child.children) == 1:
                    for grandchild in child.children:
                        grandchild.parent = parent
                    out.extend(child.children)
                    continue
            child.parent = parent
            out.append(child)
        return out

    for node in reversed(_preorder(roots)):  # children before their parents
        node.children = pruned(node.children, node)
    return pruned(roots, None)


def _subject_of(node: Node) -> tuple[str, bool] | None:
    """The base subject of a root (a dummy: its first child's) and whether it was a reply."""
    item = node.item if node.item is not None else (
        node.children[0].item if node.children else None)
    if item is None:
        return None
    return item.base, item.reply


def thread_references(items: Iterable[SortItem]) -> list[Node]:
    """RFC 5256 REFERENCES (section 3, steps 1 to 6)."""
    roots = _prune(_link(list(items)))
    # (5) sort the root set by sent date (a dummy: by its first child, after sorting those)
    _sort_siblings(roots)
    # (6) gather the roots with the same base subject
    table: dict[str, Node] = {}
    for root in roots:
        found = _subject_of(root)
        if found is None or not found[0]:
            continue
        subject, reply = found
        old = table.get(subject)
        if old is None or (root.item is None and old.item is not None):
            table[subject] = root
            continue
        old_reply = old.item is not None and old.item.reply
        if old.item is not None and old_reply and not reply and root.item is not None:
            table[subject] = root
    merged: list[Node] = []
    gone: set[int] = set()
    for root in roots:
        found = _subject_of(root)
        other = table.get(found[0]) if found and found[0] else None
        if other is None or other is root:
            merged.append(root)
            continue
        gone.add(id(root))
        if root.item is None and other.item is None:
            for child in list(root.children):
                other.add(child)
        elif other.item is None:
            other.add(root)
        elif root.item is None:
            # the dummy takes the message in the table's place
            position = merged.index(other) if other in merged else -1
            root.add(other)
            table[found[0]] = root  # type: ignore[index]
            gone.discard(id(root))
            if position >= 0:
                merged[position] = root
            else:
                gone.add(id(other))
                merged.append(root)
        elif not other.item.reply and root.item.reply:
            other.add(root)
        else:
            dummy = Node()
            position = merged.index(other) if other in merged else -1
            dummy.add(other)
            dummy.add(root)
            table[found[0]] = dummy  # type: ignore[index]
            if position >= 0:
                merged[position] = dummy
            else:
                gone.add(id(other))
                merged.append(dummy)
    roots = [r for r in merged if r.parent is None]
    # (7) sort every set of siblings by sent date
    _sort_siblings(roots)
    return roots


def render_threads(roots: Sequence[Node], number: Callable[[int], int | None]) -> bytes:
    """The THREAD response's data: ``(2)(3 6 (4 23)(44 7 96))``; ``number`` maps UIDs.

    A run of single children is written flat; several children each get parentheses.
    """
    out: list[str] = []
    # an explicit stack of nodes to write and parentheses to close (threads run deep)
    stack: list[Node | str] = []
    for root in reversed(roots):
        stack += [")", root, "("]
    while stack:
        top = stack.pop()
        if isinstance(top, str):
            out.append(top)
            continue
        if top.item is not None:
            n = number(top.item.uid)
            if n is not None:
                if out and out[-1] not in ("(", ")"):
                    out.append(" ")
                out.append(str(n))
        if len(top.children) == 1:
            stack.append(top.children[0])
            continue
        if top.children and out and out[-1] not in ("(", ")"):
            out.append(" ")
        for child in reversed(top.children):
            stack += [")", child, "("]
    return "".join(out).encode("ascii")
