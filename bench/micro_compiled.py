"""CPU time per unit of the pure-Python hot paths that mypyc could compile.

Runs each workload in this process and prints CPU microseconds (process time,
best of ``--repeat`` runs) per unit; which modules are compiled extensions is
printed beside the figures (``postroom.compiled``). To compare pure Python
with a compiled build, run it once with the installed tree and once with a
compiled copy first on ``PYTHONPATH`` (bench/README.md, "mypyc"):

    .venv/bin/python bench/micro_compiled.py --build /tmp/mypyc   # copy + mypyc
    .venv/bin/python bench/micro_compiled.py
    PYTHONPATH=/tmp/mypyc/shared:/tmp/mypyc/services/imap:/tmp/mypyc/services/mta \\
        .venv/bin/python bench/micro_compiled.py

``--build`` copies ``shared/`` and the imap and mta services to DIR, applies
there the few renames mypyc needs to run them at all (below), compiles the
candidate modules in three groups and prints the CPU seconds compiling took.

Workloads: SMTP command lines parsed (a session's EHLO, MAIL, 2 x RCPT, DATA,
QUIT), a DATA stream of 2,000 x 2 KB messages read with dot-unstuffing (one
message in ten has lines starting with a dot), the same messages dot-stuffed
for the outbound client, an IMAP command mix read and parsed, FETCH
responses rendered from store rows, and typical messages MIME-scanned.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _message(i: int, size: int = 2048, dots: bool = False) -> bytes:
    head = (f"From: sender{i}@example.net\r\nTo: user{i % 10}@example.org\r\n"
            f"Subject: message {i}\r\nDate: Mon, 7 Dec 2026 12:00:00 +0000\r\n"
            f"Message-ID: <{i}.bench@example.net>\r\n\r\n").encode()
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n"
    body = bytearray()
    n = 0
    while len(head) + len(body) < size:
        body += (b"." + line) if dots and n % 7 == 3 else line
        n += 1
    return head + bytes(body)


def _stuffed(message: bytes) -> bytes:
    return message.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def smtp_grammar(n: int) -> tuple[Callable[[], None], int, str]:
    from postroom.smtp.grammar import parse_command

    lines = [b"EHLO client.example.net", b"MAIL FROM:<sender@example.net> SIZE=2048 BODY=8BITMIME",
             b"RCPT TO:<user1@example.org>", b"RCPT TO:<user2@example.org> NOTIFY=NEVER",
             b"DATA", b"QUIT"]

    def run() -> None:
        for _ in range(n):
            for line in lines:
                parse_command(line)

    return run, n * len(lines), "command"


def smtp_data(n: int) -> tuple[Callable[[], None], int, str]:
    from postroom.smtp.data import Content, DataReader

    # what one connection's reads carry: a message and its end, cut where TCP might cut it
    wires = [_stuffed(_message(i, dots=i % 10 == 0)) for i in range(n)]

    def run() -> None:
        for wire in wires:
            reader = DataReader(10 * 1024 * 1024)
            reader.feed(wire[:1460])
            reader.feed(wire[1460:])

    # the workload is what it claims: every message read whole, unstuffed, not rejected
    for i, wire in enumerate(wires[:20]):
        reader = DataReader(10 * 1024 * 1024)
        events = reader.feed(wire[:1460]) + reader.feed(wire[1460:])
        body = b"".join(e.data for e in events if isinstance(e, Content))
        assert reader.done and reader.rejection is None
        assert body == _message(i, dots=i % 10 == 0)
    return run, n, "message"


def dot_stuff(n: int) -> tuple[Callable[[], None], int, str]:
    from postroom_mta.smtpclient_data import DotStuffer

    messages = [_message(i, dots=i % 10 == 0) for i in range(n)]

    def run() -> None:
        for message in messages:
            stuffer = DotStuffer()
            stuffer.feed(message)
            stuffer.finish()

    return run, n, "message"


IMAP_MIX = [
    b"a1 SELECT INBOX\r\n",
    b"a2 UID FETCH 1:* (UID FLAGS MODSEQ) (CHANGEDSINCE 12)\r\n",
    b"a3 FETCH 1:50 (UID RFC822.SIZE FLAGS INTERNALDATE "
    b"BODY.PEEK[HEADER.FIELDS (From To Cc Subject Date Message-ID)])\r\n",
    b"a4 UID STORE 4 +FLAGS.SILENT (\\Seen)\r\n",
    b"a5 UID SEARCH UNSEEN FROM \"alice\" SINCE 1-Dec-2026\r\n",
    b"a6 UID FETCH 42 (BODY.PEEK[] FLAGS)\r\n",
    b"a7 EXPUNGE\r\n",
    b"a8 NOOP\r\n",
    b"a9 APPEND INBOX (\\Seen) {%d+}\r\n%s\r\n" % (len(_message(7)), _message(7)),
    b"a10 LOGOUT\r\n",
]


def imap_parse(n: int) -> tuple[Callable[[], None], int, str]:
    from postroom_imap.syntax import Command, CommandReader

    reader = CommandReader(authenticated=True)
    for wire in IMAP_MIX:  # every command of the mix parses (none is a BAD)
        events = reader.feed(wire)
        assert len(events) == 1 and isinstance(events[0], Command), events
        if reader.paused:
            reader.resume()

    def run() -> None:
        for _ in range(n):
            reader = CommandReader(authenticated=True)
            for wire in IMAP_MIX:
                reader.feed(wire)
                if reader.paused:
                    reader.resume()

    return run, n * len(IMAP_MIX), "command"


def _typical_messages() -> list[bytes]:
    plain = _message(1, 2048)
    alternative = (
        b"From: =?UTF-8?Q?Ren=C3=A9e?= <renee@example.net>\r\nTo: a@example.org, b@example.org\r\n"
        b"Subject: =?UTF-8?B?UmU6IHLDqXVuaW9u?=\r\nDate: Mon, 7 Dec 2026 12:00:00 +0100\r\n"
        b"Message-ID: <alt@example.net>\r\nIn-Reply-To: <x@example.org>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n--b1\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        + b"Bonjour =C3=A0 tous, la r=C3=A9union est d=C3=A9plac=C3=A9e.\r\n" * 20
        + b"--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        + b"<p>Bonjour &agrave; tous</p>\r\n" * 40 + b"--b1--\r\n")
    attachment = (
        b"From: bob@example.net\r\nTo: alice@example.org\r\nSubject: the report\r\n"
        b"Date: Mon, 7 Dec 2026 12:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=\"m\"\r\n\r\n--m\r\n"
        b"Content-Type: text/plain\r\n\r\nSee attached.\r\n--m\r\n"
        b"Content-Type: application/pdf; name=\"report.pdf\"\r\n"
        b"Content-Disposition: attachment; filename=\"report.pdf\"\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        + b"JVBERi0xLjQKJcOkw7zDtsOfCjIgMCBvYmoKPDwvTGVuZ3RoIDMgMCBSL0ZpbHRlci9GbGF0ZUR\r\n" * 600
        + b"--m--\r\n")
    forwarded = (
        b"From: carol@example.net\r\nTo: dave@example.org\r\nSubject: Fwd: hello\r\n"
        b"Date: Mon, 7 Dec 2026 12:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=\"f\"\r\n\r\n--f\r\n"
        b"Content-Type: text/plain\r\n\r\nForwarding.\r\n--f\r\n"
        b"Content-Type: message/rfc822\r\n\r\n" + _message(3, 1024) + b"\r\n--f--\r\n")
    return [plain, alternative, attachment, forwarded]


def mime_scan(n: int) -> tuple[Callable[[], None], int, str]:
    from postroom.mime import analyze, metadata_json

    messages = _typical_messages()

    def run() -> None:
        for _ in range(n):
            for message in messages:
                metadata_json(analyze(message))

    return run, n * len(messages), "message"


FETCH_ITEMS = [
    b"(UID RFC822.SIZE FLAGS INTERNALDATE BODY.PEEK[HEADER.FIELDS (From To Subject Date)])",
    b"(UID FLAGS ENVELOPE BODYSTRUCTURE)",
    b"(UID BODY.PEEK[])",
]


def imap_render(n: int) -> tuple[Callable[[], None], int, str]:
    from postroom.mime import analyze, metadata_dict
    from postroom_imap.policy import FetchRow
    from postroom_imap.render import fetch_items
    from postroom_imap.syntax import Command, parse_command
    from postroom_imap.syntax_types import Fetch

    rows = []
    for i, blob in enumerate(_typical_messages()):
        meta = metadata_dict(analyze(blob))
        meta.pop("headers", None)  # the store reads ``metadata - 'headers'``
        rows.append(FetchRow(uid=i + 1, flags=("\\Seen", "$Junk"), modseq=7,
                             internaldate=datetime(2026, 12, 7, tzinfo=UTC), size=len(blob),
                             meta=meta, blob=blob))
    item_sets = []
    for line in FETCH_ITEMS:
        command = parse_command([b"a FETCH 1:* " + line], [])
        assert isinstance(command, Command) and isinstance(command.args, Fetch)
        item_sets.append(command.args.items)

    def run() -> None:
        for _ in range(n):
            for items in item_sets:
                for row in rows:
                    fetch_items(row, items, with_uid=True, with_modseq=False)

    return run, n * len(item_sets) * len(rows), "response"


# --- what one unit of the service loads costs in these modules (the prediction's inputs)


def smtp_message(n: int) -> tuple[Callable[[], None], int, str]:
    """One smtp-source message at the mta: its session's commands and its 2 KB DATA read."""
    from postroom.smtp.data import DataReader
    from postroom.smtp.grammar import parse_command

    lines = [b"EHLO localhost", b"MAIL FROM:<loadgen@src.test>", b"RCPT TO:<user0@bench.test>",
             b"DATA", b"QUIT"]
    wires = [_stuffed(_message(i)) for i in range(n)]

    def run() -> None:
        for wire in wires:
            for line in lines:
                parse_command(line)
            reader = DataReader(10 * 1024 * 1024)
            reader.feed(wire[:1460])
            reader.feed(wire[1460:])

    return run, n, "message"


