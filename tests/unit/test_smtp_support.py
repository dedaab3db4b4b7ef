"""Test helpers for the SMTP engine: a recording policy double and a StringTransport harness.

The policy is a test double of the SMTPPolicy interface (no store behind it);
the harness drives one SMTPServerProtocol over StringTransport and task.Clock.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport

from postroom.auth.sasl import (
    Credentials,
    PasswordCredentials,
    ScramSecrets,
    VerifiedCredentials,
    scram_secrets,
)
from postroom.smtp import replies as R
from postroom.smtp.grammar import Address, MailParams, RcptParams
from postroom.smtp.options import ServerOptions
from postroom.smtp.policy import BasePolicy
from postroom.smtp.replies import Reply
from postroom.smtp.server import SMTPServerFactory, SMTPServerProtocol
from postroom.smtp.session import Envelope, Session

USERS = {"alice": "correct horse", "bob": "hunter2"}


class RecordingPolicy(BasePolicy):
    """Accepts everything in its domains, checks passwords against USERS, records deliveries.

    With ``delay`` (seconds) and a ``clock`` every answer is a Deferred that
    fires later, like a policy that asks PostgreSQL.
    """

    offer_auth = True
    offer_scram = True
    require_auth_for_mail = False

    def __init__(self, *, clock: Any = None, delay: float | None = None,
                 plaintext_auth: bool = False, require_auth: bool = False) -> None:
        self.clock = clock
        self.delay = delay
        self.plaintext_auth = plaintext_auth
        self.require_auth_for_mail = require_auth
        self.delivered: list[tuple[Envelope, bytes]] = []
        self.delivery_sessions: list[Session] = []
        self.calls: list[str] = []
        self.auth_attempts: list[Credentials] = []
        self.locked: set[str] = set()
        self.scram: dict[str, ScramSecrets] = {
            name: scram_secrets(password, iterations=4096) for name, password in USERS.items()}
        self.fail_in: str | None = None
        self.closed_sessions: list[Session] = []
        self.next_queue_id = 1

    def _answer(self, name: str, value: Any) -> Any:
        self.calls.append(name)
        if self.fail_in == name:
            raise RuntimeError(f"boom in {name}")
        if self.delay is not None:
            return deferLater(self.clock, self.delay, lambda: value)
        return succeed(value)

    def allow_auth_without_tls(self, session: Session) -> bool:
        return self.plaintext_auth

    def connect(self, session: Session) -> Deferred[Reply | None]:
        return self._answer("connect", None)

    def helo(self, session: Session, name: str) -> Deferred[Reply | None]:
        return self._answer("helo", None)

    def authenticate(self, session: Session, credentials: Credentials) -> Deferred[Any]:
        self.auth_attempts.append(credentials)
        result: Any = None
        if credentials.username in self.locked:
            result = R.AUTH_TEMPORARY_FAILURE
        elif isinstance(credentials, PasswordCredentials):
            if USERS.get(credentials.username) == credentials.password:
                result = credentials.username
        elif isinstance(credentials, VerifiedCredentials) and credentials.verified:
            result = credentials.username
        return self._answer("authenticate", result)

    def scram_secrets(self, session: Session, username: str) -> Deferred[ScramSecrets | None]:
        return self._answer("scram_secrets", self.scram.get(username))

    def mail_from(self, session: Session, path: Address | None,
                  params: MailParams) -> Deferred[Reply]:
        if path is not None and path.domain == "refused.test":
            return self._answer("mail_from", Reply(550, "5.7.1", "Sender refused"))
        return self._answer("mail_from", R.SENDER_OK)

    def rcpt_to(self, session: Session, path: Address, params: RcptParams) -> Deferred[Reply]:
        if path.local_part == "nobody":
            return self._answer("rcpt_to", Reply(550, "5.1.1", "No such user"))
        return self._answer("rcpt_to", R.RECIPIENT_OK.with_text(f"<{path}> OK"))

    def deliver(self, session: Session, envelope: Envelope, message: bytes) -> Deferred[Reply]:
        if self.fail_in == "deliver":
            self.calls.append("deliver")
            raise RuntimeError("boom in deliver")
        self.delivered.append((envelope, message))
        self.delivery_sessions.append(session)
        queue_id = f"Q{self.next_queue_id:04d}"
        self.next_queue_id += 1
        return self._answer("deliver", R.MESSAGE_ACCEPTED.with_text(f"Queued as {queue_id}"))

    def closed(self, session: Session) -> None:
        self.closed_sessions.append(session)


class FakeServerTLS:
    """Stands in for postroom.net.tls.ServerTLS in StringTransport tests (never handshakes)."""

    def getContext(self) -> None:
        return None


class TLSStringTransport(StringTransport):
    """A StringTransport that records startTLS and abortConnection."""

    def __init__(self, peer_ip: str = "192.0.2.7") -> None:
        super().__init__(hostAddress=IPv4Address("TCP", "127.0.0.1", 587),
                         peerAddress=IPv4Address("TCP", peer_ip, 40000))
        self.tls_context: Any = None
        self.tls_started = False
        self.aborted = False

    def startTLS(self, context: Any) -> None:
        self.tls_started = True
        self.tls_context = context

    def abortConnection(self) -> None:
        self.aborted = True
        self.disconnecting = True


class Harness:
    """One SMTP session over StringTransport with a task.Clock."""

    def __init__(self, policy: RecordingPolicy | None = None, *, tls: bool = True,
                 implicit_tls: bool = False, factory: SMTPServerFactory | None = None,
                 peer_ip: str = "192.0.2.7", **options: Any) -> None:
        self.clock = factory.clock if factory is not None else Clock()
        if factory is None:
            self.policy = policy or RecordingPolicy(clock=self.clock)
            self.policy.clock = self.clock
            factory = SMTPServerFactory(self.policy, ServerOptions(hostname="mx.test", **options),
                                        tls=FakeServerTLS() if tls else None,
                                        implicit_tls=implicit_tls, clock=self.clock)
        else:
            self.policy = factory.policy  # type: ignore[assignment]
        self.factory = factory
        self.transport = TLSStringTransport(peer_ip)
        self.protocol: SMTPServerProtocol = factory.buildProtocol(self.transport.getPeer())
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def take(self) -> bytes:
        value = self.transport.value()
        self.transport.clear()
        return value

    def replies(self) -> list[str]:
        """Each complete reply since the last call, as its final line (``250 2.0.0 OK``)."""
        out = []
        for line in self.take().decode("utf-8").split("\r\n"):
            if len(line) >= 3 and (len(line) == 3 or line[3] == " "):
                out.append(line)
        return out

    def codes(self) -> list[int]:
        return [int(line[:3]) for line in self.replies()]

    def lose(self) -> None:
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        self.protocol.connectionLost(Failure(ConnectionDone()))

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    def greet(self, name: str = "client.test") -> list[str]:
        """Consume the greeting, send EHLO, and return the EHLO reply lines."""
        self.take()
        self.send(f"EHLO {name}\r\n".encode())
        return self.take().decode().split("\r\n")[:-1]

    def start_transaction(self, sender: str = "a@example.org", *rcpts: str) -> None:
        self.greet()
        self.send(f"MAIL FROM:<{sender}>\r\n".encode())
        for rcpt in rcpts or ("b@example.net",):
            self.send(f"RCPT TO:<{rcpt}>\r\n".encode())
        assert all(code == 250 for code in self.codes())


def test_harness_greets_with_220() -> None:
    harness = Harness()
    assert harness.replies() == ["220 mx.test ESMTP Postroom"]
