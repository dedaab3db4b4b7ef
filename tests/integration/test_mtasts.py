"""MTA-STS end to end on loopback: TXT from the test DNS server, the policy over real HTTPS.

The policy server is a tiny twisted.web HTTPS site on 127.0.0.1 with a
self-signed certificate for ``mta-sts.two.test``; the fetcher finds it
through the test DNS server (A 127.0.0.1) and POSTROOM_MTA_STS_PORT's
equivalent, and trusts it through a CA file, as POSTROOM_TLS_CA_FILE does.
The MX is the test SMTP server of test_smtpclient.py with a certificate for
``mx.two.test``.

The shared cache tests use the real test Redis under a key prefix of their
own (``redis_prefix``); each PolicyFinder stands for one mta process.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.python.threadpool import ThreadPool
from twisted.web import resource, server

from postroom.net.destinations import DestinationPolicy
from postroom.net.tls import ServerTLS, make_self_signed
from postroom_mta.dane import lookup_tlsa
from postroom_mta.mtasts import REFETCH_BACKOFF, PolicyFinder, PolicyStore
from postroom_mta.routing import TLSSecurity, deliver_to_domain
from postroom_mta.smtpclient import DeliveryResult, Outcome
from tests.integration.test_smtpclient import FAST, RunningServer, ServerConfig
from tests.support.dns import LOOPBACK_NETWORKS
from tests.support.ports import free_port
from tests.support.redisdb import in_reactor

LOOPBACK = DestinationPolicy.allowing(LOOPBACK_NETWORKS)  # the policy site and MXs are local

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
                                                      timeout=5, destinations=LOOPBACK),
                           ca_file=ca_file)
    result: DeliveryResult = in_reactor(
        deliver_to_domain, "two.test", "alice@one.test", ["bob@two.test"], MESSAGE,
        resolver=resolver, port=smtp_port, pool=pool, helo_name="one.test", reactor=reactor,
        timeouts=FAST, rng=random.Random(7), security=security,
        destinations=LOOPBACK, timeout=30)
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
                          ca_file=pki["ca"], timeout=5, destinations=LOOPBACK)
    first, second = finder.find("two.test"), finder.find("two.test")
    assert first is not None and first.enforced and second == first
    assert policy_site[0].hits == 1


def test_cached_policy_survives_a_failed_fetch(dns_server, policy_site, pki):
    publish(dns_server)
    finder = PolicyFinder(dns_server.resolver(timeout=1.0), port=policy_site[1],
                          ca_file=pki["ca"], timeout=5, destinations=LOOPBACK)
    first = finder.find("two.test")
    dns_server.set_records("_mta-sts.two.test", "TXT", ["v=STSv1; id=2"])
    policy_site[0].body = "garbage"
    assert finder.find("two.test") == first


def test_policy_fetch_verifies_the_https_certificate(dns_server, policy_site, pki, tmp_path):
    publish(dns_server)
    (tmp_path / "empty.pem").write_bytes(Path(pki["ca"]).read_bytes().split(
        b"-----END CERTIFICATE-----")[1] + b"-----END CERTIFICATE-----\n")  # mx cert only
    finder = PolicyFinder(dns_server.resolver(timeout=1.0), port=policy_site[1],
                          ca_file=str(tmp_path / "empty.pem"), timeout=5,
                          destinations=LOOPBACK)
    assert finder.find("two.test") is None


def test_a_policy_host_on_an_internal_address_is_not_fetched(dns_server, policy_site, pki):
    publish(dns_server)  # mta-sts.two.test is 127.0.0.1, where the policy site listens
    finder = PolicyFinder(dns_server.resolver(timeout=1.0), port=policy_site[1],
                          ca_file=pki["ca"], timeout=5)
    assert finder.find("two.test") is None and finder.fetches == 1
    assert policy_site[0].hits == 0


def test_tlsa_from_a_non_validating_resolver_is_not_used(dns_server):
    dns_server.set_records("mx.two.test", "A", ["127.0.0.1"])
    assert lookup_tlsa(dns_server.resolver(timeout=1.0), "mx.two.test") is None


class Clock:
    """Wall-clock seconds a test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def shared_finder(dns_server: Any, port: int, ca: str, store: PolicyStore,
                  clock: Clock | None = None) -> PolicyFinder:
    return PolicyFinder(dns_server.resolver(timeout=1.0), port=port, ca_file=ca, timeout=5,
                        store=store, clock=clock or Clock(), destinations=LOOPBACK)


