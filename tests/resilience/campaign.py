"""The fault campaign itself: steady load, each fault in turn, drain, compare; returns the result.

The schedule (``FAULTS``) is run against a :class:`~tests.support.faults.FaultInstance`
while a :class:`~tests.resilience.load.LoadGenerator` sends mail. Each fault
opens a window (see ``report.Window``) that closes when the next one opens;
``recovered`` is when the fault was undone (process healthy again, server
accepting connections). After the load, the campaign waits until no spool
recipient is pending and every accepted message is in its mailboxes, or
``DRAIN_TIMEOUT`` passes, then reads the mailboxes from PostgreSQL.
"""

from __future__ import annotations

import imaplib
import poplib
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.resilience.load import LoadGenerator, Sent
from tests.resilience.report import Row, Window, compare
from tests.support.faults import PASSWORD, Copy, FaultInstance

BASELINE = 3.0
SETTLE = 3.0
OUTAGE = 3.0
DMARC_OUTAGE = 10.0
DRAIN_TIMEOUT = 120.0
# log events that show which recovery path a fault exercised
RECOVERY_EVENTS = ("queue entry restored", "queue entries claimed",
                   "enqueue failed; the reconciler will enqueue it", "queue redis error",
                   "reconcile pass failed", "queue handler failed")
CLIENT_SETTLE_TIMEOUT = 200.0


def _kill_and_restart(name: str) -> Callable[[FaultInstance], None]:
    def inject(instance: FaultInstance) -> None:
        instance.kill(name)
        instance.restart(name)
    return inject


def _redis_restarted_empty(instance: FaultInstance) -> None:
    instance.kill_redis()
    time.sleep(OUTAGE)
    instance.start_redis()


def _postgres_restarted(instance: FaultInstance) -> None:
    instance.stop_postgres()
    time.sleep(OUTAGE)
    instance.start_postgres()


def _dmarc_unreachable(instance: FaultInstance) -> None:
    instance.stop("dmarc")
    time.sleep(DMARC_OUTAGE)
    instance.restart("dmarc")


# (name in the table, action, whether clients must see a temporary refusal meanwhile)
FAULTS: list[tuple[str, Callable[[FaultInstance], None], bool]] = [
    ("SIGKILL msa + restart", _kill_and_restart("msa"), False),
    ("SIGKILL mta + restart", _kill_and_restart("mta"), False),
    ("SIGKILL dmarc + restart", _kill_and_restart("dmarc"), False),
    ("SIGKILL mda + restart", _kill_and_restart("mda"), False),
    ("SIGKILL imap + restart", _kill_and_restart("imap"), False),
    ("SIGKILL pop3 + restart", _kill_and_restart("pop3"), False),
    ("redis killed, 3 s down, back empty", _redis_restarted_empty, True),
    ("postgresql stopped 3 s + restarted", _postgres_restarted, True),
    ("dmarc unreachable 10 s", _dmarc_unreachable, True),
]


@dataclass
class Result:
    """Everything the campaign measured; the tests assert on it."""

    windows: list[Window]
    messages: list[Sent]
    copies: list[Copy]
    rows: list[Row]
    drained: bool
    drain_after_load: float
    clients_settled: bool
    pending_left: int
    outage_refusals: dict[str, int] = field(default_factory=dict)
    mailbox_checks: dict[str, tuple[int, int]] = field(default_factory=dict)
    health: dict[str, int] = field(default_factory=dict)
    exits: dict[str, int | None] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> Row:
        return self.rows[-1]


def _tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def imap_inbox_count(instance: FaultInstance, address: str) -> int:
    """EXISTS of INBOX over IMAPS, as a mail client would see it."""
    client = imaplib.IMAP4_SSL("127.0.0.1", instance.ports["imap_tls"], ssl_context=_tls(),
                               timeout=15)
    try:
        client.login(address, PASSWORD)
        status, data = client.select("INBOX", readonly=True)
        assert status == "OK", data
        return int(data[0] or 0)
    finally:
        try:
            client.logout()
        except (imaplib.IMAP4.error, OSError):
            pass


