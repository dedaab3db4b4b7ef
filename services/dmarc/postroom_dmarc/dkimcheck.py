"""DKIM verification of every signature (RFC 6376, RFC 8463) and ARC chain validation (RFC 8617).

dkimpy does the cryptography; keys come from Postroom's resolver through
dkimpy's ``dnsfunc`` hook, and we classify each outcome ourselves because
dkimpy folds "no key", "bad key" and "DNS timeout" into a plain False:

* pass: the signature verifies with an acceptable key;
* fail: body hash mismatch, bad signature, expired signature;
* policy: verified or not, we refuse it: rsa-sha1 (RFC 8301 section 3.1),
  RSA keys under 1024 bits (RFC 8301 section 3.2);
* permerror: malformed signature, no key record, unusable key record;
* temperror: the key could not be fetched now (timeout, SERVFAIL), or the
  DKIM step's time ran out before this signature was verified.

Each signature costs a parse, a body canonicalisation and a key lookup, so a
message's signatures are bounded (:func:`verify`): at most ``max_signatures``
are verified, those whose ``d=`` aligns with an author (From:) domain first,
and all of them within ``budget`` seconds; every key lookup's timeout is cut
to the time left, and the step stops when none is.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import dkim
from dkim.util import InvalidTagValueList, parse_tag_value

from postroom.logs import get_logger
from postroom.mailauth.dmarcdiscovery import normalise, psl_org_domain
from postroom.mailauth.dmarcrecord import json_copy
from postroom.net.dns import DNSTempError, NXDomain, Resolver

log = get_logger("dkim")

MIN_RSA_BITS = 1024
# the defaults of POSTROOM_DKIM_MAX_SIGNATURES and POSTROOM_DKIM_BUDGET
MAX_SIGNATURES = 10
BUDGET = 8.0
OUT_OF_TIME = "not verified: the DKIM step ran out of time"
_B_PREFIX = 12  # RFC 6008: header.b carries at least the first 8 characters of b=


@dataclass(frozen=True)
class DKIMResult:
    """The outcome for one DKIM-Signature field, in message order."""

    result: str  # pass, fail, neutral, policy, temperror, permerror
    domain: str
    selector: str
    algorithm: str
    b: str  # the first characters of b=, to tell signatures apart (RFC 6008)
    reason: str
    key_bits: int | None = None

    def to_json(self) -> dict[str, Any]:
        # dataclasses.asdict, written out (see postroom.mailauth.dmarcrecord.json_copy)
        return {"result": self.result, "domain": self.domain, "selector": self.selector,
                "algorithm": self.algorithm, "b": self.b, "reason": self.reason,
                "key_bits": self.key_bits}


@dataclass(frozen=True)
class ARCResult:
    """The ARC chain's validation (RFC 8617 section 5.2): pass, fail, none or temperror."""

    result: str
    reason: str
    # per instance, newest first: {"instance", "sealer" (ARC-Seal d=), "cv"}
    sets: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"result": self.result, "reason": self.reason, "sets": json_copy(self.sets)}

    def sealers(self) -> list[str]:
        return [s["sealer"] for s in self.sets if s.get("sealer")]


