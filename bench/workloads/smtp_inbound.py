"""Workload 1: SMTP inbound end to end, smtp-source into port 25 until every message is stored.

Postroom: dmarc + mta + mda, timed until mailbox_entries holds every message.
Peer: Postfix -> LMTP -> Dovecot Maildir, timed until the Maildir holds them.
Runs alternate Postroom, peer, Postroom, peer, ...
"""

from __future__ import annotations

import cpu
from common import Skip, progress
from peers.dovecot import Dovecot
from peers.postfix import Postfix
from postroom_suite import PostroomSuite

from workloads.base import Context, Row
from workloads.smtp_load import load_and_wait

NAME = "smtp_inbound"
TITLE = "1. SMTP inbound end to end (smtp-source -s 20 -m N -l 2048)"


def run(ctx: Context) -> list[Row]:
    ctx.need_services("mta", "mda", "dmarc")
    if ctx.peers_missing.get("debian"):
        raise Skip(f"peers unavailable: {ctx.peers_missing['debian']}")
    n = ctx.messages
    accept = Row(NAME, "accept rate", "msg/s", "Postfix+Dovecot")
    delivered = Row(NAME, "delivered rate", "msg/s", "Postfix+Dovecot")
    timeout = max(120.0, n / 8)
    profile: dict[str, object] = {}
    used = cpu.figure(NAME, "msg", "Postfix+Dovecot")
    ctx.cpu.append(used)
    dovecot = Dovecot(users=1).start()
    try:
        postfix = Postfix(f"lmtp:inet:127.0.0.1:{dovecot.lmtp_port}").start()
        try:
            with PostroomSuite(["dmarc", "mta", "mda"], replicas=ctx.replicas) as suite:
                user = suite.user(0)
                mine = cpu.postroom_meter(suite, ["mta", "dmarc", "mda"])
                theirs = cpu.peer_meter("Postfix+Dovecot", postfix.master_pids,
                                        dovecot.root_pids)
                for i in range(ctx.runs):
                    if not ctx.another_run(i):
                        progress(f"  budget: stopping after {i} run(s)")
                        break
                    before = mine.sample()
                    a, d = load_and_wait(suite.ports["mta"], user, n, suite.delivered, timeout)
                    used.postroom.between(before, mine.sample(), n)
                    accept.postroom.append(n / a)
                    delivered.postroom.append(n / d)
                    progress(f"  run {i + 1} postroom: accepted {n / a:.0f} msg/s, "
                             f"delivered {n / d:.0f} msg/s")
                    dovecot.clear(user)
                    before = theirs.sample()
                    a, d = load_and_wait(postfix.smtp_port, user, n,
                                         lambda: dovecot.count_new(user), timeout)
                    used.peer_side.between(before, theirs.sample(), n)
                    accept.peer_runs.append(n / a)
                    delivered.peer_runs.append(n / d)
                    progress(f"  run {i + 1} postfix+dovecot: accepted {n / a:.0f} msg/s, "
                             f"delivered {n / d:.0f} msg/s")
                if ctx.profile and ctx.share.fits(90):
                    profile = _profile(suite, min(n, 600), timeout)
        finally:
            postfix.stop()
    finally:
        dovecot.stop()
    if profile:
        ctx.extras["profile_smtp_inbound"] = profile
    return [accept, delivered]


def _profile(suite: PostroomSuite, n: int, timeout: float) -> dict[str, object]:
    import profiling

    why = profiling.available()
    if why:
        progress(f"  profile skipped: {why}")
        return {}
    progress(f"  profiling mta, mda and dmarc with py-spy during {n} more messages (untimed)")
    prof = profiling.Profiler({label: pid for name in ("mta", "mda", "dmarc")
                               for label, pid in suite.pids(name).items()})
    prof.start()
    try:
        load_and_wait(suite.ports["mta"], suite.user(0), n, suite.delivered, timeout)
    finally:
        result = prof.stop()
    return result
