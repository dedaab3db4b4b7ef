"""The "credentials changed" signal: published when an account's logins must be checked anew
(an app password revoked, the password changed, two-factor login turned on or off, the
account disabled) or a domain's DKIM keys changed, heard by every process that caches
verified logins or signing keys.

One pub/sub channel, ``<prefix>auth:changed``; the body is the account's
address as UTF-8, or ``@`` and a domain name for that domain's DKIM keys
(:func:`publish_dkim`; no address starts with ``@``, so the login caches
find nothing of theirs in it). Like mailbox change events it is only a signal: a process
that misses it (Redis away, the listener reconnecting) still forgets cached
logins when their TTL ends, and the listener empties its cache whenever it
(re)subscribes, so nothing published while it was away can be missed for
longer than that (postroom.auth.authcache.CacheInvalidation).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import redis

# an address is at most 254 octets (RFC 5321); anything much longer is not ours
MAX_BODY_BYTES = 1024


def channel(prefix: str) -> str:
    """The pub/sub channel of credential changes."""
    return f"{prefix}auth:changed"


def publish(client: redis.Redis, prefix: str, address: str) -> int:
    """Announce that ``address``'s cached logins must be forgotten (blocking; raises redis
    errors); how many processes listened."""
    return int(client.publish(channel(prefix), address.encode("utf-8")))  # type: ignore[arg-type]


def dkim_subject(domain: str) -> str:
    """The body announcing that ``domain``'s DKIM keys changed."""
    return "@" + domain.lower().rstrip(".")


def is_dkim_subject(body: str) -> bool:
    return body.startswith("@")


def publish_dkim(client: redis.Redis, prefix: str, domain: str) -> int:
    """Announce that ``domain``'s DKIM keys changed (generated, rotated, activated, retired,
    re-encrypted): the msa forgets its cached signing keys (postroom.mailauth.keycache)."""
    return publish(client, prefix, dkim_subject(domain))


def listen(client: redis.Redis, prefix: str, stop: threading.Event,
           on_change: Callable[[str], None], *, on_subscribed: Callable[[], None] | None = None,
           poll: float = 1.0) -> None:
    """Call ``on_change(address)`` for every announcement until ``stop`` is set.

    Blocking, for one dedicated thread. ``on_subscribed`` is called once the
    subscription is in place (announcements from then on are heard). Raises
    redis errors (and OSError) when the connection is lost.
    """
    pubsub = client.pubsub()
    try:
        pubsub.subscribe(channel(prefix))
        # the subscription is confirmed by its first reply: only then is nothing missed
        while not stop.is_set():
            reply = pubsub.get_message(timeout=poll)
            if reply is not None and reply.get("type") == "subscribe":
                break
        if on_subscribed is not None and not stop.is_set():
            on_subscribed()
        while not stop.is_set():
            message = pubsub.get_message(timeout=poll)
            if message is None or message.get("type") != "message":
                continue
            data = message.get("data")
            if isinstance(data, bytes) and 0 < len(data) <= MAX_BODY_BYTES:
                on_change(data.decode("utf-8", "replace"))
            elif isinstance(data, str) and 0 < len(data) <= MAX_BODY_BYTES:
                on_change(data)
    finally:
        try:
            pubsub.close()
        except (redis.RedisError, OSError):
            pass
