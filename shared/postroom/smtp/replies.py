"""SMTP replies: the Reply type and every reply the engine sends, as named constants.

Code and tests share these constants (aiosmtpd ``statuscodes`` style). Every
2xx/4xx/5xx reply carries an enhanced status code (RFC 2034, RFC 3463) except
where RFC 2034 section 3 exempts it: the greeting and the HELO/EHLO replies.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache


@dataclass(frozen=True)
class Reply:
    """One SMTP reply: a code, an optional enhanced status code, one or more text lines."""

    code: int
    enhanced: str | None
    text: str | tuple[str, ...] = ""

    @property
    def lines(self) -> tuple[str, ...]:
        raw = (self.text,) if isinstance(self.text, str) else self.text
        # a CR or LF inside a line would let text (which may echo peer input) forge replies
        cleaned = tuple(" ".join(line.splitlines()) for line in raw)
        return cleaned or ("",)

    def render(self) -> bytes:
        """The wire form: ``250-2.0.0 a`` ... ``250 2.0.0 z``, each line ending in CRLF."""
        try:
            return _render(self)
        except TypeError:  # text given as a list: unhashable, rendered each time
            return self._render()

    def _render(self) -> bytes:
        lines = self.lines
        out = []
        for index, line in enumerate(lines):
            sep = " " if index == len(lines) - 1 else "-"
            body = " ".join(part for part in (self.enhanced, line) if part)
            out.append(f"{self.code}{sep}{body}\r\n")
        return "".join(out).encode("utf-8", "replace")

    def with_text(self, *lines: str) -> Reply:
        """The same codes with another text (e.g. the queue id in the 250 after DATA)."""
        return replace(self, text=lines if len(lines) != 1 else lines[0])

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return self.code >= 500


# --- 2xx and 3xx
OK = Reply(250, "2.0.0", "OK")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
MESSAGE_ACCEPTED = Reply(250, "2.0.0", "Message accepted")
CHUNK_RECEIVED = Reply(250, "2.0.0", "Chunk received")
RESET_OK = Reply(250, "2.0.0", "Reset state")
VRFY_CANNOT = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
HELP_TEXT = Reply(214, "2.0.0", "See https://www.rfc-editor.org/rfc/rfc5321")
BYE = Reply(221, "2.0.0", "Bye")
READY_FOR_TLS = Reply(220, "2.0.0", "Ready to start TLS")
AUTH_SUCCEEDED = Reply(235, "2.7.0", "Authentication successful")
START_DATA = Reply(354, None, "End data with <CR><LF>.<CR><LF>")

# --- 4xx
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
TOO_MANY_COMMANDS = Reply(421, "4.7.0", "Too many commands, closing connection")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections from your address, try later")
TIMEOUT = Reply(421, "4.4.2", "Timeout exceeded, closing connection")
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")
LOCAL_ERROR_CLOSING = Reply(421, "4.3.0", "Local error in processing, closing connection")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
AUTH_TEMPORARY_FAILURE = Reply(454, "4.7.0", "Temporary authentication failure")

# --- 5xx: syntax and sequence
SYNTAX_ERROR = Reply(500, "5.5.2", "Syntax error, command unrecognized")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
BAD_CHARACTERS = Reply(500, "5.5.2", "Invalid characters in command")
PARAMETER_SYNTAX = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
NO_PARAMETERS_ALLOWED = Reply(501, "5.5.4", "Syntax error, no parameters allowed")
BAD_HELO = Reply(501, "5.5.4", "Invalid domain name or address literal")
BAD_SENDER_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT_SYNTAX = Reply(501, "5.1.3", "Bad recipient address syntax")
PATH_TOO_LONG = Reply(501, "5.5.4", "Path too long")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
HELO_FIRST = Reply(503, "5.5.1", "Send HELO/EHLO first")
NESTED_MAIL = Reply(503, "5.5.1", "Sender already specified")
NEED_MAIL = Reply(503, "5.5.1", "Need MAIL command first")
DATA_AFTER_BDAT = Reply(503, "5.5.1", "DATA cannot follow BDAT in one transaction")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Already authenticated")
AUTH_IN_TRANSACTION = Reply(503, "5.5.1", "AUTH not permitted during a mail transaction")
TLS_ALREADY_ACTIVE = Reply(503, "5.5.1", "TLS already active")
UNKNOWN_PARAMETER = Reply(555, "5.5.4", "MAIL FROM/RCPT TO parameter not recognized or not "
                          "implemented")
PARAMETERS_NEED_EHLO = Reply(555, "5.5.4", "Parameters require EHLO")
UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication type")
AUTH_CANCELLED = Reply(501, "5.0.0", "Authentication cancelled")
AUTH_MALFORMED = Reply(501, "5.5.2", "Cannot decode authentication response")
AUTH_NOT_OFFERED = Reply(503, "5.5.1", "Authentication not available")

# --- 5xx: policy and content
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
ENCRYPTION_REQUIRED = Reply(538, "5.7.11", "Encryption required for requested authentication "
                            "mechanism")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "No valid recipients")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
BARE_LINE_ENDING = Reply(550, "5.6.0", "Message contains bare CR or LF; use CRLF line endings")
NUL_IN_MESSAGE = Reply(550, "5.6.0", "Message contains NUL characters")
DATA_LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long in message (limit is 1000 octets)")
NEEDS_SMTPUTF8 = Reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
BINARYMIME_NOT_SUPPORTED = Reply(555, "5.5.4", "BODY=BINARYMIME not supported")


@lru_cache(maxsize=512)
def _render(reply: Reply) -> bytes:
    """Reply.render, remembered: most replies are the same few constants (EHLO, 250, 354)."""
    return reply._render()
