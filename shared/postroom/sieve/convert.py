"""The JSON rules of migration 0002 (postroom.rules) written as the Sieve script they stand for.

Migration 0014 converts every account's stored rules with :func:`rules_to_sieve`
into a script named ``rules``, made active; `postroom rules set` does the same
for a JSON file. The JSON format was a subset of Sieve, so the script means
what the rules meant, with one difference: Sieve stores one copy per mailbox
named (``fileinto`` plus ``keep`` is two copies), where the rules stored one.
"""

from __future__ import annotations

from typing import Any

from postroom.rules import Action, Condition, parse_rules

#: the name a converted rule set is stored under
SCRIPT_NAME = "rules"


def quote(text: str) -> str:
    """A Sieve quoted string (RFC 5228 2.4.2) holding ``text``."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _list(items: tuple[str, ...]) -> str:
    if len(items) == 1:
        return quote(items[0])
    return "[" + ", ".join(quote(i) for i in items) + "]"


def _test(test: Condition) -> str:
    if test.kind == "true":
        return "true"
    if test.kind == "header":
        return f"header :{test.match} {_list(test.names)} {_list(test.keys)}"
    if test.kind == "address":
        return f"address :{test.part} :{test.match} {_list(test.names)} {_list(test.keys)}"
    if test.kind == "size_over":
        return f"size :over {test.limit}"
    if test.kind == "size_under":
        return f"size :under {test.limit}"
    if test.kind in ("allof", "anyof"):
        return f"{test.kind}(" + ", ".join(_test(t) for t in test.children) + ")"
    if test.kind == "not":
        return "not " + _test(test.children[0])
    raise ValueError(f"unknown test kind {test.kind}")


def _action(action: Action, needs: set[str]) -> str:
    if action.kind in ("keep", "discard", "stop"):
        return action.kind + ";"
    if action.kind == "fileinto":
        needs.add("fileinto")
        return f"fileinto {quote(action.arg)};"
    if action.kind == "redirect":
        return f"redirect {quote(action.arg)};"
    if action.kind == "vacation":
        needs.add("vacation")
        vacation = action.arg
        parts = ["vacation", f":days {vacation.days}"]
        if vacation.subject:
            parts.append(f":subject {quote(vacation.subject)}")
        if vacation.addresses:
            parts.append(f":addresses {_list(vacation.addresses)}")
        parts.append(quote(vacation.reason))
        return " ".join(parts) + ";"
    raise ValueError(f"unknown action {action.kind}")


def rules_to_sieve(data: Any) -> str:
    """The Sieve script of a JSON rule set (RulesError when the rules are not valid)."""
    rules = parse_rules(data)
    needs: set[str] = set()
    body: list[str] = []
    for rule in rules:
        if rule.name:
            body.append("# " + rule.name.replace("\r", " ").replace("\n", " "))
        actions = [_action(a, needs) for a in rule.actions]
        if rule.test is None:
            body.extend(actions)
        else:
            body.append(f"if {_test(rule.test)} {{")
            body.extend("    " + a for a in actions)
            body.append("}")
    head = ["# converted from the JSON rules (postroom rules)"]
    if needs:
        head.append(f"require {_list(tuple(sorted(needs)))};")
    return "\n".join(head + body) + "\n"
