"""Dovecot as the peer MDA and IMAP server: a private config, loopback ports only, its own dirs.

Runs ``dovecot -F -c var/bench/dovecot/dovecot.conf`` (foreground, stopped by
PID) with IMAP and LMTP on free 127.0.0.1 ports, an auth socket on a loopback
port for Postfix's SASL, Maildir under var/bench/dovecot/mail owned by the
``mail`` user, and users in a passwd-file with SHA512-CRYPT hashes.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from common import VAR, free_port, pss_kib, run, stop_pid, tool, wait_port

ROOT = VAR / "dovecot"
MAIL_UID = 8  # Debian's `mail` user owns the Maildirs (Dovecot refuses root)
PASSWORD = "bench-password-1"

CONFIG = """\
# written by bench/peers/dovecot.py; loopback only, nothing outside var/bench/dovecot
base_dir = {root}/run
state_dir = {root}/state
instance_name = bench-dovecot
protocols = {protocols}
listen = 127.0.0.1
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_cache_size = 10M
first_valid_uid = {uid}
last_valid_uid = {uid}
mail_location = maildir:{root}/mail/%u
mail_uid = {uid}
mail_gid = {uid}
mail_fsync = optimized
imap_hibernate_timeout = {hibernate}
default_process_limit = {process_limit}
default_client_limit = {client_limit}
default_vsz_limit = 512M
passdb {{
  driver = passwd-file
  args = scheme=SHA512-CRYPT {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={uid} home={root}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
  process_min_avail = 2
  service_count = 0
}}
service imap {{
  process_limit = {process_limit}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {lmtp_port}
  }}
  process_min_avail = 4
}}
service auth {{
  inet_listener auth-inet {{
    address = 127.0.0.1
    port = {auth_port}
  }}
}}
service imap-hibernate {{
  unix_listener imap-hibernate {{
    mode = 0660
  }}
}}
protocol imap {{
  mail_max_userip_connections = 20000
}}
protocol lmtp {{
  postmaster_address = postmaster@bench.test
}}
"""


class Dovecot:
    """A private Dovecot; ``users`` are user0@bench.test ... with PASSWORD."""

    def __init__(self, users: int = 1, *, hibernate: str = "0", lmtp: bool = True,
                 process_limit: int = 6000) -> None:
        self.users = users
        # one imap process per connection until hibernated: the idle-connection curve
        # asks for more than the default 6000
        self.process_limit = process_limit
        # IMAP only (lmtp=False): workloads that fill the Maildir themselves need no dovecot-lmtpd
        self.lmtp = lmtp
        self.hibernate = hibernate
        self.imap_port = free_port()
        self.lmtp_port = free_port()
        self.auth_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available(lmtp: bool = True) -> str | None:
        """None when installed, else why not."""
        for name in ("dovecot", "doveadm"):
            if tool(name) is None:
                return f"{name} is not installed"
        if lmtp and not Path("/usr/lib/dovecot/lmtp").exists():
            return "dovecot-lmtpd is not installed"
        return None

    def maildir(self, user: str) -> Path:
        return ROOT / "mail" / user

    def start(self) -> Dovecot:
        if ROOT.exists():
            shutil.rmtree(ROOT)
        for sub in ("run", "state", "mail"):
            (ROOT / sub).mkdir(parents=True)
        shutil.chown(ROOT / "mail", MAIL_UID, MAIL_UID)
        hashed = run(["doveadm", "pw", "-s", "SHA512-CRYPT", "-p", PASSWORD]).stdout.decode()
        hashed = hashed.strip().removeprefix("{SHA512-CRYPT}")
        (ROOT / "passwd").write_text("".join(
            f"user{n}@bench.test:{hashed}::::::\n" for n in range(self.users)))
        conf = ROOT / "dovecot.conf"
        conf.write_text(CONFIG.format(root=ROOT, uid=MAIL_UID, imap_port=self.imap_port,
                                      lmtp_port=self.lmtp_port, auth_port=self.auth_port,
                                      hibernate=self.hibernate,
                                      process_limit=self.process_limit,
                                      client_limit=2 * self.process_limit,
                                      protocols="imap lmtp" if self.lmtp else "imap"))
        self.proc = subprocess.Popen([tool("dovecot") or "dovecot", "-F", "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        for port in (self.imap_port, self.lmtp_port if self.lmtp else 0, self.auth_port):
            if not port:
                continue
            try:
                wait_port(port)
            except RuntimeError:
                log = ROOT / "dovecot.log"
                text = log.read_text()[-1500:] if log.exists() else ""
                self.stop()
                raise RuntimeError(f"dovecot did not listen on {port}: {text}") from None
        return self

    def stop(self) -> None:
        stop_pid(self.proc)
        self.proc = None

    def count_new(self, user: str) -> int:
        """Messages delivered into a user's INBOX (new/ and cur/)."""
        base = self.maildir(user)
        total = 0
        for sub in ("new", "cur"):
            try:
                total += sum(1 for _ in (base / sub).iterdir())
            except FileNotFoundError:
                pass
        return total

    def clear(self, user: str) -> None:
        """Empty a user's Maildir and Dovecot's index of it (between runs)."""
        base = self.maildir(user)
        if base.exists():
            shutil.rmtree(base)

    def root_pids(self) -> list[int]:
        """The master (imap, imap-login, lmtp, auth... are its children)."""
        return [self.proc.pid] if self.proc is not None else []

    def pids(self) -> list[int]:
        """Every process of this Dovecot instance (master and children)."""
        if self.proc is None:
            return []
        out = run(["ps", "-e", "-o", "pid=,ppid="], check=False).stdout.decode().split("\n")
        children: dict[int, list[int]] = {}
        for line in out:
            parts = line.split()
            if len(parts) == 2:
                children.setdefault(int(parts[1]), []).append(int(parts[0]))
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found

    def memory_kib(self) -> int:
        """Total proportional memory (PSS) of every process of the instance."""
        return sum(pss_kib(pid) for pid in self.pids())
