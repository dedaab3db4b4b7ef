"""Workload 6: SMTP inbound end to end with content filtering (rspamd + clamd) against without.

The same smtp-source load as workload 1 into Postroom's port 25, once with
POSTROOM_RSPAMD_URL and POSTROOM_CLAMD_ADDRESS pointing at a real rspamd and
clamd on loopback (Debian's packages, configured as the tests configure them:
tests/support/scanners.py) and once with neither, runs alternating. The
"peer" column is Postroom without filtering; the printed cost per message is
the difference of the two delivered rates' inverses. Postfix with rspamd as a
milter is not compared here (not set up on loopback yet).
"""

from __future__ import annotations

import sys

from common import REPO, Skip, progress
from postroom_suite import PostroomSuite

from workloads.base import Context, Row
from workloads.smtp_load import load_and_wait

NAME = "smtp_filter"
TITLE = "6. SMTP inbound with rspamd + clamd against without (smtp-source -s 20 -m N -l 2048)"


def run(ctx: Context) -> list[Row]:
    ctx.need_services("mta", "mda", "dmarc")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    try:
        from tests.support.scanners import ClamdServer, RspamdServer
    except ImportError as exc:  # the test extra is not installed
        raise Skip(f"tests/support/scanners.py unavailable: {exc}") from exc
    n = ctx.messages
    accept = Row(NAME, "accept rate", "msg/s", "Postroom unfiltered")
    delivered = Row(NAME, "delivered rate", "msg/s", "Postroom unfiltered")
    timeout = max(120.0, n / 4)
    rspamd, clamd = RspamdServer(), ClamdServer(max_stream="25M")
    try:
        progress("  starting rspamd and clamd on loopback")
        rspamd.start()
        clamd.start()
        filtered = {"POSTROOM_RSPAMD_URL": rspamd.url, "POSTROOM_CLAMD_ADDRESS": clamd.address}
        with PostroomSuite(["dmarc", "mta", "mda"], replicas=ctx.replicas,
                           extra_env=filtered) as on, \
                PostroomSuite(["dmarc", "mta", "mda"], replicas=ctx.replicas) as off:
            for i in range(ctx.runs):
                if not ctx.another_run(i):
                    progress(f"  budget: stopping after {i} run(s)")
                    break
                a, d = load_and_wait(on.ports["mta"], on.user(0), n, on.delivered, timeout)
                accept.postroom.append(n / a)
                delivered.postroom.append(n / d)
                a2, d2 = load_and_wait(off.ports["mta"], off.user(0), n, off.delivered, timeout)
                accept.peer_runs.append(n / a2)
                delivered.peer_runs.append(n / d2)
                cost = (d - d2) / n * 1000
                progress(f"  run {i + 1}: filtered {n / d:.0f} msg/s, unfiltered {n / d2:.0f} "
                         f"msg/s delivered; filtering costs {cost:.1f} ms per message")
    finally:
        clamd.close()
        rspamd.stop()
    delivered.note = "cost per message = 1/filtered - 1/unfiltered delivered rate"
    return [accept, delivered]
