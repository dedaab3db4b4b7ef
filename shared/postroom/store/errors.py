"""Errors the repository functions raise; their messages are safe to show an operator."""

from __future__ import annotations


class StoreError(Exception):
    """Base of every error a repository function raises on purpose."""


class NotFound(StoreError, LookupError):
    """The named domain, user, alias, mailbox or queue entry does not exist."""


class AlreadyExists(StoreError):
    """A unique name (domain, address, alias pair, mailbox, DKIM selector) is already taken."""


class InvalidAddress(StoreError, ValueError):
    """An e-mail address or domain name that is not acceptable."""


class InUse(StoreError):
    """The object is still referenced (e.g. a domain that still has users)."""


class OverQuota(StoreError):
    """Adding the message(s) would pass the account's byte or message quota."""


class AliasLoop(StoreError, ValueError):
    """A new alias would make mail go round: to itself, or back through other aliases."""


class TooManyKeywords(StoreError):
    """A STORE, APPEND or COPY would give a mailbox more distinct keywords than it may have."""


class InvalidRoute(StoreError, ValueError):
    """A transport entry (`postroom relay set`) that cannot be a route; says what is wrong."""


class InvalidName(StoreError, ValueError):
    """A name the protocol refuses (e.g. a Sieve script name with control characters)."""
