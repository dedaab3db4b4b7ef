"""Steady mail load for the fault campaign: client threads that retry on 4xx and log every reply.

Two kinds of client send in parallel: ``inbound`` (plain SMTP to the mta's
port 25 listener, from a sender domain with no SPF or DMARC records, so the
verdict is none and the message goes to INBOX) and ``submission`` (implicit
TLS and AUTH PLAIN to the msa, one local user to another). Every message
carries a unique token (``X-Campaign-Token``, Subject, Message-ID). A client
retries a message after a 4xx or a network error with back-off, as a real MTA
or MUA would, and records each attempt; a 5xx is final. When a reply to the
final dot never came (the connection died after 354) and the client sends the
message again, the message is marked ``resent_after_lost_reply``: a second
copy of it is the client's doing (RFC 5321 section 6.1), not the server's.
"""

from __future__ import annotations

import smtplib
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

RETRY_MIN = 0.25
RETRY_MAX = 4.0
CONNECT_TIMEOUT = 15.0


@dataclass
class Attempt:
    """One try: when, and what came back (``250``, ``4xx``, ``5xx`` or ``net``)."""

    at: float
    outcome: str
    code: int | None
    detail: str


@dataclass
class Sent:
    """One message of the campaign and its history."""

    token: str
    kind: str
    recipients: tuple[str, ...]
    first_try: float
    attempts: list[Attempt] = field(default_factory=list)
    accepted_at: float | None = None
    refused: bool = False  # a 5xx: the client gave up
    gave_up: bool = False  # still refused with 4xx when the client's patience ran out
    resent_after_lost_reply: bool = False

    @property
    def temp_failures(self) -> int:
        return sum(1 for a in self.attempts if a.outcome in ("4xx", "net"))


class Ledger:
    """Every message the clients sent, shared by the client threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.messages: list[Sent] = []

    def add(self, sent: Sent) -> None:
        with self._lock:
            self.messages.append(sent)

    def snapshot(self) -> list[Sent]:
        with self._lock:
            return list(self.messages)


def build_message(token: str, mail_from: str, recipients: Sequence[str]) -> bytes:
    """A small text message carrying ``token`` in three places."""
    return (f"From: <{mail_from}>\r\nTo: {', '.join(recipients)}\r\n"
            f"Subject: fault campaign {token}\r\n"
            f"Message-ID: <{token}@client.campaign.test>\r\n"
            f"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\n"
            f"X-Campaign-Token: {token}\r\n\r\n"
            f"Body of {token}.\r\n.A line that starts with a dot.\r\n").encode()


class _Reply(Exception):
    def __init__(self, code: int, detail: str, after_data: bool = False) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail
        self.after_data = after_data


def _check(reply: tuple[int, bytes], ok: tuple[int, ...]) -> None:
    code, text = reply
    if code not in ok:
        raise _Reply(code, text.decode(errors="replace"))


def _tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    # the instance's certificate is self-signed; what is under test is the mail path
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class Client:
    """Sends one kind of message to one listener; :meth:`deliver` retries until final."""

    def __init__(self, kind: str, port: int, *, password: str = "",
                 patience: float = 180.0) -> None:
        self.kind = kind
        self.port = port
        self.password = password
        self.patience = patience
        self.context = _tls_context()

    def _session(self) -> smtplib.SMTP:
        if self.kind == "submission":
            return smtplib.SMTP_SSL("127.0.0.1", self.port, timeout=CONNECT_TIMEOUT,
                                    context=self.context)
        return smtplib.SMTP("127.0.0.1", self.port, timeout=CONNECT_TIMEOUT)

    def _try(self, mail_from: str, recipients: Sequence[str], data: bytes,
             login: str | None) -> tuple[int, str]:
        """One SMTP transaction; returns the final reply or raises (_Reply, OSError, SMTP*)."""
        after_354 = False
        try:
            with self._session() as smtp:
                _check(smtp.ehlo("client.campaign.test"), (250,))
                if login is not None:
                    try:
                        smtp.login(login, self.password)
                    except smtplib.SMTPResponseException as exc:
                        raise _Reply(exc.smtp_code, str(exc.smtp_error)) from None
                _check(smtp.mail(mail_from), (250,))
                for rcpt in recipients:
                    _check(smtp.rcpt(rcpt), (250, 251))
                _check(smtp.docmd("DATA"), (354,))
                after_354 = True
                smtp.send(smtplib._quote_periods(data) + b".\r\n")  # type: ignore[attr-defined]
                code, text = smtp.getreply()
                after_354 = False
                try:
                    smtp.quit()
                except (smtplib.SMTPException, OSError):
                    pass  # the reply to the dot is what counts
                return code, text.decode(errors="replace")
        except (smtplib.SMTPException, OSError) as exc:
            if isinstance(exc, smtplib.SMTPConnectError):
                raise _Reply(exc.smtp_code, str(exc.smtp_error)) from None
            if after_354:
                raise _Reply(0, f"{type(exc).__name__}: {exc}", after_data=True) from None
            raise

    def deliver(self, sent: Sent, mail_from: str, data: bytes, login: str | None) -> None:
        """Send until 250, a 5xx, or the client's patience runs out; record every attempt."""
        backoff = RETRY_MIN
        deadline = time.monotonic() + self.patience
        while True:
            at = time.time()
            try:
                code, detail = self._try(mail_from, sent.recipients, data, login)
            except _Reply as reply:
                code, detail = reply.code, reply.detail
                if reply.after_data:
                    sent.resent_after_lost_reply = True
            except (TimeoutError, smtplib.SMTPException, OSError) as exc:
                code, detail = 0, f"{type(exc).__name__}: {exc}"
            if 200 <= code < 300:
                sent.attempts.append(Attempt(at, "250", code, detail))
                sent.accepted_at = time.time()
                return
            if 500 <= code < 600:
                sent.attempts.append(Attempt(at, "5xx", code, detail))
                sent.refused = True
                return
            sent.attempts.append(Attempt(at, "4xx" if 400 <= code < 500 else "net", code or None,
                                         detail[:200]))
            if time.monotonic() > deadline:
                sent.gave_up = True
                return
            time.sleep(backoff)
            backoff = min(backoff * 2, RETRY_MAX)


