"""Certificates by ACME against a real CA: Debian's pebble on loopback.

One module-wide set-up: a database of its own with one domain, the test DNS
server publishing A 127.0.0.1 for the mail host and the domain's mta-sts. and
autoconfig. names, pebble resolving through it and fetching HTTP-01 answers
from the web service's plain port (TLS-ALPN-01 ones from its TLS port), and
`postroom serve web` with POSTROOM_ACME (its renewer issues at start, by
TLS-ALPN-01; the CLI and the other issuers use HTTP-01). Services then load the certificate from the
database: an imap started afterwards serves it on 993, and swaps to a renewed
one without a restart; the web service serves the MTA-STS policy over HTTPS
with it, verified against pebble's root.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from postroom import secretbox
from postroom.config import load_settings
from postroom.ops.acme import Issuer
from postroom.secretbox import Keyring
from postroom.store import acme, domains
from postroom.store.db import Database
from postroom.store.migrate import upgrade
from tests.support.db import create_test_database, drop_test_database
from tests.support.dns import DNSServer
from tests.support.pebble import Pebble
from tests.support.ports import free_port
from tests.support.procs import ServiceProcess, base_env, listener_env, runtime_argv

pytestmark = pytest.mark.slow


@dataclass
class Setup:
    db: Database
    database_url: str
    redis_url: str
    domain: str
    hostname: str
    pebble: Pebble
    web: ServiceProcess
    web_tls_port: int
    env: dict[str, str]     # what the CLI and services share
    tmp: Path
    keyring: Keyring        # keys are sealed at rest (POSTROOM_SECRET_KEY_FILE)

    def cli(self, *args: str, env: dict[str, str] | None = None,
            ok: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "postroom.ops.cli", *args],
                                capture_output=True, text=True, timeout=120,
                                env=base_env({**self.env, **(env or {})}))
        if ok:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    def certificate(self) -> acme.Certificate:
        found = self.db.run_sync(acme.get_certificate, keyring=self.keyring)
        assert found is not None
        assert found.key_pem.startswith("-----BEGIN PRIVATE KEY-----")
        return found

    def settings_env(self, **extra: str) -> dict[str, str]:
        return {**self.env, **extra}


def _serial(pem: str) -> int:
    return x509.load_pem_x509_certificates(pem.encode())[0].serial_number


def _peer_serial(port: int, server_name: str) -> int:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=server_name) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _wait(condition, timeout: float, what: Any) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def setup(dns_server_session: DNSServer, redis_url: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tag = secrets.token_hex(3)
    domain, hostname = f"acme-{tag}.test", f"mail.acme-{tag}.test"
    tmp: Path = tmp_path_factory.mktemp("acme")
    for name in (hostname, f"mta-sts.{domain}", f"autoconfig.{domain}"):
        dns_server_session.set_records(name, "A", ["127.0.0.1"])
    database_url = create_test_database("postroom_acme_")
    db = Database(database_url, pool_size=2)
    web_port, web_tls_port = free_port(), free_port()
    pebble = web = None
    try:
        upgrade(database_url)
        db.run_sync(domains.add_domain, domain)
        pebble = Pebble(tmp, dns_server_session.address, web_port, web_tls_port)
        (tmp / "web").mkdir()
        keyring = Keyring(secretbox.write_key_file(str(tmp / "secret.key")))
        env = {"POSTROOM_SECRET_KEY_FILE": str(tmp / "secret.key"),
               "POSTROOM_DATABASE_URL": database_url, "POSTROOM_HOSTNAME": hostname,
               "POSTROOM_ACME": "true", "POSTROOM_ACME_DIRECTORY": pebble.directory,
               "POSTROOM_ACME_CA_FILE": pebble.ca_file,
               "POSTROOM_ACME_EMAIL": f"postmaster@{domain}", "POSTROOM_TLS_DB_POLL": "1s"}
        # the web service's own renewer answers by TLS-ALPN-01 on its TLS listener; the CLI
        # and the issuers of the tests below by HTTP-01 on its plain one
        web_env = {**listener_env(database_url, redis_url, f"prtest:{tag}:", tmp / "web",
                                  hostname=hostname, web_listen=web_port,
                                  web_tls_listen=web_tls_port), **env,
                   "POSTROOM_ACME_CHALLENGE": "tls-alpn-01"}
        web = ServiceProcess("web", web_env, argv=runtime_argv("postroom_web.main:SERVICE"))
        web.start(timeout=60)
        yield Setup(db, database_url, redis_url, domain, hostname, pebble, web, web_tls_port,
                    env, tmp, keyring)
    finally:
        if web is not None:
            web.close()
        if pebble is not None:
            pebble.stop()
        db.dispose()
        drop_test_database(database_url)


def _issued(setup: Setup) -> bool:
    return setup.db.run_sync(acme.certificate_info) is not None


def test_the_web_service_issues_the_certificate_at_start_by_tls_alpn_01(setup: Setup):
    _wait(lambda: _issued(setup), 60, lambda: "the first issuance\n" + setup.web.output[-3000:]
          + "\npebble:\n" + setup.pebble.output())
    cert = setup.certificate()
    assert cert.names == (setup.hostname, f"mta-sts.{setup.domain}",
                          f"autoconfig.{setup.domain}")
    leaf = x509.load_pem_x509_certificates(cert.cert_pem.encode())[0]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == set(cert.names)
    # the key is sealed at rest: without the secret key it cannot be read
    with pytest.raises(secretbox.SecretError):
        setup.db.run_sync(acme.get_certificate)
    events = [e for e in setup.web.log_events() if e.get("event") == "acme certificate issued"]
    assert events and events[0]["names"] == list(cert.names)
    answered = {e["name"] for e in setup.web.log_events()
                if e.get("event") == "tls-alpn-01 answer loaded"}
    assert answered == set(cert.names)
    # the web service's own HTTPS listener took it from the database
    _wait(lambda: _peer_serial(setup.web_tls_port, setup.hostname) == _serial(cert.cert_pem),
          15, "the web service to load the issued certificate")


def test_an_imap_started_later_serves_the_certificate_and_a_renewed_one_without_restart(
        setup: Setup):
    _wait(lambda: _issued(setup), 60, "the first issuance")
    first = setup.certificate()
    imaps = free_port()
    # its own files, which do not exist yet: the database is the only source
    prefix = f"prtest:acme-imap-{os.getpid()}-{imaps}:"  # this run's own Redis keys
    env = {**listener_env(setup.database_url, setup.redis_url, prefix, setup.tmp / "imap",
                          hostname=setup.hostname, imap_listen=free_port(),
                          imap_tls_listen=imaps), **setup.env}
    # started once here (a `with ServiceProcess(...)` would start it already)
    imap = ServiceProcess("imap", env, argv=runtime_argv("postroom_imap.main:SERVICE"))
    try:
        imap.start(timeout=60)
        assert _peer_serial(imaps, setup.hostname) == _serial(first.cert_pem)
        out = setup.cli("acme", "issue").stdout
        assert "certificate issued for" in out
        second = setup.certificate()
        assert _serial(second.cert_pem) != _serial(first.cert_pem)
        assert second.key_pem != first.key_pem  # a fresh key every time
        _wait(lambda: _peer_serial(imaps, setup.hostname) == _serial(second.cert_pem), 15,
              "the imap service to reload the renewed certificate")
        assert any(e.get("event") == "tls certificate reloaded" for e in imap.log_events())
    finally:
        imap.close()


def test_renew_issues_only_when_expiry_is_nearer_than_renew_before(setup: Setup):
    _wait(lambda: _issued(setup), 60, "the first issuance")
    before = setup.certificate()
    status = json.loads(setup.cli("acme", "status", "--json").stdout)
    assert status["due"] is False and status["covers"] == list(before.names)
    assert status["directory"] == setup.pebble.directory
    out = setup.cli("acme", "renew").stdout
    assert "nothing to do" in out
    assert _serial(setup.certificate().cert_pem) == _serial(before.cert_pem)
    # pebble's certificates are valid for years: a renew-before longer than that is due now
    out = setup.cli("acme", "renew", env={"POSTROOM_ACME_RENEW_BEFORE": "36500d"}).stdout
    assert "certificate issued for" in out
    assert _serial(setup.certificate().cert_pem) != _serial(before.cert_pem)


def test_two_renewers_racing_issue_once(setup: Setup):
    _wait(lambda: _issued(setup), 60, "the first issuance")
    before = setup.certificate()
    settings = load_settings(setup.env)
    issuers = [Issuer(Database(setup.database_url, pool_size=2), settings,
                      keyring=setup.keyring) for _ in range(2)]
    start, outcomes = threading.Barrier(2), []

    def run(issuer: Issuer) -> None:
        start.wait()
        outcomes.append(issuer.ensure(force=True).outcome)

    threads = [threading.Thread(target=run, args=(i,)) for i in issuers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for issuer in issuers:
        issuer.database.dispose()
    assert sorted(outcomes) == ["busy", "issued"]
    assert _serial(setup.certificate().cert_pem) != _serial(before.cert_pem)


def _fetch_policy(setup: Setup, host: str, root_pem: str) -> tuple[int, str, str]:
    context = ssl.create_default_context(cadata=root_pem)
    conn = http.client.HTTPSConnection("127.0.0.1", setup.web_tls_port, context=context,
                                       timeout=10)
    # SNI and certificate check for the policy host, as a sending MTA does (RFC 8461 3.3)
    conn.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", setup.web_tls_port),
                                                             timeout=10), server_hostname=host)
    conn.putrequest("GET", "/.well-known/mta-sts.txt", skip_host=True)
    conn.putheader("Host", host)
    conn.endheaders()
    reply = conn.getresponse()
    body = reply.read().decode()
    conn.close()
    return reply.status, reply.getheader("content-type") or "", body


def _txt_id(out: str, domain: str) -> str:
    [line] = [x for x in out.splitlines() if x.startswith(f"_mta-sts.{domain}. IN TXT")]
    return line.split("id=")[1].rstrip('"')


def test_the_mta_sts_policy_is_served_over_https_and_its_id_follows_the_mode(setup: Setup):
    _wait(lambda: _issued(setup), 60, "the first issuance")
    host = f"mta-sts.{setup.domain}"
    cert = setup.certificate()
    _wait(lambda: _peer_serial(setup.web_tls_port, host) == _serial(cert.cert_pem), 15,
          "the web service to load the current certificate")
    root = setup.pebble.root_pem()
    status, _, _ = _fetch_policy(setup, host, root)
    assert status == 404  # mode none: no policy
    assert "; _mta-sts." in setup.cli("dns", setup.domain).stdout  # only a hint while off

    setup.cli("domain", "mta-sts", setup.domain, "testing")
    status, ctype, body = _fetch_policy(setup, host, root)
    assert (status, ctype) == (200, "text/plain; charset=utf-8")
    assert body == (f"version: STSv1\r\nmode: testing\r\nmx: {setup.hostname}\r\n"
                    "max_age: 86400\r\n")
    testing_id = _txt_id(setup.cli("dns", setup.domain).stdout, setup.domain)
    assert testing_id.isalnum() and len(testing_id) <= 32

    setup.cli("domain", "mta-sts", setup.domain, "enforce")
    status, _, body = _fetch_policy(setup, host, root)
    assert status == 200 and "mode: enforce\r\n" in body and "max_age: 604800\r\n" in body
    enforce_id = _txt_id(setup.cli("dns", setup.domain).stdout, setup.domain)
    assert enforce_id != testing_id
    # the same mode again is a new id too (the operator said the policy changed)
    setup.cli("domain", "mta-sts", setup.domain, "enforce")
    assert _txt_id(setup.cli("dns", setup.domain).stdout, setup.domain) != enforce_id


def test_the_policy_is_not_served_over_plain_http_nor_for_other_hosts(setup: Setup):
    setup.cli("domain", "mta-sts", setup.domain, "testing")
    conn = http.client.HTTPConnection("127.0.0.1", _web_port(setup), timeout=10)
    conn.request("GET", "/.well-known/mta-sts.txt", headers={"Host": f"mta-sts.{setup.domain}"})
    assert conn.getresponse().status == 404
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", _web_port(setup), timeout=10)
    conn.request("GET", "/.well-known/acme-challenge/no-such-token")
    assert conn.getresponse().status == 404
    conn.close()


def _web_port(setup: Setup) -> int:
    listen = setup.web.env["POSTROOM_WEB_LISTEN"]  # tcp:PORT:interface=127.0.0.1
    return int(listen.split(":")[1])

