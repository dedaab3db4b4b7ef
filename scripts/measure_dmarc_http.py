"""CPU per check of the dmarc service's HTTP API and of the mta's client, without the rest.

Two processes from the tree given by ``--code`` (default: this one): the dmarc
service's Site (``postroom_dmarc.api.build_site``: the CheckResource with no
recorder and no content check, a resolver whose answers come from a table, so
every check after the first is answered from the cache on the reactor) and the
mta's ``DMARCClient`` asking it ``-m`` checks of 2 KB messages with ``-c`` in
flight. After a warm-up, utime+stime of both from /proc/PID/stat around the
measured checks, per check. What this isolates is the HTTP exchange and the
evaluation on the cached path, which is what the accept-only and inbound loads
do per message in these two processes (the verdict row and the content checks
are left out: neither is changed by what this measures).

    .venv/bin/python scripts/measure_dmarc_http.py -m 4000 [--code DIR] [--profile FILE]

``--profile FILE`` runs the server under cProfile and writes its stats there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")

SERVER = r"""
import sys, time, cProfile, pstats
import dns.rdata, dns.rdataclass, dns.rdatatype
from twisted.internet import reactor
from twisted.python.threadpool import ThreadPool
from postroom import logs
from postroom.metrics import Metrics
from postroom.net import dns as pdns
from postroom_dmarc.api import CheckResource, build_site
from postroom_dmarc.verdict import Options

RECORDS = {("src.test.", 16): "v=spf1 ip4:127.0.0.0/8 -all",
           ("mx.src.test.", 16): "v=spf1 ip4:127.0.0.0/8 -all",
           ("_dmarc.src.test.", 16): "v=DMARC1; p=none"}

class TableResolver(pdns.Resolver):
    def _lookup(self, qname, qtype, now):
        value = RECORDS.get((qname, int(qtype)))
        if value is None:
            return pdns._Entry(now + 86400, True, ())
        rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, f'"{value}"')
        return pdns._Entry(now + 86400, False, (rdata,))

logs.configure("dmarc", "info", open("/dev/null", "w"))
pool = ThreadPool(1, 4, "policy")
pool.start()
metrics = Metrics("dmarc")
check = CheckResource(TableResolver(), Options(authserv_id="mx.bench.test"), pool, reactor,
                      max_inflight=64, deadline=5.0, metrics=metrics)
site = build_site(check, 64 * 1024 * 1024)
port = reactor.listenTCP(0, site, interface="127.0.0.1")
sys.__stdout__.write(f"{port.getHost().port}\n")
sys.__stdout__.flush()
profile = sys.argv[1] if len(sys.argv) > 1 else ""
prof = cProfile.Profile() if profile else None
def handle(line):
    if line == "start" and prof is not None:
        prof.enable()
    if line == "stop":
        if prof is not None:
            prof.disable()
            prof.dump_stats(profile)
        reactor.stop()
def read_commands():
    for line in sys.stdin:
        reactor.callFromThread(handle, line.strip())
import threading
threading.Thread(target=read_commands, daemon=True).start()
reactor.run()
pool.stop()
"""

CLIENT = r"""
import sys, time
from twisted.internet import defer, reactor, task
from postroom_mta.dmarcclient import DMARCClient

port, total, inflight, warm = (int(x) for x in sys.argv[1:5])
head = ("From: Sender <s@src.test>\r\nTo: u@bench.test\r\nSubject: bench\r\n"
        "Date: Mon, 07 Dec 2026 15:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n")
line = "line of message, some words to index and search later on. "
body = "\r\n".join((line * 40)[:1800][i:i + 70] for i in range(0, 1800, 70)) + "\r\n"
client = DMARCClient(f"http://127.0.0.1:{port}", 30.0)
dispositions = {}

async def one(n):
    msg = (head + f"Message-ID: <{n}@src.test>\r\n\r\n" + body).encode()
    v = await client.check(client_ip="127.0.0.1", helo="mx.src.test", mail_from="s@src.test",
                           recipients=["u@bench.test"], message=msg, queue_id=f"q{n}")
    dispositions[v.disposition] = dispositions.get(v.disposition, 0) + 1

async def run(count, start):
    it = iter(range(start, start + count))
    async def worker():
        for n in it:
            await one(n)
    await defer.gatherResults([defer.Deferred.fromCoroutine(worker()) for _ in range(inflight)])

async def main():
    await run(warm, 0)
    print("warm", flush=True)
    sys.stdin.readline()
    await run(total, warm)
    print("done " + repr(dispositions), flush=True)
    await client.close()

def go():
    d = defer.Deferred.fromCoroutine(main())
    d.addErrback(lambda f: f.printTraceback())
    d.addBoth(lambda _: reactor.stop())
reactor.callWhenRunning(go)
reactor.run()
"""


def cpu(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(") ")[2].split()
    return int(fields[11]) + int(fields[12])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-m", type=int, default=4000, help="checks measured")
    parser.add_argument("-c", type=int, default=20, help="checks in flight")
    parser.add_argument("--warm", type=int, default=500)
    parser.add_argument("--code", type=Path, default=REPO)
    parser.add_argument("--profile", default="")
    args = parser.parse_args()
    code = args.code.resolve()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        str(code / p) for p in ("shared", "services/dmarc", "services/mta")),
        POSTROOM_LOG_LEVEL="warning")
    server = subprocess.Popen([sys.executable, "-c", SERVER, args.profile], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert server.stdin is not None and server.stdout is not None
    port = int(server.stdout.readline())
    client = subprocess.Popen([sys.executable, "-c", CLIENT, str(port), str(args.m), str(args.c),
                               str(args.warm)], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert client.stdin is not None and client.stdout is not None
    assert client.stdout.readline().strip() == "warm"
    server.stdin.write("start\n")
    server.stdin.flush()
    time.sleep(0.2)
    s0, c0, t0 = cpu(server.pid), cpu(client.pid), time.monotonic()
    client.stdin.write("go\n")
    client.stdin.flush()
    done = client.stdout.readline().strip()
    s1, c1, t1 = cpu(server.pid), cpu(client.pid), time.monotonic()
    server.stdin.write("stop\n")
    server.stdin.flush()
    client.wait(30)
    server.wait(30)
    per = 1000 / TICKS / args.m
    print(json.dumps({"code": str(code), "checks": args.m, "result": done,
                      "dmarc_ms": round((s1 - s0) * per, 4),
                      "mta_client_ms": round((c1 - c0) * per, 4),
                      "wall_s": round(t1 - t0, 2)}))


if __name__ == "__main__":
    main()
