"""DKIM verification of every signature (RFC 6376, RFC 8463) and ARC chain validation (RFC 8617).

dkimpy does the cryptography; keys come from Postroom's resolver through
dkimpy's ``dnsfunc`` hook, and we classify each outcome ourselves because
dkimpy folds "no key", "bad key" and "DNS timeout" into a plain False:

* pass: the signature verifies with an acceptable key;
* fail: body hash mismatch, bad signature, expired signature;
* policy: verified or not, we refuse it: rsa-sha1 (RFC 8301 section 3.1),
  RSA keys under 1024 bits (RFC 8301 section 3.2);
* permerror: malformed signature, no key record, unusable key record;
* temperror: the key could not be fetched now (timeout, SERVFAIL).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import dkim
from dkim.util import InvalidTagValueList, parse_tag_value

from postroom.dns import DNSTempError, NXDomain, Resolver
from postroom.logs import get_logger
from postroom_dmarc.record import json_copy

log = get_logger("dkim")

MIN_RSA_BITS = 1024
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
        # dataclasses.asdict, written out (see postroom_dmarc.record.json_copy)
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
    """dkimpy's dnsfunc over our resolver, remembering what it found."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.missing = False
        self.record: bytes | None = None

    def __call__(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        try:
            records = self.resolver.txt_bytes(text)
        except NXDomain:
            records = []
        # DNSTempError propagates: dkimpy does not catch it, so we see it as such
        if not records:
            self.missing = True
            return None
        # RFC 6376 3.6.2.2: several records are ambiguous; like most verifiers, use the first
        self.record = records[0]
        return records[0]


def parse_headers(message: bytes) -> list[tuple[bytes, bytes]] | None:
    """dkimpy's reading of the header fields (name, raw value), or None when it refuses them.

    Done once per check and given to :func:`verify_all` and :func:`verify_arc`.
    Errors other than dkimpy's own propagate, as from dkimpy itself.
    """
    try:
        headers, _body = dkim.rfc822_parse(message)
    except dkim.DKIMException:
        return None
    return [(name, value) for name, value in headers]


def _tag(tags: dict[bytes, bytes], name: bytes) -> str:
    return tags.get(name, b"").decode("ascii", "replace").strip()


def verify_all(message: bytes, resolver: Resolver, *, min_rsa_bits: int = MIN_RSA_BITS,
               headers: list[tuple[bytes, bytes]] | None = None) -> list[DKIMResult]:
    """Verify every DKIM-Signature of ``message``; one result each, top to bottom.

    ``headers`` is :func:`parse_headers` of the message, when the caller has it.
    """
    if headers is None:
        headers = parse_headers(message) or []
    signatures = [value for name, value in headers if name.lower() == b"dkim-signature"]
    return [_verify_one(message, index, value, resolver, min_rsa_bits)
            for index, value in enumerate(signatures)]


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
    verifier = dkim.DKIM(message, minkey=min_rsa_bits, timeout=resolver.timeout)
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
                                           timeout=resolver.timeout)
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