class LoadGenerator:
    """Client threads sending at a steady rate until :meth:`stop`; every message in ``ledger``."""

    def __init__(self, *, mta_port: int, msa_port: int, addresses: Sequence[str], password: str,
                 inbound_threads: int = 6, submission_threads: int = 3,
                 rate_per_thread: float = 1.5) -> None:
        self.ledger = Ledger()
        self.addresses = list(addresses)
        self.rate = rate_per_thread
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._counter = 0
        self._counter_lock = threading.Lock()
        for i in range(inbound_threads):
            self._threads.append(threading.Thread(
                target=self._run, args=(Client("inbound", mta_port), i),
                name=f"load-inbound-{i}", daemon=True))
        for i in range(submission_threads):
            self._threads.append(threading.Thread(
                target=self._run, args=(Client("submission", msa_port, password=password), i),
                name=f"load-submission-{i}", daemon=True))

    def _next(self) -> int:
        with self._counter_lock:
            self._counter += 1
            return self._counter

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """No new messages; the ones being retried carry on (see :meth:`join`)."""
        self._stop.set()

    def join(self, timeout: float) -> bool:
        """Wait for the clients to settle every message; False if some are still trying."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def _run(self, client: Client, index: int) -> None:
        interval = 1.0 / self.rate
        # threads start spread over one interval, so the load is even
        next_at = time.monotonic() + interval * index / max(1, len(self._threads))
        while not self._stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            next_at = max(next_at + interval, time.monotonic())
            self._one(client)

    def _one(self, client: Client) -> None:
        n = self._next()
        token = f"{client.kind[:3]}{n:05d}"
        users = self.addresses
        first = users[n % len(users)]
        # every seventh message has two recipients, so per-recipient state is exercised
        recipients = (first, users[(n + 7) % len(users)]) if n % 7 == 0 else (first,)
        if client.kind == "submission":
            mail_from = users[(n + 3) % len(users)]
            login: str | None = mail_from
        else:
            mail_from, login = "sender@remote.test", None
        sent = Sent(token, client.kind, recipients, time.time())
        self.ledger.add(sent)
        client.deliver(sent, mail_from, build_message(token, mail_from, recipients), login)
