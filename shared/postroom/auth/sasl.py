"""Server-side SASL mechanisms (PLAIN, LOGIN, SCRAM-SHA-256) as pure state machines.

A mechanism never checks a password itself and does no I/O: it turns the
client's responses into a :class:`Step`. The protocol (SMTP AUTH, later
IMAP/POP3) sends challenges, asks its policy for SCRAM secrets when a
mechanism returns :class:`NeedSecrets`, and hands :class:`Outcome`
credentials to the policy, which verifies passwords and counts failures.
Malformed client input raises :class:`SASLMalformed` (SMTP answers 501).

SCRAM-SHA-256 (RFC 5802, RFC 7677) needs per-user :class:`ScramSecrets`
(salt, iterations, StoredKey, ServerKey); a store that keeps only scrypt
hashes cannot offer it. :func:`scram_secrets` derives them from a password
when one is set. Channel binding (-PLUS) is not offered.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from postroom.store.addresses import login_name


class SASLMalformed(ValueError):
    """The client's response does not follow the mechanism's syntax."""


# --- what a finished exchange yields


@dataclass(frozen=True)
class PasswordCredentials:
    """A username and cleartext password (PLAIN, LOGIN): the policy must verify them."""

    username: str
    password: str
    authzid: str
    mechanism: str

    def __repr__(self) -> str:  # never let a password reach a log line
        return f"PasswordCredentials(username={self.username!r}, mechanism={self.mechanism!r})"


@dataclass(frozen=True)
class VerifiedCredentials:
    """A username whose proof the mechanism checked itself (SCRAM); ``verified`` says how."""

    username: str
    authzid: str
    mechanism: str
    verified: bool


Credentials = PasswordCredentials | VerifiedCredentials


@dataclass(frozen=True)
class ScramSecrets:
    """What a server stores for SCRAM (RFC 5802 section 3); no password can be read back."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


# --- steps


@dataclass(frozen=True)
class Challenge:
    """Send ``data`` to the client (SMTP: ``334 base64``) and wait for its response."""

    data: bytes


@dataclass(frozen=True)
class NeedSecrets:
    """Look up the SCRAM secrets of ``username`` and pass them to ``provide_secrets``."""

    username: str


@dataclass(frozen=True)
class Outcome:
    """The exchange is over; the policy decides about ``credentials``."""

    credentials: Credentials


Step = Challenge | NeedSecrets | Outcome


def decode_response(text: str | bytes) -> bytes:
    """Strict base64 of a client response; ``=`` is the empty response (RFC 4954)."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    raw = raw.strip(b" ")
    if raw == b"=":
        return b""
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise SASLMalformed("invalid base64") from None


def encode_challenge(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SASLMalformed("not UTF-8") from None


class ServerMechanism(ABC):
    """One exchange of one mechanism; make a new instance per AUTH command."""

    name: ClassVar[str]

    @abstractmethod
    def start(self, initial: bytes | None) -> Step:
        """Begin, with the decoded initial response if the client sent one."""

    @abstractmethod
    def respond(self, response: bytes) -> Step:
        """The client's decoded answer to the last challenge."""

    def provide_secrets(self, found: ScramSecrets | None) -> Step:
        """The answer to :class:`NeedSecrets` (None: no such user)."""
        raise RuntimeError(f"{self.name} does not look up secrets")


class PlainMechanism(ServerMechanism):
    """RFC 4616: ``[authzid] NUL authcid NUL passwd`` in one message."""

    name = "PLAIN"

    def start(self, initial: bytes | None) -> Step:
        if initial is None:
            return Challenge(b"")
        return self.respond(initial)

    def respond(self, response: bytes) -> Step:
        parts = response.split(b"\0")
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise SASLMalformed("PLAIN needs authzid NUL authcid NUL password")
        authzid, username, password = (_utf8(part) for part in parts)
        return Outcome(PasswordCredentials(username, password, authzid, self.name))


class LoginMechanism(ServerMechanism):
    """The de facto LOGIN mechanism: ``Username:`` then ``Password:`` challenges."""

    name = "LOGIN"

    def __init__(self) -> None:
        self._username: str | None = None

    def start(self, initial: bytes | None) -> Step:
        if initial is None:
            return Challenge(b"Username:")
        return self.respond(initial)

    def respond(self, response: bytes) -> Step:
        text = _utf8(response)
        if "\0" in text:
            raise SASLMalformed("NUL in LOGIN response")
        if self._username is None:
            if not text:
                raise SASLMalformed("empty username")
            self._username = text
            return Challenge(b"Password:")
        return Outcome(PasswordCredentials(self._username, text, "", self.name))


# --- SCRAM-SHA-256


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def _normalize_password(password: str) -> bytes:
    # TODO: full SASLprep (RFC 4013); NFKC covers its mapping/normalisation step
    return unicodedata.normalize("NFKC", password).encode("utf-8")


