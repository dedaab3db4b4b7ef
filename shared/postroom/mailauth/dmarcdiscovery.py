"""Finding a DMARC record and the organizational domain: by public suffix list or tree walk.

In the library so the dmarc service (verdicts, reports) and the web console (the
readiness of a domain for p=reject, the organisations of sending sources) share it.

Two methods, chosen by ``mode``:

* ``"psl"`` (RFC 7489 section 3.2 and 6.6.3): the organizational domain is
  the registrable domain by the Public Suffix List (the ``publicsuffixlist``
  package); the record is looked up at the author domain, then at its
  organizational domain;
* ``"treewalk"`` (RFC 9989, DMARCbis): both come from walking ``_dmarc``
  records from the domain towards the root, at most 8 queries (a name of
  more than 8 labels jumps to its last 7), with ``psd=`` marking where an
  organization ends.

DNS temporary failures raise :class:`postroom.net.dns.DNSTempError`; callers
turn that into a DMARC ``temperror``.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

from publicsuffixlist import PublicSuffixList

from postroom.mailauth.dmarcrecord import DMARCRecord, MalformedRecord, NotDMARC, is_dmarc, parse
from postroom.net.dns import NXDomain, Resolver

MODES = ("psl", "treewalk")
_MAX_LABELS = 8

_psl: PublicSuffixList | None = None
_psl_lock = threading.Lock()


def _public_suffixes() -> PublicSuffixList:
    global _psl
    with _psl_lock:
        if _psl is None:
            _psl = PublicSuffixList()
        return _psl


@dataclass(frozen=True)
class Lookup:
    """What ``_dmarc.<domain>`` holds: nothing, a record, or a malformed record (with why)."""

    domain: str
    record: DMARCRecord | None = None
    error: str | None = None


@dataclass(frozen=True)
class Discovery:
    """The policy record that applies to an author domain, and where it was found."""

    author_domain: str
    policy_domain: str | None
    record: DMARCRecord | None
    error: str | None  # set when the record found is malformed (permerror)


def normalise(domain: str) -> str:
    text = domain.strip().rstrip(".").lower()
    try:
        return text.encode("idna").decode("ascii") if not text.isascii() else text
    except UnicodeError:
        return text


def lookup(domain: str, resolver: Resolver) -> Lookup:
    """The DMARC record at ``_dmarc.<domain>``; several DMARC records are malformed (permerror)."""
    try:
        texts = resolver.txt(f"_dmarc.{domain}")
    except NXDomain:
        return Lookup(domain)
    candidates = [t for t in texts if is_dmarc(t)]
    if not candidates:
        return Lookup(domain)
    if len(candidates) > 1:
        return Lookup(domain, error="more than one DMARC record")
    try:
        return Lookup(domain, record=parse(candidates[0]))
    except (MalformedRecord, NotDMARC) as exc:
        return Lookup(domain, error=str(exc))


@functools.lru_cache(maxsize=4096)
def psl_org_domain(domain: str) -> str:
    """The organizational domain of ``domain`` (normalised) by the public suffix list; no DNS.

    Cached (bounded): a pure function of the name once the list is loaded, asked for
    every author domain of every message (the list's lookup was 2% of the dmarc
    service's CPU under load).
    """
    return _public_suffixes().privatesuffix(domain) or domain


def walk_targets(domain: str) -> list[str]:
    """The domains a tree walk queries, longest first (RFC 9989 section 4.10)."""
    labels = domain.split(".")
    targets = [domain]
    if len(labels) > _MAX_LABELS:
        labels = labels[-(_MAX_LABELS - 1):]
        targets.append(".".join(labels))
    while len(labels) > 1:
        labels = labels[1:]
        targets.append(".".join(labels))
    return targets


class Discoverer:
    """Record discovery and organizational domains for one evaluation (answers memoised)."""

    def __init__(self, resolver: Resolver, mode: str = "psl") -> None:
        if mode not in MODES:
            raise ValueError(f"organizational domain mode must be one of {', '.join(MODES)}")
        self.resolver = resolver
        self.mode = mode
        self._lookups: dict[str, Lookup] = {}

    def _lookup(self, domain: str) -> Lookup:
        if domain not in self._lookups:
            self._lookups[domain] = lookup(domain, self.resolver)
        return self._lookups[domain]

    def org_domain(self, domain: str) -> str:
        domain = normalise(domain)
        if self.mode == "psl":
            return psl_org_domain(domain)
        return self._walk_org_domain(domain)

    def _walk_org_domain(self, domain: str) -> str:
        targets = walk_targets(domain)
        found: str | None = None
        for index, target in enumerate(targets):
            result = self._lookup(target)
            if result.record is None:
                continue
            if result.record.psd == "n":
                return target
            if result.record.psd == "y":
                # the organization is the name just below the public suffix operator's
                return targets[index - 1] if index > 0 else target
            found = target  # keep walking: the one with the fewest labels wins
        return found or domain

    def discover(self, author_domain: str) -> Discovery:
        author = normalise(author_domain)
        if self.mode == "psl":
            candidates = [author]
            org = self.org_domain(author)
            if org != author:
                candidates.append(org)
        else:
            candidates = walk_targets(author)
        for target in candidates:
            result = self._lookup(target)
            if result.error is not None:
                return Discovery(author, target, None, result.error)
            if result.record is not None:
                return Discovery(author, target, result.record, None)
        return Discovery(author, None, None, None)
