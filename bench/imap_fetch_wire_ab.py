"""FETCH responses of two code versions compared byte for byte on a varied corpus (issue 23).

Both imap services (this tree and ``--base``) run on one database; one account gets a corpus
of odd messages (folded and duplicate fields, LF-only lines, a bare CR, non-ASCII, a header
without a body or an empty line, a multipart) appended, both sides EXAMINE it and every item
list is fetched from each: the parsed responses (literals included) must be equal.

    .venv/bin/python bench/imap_fetch_wire_ab.py --base main
"""

from __future__ import annotations

import argparse
import imaplib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import proctools
from postroom_suite import PASSWORD

CORPUS = [
    b"Subject: one\r\n two\r\n\tthree\r\nTo: b@x\r\nTo: dup@x\r\nFrom: A <a@x>\r\n\r\n"
    b"body\r\n",
    b"Subject: lf only\nFrom: a@x\nDate: Mon, 7 Dec 2026 10:00:00 +0000\n\nbody\n",
    b"Subject: gr\xc3\xbc\xc3\x9fe\r\nFrom: \xc3\xa9 <e@x>\r\nX-Bare: a\rb\r\n"
    b"To : spaced@x\r\n\r\nb\r\n",
    b"X-Only: nothing asked\r\n\r\n",
    b"From: no body at all\r\n",
    b"Content-Type: multipart/mixed; boundary=q\r\nSubject: mp\r\n\r\n--q\r\n"
    b"Content-Type: text/plain\r\n\r\nx\r\n--q--\r\n",
]
ITEMS = [
    "(UID FLAGS RFC822.SIZE INTERNALDATE "
    "BODY.PEEK[HEADER.FIELDS (FROM TO CC SUBJECT DATE MESSAGE-ID CONTENT-TYPE)])",
    "(UID BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE)])",
    "(BODY.PEEK[HEADER.FIELDS.NOT (SUBJECT)])",
    "(ENVELOPE BODYSTRUCTURE)",
    "(BODY.PEEK[HEADER] RFC822.HEADER)",
    "(BODY.PEEK[HEADER.FIELDS (x-bare)]<2.10>)",
    "(UID BODY.PEEK[1.HEADER.FIELDS (SUBJECT)] BODY.PEEK[TEXT])",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="commit of the other side")
    args = parser.parse_args()
    with proctools.imap_ab(2, replicas=1, base=args.base, seeded=5) as ab:
        user = ab.users[1]
        conns = {}
        for side in ("new", "base"):
            conn = imaplib.IMAP4("127.0.0.1", ab.ports[side])
            conn.login(user, PASSWORD)
            conns[side] = conn
        for raw in CORPUS:
            if conns["new"].append("INBOX", None, None, raw)[0] != "OK":
                raise RuntimeError("APPEND failed")
        for conn in conns.values():
            conn.select("INBOX", readonly=True)
        parts = 0
        for items in ITEMS:
            got = {side: conn.uid("FETCH", "1:*", items) for side, conn in conns.items()}
            if got["new"] != got["base"]:
                print(f"DIFFERENT: {items}\n new  {got['new']!r}\n base {got['base']!r}")
                return 1
            parts += len(got["new"][1])
        print(f"identical: {len(ITEMS)} item lists, {parts} response parts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
