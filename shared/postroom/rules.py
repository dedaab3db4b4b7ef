"""Per-user delivery rules, a subset of Sieve (RFC 5228): a JSON format and a pure evaluator.

A rule set is a JSON list of rules, tried in order; each rule has an optional
test (``if``; absent means always) and a list of actions (``then``). The
semantics are Sieve's: an implicit keep files the message in the default
mailbox unless ``fileinto``, ``redirect`` or ``discard`` cancels it; ``keep``
asks for it explicitly; ``stop`` ends evaluation. docs/mda.md has the format.

Everything here is a pure function of plain data: the store keeps the JSON, and
delivery builds :class:`MessageFacts` from the message's header block.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from postroom.glob import Glob, sieve_pattern
from postroom.mime.addresses import parse_addresses
from postroom.mime.headers import decode_words, scan_header, to_text
from postroom.mime.model import Limits

# bounds on what an account may store: evaluation stays cheap for every delivery
MAX_RULES = 200
MAX_DEPTH = 8
MAX_LIST = 50
MAX_STRING = 1000
MAX_REDIRECTS = 5
DEFAULT_VACATION_DAYS = 7
MAX_VACATION_DAYS = 365
# how much of the message the header tests look at
HEAD_BYTES = 256 * 1024
_HEAD_LIMITS = Limits(max_headers=500, max_header_bytes=HEAD_BYTES, max_value_chars=8192)

_MATCH_TYPES = ("is", "contains", "matches")
_ADDRESS_PARTS = ("all", "localpart", "domain")
_HEADER_NAME = re.compile(r"[!-9;-~]{1,200}")
# a forwarding target: no spaces, brackets, quotes or line breaks (it goes into SMTP RCPT TO)
_ADDRESS = re.compile(r"[^\s@<>\"(),;:\\\[\]]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class RulesError(ValueError):
    """A rule set that is not valid; the message says where and why."""


@dataclass(frozen=True)
class MessageFacts:
    """What the tests look at: decoded header fields (lower-case names), size and envelope."""

    headers: tuple[tuple[str, str], ...]
    size: int
    envelope_from: str = ""
    envelope_to: str = ""

    def values(self, name: str) -> list[str]:
        key = name.lower()
        return [value for field_name, value in self.headers if field_name == key]


@dataclass(frozen=True)
class Vacation:
    """A vacation action (RFC 5230): the reply text and how often one sender may get it."""

    reason: str
    subject: str | None = None
    days: int = DEFAULT_VACATION_DAYS
    # more addresses of the account that count as "addressed to me" (RFC 5230 :addresses)
    addresses: tuple[str, ...] = ()
    # the reply's From (RFC 5230 :from); None: the account's address
    sender: str | None = None
    # the reason is a MIME entity, headers and body (RFC 5230 :mime)
    mime: bool = False


@dataclass
class Decision:
    """What the rules decided: mailboxes to file into, forwards, and a vacation reply."""

    keep: bool = True
    folders: list[str] = field(default_factory=list)
    redirects: list[str] = field(default_factory=list)
    vacation: Vacation | None = None

    @property
    def discarded(self) -> bool:
        """No copy is stored and nothing is forwarded."""
        return not self.keep and not self.folders and not self.redirects


# --- parsing and validation (at `postroom rules set`, and again at delivery)


@dataclass(frozen=True)
class Condition:
    kind: str
    names: tuple[str, ...] = ()
    match: str = "is"
    keys: tuple[str, ...] = ()
    part: str = "all"
    limit: int = 0
    children: tuple[Condition, ...] = ()


@dataclass(frozen=True)
class Action:
    kind: str
    arg: Any = None


@dataclass(frozen=True)
class Rule:
    test: Condition | None
    actions: tuple[Action, ...]
    name: str | None = None


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise RulesError(f"{where}: must be a non-empty string")
    if len(value) > MAX_STRING:
        raise RulesError(f"{where}: longer than {MAX_STRING} characters")
    return value


def _strings(value: Any, where: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or len(items) > MAX_LIST:
        raise RulesError(f"{where}: must be a string or a list of 1 to {MAX_LIST} strings")
    return tuple(_string(item, f"{where}[{i}]") for i, item in enumerate(items))


def _match(obj: dict[str, Any], where: str) -> tuple[str, tuple[str, ...]]:
    found = [m for m in _MATCH_TYPES if m in obj]
    if len(found) != 1:
        raise RulesError(f"{where}: needs exactly one of {', '.join(_MATCH_TYPES)}")
    return found[0], _strings(obj[found[0]], f"{where}.{found[0]}")


def _only(obj: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise RulesError(f"{where}: unknown key {extra[0]!r}")


def parse_condition(obj: Any, where: str = "if", depth: int = 0) -> Condition:
    """A test from its JSON form, or RulesError."""
    if depth > MAX_DEPTH:
        raise RulesError(f"{where}: tests nested deeper than {MAX_DEPTH}")
    if obj is True:
        return Condition("true")
    if not isinstance(obj, dict) or not obj:
        raise RulesError(f"{where}: a test must be an object such as "
                         '{"header": "subject", "contains": "text"}')
    if "header" in obj or "address" in obj:
        kind = "header" if "header" in obj else "address"
        names = _strings(obj[kind], f"{where}.{kind}")
        for name in names:
            if not _HEADER_NAME.fullmatch(name):
                raise RulesError(f"{where}.{kind}: {name!r} is not a header field name")
        match, keys = _match(obj, where)
        part = obj.get("part", "all")
        if kind == "address" and part not in _ADDRESS_PARTS:
            raise RulesError(f"{where}.part: must be one of {', '.join(_ADDRESS_PARTS)}")
        _only(obj, {kind, match, "part"} if kind == "address" else {kind, match}, where)
        return Condition(kind, tuple(n.lower() for n in names), match, keys, part)
    if "size" in obj:
        _only(obj, {"size"}, where)
        spec = obj["size"]
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in (
                "over", "under"):
            raise RulesError(f'{where}.size: must be {{"over": N}} or {{"under": N}}')
        kind, limit = next(iter(spec.items()))
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise RulesError(f"{where}.size.{kind}: must be a number of bytes")
        return Condition("size_" + kind, limit=limit)
    if "allof" in obj or "anyof" in obj:
        kind = "allof" if "allof" in obj else "anyof"
        _only(obj, {kind}, where)
        items = obj[kind]
        if not isinstance(items, list) or not items or len(items) > MAX_LIST:
            raise RulesError(f"{where}.{kind}: must be a list of 1 to {MAX_LIST} tests")
        return Condition(kind, children=tuple(parse_condition(t, f"{where}.{kind}[{i}]", depth + 1)
                                         for i, t in enumerate(items)))
    if "not" in obj:
        _only(obj, {"not"}, where)
        return Condition("not", children=(parse_condition(obj["not"], f"{where}.not", depth + 1),))
    raise RulesError(f"{where}: unknown test {sorted(obj)[0]!r} (header, address, size, "
                     "allof, anyof, not)")


def _folder(value: Any, where: str) -> str:
    name = _string(value, where)
    if _CONTROL.search(name) or name.startswith("/") or ".." in name.split("/"):
        raise RulesError(f"{where}: {name!r} is not a mailbox name")
    return name


def _redirect(value: Any, where: str) -> str:
    address = _string(value, where)
    if not _ADDRESS.fullmatch(address):
        raise RulesError(f"{where}: {address!r} is not an e-mail address")
    return address


def _vacation(value: Any, where: str) -> Vacation:
    if not isinstance(value, dict):
        raise RulesError(f"{where}: must be an object with at least a reason")
    _only(value, {"reason", "subject", "days", "addresses"}, where)
    reason = _string(value.get("reason"), f"{where}.reason")
    subject = value.get("subject")
    if subject is not None:
        subject = _string(subject, f"{where}.subject")
        if _CONTROL.search(subject):
            raise RulesError(f"{where}.subject: must be one line")
    days = value.get("days", DEFAULT_VACATION_DAYS)
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_VACATION_DAYS:
        raise RulesError(f"{where}.days: must be a whole number from 1 to {MAX_VACATION_DAYS}")
    addresses = value.get("addresses", [])
    if not isinstance(addresses, list) or len(addresses) > MAX_LIST:
        raise RulesError(f"{where}.addresses: must be a list of addresses")
    return Vacation(reason=reason, subject=subject, days=days, addresses=tuple(
        _redirect(a, f"{where}.addresses[{i}]").lower() for i, a in enumerate(addresses)))


_ACTIONS: dict[str, Callable[[Any, str], Any]] = {
    "fileinto": _folder,
    "redirect": _redirect,
    "vacation": _vacation,
    "keep": lambda value, where: None,
    "discard": lambda value, where: None,
    "stop": lambda value, where: None,
}


def parse_action(obj: Any, where: str) -> Action:
    """An action from its JSON form (``{"fileinto": "Lists"}``), or RulesError."""
    if not isinstance(obj, dict) or len(obj) != 1:
        raise RulesError(f"{where}: an action is an object with one key, e.g. "
                         '{"fileinto": "Lists"}')
    kind, value = next(iter(obj.items()))
    if kind not in _ACTIONS:
        raise RulesError(f"{where}: unknown action {kind!r} ({', '.join(_ACTIONS)})")
    return Action(kind, _ACTIONS[kind](value, f"{where}.{kind}"))


def parse_rules(data: Any) -> list[Rule]:
    """A validated rule set from its JSON form (a list of rules), or RulesError."""
    if not isinstance(data, list):
        raise RulesError("rules: must be a JSON list of rules")
    if len(data) > MAX_RULES:
        raise RulesError(f"rules: more than {MAX_RULES} rules")
    rules = []
    for i, item in enumerate(data):
        where = f"rules[{i}]"
        if not isinstance(item, dict):
            raise RulesError(f"{where}: a rule is an object with \"if\" and \"then\"")
        _only(item, {"name", "if", "then"}, where)
        name = item.get("name")
        if name is not None:
            name = _string(name, f"{where}.name")
        actions = item.get("then")
        if not isinstance(actions, list) or not actions or len(actions) > MAX_LIST:
            raise RulesError(f"{where}.then: must be a list of 1 to {MAX_LIST} actions")
        test = parse_condition(item["if"], f"{where}.if") if "if" in item else None
        rules.append(Rule(test, tuple(parse_action(a, f"{where}.then[{j}]")
                                      for j, a in enumerate(actions)), name))
    return rules


# --- evaluation


def _compare(match: str, value: str, key: str) -> bool:
    # the default Sieve comparator, i;ascii-casemap: case-insensitive
    value, key = value.casefold(), key.casefold()
    if match == "is":
        return value == key
    if match == "contains":
        return key in value
    return _matches(key).match(value)


@functools.lru_cache(maxsize=1024)
def _matches(key: str) -> Glob:
    """A Sieve :matches key (``*`` and ``?``, backslash escapes), compiled once.

    Matched in linear time (postroom.glob): the values are a sender's header
    fields, up to 8 KB each, and a backtracking regex of a three-star rule is cubic.
    """
    return sieve_pattern(key)


def _address_parts(value: str, part: str) -> list[str]:
    result = []
    for addr in parse_addresses(value):
        if not addr.mailbox or not addr.host:
            continue  # group markers
        full = f"{addr.mailbox}@{addr.host}"
        result.append({"all": full, "localpart": addr.mailbox, "domain": addr.host}[part])
    return result


def holds(test: Condition | None, facts: MessageFacts) -> bool:
    """Whether ``test`` holds for the message (no test always holds)."""
    if test is None or test.kind == "true":
        return True
    if test.kind == "header":
        return any(_compare(test.match, value, key) for name in test.names
                   for value in facts.values(name) for key in test.keys)
    if test.kind == "address":
        return any(_compare(test.match, value, key) for name in test.names
                   for raw in facts.values(name) for value in _address_parts(raw, test.part)
                   for key in test.keys)
    if test.kind == "size_over":
        return facts.size > test.limit
    if test.kind == "size_under":
        return facts.size < test.limit
    if test.kind == "allof":
        return all(holds(t, facts) for t in test.children)
    if test.kind == "anyof":
        return any(holds(t, facts) for t in test.children)
    if test.kind == "not":
        return not holds(test.children[0], facts)
    raise AssertionError(f"unknown test kind {test.kind}")


def evaluate(rules: list[Rule], facts: MessageFacts) -> Decision:
    """Run a rule set over a message, with Sieve's implicit keep."""
    decision = Decision()
    implicit_keep = True
    explicit_keep = False
    for rule in rules:
        if not holds(rule.test, facts):
            continue
        stop = False
        for action in rule.actions:
            if action.kind == "stop":
                stop = True
                break
            if action.kind == "keep":
                explicit_keep = True
            elif action.kind == "discard":
                implicit_keep = False
            elif action.kind == "fileinto":
                implicit_keep = False
                if action.arg not in decision.folders:
                    decision.folders.append(action.arg)
            elif action.kind == "redirect":
                implicit_keep = False
                if action.arg not in decision.redirects and \
                        len(decision.redirects) < MAX_REDIRECTS:
                    decision.redirects.append(action.arg)
            elif action.kind == "vacation" and decision.vacation is None:
                # RFC 5230 4: only one vacation action per evaluation
                decision.vacation = action.arg
        if stop:
            break
    decision.keep = implicit_keep or explicit_keep
    return decision


def facts_from_message(head: bytes, size: int, envelope_from: str = "",
                       envelope_to: str = "") -> MessageFacts:
    """MessageFacts from the start of a raw message (its header block is enough)."""
    head = head[:HEAD_BYTES]
    block = scan_header(head, 0, len(head), _HEAD_LIMITS)
    headers = tuple((name, decode_words(to_text(value, _HEAD_LIMITS.max_value_chars)))
                    for name, value in block.fields)
    return MessageFacts(headers=headers, size=size, envelope_from=envelope_from,
                        envelope_to=envelope_to)
