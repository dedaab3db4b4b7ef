"""IMAP CPU per command on a small mailbox, Postroom only, two code versions side by side.

One connection per client (LOGIN and SELECT INBOX untimed), then blocks of ``--count`` of the
same command: SELECT INBOX, FETCH 1:20 of the mix's header fields, FETCH n BODY.PEEK[],
STORE toggling \\Flagged (always a change), STORE +FLAGS (\\Seen) on messages already seen
(no change). CPU from /proc of the imap process tree and of its PostgreSQL backends
(PGAPPNAME), divided by the commands sent. With ``--base COMMIT`` a second imap service runs
the tree at that commit on the same database (own accounts, own Redis prefix) and every block
alternates A B / B A, so a shared machine's drift cancels in the medians.

    .venv/bin/python bench/imap_ops_ab.py --base HEAD~1 --count 500 --rounds 4
"""

from __future__ import annotations

import argparse
import imaplib
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cpu
import proctools
from common import REPO, progress
from imap_clients_ab import SEEDED
from postroom_suite import PASSWORD
from workloads.imap_mix import HEADERS

OPS = ("SELECT", "FETCH headers", "FETCH body", "STORE toggle", "STORE Seen (no change)")
# not in the default set: APPEND grows the mailbox, "STORE Deleted+EXPUNGE" shrinks it by one
# message per command (run them as a pair, APPEND first, so the INBOX keeps its size)
WRITE_OPS = ("APPEND", "APPEND 3k", "STORE Deleted+EXPUNGE")
_APPENDED = ("From: bench@example.test\r\nTo: user@example.test\r\nSubject: append {n}\r\n"
             "Date: Mon, 7 Dec 2026 21:00:00 +0000\r\nMessage-ID: <{n}@example.test>\r\n\r\n"
             + "line of body text\r\n" * 40)
# "APPEND 3k": a 3 KiB single-part text message with the header fields a client's sent mail
# carries (Received, DKIM-Signature, MIME-Version, Content-Type with a charset, QP body)
_APPENDED_3K = (
    "Return-Path: <alice@example.test>\r\n"
    "Received: from mua.example.test (mua.example.test [192.0.2.10])\r\n"
    "\tby mx.example.test (Postroom) with ESMTPSA id 4Q2b7X1zK9z9sT\r\n"
    "\tfor <user@example.test>; Mon, 7 Dec 2026 21:00:00 +0000\r\n"
    "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.test; s=mail;\r\n"
    "\tt=1796677200; bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n"
    "\th=From:To:Subject:Date:Message-ID;\r\n"
    "\tb=" + "QmVuY2ggc2lnbmF0dXJlIGJ5dGVz" * 12 + "\r\n"
    "From: Alice Example <alice@example.test>\r\n"
    "To: User <user@example.test>, Bob <bob@example.test>\r\n"
    "Cc: team@example.test\r\n"
    "Subject: Re: the quarterly figures, append {n}\r\n"
    "Date: Mon, 7 Dec 2026 21:00:00 +0000\r\n"
    "Message-ID: <{n}@example.test>\r\n"
    "In-Reply-To: <prev.{n}@example.test>\r\n"
    "References: <first@example.test> <prev.{n}@example.test>\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8; format=flowed\r\n"
    "Content-Transfer-Encoding: quoted-printable\r\n"
    "User-Agent: Bench/1.0\r\n\r\n"
    + "Here are the figures we talked about on Monday, with the caf=C3=A9 notes =\r\n"
      "and the plan for next week.\r\n\r\n" * 22)
_appended = iter(range(10**12))  # every APPEND a new blob, as a client's would be


