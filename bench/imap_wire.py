"""What one IMAP command sends to PostgreSQL, counted on the wire (issue 23).

One `postroom serve imap` process whose database connections go through a small TCP proxy
that reads the frontend messages psycopg2 sends (simple query protocol: one ``Q`` message is
one statement text and one round trip, ``BEGIN`` and ``COMMIT`` included). One client on the
bench's 50-message INBOX (LOGIN, SELECT untimed), then ``--count`` of each command; the proxy's
count is divided by the commands, and each distinct statement text (parameters stripped to
their shape) is listed with how often it came per command.

    .venv/bin/python bench/imap_wire.py --count 50 [--ops SELECT,EXAMINE,FETCH headers]
"""

from __future__ import annotations

import argparse
import collections
import imaplib
import re
import socket
import struct
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import free_port
from imap_clients_ab import SEEDED
from imap_ops_ab import _command
from postroom_suite import PASSWORD, PostroomSuite, Service
from sqlalchemy.engine import make_url
from workloads import mailgen

OPS = ("SELECT", "EXAMINE", "FETCH headers", "FETCH body", "STORE toggle",
       "STORE Seen (no change)")


class WireCounter:
    """A TCP proxy to PostgreSQL that records every simple-protocol query text it forwards."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.queries: list[str] = []
        self.other: collections.Counter[str] = collections.Counter()
        threading.Thread(target=self._accept, daemon=True).start()

    def take(self) -> tuple[list[str], collections.Counter[str]]:
        with self.lock:
            got, self.queries = self.queries, []
            other, self.other = self.other, collections.Counter()
        return got, other

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pipe, args=(server, client), daemon=True).start()
            threading.Thread(target=self._frontend, args=(client, server), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            dst.close()

    def _frontend(self, src: socket.socket, dst: socket.socket) -> None:
        buf = b""
        startup = True
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                buf += data
                while True:
                    if startup:
                        if len(buf) < 4:
                            break
                        length = struct.unpack("!I", buf[:4])[0]
                        if len(buf) < length:
                            break
                        code = struct.unpack("!I", buf[4:8])[0]
                        buf = buf[length:]
                        # SSLRequest and GSSENCRequest come before the real startup message
                        startup = code in (80877103, 80877104)
                        continue
                    if len(buf) < 5:
                        break
                    kind = buf[:1]
                    length = struct.unpack("!I", buf[1:5])[0]
                    if len(buf) < 1 + length:
                        break
                    body, buf = buf[5:1 + length], buf[1 + length:]
                    with self.lock:
                        if kind == b"Q":
                            self.queries.append(body.rstrip(b"\0").decode("utf-8", "replace"))
                        else:
                            self.other[kind.decode("ascii", "replace")] += 1
        except OSError:
            pass
        finally:
            dst.close()


_LITERALS = re.compile(r"'(?:[^']|'')*'|\b\d+\b")


def shape(sql: str) -> str:
    """The statement with its literals replaced, so repeated ones group together."""
    return _LITERALS.sub("?", " ".join(sql.split()))[:160]


def run_op(conn: imaplib.IMAP4, op: str, i: int) -> None:
    if op == "EXAMINE":
        typ, _ = conn.select("INBOX", readonly=True)
        if typ != "OK":
            raise RuntimeError(f"{op}: {typ}")
        return
    _command(conn, op, i)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--ops", default=",".join(OPS))
    args = parser.parse_args()
    env = {"POSTROOM_ALLOW_PLAINTEXT_AUTH_ON_LOOPBACK": "true"}
    maildir = mailgen.make_maildir("curve", SEEDED)
    with PostroomSuite([], users=2, extra_env=env, replicas=1) as suite:
        users = [suite.user(n) for n in range(2)]
        mailgen.seed_postroom(maildir, users[0], suite.env, timeout=300)
        suite.clone_inbox(users[0], users[1:])
        url = make_url(suite.database_url)
        proxy = WireCounter((url.host or "127.0.0.1", url.port or 5432))
        port = free_port()
        senv = dict(suite.env)
        senv.update({
            "POSTROOM_DATABASE_URL": url.set(host="127.0.0.1", port=proxy.port)
                                        .render_as_string(hide_password=False),
            "POSTROOM_IMAP_LISTEN": f"tcp:{port}:interface=127.0.0.1"})
        service = Service("imap", senv, processes=0)
        try:
            service.wait_healthy()
            conn = imaplib.IMAP4("127.0.0.1", port, timeout=60)
            conn.login(users[1], PASSWORD)
            conn.select("INBOX")
            conn.store("1:*", "+FLAGS.SILENT", "(\\Seen)")
            for op in args.ops.split(","):
                for i in range(5):  # warm up: PREPAREs, pool
                    run_op(conn, op, i)
                proxy.take()
                for i in range(args.count):
                    run_op(conn, op, i)
                queries, other = proxy.take()
                print(f"--- {op}: {len(queries) / args.count:.2f} round trips (Q messages) "
                      f"per command; other frontend messages: {dict(other)}")
                for text, n in collections.Counter(shape(q) for q in queries).most_common():
                    print(f"  {n / args.count:5.2f}  {text}")
                if op == "EXAMINE":
                    conn.select("INBOX")
            conn.logout()
        finally:
            service.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
