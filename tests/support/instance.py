"""One whole Postroom instance for end-to-end tests: six real services on one loopback address.

An :class:`Instance` is what a small mail provider runs: its own migrated
PostgreSQL database, its own Redis key prefix, its own self-signed
certificate, and ``postroom serve msa|mta|dmarc|mda|imap|pop3`` as real
processes listening on one loopback address (127.0.0.2, 127.0.0.3, ...). Two
instances mail each other because the test DNS server publishes each one's
MX, SPF, DKIM and DMARC records and both mta listeners use the same port
number (``POSTROOM_SMTP_OUTBOUND_PORT``) on their own address::

    port = shared_free_port("127.0.0.2", "127.0.0.3")
    with Instance("one.test", "127.0.0.2", redis_url, workdir, smtp_port=port,
                  dns=dns_server_session) as one:
        one.spawn()                 # all six services, not waited for yet
        one.setup_domain()          # `postroom domain add` + `postroom dkim generate`
        one.wait()
        one.add_user("alice@one.test")
        one.publish("p=reject")     # MX, SPF, DKIM and DMARC on the test DNS server
        reply = one.submit("alice@one.test", ["bob@two.test"], message)

The relay of an instance connects from its own address
(``POSTROOM_SMTP_BIND_ADDRESS``), so ``v=spf1 ip4:127.0.0.2 -all`` is true
for mail it sends.
"""

from __future__ import annotations

import imaplib
import poplib
import secrets
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import text

from postroom.auth.passwords import hash_password
from postroom.mailauth.dnsrecords import dkim_txt
from postroom.net.tls import make_self_signed
from postroom.queue.streams import connect
from postroom.store import dkim, spool, users
from postroom.store.db import Database
from postroom.store.migrate import upgrade
from tests.support.db import create_test_database, drop_test_database
from tests.support.dns import LOOPBACK_ENV, DNSServer
from tests.support.ports import free_port
from tests.support.procs import ServiceProcess, base_env, cli_argv
from tests.support.redisdb import delete_prefix, wait_until

PASSWORD = "correct horse battery"
SERVICES = ("dmarc", "mda", "mta", "msa", "imap", "pop3")


