"""A real Dovecot (Debian's dovecot-core, -imapd, -pop3d) on loopback, for migration tests.

Everything lives under one temporary folder: the configuration, base_dir and
state_dir, the passwd-file (passdb and userdb) and the Maildirs. Mail belongs
to the ``mail`` system user with Dovecot's own modes (folders 0700, files
0600), as a vmail user's would on a real server. Dovecot runs as root (its
master must, to switch to the mail user), in the foreground, and is stopped by
its PID.
"""

from __future__ import annotations

import imaplib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.ports import free_port

DOVECOT = "/usr/sbin/dovecot"
DOVEADM = "/usr/bin/doveadm"
MAIL_USER = "mail"  # an existing system user standing in for vmail


def make_root() -> Path:
    """A fresh folder under the system's temporary folder (every parent traversable)."""
    return Path(tempfile.mkdtemp(prefix="postroom-dovecot-"))


def hash_password(scheme: str, password: str) -> str:
    """What ``doveadm pw -s SCHEME`` writes (``{SCHEME}...``)."""
    done = subprocess.run([DOVEADM, "-o", "stats_writer_socket_path=", "pw", "-s", scheme,
                           "-p", password], capture_output=True, text=True, timeout=60,
                          check=True)
    return done.stdout.strip()


class Dovecot:
    """One Dovecot instance with a passwd-file of ``accounts`` (address -> hash)."""

    def __init__(self, root: Path, accounts: dict[str, str]) -> None:
        self.root = root
        entry = pwd.getpwnam(MAIL_USER)
        self.uid, self.gid = entry.pw_uid, entry.pw_gid
        # the mail user must get through ``root`` (a fresh folder directly under /tmp, see
        # :func:`make_root`) to the Maildirs; it reads nothing else there
        os.chmod(root, 0o711)
        self.mail = root / "mail"
        self.mail.mkdir(mode=0o700)
        os.chown(self.mail, self.uid, self.gid)
        for sub in ("run", "state"):
            (root / sub).mkdir()
        self.passwd = root / "passwd"
        lines = []
        for address, stored in accounts.items():
            local, _, domain = address.partition("@")
            home = self.mail / domain / local
            lines.append(f"{address}:{stored}:{self.uid}:{self.gid}::{home}::")
        self.passwd.write_text("\n".join(lines) + "\n")
        self.imap_port = free_port()
        self.pop3_port = free_port()
        self.config = root / "dovecot.conf"
        self.config.write_text(self._config())
        self.process: subprocess.Popen[bytes] | None = None

    def home(self, address: str) -> Path:
        local, _, domain = address.partition("@")
        return self.mail / domain / local

    def maildir(self, address: str) -> Path:
        return self.home(address) / "Maildir"

    def _config(self) -> str:
        r = self.root
        return f"""
protocols = imap pop3
listen = 127.0.0.1
base_dir = {r}/run
state_dir = {r}/state
instance_name = postroom-test-{os.getpid()}-{self.imap_port}
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = 1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
mail_location = maildir:~/Maildir
log_path = {r}/dovecot.log
passdb {{
  driver = passwd-file
  args = {self.passwd}
}}
userdb {{
  driver = passwd-file
  args = {self.passwd}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""

    def start(self, timeout: float = 30.0) -> None:
        self.process = subprocess.Popen([DOVECOT, "-F", "-c", str(self.config)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        for port in (self.imap_port, self.pop3_port):
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"dovecot exited: {self.log()}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"dovecot not listening: {self.log()}") from None
                    time.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout)
        if self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None
        # its children (imap, pop3, auth) go with the master; wait for the pid file to go too
        deadline = time.monotonic() + timeout
        while (self.root / "run" / "master.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.1)

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def save(self, address: str, data: bytes, mailbox: str = "INBOX") -> None:
        """Deliver with Dovecot's own storage code (``doveadm save``), as its LDA would."""
        subprocess.run([DOVEADM, "-c", str(self.config), "save", "-u", address, "-m", mailbox],
                       input=data, capture_output=True, timeout=60, check=True)

    def drop(self, address: str, name: str, data: bytes) -> Path:
        """A file put straight into new/ (as Postfix's virtual delivery does), owned by vmail."""
        path = self.maildir(address) / "new" / name
        path.write_bytes(data)
        os.chown(path, self.uid, self.gid)
        os.chmod(path, 0o600)
        return path

    def imap(self, address: str, password: str) -> imaplib.IMAP4:
        client = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=30)
        client.login(address, password)
        return client

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
