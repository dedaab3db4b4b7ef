"""AUTH brute force and credential stuffing: the limits trip, other users' logins do not slow down.

POSTROOM_AUTH_FAIL_LIMIT is 3 in the campaign. Each protocol is attacked from
a loopback address of its own (127.0.0.x), since the counters are shared by
every service; the bystander logs in from 127.0.0.1 meanwhile.
"""

from __future__ import annotations

import base64
import time
from concurrent.futures import ThreadPoolExecutor

from tests.support.hostile import (
    LEDGER,
    PASSWORD,
    Conn,
    Suite,
    address,
    imap_ok,
    no_traceback,
    pop3_ok,
    still_serves,
)

LIMIT = 3


def msa_auth(suite: Suite, user: str, password: str, source: str) -> int:
    with Conn(suite.ports["smtps-465"], tls=True, source=source) as conn:
        assert conn.smtp()[0] == 220
        conn.send(b"EHLO attacker.example\r\n")
        assert conn.smtp()[0] == 250
        token = base64.b64encode(f"\0{user}\0{password}".encode())
        conn.send(b"AUTH PLAIN " + token + b"\r\n")
        code, _ = conn.smtp()
        no_traceback(conn)
        return code


def pop3_login(suite: Suite, user: str, password: str, source: str) -> bytes:
    with Conn(suite.ports["pop3s-995"], tls=True, source=source) as conn:
        assert conn.line().startswith(b"+OK")
        conn.send(f"USER {user}\r\n".encode())
        conn.line()
        conn.send(f"PASS {password}\r\n".encode())
        reply = conn.line()
        no_traceback(conn)
        return reply


def imap_login(suite: Suite, user: str, password: str, source: str) -> bytes:
    with Conn(suite.ports["imaps-993"], tls=True, source=source) as conn:
        assert conn.line().startswith(b"* OK")
        conn.send(f'a LOGIN "{user}" "{password}"\r\n'.encode())
        _, done = conn.tagged(b"a")
        no_traceback(conn)
        return done


def in_parallel(fn, *calls):
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda args: fn(*args), calls))


def timed(fn, *args):
    start = time.monotonic()
    fn(*args)
    return time.monotonic() - start


def test_msa_auth_brute_force_trips_the_limit_and_bystanders_still_log_in(
        hostile_suite: Suite) -> None:
    victim, attacker = address("lock-msa"), "127.0.0.21"
    codes = in_parallel(msa_auth, *[(hostile_suite, victim, f"guess{i}", attacker)
                                    for i in range(LIMIT)])
    assert codes == [535] * LIMIT
    LEDGER.tried_on("smtps-465", LIMIT + 2)
    # the attacker's address is blocked, even with a right password for another account
    LEDGER.check("smtps-465", msa_auth(hostile_suite, address("carol"), PASSWORD, attacker)
                  == 454, "login allowed from a blocked address")
    # the attacked account is blocked from everywhere (per-account counter)
    LEDGER.check("smtps-465", msa_auth(hostile_suite, victim, PASSWORD, "127.0.0.22") == 454,
                 "login allowed to an attacked account")
    assert timed(msa_auth, hostile_suite, address("bob"), PASSWORD, "127.0.0.1") < 2.0
    assert msa_auth(hostile_suite, address("bob"), PASSWORD, "127.0.0.1") == 235
    still_serves(hostile_suite, "smtps-465")


def test_pop3_brute_force_trips_the_limit_and_bystanders_still_log_in(
        hostile_suite: Suite) -> None:
    victim, attacker = address("lock-pop3"), "127.0.0.31"
    replies = in_parallel(pop3_login, *[(hostile_suite, victim, f"guess{i}", attacker)
                                        for i in range(LIMIT)])
    assert all(r.startswith(b"-ERR") for r in replies), replies
    LEDGER.tried_on("pop3s-995", LIMIT + 2)
    reply = pop3_login(hostile_suite, address("carol"), PASSWORD, attacker)
    LEDGER.check("pop3s-995", reply.startswith(b"-ERR"), "login allowed from a blocked address")
    reply = pop3_login(hostile_suite, victim, PASSWORD, "127.0.0.32")
    LEDGER.check("pop3s-995", reply.startswith(b"-ERR"), "login allowed to an attacked account")
    assert timed(pop3_ok, hostile_suite, "bob") < 2.0


def test_imap_brute_force_trips_the_limit_and_bystanders_still_log_in(
        hostile_suite: Suite) -> None:
    victim, attacker = address("lock-imap"), "127.0.0.41"
    replies = in_parallel(imap_login, *[(hostile_suite, victim, f"guess{i}", attacker)
                                        for i in range(LIMIT)])
    assert all(r.startswith(b"a NO") for r in replies), replies
    LEDGER.tried_on("imaps-993", LIMIT + 2)
    reply = imap_login(hostile_suite, address("carol"), PASSWORD, attacker)
    LEDGER.check("imaps-993", reply.startswith(b"a NO"), "login allowed from a blocked address")
    reply = imap_login(hostile_suite, victim, PASSWORD, "127.0.0.42")
    LEDGER.check("imaps-993", reply.startswith(b"a NO"), "login allowed to an attacked account")
    assert timed(imap_ok, hostile_suite, "bob") < 2.0


def test_credential_stuffing_across_accounts_trips_the_address_limit(
        hostile_suite: Suite) -> None:
    attacker = "127.0.0.51"
    replies = in_parallel(imap_login, *[(hostile_suite, f"nobody{i}@hostile.test", PASSWORD,
                                         attacker) for i in range(LIMIT)])
    assert all(r.startswith(b"a NO") for r in replies), replies
    LEDGER.tried_on("imaps-993", LIMIT + 1)
    reply = imap_login(hostile_suite, address("carol"), PASSWORD, attacker)
    LEDGER.check("imaps-993", reply.startswith(b"a NO"),
                 "a stuffed credential worked after the address limit")
    imap_ok(hostile_suite, "carol")
