"""Fixtures: a real authoritative DNS server on loopback (twisted.names) serving zones tests set.

Usage in a test::

    def test_mx(dns_server):
        dns_server.set_records("example.org", "MX", [(10, "mx.example.org")])
        dns_server.set_records("mx.example.org", "A", ["127.0.0.2"])
        resolver = dns_server.resolver()            # a postroom.net.dns.Resolver aimed at it
        env = dns_server.env                        # {"POSTROOM_DNS_SERVERS": "127.0.0.1:PORT"}

What the server does:

* UDP and TCP on the same free port of 127.0.0.1 (``dns_server.address``);
  UDP answers over 512 bytes are sent truncated (TC bit) so clients retry
  over TCP, as with a real server and a client without EDNS.
* Record types: A, AAAA, MX (``[(pref, host)]``, ``(0, ".")`` is a null MX),
  TXT (each value a str, split into 255-byte strings automatically, or a
  list of str given as the exact character-strings), PTR, CNAME (followed
  by the server within its data, like a recursive resolver would), SPF.
* A name with no records but with records below it is an empty
  non-terminal (NOERROR, no data); any other unknown name is NXDOMAIN.
  Negative answers carry an SOA with minimum 0, so nothing negative is
  cached by clients and a test may add a record after a failed lookup.
* ``ttl`` defaults to 0 (clients do not cache) unless a test passes one.
* ``dns_server.timeout(name)`` makes the server never answer for that name
  (optionally one type only): clients see a timeout, i.e. a temperror.
  ``dns_server.servfail(name)`` answers SERVFAIL.
* ``dns_server.queries(suffix)`` counts the queries received (answered or
  not) per name at or below ``suffix``, since the last clear.
* TLSA (``[(usage, selector, mtype, "hex data")]``, served as RFC 6698
  wire data) for DANE tests.
* ``dns_server.secure(zone)`` marks ``zone`` and every name below it as
  DNSSEC-validated: answers and denials (NOERROR, NXDOMAIN) for those names
  carry the AD bit, as a validating resolver's would (RFC 4035 section
  3.2.3). Nothing is signed; the client trusts the AD bit of its configured
  resolver, which is how Postfix's ``smtp_dns_support_level = dnssec`` works.
  SERVFAIL answers (and everything outside a secure zone) never have AD.

One server process serves the whole session (fast); the ``dns_server``
fixture clears its data before each test. The server runs in a child process
(``python -m tests.support.dns``) so its reactor never meets the one a test
may use; commands go to it as JSON lines on its stdin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
# The test MXs this server points at all live on loopback, which the relay refuses unless
# the operator allows it: relays under test are given these (POSTROOM_RELAY_ALLOWED_NETWORKS).
LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1/128")
LOOPBACK_ENV = {"POSTROOM_RELAY_ALLOWED_NETWORKS": ",".join(LOOPBACK_NETWORKS)}
_MAX_UDP = 512
_CNAME_HOPS = 8
_TYPES = ("A", "AAAA", "MX", "TXT", "PTR", "CNAME", "SPF", "TLSA")
# types twisted.names has no name (or record class) for: served as raw rdata
_RAW_TYPES = {"TLSA": 52}


# --------------------------------------------------------------------------- server (child)


def _serve() -> None:  # pragma: no cover - runs in the child process
    from twisted.internet import defer, reactor, stdio
    from twisted.internet.error import CannotListenError
    from twisted.names import common, server
    from twisted.names import dns as tdns
    from twisted.protocols.basic import LineReceiver

    records: dict[tuple[str, str], list[tdns.RRHeader]] = {}
    failing: dict[tuple[str, str | None], str] = {}
    secure: set[str] = set()
    received: dict[str, int] = {}

    class NXDomainWithSOA(tdns.AuthoritativeDomainError):
        pass

    class ServFail(Exception):
        pass

    def soa_for(name: str) -> tdns.RRHeader:
        apex = name.split(".", 1)[-1] if "." in name else name
        soa = tdns.Record_SOA(mname=b"ns." + apex.encode(), rname=b"hostmaster." + apex.encode(),
                              serial=1, refresh=60, retry=60, expire=60, minimum=0, ttl=0)
        return tdns.RRHeader(apex.encode(), tdns.SOA, tdns.IN, 0, soa, auth=True)

    def payload(rtype: str, value: Any, ttl: int) -> Any:
        if rtype == "A":
            return tdns.Record_A(value, ttl=ttl)
        if rtype == "AAAA":
            return tdns.Record_AAAA(value, ttl=ttl)
        if rtype == "MX":
            pref, host = value
            return tdns.Record_MX(int(pref), b"" if host == "." else host.encode(), ttl=ttl)
        if rtype in ("TXT", "SPF"):
            if isinstance(value, str):
                raw = value.encode("utf-8")
                strings = [raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""]
            else:
                strings = [s.encode("utf-8") for s in value]
            cls = tdns.Record_TXT if rtype == "TXT" else tdns.Record_SPF
            return cls(*strings, ttl=ttl)
        if rtype == "PTR":
            return tdns.Record_PTR(value.encode(), ttl=ttl)
        if rtype == "CNAME":
            return tdns.Record_CNAME(value.encode(), ttl=ttl)
        if rtype == "TLSA":
            usage, selector, mtype, data = value
            return tdns.UnknownRecord(bytes([int(usage), int(selector), int(mtype)])
                                      + bytes.fromhex(data), ttl=ttl)
        raise ValueError(f"unsupported type {rtype}")

    def is_secure(name: str) -> bool:
        return any(name == zone or name.endswith("." + zone) for zone in secure)

    def name_exists(name: str) -> bool:
        suffix = "." + name
        return any(n == name or n.endswith(suffix) for n, _ in records)

    class ZoneResolver(common.ResolverBase):
        def _lookup(self, name: bytes, cls: int, type: int, timeout: Any = None) -> Any:
            qname = name.decode("ascii", "replace").lower().rstrip(".")
            received[qname] = received.get(qname, 0) + 1
            rtype = tdns.QUERY_TYPES.get(type, tdns.EXT_QUERIES.get(type, str(type)))
            rtype = next((n for n, code in _RAW_TYPES.items() if code == type), rtype)
            mode = failing.get((qname, rtype)) or failing.get((qname, None))
            if mode == "timeout":
                return defer.Deferred()  # never fires: the client times out
            if mode == "servfail":
                return defer.fail(ServFail(qname))
            answers: list[tdns.RRHeader] = []
            current, seen = qname, set()
            for _ in range(_CNAME_HOPS):
                found = records.get((current, rtype))
                if found:
                    answers.extend(found)
                    return defer.succeed((answers, [], []))
                alias = records.get((current, "CNAME"))
                if not alias or current in seen or rtype == "CNAME":
                    break
                seen.add(current)
                answers.extend(alias)
                current = alias[0].payload.name.name.decode().lower().rstrip(".")
            if answers:
                return defer.succeed((answers, [], []))
            if name_exists(qname):
                return defer.succeed(([], [soa_for(qname)], []))
            failure = NXDomainWithSOA(qname)
            failure.soa = soa_for(qname)  # type: ignore[attr-defined]
            return defer.fail(failure)

    class Factory(server.DNSServerFactory):
        def gotResolverError(self, failure: Any, protocol: Any, message: Any, address: Any) -> None:
            if failure.check(NXDomainWithSOA):
                response = self._responseFromMessage(message=message, rCode=tdns.ENAME,
                                                     authority=[failure.value.soa])
            else:
                response = self._responseFromMessage(message=message, rCode=tdns.ESERVER)
            self.sendReply(protocol, response, address)

        def sendReply(self, protocol: Any, message: Any, address: Any) -> None:
            if message.rCode in (tdns.OK, tdns.ENAME) and message.queries and is_secure(
                    message.queries[0].name.name.decode("ascii", "replace").lower().rstrip(".")):
                message.authenticData = 1
            if address is not None and len(message.toStr()) > _MAX_UDP:
                message.answers, message.authority, message.additional = [], [], []
                message.trunc = 1
            super().sendReply(protocol, message, address)

    factory = Factory()
    factory.resolver = ZoneResolver()
    udp_protocol = tdns.DNSDatagramProtocol(factory)

    def listen() -> int:
        for _ in range(50):
            udp = reactor.listenUDP(0, udp_protocol, interface="127.0.0.1")  # type: ignore[attr-defined]
            port = udp.getHost().port
            try:
                reactor.listenTCP(port, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
            except (OSError, CannotListenError):  # the latter is no OSError: retry it too
                udp.stopListening()
                continue
            return int(port)
        raise RuntimeError("no free port for both UDP and TCP")

    class Control(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            try:
                reply: dict[str, Any] = {"ok": True, "value": self.apply(json.loads(line))}
            except Exception as exc:  # report to the test, keep serving
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            self.sendLine(json.dumps(reply).encode())

        def apply(self, cmd: dict[str, Any]) -> Any:
            op = cmd["op"]
            if op == "set":
                name = cmd["name"].lower().rstrip(".")
                rtype = cmd["type"].upper()
                if rtype not in _TYPES:
                    raise ValueError(f"unsupported type {rtype}")
                typecode = _RAW_TYPES.get(rtype) or getattr(tdns, rtype)
                rrs = [tdns.RRHeader(name.encode(), typecode, tdns.IN, cmd["ttl"],
                                     payload(rtype, v, cmd["ttl"]), auth=True)
                       for v in cmd["values"]]
                if rrs:
                    records[(name, rtype)] = rrs
                else:
                    records.pop((name, rtype), None)
            elif op == "fail":
                name = cmd["name"].lower().rstrip(".")
                rtype = cmd["type"].upper() if cmd["type"] else None
                if cmd["mode"] is None:
                    failing.pop((name, rtype), None)
                else:
                    failing[(name, rtype)] = cmd["mode"]
            elif op == "secure":
                zone = cmd["name"].lower().rstrip(".")
                if cmd["on"]:
                    secure.add(zone)
                else:
                    secure.discard(zone)
            elif op == "queries":
                suffix = cmd["name"].lower().rstrip(".")
                return {n: c for n, c in received.items()
                        if n == suffix or n.endswith("." + suffix)}
            elif op == "clear":
                records.clear()
                failing.clear()
                secure.clear()
                received.clear()
            elif op != "ping":
                raise ValueError(f"unknown op {op}")
            return None

        def connectionLost(self, reason: Any = None) -> None:
            # our parent (pytest) went away: stop rather than linger
            if reactor.running:  # type: ignore[attr-defined]
                reactor.stop()  # type: ignore[attr-defined]

    port = listen()
    sys.stdout.write(f"ready {port}\n")
    sys.stdout.flush()
    stdio.StandardIO(Control())
    reactor.run()  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- client (tests)


class DNSServer:
    """Handle on the loopback DNS server: its address and the calls that change its data."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.dns"], cwd=REPO, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.startswith("ready "):
            self._proc.kill()
            raise RuntimeError(f"test DNS server did not start: {line!r}")
        self.address: tuple[str, int] = ("127.0.0.1", int(line.split()[1]))
        self._lock = threading.Lock()

    @property
    def env(self) -> dict[str, str]:
        """Environment that points a Postroom process at this server."""
        return {"POSTROOM_DNS_SERVERS": f"{self.address[0]}:{self.address[1]}"}

    def resolver(self, timeout: float = 2.0) -> Any:
        """A fresh postroom.net.dns.Resolver using only this server."""
        from postroom.net.dns import Resolver

        return Resolver([self.address], timeout=timeout)

    def _send(self, **cmd: Any) -> Any:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        with self._lock:
            self._proc.stdin.write(json.dumps(cmd) + "\n")
            self._proc.stdin.flush()
            reply = json.loads(self._proc.stdout.readline())
        if not reply["ok"]:
            raise ValueError(reply["error"])
        return reply.get("value")

    def set_records(self, name: str, rtype: str, values: Sequence[Any], ttl: int = 0) -> None:
        """Replace ``name``'s records of ``rtype`` with ``values`` ([] removes them)."""
        self._send(op="set", name=name, type=rtype, values=list(values), ttl=ttl)

    def load(self, zone: Mapping[str, Mapping[str, Sequence[Any]]], ttl: int = 0) -> None:
        """Set many records at once: ``{"example.org": {"A": [...], "TXT": [...]}}``."""
        for name, by_type in zone.items():
            for rtype, values in by_type.items():
                self.set_records(name, rtype, values, ttl=ttl)

    def timeout(self, name: str, rtype: str | None = None) -> None:
        """Never answer queries for ``name`` (of ``rtype`` only, when given)."""
        self._send(op="fail", name=name, type=rtype, mode="timeout")

    def servfail(self, name: str, rtype: str | None = None) -> None:
        """Answer SERVFAIL to queries for ``name`` (of ``rtype`` only, when given)."""
        self._send(op="fail", name=name, type=rtype, mode="servfail")

    def heal(self, name: str, rtype: str | None = None) -> None:
        """Undo timeout()/servfail() for ``name``."""
        self._send(op="fail", name=name, type=rtype, mode=None)

    def secure(self, zone: str, on: bool = True) -> None:
        """Answer for ``zone`` and the names below it with AD set (``on=False`` undoes it)."""
        self._send(op="secure", name=zone, on=on)

    def queries(self, suffix: str) -> dict[str, int]:
        """{name: queries received} for ``suffix`` and the names below it, since the last clear."""
        return dict(self._send(op="queries", name=suffix))

    def clear(self) -> None:
        """Forget every record, failure, secure zone and query count."""
        self._send(op="clear")

    def stop(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()


@pytest.fixture(scope="session")
def dns_server_session() -> Iterator[DNSServer]:
    server = DNSServer()
    yield server
    server.stop()


@pytest.fixture
def dns_server(dns_server_session: DNSServer) -> Iterator[DNSServer]:
    """The loopback DNS server, emptied for this test (see the module docstring)."""
    dns_server_session.clear()
    yield dns_server_session
    dns_server_session.clear()


if __name__ == "__main__":
    _serve()
