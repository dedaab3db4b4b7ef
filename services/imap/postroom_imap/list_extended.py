"""LIST-EXTENDED (RFC 5258) and LIST-STATUS (RFC 5819): options and the extended LIST lines.

Pure functions: the handler parses the options here, lists with
:func:`extended_lines` over the user's mailbox rows (the same linear matchers
as plain LIST, :func:`postroom_imap.handlers_mailbox.list_matchers`) and asks
the store for the STATUS of each selectable mailbox the lines name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from postroom_imap.policy import MailboxRow, MailboxStatus
from postroom_imap.render import mailbox_name
from postroom_imap.syntax_lexer import SyntaxProblem

DELIMITER = "/"
SELECTION_OPTIONS = ("SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE")
RETURN_OPTIONS = ("SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS")
# RFC 5819: the STATUS items LIST may return (APPENDLIMIT is not one of ours to report)
LIST_STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ",
                     "SIZE", "DELETED")

Matcher = Callable[[str], bool]


@dataclass(frozen=True)
class ListOptions:
    """The selection and return options of one extended LIST."""

    subscribed: bool = False  # selection: only subscribed names
    recursive: bool = False  # selection RECURSIVEMATCH: CHILDINFO for matching descendants
    special_only: bool = False  # selection SPECIAL-USE (RFC 6154)
    return_subscribed: bool = False  # \Subscribed on each line
    status: tuple[str, ...] = ()  # RFC 5819: STATUS items after each selectable mailbox


def parse_options(selection: Sequence[str], returns: Sequence[str]) -> ListOptions:
    """The options as the command grammar hands them (upper-cased atoms, lists as ``(A B)``).

    Raises SyntaxProblem (``BAD``) for an unknown option, RECURSIVEMATCH
    without a selection option it can refine (RFC 5258 3), and STATUS
    without its item list or with items LIST cannot return.
    """
    for option in selection:
        if option not in SELECTION_OPTIONS:
            raise SyntaxProblem(f"unknown LIST selection option {option[:40]}")
    subscribed = "SUBSCRIBED" in selection
    recursive = "RECURSIVEMATCH" in selection
    if recursive and not subscribed:
        raise SyntaxProblem("RECURSIVEMATCH needs another selection option (SUBSCRIBED)")
    status: tuple[str, ...] = ()
    i = 0
    while i < len(returns):
        option = returns[i]
        if option not in RETURN_OPTIONS:
            raise SyntaxProblem(f"unknown LIST return option {option[:40]}")
        if option == "STATUS":
            items = returns[i + 1] if i + 1 < len(returns) else ""
            if not (items.startswith("(") and items.endswith(")")):
                raise SyntaxProblem("STATUS return option needs a list of items")
            names = tuple(items[1:-1].split())
            if not names or any(n not in LIST_STATUS_ITEMS for n in names):
                raise SyntaxProblem("invalid STATUS item in LIST RETURN")
            if status and status != names:
                raise SyntaxProblem("STATUS return option given twice")
            status = names
            i += 1
        i += 1
    return ListOptions(subscribed=subscribed, recursive=recursive,
                       special_only="SPECIAL-USE" in selection,
                       return_subscribed=subscribed or "SUBSCRIBED" in returns, status=status)


@dataclass(frozen=True)
class ListedName:
    """One ``* LIST`` line to send, and whether a STATUS line may follow it."""

    name: str
    line: bytes
    selectable: bool


def extended_lines(rows: list[MailboxRow], matchers: list[Matcher],
                   options: ListOptions, *, utf8: bool = False) -> list[ListedName]:
    """The ``* LIST`` lines of RFC 5258 for a user's mailboxes.

    Names are the mailboxes and the hierarchy levels above them; a level
    that is not a mailbox is ``\\NonExistent`` (implying ``\\Noselect``) when
    listed for RECURSIVEMATCH, ``\\Noselect`` otherwise, as plain LIST shows it.
    ``\\HasChildren`` always tells the real hierarchy (RFC 5258 4), also
    under the SUBSCRIBED selection.
    """
    names = {r.name: r for r in rows}
    parents: set[str] = set()
    for name in names:
        parts = name.split(DELIMITER)
        for i in range(1, len(parts)):
            parents.add(DELIMITER.join(parts[:i]))

    def matches(name: str) -> bool:
        return any(m(name) for m in matchers)

    def selected(name: str) -> bool:
        row = names.get(name)
        if row is None:
            return False
        if options.subscribed and not row.subscribed:
            return False
        return not (options.special_only and not row.special_use)

    # RECURSIVEMATCH: the ancestors of each selected name that the patterns do not match
    childinfo: set[str] = set()
    if options.recursive:
        for name in names:
            if selected(name) and not matches(name):
                parts = name.split(DELIMITER)
                childinfo.update(DELIMITER.join(parts[:i]) for i in range(1, len(parts)))
    filtering = options.subscribed or options.special_only
    candidates = sorted(set(names) | parents, key=lambda n: (n != "INBOX", n))
    out = []
    for name in candidates:
        if not matches(name):
            continue
        # without a selection option every mailbox and hierarchy level is listed
        chosen = selected(name) if filtering else True
        if not chosen and name not in childinfo:
            continue
        row = names.get(name)
        attrs = []
        if row is None:
            attrs.append("\\NonExistent" if filtering else "\\Noselect")
        if options.return_subscribed and row is not None and row.subscribed:
            attrs.append("\\Subscribed")
        attrs.append("\\HasChildren" if name in parents else "\\HasNoChildren")
        if row is not None and row.special_use:
            attrs.append(row.special_use)
        line = b'* LIST (%s) "%s" %s' % (" ".join(attrs).encode("ascii"),
                                         DELIMITER.encode("ascii"), mailbox_name(name, utf8))
        if name in childinfo:
            line += b' ("CHILDINFO" ("SUBSCRIBED"))'
        out.append(ListedName(name, line + b"\r\n", row is not None and chosen))
    return out


def status_values(status: MailboxStatus, items: Sequence[str]) -> bytes:
    """``MESSAGES 3 UNSEEN 1``: the STATUS items in the order asked.

    The one rendering of STATUS values, for STATUS and LIST-STATUS alike:
    RECENT is the store's count of messages no session took yet (RFC 3501
    6.3.10), reported without taking them.
    """
    values = {"MESSAGES": status.messages, "RECENT": status.recent, "UIDNEXT": status.uidnext,
              "UIDVALIDITY": status.uidvalidity, "UNSEEN": status.unseen,
              "HIGHESTMODSEQ": status.highestmodseq, "SIZE": status.size,
              "DELETED": status.deleted}
    return " ".join(f"{item} {values[item]}" for item in items
                    if item in values).encode("ascii")
