"""The Redis client type and error that services name, so only ``postroom.queue`` imports redis.

A service receives the client its wiring opened (``ServiceContext.redis``)
and hands it to the functions of ``postroom.queue``; it catches
:data:`RedisError` where Redis trouble has a meaning of its own (451, a
skipped greylist check), and never calls the client itself.
"""

from __future__ import annotations

import redis

RedisClient = redis.Redis
RedisError = redis.RedisError

__all__ = ["RedisClient", "RedisError"]
