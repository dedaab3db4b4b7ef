"""Big-mailbox fast paths: the UID/FLAGS line renderer, packed SELECT UIDs, the write gate."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from twisted.internet.testing import StringTransport

from postroom.store.entries import SelectState, _uid_array
from postroom_imap.flow import WriteGate, attach, detach
from postroom_imap.handlers_message import _flag_lines
from postroom_imap.policy import FetchRow
from postroom_imap.render import fetch_items, flags_line_renderer
from postroom_imap.selected import Selected
from postroom_imap.syntax import Command, parse_command
from postroom_imap.syntax_types import Fetch, FetchItem


def fetch_args(line: bytes) -> Fetch:
    command = parse_command([line], [])
    assert isinstance(command, Command) and isinstance(command.args, Fetch)
    return command.args


@pytest.mark.parametrize("items", [b"(UID FLAGS)", b"(FLAGS)", b"(FLAGS UID)", b"FLAGS",
                                   b"(MODSEQ FLAGS)", b"(UID FLAGS UID)"])
@pytest.mark.parametrize("with_uid", [False, True])
@pytest.mark.parametrize("with_modseq", [False, True])
def test_flags_renderer_matches_the_general_fetch_renderer(items: bytes, with_uid: bool,
                                                           with_modseq: bool) -> None:
    args = fetch_args(b"a FETCH 1:* " + items)
    line = flags_line_renderer(args.items, with_uid=with_uid, with_modseq=with_modseq)
    assert line is not None
    for flags in ((), ("\\Seen",), ("\\Seen", "\\Flagged", "$Work")):
        row = FetchRow(uid=42, flags=flags, modseq=9, internaldate=datetime(2024, 1, 1, tzinfo=UTC),
                       size=10, meta=None, blob=None)
        general = fetch_items(row, args.items, with_uid=with_uid, with_modseq=with_modseq)
        assert line(7, 42, " ".join(flags), 9) == b"* 7 FETCH " + general + b"\r\n"


@pytest.mark.parametrize("items", [b"(UID FLAGS RFC822.SIZE)", b"(FLAGS INTERNALDATE)",
                                   b"(UID BODY.PEEK[HEADER])", b"ENVELOPE"])
def test_flags_renderer_declines_anything_beyond_uid_flags_modseq(items: bytes) -> None:
    args = fetch_args(b"a FETCH 1:* " + items)
    assert flags_line_renderer(args.items, with_uid=True, with_modseq=False) is None


def test_flags_renderer_declines_a_partial_item() -> None:
    items = [FetchItem("FLAGS", partial=(0, 1))]
    assert flags_line_renderer(items, with_uid=False, with_modseq=False) is None


def _view(uids: list[int], recent_from: int | None = None) -> Selected:
    return Selected(SelectState(mailbox_id=1, name="INBOX", uidvalidity=1, uidnext=uids[-1] + 1,
                                highestmodseq=9, uids=uids, first_unseen_uid=None,
                                recent_from=recent_from), readonly=False)


def _one_by_one(box: Selected, rows: list[tuple[int, str, int]]) -> list[bytes]:
    """The lines as the general renderer makes them, each row numbered by its UID's index."""
    args = fetch_args(b"a UID FETCH 1:* (UID FLAGS)")
    out = []
    for uid, flags, modseq in rows:
        seq = box.seq_of(uid)
        if seq is None:
            continue
        row = FetchRow(uid=uid, flags=box.with_recent(uid, tuple(flags.split())), modseq=modseq,
                       internaldate=datetime(2024, 1, 1, tzinfo=UTC), size=1, meta=None,
                       blob=None)
        out.append(b"* %d FETCH %s\r\n" % (seq, fetch_items(row, args.items, with_uid=True,
                                                                with_modseq=False)))
    return out


def _flag_rows(uids: list[int]) -> list[tuple[int, str, int]]:
    return [(u, ("\\Seen $Work" if u % 3 else ""), u) for u in uids]


@pytest.mark.parametrize("view, rows", [
    ([1, 2, 3, 5, 8, 9], [2, 3, 5, 8]),        # a run of the view's own UIDs
    ([1, 2, 3, 5, 8, 9], [1, 2, 3, 5, 8, 9]),  # all of them
    ([1, 2, 3, 5, 8, 9], [2, 5, 8]),           # one gone from the store meanwhile
    ([1, 2, 3, 5, 8, 9], [3, 4, 5]),           # one the view does not have yet
    ([1, 2, 3, 5, 8, 9], [8, 9, 10, 11]),      # past the end of the view
])
def test_flag_lines_number_rows_by_the_sessions_view(view: list[int], rows: list[int]) -> None:
    args = fetch_args(b"a UID FETCH 1:* (UID FLAGS)")
    line = flags_line_renderer(args.items, with_uid=True, with_modseq=False)
    assert line is not None
    box = _view(view)
    assert _flag_lines(box, _flag_rows(rows), line) == _one_by_one(box, _flag_rows(rows))


