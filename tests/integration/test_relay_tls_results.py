"""TLS outcomes recorded by the relay's real client for TLS reports (RFC 8460): a server with
STARTTLS, one without, and one whose certificate an MTA-STS policy does not trust; written
through the background recorder to PostgreSQL."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from postroom.store import tlsreports
from postroom_mta.mtasts import PolicyFinder
from postroom_mta.routing import TLSSecurity, deliver_to_domain
from postroom_mta.smtpclient import DeliveryResult, Outcome
from postroom_mta.tlsresults import TLSResultRecorder
from tests.integration import test_mtasts as sts
from tests.integration.test_smtpclient import FAST, RunningServer, ServerConfig
from tests.support.redisdb import in_reactor

LOOPBACK, MESSAGE, publish = sts.LOOPBACK, sts.MESSAGE, sts.publish
# the MTA-STS tests' fixtures: the PKI, the policy site, the DNS pool and a TLS MX
pki, policy_site, dns_pool, tls_mx = sts.pki, sts.policy_site, sts.dns_pool, sts.tls_mx


def _send(dns_server: Any, pool: Any, smtp_port: int, recorder: TLSResultRecorder,
          security: TLSSecurity | None = None) -> DeliveryResult:
    from twisted.internet import reactor

    result: DeliveryResult = in_reactor(
        deliver_to_domain, "two.test", "alice@one.test", ["bob@two.test"], MESSAGE,
        resolver=dns_server.resolver(timeout=1.0), port=smtp_port, pool=pool,
        helo_name="one.test", reactor=reactor, timeouts=FAST, rng=random.Random(7),
        security=security, destinations=LOOPBACK, tls_recorder=recorder, timeout=30)
    in_reactor(recorder.flush)
    return result


def _rows(database: Any) -> list[Any]:
    now = datetime.now(UTC)
    return database.run_sync(tlsreports.results_for_report, "two.test",
                             now - timedelta(hours=1), now + timedelta(hours=1))


def _recorder(database: Any) -> TLSResultRecorder:
    from twisted.internet import reactor

    return TLSResultRecorder(database, reactor=reactor)


def test_a_session_with_starttls_is_recorded_as_a_success(database, clean_db, dns_server,
                                                          dns_pool, tls_mx, twisted_reactor):
    publish(dns_server)
    result = _send(dns_server, dns_pool, tls_mx.port, _recorder(database))
    assert result.recipients[0].outcome is Outcome.DELIVERED
    [row] = _rows(database)
    assert (row.policy_type, row.result_type, row.mx_host, row.receiving_ip, row.count) == \
        ("no-policy-found", None, "mx.two.test", "127.0.0.1", 1)


def test_a_server_without_starttls_is_recorded_as_starttls_not_supported(
        database, clean_db, dns_server, dns_pool, twisted_reactor):
    publish(dns_server)
    plain = RunningServer(ServerConfig())
    try:
        result = _send(dns_server, dns_pool, plain.port, _recorder(database))
    finally:
        plain.stop()
    assert result.recipients[0].outcome is Outcome.DELIVERED  # opportunistic: sent in clear
    [row] = _rows(database)
    assert (row.policy_type, row.result_type) == ("no-policy-found", "starttls-not-supported")


def test_an_untrusted_certificate_under_mta_sts_is_recorded_with_the_policy(
        database, clean_db, dns_server, dns_pool, tls_mx, policy_site, pki, twisted_reactor):
    publish(dns_server)
    _policy, sts_port = policy_site
    resolver = dns_server.resolver(timeout=1.0)
    # the policy site is trusted, the MX's certificate is not
    security = TLSSecurity(resolver, sts=PolicyFinder(resolver, port=sts_port,
                                                      ca_file=pki["only_sts"], timeout=5,
                                                      destinations=LOOPBACK),
                           ca_file=pki["only_sts"])
    result = _send(dns_server, dns_pool, tls_mx.port, _recorder(database), security)
    assert result.recipients[0].outcome is Outcome.DEFERRED
    [row] = _rows(database)
    assert (row.policy_type, row.result_type) == ("sts", "certificate-not-trusted")
    assert row.policy_string == ("version: STSv1", "mode: enforce", "mx: mx.two.test",
                                 "max_age: 86400")


def test_a_policy_that_cannot_be_fetched_is_recorded(database, clean_db, dns_server, dns_pool,
                                                     tls_mx, pki, twisted_reactor):
    from tests.support.ports import free_port

    publish(dns_server)
    recorder = _recorder(database)
    resolver = dns_server.resolver(timeout=1.0)
    security = TLSSecurity(resolver, sts=PolicyFinder(
        resolver, port=free_port(), ca_file=pki["ca"], timeout=2, destinations=LOOPBACK,
        on_failure=recorder.sts_failure), ca_file=pki["ca"])
    _send(dns_server, dns_pool, tls_mx.port, recorder, security)
    in_reactor(recorder.flush)
    kinds = {(r.policy_type, r.result_type) for r in _rows(database)}
    assert ("sts", "sts-policy-fetch-error") in kinds
