"""`postroom doctor`: each check passing and failing, against the loopback DNS server and real
sockets (table-driven: one healthy domain, then one thing broken at a time)."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from postroom.ops import doctor

NOW = datetime(2026, 12, 7, tzinfo=UTC)
HOST = "mx.example.org"
ADDRESS = "127.0.0.2"
KEY = SimpleNamespace(domain="example.org", selector="s1", algorithm="ed25519-sha256",
                      public_key_b64="MCowBQYDK2VwAyEAq0i3kHmUm3y2Ss7e0ckZ0ofbxJlvWzjrNXc6Lo2HjAo=",
                      state="active")
POLICY = f"version: STSv1\nmode: enforce\nmx: {HOST}\nmax_age: 86400\n"


def certificate(name: str = HOST, days: int = 90) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(days=30)).not_valid_after(NOW + timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


CERT = certificate()


class LoopbackProbes:
    """The probes over the test's DNS: a policy text (or an outage) and real TCP connects."""

    def __init__(self, resolver: Any, policy: str | None) -> None:
        self.resolver = resolver
        self.policy = policy

    def fetch_sts_policy(self, domain: str) -> str:
        if self.policy is None:
            raise OSError("connection refused")
        return self.policy

    def connect(self, host: str, port: int) -> str | None:
        addresses = self.resolver.a(host)
        if not addresses:
            return f"{host} has no address"
        try:
            with socket.create_connection((addresses[0], port), timeout=1.0):
                return None
        except OSError as exc:
            return str(exc)


@pytest.fixture
def listener() -> Iterator[int]:
    sock = socket.socket()
    sock.bind((ADDRESS, 0))
    sock.listen(8)
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def healthy(dns_server, listener):
    tlsa = doctor.tlsa_data(doctor.load_chain(CERT)[0], 1, 1).hex()
    dns_server.load({
        "example.org": {"MX": [(10, HOST)], "TXT": ["v=spf1 mx -all"]},
        HOST: {"A": [ADDRESS]},
        "2.0.0.127.in-addr.arpa": {"PTR": [HOST]},
        "s1._domainkey.example.org": {"TXT": [f"v=DKIM1; k=ed25519; p={KEY.public_key_b64}"]},
        "_dmarc.example.org": {"TXT": ["v=DMARC1; p=reject; rua=mailto:dmarc@example.org"]},
        "_mta-sts.example.org": {"TXT": ["v=STSv1; id=20261207"]},
        "_smtp._tls.example.org": {"TXT": ["v=TLSRPTv1; rua=mailto:dmarc@example.org"]},
        f"_25._tcp.{HOST}": {"TLSA": [(3, 1, 1, tlsa)]},
    })
    facts = doctor.Facts(domain="example.org", hostname=HOST, dkim_keys=(KEY,), certificate=CERT,
                         report_address="dmarc@example.org",
                         listeners=(("smtp", listener),), now=NOW)
    return SimpleNamespace(dns=dns_server, facts=facts, policy=POLICY, port=listener)


def run(env) -> dict[str, doctor.Check]:
    checks = doctor.run_checks(env.dns.resolver(), LoopbackProbes(env.dns.resolver(), env.policy),
                               env.facts)
    return {c.name: c for c in checks}


def test_a_healthy_domain_passes_every_check(healthy):
    checks = run(healthy)
    assert {name: c.status for name, c in checks.items() if c.status != doctor.PASS} == {}
    assert set(checks) == {"mx", f"mx-address:{HOST}", f"fcrdns:{ADDRESS}", "spf", "dkim:s1",
                           "dmarc", "dmarc-rua", "mta-sts", "tls-rpt", "dane",
                           "certificate-name", "certificate-expiry",
                           f"listener:{healthy.port}"}


def _txt(name: str, *values: str) -> Callable[[Any], None]:
    return lambda env: env.dns.set_records(name, "TXT", list(values))


def _facts(**changes: Any) -> Callable[[Any], None]:
    return lambda env: setattr(env, "facts", dataclasses.replace(env.facts, **changes))


def _closed_port(env) -> None:
    sock = socket.socket()
    sock.bind((ADDRESS, 0))
    port = sock.getsockname()[1]
    sock.close()
    env.facts = dataclasses.replace(env.facts, listeners=(("smtp", port),))
    env.port = port