def mda_message(n: int) -> tuple[Callable[[], None], int, str]:
    """The mda's MIME scan of one such message (its metadata JSON for IMAP)."""
    from postroom.mime import analyze, metadata_json

    messages = [_message(i) for i in range(n)]

    def run() -> None:
        for message in messages:
            metadata_json(analyze(message))

    return run, n, "message"


def imap_round(n: int) -> tuple[Callable[[], None], int, str]:
    """One round of bench/workloads/imap_mix.py (10 operations): its 9 commands parsed, the
    21 FETCH responses rendered (20 header fields, one whole body), the APPENDed message
    MIME-scanned."""
    from postroom.mime import analyze, metadata_dict, metadata_json
    from postroom_imap.policy import FetchRow
    from postroom_imap.render import fetch_items
    from postroom_imap.syntax import Command, CommandReader, ParseError

    appended = _mix_message(99)
    wires = [b"a1 LOGIN user0@bench.test bench-password-1\r\n", b"a2 SELECT INBOX\r\n",
             b"a3 FETCH 1:20 (UID BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE)])\r\n",
             b"a4 FETCH 17 (BODY.PEEK[])\r\n", b"a5 STORE 9 +FLAGS (\\Flagged)\r\n",
             b'a6 APPEND INBOX () "07-Dec-2026 12:00:00 +0000" {%d}\r\n%s\r\n'
             % (len(appended), appended),
             b"a7 UID STORE 201 +FLAGS.SILENT (\\Deleted)\r\n", b"a8 EXPUNGE\r\n",
             b"a9 LOGOUT\r\n"]
    rows = []
    for i in range(20):
        blob = _mix_message(i)
        meta = metadata_dict(analyze(blob))
        meta.pop("headers", None)
        rows.append(FetchRow(uid=i + 1, flags=(), modseq=3, size=len(blob),
                             internaldate=datetime(2026, 12, 7, tzinfo=UTC), meta=meta,
                             blob=blob))
    commands = []
    reader = CommandReader()
    for wire in wires:
        events = reader.feed(wire)
        if reader.paused:
            events += reader.resume()
        reader.authenticated = True
        assert not any(isinstance(e, ParseError) for e in events), events
        commands += [e for e in events if isinstance(e, Command)]
    assert len(commands) == len(wires)
    headers, body = (c.args.items for c in commands[2:4])

    def run() -> None:
        for _ in range(n):
            reader = CommandReader()
            for wire in wires:
                reader.feed(wire)
                if reader.paused:
                    reader.resume()
                reader.authenticated = True
            for row in rows:
                fetch_items(row, headers, with_uid=False, with_modseq=False)
            fetch_items(rows[16], body, with_uid=False, with_modseq=False)
            metadata_json(analyze(appended))

    return run, n, "round"


