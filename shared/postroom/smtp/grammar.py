"""The SMTP command grammar as a pure function of bytes: one command line in, a typed command out.

Strict RFC 5321 section 4.1 paths (dot-string or quoted-string local parts,
domains or address literals, ``<>``, source routes accepted and dropped), RFC
6531 UTF-8 addresses only under SMTPUTF8, and the ESMTP parameters we
advertise: SIZE (RFC 1870), BODY (RFC 6152, RFC 3030), SMTPUTF8, RET, ENVID,
NOTIFY, ORCPT (RFC 3461) and AUTH= (RFC 4954). Anything else raises
:class:`ParseError` carrying the reply to send (500, 501, 553 or 555).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from postroom.smtp import replies as R
from postroom.smtp.replies import Reply


class ParseError(ValueError):
    """A command line the grammar refuses; ``reply`` is what the peer is told."""

    def __init__(self, reply: Reply, detail: str = "") -> None:
        super().__init__(detail or reply.lines[0])
        self.reply = reply


@dataclass(frozen=True)
class Limits:
    """Length limits in octets (RFC 5321 section 4.5.3.1); lines count their CRLF."""

    command_line: int = 512
    # RFC 5321 4.5.3.1.4 lets each ESMTP extension raise the line limit; DSN and AUTH= add most
    parameter_line: int = 2048
    # RFC 4954 section 4: AUTH and SASL response lines may be up to 12288 octets
    auth_line: int = 12288
    local_part: int = 64
    domain: int = 255
    path: int = 256

    @property
    def longest_line(self) -> int:
        return max(self.command_line, self.parameter_line, self.auth_line)


DEFAULT_LIMITS = Limits()


# --- typed values


@dataclass(frozen=True)
class Address:
    """A mailbox from a path; ``domain`` is empty only for the bare ``<Postmaster>`` recipient.

    ``local_part`` is kept exactly as sent (a quoted-string keeps its quotes);
    ``domain`` may be an address literal such as ``[192.0.2.1]``.
    """

    local_part: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local_part}@{self.domain}" if self.domain else self.local_part

    @property
    def is_ascii(self) -> bool:
        return str(self).isascii()

    @property
    def is_postmaster(self) -> bool:
        return self.local_part.lower() == "postmaster"


@dataclass(frozen=True)
class MailParams:
    """MAIL FROM parameters; None means the parameter was not given."""

    size: int | None = None
    body: str | None = None  # "7BIT", "8BITMIME" or "BINARYMIME"
    smtputf8: bool = False
    ret: str | None = None  # "FULL" or "HDRS"
    envid: str | None = None  # xtext-decoded
    auth: str | None = None  # xtext-decoded mailbox, or "<>"


@dataclass(frozen=True)
class RcptParams:
    """RCPT TO parameters (RFC 3461)."""

    notify: tuple[str, ...] | None = None  # ("NEVER",) or a subset of SUCCESS, FAILURE, DELAY
    orcpt: tuple[str, str] | None = None  # (address type, xtext-decoded address)


# --- commands


@dataclass(frozen=True)
class Hello:
    verb: str  # "EHLO" or "HELO"
    name: str  # a domain or an address literal

    @property
    def extended(self) -> bool:
        return self.verb == "EHLO"


@dataclass(frozen=True)
class Mail:
    path: Address | None  # None is the null reverse-path <>
    params: MailParams


@dataclass(frozen=True)
class Rcpt:
    path: Address
    params: RcptParams


@dataclass(frozen=True)
class Data:
    pass


@dataclass(frozen=True)
class Bdat:
    size: int
    last: bool


@dataclass(frozen=True)
class Rset:
    pass


@dataclass(frozen=True)
class Noop:
    text: str = ""


@dataclass(frozen=True)
class Quit:
    pass


@dataclass(frozen=True)
class Vrfy:
    argument: str


@dataclass(frozen=True)
class Help:
    topic: str = ""


@dataclass(frozen=True)
class StartTLS:
    pass


@dataclass(frozen=True)
class Auth:
    mechanism: str  # upper-case
    initial: str | None  # the base64 initial response as sent ("=" means empty), or None


@dataclass(frozen=True)
class Unimplemented:
    """A command RFC 5321 knows that we do not offer (EXPN, TURN, ETRN...): 502."""

    verb: str


Command = (Hello | Mail | Rcpt | Data | Bdat | Rset | Noop | Quit | Vrfy | Help | StartTLS | Auth
           | Unimplemented)

_NO_ARGUMENT: dict[str, type[Data | Rset | Quit | StartTLS]] = {
    "DATA": Data, "RSET": Rset, "QUIT": Quit, "STARTTLS": StartTLS}
_UNIMPLEMENTED = {"EXPN", "TURN", "ETRN", "ATRN", "SEND", "SOML", "SAML"}
_VERB_RE = re.compile(rb"[A-Za-z]{1,12}")

# --- RFC 5321 section 4.1.2 (and RFC 6531 section 3.3), over str

_UTF8 = "\u0080-\U0010ffff"
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_DOT_STRING = rf"[{_ATEXT}{_UTF8}]+(?:\.[{_ATEXT}{_UTF8}]+)*"
_QUOTED = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_UTF8}]|\\[\x20-\x7e])*"'
_LET_DIG = rf"[A-Za-z0-9{_UTF8}]"
_SUB_DOMAIN = rf"{_LET_DIG}(?:[A-Za-z0-9{_UTF8}-]*{_LET_DIG})?"
_DOMAIN = rf"{_SUB_DOMAIN}(?:\.{_SUB_DOMAIN})*"
_LITERAL = r"\[[\x21-\x5a\x5e-\x7e]+\]"
_ADL = rf"@{_DOMAIN}(?:,@{_DOMAIN})*"
_PATH_RE = re.compile(
    rf"<(?:{_ADL}:)?(?P<local>{_DOT_STRING}|{_QUOTED})@(?P<domain>{_DOMAIN}|{_LITERAL})>")
_POSTMASTER_RE = re.compile(r"<(?P<local>[Pp][Oo][Ss][Tt][Mm][Aa][Ss][Tt][Ee][Rr])>")
_ASCII_DOMAIN_RE = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*")
_LITERAL_RE = re.compile(_LITERAL)
_SNUM = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4_RE = re.compile(rf"{_SNUM}(?:\.{_SNUM}){{3}}")
_TAG_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_KEYWORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_VALUE_RE = re.compile(rf"[\x21-\x3c\x3e-\x7e{_UTF8}]+")
_ASCII_VALUE_RE = re.compile(r"[\x21-\x3c\x3e-\x7e]+")
_MECHANISM_RE = re.compile(r"[A-Za-z0-9_-]{1,20}")
_BDAT_RE = re.compile(r"(?P<size>[0-9]{1,18})(?: +(?P<last>[Ll][Aa][Ss][Tt]))? *")
_ADDR_TYPE_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")
_HEX = "0123456789ABCDEFabcdef"
# RFC 3461 section 4.4: ENVID is at most 100 characters
_MAX_ENVID = 100
_MAX_ORCPT = 500


def parse_command(line: bytes, *, smtputf8: bool = False,
                  limits: Limits = DEFAULT_LIMITS) -> Command:
    """Parse one command line (without its CRLF) into a typed command, or raise ParseError.

    ``smtputf8`` says whether the current transaction's MAIL carried SMTPUTF8,
    which is what allows UTF-8 in RCPT TO paths (RFC 6531 section 3.4).
    """
    verb_bytes, _, rest_bytes = line.partition(b" ")
    if not _VERB_RE.fullmatch(verb_bytes):
        if len(line) + 2 > limits.command_line:
            raise ParseError(R.LINE_TOO_LONG)
        raise ParseError(R.SYNTAX_ERROR)
    verb = verb_bytes.decode("ascii").upper()
    limit = {"MAIL": limits.parameter_line, "RCPT": limits.parameter_line,
             "AUTH": limits.auth_line}.get(verb, limits.command_line)
    if len(line) + 2 > limit:
        raise ParseError(R.LINE_TOO_LONG)
    if any(byte < 0x20 or byte == 0x7F for byte in line):
        raise ParseError(R.BAD_CHARACTERS)
    try:
        rest = rest_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError(R.BAD_CHARACTERS) from None
    if not rest.isascii() and verb not in ("MAIL", "RCPT"):
        raise ParseError(R.BAD_CHARACTERS)
    has_argument = bool(line[len(verb_bytes):])
    if verb in _NO_ARGUMENT:
        if rest.strip(" "):
            raise ParseError(R.NO_PARAMETERS_ALLOWED)
        return _NO_ARGUMENT[verb]()
    if verb in ("EHLO", "HELO"):
        return Hello(verb, _parse_helo_name(rest.rstrip(" ")))
    if verb == "MAIL":
        return _parse_mail(rest, limits)
    if verb == "RCPT":
        return _parse_rcpt(rest, smtputf8, limits)
    if verb == "BDAT":
        match = _BDAT_RE.fullmatch(rest)
        if not has_argument or match is None:
            raise ParseError(R.PARAMETER_SYNTAX)
        return Bdat(int(match["size"]), match["last"] is not None)
    if verb == "AUTH":
        return _parse_auth(rest)
    if verb == "NOOP":
        return Noop(rest)
    if verb == "VRFY":
        if not rest.strip(" "):
            raise ParseError(R.PARAMETER_SYNTAX)
        return Vrfy(rest.strip(" "))
    if verb == "HELP":
        return Help(rest.strip(" "))
    if verb in _UNIMPLEMENTED:
        return Unimplemented(verb)
    raise ParseError(R.SYNTAX_ERROR)


def _parse_helo_name(text: str) -> str:
    if _ASCII_DOMAIN_RE.fullmatch(text):
        if len(text) > 255 or any(len(label) > 63 for label in text.split(".")):
            raise ParseError(R.BAD_HELO)
        return text
    if _LITERAL_RE.fullmatch(text) and _valid_literal(text):
        return text
    raise ParseError(R.BAD_HELO)


def _valid_literal(text: str) -> bool:
    """RFC 5321 section 4.1.3: IPv4, IPv6: or a General-address-literal."""
    inner = text[1:-1]
    if _IPV4_RE.fullmatch(inner):
        return True
    tag, colon, content = inner.partition(":")
    if not colon or not content:
        return False
    if tag.upper() == "IPV6":
        try:
            ipaddress.IPv6Address(content)
        except ValueError:
            return False
        return True
    return bool(_TAG_RE.fullmatch(tag))


def _parse_path(text: str, limits: Limits, bad: Reply, *, null_ok: bool,
                postmaster_ok: bool) -> tuple[Address | None, int]:
    """Parse a path at the start of ``text``; return it and where it ends."""
    if null_ok and text.startswith("<>"):
        return None, 2
    match = _PATH_RE.match(text)
    domain = ""
    if match is not None:
        domain = match["domain"]
    elif postmaster_ok:
        match = _POSTMASTER_RE.match(text)
    if match is None:
        raise ParseError(bad)
    local = match["local"]
    if len(match.group(0).encode("utf-8")) > limits.path:
        raise ParseError(R.PATH_TOO_LONG)
    if len(local.encode("utf-8")) > limits.local_part:
        raise ParseError(bad.with_text("Local part too long"))
    if domain.startswith("["):
        if not _valid_literal(domain):
            raise ParseError(bad)
    elif domain:
        if len(domain.encode("utf-8")) > limits.domain or any(
                len(label.encode("utf-8")) > 63 for label in domain.split(".")):
            raise ParseError(bad.with_text("Domain name too long"))
    return Address(local, domain), match.end()


def _split_params(text: str, bad: Reply, utf8: bool) -> dict[str, str | None]:
    """``KEY[=VALUE]`` pairs after the path (RFC 5321 esmtp-param), keys upper-cased."""
    if not text.strip(" "):
        return {}
    if not text.startswith(" "):
        raise ParseError(bad)
    params: dict[str, str | None] = {}
    value_re = _VALUE_RE if utf8 else _ASCII_VALUE_RE
    for item in text.split():
        key, eq, value = item.partition("=")
        if not _KEYWORD_RE.fullmatch(key) or (eq and not value_re.fullmatch(value)):
            raise ParseError(R.PARAMETER_SYNTAX)
        key = key.upper()
        if key in params:
            raise ParseError(R.PARAMETER_SYNTAX.with_text(f"Duplicate parameter {key}"))
        params[key] = value if eq else None
    return params


def decode_xtext(text: str) -> str:
    """RFC 3461 section 4: ``+XX`` hex escapes; any other character must be 33-126 but ``=``."""
    out = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "+":
            hexpair = text[index + 1:index + 3]
            if len(hexpair) != 2 or any(c not in _HEX for c in hexpair):
                raise ValueError("bad xtext escape")
            out.append(chr(int(hexpair, 16)))
            index += 3
        elif "!" <= char <= "~" and char != "=":
            out.append(char)
            index += 1
        else:
            raise ValueError("bad xtext character")
    return "".join(out)


def encode_xtext(text: str) -> str:
    """The inverse of :func:`decode_xtext` for ASCII text."""
    return "".join(c if "!" <= c <= "~" and c not in "+=" else f"+{ord(c):02X}" for c in text)


def _need_value(key: str, value: str | None) -> str:
    if not value:
        raise ParseError(R.PARAMETER_SYNTAX.with_text(f"{key} needs a value"))
    return value


def _parse_mail(rest: str, limits: Limits) -> Mail:
    if rest[:5].upper() != "FROM:":
        raise ParseError(R.PARAMETER_SYNTAX.with_text("Syntax: MAIL FROM:<address>"))
    # "MAIL FROM: <a@b>" violates RFC 5321 but is common and harmless, so a space is allowed
    text = rest[5:].lstrip(" ")
    path, end = _parse_path(text, limits, R.BAD_SENDER_SYNTAX, null_ok=True, postmaster_ok=False)
    utf8_params = "SMTPUTF8" in text[end:].upper().split()
    raw = _split_params(text[end:], R.BAD_SENDER_SYNTAX, utf8_params)
    size = body = ret = envid = auth = None
    smtputf8 = False
    for key, value in raw.items():
        if key == "SIZE":
            digits = _need_value(key, value)
            if not digits.isdigit() or not digits.isascii() or len(digits) > 20:
                raise ParseError(R.PARAMETER_SYNTAX.with_text("SIZE must be a number"))
            size = int(digits)
        elif key == "BODY":
            body = _need_value(key, value).upper()
            if body not in ("7BIT", "8BITMIME", "BINARYMIME"):
                raise ParseError(R.PARAMETER_SYNTAX.with_text("BODY must be 7BIT or 8BITMIME"))
        elif key == "SMTPUTF8":
            if value is not None:
                raise ParseError(R.PARAMETER_SYNTAX.with_text("SMTPUTF8 takes no value"))
            smtputf8 = True
        elif key == "RET":
            ret = _need_value(key, value).upper()
            if ret not in ("FULL", "HDRS"):
                raise ParseError(R.PARAMETER_SYNTAX.with_text("RET must be FULL or HDRS"))
        elif key == "ENVID":
            envid = _xtext_param(key, value, _MAX_ENVID)
        elif key == "AUTH":
            auth = _xtext_param(key, value, limits.path)
        else:
            raise ParseError(R.UNKNOWN_PARAMETER)
    if path is not None and not path.is_ascii and not smtputf8:
        raise ParseError(R.NEEDS_SMTPUTF8)
    return Mail(path, MailParams(size=size, body=body, smtputf8=smtputf8, ret=ret,
                                 envid=envid, auth=auth))


def _xtext_param(key: str, value: str | None, limit: int) -> str:
    try:
        decoded = decode_xtext(_need_value(key, value))
    except ValueError:
        raise ParseError(R.PARAMETER_SYNTAX.with_text(f"{key} is not valid xtext")) from None
    if len(decoded) > limit:
        raise ParseError(R.PARAMETER_SYNTAX.with_text(f"{key} too long"))
    return decoded


def _parse_rcpt(rest: str, smtputf8: bool, limits: Limits) -> Rcpt:
    if rest[:3].upper() != "TO:":
        raise ParseError(R.PARAMETER_SYNTAX.with_text("Syntax: RCPT TO:<address>"))
    text = rest[3:].lstrip(" ")
    path, end = _parse_path(text, limits, R.BAD_RECIPIENT_SYNTAX, null_ok=False,
                            postmaster_ok=True)
    assert path is not None
    if not path.is_ascii and not smtputf8:
        raise ParseError(R.NEEDS_SMTPUTF8)
    raw = _split_params(text[end:], R.BAD_RECIPIENT_SYNTAX, smtputf8)
    notify: tuple[str, ...] | None = None
    orcpt: tuple[str, str] | None = None
    for key, value in raw.items():
        if key == "NOTIFY":
            items = tuple(item.upper() for item in _need_value(key, value).split(","))
            allowed = {"SUCCESS", "FAILURE", "DELAY"}
            if items != ("NEVER",) and (not set(items) <= allowed or len(set(items)) != len(items)):
                raise ParseError(R.PARAMETER_SYNTAX.with_text(
                    "NOTIFY must be NEVER or SUCCESS, FAILURE, DELAY"))
            notify = items
        elif key == "ORCPT":
            addr_type, semi, encoded = _need_value(key, value).partition(";")
            if not semi or not _ADDR_TYPE_RE.fullmatch(addr_type) or not encoded:
                raise ParseError(R.PARAMETER_SYNTAX.with_text("ORCPT must be type;address"))
            orcpt = (addr_type.lower(), _xtext_param(key, encoded, _MAX_ORCPT))
        else:
            raise ParseError(R.UNKNOWN_PARAMETER)
    return Rcpt(path, RcptParams(notify=notify, orcpt=orcpt))


def _parse_auth(rest: str) -> Auth:
    parts = rest.split(" ")
    if not 1 <= len(parts) <= 2 or not _MECHANISM_RE.fullmatch(parts[0]):
        raise ParseError(R.PARAMETER_SYNTAX)
    initial = parts[1] if len(parts) == 2 else None
    if initial == "":
        raise ParseError(R.PARAMETER_SYNTAX)
    return Auth(parts[0].upper(), initial)