def test_two_processes_share_one_fetch_through_redis(dns_server, policy_site, pki,
                                                     redis_client, redis_prefix):
    publish(dns_server)
    store = PolicyStore(redis_client, redis_prefix)
    first = shared_finder(dns_server, policy_site[1], pki["ca"], store)
    second = shared_finder(dns_server, policy_site[1], pki["ca"], store)
    policy = first.find("two.test")
    assert policy is not None and policy.enforced
    assert second.find("two.test") == policy
    assert (policy_site[0].hits, second.fetches) == (1, 0)
    key = f"{redis_prefix}mta-sts:two.test"
    assert 0 < redis_client.ttl(key) <= 86400
    stored = json.loads(redis_client.get(key))
    assert (stored["id"], stored["mode"], stored["mx"]) == ("1", "enforce", ["mx.two.test"])


def test_a_new_txt_id_triggers_one_refetch(dns_server, policy_site, pki, redis_client,
                                           redis_prefix):
    publish(dns_server)
    store = PolicyStore(redis_client, redis_prefix)
    first = shared_finder(dns_server, policy_site[1], pki["ca"], store)
    second = shared_finder(dns_server, policy_site[1], pki["ca"], store)
    assert first.find("two.test").mode == "enforce"
    assert second.find("two.test").mode == "enforce"
    dns_server.set_records("_mta-sts.two.test", "TXT", ["v=STSv1; id=2"])
    policy_site[0].body = ENFORCE.replace("enforce", "testing")
    assert (second.find("two.test").mode, second.find("two.test").id) == ("testing", "2")
    assert first.find("two.test").mode == "testing"  # read from Redis, not fetched again
    assert policy_site[0].hits == 2


def test_a_failed_refetch_keeps_the_cached_policy(dns_server, policy_site, pki, redis_client,
                                                  redis_prefix):
    publish(dns_server)
    store = PolicyStore(redis_client, redis_prefix)
    clock = Clock()
    finder = shared_finder(dns_server, policy_site[1], pki["ca"], store, clock)
    cached = finder.find("two.test")
    dns_server.set_records("_mta-sts.two.test", "TXT", ["v=STSv1; id=2"])
    policy_site[0].body = "garbage"
    other = shared_finder(dns_server, policy_site[1], pki["ca"], store, clock)
    assert other.find("two.test") == cached
    assert other.find("two.test") == cached  # within the back-off: no second fetch
    assert (other.fetches, policy_site[0].hits) == (1, 2)
    policy_site[0].body = ENFORCE
    clock.now += REFETCH_BACKOFF + 1
    refreshed = other.find("two.test")
    assert refreshed is not None and refreshed.id == "2"


def test_policy_is_refreshed_after_half_its_max_age(dns_server, policy_site, pki, redis_client,
                                                    redis_prefix):
    publish(dns_server)
    clock = Clock()
    finder = shared_finder(dns_server, policy_site[1], pki["ca"],
                           PolicyStore(redis_client, redis_prefix), clock)
    finder.find("two.test")
    clock.now += 86400 / 2 - 10
    finder.find("two.test")
    assert policy_site[0].hits == 1
    clock.now += 20
    finder.find("two.test")
    assert policy_site[0].hits == 2


def test_a_restarted_process_keeps_the_policy_when_discovery_is_blocked(
        dns_server, policy_site, pki, redis_client, redis_prefix):
    publish(dns_server)
    store = PolicyStore(redis_client, redis_prefix)
    assert shared_finder(dns_server, policy_site[1], pki["ca"], store).find("two.test")
    dns_server.servfail("_mta-sts.two.test")
    restarted = shared_finder(dns_server, policy_site[1], pki["ca"], store)
    policy = restarted.find("two.test")
    assert policy is not None and policy.enforced and restarted.fetches == 0


def test_an_unreadable_redis_entry_is_refetched(dns_server, policy_site, pki, redis_client,
                                                redis_prefix):
    publish(dns_server)
    redis_client.set(f"{redis_prefix}mta-sts:two.test", "{not json", ex=60)
    finder = shared_finder(dns_server, policy_site[1], pki["ca"],
                           PolicyStore(redis_client, redis_prefix))
    assert finder.find("two.test").enforced and policy_site[0].hits == 1


def test_relay_options_give_the_finder_the_shared_store(dns_server, redis_client, redis_prefix):
    from postroom_mta.relay import RelayOptions
    from postroom_mta.worker_store import Policy

    store = PolicyStore(redis_client, redis_prefix)
    options = RelayOptions(policy=Policy("mx.one.test", 300, 3600, 86400), mta_sts=True,
                           sts_store=store, allowed_networks=("10.20.0.0/16",))
    security = options.security(dns_server.resolver())
    assert security is not None and security.sts is not None and security.sts.store is store
    # the policy host is held to the relay's allowed networks, like the MXs
    assert security.sts.destinations.permits("10.20.1.1")
    assert not security.sts.destinations.permits("10.30.1.1")
