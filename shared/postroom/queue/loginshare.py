"""Verified logins shared by the processes of one service group: one Redis key per account.

With ``postroom serve NAME --processes N`` each worker has its own login
cache (postroom.auth.authcache), and the kernel spreads a client's
connections over the workers, so an account's first login cost a scrypt
check in every worker (54 ms of CPU each, with the default parameters). A
worker that has checked a password keeps the fact here for the cache's TTL,
and the other workers read it instead of checking again.

``<prefix>authok:<hex>``, where ``<hex>`` is HMAC-SHA256 of the canonical
account under the group's key, holds ``<tag>:<payload>``: the payload is the
account's info as the caller encodes it, and ``tag`` an HMAC under the same
key of the account, the login cache's HMAC of the password and the payload.
A lookup recomputes the tag from the password it is given, so an entry is
found only with the right password, and one whose payload was changed in
Redis (another account's id put in) is not found at all. The key is drawn at
random by the group's parent and handed to its workers only
(``POSTROOM_GROUP_KEY``, :data:`postroom.config.NOT_SETTINGS`); it never
reaches Redis, so what is stored there cannot be turned back into a
password, nor tested against guesses, without it. One entry per account (the
last verified password): the entries are bounded by the accounts that logged
in within the TTL, and only a verified login writes one.

``<prefix>authgen:<hex>`` counts the times the account's entry was forgotten
(:func:`forget`, every worker's listener on an announced change, and a failed
login). :func:`lookup` reads it with the entry, before the login reads the
account, and :func:`store` writes only when it is still what was read (one
script): a login that read the account before a change committed, whose
lookup came before the change was announced, cannot store once any worker
has forgotten the entry, so after its own listener's :func:`forget` a worker
finds no entry of the old password, whichever worker verified it. The
counter outlives its last forget by ``keep`` seconds, longer than a login
may take between its look-up and its store (the caller passes twice its
TTL, and shares no login looked up longer ago than the TTL): a name that
is no account's, tried and failed, costs a small key for that long.

Blocking (redis-py): callers run these in their Redis thread pool, or in the
credential-change listener's thread.
"""

from __future__ import annotations

import hashlib
import hmac
import weakref
from typing import NamedTuple

import redis
from redis.commands.core import Script

# an entry is a MAC and a small payload; anything larger is not one of ours
MAX_VALUE_BYTES = 4096

# the entry, only if the forget counter is still the one the login's lookup read
_STORE = """
local now = redis.call('GET', KEYS[2]) or ''
if now ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# the script registered once per client (EVALSHA, loaded again on NOSCRIPT), as the queue's
_scripts: weakref.WeakKeyDictionary[redis.Redis, Script] = weakref.WeakKeyDictionary()


def _store_script(client: redis.Redis) -> Script:
    script = _scripts.get(client)
    if script is None:
        # two threads racing here register two equal scripts: the dictionary keeps one
        script = _scripts.setdefault(client, client.register_script(_STORE))
    return script


class Found(NamedTuple):
    """What :func:`lookup` read: the payload (None: no entry for this password) and the
    account's forget counter, to hand to :func:`store`."""

    payload: str | None
    generation: str


def _digest(group_key: bytes, account: str) -> str:
    return hmac.new(group_key, b"account\0" + account.encode("utf-8", "surrogatepass"),
                    hashlib.sha256).hexdigest()


def key(prefix: str, group_key: bytes, account: str) -> str:
    """The Redis key of ``account``'s (canonical login name) shared entry."""
    return f"{prefix}authok:{_digest(group_key, account)}"


def generation_key(prefix: str, group_key: bytes, account: str) -> str:
    """The Redis key of ``account``'s forget counter."""
    return f"{prefix}authgen:{_digest(group_key, account)}"


def _text(raw: object) -> str:
    if isinstance(raw, bytes):
        return raw.decode("ascii", "replace")
    return raw if isinstance(raw, str) else ""


def _tag(group_key: bytes, account: str, mac: bytes, payload: bytes) -> bytes:
    message = b"\0".join((b"login", account.encode("utf-8", "surrogatepass"), mac, payload))
    return hmac.new(group_key, message, hashlib.sha256).hexdigest().encode("ascii")


def store(client: redis.Redis, prefix: str, group_key: bytes, account: str, mac: bytes,
          payload: str, ttl: float, generation: str) -> bool:
    """Remember for ``ttl`` seconds that ``mac``'s password is ``account``'s, with ``payload``,
    unless the entry was forgotten since ``generation`` was read (:func:`lookup`); whether
    it was stored (raises redis errors)."""
    body = payload.encode("utf-8")
    value = _tag(group_key, account, mac, body) + b":" + body
    keys = [key(prefix, group_key, account), generation_key(prefix, group_key, account)]
    return bool(_store_script(client)(keys, [value, max(1, int(ttl * 1000)), generation]))


def lookup(client: redis.Redis, prefix: str, group_key: bytes, account: str,
           mac: bytes) -> Found:
    """The payload stored for ``account`` when its MAC is ``mac`` (else None), and the
    account's forget counter (one round trip; raises redis errors)."""
    raw, generation = client.mget(key(prefix, group_key, account),
                                  generation_key(prefix, group_key, account))
    return Found(_payload(raw, group_key, account, mac), _text(generation))


def _payload(raw: object, group_key: bytes, account: str, mac: bytes) -> str | None:
    if isinstance(raw, str):  # a client made with decode_responses
        raw = raw.encode("utf-8", "surrogateescape")
    if not isinstance(raw, bytes) or len(raw) > MAX_VALUE_BYTES:
        return None
    stored, sep, payload = raw.partition(b":")
    if not sep or not hmac.compare_digest(stored, _tag(group_key, account, mac, payload)):
        return None
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return None


def forget(client: redis.Redis, prefix: str, group_key: bytes, account: str,
           keep: float) -> None:
    """Drop ``account``'s shared entry and move its forget counter (kept ``keep`` seconds),
    so that no login looked up before can store one (raises redis errors)."""
    counter = generation_key(prefix, group_key, account)
    with client.pipeline(transaction=True) as pipe:
        pipe.incr(counter)
        pipe.pexpire(counter, max(1, int(keep * 1000)))
        pipe.delete(key(prefix, group_key, account))
        pipe.execute()


def forget_all(client: redis.Redis, prefix: str, batch: int = 500) -> int:
    """Drop every shared entry under ``prefix`` (a listener that was away); how many."""
    removed = 0
    names: list[bytes] = []
    for name in client.scan_iter(match=f"{prefix}authok:*", count=batch):
        names.append(name)
        if len(names) >= batch:
            removed += int(client.delete(*names))
            names = []
    if names:
        removed += int(client.delete(*names))
    return removed
