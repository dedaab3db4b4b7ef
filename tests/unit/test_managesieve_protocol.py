"""The ManageSieve state machine over StringTransport and task.Clock, with an in-memory policy."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from twisted.internet import interfaces
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import directlyProvides, implementer

from postroom.auth.sasl import scram_secrets
from postroom.sieve import SIEVE_EXTENSIONS, check_script
from postroom_managesieve.policy import AuthFailed, ScriptRefused
from postroom_managesieve.protocol import ManageSieveFactory
from tests.support.scram import ScramClient

MAX_BYTES = 200


class MemoryScripts:
    def __init__(self, address: str) -> None:
        self.address = address
        self.scripts: dict[str, str] = {}
        self.active: str | None = None

    def list(self) -> Deferred[list[tuple[str, bool]]]:
        return succeed([(n, n == self.active) for n in sorted(self.scripts)])

    def get(self, name: str) -> Deferred[str]:
        if name not in self.scripts:
            return fail(ScriptRefused("no such script", "NONEXISTENT"))
        return succeed(self.scripts[name])

    def check(self, text: str) -> Deferred[Any]:
        return succeed(check_script(text, max_bytes=MAX_BYTES))

    def have_space(self, name: str, size: int) -> Deferred[None]:
        if size > MAX_BYTES:
            return fail(ScriptRefused("too big", "QUOTA/MAXSIZE"))
        if name not in self.scripts and len(self.scripts) >= 2:
            return fail(ScriptRefused("too many", "QUOTA/MAXSCRIPTS"))
        return succeed(None)

    def put(self, name: str, text: str) -> Deferred[None]:
        d = self.have_space(name, len(text.encode()))
        if d.called and not isinstance(d.result, Exception) and d.result is None:
            self.scripts[name] = text
        return d

    def set_active(self, name: str | None) -> Deferred[None]:
        if name is not None and name not in self.scripts:
            return fail(ScriptRefused("no such script", "NONEXISTENT"))
        self.active = name
        return succeed(None)

    def delete(self, name: str) -> Deferred[None]:
        if name == self.active:
            return fail(ScriptRefused("active", "ACTIVE"))
        if self.scripts.pop(name, None) is None:
            return fail(ScriptRefused("no such script", "NONEXISTENT"))
        return succeed(None)

    def rename(self, old: str, new: str) -> Deferred[None]:
        if old not in self.scripts:
            return fail(ScriptRefused("no such script", "NONEXISTENT"))
        if new in self.scripts:
            return fail(ScriptRefused("exists", "ALREADYEXISTS"))
        self.scripts[new] = self.scripts.pop(old)
        if self.active == old:
            self.active = new
        return succeed(None)


class MemoryAuthority:
    def __init__(self) -> None:
        self.password = "secret"
        self.scripts = MemoryScripts("bob@example.org")
        self.secrets = scram_secrets(self.password)

    def login(self, username: str, password: str, peer: str) -> Deferred[Any]:
        if username == "bob@example.org" and password == self.password:
            return succeed(self.scripts)
        return fail(AuthFailed())

    def scram_secrets(self, username: str, peer: str) -> Deferred[Any]:
        return succeed(self.secrets if username == "bob@example.org" else None)

    def login_verified(self, username: str, verified: bool, peer: str) -> Deferred[Any]:
        return succeed(self.scripts) if verified else fail(AuthFailed())


class TLSStringTransport(StringTransport):
    def __init__(self, peer: str) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", peer, 50000))
        directlyProvides(self, interfaces.ITLSTransport)
        self.tls_context: Any = None

    def startTLS(self, context: Any) -> None:
        self.tls_context = context
        directlyProvides(self, interfaces.ITLSTransport, interfaces.ISSLTransport)


@implementer(interfaces.IOpenSSLContextFactory)
class FakeTLS:
    def getContext(self) -> None:
        return None


class Client:
    def __init__(self, *, secure: bool = False, peer: str = "192.0.2.7",
                 **options: Any) -> None:
        self.clock = Clock()
        self.authority = MemoryAuthority()
        options.setdefault("tls", FakeTLS())
        self.factory = ManageSieveFactory(
            self.authority, hostname="sieve.example.org", extensions=SIEVE_EXTENSIONS,
            max_script_bytes=MAX_BYTES, max_redirects=4, clock=self.clock, **options)
        self.transport = TLSStringTransport(peer)
        if secure:
            directlyProvides(self.transport, interfaces.ISSLTransport)
        self.server = self.factory.buildProtocol(None)
        self.server.makeConnection(self.transport)
        self.greeting = self.take()

    def take(self) -> bytes:
        value = bytes(self.transport.value())
        self.transport.clear()
        return value

    def send(self, data: bytes) -> bytes:
        self.server.dataReceived(data)
        return self.take()

    def cmd(self, line: str | bytes) -> bytes:
        raw = line.encode() if isinstance(line, str) else line
        return self.send(raw + b"\r\n")

    def login(self) -> bytes:
        token = base64.b64encode(b"\0bob@example.org\0secret").decode()
        return self.cmd(f'AUTHENTICATE "PLAIN" "{token}"')

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)


def put(client: Client, name: str, script: bytes) -> bytes:
    return client.send(f'PUTSCRIPT "{name}" {{{len(script)}+}}\r\n'.encode() + script + b"\r\n")


def test_the_greeting_lists_capabilities_and_offers_starttls_before_sasl():
    client = Client()
    lines = client.greeting.split(b"\r\n")
    assert lines[0] == b'"IMPLEMENTATION" "Postroom"'
    assert b'"SASL" ""' in lines  # nothing to authenticate with before TLS
    assert b'"STARTTLS"' in lines and b'"VERSION" "1.0"' in lines
    assert b'"MAXREDIRECTS" "4"' in lines
    assert ('"SIEVE" "' + " ".join(SIEVE_EXTENSIONS) + '"').encode() in lines
    assert lines[-2].startswith(b"OK ")


def test_authenticate_before_tls_is_refused_as_encrypt_needed():
    client = Client()
    assert client.login().startswith(b"NO (ENCRYPT-NEEDED)")


def test_starttls_drops_injected_commands_and_sends_capabilities_again():
    client = Client()
    reply = client.send(b"STARTTLS\r\nLISTSCRIPTS\r\n")
    assert client.transport.tls_context is not None
    assert reply.startswith(b'OK "begin TLS negotiation"\r\n"IMPLEMENTATION"')
    assert b'"SASL" "PLAIN SCRAM-SHA-256"' in reply and b'"STARTTLS"' not in reply
    assert reply.endswith(b'OK "TLS negotiation successful"\r\n')
    assert b"LISTSCRIPTS" not in reply and reply.count(b"\r\nNO") == 0


def test_plain_login_then_the_whole_script_life():
    client = Client(secure=True)
    assert client.login() == b'OK "authenticated"\r\n'
    assert put(client, "vac", b"keep;\r\n") == b'OK "script stored"\r\n'
    assert client.cmd('RENAMESCRIPT "vac" "main"') == b'OK "script renamed"\r\n'
    assert client.cmd('SETACTIVE "main"') == b'OK "active script set"\r\n'
    assert client.cmd("LISTSCRIPTS") == b'"main" ACTIVE\r\nOK "listscripts completed"\r\n'
    assert client.cmd('GETSCRIPT "main"') == b'{7}\r\nkeep;\r\n\r\nOK "getscript completed"\r\n'
    assert client.cmd('DELETESCRIPT "main"').startswith(b"NO (ACTIVE)")
    assert client.cmd('SETACTIVE ""') == b'OK "active script set"\r\n'
    assert client.cmd('DELETESCRIPT "main"') == b'OK "script deleted"\r\n'
    assert client.cmd('GETSCRIPT "main"').startswith(b"NO (NONEXISTENT)")
    assert client.cmd("LOGOUT") == b'OK "logout completed"\r\n' and client.closed


def test_putscript_answers_a_broken_script_with_its_line():
    client = Client(secure=True)
    client.login()
    reply = put(client, "bad", b'require "fileinto";\r\nkeep;\r\nfileinto "x" "y";\r\n')
    assert reply.startswith(b'NO "line 3: ')
    assert client.authority.scripts.scripts == {}
    assert client.send(b"CHECKSCRIPT {5+}\r\nkeep;\r\n") == b'OK "script is valid"\r\n'
    assert client.send(b"CHECKSCRIPT {5+}\r\nkept;\r\n").startswith(b'NO "line 1')


def test_quotas_answer_with_their_codes():
    client = Client(secure=True)
    client.login()
    assert client.cmd('HAVESPACE "a" 10') == b'OK "putscript would succeed"\r\n'
    assert client.cmd(f'HAVESPACE "a" {MAX_BYTES + 1}').startswith(b"NO (QUOTA/MAXSIZE)")
    put(client, "a", b"keep;")
    put(client, "b", b"keep;")
    assert put(client, "c", b"keep;").startswith(b"NO (QUOTA/MAXSCRIPTS)")
    # a literal over the script limit is read, thrown away and refused
    big = b"#" * (MAX_BYTES + 1)
    assert put(client, "d", big).startswith(b"NO (QUOTA/MAXSIZE)")
    assert client.cmd("NOOP") == b'OK "done"\r\n'


def test_scram_sha_256_login_ends_with_the_server_signature_in_the_ok():
    client = Client(secure=True)
    scram = ScramClient("bob@example.org", "secret")
    first = base64.b64encode(scram.first()).decode()
    challenge = client.cmd(f'AUTHENTICATE "SCRAM-SHA-256" "{first}"')
    server_first = base64.b64decode(challenge.strip().strip(b'"'))
    final = base64.b64encode(scram.final(server_first)).decode()
    reply = client.cmd(f'"{final}"')
    assert reply.startswith(b'OK (SASL "')
    signature = base64.b64decode(reply.split(b'"')[1])
    assert scram.verify(signature)
    assert client.cmd("LISTSCRIPTS") == b'OK "listscripts completed"\r\n'


def test_plain_without_initial_response_takes_a_challenge_and_a_literal():
    client = Client(secure=True)
    assert client.cmd('AUTHENTICATE "PLAIN"') == b'""\r\n'
    token = base64.b64encode(b"\0bob@example.org\0secret")
    assert client.send(b"{%d+}\r\n%s\r\n" % (len(token), token)) == b'OK "authenticated"\r\n'


def test_failed_logins_are_delayed_and_the_third_closes():
    client = Client(secure=True)
    bad = base64.b64encode(b"\0bob@example.org\0wrong").decode()
    for attempt in range(3):
        assert client.cmd(f'AUTHENTICATE "PLAIN" "{bad}"') == b""  # not before the delay
        client.clock.advance(2.0)
        reply = client.take()
        if attempt < 2:
            assert reply == b'NO "authentication failed"\r\n'
    assert reply.startswith(b"BYE") and client.closed


def test_commands_out_of_state_and_garbage_are_counted_and_end_the_session():
    client = Client(secure=True)
    assert client.cmd("LISTSCRIPTS") == b'NO "LISTSCRIPTS not allowed now"\r\n'
    for _ in range(8):
        assert client.cmd(b"\x00\xff garbage").startswith(b"NO ")
    assert client.cmd("FOO").startswith(b"BYE") and client.closed


def test_noop_echoes_its_tag_and_unauthenticate_returns_to_nonauth():
    client = Client(secure=True)
    assert client.cmd('NOOP "t1"') == b'OK (TAG "t1") "done"\r\n'
    client.login()
    assert client.cmd("UNAUTHENTICATE") == b'OK "unauthenticated"\r\n'
    assert client.cmd("LISTSCRIPTS").startswith(b"NO ")


def test_plaintext_login_from_loopback_only_when_allowed():
    client = Client(peer="127.0.0.1", allow_plaintext_auth_on_loopback=True)
    assert b'"SASL" "PLAIN SCRAM-SHA-256"' in client.greeting
    assert client.login() == b'OK "authenticated"\r\n'
    assert Client(peer="192.0.2.9", allow_plaintext_auth_on_loopback=True).login().startswith(
        b"NO (ENCRYPT-NEEDED)")


def test_an_internal_error_is_no_trylater_not_a_traceback():
    client = Client(secure=True)
    client.login()
    client.authority.scripts.list = lambda: fail(RuntimeError("boom"))  # type: ignore
    reply = client.cmd("LISTSCRIPTS")
    assert reply == b'NO (TRYLATER) "internal error, try again later"\r\n'
    assert b"boom" not in reply


@pytest.mark.parametrize("limit", [1])
def test_the_per_client_connection_limit_says_bye(limit):
    first = Client(secure=True, max_connections_per_ip=limit)
    transport = TLSStringTransport("192.0.2.7")
    second = first.factory.buildProtocol(None)
    second.makeConnection(transport)
    assert transport.value().startswith(b"BYE (TRYLATER)") and transport.disconnecting


def test_a_wrong_scram_proof_with_an_authzid_is_a_counted_failed_login():
    client = Client(secure=True)
    scram = ScramClient("bob@example.org", "not the password")
    first = scram.first().replace(b"n,,", b"n,a=eve@example.org,", 1)
    challenge = client.cmd(f'AUTHENTICATE "SCRAM-SHA-256" "{base64.b64encode(first).decode()}"')
    server_first = base64.b64decode(challenge.strip().strip(b'"'))
    final = scram.final(server_first)
    assert client.cmd(f'"{base64.b64encode(final).decode()}"') == b""  # the delay
    client.clock.advance(2.0)
    assert client.take() == b'NO "authentication failed"\r\n'
    assert client.server.failed_logins == 1
