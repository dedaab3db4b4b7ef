"""Shared fixtures: each area's fixtures live in tests/support/<area>.py and load here."""

pytest_plugins = [
    "tests.support.ports",
    "tests.support.db",
    "tests.support.redisdb",
    "tests.support.dns",
    "tests.support.procs",
    "tests.support.suite",
    "tests.support.scanners",
    "tests.support.web",
    "tests.support.browser",
]