def _mix_message(n: int) -> bytes:
    word = ("alpha", "bravo", "charlie", "delta")[n % 4]
    body = (f"Message number {n} about {word}.\r\n"
            + ("lorem ipsum dolor sit amet " * 3 + "\r\n") * 12)
    return (f"From: Sender {n % 97} <sender{n % 97}@src.test>\r\nTo: <user@bench.test>\r\n"
            f"Subject: {word} report {n}\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\n"
            f"Message-ID: <{n}.bench@src.test>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=us-ascii\r\n\r\n{body}").encode()


WORKLOADS: dict[str, tuple[Callable[[int], tuple[Callable[[], None], int, str]], int]] = {
    "smtp_grammar": (smtp_grammar, 2000),
    "smtp_data": (smtp_data, 2000),
    "dot_stuff": (dot_stuff, 2000),
    "imap_parse": (imap_parse, 500),
    "imap_render": (imap_render, 200),
    "mime_scan": (mime_scan, 200),
    "smtp_message": (smtp_message, 2000),
    "mda_message": (mda_message, 1000),
    "imap_round": (imap_round, 200),
}




def compiled_modules() -> list[str]:
    """The modules above that were loaded from a compiled extension (.so), not a .py file."""
    return [name for name in CANDIDATES
            if (mod := sys.modules.get(name)) is not None
            and not (getattr(mod, "__file__", None) or "").endswith(".py")]