def _command(conn: imaplib.IMAP4, op: str, i: int) -> None:
    n = 1 + i % 20
    if op == "SELECT":
        typ, _ = conn.select("INBOX")
    elif op == "FETCH headers":
        typ, _ = conn.fetch("1:20", HEADERS)
    elif op == "FETCH body":
        typ, _ = conn.fetch(str(n), "(BODY.PEEK[])")
    elif op in ("APPEND", "APPEND 3k"):
        text = _APPENDED if op == "APPEND" else _APPENDED_3K
        typ, _ = conn.append("INBOX", None, None,
                             text.format(n=f"{time.time_ns()}.{next(_appended)}").encode())
    elif op == "STORE Deleted+EXPUNGE":
        # the last message (one APPEND added it); the STORE and the EXPUNGE count as one
        typ, _ = conn.store("*", "+FLAGS.SILENT", "(\\Deleted)")
        if typ == "OK":
            typ, _ = conn.expunge()
    elif op == "STORE toggle":
        typ, _ = conn.store(str(n), "+FLAGS" if (i // 20) % 2 == 0 else "-FLAGS", "(\\Flagged)")
    else:
        typ, _ = conn.store(str(n), "+FLAGS", "(\\Seen)")
    if typ != "OK":
        raise RuntimeError(f"{op}: {typ}")


def _redis_pids() -> list[int]:
    """The machine's redis-server processes (the suite's Redis: shared by both sides, whose
    blocks do not overlap, and by whatever else runs on the machine: a noisy column)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "redis-server":
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _block(conns: list[imaplib.IMAP4], op: str, count: int, root: int,
           pg: list[int]) -> tuple[float, float, float]:
    redis = _redis_pids()
    before = (cpu.ticks([root], children=True), cpu.ticks(pg, children=False),
              cpu.ticks(redis, children=False))

    def client(conn: imaplib.IMAP4) -> None:
        for i in range(count):
            _command(conn, op, i)

    threads = [threading.Thread(target=client, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = (cpu.ticks([root], children=True), cpu.ticks(pg, children=False),
             cpu.ticks(redis, children=False))
    done = count * len(conns)
    return tuple((a - b) * 1000 / cpu.TICKS / done  # type: ignore[return-value]
                 for a, b in zip(after, before, strict=True))


def _spy(conns: list[imaplib.IMAP4], op: str, count: int, root: int, gil: bool = True) -> None:
    out = Path(tempfile.mkstemp(prefix="imap-ops-", suffix=".txt")[1])
    # --gil: the thread holding the GIL; without: every thread not idle (the db threads'
    # Python and C time too, as seen by the CPU counters)
    spy = subprocess.Popen([str(REPO / ".venv" / "bin" / "py-spy"), "record",
                            *(["--gil"] if gil else []),
                            "--format", "raw", "--rate", "250", "-p", str(root), "-o", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    _block(conns, op, count, root, [])
    spy.send_signal(signal.SIGINT)
    spy.wait(60)
    proctools.print_top_frames(out, op, own=20, inclusive=70, width=140)


def _connect(port: int, user: str) -> imaplib.IMAP4:
    conn = imaplib.IMAP4("127.0.0.1", port, timeout=60)
    conn.login(user, PASSWORD)
    conn.select("INBOX")
    conn.store("1:*", "+FLAGS.SILENT", "(\\Seen)")
    return conn


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--count", type=int, default=500, help="commands per client a block")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--base", help="commit of the other side (A/B)")
    parser.add_argument("--ops", default=",".join(OPS))
    parser.add_argument("--seeded", type=int, default=SEEDED,
                        help="messages in each INBOX (the curves' 1k/10k/100k points: SELECT "
                             "of a bigger mailbox)")
    parser.add_argument("--profile", type=int, default=0,
                        help="instead of the A/B: py-spy --gil of the new side, this many "
                             "commands per client of each op, top frames printed")
    parser.add_argument("--profile-all-threads", action="store_true",
                        help="with --profile: py-spy without --gil (every busy thread)")
    args = parser.parse_args()
    ops = args.ops.split(",")
    sides = ["new"] + (["base"] if args.base else [])
    per_side = args.clients
    with proctools.imap_ab(per_side * len(sides) + 1, replicas=1, base=args.base,
                           seeded=args.seeded) as ab:
        suite, users, ports, roots = ab.suite, ab.users, ab.ports, ab.roots
        conns = {side: [_connect(ports[side], u)
                        for u in users[1 + i * per_side:1 + (i + 1) * per_side]]
                 for i, side in enumerate(sides)}
        for side in sides:  # warm up
            for op in ops:
                _block(conns[side], op, 50, roots[side], [])
        if args.profile:
            for op in ops:
                _spy(conns["new"], op, args.profile, roots["new"],
                     gil=not args.profile_all_threads)
            return 0
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for r in range(args.rounds):
            for op in ops:
                order = sides if r % 2 == 0 else list(reversed(sides))
                for side in order:
                    pg = proctools.pg_pids(suite, f"imap-{side}")
                    got = _block(conns[side], op, args.count, roots[side], pg)
                    results.setdefault((op, side), []).append(got)
                    progress(f"round {r} {op:24} {side:4}: imap {got[0]:.3f} "
                             f"pg {got[1]:.3f} redis {got[2]:.3f} ms/op")
        print("medians (ms per command: imap / PostgreSQL / Redis = sum):")
        for op in ops:
            line = [f"  {op:24}"]
            for side in sides:
                blocks = results[(op, side)]
                line.append(f"{side} {statistics.median(b[0] for b in blocks):.3f} / "
                            f"{statistics.median(b[1] for b in blocks):.3f} / "
                            f"{statistics.median(b[2] for b in blocks):.3f} = "
                            f"{statistics.median(sum(b) for b in blocks):.3f}")
            print("  ".join(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
