"""The password check of a login with no database transaction open while it hashes (decision 0027).

:func:`authenticate` is what the protocol services (imap, pop3, msa, managesieve)
and the web console's first factor call: it reads the account in one autocommit
statement on the `db` pool (:func:`postroom.store.apppasswords.read_login`),
checks the hash on this process's small `hash` pool with no pooled connection
held (:func:`~postroom.store.apppasswords.check_login`: scrypt, 16 MiB and
about 54 ms of CPU each, releasing the GIL), and only when the login writes
something (an app password's last use, a hash made with old parameters) writes
it in a short transaction of its own that checks first that the account is as
it was read (:func:`~postroom.store.apppasswords.finish_login`); if not, it
checks again against what it finds, at most ``LOGIN_ROUNDS`` times, then fails
as a wrong password would.

The `hash` pool has as many threads as the process may use CPUs, at most
:data:`MAX_HASH_THREADS`: more concurrent scrypt checks than cores only make
each one slower and hold 16 MiB more; the others wait in the pool's queue,
holding nothing.

A service with a login cache passes it (``cache``, and imap its group's
:class:`~postroom.auth.authcache.SharedLogins` through ``share``): the cache's
ticket is taken here before the account is read, and the accepted login is
remembered with it, so a login that read the account before a password change
and finished after the change's announcement emptied the cache does not put
the old password back (postroom.auth.authcache). Taking the ticket before the
read is this function's job, not each service's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool

from postroom.auth.authcache import AuthCache, Ticket
from postroom.auth.passwords import hash_password
from postroom.interfaces import defer_to_pool
from postroom.store import apppasswords, users
from postroom.store.db import Database

MAX_HASH_THREADS = 4

_pool: ThreadPool | None = None


def hash_threads() -> int:
    """The `hash` pool's size: the CPUs this process may run on, 1 to MAX_HASH_THREADS."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_HASH_THREADS, cpus))


def hash_pool(reactor: Any) -> ThreadPool:
    """The process's `hash` pool, started on first use and stopped when the reactor stops."""
    global _pool
    if _pool is None or not _pool.started:
        pool = ThreadPool(minthreads=0, maxthreads=hash_threads(), name="hash")
        pool.start()
        reactor.addSystemEventTrigger("during", "shutdown", pool.stop)
        _pool = pool
    return _pool


async def authenticate(database: Database, address: str, password: str, *,
                       protocol: str | None, peer: str | None = None,
                       hash_fn: users.HashFn = hash_password,
                       cache: AuthCache[users.UserInfo] | None = None,
                       share: Callable[[users.UserInfo, Ticket], object] | None = None,
                       ) -> apppasswords.Login:
    """:func:`postroom.store.apppasswords.authenticate`'s answer, the hash checked outside any
    transaction; ``protocol`` None: the web console's first factor (the main password
    only; two-factor accounts get their info, the console asks for the code).

    ``cache``: an accepted login is put there with the ticket taken before the read,
    and handed with it to ``share`` (imap: its group's shared logins) when that put
    held. Database errors fail the Deferred as :meth:`Database.run` does."""
    ticket = cache.ticket(address) if cache is not None else None
    login = await check(database, address, password, protocol=protocol, peer=peer,
                        hash_fn=hash_fn)
    if cache is not None and ticket is not None and login.user is not None:
        if cache.put(address, password, login.user, ticket=ticket) and share is not None:
            share(login.user, ticket)
    return login


async def check(database: Database, address: str, password: str, *,
                protocol: str | None, peer: str | None = None,
                hash_fn: users.HashFn = hash_password) -> apppasswords.Login:
    """The login's three steps (read, check on the hash pool, write if need be), with no
    cache: what :func:`authenticate` runs between taking the ticket and the put."""
    reactor = database.reactor
    read = await database.run_read(apppasswords.read_login, address, password,
                                   protocol=protocol)
    for _ in range(apppasswords.LOGIN_ROUNDS):
        checked: apppasswords.LoginChecked = await _in_hash_pool(
            reactor, apppasswords.check_login, read, password, protocol=protocol,
            hash_fn=hash_fn)
        if not apppasswords.needs_finish(checked):
            return checked.login
        done = await database.run(apppasswords.finish_login, checked, address, password,
                                  protocol=protocol, peer=peer)
        if isinstance(done, apppasswords.Login):
            return done
        read = done
    return apppasswords.Login(None)


def _in_hash_pool(reactor: Any, fn: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
    return defer_to_pool(reactor, hash_pool(reactor), fn, *args, **kwargs)
