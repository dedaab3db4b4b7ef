"""Per-check CPU of the dmarc service's cached check and of the mta's side of the exchange.

In one process, from the tree on PYTHONPATH, for N checks of the 2 KB message of
scripts/measure_dmarc_http.py (DNS answers from a table, so every check is answered from
the cache as under load): the mta's request body (``raw_request_body``) and its parse of
the verdict (``parse_verdict``), and the dmarc service's parse of the request, the check
(``PendingCheck.from_cache``) and the verdict's JSON (``CheckResource._stored`` and
``json.dumps``), each timed with time.process_time. No sockets, no twisted.web: the
per-check work of the two sides alone, for A/B pairs of trees (issue 23, r5-dmarc).

    PYTHONPATH=DIR/shared:DIR/services/dmarc:DIR/services/mta \
        .venv/bin/python scripts/measure_dmarc_codec.py 5000
"""

import json
import sys
import time

import dns.rdata
import dns.rdataclass
import dns.rdatatype

from postroom import logs
from postroom.net import dns as pdns
from postroom_dmarc.api import CheckResource, parse_raw_check
from postroom_dmarc.verdict import Options, PendingCheck
from postroom_mta.dmarcclient import parse_verdict, raw_request_body

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

logs.configure("dmarc", "warning", open("/dev/null", "w"))
resolver = TableResolver()
options = Options(authserv_id="mx.bench.test")
resource = CheckResource(resolver, options, None, None, max_inflight=64, deadline=5.0)
head = ("From: Sender <s@src.test>\r\nTo: u@bench.test\r\nSubject: bench\r\n"
        "Date: Mon, 07 Dec 2026 15:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n")
line = "line of message, some words to index and search later on. "
body = "\r\n".join((line * 40)[:1800][i:i + 70] for i in range(0, 1800, 70)) + "\r\n"
msgs = [(head + f"Message-ID: <{n}@src.test>\r\n\r\n" + body).encode() for n in range(100)]
PendingCheck(parse_raw_check(raw_request_body(client_ip="127.0.0.1", helo="mx.src.test",
    mail_from="s@src.test", recipients=["u@bench.test"], message=msgs[0], queue_id="q")),
    resolver, options).evaluate()
n = int(sys.argv[1])
mta = dmarc = 0.0
size = 0
for i in range(n):
    t0 = time.process_time()
    req = raw_request_body(client_ip="127.0.0.1", helo="mx.src.test", mail_from="s@src.test",
                           recipients=["u@bench.test"], message=msgs[i % 100], queue_id=f"q{i}")
    t1 = time.process_time()
    check = parse_raw_check(req)
    verdict = PendingCheck(check, resolver, options).from_cache()
    out = json.dumps(resource._stored(check, verdict)).encode()
    t2 = time.process_time()
    v = parse_verdict(out)
    t3 = time.process_time()
    assert v.disposition == "inbox"
    mta += (t1 - t0) + (t3 - t2)
    dmarc += t2 - t1
    size = len(out)
print(json.dumps({"dmarc_us": round(dmarc / n * 1e6, 1), "mta_codec_us": round(mta / n * 1e6, 2),
                  "verdict_bytes": size}))
