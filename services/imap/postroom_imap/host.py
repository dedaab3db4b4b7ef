"""What the command mixins need from the connection they are mixed into: an explicit Protocol.

:class:`~postroom_imap.handlers_mailbox.MailboxCommands` and
:class:`~postroom_imap.handlers_message.MessageCommands` run inside
:class:`~postroom_imap.protocol.IMAPServer`. Everything they use of it is
listed here, so mypy checks both sides: the mixins may use nothing else, and
the server must provide all of it with these types.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from postroom.logs import Logger
    from postroom.metrics import SessionMetrics
    from postroom_imap.policy import UserStore
    from postroom_imap.selected import Selected
    from postroom_imap.syntax import CommandReader


class CommandHost(Protocol):
    """One IMAP connection as the command handlers see it."""

    # the logged-in user's store; None before LOGIN
    store: UserStore | None
    # the selected mailbox; None outside the selected state
    selected: Selected | None
    # CONDSTORE enabled (RFC 7162 3.1): MODSEQ in FETCH and untagged FETCH responses
    condstore: bool
    # QRESYNC enabled (RFC 7162 3.2.3): VANISHED instead of EXPUNGE, SELECT (QRESYNC ...)
    qresync_enabled: bool
    rev2: bool  # ENABLE IMAP4rev2 (RFC 9051)
    # frames and parses the peer's commands; None once the connection is gone
    reader: CommandReader | None
    log: Logger

    @property
    def meter(self) -> SessionMetrics:
        """The listener's counters (``error(kind)`` for refusals)."""
        ...

    @property
    def max_message_size(self) -> int:
        """The largest message APPEND takes (a CATENATE's assembled message included)."""
        ...

    def write(self, data: bytes) -> None:
        """Send ``data`` unless the connection is closing."""
        ...

    def select_mailbox(self, selected: Selected) -> None:
        """Enter the selected state on ``selected`` and watch it for changes."""
        ...

    def drop_selected(self) -> None:
        """Leave the selected state (no EXPUNGE, no CLOSED response)."""
        ...

    def absorb_own_changes(self, box: Selected | None, fallback_dirty: bool = False) -> None:
        """Move ``box`` past the changes this connection's command just committed."""
        ...
