"""The hostile-input campaign's fixtures (the harness lives in tests/support/hostile.py)."""

from tests.support.hostile import hostile_suite

__all__ = ["hostile_suite"]