# The groups mypyc compiles (one shared library each); stored.py is left out (mypyc refuses
# its surrogate code points in string literals).
GROUPS = {
    "shared": ["postroom/smtp/grammar.py", "postroom/smtp/data.py", "postroom/smtp/replies.py",
               "postroom/mime/analyze.py", "postroom/mime/headers.py",
               "postroom/mime/addresses.py", "postroom/mime/model.py",
               "postroom/mime/sections.py", "postroom/mime/wire.py"],
    "services/imap": ["postroom_imap/syntax.py", "postroom_imap/syntax_lexer.py",
                      "postroom_imap/syntax_args.py", "postroom_imap/syntax_commands.py",
                      "postroom_imap/syntax_fetch.py", "postroom_imap/syntax_search.py",
                      "postroom_imap/syntax_types.py", "postroom_imap/render.py"],
    "services/mta": ["postroom_mta/smtpclient_data.py"],
}
# Without these (in the copy only) the compiled modules raise TypeError where Python does not:
# mypyc gives an except-clause variable one type per function (mypyc/mypyc#620), so a second
# ``except Other as exc`` in the same function fails when it is reached; and a field typed
# with a builtin name (``args: object``) breaks mypyc's dataclass under postponed annotations.
# What is still wrong compiled, and is not worked around here, is in
# docs/decisions/0019-mypyc.md (DataReader's size limit).
RENAMES = {
    "shared/postroom/mime/analyze.py": [
        ("except Exception as exc:  # noqa: BLE001 -- mail is never rejected for being odd\n"
         "        return _fallback(raw, limits, f\"parser error: {type(exc).__name__}\")",
         "except Exception as err:  # noqa: BLE001 -- mail is never rejected for being odd\n"
         "        return _fallback(raw, limits, f\"parser error: {type(err).__name__}\")")],
    "services/imap/postroom_imap/syntax.py": [
        ("except InvalidMailboxName as exc:\n        return ParseError(tag, str(exc), ",
         "except InvalidMailboxName as invalid:\n        return ParseError(tag, str(invalid), "),
        ("except SyntaxProblem as exc:\n        return ParseError(tag, str(exc))",
         "except SyntaxProblem as problem:\n        return ParseError(tag, str(problem))"),
        ("    args: object\n", "    args: Any\n"),
        ("from dataclasses import dataclass, field\n",
         "from dataclasses import dataclass, field\nfrom typing import Any\n")],
    "services/imap/postroom_imap/syntax_args.py": [
        ("except MailboxNameError as exc:\n            if strict:\n"
         "                raise InvalidMailboxName(f\"mailbox name is not modified UTF-7: {exc}\") "
         "from exc",
         "except MailboxNameError as bad:\n            if strict:\n"
         "                raise InvalidMailboxName(f\"mailbox name is not modified UTF-7: {bad}\") "
         "from bad")],
}


