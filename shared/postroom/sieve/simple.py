"""The web's simple editors (vacation reply, filter rules) as one generated Sieve script.

:func:`generate` writes the script from :class:`SimpleSettings`; the settings
travel in the script itself as one JSON comment line, and :func:`parse` reads
them back only when regenerating them gives the script byte for byte: a script
edited by hand (ManageSieve, the raw editor, `postroom sieve put`) is not
ours any more, and the simple editors say so instead of overwriting it. Pure
functions; the store keeps the text (postroom.store.sieve), the mda runs it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import date

#: the name of the script the web's simple editors write and make active
SCRIPT_NAME = "postroom-web"
MARKER = "# postroom-web: "
HEADER = ("# Written by Postroom's web pages (vacation reply and filters).\n"
          "# Edit it there; a change made here makes those pages hands-off.\n")
FIELDS = ("from", "to", "subject")
ACTIONS = ("fileinto", "addflag", "redirect", "stop")
MAX_RULES = 50
MAX_TEXT_CHARS = 4000
MAX_VALUE_CHARS = 200
MAX_SUBJECT_CHARS = 200
MAX_ADDRESSES = 10
MAX_JSON_CHARS = 64_000


@dataclass(frozen=True)
class Vacation:
    enabled: bool = False
    start: str | None = None        # YYYY-MM-DD, inclusive (the server's UTC day)
    end: str | None = None          # YYYY-MM-DD, inclusive
    subject: str = ""
    text: str = ""
    days: int = 7                   # at most one reply per sender in this many days
    addresses: tuple[str, ...] = ()  # the account's other addresses, answered too

    def check(self) -> Vacation:
        for day in (self.start, self.end):
            if day is not None:
                date.fromisoformat(day)  # ValueError for anything else
        if self.start and self.end and self.start > self.end:
            raise ValueError("the vacation ends before it starts")
        if not 1 <= self.days <= 365:
            raise ValueError("answer each sender once in 1 to 365 days")
        if len(self.subject) > MAX_SUBJECT_CHARS or "\n" in self.subject \
                or "\r" in self.subject:
            raise ValueError(f"the subject is one line of at most {MAX_SUBJECT_CHARS} characters")
        if len(self.text) > MAX_TEXT_CHARS:
            raise ValueError(f"the reply is at most {MAX_TEXT_CHARS} characters")
        if self.enabled and not self.text.strip():
            raise ValueError("write the reply's text")
        if len(self.addresses) > MAX_ADDRESSES:
            raise ValueError(f"at most {MAX_ADDRESSES} other addresses")
        return self


@dataclass(frozen=True)
class Rule:
    field: str          # from, to, subject
    contains: str
    action: str         # fileinto, addflag (mark read), redirect, stop
    target: str = ""    # the folder (fileinto) or the address (redirect)
    stop: bool = False  # no further rules after this one

    def check(self) -> Rule:
        if self.field not in FIELDS:
            raise ValueError(f"a rule looks at one of {', '.join(FIELDS)}")
        if self.action not in ACTIONS:
            raise ValueError(f"a rule does one of {', '.join(ACTIONS)}")
        if not self.contains or len(self.contains) > MAX_VALUE_CHARS:
            raise ValueError(f"what a rule looks for is 1 to {MAX_VALUE_CHARS} characters")
        if self.action in ("fileinto", "redirect") and (
                not self.target or len(self.target) > MAX_VALUE_CHARS):
            raise ValueError("say which folder or address")
        if any(c in self.contains + self.target for c in "\r\n\0"):
            raise ValueError("a rule's values are one line each")
        return self


@dataclass(frozen=True)
class SimpleSettings:
    vacation: Vacation = field(default_factory=Vacation)
    rules: tuple[Rule, ...] = ()

    def check(self) -> SimpleSettings:
        if len(self.rules) > MAX_RULES:
            raise ValueError(f"at most {MAX_RULES} rules")
        self.vacation.check()
        for rule in self.rules:
            rule.check()
        return self


def quote(text: str) -> str:
    """A Sieve quoted string (RFC 5228 2.4.2): backslash and double quote escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _data(settings: SimpleSettings) -> str:
    return json.dumps(asdict(settings), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True)


def generate(settings: SimpleSettings) -> str:
    """The Sieve script of ``settings`` (checked first: ValueError for what cannot be)."""
    settings.check()
    body: list[str] = []
    needs: set[str] = set()
    vacation = settings.vacation
    if vacation.enabled:
        needs.add("vacation")
        args = [f":days {vacation.days}"]
        if vacation.subject:
            args.append(f":subject {quote(vacation.subject)}")
        if vacation.addresses:
            args.append(":addresses [" + ", ".join(quote(a) for a in vacation.addresses) + "]")
        action = f"vacation {' '.join(args)} {quote(vacation.text)};"
        tests = []
        if vacation.start:
            tests.append(f'currentdate :value "ge" "date" {quote(vacation.start)}')
        if vacation.end:
            tests.append(f'currentdate :value "le" "date" {quote(vacation.end)}')
        if tests:
            needs.update(("date", "relational"))
            body.append(f"if allof ({', '.join(tests)}) {{\n    {action}\n}}")
        else:
            body.append(action)
    for rule in settings.rules:
        if rule.action == "fileinto":
            needs.add("fileinto")
            does = [f"fileinto {quote(rule.target)};"]
        elif rule.action == "addflag":
            needs.add("imap4flags")
            does = ['addflag "\\\\Seen";']
        elif rule.action == "redirect":
            does = [f"redirect {quote(rule.target)};"]
        else:
            does = []
        if rule.stop or rule.action == "stop":
            does.append("stop;")
        inner = "\n    ".join(does)
        body.append(f"if header :contains {quote(rule.field)} {quote(rule.contains)} {{\n"
                    f"    {inner}\n}}")
    lines = [HEADER + MARKER + _data(settings)]
    if needs:
        lines.append("require [" + ", ".join(quote(n) for n in sorted(needs)) + "];")
    lines.extend(body)
    return "\n".join(lines) + "\n"


def parse(text: str) -> SimpleSettings | None:
    """The settings a script of ours was made from; None for any other script (hand-written
    or edited by hand since), so the simple editors never overwrite someone's own Sieve."""
    for line in text.splitlines()[:4]:
        if line.startswith(MARKER) and len(line) <= MAX_JSON_CHARS:
            try:
                data = json.loads(line[len(MARKER):])
                vacation = dict(data["vacation"])
                vacation["addresses"] = tuple(vacation.get("addresses") or ())
                settings = SimpleSettings(Vacation(**vacation),
                                          tuple(Rule(**r) for r in data["rules"]))
                again = generate(settings)
            except (ValueError, TypeError, KeyError):
                return None
            return settings if again == text.replace("\r\n", "\n") else None
    return None