def pop3_count(instance: FaultInstance, address: str) -> int:
    """Messages in the POP3 maildrop (INBOX) over POP3S."""
    client = poplib.POP3_SSL("127.0.0.1", instance.ports["pop3_tls"], context=_tls(),
                             timeout=15)
    try:
        client.user(address)
        client.pass_(PASSWORD)
        count, _size = client.stat()
        return int(count)
    finally:
        try:
            client.quit()
        except (poplib.error_proto, OSError):
            pass


def _refusals_between(messages: list[Sent], start: float, end: float) -> int:
    return sum(1 for m in messages for a in m.attempts
               if start <= a.at <= end and a.outcome in ("4xx", "net"))


def _wait_drained(instance: FaultInstance, accepted: list[Sent]) -> tuple[bool, int]:
    """Poll until nothing is pending and every accepted copy is stored; (drained, pending)."""
    wanted = {(m.token, r) for m in accepted for r in m.recipients}
    deadline = time.monotonic() + DRAIN_TIMEOUT
    pending = -1
    while time.monotonic() < deadline:
        try:
            pending = instance.pending_recipients()
            held = {(c.token, c.address) for c in instance.copies()}
        except Exception:
            time.sleep(0.5)
            continue
        if pending == 0 and wanted <= held:
            return True, 0
        time.sleep(0.5)
    return False, pending


def run_campaign(instance: FaultInstance, *, inbound_threads: int = 6,
                 submission_threads: int = 3, rate_per_thread: float = 1.5) -> Result:
    """Load, faults in turn, drain, compare (see the module docstring)."""
    load = LoadGenerator(mta_port=instance.ports["mta"], msa_port=instance.ports["msa_tls"],
                         addresses=instance.addresses, password=PASSWORD,
                         inbound_threads=inbound_threads,
                         submission_threads=submission_threads,
                         rate_per_thread=rate_per_thread)
    windows = [Window("none (baseline)", time.time())]
    outage_refusals: dict[str, int] = {}
    mailbox_checks: dict[str, tuple[int, int]] = {}
    load.start()
    try:
        time.sleep(BASELINE)
        for name, inject, _must_refuse in FAULTS:
            window = Window(name, time.time())
            windows.append(window)
            inject(instance)
            window.recovered = time.time()
            time.sleep(SETTLE)
    finally:
        load.stop()
    load_end = time.time()
    clients_settled = load.join(CLIENT_SETTLE_TIMEOUT)
    messages = load.ledger.snapshot()
    for (name, _inject, must_refuse), window in zip(FAULTS, windows[1:], strict=True):
        if must_refuse:
            assert window.recovered is not None
            outage_refusals[name] = _refusals_between(messages, window.start,
                                                      window.recovered)
    accepted = [m for m in messages if m.accepted_at is not None]
    drained, pending = _wait_drained(instance, accepted)
    drain_after_load = time.time() - load_end
    copies = instance.copies()
    # the access side recovered on its own: what clients see matches the store
    for address in instance.addresses[:3]:
        stored = sum(1 for c in copies if c.address == address and c.mailbox == "INBOX")
        mailbox_checks[f"imap {address}"] = (imap_inbox_count(instance, address), stored)
        mailbox_checks[f"pop3 {address}"] = (pop3_count(instance, address), stored)
    health = {name: proc.healthz()[0] for name, proc in instance.services.items()}
    exits = {name: proc.proc.poll() if proc.proc else None
             for name, proc in instance.services.items()}
    events: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for name, proc in instance.services.items():
        for event in proc.log_events():
            if event.get("event") in RECOVERY_EVENTS:
                events[str(event["event"])] += 1
            if event.get("level") in ("error", "critical"):
                errors[f"{name}: {event.get('event')}"] += 1
    return Result(windows=windows, messages=messages, copies=copies,
                  rows=compare(windows, messages, copies), drained=drained,
                  drain_after_load=drain_after_load, clients_settled=clients_settled,
                  pending_left=pending, outage_refusals=outage_refusals,
                  mailbox_checks=mailbox_checks, health=health, exits=exits,
                  events=dict(events), errors=dict(errors))
