"""Limits and timeouts of one SMTP listener, built from Settings (or set directly in tests)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from postroom.config import Settings
from postroom.smtp.data import DEFAULT_MAX_LINE
from postroom.smtp.grammar import DEFAULT_LIMITS, Limits


@dataclass(frozen=True)
class ServerOptions:
    """What the protocol enforces by itself; policy decisions live in the SMTPPolicy."""

    hostname: str
    max_message_size: int = 35 * 1024 * 1024
    max_recipients: int = 1000
    max_connections_per_ip: int = 50
    # RFC 5321 section 4.5.3.2.7: the server waits at least 5 minutes for a command
    command_timeout: float = 300.0
    data_timeout: float = 600.0
    max_errors: int = 10
    # NOOP, RSET, VRFY, HELP and unimplemented commands per session (Postfix's junk limit)
    max_junk_commands: int = 100
    max_line_length: int = DEFAULT_MAX_LINE
    limits: Limits = field(default=DEFAULT_LIMITS)
    # after a 421, how long a peer that does not read (or finish a TLS handshake) may hold on
    close_grace: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> ServerOptions:
        options = cls(
            hostname=settings.hostname,
            max_message_size=settings.max_message_size,
            max_recipients=settings.max_recipients,
            max_connections_per_ip=settings.max_connections_per_ip,
            command_timeout=settings.smtp_command_timeout,
            data_timeout=settings.smtp_data_timeout,
            max_errors=settings.smtp_max_errors,
        )
        return dataclasses.replace(options, **overrides)