# module names, as sys.modules has them
CANDIDATES = tuple(f.removesuffix(".py").replace("/", ".") for fs in GROUPS.values() for f in fs)


def build(target: Path) -> int:
    """Copy the sources to ``target`` and compile the candidate modules there with mypyc."""
    if target.exists():
        shutil.rmtree(target)
    for part in ("shared", "services/imap", "services/mta"):
        shutil.copytree(REPO / part, target / part,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so", "build"))
    for rel, pairs in RENAMES.items():
        path = target / rel
        text = path.read_text()
        for old, new in pairs:
            if old not in text:  # the source changed: the compiled copy may need another look
                print(f"note: {rel}: {old.splitlines()[0]!r} not found, left as it is")
            text = text.replace(old, new)
        path.write_text(text)
    mypyc = Path(sys.executable).with_name("mypyc")
    env = {**os.environ,
           "MYPYPATH": os.pathsep.join(str(target / p) for p in GROUPS)}
    spent = 0.0
    for group, files in GROUPS.items():
        before = os.times()
        # the settings of `make lint` that matter here (pyproject.toml's [tool.mypy])
        proc = subprocess.run([str(mypyc), "--ignore-missing-imports", *files],
                              cwd=target / group, env=env,
                              capture_output=True, text=True)
        after = os.times()
        cpu = (after.children_user + after.children_system
               - before.children_user - before.children_system)
        spent += cpu
        print(f"{group}: {len(files)} modules, {cpu:.1f} s CPU, exit {proc.returncode}")
        if proc.returncode:
            print(proc.stdout[-3000:], proc.stderr[-3000:])
            return 1
    path = os.pathsep.join(str(target / p) for p in GROUPS)
    print(f"compiling took {spent:.1f} s CPU in all; run with PYTHONPATH={path}")
    return 0


def measure(name: str, repeat: int, scale: float) -> dict[str, Any]:
    factory, n = WORKLOADS[name]
    run, units, unit = factory(max(1, int(n * scale)))
    run()  # warm caches (re, lru_cache) outside the timing
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        run()
        best = min(best, time.process_time() - start)
    return {"workload": name, "unit": unit, "units": units, "us_per_unit": best / units * 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per workload; best is kept")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the units per run")
    parser.add_argument("--only", action="append", choices=sorted(WORKLOADS))
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--build", metavar="DIR", type=Path,
                        help="make a compiled copy of the sources in DIR (and measure nothing)")
    args = parser.parse_args(argv)
    if args.build:
        return build(args.build.resolve())
    results = [measure(name, args.repeat, args.scale) for name in args.only or WORKLOADS]
    compiled = compiled_modules()
    if args.json:
        print(json.dumps({"compiled": compiled, "results": results}, indent=2))
        return 0
    print(f"python {sys.version.split()[0]}; compiled modules: {', '.join(compiled) or 'none'}")
    for r in results:
        print(f"{r['workload']:<14} {r['us_per_unit']:9.2f} us CPU per {r['unit']}"
              f" ({r['units']} a run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