class _KeyFetcher:
    """dkimpy's dnsfunc over our resolver, remembering what it found.

    dkimpy passes the ``timeout`` it was built with; the lookup never takes
    longer than that nor than the resolver's own bound (its deadline).
    """

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.missing = False
        self.record: bytes | None = None

    def __call__(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        resolver = self.resolver
        if timeout < resolver.time_left():
            resolver = resolver.until(time.monotonic() + timeout)
        try:
            records = resolver.txt_bytes(text)
        except NXDomain:
            records = []
        # DNSTempError propagates: dkimpy does not catch it, so we see it as such
        if not records:
            self.missing = True
            return None
        # RFC 6376 3.6.2.2: several records are ambiguous; like most verifiers, use the first
        self.record = records[0]
        return records[0]


# a line break followed at once by another: where dkimpy's header block ends
_HEADER_END = re.compile(rb"\n\r?\n")


def parse_headers(message: bytes) -> list[tuple[bytes, bytes]] | None:
    """dkimpy's reading of the header fields (name, raw value), or None when it refuses them.

    Done once per check and given to :func:`verify_all` and :func:`verify_arc`.
    Errors other than dkimpy's own propagate, as from dkimpy itself.

    dkimpy is given the header block only: it splits the whole message into lines and
    joins the body again, linear in the body for fields it stops reading at the first
    empty line. That line is the first line break followed by another (or the message's
    first byte being one); cut just after its first LF, the text ends in an empty line
    at the same place, so the fields (and any error) are the ones the whole message gives.
    """
    end = _HEADER_END.search(message)
    if end is not None:
        message = message[:end.start() + 1]
    try:
        headers, _body = dkim.rfc822_parse(message)
    except dkim.DKIMException:
        return None
    return [(name, value) for name, value in headers]


def _tag(tags: dict[bytes, bytes], name: bytes) -> str:
    return tags.get(name, b"").decode("ascii", "replace").strip()


@dataclass(frozen=True)
class DKIMRun:
    """:func:`verify`'s outcome: the results, and what its limits left undone."""

    results: list[DKIMResult]  # the signatures chosen, in message order
    signatures: int = 0  # DKIM-Signature fields in the message
    skipped: int = 0  # beyond max_signatures: neither verified nor reported
    unfinished: int = 0  # chosen, but not started before the time ran out (temperror)
    out_of_time: bool = False  # the budget or the check's deadline ran out during the step


def verify_all(message: bytes, resolver: Resolver, *, min_rsa_bits: int = MIN_RSA_BITS,
               headers: list[tuple[bytes, bytes]] | None = None) -> list[DKIMResult]:
    """Verify every DKIM-Signature of ``message``, with no cap; one result each, top to bottom.

    For trusted input and tests: a check of received mail uses :func:`verify`.
    """
    return verify(message, resolver, min_rsa_bits=min_rsa_bits, headers=headers,
                  max_signatures=None, budget=None).results


def verify(message: bytes, resolver: Resolver, *, min_rsa_bits: int = MIN_RSA_BITS,
           headers: list[tuple[bytes, bytes]] | None = None, authors: Sequence[str] = (),
           max_signatures: int | None = MAX_SIGNATURES,
           budget: float | None = BUDGET) -> DKIMRun:
    """Verify at most ``max_signatures`` DKIM-Signatures of ``message`` within ``budget`` seconds.

    Signatures whose ``d=`` aligns with one of ``authors`` (the From: domains)
    are chosen and verified first: the same domain, then a parent or child,
    then the same organizational domain (public suffix list; no DNS); the rest
    follow in message order. Those beyond the cap are skipped and not
    reported. Before each signature the time left is checked; every key
    lookup's timeout is cut to it (``resolver`` may carry the whole check's
    deadline too, see :meth:`postroom.net.dns.Resolver.until`); signatures not
    started in time are reported as ``temperror``. ``headers`` is
    :func:`parse_headers` of the message, when the caller has it.
    """
    if headers is None:
        headers = parse_headers(message) or []
    signatures = [value for name, value in headers if name.lower() == b"dkim-signature"]
    if not signatures:
        return DKIMRun([])
    order = _by_alignment(signatures, authors)
    chosen = order if max_signatures is None else order[:max_signatures]
    skipped = len(order) - len(chosen)
    bounded = resolver if budget is None else resolver.until(time.monotonic() + budget)
    results: dict[int, DKIMResult] = {}
    unfinished, out_of_time = 0, False
    for index in chosen:
        if bounded.time_left() <= 0:
            results[index] = _unverified(signatures[index])
            unfinished += 1
            out_of_time = True
            continue
        results[index] = _verify_one(message, index, signatures[index], bounded, min_rsa_bits)
        if results[index].result == "temperror" and bounded.time_left() <= 0:
            out_of_time = True
    return DKIMRun([results[i] for i in sorted(results)], len(signatures), skipped, unfinished,
                   out_of_time)


def _by_alignment(signatures: list[bytes], authors: Sequence[str]) -> list[int]:
    """Indices of ``signatures``, those whose d= aligns best with ``authors`` first."""
    if not authors or len(signatures) < 2:  # the usual case: nothing to choose between
        return list(range(len(signatures)))
    wanted = {normalise(a) for a in authors}
    orgs: set[str] | None = None  # of the authors, found when first needed
    rank_of: dict[str, int] = {}

    def rank(value: bytes) -> int:
        nonlocal orgs
        match = _D_TAG.search(value)
        if match is None:
            return 3
        domain = normalise(match.group(1).decode("ascii", "replace"))
        if domain not in rank_of:
            if domain in wanted:
                rank_of[domain] = 0
            elif any(domain.endswith("." + a) or a.endswith("." + domain) for a in wanted):
                rank_of[domain] = 1
            else:
                if orgs is None:
                    orgs = {psl_org_domain(a) for a in wanted}
                rank_of[domain] = 2 if domain and psl_org_domain(domain) in orgs else 3
        return rank_of[domain]

    return sorted(range(len(signatures)), key=lambda i: (rank(signatures[i]), i))


# the d= tag of a signature field: enough to rank it; the full parse comes with verification
_D_TAG = re.compile(rb"(?:^|;)\s*d\s*=\s*([^;\s]*)", re.IGNORECASE)


def _unverified(value: bytes) -> DKIMResult:
    try:
        tags = parse_tag_value(value)
    except InvalidTagValueList:
        tags = {}
    return DKIMResult("temperror", _tag(tags, b"d").lower(), _tag(tags, b"s"),
                      _tag(tags, b"a").lower(), re.sub(r"\s+", "", _tag(tags, b"b"))[:_B_PREFIX],
                      OUT_OF_TIME)


def _verify_one(message: bytes, index: int, value: bytes, resolver: Resolver,
                min_rsa_bits: int) -> DKIMResult:
    try:
        tags = parse_tag_value(value)
    except InvalidTagValueList as exc:
        return DKIMResult("permerror", "", "", "", "", f"malformed signature: {exc}")
    domain, selector = _tag(tags, b"d").lower(), _tag(tags, b"s")
    algorithm = _tag(tags, b"a").lower()
    b_prefix = re.sub(r"\s+", "", _tag(tags, b"b"))[:_B_PREFIX]

    def result(kind: str, reason: str, bits: int | None = None) -> DKIMResult:
        return DKIMResult(kind, domain, selector, algorithm, b_prefix, reason, bits)

    if algorithm == "rsa-sha1":
        return result("policy", "rsa-sha1 signatures are not accepted (RFC 8301)")
    fetcher = _KeyFetcher(resolver)
    verifier = dkim.DKIM(message, minkey=min_rsa_bits, timeout=max(resolver.time_left(), 0.0))
    try:
        valid = verifier.verify(idx=index, dnsfunc=fetcher)
    except DNSTempError as exc:
        return result("temperror", f"key lookup failed: {exc}")
    except dkim.KeyFormatError as exc:
        if "too small" in str(exc):
            return result("policy", f"RSA key of {verifier.keysize} bits is below "
                                    f"{min_rsa_bits} (RFC 8301)", verifier.keysize)
        return result("permerror", f"unusable key: {exc}")
    except dkim.ValidationError as exc:
        text = str(exc)
        if "body hash mismatch" in text:
            return result("fail", "body hash did not verify")
        if "expired" in text:
            return result("fail", "signature expired")
        return result("permerror", f"invalid signature: {text}")
    except dkim.DKIMException as exc:
        return result("permerror", f"invalid signature: {exc}")
    except Exception as exc:  # noqa: BLE001 - hostile input must never crash the check
        log.warning("dkim verifier error", domain=domain, selector=selector,
                    error=f"{type(exc).__name__}: {exc}")
        return result("permerror", "signature could not be processed")
    bits = verifier.keysize or None
    if valid:
        return result("pass", "signature verified", bits)
    if fetcher.missing:
        return result("permerror", "no key for signature")
    if fetcher.record is not None:
        try:
            dkim.evaluate_pk(b"key", fetcher.record)
        except dkim.DKIMException as exc:
            return result("permerror", f"unusable key: {exc}")
        except Exception:  # noqa: BLE001 - a hostile key record: same outcome
            return result("permerror", "unusable key")
    return result("fail", "signature did not verify", bits)


_ARC_FIELDS = frozenset(dkim.ARC.ARC_HEADERS)


def verify_arc(message: bytes, resolver: Resolver, *, min_rsa_bits: int = MIN_RSA_BITS,
               headers: list[tuple[bytes, bytes]] | None = None) -> ARCResult:
    """Validate the message's ARC chain (RFC 8617 section 5.2).

    With ``headers`` (:func:`parse_headers` of the message) and no ARC field
    among them, the answer is dkimpy's for an unsealed message without
    dkimpy parsing and canonicalizing the whole header again.
    """
    if headers is not None and not any(name.lower() in _ARC_FIELDS for name, _ in headers):
        return ARCResult("none", "Message is not ARC signed", [])
    fetcher = _KeyFetcher(resolver)
    try:
        cv, sets, reason = dkim.arc_verify(message, dnsfunc=fetcher, minkey=min_rsa_bits,
                                           timeout=max(resolver.time_left(), 0.0))
    except DNSTempError as exc:
        return ARCResult("temperror", f"key lookup failed: {exc}")
    except Exception as exc:  # noqa: BLE001 - hostile ARC headers must never crash the check
        return ARCResult("fail", f"ARC chain could not be processed: {type(exc).__name__}")
    summary = [
        {"instance": int(s.get("instance", 0)),
         "sealer": (s.get("as-domain") or b"").decode("ascii", "replace").lower(),
         "cv": (s.get("cv") or b"").decode("ascii", "replace").lower()}
        for s in sets
    ]
    result = {dkim.CV_Pass: "pass", dkim.CV_None: "none"}.get(cv, "fail")
    return ARCResult(result, str(reason), summary)
