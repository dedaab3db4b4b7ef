"""SPF (RFC 7208) for the MAIL FROM and HELO identities, by pyspf over Postroom's resolver.

pyspf does its own DNS through a module-level function; swapping that would
change every thread's lookups at once. Instead :class:`_Query` subclasses
``spf.query`` and overrides its one DNS entry point, ``dns()``, so each check
uses the resolver it is given (configured servers, timeout, TTL cache). The
RFC 7208 limits stay pyspf's: 10 DNS-querying terms, 10 MX/PTR names, 2 void
lookups, and a total time budget for the whole check (section 4.6.4).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import spf

from postroom.net.dns import DNSTempError, NXDomain, Resolver

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")
# RFC 7208 section 4.6.4: at least 20 seconds for the whole evaluation is suggested;
# ours is shorter because the SMTP client waits for our answer to DATA.
DEFAULT_TIME_BUDGET = 20.0


@dataclass(frozen=True)
class SPFResult:
    """One SPF evaluation: the result, which identity and domain, and why."""

    result: str
    identity: str  # "mailfrom" or "helo"
    domain: str
    sender: str  # the checked <sender> (postmaster@helo for the HELO identity)
    explanation: str

    def to_json(self) -> dict[str, Any]:
        # dataclasses.asdict, written out: a tenth of its cost (fields are all str)
        return {"result": self.result, "identity": self.identity, "domain": self.domain,
                "sender": self.sender, "explanation": self.explanation}


class _Query(spf.query):  # type: ignore[misc]
    """pyspf's query with its DNS answered by a postroom Resolver."""

    def __init__(self, resolver: Resolver, *args: Any, **kwargs: Any) -> None:
        self._resolver = resolver
        super().__init__(*args, **kwargs)

    def dns(self, name: Any, qtype: str, cnames: Any = None,
            ignore_void: bool = False) -> list[Any]:
        if not name:
            raise spf.PermError("empty domain name in a DNS lookup")
        name = str(name).rstrip(".").lower()
        labels = name.split(".")
        if not all(0 < len(label) < 64 for label in labels):
            return []  # not a valid DNS name: pyspf's own rule (RFC 7208 4.3)
        key = (name, qtype)
        if key in self.cache:
            result = self.cache[key]
        else:
            if self.querytime < 0:
                raise spf.TempError("DNS Error: exceeded max query lookup time")
            started = time.monotonic()
            result = self._lookup(name, qtype)
            if self.querytime > 0:
                self.querytime -= time.monotonic() - started
            self.cache[key] = result
        if not result and not ignore_void:
            self.void_lookups += 1
            if self.void_lookups > spf.MAX_VOID_LOOKUPS:
                raise spf.PermError(f"Void lookup limit of {spf.MAX_VOID_LOOKUPS} exceeded")
        return list(result)

    def validated_ptrs(self) -> list[str]:
        """Names of the client's PTR records that resolve back to it (RFC 7208 5.5).

        Unlike pyspf's own version, a DNS error on the PTR lookup makes the
        mechanism not match, and one on a name's A/AAAA lookup skips that name,
        as section 5.5 says; neither becomes a temperror.
        """
        try:
            names = self.dns_ptr(self.i)[:spf.MAX_PTR]
        except spf.TempError:
            return []
        validated = []
        for name in names:
            try:
                addresses = self.dns_a(name, self.A)
            except spf.TempError:
                continue
            if self.cidrmatch(addresses, self.cidrmax):
                validated.append(name)
        return validated

    def _lookup(self, name: str, qtype: str) -> list[Any]:
        res = self._resolver
        try:
            if qtype in ("A", "AAAA"):
                return res.a(name) if qtype == "A" else res.aaaa(name)
            if qtype == "MX":
                # pyspf skips empty hosts: a null MX contributes no addresses
                return [(pref, "" if host == "." else host) for pref, host in res.mx(name)]
            if qtype == "PTR":
                return [host for host in (_ptr_host(r) for r in res.query(name, "PTR")) if host]
            if qtype == "TXT":
                # pyspf joins each record's strings itself; give it one string per record
                return [(raw,) for raw in res.txt_bytes(name)]
            if qtype == "SPF":
                return []  # RFC 7208 3.1: type SPF is no longer looked up
        except NXDomain:
            return []
        except DNSTempError as exc:
            raise spf.TempError(f"DNS {exc}") from exc
        raise spf.PermError(f"unsupported DNS type {qtype}")


def _ptr_host(rdata: Any) -> str:
    return str(rdata.target.to_text(omit_final_dot=True))


def check(ip: str, mail_from: str, helo: str, resolver: Resolver, *,
          receiver: str = "", time_budget: float = DEFAULT_TIME_BUDGET) -> SPFResult:
    """SPF for the MAIL FROM identity, or for HELO when the reverse-path is null (RFC 7208 2.4)."""
    sender = mail_from.strip().strip("<>")
    try:
        query = _Query(resolver, i=ip, s=sender, h=helo, receiver=receiver or None,
                       strict=True, querytime=time_budget)
    except spf.PermError as exc:  # e.g. the client address is not an IP address
        return SPFResult("permerror", "mailfrom" if sender else "helo", "", sender, str(exc))
    domain = str(query.o or "")
    if domain.startswith("[") or "." not in domain.strip("."):
        # RFC 7208 4.3: a domain literal or a single-label name is "none", without a lookup
        return SPFResult("none", query.ident, domain, str(query.s), "not a multi-label domain")
    result, _code, explanation = query.check()
    if result not in RESULTS:
        result = "permerror"
    return SPFResult(result, query.ident, str(query.o or ""), str(query.s), str(explanation))


def check_helo(ip: str, helo: str, resolver: Resolver, *, receiver: str = "",
               time_budget: float = DEFAULT_TIME_BUDGET) -> SPFResult:
    """SPF for the HELO identity alone (RFC 7208 2.3), whatever the MAIL FROM was."""
    return check(ip, "", helo, resolver, receiver=receiver, time_budget=time_budget)
