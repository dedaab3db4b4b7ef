"""Fixtures: db (filled in by its area)."""
