"""Every setting Postroom reads, its default and meaning, parsed once from the environment.

Configuration comes only from ``POSTROOM_*`` environment variables. A secret may
instead be given as ``POSTROOM_<NAME>_FILE`` naming a file that holds it (the
Docker/Kubernetes secrets convention). :func:`load_settings` parses everything at
start-up into a frozen :class:`Settings`; a bad value raises :class:`ConfigError`
whose message is one line naming the variable, so a service stops before it
serves anything rather than failing at first use.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from postroom.net.nexthop import TLS_MODES, NextHop, parse_nexthop

PREFIX = "POSTROOM_"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


# --- value parsers: each takes the raw string and returns the typed value or raises ValueError


def _str(raw: str) -> str:
    return raw.strip()


def _opt_str(raw: str) -> str | None:
    raw = raw.strip()
    return raw or None


def _int(raw: str) -> int:
    return int(raw.strip())


def _positive_int(raw: str) -> int:
    value = int(raw.strip())
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw.strip())
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be a number, 0 or more")
    return value


def parse_processes(raw: str) -> str:
    """POSTROOM_PROCESSES: empty (the service's default), ``auto``, or a positive number."""
    value = raw.strip().lower()
    if value in ("", "auto"):
        return value
    if not value.isdigit() or int(value) <= 0:
        raise ValueError("must be a positive number of processes, or auto")
    return str(int(value))


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be one of true/false, yes/no, on/off, 1/0")


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(raw: str) -> float:
    """Seconds, or a number with a unit: ``30s``, ``5m``, ``2h``, ``5d``."""
    value = raw.strip().lower()
    if not value:
        raise ValueError("empty duration")
    unit = value[-1]
    if unit in _DURATION_UNITS:
        number, factor = value[:-1], _DURATION_UNITS[unit]
    else:
        number, factor = value, 1
    seconds = float(number) * factor
    if seconds <= 0:
        raise ValueError("must be a positive duration such as 30s, 5m, 2h or 5d")
    return seconds


def _non_negative_duration(raw: str) -> float:
    """:func:`parse_duration`, or ``0`` (turned off)."""
    if raw.strip() in ("0", "0s"):
        return 0.0
    return parse_duration(raw)


_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
# digits, an optional fraction, an optional unit: no nested repetition, so no backtracking
_SIZE = re.compile(r"([0-9]{1,15})(?:\.([0-9]{1,9}))?([kmgt]?)(?:i?b)?")


def parse_size(raw: str) -> int:
    """Bytes from ``1048576``, ``1024K``, ``500M``, ``2G``, ``1.5G``, ``1T`` (binary multiples;
    ``MB``, ``MiB`` and lower case are the same). The one size parser: settings and the CLI's
    quotas use it. ValueError for anything else, and for sizes that are not positive."""
    value = raw.strip().lower().replace(" ", "")
    found = _SIZE.fullmatch(value) if len(value) <= 32 else None
    if found is None:
        raise ValueError(f"{raw[:40]!r} is not a size such as 500M, 2G, 1.5G, 1024K or bytes")
    whole, fraction, unit = found.groups()
    if fraction and not unit:
        raise ValueError("a size in bytes is a whole number")
    factor = _SIZE_UNITS[unit]
    size = int(whole) * factor
    if fraction:
        # exact arithmetic: 1.5G is 1610612736 bytes, not a float's rounding of it
        size += int(fraction) * factor // 10 ** len(fraction)
    if size <= 0:
        raise ValueError("must be a positive size such as 500M or 2G")
    return size


def parse_quota(raw: str) -> int | None:
    """A storage quota: a size for :func:`parse_size`, or ``none``/``unlimited`` (None: no
    quota). The CLI's `user quota` and the web console's and REST API's users take it."""
    if raw.strip().lower() in ("none", "unlimited"):
        return None
    return parse_size(raw)


_size = parse_size


_ENDPOINT_TYPES = ("tcp", "tcp6", "unix", "systemd")
# ``proxy:tcp:10025``: a PROXY protocol listener (postroom.net.proxyproto); ``haproxy:`` is the
# older spelling of the same thing. Both go through our strict wrapper, never Twisted's.
PROXY_PREFIXES = ("proxy", "haproxy")


def split_proxy(endpoint: str) -> tuple[str, bool]:
    """``proxy:tcp:10025`` -> (``tcp:10025``, True); a plain endpoint -> (itself, False)."""
    kind, _, rest = endpoint.partition(":")
    if kind in PROXY_PREFIXES and rest:
        return rest, True
    return endpoint, False


def _endpoints(raw: str, *, proxy: bool = False) -> tuple[str, ...]:
    """A comma-separated list of Twisted server endpoint strings (``tcp:587,tcp:2525``).

    An empty value means "do not listen" (a service with several listeners may
    have one of them switched off). With ``proxy``, an item may start with
    ``proxy:`` (a PROXY protocol listener); elsewhere that prefix is refused.
    """
    items = tuple(item.strip() for item in raw.split(",") if item.strip())
    for item in items:
        inner, proxied = split_proxy(item)
        if proxied and not proxy:
            raise ValueError(f"{item!r}: PROXY protocol listeners are only for the mta, msa, "
                             "pop3 and imap listen settings")
        kind = inner.split(":", 1)[0]
        if kind not in _ENDPOINT_TYPES or ":" not in inner:
            raise ValueError(
                f"{item!r} is not a server endpoint string (expected e.g. tcp:587, "
                "tcp:587:interface=127.0.0.1" + (" or proxy:tcp:10587)" if proxy else ")")
            )
    return items


_MAIL_LISTEN = ("mta_listen", "msa_listen", "msa_tls_listen", "pop3_listen", "pop3_tls_listen",
                "imap_listen", "imap_tls_listen")


def _mail_endpoints(raw: str) -> tuple[str, ...]:
    """:func:`_endpoints` for the mail listeners, where ``proxy:`` endpoints are allowed."""
    return _endpoints(raw, proxy=True)


def _endpoint(raw: str) -> str:
    items = _endpoints(raw)
    if len(items) != 1:
        raise ValueError("must be exactly one endpoint string, e.g. tcp:8080")
    return items[0]


def _host_ports(raw: str) -> tuple[tuple[str, int], ...]:
    """``host[:port]`` list, comma-separated; ``[v6]:port`` for IPv6."""
    result = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = int(rest[1:]) if rest.startswith(":") else 53
        elif item.count(":") == 1:
            host, port_s = item.split(":")
            port = int(port_s)
        else:
            host, port = item, 53
        if not host or not 0 < port < 65536:
            raise ValueError(f"{item!r} is not host:port")
        result.append((host, port))
    return tuple(result)


def _url(*schemes: str) -> Callable[[str], str | None]:
    def parse(raw: str) -> str | None:
        value = raw.strip()
        if not value:
            return None
        scheme = value.split(":", 1)[0].split("+", 1)[0]
        if scheme not in schemes or "://" not in value:
            allowed = ", ".join(s + "://" for s in schemes)
            raise ValueError(f"must be a URL starting with one of {allowed}")
        return value
    return parse


# --- the database URL: the forms operators and hosting services write, one driver behind them

DATABASE_DRIVER = "psycopg2"  # the one PostgreSQL driver Postroom ships and is tested with


def normalise_database_url(raw: str) -> str:
    """``postgresql://``, ``postgres://`` or ``postgresql+psycopg2://`` as the SQLAlchemy URL.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3 and knows no
    ``postgres://`` at all; both are what operators and hosting services write,
    so both mean the driver we ship. Any other driver is refused here, at
    start-up, rather than as an ImportError at the first connection. Every
    engine (services, CLI, migrations) is made from a URL that went through
    this function (``postroom.store.db.make_engine``).
    """
    value = raw.strip()
    scheme, sep, rest = value.partition("://")
    dialect, _, driver = scheme.lower().partition("+")
    if not sep or dialect not in ("postgresql", "postgres"):
        raise ValueError("must be a URL such as postgresql://user:password@host:5432/postroom "
                         "(postgres:// is accepted too)")
    if driver and driver != DATABASE_DRIVER:
        raise ValueError(f"driver {driver!r} is not installed with Postroom, which runs on "
                         f"{DATABASE_DRIVER}: write postgresql://... (or "
                         f"postgresql+{DATABASE_DRIVER}://...)")
    return f"postgresql+{DATABASE_DRIVER}://{rest}"


def _opt_database_url(raw: str) -> str | None:
    return normalise_database_url(raw) if raw.strip() else None


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _ip_networks(raw: str) -> tuple[Network, ...]:
    """Comma-separated addresses or CIDR networks (``10.0.0.0/8,2001:db8::1``)."""
    return tuple(ipaddress.ip_network(item.strip(), strict=False)
                 for item in raw.split(",") if item.strip())


def _networks(raw: str) -> tuple[str, ...]:
    """:func:`_ip_networks`, each written out normalised (``10.0.0.0/8``)."""
    return tuple(str(network) for network in _ip_networks(raw))


def _opt_address(raw: str) -> str | None:
    """One IP address (``192.0.2.25``), normalised; empty means none."""
    return str(ipaddress.ip_address(raw.strip())) if raw.strip() else None


_TS_CONFIG = re.compile(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?")


def _text_search_config(raw: str) -> str:
    value = raw.strip().lower()
    if not _TS_CONFIG.fullmatch(value):
        raise ValueError("must be a text search configuration name such as simple or english")
    return value


def _names(raw: str) -> tuple[str, ...]:
    """Comma-separated DNS names (``zen.example.org,bl.example.net``), lowercased."""
    return tuple(item.strip().lower().rstrip(".") for item in raw.split(",") if item.strip())


def _opt_mail_address(raw: str) -> str:
    """One plain mail address (``local@domain``, no display name or brackets); empty: none."""
    value = raw.strip()
    if value and ("@" not in value or any(c in value for c in " <>\r\n")):
        raise ValueError("must be a plain address (local@domain)")
    return value


@dataclass(frozen=True)
class DmarcOverride:
    """Operator DMARC exceptions for one domain (POSTROOM_DMARC_OVERRIDES, docs/dmarc-api.md)."""

    monitor_only: bool = False  # report DMARC, never act on it
    trusted_forwarders: tuple[Network, ...] = ()  # client networks that may break DMARC

    def merged(self, other: DmarcOverride) -> DmarcOverride:
        """Both sets of exceptions: monitored if either is, every forwarder of both."""
        return DmarcOverride(monitor_only=self.monitor_only or other.monitor_only,
                             trusted_forwarders=self.trusted_forwarders + other.trusted_forwarders)


def _dmarc_override(text: str) -> tuple[str, DmarcOverride]:
    domain, sep, options = text.partition(":")
    domain = domain.strip().lower().rstrip(".")
    if not sep or not domain or " " in domain:
        raise ValueError(f"{text!r}: expected DOMAIN:OPTION[,OPTION]")
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
                raise ValueError(f"{domain}: {exc}") from None
        else:
            raise ValueError(f"{domain}: unknown option {option!r} (monitor or forwarder=CIDR)")
    return domain, DmarcOverride(monitor_only=monitor, trusted_forwarders=tuple(networks))


def parse_dmarc_overrides(raw: str) -> Mapping[str, DmarcOverride]:
    """``DOMAIN:OPTION[,OPTION];...`` by domain; one domain's entries merge.

    Options: ``monitor`` (DMARC failures are reported, never acted on) and
    ``forwarder=CIDR`` (mail from that network is not rejected or sent to Junk
    for DMARC; repeatable). ``*`` as the domain applies to all; a domain
    matches itself and its subdomains.
    """
    result: dict[str, DmarcOverride] = {}
    for text in (t.strip() for t in raw.split(";")):
        if text:
            domain, override = _dmarc_override(text)
            earlier = result.get(domain)
            result[domain] = earlier.merged(override) if earlier else override
    return MappingProxyType(result)  # read-only, like the rest of the frozen Settings


def _paths(raw: str) -> tuple[str, ...]:
    """Comma-separated file paths (``/run/secrets/a,/run/secrets/b``)."""
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _internal_http_url(raw: str) -> str:
    """``http://host[:port]``: the dmarc API is plain HTTP on the internal network."""
    value = raw.strip()
    scheme, sep, rest = value.partition("://")
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    if scheme.lower() != "http" or not sep or not host or host.startswith(":"):
        raise ValueError("must be an http:// URL with a host (the policy API is plain HTTP on "
                         "the internal network)")
    return value


def _service_urls(raw: str) -> tuple[tuple[str, str], ...]:
    """``name=http://host:port`` pairs, comma-separated (the services' /healthz and /metrics)."""
    found = []
    for item in (i.strip() for i in raw.split(",")):
        if not item:
            continue
        name, sep, url = item.partition("=")
        name = name.strip().lower()
        if not sep or not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,31}", name):
            raise ValueError(f"{item!r}: expected NAME=http://HOST:PORT")
        found.append((name, _internal_http_url(url).rstrip("/")))
    return tuple(found)


def _opt_clamd_address(raw: str) -> str | None:
    """``tcp:HOST:PORT`` or ``unix:PATH`` of clamd (empty: no virus scanning)."""
    value = raw.strip()
    if not value:
        return None
    kind, sep, rest = value.partition(":")
    if kind == "unix" and sep and rest.startswith("/"):
        return value
    host, colon, port = rest.rpartition(":")
    if kind != "tcp" or not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be tcp:HOST:PORT or unix:/absolute/path")
    return value


def _opt_nexthop(raw: str) -> NextHop | None:
    """A smarthost, Postfix relayhost syntax: ``host:port`` (MX lookup) or ``[host]:port``."""
    return parse_nexthop(raw) if raw.strip() else None


def _opt_readable_file(raw: str) -> str | None:
    """A path to a file that exists and can be read now (its content is read where used)."""
    path = raw.strip()
    if not path:
        return None
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise ValueError(f"cannot read {path!r}: {exc.strerror}") from exc
    return path


def _opt_ca_file(raw: str) -> str | None:
    """A readable PEM file with at least one certificate (a CA bundle)."""
    path = _opt_readable_file(raw)
    if path is None:
        return None
    with open(path, "rb") as handle:
        if b"-----BEGIN CERTIFICATE-----" not in handle.read(1 << 20):
            raise ValueError("the file holds no PEM certificate")
    return path


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value
    return parse


def _fqdn() -> str:
    return socket.getfqdn() or "localhost"


# --- the settings themselves: one field each, in the order the operator guide lists them


# attachment policy (the dmarc service's content checks; docs/content-filtering.md)
ATTACHMENT_BLOCKED_DEFAULT = (
    "ade,adp,app,application,appx,appxbundle,bas,bat,cab,chm,cmd,com,cpl,crt,dll,exe,gadget,"
    "hlp,hta,inf,ins,iso,img,isp,jar,js,jse,lnk,mde,msc,msh,msi,msix,msixbundle,msp,mst,pif,ps1,"
    "ps1xml,ps2,psc1,psm1,reg,scf,scr,sct,shb,shs,sys,url,vb,vbe,vbs,vhd,vhdx,ws,wsc,wsf,wsh,xll,"
    "xbap")


def _extensions(raw: str) -> tuple[str, ...]:
    """Comma-separated file name extensions (``exe,.scr, JS``): lower case, no dots."""
    items = tuple(item.strip().lstrip(".").lower() for item in raw.split(",") if item.strip())
    for item in items:
        if not item or any(c in item for c in "./\\ \t"):
            raise ValueError(f"{item!r} is not a file name extension")
    return items



@dataclass(frozen=True)
class Spec:
    """How one setting is read: its variable, parser, default and meaning."""

    attr: str
    parse: Callable[[str], Any]
    default: str | Callable[[], str]
    doc: str
    secret: bool

    @property
    def env(self) -> str:
        return PREFIX + self.attr.upper()


def setting(parse: Callable[[str], Any], default: str | Callable[[], str], doc: str,
            *, secret: bool = False) -> Any:
    """Declare a Settings field: its parser, default (as the raw string) and meaning."""
    return field(metadata={"parse": parse, "default": default, "doc": doc, "secret": secret})


@dataclass(frozen=True)
class Settings:
    """Postroom's configuration, frozen after start-up; each field is POSTROOM_<NAME>."""

    # where state lives
    database_url: str | None = setting(
        _opt_database_url, "",
        "URL of PostgreSQL: postgresql://user:password@host:5432/db, or postgres://..., both run "
        "on the psycopg2 driver Postroom ships (postgresql+psycopg2:// is the same; any other "
        "+driver is refused at start-up). Under `postroom up` a private instance under "
        "POSTROOM_VAR_DIR when unset; else required.", secret=True)
    redis_url: str | None = setting(
        _url("redis", "rediss", "unix"), "",
        "redis:// URL of Redis, db index allowed. Under `postroom up` a private instance when "
        "unset; else required.", secret=True)
    redis_prefix: str = setting(
        _str, "postroom:",
        "Prefix of every Redis key and stream (lets several suites or tests share one Redis).")
    db_pool_size: int = setting(
        _positive_int, "5",
        "Connections in this process's SQLAlchemy pool; the `db` thread pool has the same size.")
    var_dir: str = setting(
        _str, "var",
        "Where `postroom up` keeps its private database, Redis, certificates and logs. As root, "
        "when the database's unprivileged user cannot enter it (a checkout in a 0700 home), "
        "the database alone runs in a per-run directory under /var/tmp, removed at stop.")
    # identity and TLS
    hostname: str = setting(
        _str, _fqdn,
        "Our name in SMTP banners, HELO/EHLO, Received: and Authentication-Results authserv-id.")
    tls_cert_file: str | None = setting(
        _opt_str, "",
        "PEM certificate chain for every TLS listener; reloaded when the file changes. "
        "`postroom up` makes a self-signed one when unset.")
    tls_key_file: str | None = setting(
        _opt_str, "", "PEM private key matching POSTROOM_TLS_CERT_FILE.")
    # listeners (Twisted endpoint strings)
    mta_listen: tuple[str, ...] = setting(
        _mail_endpoints, "tcp:25",
        "Inbound SMTP (port 25, STARTTLS offered). Here and in the other mail listen settings, "
        "`proxy:tcp:N` is a PROXY protocol listener (see POSTROOM_PROXY_TRUSTED).")
    msa_listen: tuple[str, ...] = setting(
        _mail_endpoints, "tcp:587,tcp:2525",
        "Submission with STARTTLS required before AUTH (RFC 6409).")
    msa_tls_listen: tuple[str, ...] = setting(
        _mail_endpoints, "tcp:465", "Submission with implicit TLS (RFC 8314).")
    pop3_listen: tuple[str, ...] = setting(_mail_endpoints, "tcp:110", "POP3 with STLS.")
    pop3_tls_listen: tuple[str, ...] = setting(
        _mail_endpoints, "tcp:995", "POP3 with implicit TLS.")
    managesieve_listen: tuple[str, ...] = setting(
        _endpoints, "tcp:4190",
        "ManageSieve (RFC 5804) with STARTTLS required before AUTHENTICATE (docs/managesieve.md).")
    imap_listen: tuple[str, ...] = setting(_mail_endpoints, "tcp:143", "IMAP with STARTTLS.")
    imap_tls_listen: tuple[str, ...] = setting(
        _mail_endpoints, "tcp:993", "IMAP with implicit TLS.")
    # imap literals (docs/imap.md "Limits"); before login the limits are fixed and small
    imap_max_append_bytes: int = setting(
        _size, "100M",
        "All messages of one IMAP APPEND command together (MULTIAPPEND); each message is also "
        "at most POSTROOM_MAX_MESSAGE_SIZE. Over it: NO [TOOBIG] before the literal is sent.")
    imap_max_literals: int = setting(
        _positive_int, "100", "Literals in one IMAP command; more get BAD and are skipped.")
    imap_max_held_bytes: int = setting(
        _size, "16M",
        "Bytes one IMAP connection may hold (unread input, commands read but not yet run, "
        "APPEND data spooled to disk included) before the server stops reading from it until "
        "they have run.")
    imap_spool_threshold: int = setting(
        _size, "1M",
        "APPEND data one command keeps in memory; larger messages are written to an unlinked "
        "temporary file in TMPDIR as they arrive.")
    # imap-fts: full-text search of BODY/TEXT (docs/imap.md "Full-text search")
    fts_config: str = setting(
        _text_search_config, "simple",
        "PostgreSQL text search configuration of the full-text index (simple, english, "
        "german, ...). `simple` keeps every word as written, which partial-word searches "
        "need; after a change, empty message_texts and run `postroom fts backfill`.")
    fts_max_bytes: int = setting(
        _size, "1M",
        "Decoded text indexed per message, for its header and for its body each; a message "
        "with more is also searched by its raw bytes.")
    # --- imap-sync: METADATA (RFC 5464) limits
    imap_metadata_max_size: int = setting(
        _size, "16K",
        "Largest value of one IMAP METADATA entry (SETMETADATA over it: NO [METADATA MAXSIZE]).")
    imap_metadata_max_entries: int = setting(
        _positive_int, "100",
        "IMAP METADATA entries on the server, and on each mailbox, per account (over it: "
        "NO [METADATA TOOMANY]).")
    imap_metadata_max_total: int = setting(
        _size, "1M",
        "Bytes of every IMAP METADATA value of one account together (over it: "
        "NO [METADATA TOOMANY]).")
    dmarc_listen: tuple[str, ...] = setting(
        _endpoints, "tcp:8025", "The DMARC policy service's internal HTTP API.")
    # the web console and REST API (docs/web.md)
    web_listen: tuple[str, ...] = setting(
        _endpoints, "tcp:8000",
        "The web console and REST API (plain HTTP; put TLS in front, or use "
        "POSTROOM_WEB_TLS_LISTEN).")
    web_tls_listen: tuple[str, ...] = setting(
        _endpoints, "",
        "The web console and REST API with implicit TLS (HTTPS) on our certificate "
        "(POSTROOM_TLS_CERT_FILE); empty: off. compose.yaml maps it to 443 when enabled.")
    web_session_ttl: float = setting(
        parse_duration, "12h",
        "How long a console login lasts at most, however active the session is.")
    web_session_idle: float = setting(
        parse_duration, "30m",
        "A console session unused this long ends (the next request goes to the login page).")
    web_cookie_secure: bool = setting(
        _bool, "false",
        "Mark the session cookie Secure on plain HTTP too (set it behind a reverse proxy that "
        "ends TLS); over POSTROOM_WEB_TLS_LISTEN it is always Secure.")
    web_max_body: int = setting(
        _size, "1M", "Largest request body the web service reads (larger: 413).")
    web_rate: float = setting(
        _non_negative_float, "20",
        "Requests a second one client (an IPv4 address or IPv6 /64, the X-Forwarded-For client "
        "behind POSTROOM_WEB_PROXY_TRUSTED) may make of the web service on average, per "
        "process; over it: 429 with Retry-After. Static files are not counted. 0: no limit.")
    web_rate_burst: int = setting(
        _positive_int, "200",
        "Requests one client may make at once before POSTROOM_WEB_RATE holds it back.")
    web_proxy_trusted: tuple[Network, ...] = setting(
        _ip_networks, "",
        "Reverse proxies (addresses/CIDRs) whose X-Forwarded-For and X-Forwarded-Proto the web "
        "service believes; from any other peer those headers are ignored.")
    # certificates by ACME (docs/operations.md, "Certificates by ACME")
    acme: bool = setting(
        _bool, "false",
        "Get the certificate by ACME: the web service issues and renews it (HTTP-01 answered on "
        "POSTROOM_WEB_LISTEN, which port 80 must reach) and stores it in the database; every "
        "service loads the current one from there into its own POSTROOM_TLS_CERT_FILE / "
        "POSTROOM_TLS_KEY_FILE (local paths, not shared) and reloads.")
    acme_directory: str = setting(
        _str, "https://acme-v02.api.letsencrypt.org/directory",
        "The ACME directory URL (Let's Encrypt's production one by default; try "
        "https://acme-staging-v02.api.letsencrypt.org/directory first).")
    acme_email: str = setting(
        _opt_mail_address, "",
        "Contact address given to the ACME account (expiry notices); empty: none.")
    acme_challenge: str = setting(
        _choice("http-01", "tls-alpn-01"), "http-01",
        "How the CA checks each name: http-01 (port 80 to POSTROOM_WEB_LISTEN) or tls-alpn-01 "
        "(port 443 to POSTROOM_WEB_TLS_LISTEN, for hosts where port 80 cannot be opened).")
    acme_renew_before: float = setting(
        parse_duration, "30d",
        "Renew the certificate when it expires sooner than this.")
    acme_check_interval: float = setting(
        parse_duration, "1h",
        "How often the web service checks whether the certificate needs issuing or renewing "
        "(one replica at a time, under a PostgreSQL advisory lock).")
    acme_ca_file: str | None = setting(
        _opt_str, "",
        "PEM CA bundle for the HTTPS connection to the ACME directory; empty: the system's "
        "CAs (tests point it at pebble's certificate).")
    tls_db_poll: float = setting(
        parse_duration, "60s",
        "With POSTROOM_ACME: how often each service looks for a newer certificate in the "
        "database.")
    web_services: tuple[tuple[str, str], ...] = setting(
        _service_urls, "",
        "The services whose /healthz and /metrics the console's overview and "
        "/api/v1/metrics/summary ask, comma-separated NAME=http://HOST:PORT (each one's "
        "POSTROOM_HTTP_LISTEN). compose.yaml lists its services; `postroom up` fills it in. "
        "Empty: only the web service's own checks are shown.")
    dmarc_url: str = setting(
        _internal_http_url, "http://127.0.0.1:8025",
        "Where other services reach the DMARC service.")
    dmarc_org_domain: str = setting(
        _choice("psl", "treewalk"), "psl",
        "How DMARC finds organizational domains: the public suffix list (RFC 7489) or the DNS "
        "tree walk (RFC 9989).")
    dmarc_monitor_only: tuple[str, ...] = setting(
        _names, "",
        "Comma-separated domains (ours or senders') for which DMARC failures are only reported, "
        "never rejected or sent to Junk.")
    dmarc_trusted_forwarders: tuple[Network, ...] = setting(
        _ip_networks, "",
        "Comma-separated client networks (CIDR) whose mail is never rejected for DMARC, e.g. "
        "forwarders and mailing lists we trust.")
    dmarc_overrides: Mapping[str, DmarcOverride] = setting(
        parse_dmarc_overrides, "",
        "Per-domain DMARC exceptions, `;`-separated: `DOMAIN:OPTION,OPTION`, options `monitor` "
        "(report, never act) and `forwarder=CIDR` (repeatable), e.g. "
        "`example.org:monitor;example.net:forwarder=192.0.2.0/24` (docs/dmarc-api.md).")
    dmarc_trusted_arc_sealers: tuple[str, ...] = setting(
        _names, "",
        "Comma-separated ARC sealer domains whose passing ARC chain overrides a DMARC failure.")
    dmarc_reports: bool = setting(
        _bool, "true",
        "Send DMARC aggregate reports (RFC 7489 rua) for the verdicts stored; off keeps storing.")
    dmarc_report_interval: float = setting(
        parse_duration, "1d",
        "Length of one aggregate report period, aligned to the Unix epoch (1d: UTC midnight).")
    dmarc_report_org: str = setting(
        _str, "", "org_name in our aggregate reports (empty: POSTROOM_HOSTNAME).")
    dmarc_report_from: str = setting(
        _opt_mail_address, "",
        "Sender of our aggregate reports (empty: dmarc-noreply@POSTROOM_HOSTNAME).")
    tls_reports: bool = setting(
        _bool, "true",
        "TLS reporting (RFC 8460): the mta records every outbound TLS session's outcome and "
        "the dmarc service sends a daily report to each domain publishing _smtp._tls "
        "(rua=mailto: only). Off: neither (docs/relay.md, \"TLS reports\").")
    dmarc_report_mailbox: str = setting(
        _opt_mail_address, "",
        "Account whose mail is read as incoming DMARC aggregate reports, e.g. "
        "dmarc-reports@example.org (empty: none are read; docs/dmarc-reports.md).")
    dmarc_report_scan_interval: float = setting(
        parse_duration, "1m", "How often the dmarc service looks for new mail in that account.")
    dmarc_report_max_size: int = setting(
        _size, "10M", "Largest incoming report attachment (zip, gzip or XML) that is read.")
    dmarc_report_max_xml_size: int = setting(
        _size, "50M", "Largest incoming report XML after decompression (bombs stop here).")
    dmarc_results_retention: float = setting(
        parse_duration, "14d", "How long DMARC verdicts are kept for reports and `postroom dmarc`.")
    dkim_max_signatures: int = setting(
        _positive_int, "10",
        "DKIM-Signature fields verified per received message, those whose d= aligns with the "
        "From domain first; the rest are neither verified nor reported (docs/security.md).")
    dkim_budget: float = setting(
        parse_duration, "8s",
        "Time for verifying one message's DKIM signatures, key lookups included; what is not "
        "verified by then is a temperror. The check's deadline (4 x POSTROOM_DNS_TIMEOUT) "
        "bounds it too.")
    # content filtering: spam (rspamd) and viruses (clamd), docs/content-filtering.md
    rspamd_url: str | None = setting(
        _url("http", "https"), "",
        "rspamd's normal worker, e.g. http://rspamd:11333: every inbound message is scored "
        "(`/checkv2`) in the dmarc service's check. Empty: no spam scoring.")
    rspamd_controller_url: str | None = setting(
        _url("http", "https"), "",
        "rspamd's controller, e.g. http://rspamd:11334, taught spam and ham when users move "
        "mail into or out of Junk (with POSTROOM_RSPAMD_URL set too). Empty: no learning.")
    rspamd_password: str | None = setting(
        _opt_str, "", "Password sent to rspamd (its controller's `password`).", secret=True)
    rspamd_timeout: float = setting(
        parse_duration, "10s",
        "How long a message's rspamd scan may take; past it the check fails (see "
        "POSTROOM_RSPAMD_FAIL_OPEN).")
    rspamd_fail_open: bool = setting(
        _bool, "false",
        "When rspamd cannot be reached or answers nonsense, accept the message unscored "
        "(X-Spam-Status: Unknown) instead of answering 451 4.7.0. Spam scoring only: an "
        "unreachable virus scanner always gives 451.")
    rspamd_learn_attempts: int = setting(
        _positive_int, "10",
        "Attempts to submit one learning request to rspamd before it is dropped (logged).")
    clamd_address: str | None = setting(
        _opt_clamd_address, "",
        "clamd, as `tcp:HOST:PORT` or `unix:/path/clamd.ctl`: every inbound message is "
        "scanned (INSTREAM); a virus is refused with 554 5.7.1. Empty: no virus scanning.")
    clamd_timeout: float = setting(
        parse_duration, "15s", "How long one clamd scan may take before the message gets 451.")
    clamd_max_stream: int = setting(
        _size, "25M",
        "Bytes of a message sent to clamd; keep equal to clamd's StreamMaxLength (larger "
        "messages are scanned up to this size).")
    msa_virus_scan: bool = setting(
        _bool, "true",
        "Submission (msa) scans outgoing mail with clamd too, when POSTROOM_CLAMD_ADDRESS is "
        "set: a virus gets 554 5.7.1, clamd unreachable 451 4.7.0.")
    http_listen: str = setting(
        _endpoint, "tcp:8080",
        "This process's /healthz and /metrics (under `postroom up` each child gets its own free "
        "loopback port).")
    reuse_port: bool = setting(
        _bool, "false",
        "Open TCP listeners with SO_REUSEPORT so several replicas of one service on one host "
        "share a port (the kernel spreads connections between them). Per-address connection "
        "limits then count per replica. Off: a second process on the same port fails to start.")
    listen_backlog: int = setting(
        _positive_int, "1024",
        "Backlog of a TCP listener whose endpoint names none (`tcp:25:backlog=N` overrides it): "
        "connections the kernel completes before the service accepts them, capped by "
        "net.core.somaxconn. Twisted's default of 50 drops the SYNs of a burst of clients, "
        "who retry after 1 s and 3 s.")
    processes: str = setting(
        parse_processes, "",
        "Processes of this service that `postroom serve` runs, sharing its ports with "
        "SO_REUSEPORT: a number, `auto` (one per core this process may use: CPU affinity and a "
        "container's CPU limit count, and no more than one per 256 MiB of a container's memory "
        "limit), or empty for the service's default: `auto` for the front "
        "doors (mta, msa, imap, pop3), 1 for the others. Above 1 a parent process starts the "
        "workers, restarts one that dies and answers POSTROOM_HTTP_LISTEN for all of them; 1 is "
        "a single process with no parent (docs/operations.md, \"Processes per core\").")
    internal_token: str | None = setting(
        _opt_str, "",
        "Bearer token required by the dmarc API (`/v1/check`) and every `/metrics` (`/healthz` "
        "stays open); the mta sends it. Empty: no token (keep those ports unpublished).",
        secret=True)
    # secrets at rest (docs/security.md, docs/decisions/0008-secrets-at-rest.md)
    secret_key_file: str | None = setting(
        _opt_str, "",
        "File holding the 32-byte key (base64, or 32 raw bytes) that encrypts DKIM private "
        "keys in the database (AES-256-GCM); `postroom secret-key generate PATH` makes one. "
        "Needed by the msa and by `postroom dkim`. `postroom up` makes VAR_DIR/secret.key when "
        "unset. Unset elsewhere: new keys are stored unencrypted and the msa warns at start-up.")
    secret_old_key_files: tuple[str, ...] = setting(
        _paths, "",
        "Comma-separated files of earlier keys, used only to decrypt (key rotation: "
        "`postroom dkim encrypt-keys` then re-encrypts every key with the current one).")
    # forwarding off our domains (docs/relay.md, "Forwarding: SRS and ARC")
    srs_key_file: str | None = setting(
        _opt_str, "",
        "File of SRS secrets, one a line: the first signs, every line verifies (rotation; "
        "`postroom srs key generate PATH` makes one). Set: mail forwarded off our domains "
        "(aliases, redirects) gets an SRS0/SRS1 envelope sender and port 25 accepts bounces "
        "to those addresses. `postroom up` makes VAR_DIR/srs.keys when unset. Unset elsewhere: "
        "forwards keep the original sender and SPF at the next hop may fail them.")
    srs_max_age: float = setting(
        parse_duration, "21d",
        "How long an SRS address we made stays valid for bounces (whole days, at most 1000d).")
    # DNS and the outside world
    dns_servers: tuple[tuple[str, int], ...] = setting(
        _host_ports, "", "Resolver override, host[:port] list; empty means the system resolver.")
    dns_timeout: float = setting(
        parse_duration, "5s", "Total time one DNS query may take before it is a temperror.")
    smtp_outbound_port: int = setting(
        _positive_int, "25", "Port the relay connects to on remote MXs (tests only).")
    smtp_bind_address: str | None = setting(
        _opt_address, "",
        "Local IPv4 address the relay connects from (Postfix smtp_bind_address; the one SPF "
        "must allow); empty: the system's choice.")
    relay_max_sessions: int = setting(
        _positive_int, "50", "Outbound SMTP sessions at once in one mta process (active "
        "deliveries; idle sessions kept for reuse are not counted).")
    relay_max_per_destination: int = setting(
        _positive_int, "5", "Outbound SMTP sessions at once to one destination domain "
        "(active deliveries, like relay_max_sessions).")
    relay_session_idle: float = setting(
        parse_duration, "2s",
        "How long a finished outbound SMTP session stays open for the next message to the same "
        "MX (connection reuse, Postfix smtp_connection_cache_time_limit).")
    relay_session_reuse_limit: int = setting(
        _positive_int, "100",
        "Transactions one outbound SMTP session may carry before it is closed (Postfix "
        "smtp_connection_reuse_count_limit); 1 turns connection reuse off.")
    relay_allowed_networks: tuple[str, ...] = setting(
        _networks, "",
        "Internal networks (CIDR list, e.g. `10.20.0.0/16,fd00:1::/64`) the relay may connect "
        "to when an MX, or a domain without MX, resolves into them. Empty: MX addresses in "
        "loopback, RFC 1918, CGNAT, link-local, multicast, reserved and unique-local ranges "
        "are refused and the recipient bounces like a null MX (556 5.1.10; docs/relay.md).")
    # the smarthost (docs/relay.md, "Smarthost"); per-domain routes: `postroom relay set`
    relay_host: NextHop | None = setting(  # noqa: RUF009 - NextHop is frozen
        _opt_nexthop, "",
        "Smarthost for all outbound mail (Postfix relayhost): `host:port` looks up the MX "
        "records of host, `[host]:port` does not; port 25 when left out. Empty: deliver by MX. "
        "A `postroom relay` transport entry for a recipient domain wins over it.")
    relay_tls: str = setting(
        _choice(*TLS_MODES), "starttls",
        "TLS to the smarthost: `starttls` (required: nothing, not even AUTH, is sent in "
        "clear), `tls` (implicit TLS, port 465), or `none` (STARTTLS when offered, "
        "unverified; no AUTH).")
    relay_user: str | None = setting(
        _opt_str, "", "SASL user name for the smarthost (AUTH PLAIN or LOGIN, only under TLS); "
        "needs POSTROOM_RELAY_PASSWORD_FILE.")
    relay_password_file: str | None = setting(
        _opt_readable_file, "",
        "File holding the smarthost password (its first line). Checked at start-up and read "
        "again while running (cached 5 s), so a rotated password is picked up; never logged. "
        "There is no variable for the password itself.")
    relay_tls_verify: bool = setting(
        _bool, "true",
        "Verify the smarthost's certificate (chain and name). Off: any certificate is "
        "accepted (a warning is logged at start); the password is then open to whoever can "
        "intercept the connection.")
    relay_tls_ca_file: str | None = setting(
        _opt_ca_file, "",
        "PEM CA bundle trusted for the smarthost's certificate instead of the system's CAs "
        "(a private CA).")
    relay_auth_failure: str = setting(
        _choice("defer", "bounce"), "defer",
        "What a smarthost's refusal of our login (535) does to the mail: `defer` keeps it "
        "queued and retries (logged as an error), `bounce` returns it to the sender.")
    mta_sts: bool = setting(
        _bool, "true", "Fetch and apply recipient domains' MTA-STS policies (RFC 8461).")
    mta_sts_port: int = setting(
        _positive_int, "443", "Port MTA-STS policies are fetched from (tests only).")
    tls_ca_file: str | None = setting(
        _opt_str, "",
        "PEM CA bundle for verifying MTA-STS hosts and MXs; empty: the system's CAs.")
    dane: bool = setting(
        _bool, "true",
        "Use DANE TLSA records (RFC 7672). Trusts the AD bit of POSTROOM_DNS_SERVERS, which must "
        "be a validating resolver on a trusted path (local unbound); a failed TLSA lookup defers "
        "that MX.")
    # limits
    max_message_size: int = setting(
        _size, "35M", "Largest message accepted (SMTP SIZE, IMAP APPEND).")
    max_recipients: int = setting(
        _positive_int, "1000", "Recipients per SMTP transaction.")
    max_connections_per_ip: int = setting(
        _positive_int, "50",
        "Concurrent connections from one client to one listener (a client is an IPv4 address "
        "or an IPv6 /64).")
    smtp_command_timeout: float = setting(
        parse_duration, "5m", "Idle time allowed between SMTP commands (RFC 5321 section 4.5.3.2).")
    smtp_data_timeout: float = setting(
        parse_duration, "10m",
        "Idle time allowed while receiving DATA or BDAT (RFC 5321 4.5.3.2.6).")
    smtp_max_errors: int = setting(
        _positive_int, "10", "Protocol errors in one session before the server hangs up.")
    # PROXY protocol (load balancers in front of the mail listeners; postroom.net.proxyproto)
    proxy_trusted: tuple[str, ...] = setting(
        _networks, "",
        "Addresses/CIDRs of the proxies allowed to send a PROXY protocol header to a `proxy:` "
        "listener of the mta, msa, pop3 or imap; a connection from any other peer is closed. "
        "Empty: a `proxy:` listener is a start-up error.")
    mta_proxy_listen: tuple[str, ...] = setting(
        _endpoints, "",
        "Deprecated: the same as adding `proxy:` endpoints to POSTROOM_MTA_LISTEN.")
    mta_proxy_trusted: tuple[str, ...] = setting(
        _networks, "", "Deprecated name of POSTROOM_PROXY_TRUSTED (set only one of them).")
    # inbound mta (port 25)
    mta_dmarc_timeout: float = setting(
        parse_duration, "30s",
        "How long inbound SMTP waits for the dmarc verdict before answering 451 4.7.0.")
    mta_greylist: bool = setting(
        _bool, "false", "Greylist unknown (client network, sender, recipient) triplets.")
    mta_greylist_delay: float = setting(
        parse_duration, "5m",
        "How long a greylisted triplet must wait before its retry is accepted.")
    mta_dnsbl_zones: tuple[str, ...] = setting(
        _names, "", "DNSBL zones checked at connect (comma-separated; empty: no check).")
    # failed logins and passwords (op-auth: postroom.auth.ratelimit, postroom.auth.passwords)
    auth_fail_limit: int = setting(
        _positive_int, "20",
        "Failed logins for one account from one client (IPv4 address or IPv6 /64) within "
        "POSTROOM_AUTH_FAIL_WINDOW before that pair is locked out; other accounts from the same "
        "client and the same account from elsewhere are not. Before the lock each attempt waits "
        "a delay that doubles per failure (POSTROOM_AUTH_DELAY_MAX).")
    auth_fail_window: float = setting(
        parse_duration, "15m",
        "How long failed logins are remembered: a lock ends this long after the last failure.")
    auth_address_fail_limit: int = setting(
        _positive_int, "200",
        "Failed logins from one client across all accounts within POSTROOM_AUTH_FAIL_WINDOW "
        "before every login from it is refused (password spraying).")
    auth_delay_max: float = setting(
        _non_negative_duration, "15s",
        "Longest delay before a login is checked for an account that failed from the same "
        "client: 0, 2, 4, 8 s ... doubling per failure up to this (0 turns delays off).")
    auth_trusted_networks: tuple[Network, ...] = setting(
        _ip_networks, "",
        "Client networks (CIDR list, e.g. `192.0.2.0/24,2001:db8:1::/48`) never locked out by "
        "POSTROOM_AUTH_FAIL_LIMIT or POSTROOM_AUTH_ADDRESS_FAIL_LIMIT; the delays still apply.")
    password_min_length: int = setting(
        _positive_int, "12",
        "Shortest password `postroom user add` and `user passwd` accept (common passwords are "
        "refused whatever their length).")
    allow_plaintext_auth_on_loopback: bool = setting(
        _bool, "false",
        "Allow password logins without TLS from 127.0.0.0/8 and ::1 (development only).")
    msa_max_messages_per_hour: int = setting(
        _positive_int, "200",
        "Messages one account may submit per hour (sliding window); over it gets 450 4.7.1.")
    msa_max_recipients_per_day: int = setting(
        _positive_int, "2000",
        "Recipients one account may submit to per day (sliding window); over it gets 450 4.7.1.")
    msa_dkim_key_cache_ttl: float = setting(
        _non_negative_duration, "30s",
        "How long the msa reuses a domain's DKIM keys without asking the store. Every key "
        "change (`postroom dkim`, the web console) is announced over Redis and applies to the "
        "next message; this bounds how long a change missed while Redis was away is not seen "
        "(0 reads the keys for every message).")
    # attachment policy (dmarc service content checks; docs/content-filtering.md "Attachments")
    attachment_policy: bool = setting(
        _bool, "on",
        "Check attachments at the end of DATA on port 25: blocked file types, double extensions, "
        "deceptive names, contents that lie about their type, archives (looked into in memory, "
        "never by another program).")
    attachment_blocked_extensions: tuple[str, ...] = setting(
        _extensions, ATTACHMENT_BLOCKED_DEFAULT,
        "Comma-separated extensions blocked in attachments and in archive members (the whole "
        "list: it replaces the default).")
    attachment_blocked_action: str = setting(
        _choice("reject", "quarantine"), "reject",
        "What a blocked attachment does: reject (554 5.7.1 at end of DATA) or quarantine (Junk).")
    attachment_uninspectable_action: str = setting(
        _choice("reject", "quarantine", "accept"), "quarantine",
        "What an archive that cannot be looked into does (encrypted, rar and other formats, "
        "past a limit, corrupt): reject, quarantine (Junk) or accept.")
    attachment_max_depth: int = setting(
        _positive_int, "4", "Archives inside archives looked into; deeper ones are uninspectable.")
    attachment_max_members: int = setting(
        _positive_int, "1000",
        "Archive members looked at per message; past it the message is uninspectable.")
    attachment_max_uncompressed: int = setting(
        _size, "100M",
        "Uncompressed bytes read from one message's archives; past it the message is an archive "
        "bomb (blocked).")
    attachment_max_ratio: int = setting(
        _positive_int, "100",
        "Largest compression ratio of an archive member or stream (counted past 1 MiB); over it "
        "is an archive bomb (blocked).")
    attachment_time_budget: float = setting(
        parse_duration, "10s",
        "Time for one message's attachment check; past it the message is uninspectable.")
    # queue
    queue_lifetime: float = setting(
        parse_duration, "5d", "How long a message is retried before it bounces.")
    retry_initial: float = setting(
        parse_duration, "5m", "First retry delay; it doubles each attempt.")
    retry_max: float = setting(parse_duration, "1h", "Longest delay between two attempts.")
    reconcile_interval: float = setting(
        parse_duration, "60s",
        "How often the reconciler re-enqueues pending spool work Redis lost (and the rspamd "
        "learn worker re-signals pending learning requests).")
    queue_claim_idle: float = setting(
        parse_duration, "60s",
        "Idle time after which a dead consumer's unacknowledged entry is claimed by another.")
    spool_group_commit: int = setting(
        _positive_int, "64",
        "Most messages whose spool rows the front doors (mta inbound, msa) commit in one "
        "transaction: messages that finish DATA while the previous commit is in flight wait "
        "for it and go together (one COMMIT, one WAL flush; each client still answered only "
        "after the commit holding its own message). An idle server commits each message at "
        "once. 1 turns it off (each message its own transaction). docs/decisions/0018.")
    spool_group_commit_bytes: int = setting(
        parse_size, "16M",
        "Most message bytes in one group commit (a larger message goes alone).")
    fault_crash_after_spool_commit: str | None = setting(
        _opt_str, "",
        "Tests only (fault injection): a file; while it exists, a front door kills itself "
        "(SIGKILL) right after a spool commit, before its replies and XADDs. A number N in "
        "it holds each group commit until N messages wait.")
    spool_retention: float = setting(
        parse_duration, "7d",
        "How long a finished queued message (every recipient delivered or bounced) and its "
        "attempt history (`postroom trace`) are kept after it arrived and after its last "
        "outcome; the mta then deletes it, and its blob unless a mailbox holds it. Never "
        "less than 2 x POSTROOM_DMARC_REPORT_INTERVAL + 1m: aggregate reports are sent once "
        "per period thanks to their spool row (docs/operations.md).")
    # delivery (mda)
    mda_concurrency: int = setting(
        _positive_int, "32",
        "Queue entries one mda process delivers at once. An entry in flight holds its ids, "
        "not its message (read in the delivery's transaction); more in flight make larger "
        "group deliveries under load (POSTROOM_MDA_GROUP_COMMIT) and change nothing for a "
        "message alone. docs/decisions/0022.")
    mda_group_commit: int = setting(
        _positive_int, "64",
        "Most recipients the mda delivers in one transaction (the fast path's: an account "
        "with no alias, Sieve script or quota): recipients ready while the previous delivery "
        "commits wait for it and go together (one COMMIT, one WAL flush; each queue entry "
        "still acknowledged only after the commits holding its recipients). An idle mda "
        "delivers each at once. 1 turns it off (each recipient its own transaction). "
        "docs/decisions/0022.")
    recipient_delimiter: str = setting(
        _str, "+",
        "Separates an address's detail (user+tag@domain); empty turns plus-addressing off.")
    deliver_to_detail_folder: bool = setting(
        _bool, "false",
        "Deliver user+tag@domain into the account's mailbox named tag when it exists "
        "(else INBOX).")
    quota_grace: float = setting(
        parse_duration, "1d",
        "How long mail for an account over quota is retried before it bounces with 5.2.2.")
    # Sieve (RFC 5228) at delivery: docs/mda.md "Sieve"
    sieve_max_script_bytes: int = setting(
        parse_size, "64K",
        "Largest Sieve script an account may store (`postroom sieve put`, ManageSieve "
        "PUTSCRIPT); the mda also refuses to run a larger one (the message goes to INBOX).")
    sieve_max_scripts: int = setting(
        _positive_int, "20", "How many Sieve scripts one account may store.")
    sieve_max_redirects: int = setting(
        _positive_int, "4",
        "How many redirect actions one message may take in one Sieve run (RFC 5228 4.2: "
        "a limit is advised); further redirects are an error and the message is kept.")
    sieve_max_run_time: float = setting(
        parse_duration, "1s",
        "Longest one Sieve run (global and user scripts of one recipient) may take; a run "
        "over it, or over its step budget, is an error and the message goes to INBOX.")
    sieve_before: str | None = setting(
        _opt_str, "",
        "File of a global Sieve script run before each account's own (like Dovecot's "
        "sieve_before); its `stop` ends the run. Unset: none. Read when the mda starts.")
    sieve_global_dir: str | None = setting(
        _opt_str, "",
        "Directory of the global Sieve scripts `include :global \"NAME\"` runs (RFC 6609): "
        "the file NAME.sieve in it. Unset: every :global include is an error (or skipped "
        "with :optional).")
    sieve_after: str | None = setting(
        _opt_str, "",
        "File of a global Sieve script run after each account's own, unless that ran `stop` "
        "(e.g. `if header :contains \"X-Spam\" \"yes\" { fileinto \"Junk\"; }`). Unset: none.")
    # operations
    log_level: str = setting(
        _choice("debug", "info", "warning", "error"), "info",
        "Lowest level written to the JSON log on stdout.")
    shutdown_grace: float = setting(
        parse_duration, "20s",
        "On SIGTERM, how long in-flight work may take before it is handed back.")

    # --- operations: role addresses and DKIM lifecycle (issue 24)
    role_address_target: str = setting(
        _opt_mail_address, "",
        "Where postmaster@ and abuse@ of a new domain go (RFC 5321, RFC 2142): `postroom "
        "domain add` makes them aliases of this address. Unset: of the domain's first user, "
        "when it is added. Change them with `postroom alias` (docs/mda.md).")

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


SPECS: tuple[Spec, ...] = tuple(
    Spec(f.name, f.metadata["parse"], f.metadata["default"], f.metadata["doc"],
         f.metadata["secret"])
    for f in dataclasses.fields(Settings)
)


# --- compose variables vs settings (issue 24): POSTROOM_* names that are not settings
# compose's .env is both the file compose reads ${...} from and every service's env_file, so a
# variable compose.yaml uses lands in the services' environment too. These pass the
# unknown-setting check; tests/unit/test_config_effective.py keeps the list in step with every
# ${POSTROOM_*} in compose.yaml and deploy/*.yaml.
NOT_SETTINGS: Mapping[str, str] = MappingProxyType({
    "POSTROOM_IMAGE": "the image compose.yaml runs (compose reads it from .env)",
    "POSTROOM_SERVICE": "reserved for the service name a container runs",
    "POSTROOM_UP_CHILD": "set by `postroom up` in its child processes",
    "POSTROOM_GROUP_KEY": "set by `postroom serve --processes N` in its workers: the random key "
                          "they share for their verified logins (postroom.queue.loginshare)",
})


@dataclass(frozen=True)
class Effective:
    """One setting as the environment makes it: the value shown and where it came from."""

    env: str
    shown: str
    source: str  # "environment", "file" (<NAME>_FILE) or "default"
    secret: bool


_HIDDEN = "(set, hidden)"


def effective(environ: Mapping[str, str] | None = None) -> list[Effective]:
    """What each setting is in ``environ`` (os.environ by default), secrets masked.

    Values are shown as given (not parsed: `postroom config --check` validates);
    a secret is never shown, whether it came from the variable or its _FILE.
    """
    environ = os.environ if environ is None else environ
    rows = []
    for spec in SPECS:
        file_var = spec.env + "_FILE"
        if spec.env in environ:
            source, raw = "environment", environ[spec.env]
        elif spec.secret and environ.get(file_var):
            source, raw = "file", f"{file_var}={environ[file_var]}"
        else:
            source = "default"
            try:
                raw = spec.default() if callable(spec.default) else spec.default
            except OSError:
                raw = "(computed)"
        if spec.secret and source == "environment" and raw:
            shown = _HIDDEN
        elif spec.secret and source == "file":
            shown = f"{_HIDDEN}, from {raw}"
        else:
            shown = raw if raw else "(unset)"
        rows.append(Effective(spec.env, shown, source, spec.secret))
    return rows


def describe_effective(environ: Mapping[str, str] | None = None) -> str:
    """`postroom config`: every setting's effective value, marked env/file/default."""
    rows = effective(environ)
    width = max(len(r.env) for r in rows)
    lines = [f"{r.env.ljust(width)}  {r.shown}  [{r.source}]" for r in rows]
    environ = os.environ if environ is None else environ
    extra = sorted(k for k in environ if k in NOT_SETTINGS)
    lines += [f"{k.ljust(width)}  {environ[k]}  [not a setting: {NOT_SETTINGS[k]}]"
              for k in extra]
    return "\n".join(lines)


def _raw_value(spec: Spec, environ: Mapping[str, str]) -> str | None:
    file_var = spec.env + "_FILE"
    if spec.env in environ:
        return environ[spec.env]
    if spec.secret and environ.get(file_var):
        path = environ[file_var]
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read().strip()
        except OSError as exc:
            raise ConfigError(f"{file_var}: cannot read {path}: {exc.strerror}") from None
    return None


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Parse every ``POSTROOM_*`` variable into a frozen Settings, or raise ConfigError."""
    environ = os.environ if environ is None else environ
    known = {spec.env for spec in SPECS} | {spec.env + "_FILE" for spec in SPECS if spec.secret}
    values: dict[str, Any] = {}
    for spec in SPECS:
        raw = _raw_value(spec, environ)
        if raw is None:
            raw = spec.default() if callable(spec.default) else spec.default
        try:
            values[spec.attr] = spec.parse(raw)
        except (ValueError, TypeError) as exc:
            shown = "(secret)" if spec.secret else repr(raw)
            raise ConfigError(f"{spec.env}={shown}: {exc}") from None
    unknown = sorted(k for k in environ if k.startswith(PREFIX) and k not in known)
    # Unknown names are very often typos of real ones; refuse them rather than ignore,
    # except the variables that are not settings at all (NOT_SETTINGS).
    unknown = [k for k in unknown if k not in NOT_SETTINGS]
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown setting (see `postroom config --help`)")
    if values["mta_proxy_trusted"]:
        if values["proxy_trusted"]:
            raise ConfigError("POSTROOM_MTA_PROXY_TRUSTED: deprecated name of "
                              "POSTROOM_PROXY_TRUSTED; set only POSTROOM_PROXY_TRUSTED")
        values["proxy_trusted"] = values["mta_proxy_trusted"]
    proxied = [e for attr in _MAIL_LISTEN for e in values[attr] if split_proxy(e)[1]]
    if (proxied or values["mta_proxy_listen"]) and not values["proxy_trusted"]:
        # a PROXY listener that trusted every peer would let anyone claim any address
        raise ConfigError(f"POSTROOM_PROXY_TRUSTED: required by the PROXY protocol listener "
                          f"{(proxied or values['mta_proxy_listen'])[0]}")
    if bool(values["relay_user"]) != bool(values["relay_password_file"]):
        raise ConfigError("POSTROOM_RELAY_USER / POSTROOM_RELAY_PASSWORD_FILE: set both or "
                          "neither")
    if values["relay_user"] and values["relay_tls"] == "none":
        raise ConfigError("POSTROOM_RELAY_TLS: AUTH is only sent under TLS; with "
                          "POSTROOM_RELAY_USER it must be starttls or tls")
    if values["relay_user"] and not values["relay_host"]:
        raise ConfigError("POSTROOM_RELAY_USER: set POSTROOM_RELAY_HOST too")
    if bool(values["tls_cert_file"]) != bool(values["tls_key_file"]):
        raise ConfigError(
            "POSTROOM_TLS_CERT_FILE / POSTROOM_TLS_KEY_FILE: set both or neither"
        )
    values.update(overrides)
    return Settings(**values)


def require(settings: Settings, *attrs: str) -> None:
    """Raise ConfigError for the first of ``attrs`` that is unset (a service's must-haves)."""
    for attr in attrs:
        if not getattr(settings, attr):
            raise ConfigError(f"{PREFIX}{attr.upper()}: required by this service but not set")


def markdown() -> str:
    """docs/configuration.md: the settings as a table (a test keeps the file in step)."""
    rows = [
        "# Configuration",
        "",
        "Postroom reads only environment variables. Secrets marked below may instead be",
        "given as `<NAME>_FILE`, the path of a file holding the value. A bad value stops",
        "the service at start-up with one line naming the variable; an unknown",
        "`POSTROOM_*` variable is refused too (it is nearly always a typo).",
        "Durations take `s`, `m`, `h` or `d`; sizes take `K`, `M` or `G`.",
        "",
        "`postroom config` prints the value each setting has in the current environment,",
        "marked `[environment]`, `[file]` (from `<NAME>_FILE`) or `[default]`; secrets are",
        "never printed. `postroom config --describe` lists defaults and meanings.",
        "",
        "These `POSTROOM_*` names are not settings and pass the unknown-variable check",
        "(compose's `.env` feeds both compose and every service):",
        "",
        *[f"- `{name}`: {why}" for name, why in NOT_SETTINGS.items()],
        "",
        "This file is generated by `postroom config --markdown`.",
        "",
        "| variable | default | meaning |",
        "|---|---|---|",
    ]
    for spec in SPECS:
        default = "(the machine's FQDN)" if callable(spec.default) else (
            f"`{spec.default}`" if spec.default else "(unset)")
        secret = " Secret: `_FILE` accepted." if spec.secret else ""
        doc = spec.doc.replace("|", "\\|")
        rows.append(f"| `{spec.env}` | {default} | {doc}{secret} |")
    return "\n".join(rows) + "\n"


def describe() -> str:
    """The settings table for `postroom config` and docs/configuration.md."""
    lines = []
    for spec in SPECS:
        default = "(computed)" if callable(spec.default) else (spec.default or "(unset)")
        secret = f" Also {spec.env}_FILE." if spec.secret else ""
        lines.append(f"{spec.env}\n    default: {default}\n    {spec.doc}{secret}")
    return "\n".join(lines)
