"""ManageSieve (port 4190) under hostile input: huge and unterminated literals, garbage
before login, commands injected after STARTTLS. Memory stays bounded, no traceback reaches
the peer, and the service keeps serving a normal client."""

from __future__ import annotations

import base64

from tests.support.hostile import (
    LEDGER,
    PASSWORD,
    Conn,
    Suite,
    address,
    no_traceback,
    still_serves,
)

LISTENER = "sieve-4190"


def greeted(conn: Conn) -> list[bytes]:
    lines = []
    while not (line := conn.line()).startswith(b"OK"):
        lines.append(line)
    return lines


def logged_in(suite: Suite, user: str = "alice") -> Conn:
    conn = Conn(suite.ports[LISTENER])
    greeted(conn)
    conn.send(b"STARTTLS\r\n")
    assert conn.line().startswith(b"OK")
    conn.starttls()
    greeted(conn)
    token = base64.b64encode(f"\0{address(user)}\0{PASSWORD}".encode()).decode()
    conn.send(f'AUTHENTICATE "PLAIN" "{token}"\r\n'.encode())
    assert conn.line().startswith(b"OK")
    return conn


def rss_kib(suite: Suite) -> int:
    process = suite.processes["managesieve"].proc
    assert process is not None
    with open(f"/proc/{process.pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_huge_literal_is_read_and_thrown_away_then_refused_as_quota(
        hostile_suite: Suite) -> None:
    before = rss_kib(hostile_suite)
    with logged_in(hostile_suite) as conn:
        size = 64 * 1024 * 1024
        conn.send(b'PUTSCRIPT "big" {%d+}\r\n' % size)
        chunk = b"#" * (1024 * 1024)
        for _ in range(size // len(chunk)):
            conn.send(chunk)
        conn.send(b"\r\n")
        reply = conn.line()
        assert reply.startswith(b"NO (QUOTA/MAXSIZE)"), reply
        conn.send(b"NOOP\r\n")
        assert conn.line().startswith(b"OK")
        no_traceback(conn)
    LEDGER.tried_on(LISTENER, 1)
    # 64 MiB went through; what the process holds grew by far less
    assert rss_kib(hostile_suite) - before < 16 * 1024
    still_serves(hostile_suite, LISTENER)


def test_a_huge_literal_before_login_is_refused_too(hostile_suite: Suite) -> None:
    with Conn(hostile_suite.ports[LISTENER]) as conn:
        greeted(conn)
        conn.send(b'AUTHENTICATE "PLAIN" {1048576+}\r\n' + b"A" * 1048576 + b"\r\n")
        reply = conn.line()
        assert reply.startswith(b"NO (QUOTA/MAXSIZE)"), reply
        no_traceback(conn)
    LEDGER.tried_on(LISTENER, 1)
    still_serves(hostile_suite, LISTENER)


def test_an_unterminated_literal_holds_only_its_connection(hostile_suite: Suite) -> None:
    conns = [logged_in(hostile_suite) for _ in range(5)]
    try:
        for conn in conns:
            conn.send(b'PUTSCRIPT "half" {60000+}\r\nrequire "fileinto";\r\n')
        # the others are not held up, and the half-sent scripts were never stored
        still_serves(hostile_suite, LISTENER)
        with logged_in(hostile_suite) as other:
            other.send(b"LISTSCRIPTS\r\n")
            while not (line := other.line()).startswith(b"OK"):
                assert b"half" not in line
    finally:
        for conn in conns:
            conn.close()
    LEDGER.tried_on(LISTENER, len(conns))


def test_garbage_before_login_gets_no_and_then_bye(hostile_suite: Suite) -> None:
    with Conn(hostile_suite.ports[LISTENER]) as conn:
        greeted(conn)
        for junk in (b"\x00\x01\x02\xff\xfe", b"GET / HTTP/1.0", b'"unterminated',
                     b"{-1+}", b"LISTSCRIPTS", b'PUTSCRIPT "x" {3+}', b"\x16\x03\x01\x02\x00",
                     b"A" * 20000, b"SETACTIVE", b"\\\\\\", b"HAVESPACE 1 2", b"FOO"):
            conn.send(junk + b"\r\n")
        assert conn.closed(10), conn.received
        assert b"BYE" in conn.received
        no_traceback(conn)
    LEDGER.tried_on(LISTENER, 12)
    still_serves(hostile_suite, LISTENER)


def test_commands_injected_after_starttls_never_run(hostile_suite: Suite) -> None:
    with Conn(hostile_suite.ports[LISTENER]) as conn:
        greeted(conn)
        token = base64.b64encode(f"\0{address('alice')}\0{PASSWORD}".encode()).decode()
        conn.send(f'STARTTLS\r\nAUTHENTICATE "PLAIN" "{token}"\r\n'.encode())
        assert conn.line().startswith(b"OK")
        conn.starttls()
        greeted(conn)
        # the injected AUTHENTICATE did not log us in
        conn.send(b"LISTSCRIPTS\r\n")
        assert conn.line().startswith(b"NO")
        no_traceback(conn)
    LEDGER.tried_on(LISTENER, 1)
    still_serves(hostile_suite, LISTENER)