BROKEN = [
    ("mx", lambda env: env.dns.set_records("example.org", "MX", [(10, "mx.other.test")]),
     doctor.FAIL, "IN MX 10 mx.example.org."),
    (f"mx-address:{HOST}", lambda env: env.dns.set_records(HOST, "A", []), doctor.FAIL, "A"),
    (f"fcrdns:{ADDRESS}",
     lambda env: env.dns.set_records("2.0.0.127.in-addr.arpa", "PTR", ["host.isp.test"]),
     doctor.FAIL, "PTR"),
    ("spf", _txt("example.org", "v=spf1 -all"), doctor.FAIL, "ip4"),
    ("spf", _txt("example.org", "v=spf1 mx -all", "v=spf1 -all"), doctor.FAIL, "v=spf1 mx -all"),
    ("spf", lambda env: [env.dns.set_records("example.org", "TXT",
                                             ["v=spf1 mx include:s0.example.org -all"])]
     + [env.dns.set_records(f"s{n}.example.org", "TXT",
                            [f"v=spf1 a include:s{n + 1}.example.org -all"]) for n in range(6)]
     + [env.dns.set_records("s6.example.org", "TXT", ["v=spf1 -all"])],
     doctor.FAIL, "flatten"),
    ("dkim:s1", _txt("s1._domainkey.example.org", "v=DKIM1; k=ed25519; p=AAAA"), doctor.FAIL,
     KEY.public_key_b64),
    ("dmarc", _txt("_dmarc.example.org"), doctor.FAIL, "v=DMARC1; p=none"),
    ("dmarc", _txt("_dmarc.example.org", "v=DMARC1; p=none; rua=mailto:d@example.org"),
     doctor.WARN, "quarantine"),
    ("dmarc-rua", _txt("_dmarc.example.org", "v=DMARC1; p=reject"), doctor.WARN, "rua=mailto:"),
    ("mta-sts", _txt("_mta-sts.example.org"), doctor.WARN, "_mta-sts.example.org"),
    ("mta-sts", lambda env: setattr(env, "policy", None), doctor.FAIL, "mta-sts.txt"),
    ("mta-sts", lambda env: setattr(env, "policy", POLICY.replace(HOST, "mx.other.test")),
     doctor.FAIL, f"mx: {HOST}"),
    ("mta-sts", lambda env: setattr(env, "policy", POLICY.replace("enforce", "testing")),
     doctor.WARN, "enforce"),
    ("tls-rpt", _txt("_smtp._tls.example.org"), doctor.WARN, "v=TLSRPTv1"),
    ("dane", lambda env: env.dns.set_records(f"_25._tcp.{HOST}", "TLSA", [(3, 1, 1, "00" * 32)]),
     doctor.FAIL, "IN TLSA 3 1 1"),
    ("dane", lambda env: env.dns.set_records(f"_25._tcp.{HOST}", "TLSA", []), doctor.WARN,
     "IN TLSA 3 1 1"),
    ("certificate-name", _facts(certificate=certificate("other.test")), doctor.FAIL, HOST),
    ("certificate-expiry", _facts(certificate=certificate(days=-1)), doctor.FAIL, "renew"),
    ("certificate-expiry", _facts(certificate=certificate(days=5)), doctor.WARN, "renew"),
    ("listener", _closed_port, doctor.FAIL, "firewall"),
]


@pytest.mark.parametrize("name,breaking,status,fix", BROKEN,
                         ids=[f"{b[0]}-{i}" for i, b in enumerate(BROKEN)])
def test_each_check_fails_with_its_fix(healthy, name, breaking, status, fix):
    breaking(healthy)
    checks = run(healthy)
    if name == "listener":
        name = f"listener:{healthy.port}"
    assert checks[name].status == status, checks[name]
    assert fix in checks[name].fix


def test_json_form_has_a_summary_and_every_check(healthy):
    _txt("_smtp._tls.example.org")(healthy)
    checks = list(run(healthy).values())
    doc = doctor.as_json("example.org", checks)
    assert doc["summary"] == {"pass": len(checks) - 1, "warn": 1, "fail": 0}
    assert {"name", "status", "detail", "fix"} <= set(doc["checks"][0])


def test_the_cli_prints_json_and_exits_1_on_a_failure(database, clean_db, dns_server,
                                                      monkeypatch, capsys):
    import json
    import os

    from postroom.ops.cli import main
    from postroom.store import domains

    for name in [k for k in os.environ if k.startswith("POSTROOM_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("POSTROOM_DATABASE_URL", clean_db)
    monkeypatch.setenv("POSTROOM_HOSTNAME", "mx.doctor.test")
    monkeypatch.setenv("POSTROOM_DNS_SERVERS", dns_server.env["POSTROOM_DNS_SERVERS"])
    database.run_sync(domains.add_domain, "doctor.test")
    dns_server.set_records("_smtp._tls.doctor.test", "TXT",
                           ["v=TLSRPTv1; rua=mailto:tls@doctor.test"])
    capsys.readouterr()
    assert main(["doctor", "doctor.test", "--json", "--timeout", "1"]) == 1
    doc = json.loads(capsys.readouterr().out)
    by = {c["name"]: c for c in doc["checks"]}
    assert by["tls-rpt"]["status"] == "pass"
    assert by["mx"]["status"] == "fail" and "IN MX 10 mx.doctor.test." in by["mx"]["fix"]
    assert by["dkim"]["fix"] == "postroom dkim generate doctor.test"
    assert doc["summary"]["fail"] >= 1
    assert main(["doctor", "doctor.test", "--timeout", "1"]) == 1
    out = capsys.readouterr().out
    assert "PASS  tls-rpt" in out and "fix: publish" in out
