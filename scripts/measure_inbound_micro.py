"""Per-call CPU of the perf-inbound levers, before and after side by side in one process.

``time.process_time`` over N calls, the two alternated 7 times, medians: the old
reading (dkimpy's whole-message parse, dnspython's name validation, the email
package's date, pyspf from cached answers every time) against the new one.

    .venv/bin/python scripts/measure_inbound_micro.py
"""

from __future__ import annotations

import datetime
import statistics
import sys
import time
from collections.abc import Callable
from email.utils import format_datetime
from pathlib import Path

import dkim
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "shared"), str(REPO / "services" / "dmarc"), str(REPO / "scripts")]

from measure_mda_group import message  # noqa: E402

from postroom.mailauth.dmarcdiscovery import Discoverer, psl_org_domain  # noqa: E402
from postroom.net import dns as pdns  # noqa: E402
from postroom.smtp.received import _date  # noqa: E402
from postroom_dmarc import spfcheck  # noqa: E402
from postroom_dmarc.dkimcheck import parse_headers  # noqa: E402
from postroom_dmarc.verdict import (  # noqa: E402
    Options,
    _CachedAnswers,
    _MemoDiscoverer,
    _spf,
)


def old_parse(data: bytes) -> object:
    try:
        headers, _ = dkim.rfc822_parse(data)
    except dkim.DKIMException:
        return None
    return [(a, b) for a, b in headers]


def old_normalise(name: str) -> str:
    text = name.strip().rstrip(".").lower()
    dns.name.from_text(text)
    return text + "."


def resolver(records: dict[str, str | None]) -> pdns.Resolver:
    """A resolver whose cache holds these TXT answers (None: NXDOMAIN) for an hour."""
    r = pdns.Resolver()
    for name, value in records.items():
        rdatas = () if value is None else (
            dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, f'"{value}"'),)
        r._cache[(name + ".", int(dns.rdatatype.TXT))] = pdns._Entry(
            time.monotonic() + 3600, value is None, rdatas)
    return r


def compare(name: str, old: Callable[[], object], new: Callable[[], object], n: int) -> None:
    assert old() == new(), name
    times: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(7):
        for which, fn in (("old", old), ("new", new)):
            started = time.process_time()
            for _ in range(n):
                fn()
            times[which].append((time.process_time() - started) / n * 1e6)
    o, w = statistics.median(times["old"]), statistics.median(times["new"])
    print(f"{name}: before {o:.1f} us, after {w:.1f} us ({(w - o) / o * 100:+.0f}%)")


def main() -> None:
    small, big = message(1, 2048), message(2, 50 * 1024)
    now = datetime.datetime.now(datetime.UTC)
    compare("dkim header fields, 2 KB", lambda: old_parse(small), lambda: parse_headers(small),
            2000)
    compare("dkim header fields, 50 KB", lambda: old_parse(big), lambda: parse_headers(big), 500)
    compare("DNS name normalised", lambda: old_normalise("Mail.Example.COM."),
            lambda: pdns._normalise("Mail.Example.COM."), 2000)
    compare("organizational domain (PSL)",
            lambda: psl_org_domain.__wrapped__("mail.example.co.uk"),
            lambda: psl_org_domain("mail.example.co.uk"), 2000)
    compare("Received: date", lambda: format_datetime(now), lambda: _date(now), 2000)
    options = Options(authserv_id="mx.receiver.test")
    simple: dict[str, str | None] = {"src.test": "v=spf1 ip4:192.0.2.0/24 -all"}
    ranges = " ".join(f"ip4:10.{i}.{j}.0/24" for i in range(4) for j in range(3))
    includes = " ".join(f"include:_{x}.src.test" for x in "abc")
    chain: dict[str, str | None] = {
             "src.test": f"v=spf1 {includes} ~all",
             "_a.src.test": f"v=spf1 {ranges} ?all", "_b.src.test": f"v=spf1 {ranges} ?all",
             "_c.src.test": "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all"}
    for label, records in (("one record", simple), ("three includes", chain)):
        r = resolver(records)
        compare(f"SPF from cached answers, {label}",
                lambda r=r: spfcheck.check("192.0.2.7", "loadgen@src.test", "mx.src.test",
                                           _CachedAnswers(r), receiver=options.authserv_id,
                                           time_budget=options.spf_time_budget),
                lambda r=r: _spf("192.0.2.7", "loadgen@src.test", "mx.src.test",
                                 _CachedAnswers(r), options), 500)
    r = resolver({"_dmarc.mail.src.test": None,
                  "_dmarc.src.test": "v=DMARC1; p=reject; rua=mailto:d@src.test; adkim=s"})
    compare("DMARC record discovery from cached answers",
            lambda: Discoverer(_CachedAnswers(r)).discover("mail.src.test"),
            lambda: _MemoDiscoverer(_CachedAnswers(r)).discover("mail.src.test"), 2000)


if __name__ == "__main__":
    main()