def test_flag_lines_show_this_sessions_recent_messages() -> None:
    args = fetch_args(b"a UID FETCH 1:* (UID FLAGS)")
    line = flags_line_renderer(args.items, with_uid=True, with_modseq=False)
    assert line is not None
    box = _view([1, 2, 3, 4, 5], recent_from=4)
    got = _flag_lines(box, _flag_rows([1, 2, 3, 4, 5]), line)
    assert got == _one_by_one(box, _flag_rows([1, 2, 3, 4, 5]))
    assert got[3] == b"* 4 FETCH (UID 4 FLAGS (\\Seen $Work \\Recent))\r\n"
    assert got[2] == b"* 3 FETCH (UID 3 FLAGS ())\r\n"


@pytest.mark.parametrize("items", [b"(UID FLAGS)", b"(FLAGS UID)", b"(MODSEQ FLAGS)"])
@pytest.mark.parametrize("with_modseq", [False, True])
def test_flags_renderer_in_bulk_matches_it_line_by_line(items: bytes, with_modseq: bool) -> None:
    args = fetch_args(b"a FETCH 1:* " + items)
    line = flags_line_renderer(args.items, with_uid=False, with_modseq=with_modseq)
    assert line is not None
    rows = _flag_rows([4, 6, 7])
    assert line.many(10, rows) == [line(10 + i, *row) for i, row in enumerate(rows)]


def _send(values: list[int]) -> bytes:
    """What PostgreSQL's array_send gives for a one-dimensional bigint[]."""
    head = (1).to_bytes(4, "big") + (0).to_bytes(4, "big") + (20).to_bytes(4, "big")
    head += len(values).to_bytes(4, "big") + (1).to_bytes(4, "big")
    return head + b"".join((8).to_bytes(4, "big") + v.to_bytes(8, "big") for v in values)


def test_packed_uids_become_a_compact_32_bit_array() -> None:
    uids = _uid_array(_send([1, 2, 70000, 2**32 - 1]))
    assert list(uids) == [1, 2, 70000, 2**32 - 1]
    assert uids.itemsize == 4


def test_no_packed_uids_is_an_empty_array() -> None:
    assert list(_uid_array(None)) == []


def test_a_uid_beyond_32_bits_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bits"):
        _uid_array(_send([2**32]))


def test_write_gate_lets_writes_through_until_paused() -> None:
    gate = WriteGate()
    assert gate.drained().called
    gate.pauseProducing()
    waiting = gate.drained()
    assert not waiting.called
    gate.resumeProducing()
    assert waiting.called


def test_write_gate_releases_a_waiting_writer_when_the_connection_stops() -> None:
    gate = WriteGate()
    gate.pauseProducing()
    waiting = gate.drained()
    gate.stopProducing()
    assert waiting.called and gate.stopped


def test_write_gate_attaches_to_and_detaches_from_a_transport() -> None:
    transport = StringTransport()
    gate = attach(transport)
    assert gate is not None and transport.producer is gate and transport.streaming
    detach(transport, gate)
    assert transport.producer is None


def test_write_gate_is_not_attached_over_another_producer() -> None:
    transport = StringTransport()
    other = WriteGate()
    transport.registerProducer(other, True)
    assert attach(transport) is None
    assert transport.producer is other


class PausingTransport(StringTransport):
    """Pauses its producer on every big write, as a TCP transport does past its buffer size."""

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None and len(data) > 65536:
            self.producer.pauseProducing()


def test_a_fetch_over_many_batches_waits_while_the_transport_is_paused() -> None:
    from postroom_imap.handlers_message import FLAGS_BATCH
    from tests.unit.test_imap_protocol import Harness

    h = Harness(count=FLAGS_BATCH + 5)
    h.transport = PausingTransport()
    h.server.makeConnection(h.transport)
    h.server.tls = True
    h.select()
    h.transport.clear()
    h.server.dataReceived(b"f FETCH 1:* (UID FLAGS)\r\n")
    gate = h.transport.producer
    assert isinstance(gate, WriteGate) and gate.paused
    assert h.transport.value().count(b" FETCH (UID ") == FLAGS_BATCH
    h.transport.clear()
    gate.resumeProducing()
    rest = h.transport.value()
    assert rest.count(b" FETCH (UID ") == 5 and rest.endswith(b"f OK FETCH completed\r\n")
    assert h.transport.producer is None