def _port_free(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return False
        return True


def shared_free_port(*addresses: str) -> int:
    """A TCP port free on every one of ``addresses`` (so one number serves them all)."""
    for _ in range(200):
        candidate = free_port(addresses[0])  # outside the ephemeral range (tests.support.ports)
        if all(_port_free(a, candidate) for a in addresses):
            return candidate
    raise RuntimeError(f"no port free on all of {addresses}")


def unverified_tls() -> ssl.SSLContext:
    """A client context for the instances' self-signed certificates."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class Instance:
    """A whole Postroom instance (six services) for ``domain`` on loopback ``address``."""

    def __init__(self, domain: str, address: str, redis_url: str, workdir: Path, *,
                 smtp_port: int, dns: DNSServer, env: Mapping[str, str] | None = None) -> None:
        self.domain = domain
        self.address = address
        self.hostname = f"mx.{domain}"
        self.redis_url = redis_url
        self.dns = dns
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.prefix = f"prtest:{secrets.token_hex(6)}:"
        self.smtp_port = smtp_port
        self.cert_file = self.workdir / "cert.pem"
        self.key_file = self.workdir / "key.pem"
        make_self_signed(self.cert_file, self.key_file, self.hostname)
        self.ports: dict[str, int] = {}
        for name in ("msa", "msa_tls", "imap", "imap_tls", "pop3", "pop3_tls", "dmarc"):
            port = shared_free_port(address)
            while port in self.ports.values() or port == smtp_port:  # free, but not yet ours
                port = shared_free_port(address)
            self.ports[name] = port
        self.extra_env = dict(env or {})
        self.processes: dict[str, ServiceProcess] = {}
        self._retired: list[ServiceProcess] = []
        self.database_url = create_test_database("postroom_e2e_")
        upgrade(self.database_url)
        self.db = Database(self.database_url, pool_size=2)
        self.redis: redis.Redis = connect(redis_url)

    # --- configuration and processes

    def _listen(self, port: int) -> str:
        return f"tcp:{port}:interface={self.address}"

    def env(self) -> dict[str, str]:
        """Every POSTROOM_* variable the instance's services share."""
        p = self.ports
        env = {
            "POSTROOM_DATABASE_URL": self.database_url,
            "POSTROOM_REDIS_URL": self.redis_url,
            "POSTROOM_REDIS_PREFIX": self.prefix,
            "POSTROOM_HOSTNAME": self.hostname,
            "POSTROOM_TLS_CERT_FILE": str(self.cert_file),
            "POSTROOM_TLS_KEY_FILE": str(self.key_file),
            "POSTROOM_MTA_LISTEN": self._listen(self.smtp_port),
            "POSTROOM_MSA_LISTEN": self._listen(p["msa"]),
            "POSTROOM_MSA_TLS_LISTEN": self._listen(p["msa_tls"]),
            "POSTROOM_IMAP_LISTEN": self._listen(p["imap"]),
            "POSTROOM_IMAP_TLS_LISTEN": self._listen(p["imap_tls"]),
            "POSTROOM_POP3_LISTEN": self._listen(p["pop3"]),
            "POSTROOM_POP3_TLS_LISTEN": self._listen(p["pop3_tls"]),
            "POSTROOM_DMARC_LISTEN": self._listen(p["dmarc"]),
            "POSTROOM_DMARC_URL": f"http://{self.address}:{p['dmarc']}",
            "POSTROOM_DNS_SERVERS": self.dns.env["POSTROOM_DNS_SERVERS"],
            "POSTROOM_DNS_TIMEOUT": "2s",
            "POSTROOM_SMTP_OUTBOUND_PORT": str(self.smtp_port),
            "POSTROOM_SMTP_BIND_ADDRESS": self.address,
            # the other instances and test MXs are on loopback, internal to a real relay
            **LOOPBACK_ENV,
            "POSTROOM_DB_POOL_SIZE": "3",
            "POSTROOM_QUEUE_CLAIM_IDLE": "2s",
            "POSTROOM_RECONCILE_INTERVAL": "1s",
            "POSTROOM_RETRY_INITIAL": "1s",
            "POSTROOM_RETRY_MAX": "2s",
            "POSTROOM_SHUTDOWN_GRACE": "5s",
            # mail of the tests' own domains is not reported to anyone
            "POSTROOM_DMARC_REPORTS": "false",
        }
        env.update(self.extra_env)
        return env

    def spawn(self, names: Iterable[str] = SERVICES) -> Instance:
        """Start ``postroom serve NAME`` for each name without waiting (see :meth:`wait`)."""
        for name in names:
            process = ServiceProcess(name, self.env(), argv=cli_argv(name))
            self.processes[name] = process.spawn()
        return self

    def wait(self, timeout: float = 180.0) -> None:
        """Wait until every running service answers /healthz with 200."""
        for process in self.processes.values():
            process.wait_healthy(timeout)

    def start(self, names: Iterable[str] = SERVICES, timeout: float = 180.0) -> None:
        """Spawn ``names`` and wait for them to be healthy."""
        self.spawn(names).wait(timeout)

    def kill(self, name: str) -> None:
        """SIGKILL one service (by the PID we started): no chance to hand anything back."""
        process = self.processes.pop(name)
        assert process.proc is not None
        process.proc.kill()
        process.proc.wait(10)
        self._retired.append(process)

    def log_events(self, name: str) -> list[dict[str, Any]]:
        """JSON log lines of every process that ran ``name`` (killed ones included)."""
        runs = [p for p in self._retired if p.name == name]
        if name in self.processes:
            runs.append(self.processes[name])
        return [event for p in runs for event in p.log_events()]

    def cli(self, *args: str, stdin: str | None = None) -> str:
        """Run ``postroom ARGS`` against this instance; its stdout (fails on a non-zero exit)."""
        done = subprocess.run([sys.executable, "-m", "postroom.ops.cli", *args], input=stdin,
                              text=True, env=base_env(self.env()), capture_output=True,
                              timeout=60, check=False)
        assert done.returncode == 0, f"postroom {' '.join(args)}: {done.stderr}"
        return done.stdout

    # --- accounts, keys and DNS

    def setup_domain(self) -> None:
        """Add the domain and its DKIM keys (RSA and ed25519) with the operator's CLI, as the
        operator does: generate (pending), publish the records, `dns --check` activates."""
        self.cli("domain", "add", self.domain)
        self.cli("dkim", "generate", self.domain, "--algorithm", "both")
        self.publish()
        self.cli("dns", self.domain, "--check")

    def add_user(self, address: str, password: str = PASSWORD) -> int:
        """Create an account; a cheap hash, since the hash cost is not under test here."""
        info = self.db.run_sync(users.add_user, address, password,
                                hash_fn=lambda p: hash_password(p, ln=4))
        return int(info.id)

    def dns_records(self, dmarc: str = "p=reject") -> dict[str, dict[str, list[Any]]]:
        """MX, SPF (for the domain and the HELO name), DKIM and DMARC of this instance."""
        spf = f"v=spf1 ip4:{self.address} -all"
        zone: dict[str, dict[str, list[Any]]] = {
            self.domain: {"MX": [(10, self.hostname)], "TXT": [spf]},
            self.hostname: {"A": [self.address], "TXT": [spf]},
            f"_dmarc.{self.domain}": {"TXT": [f"v=DMARC1; {dmarc}; adkim=r; aspf=r"]},
        }
        for key in self.db.run_sync(dkim.list_keys, self.domain):
            if key.state == "retired":
                continue
            zone[f"{key.selector}._domainkey.{self.domain}"] = {
                "TXT": [dkim_txt({"algorithm": key.algorithm,
                                  "public_key_b64": key.public_key_b64})]}
        return zone

    def publish(self, dmarc: str = "p=reject") -> None:
        """Put :meth:`dns_records` on the test DNS server."""
        self.dns.load(self.dns_records(dmarc))

    # --- clients

    def submit(self, user: str, recipients: list[str], message: bytes,
               mail_from: str | None = None, password: str = PASSWORD) -> str:
        """Submit over port-587-style STARTTLS + AUTH with smtplib; the 250 reply text."""
        with smtplib.SMTP(self.address, self.ports["msa"], timeout=30) as client:
            client.starttls(context=unverified_tls())
            client.login(user, password)
            client.ehlo()
            code, reply = client.mail(user if mail_from is None else mail_from)
            assert code == 250, reply
            for rcpt in recipients:
                code, reply = client.rcpt(rcpt)
                assert code == 250, (rcpt, reply)
            code, reply = client.data(message)
            assert code == 250, reply
            return reply.decode()

    def smtp(self, source: str = "127.0.0.1") -> smtplib.SMTP:
        """An unauthenticated port-25 session from ``source``, after EHLO."""
        client = smtplib.SMTP(self.address, self.smtp_port, timeout=30,
                              source_address=(source, 0))
        client.ehlo("client.example")
        return client

    def imap(self, user: str, password: str = PASSWORD) -> imaplib.IMAP4_SSL:
        """A logged-in implicit-TLS IMAP session."""
        client = imaplib.IMAP4_SSL(self.address, self.ports["imap_tls"],
                                   ssl_context=unverified_tls(), timeout=30)
        client.login(user, password)
        return client

    def pop3(self, user: str, password: str = PASSWORD) -> poplib.POP3:
        """A logged-in POP3 session over STLS."""
        client = poplib.POP3(self.address, self.ports["pop3"], timeout=30)
        client.stls(context=unverified_tls())
        client.user(user)
        client.pass_(password)
        return client

    def fetch_all(self, user: str, mailbox: str = "INBOX") -> list[bytes]:
        """Every message of ``mailbox`` over IMAP, in UID order (BODY.PEEK: nothing marked)."""
        client = self.imap(user)
        try:
            typ, _ = client.select(f'"{mailbox}"', readonly=True)
            assert typ == "OK", mailbox
            typ, data = client.uid("SEARCH", "ALL")
            uids = data[0].split() if data and data[0] else []
            found = []
            for uid in uids:
                typ, parts = client.uid("FETCH", uid, "(BODY.PEEK[])")
                assert typ == "OK"
                found.extend(p[1] for p in parts if isinstance(p, tuple))
            return found
        finally:
            client.logout()

    def wait_for_mail(self, user: str, count: int = 1, mailbox: str = "INBOX",
                      timeout: float = 30.0) -> list[bytes]:
        """Poll over IMAP until ``mailbox`` holds at least ``count`` messages; returns them."""
        def enough() -> list[bytes] | None:
            found = self.fetch_all(user, mailbox)
            return found if len(found) >= count else None
        return list(wait_until(enough, timeout=timeout, interval=0.2))

    # --- the store

    def spool_states(self, queue_id: str) -> list[str]:
        return [r.state for r in self.db.run_sync(spool.get_spool, queue_id).recipients]

    def query(self, sql: str, **params: Any) -> list[Any]:
        """Rows of a read-only SQL query on the instance's database."""
        return list(self.db.run_sync(lambda s: s.execute(text(sql), params).all()))

    # --- teardown

    def close(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL), drop the database, delete the keys."""
        everything = [*self.processes.values(), *self._retired]
        for process in everything:
            # all at once: six graceful shutdowns in parallel, not one after the other
            if process.proc is not None:
                process.signal(signal.SIGTERM)
        for process in everything:
            process.close()
        self.processes.clear()
        self.db.dispose()
        try:
            drop_test_database(self.database_url)
        finally:
            try:
                delete_prefix(self.redis, self.prefix)
            finally:
                self.redis.close()
                shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Instance:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def queue_id_of(reply: str) -> str:
    """The queue id from a ``250 ... queued as ID`` reply."""
    return reply.rsplit(" ", 1)[-1].strip()


def settle(seconds: float) -> None:
    """Give asynchronous work a moment to do what it must not do (a second DSN, a relay)."""
    time.sleep(seconds)


def fresh_user(instance: Instance, name: str) -> str:
    """A new account ``name-XXXX@domain`` (tests in one module never share a mailbox)."""
    address = f"{name}-{secrets.token_hex(3)}@{instance.domain}"
    instance.add_user(address)
    return address


def authentication_results(raw: bytes) -> list[tuple[str, str]]:
    """(authserv-id, unfolded value) of each Authentication-Results field, top first."""
    import email
    from email import policy

    parsed = email.message_from_bytes(raw, policy=policy.compat32)
    fields = []
    for value in parsed.get_all("Authentication-Results") or []:
        flat = " ".join(str(value).split())
        fields.append((flat.split(";", 1)[0].strip().lower(), flat))
    return fields


def methods(value: str) -> dict[str, list[str]]:
    """``{"spf": ["pass"], "dkim": ["pass", "pass"], ...}`` from one A-R value."""
    found: dict[str, list[str]] = {}
    for clause in value.split(";")[1:]:
        words = clause.strip().split()
        if words and "=" in words[0]:
            method, _, result = words[0].partition("=")
            found.setdefault(method.lower(), []).append(result.lower())
    return found
