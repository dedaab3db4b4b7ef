"""The DMARC policy record (RFC 7489 section 6.3, RFC 9989 tags np, t, psd): strict parsing.

Our decisions, documented in docs/dmarc-api.md:

* a TXT record is a DMARC record only when its first tag is exactly
  ``v=DMARC1``; others are not ours and are skipped (RFC 7489 6.6.3);
* a missing ``p`` means ``none`` (RFC 9989; RFC 7489 does so when rua is
  valid); an invalid ``p`` is a permerror unless a valid ``rua`` exists,
  in which case it is ``none`` (RFC 7489 6.6.3);
* any other known tag with an invalid value, a repeated tag, or a term
  that is not ``tag=value`` makes the record malformed: permerror. Being
  strict here never harms the recipient, since a permerror never rejects;
* unknown tags are ignored (RFC 7489 6.3).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

POLICIES = ("none", "quarantine", "reject")
_URI = re.compile(r"^[a-z][a-z0-9+.-]*:[^\s,!]+$", re.IGNORECASE)
_TAG = re.compile(r"^[a-z][a-z0-9_]*$", re.IGNORECASE)


def json_copy(value: Any) -> Any:
    """A copy of ``value`` as :func:`dataclasses.asdict` makes one of a field's value.

    The verdict's ``to_json`` methods are written out field by field (asdict
    inspects every field of every nested value, a twentieth of the service's
    CPU per check); nested containers are still copied, so a caller may change
    the JSON without changing the verdict.
    """
    if value is None or isinstance(value, (str, int, float)):
        return value
    if type(value) is dict:
        return {json_copy(k): json_copy(v) for k, v in value.items()}
    if type(value) is list:
        return [json_copy(v) for v in value]
    if type(value) is tuple:
        return tuple(json_copy(v) for v in value)
    # anything else (a dataclass, a namedtuple, a dict subclass): exactly what asdict does
    return asdict(_Holder(value))["value"]


@dataclass
class _Holder:
    value: Any


class NotDMARC(ValueError):
    """The TXT record is not a DMARC record at all (no leading v=DMARC1)."""


class MalformedRecord(ValueError):
    """A DMARC record that cannot be used: the result is permerror."""


@dataclass(frozen=True)
class DMARCRecord:
    """A parsed record; every field has its RFC default when the tag is absent."""

    p: str = "none"
    sp: str | None = None
    np: str | None = None
    pct: int = 100
    adkim: str = "r"
    aspf: str = "r"
    t: bool = False
    psd: str = "u"
    fo: tuple[str, ...] = ("0",)
    rua: tuple[str, ...] = ()
    ruf: tuple[str, ...] = ()
    raw: str = field(default="", compare=False)

    def to_json(self) -> dict[str, Any]:
        """``asdict`` without ``raw``, written out (see :func:`json_copy`)."""
        return {"p": self.p, "sp": self.sp, "np": self.np, "pct": self.pct,
                "adkim": self.adkim, "aspf": self.aspf, "t": self.t, "psd": self.psd,
                "fo": json_copy(self.fo), "rua": json_copy(self.rua), "ruf": json_copy(self.ruf)}


def is_dmarc(txt: str) -> bool:
    first = txt.split(";", 1)[0].strip()
    name, _, value = first.partition("=")
    return name.strip() == "v" and value.strip() == "DMARC1"


def _uris(value: str) -> tuple[str, ...]:
    uris = []
    for item in value.split(","):
        uri = item.strip().split("!", 1)[0]  # "!size" suffix: RFC 9989 says ignore it
        if _URI.match(uri):
            uris.append(uri)
    return tuple(uris)


def _enum(tag: str, value: str, allowed: tuple[str, ...]) -> str:
    value = value.lower()
    if value not in allowed:
        raise MalformedRecord(f"{tag}={value!r} is not one of {', '.join(allowed)}")
    return value


def parse(txt: str) -> DMARCRecord:
    """Parse one TXT record; NotDMARC when it is not one, MalformedRecord when unusable."""
    if not is_dmarc(txt):
        raise NotDMARC(txt[:40])
    tags: dict[str, str] = {}
    for term in txt.split(";")[1:]:
        term = term.strip()
        if not term:
            continue  # a trailing ";" is common and harmless
        name, sep, value = term.partition("=")
        name = name.strip().lower()
        if not sep or not _TAG.match(name):
            raise MalformedRecord(f"{term[:30]!r} is not tag=value")
        if name in tags or name == "v":
            raise MalformedRecord(f"tag {name} appears twice")
        tags[name] = value.strip()
    rua = _uris(tags.get("rua", ""))
    values: dict[str, Any] = {"raw": txt, "rua": rua, "ruf": _uris(tags.get("ruf", ""))}
    if "p" in tags:
        try:
            values["p"] = _enum("p", tags["p"], POLICIES)
        except MalformedRecord:
            if not rua:
                raise
            values["p"] = "none"
    for name in ("sp", "np"):
        if name in tags:
            values[name] = _enum(name, tags[name], POLICIES)
    for name in ("adkim", "aspf"):
        if name in tags:
            values[name] = _enum(name, tags[name], ("r", "s"))
    if "pct" in tags:
        if not tags["pct"].isdigit() or not 0 <= int(tags["pct"]) <= 100:
            raise MalformedRecord(f"pct={tags['pct']!r} is not an integer from 0 to 100")
        values["pct"] = int(tags["pct"])
    if "t" in tags:
        values["t"] = _enum("t", tags["t"], ("y", "n")) == "y"
    if "psd" in tags:
        values["psd"] = _enum("psd", tags["psd"], ("y", "n", "u"))
    if "fo" in tags:
        options = tuple(o.strip().lower() for o in tags["fo"].split(":"))
        if not options or any(o not in ("0", "1", "d", "s") for o in options):
            raise MalformedRecord(f"fo={tags['fo']!r} is not a list of 0, 1, d, s")
        values["fo"] = options
    return DMARCRecord(**values)
