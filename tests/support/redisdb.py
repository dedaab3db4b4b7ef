"""Fixtures: redisdb (filled in by its area)."""
