"""MTA-STS end to end on loopback: TXT from the test DNS server, the policy over real HTTPS.

The policy server is a tiny twisted.web HTTPS site on 127.0.0.1 with a
self-signed certificate for ``mta-sts.two.test``; the fetcher finds it
through the test DNS server (A 127.0.0.1) and POSTROOM_MTA_STS_PORT's
equivalent, and trusts it through a CA file, as POSTROOM_TLS_CA_FILE does.
The MX is the test SMTP server of test_smtpclient.py with a certificate for
``mx.two.test``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.python.threadpool import ThreadPool
from twisted.web import resource, server

from postroom.tls import ServerTLS, make_self_signed
from postroom_mta.dane import lookup_tlsa
from postroom_mta.mtasts import PolicyFinder
from postroom_mta.routing import TLSSecurity, deliver_to_domain
from postroom_mta.smtpclient import DeliveryResult, Outcome
from tests.integration.test_smtpclient import FAST, RunningServer, ServerConfig
from tests.support.ports import free_port
from tests.support.redisdb import in_reactor

MESSAGE = b"From: alice@one.test\r\nTo: bob@two.test\r\nSubject: sts\r\n\r\nhi\r\n"
ENFORCE = "version: STSv1\nmode: enforce\nmx: mx.two.test\nmax_age: 86400\n"


class _Policy(resource.Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.body = ENFORCE
        self.hits = 0

    def render_GET(self, request: Any) -> bytes:
        self.hits += 1
        request.setHeader(b"content-type", b"text/plain")
        return self.body.encode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory: Path = tmp_path_factory.mktemp("mtasts")
    for name in ("mta-sts.two.test", "mx.two.test"):
        make_self_signed(directory / f"{name}.pem", directory / f"{name}.key", name)
    bundle = directory / "ca.pem"
    bundle.write_bytes((directory / "mta-sts.two.test.pem").read_bytes()
                       + (directory / "mx.two.test.pem").read_bytes())
    only_sts = directory / "only-sts.pem"
    only_sts.write_bytes((directory / "mta-sts.two.test.pem").read_bytes())
    return {"ca": str(bundle), "only_sts": str(only_sts),
            "web": ServerTLS(str(directory / "mta-sts.two.test.pem"),
                             str(directory / "mta-sts.two.test.key")),
            "mx": ServerTLS(str(directory / "mx.two.test.pem"), str(directory / "mx.two.test.key"))}


@pytest.fixture
def policy_site(twisted_reactor: Any, pki: dict[str, Any]) -> Iterator[tuple[_Policy, int]]:
    from twisted.internet import reactor

    policy = _Policy()
    port = free_port()
    listening = in_reactor(reactor.listenSSL, port, server.Site(policy), pki["web"],
                           interface="127.0.0.1")
    yield policy, port
    in_reactor(listening.stopListening)


@pytest.fixture
def dns_pool() -> Iterator[ThreadPool]:
    pool = ThreadPool(minthreads=1, maxthreads=2, name="test-dns")
    pool.start()
    yield pool
    pool.stop()


@pytest.fixture
def tls_mx(twisted_reactor: Any, pki: dict[str, Any]) -> Iterator[RunningServer]:
    mx = RunningServer(ServerConfig(tls=pki["mx"]))
    yield mx
    mx.stop()


def publish(dns_server: Any, mx_host: str = "mx.two.test") -> None:
    dns_server.load({"two.test": {"MX": [(10, mx_host)]},
                     mx_host: {"A": ["127.0.0.1"]},
                     "_mta-sts.two.test": {"TXT": ["v=STSv1; id=1"]},
                     "mta-sts.two.test": {"A": ["127.0.0.1"]}})


def deliver(dns_server: Any, pool: ThreadPool, smtp_port: int, sts_port: int,
            ca_file: str) -> DeliveryResult:
    from twisted.internet import reactor

    resolver = dns_server.resolver(timeout=1.0)
    security = TLSSecurity(resolver, sts=PolicyFinder(resolver, port=sts_port, ca_file=ca_file,
                                                      timeout=5), ca_file=ca_file)
    result: DeliveryResult = in_reactor(
        deliver_to_domain, "two.test", "alice@one.test", ["bob@two.test"], MESSAGE,
        resolver=resolver, port=smtp_port, pool=pool, helo_name="one.test", reactor=reactor,
        timeouts=FAST, rng=random.Random(7), security=security, timeout=30)
    return result


def test_enforced_policy_delivers_over_verified_tls(dns_server, dns_pool, policy_site, tls_mx,
                                                    pki):
    publish(dns_server)
    result = deliver(dns_server, dns_pool, tls_mx.port, policy_site[1], pki["ca"])
    assert result.recipients[0].outcome is Outcome.DELIVERED
    assert tls_mx.received[0].tls


def test_enforced_policy_defers_when_no_mx_matches(dns_server, dns_pool, policy_site, tls_mx,
                                                   pki):
    publish(dns_server, mx_host="other.two.test")
    result = deliver(dns_server, dns_pool, tls_mx.port, policy_site[1], pki["ca"])
    assert (result.recipients[0].outcome, result.recipients[0].enhanced) == (
        Outcome.DEFERRED, "4.7.5")
    assert tls_mx.received == []


def test_enforced_policy_defers_when_certificate_does_not_verify(dns_server, dns_pool,
                                                                 policy_site, tls_mx, pki):
    publish(dns_server)
    result = deliver(dns_server, dns_pool, tls_mx.port, policy_site[1], pki["only_sts"])
    assert result.recipients[0].outcome is Outcome.DEFERRED
    assert tls_mx.received == []  # never sent in clear instead


def test_enforced_policy_defers_when_starttls_is_not_offered(dns_server, dns_pool, policy_site,
                                                             twisted_reactor, pki):
    publish(dns_server)
    plain = RunningServer(ServerConfig())
    try:
        result = deliver(dns_server, dns_pool, plain.port, policy_site[1], pki["ca"])
        assert result.recipients[0].outcome is Outcome.DEFERRED
        assert plain.received == []
    finally:
        plain.stop()


def test_testing_policy_only_reports(dns_server, dns_pool, policy_site, tls_mx, pki):
    policy_site[0].body = ENFORCE.replace("enforce", "testing")
    publish(dns_server, mx_host="other.two.test")
    result = deliver(dns_server, dns_pool, tls_mx.port, policy_site[1], pki["ca"])
    assert result.recipients[0].outcome is Outcome.DELIVERED


def test_policy_is_cached_for_max_age(dns_server, policy_site, pki):
    publish(dns_server)
    finder = PolicyFinder(dns_server.resolver(timeout=1.0), port=policy_site[1],
                          ca_file=pki["ca"], timeout=5)
    first, second = finder.find("two.test"), finder.find("two.test")
    assert first is not None and first.enforced and second == first
    assert policy_site[0].hits == 1


def test_cached_policy_survives_a_failed_fetch(dns_server, policy_site, pki):
    publish(dns_server)
    finder = PolicyFinder(dns_server.resolver(timeout=1.0), port=policy_site[1],
                          ca_file=pki["ca"], timeout=5)
    first = finder.find("two.test")
    dns_server.set_records("_mta-sts.two.test", "TXT", ["v=STSv1; id=2"])
    policy_site[0].body = "garbage"
    assert finder.find("two.test") == first


def test_policy_fetch_verifies_the_https_certificate(dns_server, policy_site, pki, tmp_path):
    publish(dns_server)
    (tmp_path / "empty.pem").write_bytes(Path(pki["ca"]).read_bytes().split(
        b"-----END CERTIFICATE-----")[1] + b"-----END CERTIFICATE-----\n")  # mx cert only
    finder = PolicyFinder(dns_server.resolver(timeout=1.0), port=policy_site[1],
                          ca_file=str(tmp_path / "empty.pem"), timeout=5)
    assert finder.find("two.test") is None


def test_tlsa_from_a_non_validating_resolver_is_not_used(dns_server):
    dns_server.set_records("mx.two.test", "A", ["127.0.0.1"])
    assert lookup_tlsa(dns_server.resolver(timeout=1.0), "mx.two.test") is None
