"""Operator DMARC exceptions per domain, from POSTROOM_DMARC_OVERRIDES and the older global lists.

Syntax (docs/dmarc-api.md): entries separated by ``;``, each
``DOMAIN:OPTION[,OPTION...]``; options ``monitor`` (DMARC failures are reported,
never acted on) and ``forwarder=CIDR`` (mail from that network is not rejected
or sent to Junk for DMARC, repeatable). ``*`` as the domain applies to all.
A domain matches itself and its subdomains, as a recipient domain or the
author (From) domain.
"""

from __future__ import annotations

import ipaddress

from postroom_dmarc.verdict import DomainOverride, Network


class OverrideSyntaxError(ValueError):
    """POSTROOM_DMARC_OVERRIDES does not parse; the message says where."""


def _merge(a: DomainOverride | None, b: DomainOverride) -> DomainOverride:
    if a is None:
        return b
    return DomainOverride(monitor_only=a.monitor_only or b.monitor_only,
                          trusted_forwarders=a.trusted_forwarders + b.trusted_forwarders)


def _entry(text: str) -> tuple[str, DomainOverride]:
    domain, sep, options = text.partition(":")
    domain = domain.strip().lower().rstrip(".")
    if not sep or not domain or " " in domain:
        raise OverrideSyntaxError(f"{text!r}: expected DOMAIN:OPTION[,OPTION]")
    monitor = False
    networks: list[Network] = []
    for option in (o.strip() for o in options.split(",")):
        name, _, value = option.partition("=")
        name = name.strip().lower()
        if name == "monitor" and not value:
            monitor = True
        elif name in ("forwarder", "forwarders") and value:
            try:
                networks.append(ipaddress.ip_network(value.strip(), strict=False))
            except ValueError as exc:
                raise OverrideSyntaxError(f"{domain}: {exc}") from None
        else:
            raise OverrideSyntaxError(
                f"{domain}: unknown option {option!r} (monitor or forwarder=CIDR)")
    return domain, DomainOverride(monitor_only=monitor, trusted_forwarders=tuple(networks))


def parse_overrides(raw: str) -> dict[str, DomainOverride]:
    """Per-domain overrides from a POSTROOM_DMARC_OVERRIDES value; one domain's entries merge."""
    result: dict[str, DomainOverride] = {}
    for text in (t.strip() for t in raw.split(";")):
        if text:
            domain, override = _entry(text)
            result[domain] = _merge(result.get(domain), override)
    return result


def combine(*sources: dict[str, DomainOverride]) -> dict[str, DomainOverride]:
    """Several override maps as one; a domain in several gets the union of its options."""
    result: dict[str, DomainOverride] = {}
    for source in sources:
        for domain, override in source.items():
            result[domain] = _merge(result.get(domain), override)
    return result
