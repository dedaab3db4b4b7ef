"""LIST/LSUB wildcards from a logged-in user: answered at once, never freezing other sessions.

LIST used to turn each ``*`` into ``.*`` and each ``%`` into ``[^/]*`` and run
the regex on the reactor thread: ``LIST "" **...*x`` (50 stars, or runs of
``*%``) backtracked for minutes over a folder name of 20 characters, and every
session of that imap process froze meanwhile. Now runs of wildcards collapse,
matching is linear (postroom.glob), a pattern may hold 32 wildcards (``NO
[LIMIT]`` past that) and a LIST over many mailboxes runs in a thread.

alice (any account will do) attacks; carol is a bystander whose NOOP must be
answered while alice's LIST is in progress. Reads time out after a few seconds,
so the test fails fast (rather than hanging) against a server that freezes.
"""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from postroom.auth.passwords import hash_password
from postroom.store import mailboxes, users
from tests.support.hostile import (
    DOMAIN,
    LEDGER,
    PASSWORD,
    Conn,
    Suite,
    address,
    no_traceback,
)

LISTENER = "imaps-993"
READ_TIMEOUT = 5.0  # a frozen reactor fails the test here, it does not hang it
PATTERNS = [b"*" * 50 + b"x", b"*%" * 25 + b"x", b"%*" * 25 + b"/x", b"%" * 50 + b"x",
            b"Glob*" + b"*%" * 25 + b"Nowhere", b'"' + b"*" * 50 + b'"']


@contextmanager
def session(suite: Suite, login: str) -> Iterator[Conn]:
    conn = Conn(suite.ports[LISTENER], tls=True, timeout=READ_TIMEOUT)
    try:
        assert conn.line().startswith(b"* OK")
        conn.send(f'a LOGIN "{login}" "{PASSWORD}"\r\n'.encode())
        assert conn.tagged(b"a")[1].startswith(b"a OK")
        yield conn
        no_traceback(conn)
    finally:
        conn.close()


def long_folder(conn: Conn) -> None:
    """A folder name long enough that the backtracking regex never came back."""
    conn.send(b'c CREATE "Glob-Long-Folder-Name/With-A-Child"\r\n')
    done = conn.tagged(b"c")[1]
    assert done.startswith(b"c OK") or b"ALREADYEXISTS" in done, done


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p[:12].decode())
def test_pathological_list_is_answered_at_once_while_others_are_served(
        hostile_suite: Suite, pattern: bytes) -> None:
    with session(hostile_suite, address("alice")) as attacker, \
            session(hostile_suite, address("carol")) as bystander:
        long_folder(attacker)
        for verb in (b"LIST", b"LSUB"):
            LEDGER.tried_on(LISTENER)
            started = time.monotonic()
            attacker.send(b'l ' + verb + b' "" ' + pattern + b"\r\n")
            bystander.send(b"n NOOP\r\n")
            assert bystander.tagged(b"n")[1].startswith(b"n OK")
            waited = time.monotonic() - started
            untagged, done = attacker.tagged(b"l")
            took = time.monotonic() - started
            assert done == b"l OK " + verb + b" completed", done
            assert all(line.startswith(b"* " + verb) for line in untagged), untagged
            assert waited < 2.0 and took < 2.0, (waited, took)
        attacker.send(b"n NOOP\r\n")
        assert attacker.tagged(b"n")[1].startswith(b"n OK")


def test_a_pattern_with_too_many_wildcards_gets_no_limit(hostile_suite: Suite) -> None:
    with session(hostile_suite, address("alice")) as attacker:
        for command in (b'LIST "" ' + b"a*" * 33, b"LSUB " + b"a%" * 20 + b" " + b"b*" * 20,
                        b'LIST "" (' + b" ".join(b"p%d" % i for i in range(65)) + b")",
                        b'LIST "" "' + b"x" * 1100 + b'"'):
            LEDGER.tried_on(LISTENER)
            attacker.send(b"l " + command + b"\r\n")
            untagged, done = attacker.tagged(b"l")
            assert untagged == [] and done.startswith(b"l NO [LIMIT] "), done
        attacker.send(b'l LIST "" "' + b"*a" * 32 + b'"\r\n')  # at the cap: answered
        assert attacker.tagged(b"l")[1] == b"l OK LIST completed"


@pytest.fixture(scope="module")
def hoarder(hostile_suite: Suite) -> str:
    """An account of its own with 1000 folders (alice's listings stay small)."""
    login = f"glob-{secrets.token_hex(3)}@{DOMAIN}"
    database = hostile_suite.database
    user = database.run_sync(users.add_user, login, PASSWORD,
                             hash_fn=functools.partial(hash_password, ln=4))

    def folders(db_session: Any) -> None:
        for i in range(1000):
            mailboxes.create_mailbox(db_session, user.id, f"Projects/{i:04d}/Hoarded-Folder")
    database.run_sync(folders)
    return login


def test_a_large_listing_runs_off_the_reactor(hostile_suite: Suite, hoarder: str) -> None:
    # 48 patterns of 16 wildcards (that never match) and "*" over 2007 names: a second or
    # two of matching and rendering, done in a thread while carol's NOOPs are answered
    hard = b" ".join(b'"' + b"*e%e" * 4 + b"%d" + str(i).encode() + b'"' for i in range(48))
    with session(hostile_suite, hoarder) as user, \
            session(hostile_suite, address("carol")) as bystander:
        LEDGER.tried_on(LISTENER)
        user.sock.settimeout(120)
        started = time.monotonic()
        user.send(b'l LIST "" (' + hard + b' "*")\r\n')
        time.sleep(0.1)
        latencies = []
        while not user.buffer and len(latencies) < 50:
            sent = time.monotonic()
            bystander.send(b"n NOOP\r\n")
            assert bystander.tagged(b"n")[1].startswith(b"n OK")
            latencies.append(time.monotonic() - sent)
            user.sock.settimeout(0.05)
            try:
                user._fill()
            except TimeoutError:
                pass
            user.sock.settimeout(120)
        untagged, done = user.tagged(b"l")
        took = time.monotonic() - started
        assert done == b"l OK LIST completed"
        assert len(untagged) == 6 + 1 + 1000 * 2, len(untagged)  # defaults, the whole tree
        print(f"\nLIST of {len(untagged)} names, 49 patterns: {took:.2f} s; bystander NOOPs "
              f"meanwhile: {len(latencies)}, slowest {max(latencies) * 1000:.0f} ms")
        assert latencies and max(latencies) < 0.5, latencies  # at least one NOOP answered meanwhile
