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
password, nor tested against guesses, without it. One key per account (the
last verified password): the keys are bounded by the accounts that logged
in within the TTL, and only a verified login writes one.

Blocking (redis-py): callers run these in their Redis thread pool, or in the
credential-change listener's thread.
"""

from __future__ import annotations

import hashlib
import hmac

import redis

# an entry is a MAC and a small payload; anything larger is not one of ours
MAX_VALUE_BYTES = 4096


def key(prefix: str, group_key: bytes, account: str) -> str:
    """The Redis key of ``account``'s (canonical login name) shared entry."""
    digest = hmac.new(group_key, b"account\0" + account.encode("utf-8", "surrogatepass"),
                      hashlib.sha256).hexdigest()
    return f"{prefix}authok:{digest}"


def _tag(group_key: bytes, account: str, mac: bytes, payload: bytes) -> bytes:
    message = b"\0".join((b"login", account.encode("utf-8", "surrogatepass"), mac, payload))
    return hmac.new(group_key, message, hashlib.sha256).hexdigest().encode("ascii")


def store(client: redis.Redis, prefix: str, group_key: bytes, account: str, mac: bytes,
          payload: str, ttl: float) -> None:
    """Remember for ``ttl`` seconds that ``mac``'s password is ``account``'s, with ``payload``
    (raises redis errors)."""
    body = payload.encode("utf-8")
    client.set(key(prefix, group_key, account),
               _tag(group_key, account, mac, body) + b":" + body, px=max(1, int(ttl * 1000)))


def lookup(client: redis.Redis, prefix: str, group_key: bytes, account: str,
           mac: bytes) -> str | None:
    """The payload stored for ``account`` when its MAC is ``mac``; None otherwise (raises
    redis errors)."""
    raw = client.get(key(prefix, group_key, account))
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


def forget(client: redis.Redis, prefix: str, group_key: bytes, account: str) -> None:
    """Drop ``account``'s shared entry (raises redis errors)."""
    client.delete(key(prefix, group_key, account))


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
