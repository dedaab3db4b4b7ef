"""Postfix as the peer MTA: a private config directory, loopback ports only, no outside delivery.

``postfix -c var/bench/postfix/etc start`` with ``inet_interfaces =
127.0.0.1``, smtpd on a free 127.0.0.1 port (never port 25 of the machine),
bench.test as a virtual mailbox domain delivered by LMTP to the bench's
Dovecot (or to ``discard:`` for the accept-only workload), every other
destination discarded, DNS lookups off, and an optional submission listener
(STARTTLS required, SASL through Dovecot's auth port). ``stop()`` runs
``postfix -c DIR stop``; the system's Postfix (if any) is never touched.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from common import VAR, free_port, run, tool, wait_for, wait_port

ROOT = VAR / "postfix"

MAIN_CF = """\
# written by bench/peers/postfix.py: loopback only, nothing leaves this machine
compatibility_level = 3.6
config_directory = {etc}
queue_directory = {root}/queue
data_directory = {root}/data
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
daemon_directory = /usr/lib/postfix/sbin
mail_owner = postfix
setgid_group = postdrop
myhostname = peer.bench.test
mydomain = bench.test
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
virtual_mailbox_domains = bench.test
virtual_transport = {transport}
default_transport = discard:benchmark
relay_transport = discard:benchmark
relayhost =
smtp_dns_support_level = disabled
smtp_host_lookup = native
lmtp_host_lookup = native
smtpd_peername_lookup = no
smtpd_recipient_restrictions = permit_mynetworks, permit_sasl_authenticated,
    reject_unauth_destination
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated,
    reject_unauth_destination
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
default_process_limit = {process_limit}
lmtp_destination_concurrency_limit = 20
alias_maps =
alias_database =
local_recipient_maps =
biff = no
maillog_file_prefixes = {root}
maillog_file = {root}/maillog
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_sasl_type = dovecot
smtpd_sasl_path = inet:127.0.0.1:{auth_port}
"""

MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
127.0.0.1:{smtp_port} inet n - n - - smtpd
{submission}pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
"""

SUBMISSION = """\
127.0.0.1:{port} inet n - n - - smtpd
  -o smtpd_tls_security_level=encrypt
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_tls_auth_only=yes
  -o smtpd_recipient_restrictions=permit_sasl_authenticated,reject
"""


class Postfix:
    """A private Postfix instance; ``transport`` is where bench.test mail goes."""

    def __init__(self, transport: str, *, auth_port: int = 0, submission: bool = False,
                 milter: str | None = None, process_limit: int = 100) -> None:
        self.transport = transport
        # Postfix's default (100 smtpd at once); the session curve raises it to its largest
        # point, as an operator expecting that many clients would
        self.process_limit = process_limit
        # e.g. "inet:127.0.0.1:PORT": every message is checked by that milter (rspamd's proxy)
        self.milter = milter
        self.auth_port = auth_port
        self.smtp_port = free_port()
        self.submission_port = free_port() if submission else 0
        self.etc = ROOT / "etc"
        self.running = False

    @staticmethod
    def available() -> str | None:
        for name in ("postfix", "smtp-source"):
            if tool(name) is None:
                return f"{name} is not installed"
        return None

    def start(self) -> Postfix:
        if ROOT.exists():
            shutil.rmtree(ROOT)
        self.etc.mkdir(parents=True)
        (ROOT / "queue").mkdir()
        (ROOT / "data").mkdir()
        shutil.chown(ROOT / "data", "postfix", "postfix")
        tls = VAR / "tls"
        (self.etc / "main.cf").write_text(MAIN_CF.format(
            etc=self.etc, root=ROOT, transport=self.transport, cert=tls / "cert.pem",
            key=tls / "key.pem", auth_port=self.auth_port or 1,
            process_limit=self.process_limit))
        if self.milter:
            with open(self.etc / "main.cf", "a") as main_cf:
                # a milter that cannot be asked defers the message, as Postroom does
                main_cf.write(f"smtpd_milters = {self.milter}\nmilter_default_action = tempfail\n"
                              "milter_protocol = 6\nmilter_mail_macros = i {mail_addr} "
                              "{client_addr} {client_name} {auth_authen}\n")
        submission = (SUBMISSION.format(port=self.submission_port)
                      if self.submission_port else "")
        (self.etc / "master.cf").write_text(MASTER_CF.format(smtp_port=self.smtp_port,
                                                             submission=submission))
        postfix = tool("postfix") or "postfix"
        # set-permissions creates the queue tree with the owners Postfix insists on
        run([postfix, "-c", str(self.etc), "set-permissions"], check=False)
        run([postfix, "-c", str(self.etc), "check"], check=False)
        started = run([postfix, "-c", str(self.etc), "start"], timeout=60, check=False)
        if started.returncode != 0:
            raise RuntimeError(f"postfix did not start: {started.stdout.decode()[-500:]} "
                               f"{self.log_tail()}")
        self.running = True
        wait_port(self.smtp_port)
        if self.submission_port:
            wait_port(self.submission_port)
        return self

    def queue_empty(self) -> bool:
        """No message left in the incoming, active or deferred queues."""
        for sub in ("incoming", "active", "deferred", "maildrop"):
            base = ROOT / "queue" / sub
            if base.exists() and any(p.is_file() for p in base.rglob("*")):
                return False
        return True

    def wait_drained(self, timeout: float = 60.0) -> None:
        wait_for(self.queue_empty, timeout, interval=0.2)

    def stop(self) -> None:
        if self.running:
            run([tool("postfix") or "postfix", "-c", str(self.etc), "stop"], check=False,
                timeout=60)
            self.running = False

    def master_pids(self) -> list[int]:
        """The master's PID (its smtpd, cleanup, qmgr, lmtp... are its children)."""
        try:
            return [int((ROOT / "queue" / "pid" / "master.pid").read_text().split()[0])]
        except (OSError, ValueError, IndexError):
            return []

    def log_tail(self) -> str:
        log = Path(ROOT / "maillog")
        return log.read_text(errors="replace")[-2000:] if log.exists() else ""