def scram_secrets(password: str, salt: bytes | None = None,
                  iterations: int = 4096) -> ScramSecrets:
    """Derive the SCRAM-SHA-256 secrets to store for ``password`` (RFC 5802 section 3)."""
    salt = secrets.token_bytes(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", _normalize_password(password), salt, iterations)
    client_key = _hmac(salted, b"Client Key")
    return ScramSecrets(salt, iterations, hashlib.sha256(client_key).digest(),
                        _hmac(salted, b"Server Key"))


def _saslname(value: str) -> str:
    """Decode ``=2C`` and ``=3D``; any other ``=`` is an error (RFC 5802 section 5.1)."""
    out = value.replace("=2C", ",").replace("=3D", "=")
    if "=" in value.replace("=2C", "").replace("=3D", ""):
        raise SASLMalformed("bad saslname escape")
    return out


def _attributes(message: str) -> list[tuple[str, str]]:
    result = []
    for part in message.split(","):
        if len(part) < 2 or part[1] != "=" or not part[0].isalpha():
            raise SASLMalformed("bad SCRAM attribute")
        result.append((part[0], part[2:]))
    return result


_SCRAM_KEY = secrets.token_bytes(32)


class ScramSha256Mechanism(ServerMechanism):
    """RFC 7677 SCRAM-SHA-256 without channel binding."""

    name = "SCRAM-SHA-256"

    def __init__(self, nonce_factory: Callable[[], str] | None = None) -> None:
        self._nonce_factory = nonce_factory or (lambda: secrets.token_urlsafe(24))
        self._state = "first"
        self._username = ""
        self._authzid = ""
        self._gs2_header = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self._secrets: ScramSecrets | None = None
        self._known_user = False
        self._server_signature = b""

    def start(self, initial: bytes | None) -> Step:
        if initial is None:
            return Challenge(b"")
        return self.respond(initial)

    def respond(self, response: bytes) -> Step:
        if self._state == "first":
            return self._client_first(_utf8(response))
        if self._state == "final":
            return self._client_final(_utf8(response))
        if self._state == "verified":
            # RFC 4954: after the server-final message the client sends an empty response
            if response:
                raise SASLMalformed("unexpected data after server-final message")
            return Outcome(VerifiedCredentials(self._username, self._authzid, self.name, True))
        raise SASLMalformed("exchange already finished")

    def _client_first(self, message: str) -> Step:
        flag, sep1, rest = message.partition(",")
        authz, sep2, bare = rest.partition(",")
        if not sep1 or not sep2 or flag not in ("n", "y"):
            # "p=..." asks for channel binding, which we never advertise
            raise SASLMalformed("unsupported or malformed GS2 header")
        if authz:
            if not authz.startswith("a="):
                raise SASLMalformed("bad authzid")
            self._authzid = _saslname(authz[2:])
        attrs = _attributes(bare)
        if len(attrs) < 2 or attrs[0][0] != "n" or attrs[1][0] != "r" or not attrs[1][1]:
            raise SASLMalformed("client-first-message needs n= and r=")
        nonce = attrs[1][1]
        if any(not ("!" <= c <= "~") or c == "," for c in nonce):
            raise SASLMalformed("bad nonce")
        self._username = _saslname(attrs[0][1])
        if not self._username:
            raise SASLMalformed("empty username")
        self._gs2_header = f"{flag},{authz},"
        self._client_first_bare = bare
        self._nonce = nonce + self._nonce_factory()
        self._state = "secrets"
        return NeedSecrets(self._username)

    def provide_secrets(self, found: ScramSecrets | None) -> Step:
        if self._state != "secrets":
            raise RuntimeError("secrets were not asked for")
        self._known_user = found is not None
        if found is None:
            # an unknown user gets a stable fake salt, so SCRAM does not reveal who exists:
            # one per account as login resolves it (as a real account's salt is the same
            # under every spelling of its name)
            canonical = login_name(self._username) or self._username
            fake_salt = _hmac(_SCRAM_KEY, canonical.encode("utf-8", "surrogatepass"))[:16]
            found = ScramSecrets(fake_salt, 4096, _hmac(_SCRAM_KEY, b"stored"),
                                 _hmac(_SCRAM_KEY, b"server"))
        self._secrets = found
        salt = base64.b64encode(found.salt).decode("ascii")
        self._server_first = f"r={self._nonce},s={salt},i={found.iterations}"
        self._state = "final"
        return Challenge(self._server_first.encode("utf-8"))

    def _client_final(self, message: str) -> Step:
        without_proof, sep, proof_attr = message.rpartition(",")
        attrs = _attributes(without_proof) if sep else []
        if len(attrs) < 2 or attrs[0][0] != "c" or attrs[1][0] != "r" or \
                not proof_attr.startswith("p="):
            raise SASLMalformed("client-final-message needs c=, r= and p=")
        try:
            proof = base64.b64decode(proof_attr[2:], validate=True)
            binding = base64.b64decode(attrs[0][1], validate=True)
        except (binascii.Error, ValueError):
            raise SASLMalformed("bad base64 in client-final-message") from None
        assert self._secrets is not None
        self._state = "done"
        failed = Outcome(VerifiedCredentials(self._username, self._authzid, self.name, False))
        if binding != self._gs2_header.encode("utf-8") or attrs[1][1] != self._nonce:
            return failed
        auth_message = ",".join((self._client_first_bare, self._server_first,
                                 without_proof)).encode("utf-8")
        client_signature = _hmac(self._secrets.stored_key, auth_message)
        if len(proof) != len(client_signature):
            return failed
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
        if not (hmac.compare_digest(hashlib.sha256(client_key).digest(),
                                    self._secrets.stored_key) and self._known_user):
            return failed
        self._server_signature = _hmac(self._secrets.server_key, auth_message)
        self._state = "verified"
        return Challenge(b"v=" + base64.b64encode(self._server_signature))


MECHANISMS: dict[str, type[ServerMechanism]] = {
    PlainMechanism.name: PlainMechanism,
    LoginMechanism.name: LoginMechanism,
    ScramSha256Mechanism.name: ScramSha256Mechanism,
}


def new_mechanism(name: str) -> ServerMechanism:
    """A fresh exchange of mechanism ``name`` (upper-case); KeyError if unknown."""
    return MECHANISMS[name]()
