"""AUTH brute force and credential stuffing: the limits trip, other users' logins do not slow down.

In the campaign POSTROOM_AUTH_FAIL_LIMIT is 3 (failures of one account from one
client) and POSTROOM_AUTH_ADDRESS_FAIL_LIMIT 6 (failures from one client across
accounts). Each protocol is attacked from a loopback address of its own
(127.0.0.x), since the counters are shared by every service; the bystander logs
in from 127.0.0.1 meanwhile. A lock is the (client, account) pair's only: the
attacked account still logs in from elsewhere, and other accounts from the
attacker's address (the office behind one NAT). The spelling attacks spread
their failures over names that log in to one account (case, ``<>``, trailing
dots, a full-width domain) from one address, so that a per-spelling counter
would never trip.
"""

from __future__ import annotations

import base64
import functools
import time
from concurrent.futures import ThreadPoolExecutor

from postroom.auth.passwords import hash_password
from postroom.store import users
from tests.support.hostile import (
    DOMAIN,
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
ADDRESS_LIMIT = 6


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
    # the pair is locked, even with the right password
    LEDGER.check("smtps-465", msa_auth(hostile_suite, victim, PASSWORD, attacker) == 454,
                 "login allowed to a locked (address, account) pair")
    # the lock is the pair's only: another account from the same address, the account from
    # elsewhere (a lock per account would let anyone lock anyone out)
    assert msa_auth(hostile_suite, address("carol"), PASSWORD, attacker) == 235
    assert msa_auth(hostile_suite, victim, PASSWORD, "127.0.0.22") == 235
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
    reply = pop3_login(hostile_suite, victim, PASSWORD, attacker)
    LEDGER.check("pop3s-995", reply.startswith(b"-ERR [LOGIN-DELAY]"),
                 "login allowed to a locked (address, account) pair")
    assert pop3_login(hostile_suite, address("carol"), PASSWORD, attacker).startswith(b"+OK")
    assert pop3_login(hostile_suite, victim, PASSWORD, "127.0.0.32").startswith(b"+OK")
    assert timed(pop3_ok, hostile_suite, "bob") < 2.0


def test_imap_brute_force_trips_the_limit_and_bystanders_still_log_in(
        hostile_suite: Suite) -> None:
    victim, attacker = address("lock-imap"), "127.0.0.41"
    replies = in_parallel(imap_login, *[(hostile_suite, victim, f"guess{i}", attacker)
                                        for i in range(LIMIT)])
    assert all(r.startswith(b"a NO") for r in replies), replies
    LEDGER.tried_on("imaps-993", LIMIT + 2)
    reply = imap_login(hostile_suite, victim, PASSWORD, attacker)
    LEDGER.check("imaps-993", reply.startswith(b"a NO"),
                 "login allowed to a locked (address, account) pair")
    assert imap_login(hostile_suite, address("carol"), PASSWORD, attacker).startswith(b"a OK")
    assert imap_login(hostile_suite, victim, PASSWORD, "127.0.0.42").startswith(b"a OK")
    assert timed(imap_ok, hostile_suite, "bob") < 2.0


def test_credential_stuffing_across_accounts_trips_the_address_limit(
        hostile_suite: Suite) -> None:
    attacker = "127.0.0.51"
    replies = in_parallel(imap_login, *[(hostile_suite, f"nobody{i}@hostile.test", PASSWORD,
                                         attacker) for i in range(ADDRESS_LIMIT)])
    assert all(r.startswith(b"a NO") for r in replies), replies
    LEDGER.tried_on("imaps-993", ADDRESS_LIMIT + 1)
    reply = imap_login(hostile_suite, address("carol"), PASSWORD, attacker)
    LEDGER.check("imaps-993", reply.startswith(b"a NO"),
                 "a stuffed credential worked after the address limit")
    imap_ok(hostile_suite, "carol")


# names that login resolves to one account, each spelt differently after strip().lower()
FULL_WIDTH_DOMAIN = "".join("\uff0e" if c == "." else chr(ord(c) + 0xFEE0) for c in DOMAIN)


def spellings(user: str) -> list[str]:
    return [f"{user.upper()}@{DOMAIN}.", f"<{user}@{DOMAIN}>", f"{user}@{FULL_WIDTH_DOMAIN}",
            f"{user}@{DOMAIN}....", f"{user}@{DOMAIN}"]


def new_account(suite: Suite, user: str) -> str:
    cheap = functools.partial(hash_password, ln=4)
    suite.database.run_sync(users.add_user, address(user), PASSWORD, hash_fn=cheap)
    return user


def test_msa_failures_over_spellings_lock_the_one_account(
        hostile_suite: Suite) -> None:
    names = spellings(new_account(hostile_suite, "spell-msa"))
    sources = ["127.0.0.61"] * 5  # one client: the lock is per (client, account)
    # every spelling logs in: they are one account (and the counters start clean)
    codes = in_parallel(msa_auth, *[(hostile_suite, name, f"guess{i}", source) for i, (
        name, source) in enumerate(zip(names[:LIMIT], sources, strict=False))])
    assert codes == [535] * LIMIT
    LEDGER.tried_on("smtps-465", LIMIT + 2)
    for name, source in zip(names[LIMIT:], sources[LIMIT:], strict=True):
        LEDGER.check("smtps-465", msa_auth(hostile_suite, name, PASSWORD, source) == 454,
                     f"login as {name!r} allowed after failures under other spellings")


def test_pop3_failures_over_spellings_lock_the_one_account(
        hostile_suite: Suite) -> None:
    names = spellings(new_account(hostile_suite, "spell-pop3"))
    sources = ["127.0.0.71"] * 5  # one client: the lock is per (client, account)
    replies = in_parallel(pop3_login, *[(hostile_suite, name, f"guess{i}", source) for i, (
        name, source) in enumerate(zip(names[:LIMIT], sources, strict=False))])
    assert all(r.startswith(b"-ERR") for r in replies), replies
    LEDGER.tried_on("pop3s-995", LIMIT + 2)
    for name, source in zip(names[LIMIT:], sources[LIMIT:], strict=True):
        reply = pop3_login(hostile_suite, name, PASSWORD, source)
        LEDGER.check("pop3s-995", reply.startswith(b"-ERR"),
                     f"login as {name!r} allowed after failures under other spellings")


def test_imap_failures_over_spellings_lock_the_one_account(
        hostile_suite: Suite) -> None:
    names = spellings(new_account(hostile_suite, "spell-imap"))
    sources = ["127.0.0.81"] * 5  # one client: the lock is per (client, account)
    replies = in_parallel(imap_login, *[(hostile_suite, name, f"guess{i}", source) for i, (
        name, source) in enumerate(zip(names[:LIMIT], sources, strict=False))])
    assert all(r.startswith(b"a NO") for r in replies), replies
    LEDGER.tried_on("imaps-993", LIMIT + 2)
    for name, source in zip(names[LIMIT:], sources[LIMIT:], strict=True):
        reply = imap_login(hostile_suite, name, PASSWORD, source)
        LEDGER.check("imaps-993", reply.startswith(b"a NO"),
                     f"login as {name!r} allowed after failures under other spellings")


def test_every_spelling_of_an_account_logs_in(hostile_suite: Suite) -> None:
    # the other side of the limit: these really are one account to login resolution
    names = spellings(new_account(hostile_suite, "spell-ok"))
    assert [msa_auth(hostile_suite, name, PASSWORD, "127.0.0.1") for name in names] == [
        235] * len(names)
    assert all(imap_login(hostile_suite, name, PASSWORD, "127.0.0.1").startswith(b"a OK")
               for name in names)


def test_stuffing_an_unknown_account_under_many_spellings_is_counted_as_one(
        hostile_suite: Suite) -> None:
    # as for a real account: whether the name exists changes nothing in the answers
    names = spellings("ghost")
    sources = ["127.0.0.91"] * 5
    codes = [msa_auth(hostile_suite, name, PASSWORD, source)
             for name, source in zip(names, sources, strict=True)]
    LEDGER.tried_on("smtps-465", len(names))
    LEDGER.check("smtps-465", codes == [535] * LIMIT + [454] * (len(names) - LIMIT),
                 f"unknown-account spellings counted apart: {codes}")
