"""Workload 6: SMTP inbound end to end with content filtering (rspamd + clamd) against without.

The same smtp-source load as workload 1 into Postroom's port 25, once with
POSTROOM_RSPAMD_URL and POSTROOM_CLAMD_ADDRESS pointing at a real rspamd and
clamd on loopback (Debian's packages, configured as the tests configure them:
tests/support/scanners.py) and once with neither, runs alternating. The
"peer" column is Postroom without filtering; the printed cost per message is
the difference of the two delivered rates' inverses. Against Postfix the
comparison is at accept time (Postfix to `discard:`, with and without rspamd
as its milter: rspamd's proxy worker in self-scan mode, whose antivirus
module asks the same clamd), since both filter before their 250.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from common import REPO, Skip, progress
from peers.postfix import Postfix
from postroom_suite import PostroomSuite

from workloads.base import Context, Row
from workloads.smtp_load import load_and_wait, smtp_source

if TYPE_CHECKING:
    from tests.support.scanners import RspamdServer

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
    # accept-only against Postfix (to `discard:`), whose milter runs before its 250 too
    cost = Row(NAME, "filtering cost at accept", "ms/msg", "Postfix+rspamd milter",
               higher_is_better=False)
    timeout = max(120.0, n / 4)
    clamd = ClamdServer(max_stream="25M")
    rspamd: RspamdServer | None = None
    try:
        progress("  starting clamd and rspamd (with a milter proxy) on loopback")
        clamd.start()
        rspamd = RspamdServer(milter=True, clamd_address=clamd.address)
        rspamd.start()
        filtered = {"POSTROOM_RSPAMD_URL": rspamd.url, "POSTROOM_CLAMD_ADDRESS": clamd.address}
        with PostroomSuite(["dmarc", "mta", "mda"], replicas=ctx.replicas,
                           extra_env=filtered) as on, \
                PostroomSuite(["dmarc", "mta", "mda"], replicas=ctx.replicas) as off:
            user = on.user(0)  # the same address is Dovecot's user (bench.test)
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
                cost.postroom.append((a - a2) / n * 1000)
                progress(f"  run {i + 1} postroom: filtered {n / d:.0f} msg/s, unfiltered "
                         f"{n / d2:.0f} msg/s delivered; filtering costs "
                         f"{(d - d2) / n * 1000:.1f} ms per message")
        if Postfix.available():
            progress(f"  no Postfix comparison: {Postfix.available()}")
        else:
            _postfix_runs(ctx, n, timeout, rspamd, user, cost)
    finally:
        if rspamd is not None:
            rspamd.stop()
        clamd.close()
    delivered.note = "cost per message = 1/filtered - 1/unfiltered delivered rate"
    return [accept, delivered, cost]


def _postfix_runs(ctx: Context, n: int, timeout: float, rspamd: RspamdServer, user: str,
                  cost: Row) -> None:
    """Postfix to `discard:` with and without rspamd's milter proxy: the accept-time cost."""
    for i in range(ctx.runs):
        if not ctx.another_run(i):
            break
        timings = []
        for milter in (f"inet:127.0.0.1:{rspamd.milter_port}", None):
            postfix = Postfix("discard:benchmark", milter=milter).start()
            try:
                timings.append(smtp_source(postfix.smtp_port, user, n, timeout))
            finally:
                postfix.stop()
        cost.peer_runs.append((timings[0] - timings[1]) / n * 1000)
        progress(f"  run {i + 1} postfix: with the milter {n / timings[0]:.0f} msg/s, without "
                 f"{n / timings[1]:.0f} msg/s accepted; the milter costs "
                 f"{(timings[0] - timings[1]) / n * 1000:.1f} ms per message")
