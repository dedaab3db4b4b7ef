"""MTA-STS policies (RFC 8461): the grammar of a policy and its TXT record, and ours.

Pure functions, shared by the mta (which applies other domains' policies),
`postroom doctor` (which checks ours from outside) and the web service. For our
own domains: the web service serves :func:`policy_text` at
``https://mta-sts.<domain>/.well-known/mta-sts.txt`` and ``postroom dns`` prints
:func:`policy_id` in the ``_mta-sts`` TXT record. The id joins the stamp stored
when the operator last set the mode with a digest of the MX names, so it changes
whenever either does (a sender refetches the policy only when the id changes).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

MODES = ("none", "testing", "enforce")
# how long senders may cache the policy (seconds): a week, as RFC 8461 section 3.2 advises
# "weeks or greater"; testing mode is cached a day so a change back is seen soon
MAX_AGE = {"testing": 86400, "enforce": 604800, "none": 86400}


def policy_text(mode: str, mx_names: Sequence[str]) -> str:
    """The policy file (CRLF lines, RFC 8461 section 3.2)."""
    if mode not in MODES:
        raise ValueError(f"MTA-STS mode must be one of {', '.join(MODES)}")
    lines = ["version: STSv1", f"mode: {mode}"]
    lines += [f"mx: {name.lower().rstrip('.')}" for name in mx_names]
    lines.append(f"max_age: {MAX_AGE[mode]}")
    return "".join(line + "\r\n" for line in lines)


def policy_id(stamp: str | None, mode: str, mx_names: Sequence[str]) -> str:
    """The ``id=`` of the TXT record: 1-32 letters and digits (RFC 8461 section 3.1)."""
    digest = hashlib.sha256(("|".join([mode, *sorted(n.lower().rstrip(".") for n in mx_names)]))
                            .encode()).hexdigest()[:8]
    base = "".join(c for c in (stamp or "0") if c.isascii() and c.isalnum())[:24]
    return base + digest


# --- reading a policy (anyone's)

ENFORCE, TESTING, NONE = "enforce", "testing", "none"
MAX_POLICY_BYTES = 64 * 1024  # RFC 8461 section 3.3 lets us cap it
MAX_AGE_LIMIT = 31557600  # one year, section 3.2
_TXT_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")


class PolicyError(ValueError):
    """A TXT record or policy body that does not follow RFC 8461."""


class PolicyInvalid(PolicyError):
    """A policy body that was fetched but does not parse (TLS-RPT's sts-policy-invalid)."""


@dataclass(frozen=True)
class Policy:
    """A parsed policy: ``mode``, the ``mx`` patterns and ``max_age`` seconds."""

    mode: str
    mx: tuple[str, ...]
    max_age: int
    id: str = ""

    @property
    def enforced(self) -> bool:
        return self.mode == ENFORCE

    def allows(self, host: str) -> bool:
        """Whether MX ``host`` matches one of the policy's ``mx`` patterns (section 4.1)."""
        return any(mx_matches(pattern, host) for pattern in self.mx)


def mx_matches(pattern: str, host: str) -> bool:
    """``mx.example.com`` matches itself; ``*.example.com`` matches exactly one more label."""
    pattern = pattern.lower().rstrip(".")
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        label, _dot, rest = host.partition(".")
        return bool(label) and rest == pattern[2:]
    return host == pattern


def parse_txt(records: list[str]) -> str | None:
    """The policy id from the ``_mta-sts`` TXT records; None unless exactly one is STSv1."""
    candidates = [r for r in records if r.startswith("v=STSv1")]
    if len(candidates) != 1:
        return None  # none, or several: section 3.1 says treat as no policy
    fields: dict[str, str] = {}
    for part in candidates[0].split(";"):
        key, sep, value = part.strip().partition("=")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    if fields.get("v") != "STSv1":
        return None
    ident = fields.get("id", "")
    return ident if _TXT_ID.match(ident) else None


def parse_policy(text: str, ident: str = "") -> Policy:
    """The policy in a ``mta-sts.txt`` body; raises PolicyError."""
    fields: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise PolicyInvalid(f"line without a colon: {line[:80]!r}")
        fields.setdefault(key.strip(), []).append(value.strip())
    if fields.get("version") != ["STSv1"]:
        raise PolicyInvalid("version is not STSv1")
    mode = (fields.get("mode") or [""])[0]
    if mode not in (ENFORCE, TESTING, NONE):
        raise PolicyInvalid(f"unknown mode {mode[:20]!r}")
    try:
        max_age = int((fields.get("max_age") or [""])[0])
    except ValueError:
        raise PolicyInvalid("max_age is not an integer") from None
    if max_age < 0:
        raise PolicyInvalid("max_age is negative")
    mx = tuple(m.lower() for m in fields.get("mx", []) if m)
    if mode != NONE and not mx:
        raise PolicyInvalid("no mx patterns")
    return Policy(mode, mx, min(max_age, MAX_AGE_LIMIT), ident)


def policy_strings(policy: Policy) -> tuple[str, ...]:
    """The policy as the lines of its text (TLS-RPT's policy-string)."""
    return ("version: STSv1", f"mode: {policy.mode}", *(f"mx: {m}" for m in policy.mx),
            f"max_age: {policy.max_age}")
