"""A DNS stub for the end-to-end test's compose network: NXDOMAIN for every name.

The test's Docker networks reach nothing outside the host, so the services' SPF, DMARC
and MX lookups would time out (a temperror: mail deferred). This answers each of them
at once with "no such name", as a resolver would for the test's ``.test`` domains, and
runs in the Postroom image (Twisted is there): ``python /nxdns.py`` on port 53.
"""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.names import dns, error, server


class NoSuchName:
    """A resolver that knows no name."""

    def query(self, query: dns.Query, timeout: object = None) -> defer.Deferred:
        return defer.fail(error.DomainError(str(query.name)))


def main() -> None:
    factory = server.DNSServerFactory(authorities=[NoSuchName()])
    reactor.listenUDP(53, dns.DNSDatagramProtocol(factory))
    reactor.listenTCP(53, factory)
    reactor.run()


if __name__ == "__main__":
    main()
