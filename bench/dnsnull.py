"""A loopback DNS server that answers NXDOMAIN to everything, so no lookup leaves the machine.

Postroom's dmarc service looks up SPF, DKIM and DMARC records for every
message; the machine's resolver is not on loopback, so every service in the
bench is pointed here (POSTROOM_DNS_SERVERS). NXDOMAIN everywhere means SPF
none, no DKIM key, no DMARC record: the verdict is "inbox", as for a sender
without any policy. Run as ``python bench/dnsnull.py PORT``; it prints "ready".
"""

from __future__ import annotations

import sys


def main(port: int) -> None:
    from twisted.internet import defer, reactor
    from twisted.names import common, dns, server

    class Nothing(common.ResolverBase):
        """Every name is NXDOMAIN (DNSServerFactory turns DomainError into rcode 3)."""

        def _lookup(self, name, cls, type, timeout):  # type: ignore[no-untyped-def]
            return defer.fail(dns.DomainError(name))

    factory = server.DNSServerFactory(authorities=[Nothing()])
    protocol = dns.DNSDatagramProtocol(controller=factory)
    reactor.listenUDP(port, protocol, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.listenTCP(port, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    print("ready", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(int(sys.argv[1]))
