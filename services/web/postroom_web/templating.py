"""Jinja2 with autoescape on, the package's templates, and the package's static files.

Every asset ships inside the package (no CDN, no npm): ``static/`` is read once at
start and served from memory with a content hash in its URL, so it may be cached
for a year.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

NAV: tuple[tuple[str, str], ...] = (
    ("Overview", "/"),
    ("Domains", "/domains"),
    ("Users", "/users"),
    ("Aliases", "/aliases"),
    ("DKIM", "/dkim"),
    ("Queue", "/queue"),
    ("DMARC", "/dmarc"),
    ("TLS", "/tls"),
)

_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon",
          ".woff2": "font/woff2", ".txt": "text/plain; charset=utf-8"}


@dataclass(frozen=True)
class StaticFile:
    data: bytes
    content_type: str
    version: str       # first hex digits of the SHA-256: changes when the file does


def load_static() -> dict[str, StaticFile]:
    """Every file under the package's static/ (top level and one folder down), by its path."""
    found: dict[str, StaticFile] = {}
    root = resources.files("postroom_web") / "static"

    def walk(node: Any, prefix: str) -> None:
        for item in node.iterdir():
            name = prefix + item.name
            if item.is_dir():
                walk(item, name + "/")
            elif not item.name.startswith("."):
                data = item.read_bytes()
                suffix = "." + item.name.rpartition(".")[2] if "." in item.name else ""
                kind = _TYPES.get(suffix) or mimetypes.guess_type(item.name)[0] \
                    or "application/octet-stream"
                found[name] = StaticFile(data, kind, hashlib.sha256(data).hexdigest()[:12])

    walk(root, "")
    return found


def utc(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """A time as UTC text (the database hands them in its session's time zone); "" for None."""
    return value.astimezone(UTC).strftime(fmt) if value is not None else ""


def make_environment(static: dict[str, StaticFile]) -> Environment:
    """The one Jinja2 environment: autoescape for every template, the nav and static_url."""
    env = Environment(
        loader=PackageLoader("postroom_web", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True, lstrip_blocks=True)

    def static_url(name: str) -> str:
        item = static.get(name)
        if item is None:
            raise KeyError(f"no static file {name}")
        return f"/static/{name}?v={item.version}"

    env.globals["static_url"] = static_url
    env.filters["utc"] = utc
    env.globals["NAV"] = NAV
    return env
