"""Workload 2: SMTP accept only, the same smtp-source load timed to its last 250.

Postroom: dmarc + mta without mda (a message is accepted once spooled in
PostgreSQL and queued in Redis). Peers: Haraka with queue/discard (nothing
written), and Postfix with bench.test routed to ``discard:`` (queued on disk,
then dropped). Runs alternate Postroom, Haraka, Postfix.
"""

from __future__ import annotations

import cpu
from common import Skip, progress
from peers.haraka import Haraka
from peers.postfix import Postfix
from postroom_suite import PostroomSuite

from workloads.base import Context, Row
from workloads.smtp_load import smtp_source

NAME = "smtp_accept"
TITLE = "2. SMTP accept only (same load; Postroom mta vs Haraka discard and Postfix)"


def run(ctx: Context) -> list[Row]:
    ctx.need_services("mta", "dmarc")
    n = ctx.messages
    timeout = max(120.0, n / 8)
    vs_haraka = Row(NAME, "accept rate", "msg/s", "Haraka (queue/discard)")
    vs_postfix = Row(NAME, "accept rate", "msg/s", "Postfix (discard)")
    with PostroomSuite(["dmarc", "mta"], replicas=ctx.replicas) as suite:
        assert suite.dns is not None
        haraka = postfix = None
        if ctx.peers_missing.get("haraka") or Haraka.available():
            progress(f"  Haraka skipped: {ctx.peers_missing.get('haraka') or Haraka.available()}")
        else:
            haraka = Haraka(suite.dns.servers, nodes=ctx.haraka_nodes()).start()
        if ctx.peers_missing.get("debian"):
            progress(f"  Postfix skipped: {ctx.peers_missing['debian']}")
        else:
            postfix = Postfix("discard:benchmark").start()
        if haraka is None and postfix is None:
            raise Skip("no peer for accept-only could start")
        mine = cpu.postroom_meter(suite, ["mta", "dmarc"])
        vs_h = cpu.figure(NAME, "msg", "Haraka (discard)")
        vs_p = cpu.figure(NAME, "msg", "Postfix (discard)")
        vs_p.postroom = vs_h.postroom  # one Postroom side, two peers
        ctx.cpu.extend(f for f, peer in ((vs_h, haraka), (vs_p, postfix)) if peer is not None)
        try:
            for i in range(ctx.runs):
                if not ctx.another_run(i):
                    progress(f"  budget: stopping after {i} run(s)")
                    break
                before = mine.sample()
                rate = n / smtp_source(suite.ports["mta"], suite.user(0), n, timeout)
                vs_h.postroom.between(before, mine.sample(), n)
                vs_haraka.postroom.append(rate)
                vs_postfix.postroom.append(rate)
                line = f"  run {i + 1} postroom {rate:.0f} msg/s"
                if haraka is not None:
                    meter = cpu.peer_meter("Haraka", haraka.root_pids)
                    before = meter.sample()
                    vs_haraka.peer_runs.append(
                        n / smtp_source(haraka.port, suite.user(0), n, timeout))
                    vs_h.peer_side.between(before, meter.sample(), n)
                    line += f", haraka {vs_haraka.peer_runs[-1]:.0f} msg/s"
                if postfix is not None:
                    meter = cpu.peer_meter("Postfix", postfix.master_pids)
                    before = meter.sample()
                    vs_postfix.peer_runs.append(
                        n / smtp_source(postfix.smtp_port, suite.user(0), n, timeout))
                    postfix.wait_drained()
                    vs_p.peer_side.between(before, meter.sample(), n)
                    line += f", postfix {vs_postfix.peer_runs[-1]:.0f} msg/s"
                progress(line)
        finally:
            if haraka is not None:
                haraka.stop()
            if postfix is not None:
                postfix.stop()
    return [row for row in (vs_haraka, vs_postfix) if row.peer_runs]
