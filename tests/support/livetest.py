"""Run IMAPClient's live test suite (``imapclient.livetest``) against a server, minus named tests.

``python -m tests.support.livetest INI [--exclude Class.test ...]`` does what
``python -m imapclient.livetest INI`` does (the same four test classes, the
same configuration file), except that the UID and non-UID copies of the
message tests are named ``TestWithUIDs`` and ``TestWithoutUIDs`` in the
output, and that the tests named by ``--exclude`` are not run. Each exclusion
and its reason is listed in docs/imap.md ("Compliance"); the pytest wrapper
is tests/e2e/test_imap_livetest.py.
"""

from __future__ import annotations

import argparse
import copy
import sys
import unittest

from imapclient import livetest
from imapclient.config import parse_config_file


def build(ini: str, excluded: set[str]) -> unittest.TestSuite:
    """The live tests ``ini`` configures, minus those named ``Class.method`` in ``excluded``."""
    conf = parse_config_file(ini)
    conf.namespace = livetest.probe_host(conf)  # the first personal namespace, as upstream
    livetest.TestGeneral.conf = conf
    livetest.TestSocketTimeout.conf = copy.copy(conf)
    classes: dict[str, type[unittest.TestCase]] = {
        "TestGeneral": livetest.TestGeneral,
        "TestSocketTimeout": livetest.TestSocketTimeout,
        "TestWithUIDs": livetest.createUidTestClass(conf, use_uid=True),
        "TestWithoutUIDs": livetest.createUidTestClass(conf, use_uid=False),
    }
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    unknown = set(excluded)
    for name, klass in classes.items():
        klass.__name__ = klass.__qualname__ = name  # test ids read Class.method, not <locals>
        for method in loader.getTestCaseNames(klass):
            test_name = f"{name}.{method}"
            unknown.discard(test_name)
            if test_name not in excluded:
                suite.addTest(klass(method))
    if unknown:
        raise SystemExit(f"no such live tests to exclude: {sorted(unknown)}")
    return suite


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ini", help="imapclient livetest INI file")
    parser.add_argument("--exclude", action="append", default=[], metavar="Class.test")
    args = parser.parse_args(argv)
    suite = build(args.ini, set(args.exclude))
    result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(suite)
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
