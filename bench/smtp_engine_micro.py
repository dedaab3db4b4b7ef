"""CPU per SMTP session of the shared engine alone, in-process (no sockets, no store).

One session is EHLO, MAIL, RCPT, DATA with a 2 KB body, the delivery's Deferred fired, QUIT,
over StringTransport with a policy that answers MAIL and RCPT at once (as the mta does for a
remembered recipient). The engine's log lines go to stdout; the figure goes to stderr. Which
tree is measured is PYTHONPATH's business, so A/B pairs alternate two trees:

    for i in 1 2 3 4; do
      PYTHONPATH=/path/to/main/shared .venv/bin/python bench/smtp_engine_micro.py >/dev/null
      PYTHONPATH=shared .venv/bin/python bench/smtp_engine_micro.py >/dev/null
    done
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport

from postroom.smtp import replies as R
from postroom.smtp.options import ServerOptions
from postroom.smtp.policy import BasePolicy
from postroom.smtp.server import SMTPServerFactory

BODY = b"Subject: x\r\n\r\n" + (b"x" * 70 + b"\r\n") * 28 + b".\r\n"


class _Call:
    """A timer that never fires: task.Clock's sorted list would grow with every session."""

    def __init__(self) -> None:
        self._active = True

    def reset(self, seconds: float) -> None:
        pass

    def cancel(self) -> None:
        self._active = False

    def active(self) -> bool:
        return self._active


class _Clock:
    def seconds(self) -> float:
        return 0.0

    def callLater(self, seconds: float, f: Any, *args: Any, **kwargs: Any) -> _Call:
        return _Call()


class _Policy(BasePolicy):
    def __init__(self) -> None:
        self.pending: list[Deferred[Any]] = []

    def deliver(self, session: Any, envelope: Any, message: bytes) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append(d)
        return d


def session(factory: SMTPServerFactory, policy: _Policy) -> None:
    transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 25),
                                peerAddress=IPv4Address("TCP", "192.0.2.1", 4000))
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(transport)
    for line in (b"EHLO c.test\r\n", b"MAIL FROM:<a@src.test>\r\n",
                 b"RCPT TO:<u0@dst.test>\r\n", b"DATA\r\n", BODY):
        protocol.dataReceived(line)
    policy.pending.pop().callback(R.MESSAGE_ACCEPTED)
    protocol.dataReceived(b"QUIT\r\n")
    protocol.connectionLost(None)
    if transport.value().count(b"\r\n250 ") < 3:
        raise RuntimeError(transport.value().decode())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=3000, help="sessions measured")
    args = parser.parse_args()
    policy = _Policy()
    factory = SMTPServerFactory(policy, ServerOptions(hostname="mx.test"), clock=_Clock())
    for _ in range(300):
        session(factory, policy)
    started = time.process_time()
    for _ in range(args.n):
        session(factory, policy)
    per = (time.process_time() - started) * 1e6 / args.n
    import postroom.smtp.server as engine

    print(f"{engine.__file__}: {per:.1f} us CPU per session", file=sys.stderr)


if __name__ == "__main__":
    main()
