"""The greylisting triplets in Redis: one key per (client network, sender, recipient), blocking.

Each key holds the time the triplet was first seen; it lives for
:data:`RETRY_WINDOW` while the sender has not retried and for
:data:`PASS_TTL` once a retry after the delay has passed. Every call blocks on
the network: run it in a thread pool, never on the reactor.
"""

from __future__ import annotations

import hashlib
import ipaddress
import time

import redis

from postroom.net.peers import parse_ip

# how long a first sighting waits for its retry, and how long a passed triplet is remembered
RETRY_WINDOW = 2 * 86400
PASS_TTL = 36 * 86400


def client_network(ip: str) -> str:
    """The network greylisting keys on: /24 for IPv4, /64 for IPv6 (the address if unparsable)."""
    address = parse_ip(ip)
    if address is None:
        return ip
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def triplet_key(prefix: str, ip: str, sender: str, recipient: str) -> str:
    """The Redis key of a triplet (hashed: addresses are long and peer-controlled)."""
    raw = "\0".join((client_network(ip), sender.lower(), recipient.lower())).encode("utf-8")
    return f"{prefix}greylist:{hashlib.sha256(raw).hexdigest()[:32]}"


def check_triplet(client: redis.Redis, key: str, delay: float, now: float | None = None) -> bool:
    """True when the triplet may pass now (blocking: run it in a thread)."""
    now = time.time() if now is None else now
    if client.set(key, repr(now), nx=True, ex=RETRY_WINDOW):
        return False
    first = client.get(key)
    if first is None:  # expired between the two calls: a new sighting
        client.set(key, repr(now), ex=RETRY_WINDOW)
        return False
    first_seen = float(first.decode() if isinstance(first, bytes) else first)  # type: ignore[union-attr]
    if now - first_seen < delay:
        return False
    client.expire(key, PASS_TTL)
    return True
