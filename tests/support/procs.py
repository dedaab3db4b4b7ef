"""Fixtures: procs (filled in by its area)."""
