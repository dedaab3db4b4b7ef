"""Fixtures: dns (filled in by its area)."""
