"""The MTA-STS policy we publish for a local domain (RFC 8461): its text and its DNS id.

Pure functions: the web service serves :func:`policy_text` at
``https://mta-sts.<domain>/.well-known/mta-sts.txt`` and ``postroom dns`` prints
:func:`policy_id` in the ``_mta-sts`` TXT record. The id joins the stamp stored
when the operator last set the mode with a digest of the MX names, so it changes
whenever either does (a sender refetches the policy only when the id changes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

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
