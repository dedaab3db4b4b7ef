"""`postroom`: the operator's command line (serve, up, db, domain, user, token, auth, alias,
dkim, secret-key, dns, queue, dmarc, import, export, trace).

Every command explains itself with ``--help``. Errors are one line on stderr
and a non-zero exit status, never a traceback: 2 for bad usage or
configuration, 1 for a refused operation (unknown domain, duplicate user, ...).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from postroom import __version__
from postroom.config import (
    ConfigError,
    Settings,
    describe,
    describe_effective,
    load_settings,
    markdown,
    parse_duration,
    require,
)


class CLIError(Exception):
    """A refused operation; the message is shown as it is."""

    exit_code = 1


def _fail(message: str, code: int = 1) -> NoReturn:
    print(f"postroom: error: {message}", file=sys.stderr)
    raise SystemExit(code)


# --- helpers shared by the data commands


def _settings() -> Settings:
    return load_settings()


def _database(settings: Settings) -> Any:
    from postroom.store.db import Database

    require(settings, "database_url")
    assert settings.database_url is not None
    return Database(settings.database_url, pool_size=1, fts_config=settings.fts_config,
                    fts_max_bytes=settings.fts_max_bytes)


def _with_db(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn(session, ...)`` in one transaction against the configured database."""
    from postroom.store.migrate import check_schema

    settings = _settings()
    database = _database(settings)
    try:
        check_schema(str(settings.database_url))
        return database.run_sync(fn, *args, **kwargs)
    finally:
        database.dispose()


def _read_password(prompt: str = "Password: ") -> str:
    """From stdin when it is not a terminal (first line), else prompted twice; never argv."""
    if not sys.stdin.isatty():
        line = sys.stdin.readline()
        password = line.rstrip("\r\n")
    else:
        password = getpass.getpass(prompt)
        again = getpass.getpass("Again: ")
        if password != again:
            raise CLIError("the two passwords differ")
    if not password:
        raise CLIError("empty password")
    return password


def _print_rows(rows: Sequence[dict[str, Any]], columns: Sequence[str], as_json: bool) -> None:
    if as_json:
        print(json.dumps(list(rows), default=str, indent=2))
        return
    if not rows:
        return
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns).rstrip())


def _open_store() -> Any:
    """A Database on the configured, current schema (the caller disposes of it)."""
    from postroom.store.migrate import check_schema

    settings = _settings()
    database = _database(settings)
    check_schema(str(settings.database_url))
    return database


def _plain(obj: Any) -> dict[str, Any]:
    """Repository results are dataclasses or dicts; show them as dicts."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return obj
    return dict(obj)


# --- the commands: each declares its arguments beside its handler

Handler = Callable[[argparse.Namespace], int]
Arguments = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True)
class Command:
    """One `postroom NAME`: its one-line summary, description, arguments and handler."""

    name: str
    summary: str
    description: str
    arguments: Arguments
    handler: Handler


COMMANDS: list[Command] = []  # in the order `postroom --help` lists them


def command(name: str, arguments: Arguments, *, summary: str,
            description: str) -> Callable[[Handler], Handler]:
    """Register the decorated function as `postroom NAME`, its parser built by ``arguments``."""
    def register(handler: Handler) -> Handler:
        COMMANDS.append(Command(name, summary, description, arguments, handler))
        return handler
    return register


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    from postroom.service import available_services

    services = sorted(available_services())
    p.add_argument("service", choices=services, metavar="SERVICE",
                   help=f"one of: {', '.join(services) or '(none installed)'}")


@command("serve", _serve_arguments,
         summary="run one service in the foreground (what compose runs)",
         description="Run one service in the foreground, logging JSON lines to stdout, "
                     "until SIGTERM.")
def cmd_serve(args: argparse.Namespace) -> int:
    from postroom.runtime import run_service

    return run_service(args.service)


def _up_arguments(p: argparse.ArgumentParser) -> None:
    from postroom.ops.supervisor import add_arguments

    add_arguments(p)


@command("up", _up_arguments,
         summary="run the whole suite on this machine",
         description=("Run every service as a child process, restarting any that dies. Without "
                      "POSTROOM_DATABASE_URL / POSTROOM_REDIS_URL, a private PostgreSQL and Redis "
                      "run under ./var/; without a certificate, a self-signed one is made. Ctrl-C "
                      "stops everything."))
def cmd_up(args: argparse.Namespace) -> int:
    from postroom.ops.supervisor import main as supervise

    return supervise(args)


def _config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--check", action="store_true", help="validate the current environment")
    p.add_argument("--describe", action="store_true",
                   help="every setting with its default and meaning")
    p.add_argument("--markdown", action="store_true",
                   help="print the settings table as Markdown (docs/configuration.md)")


@command("config", _config_arguments,
         summary="show the effective settings, or check the current environment",
         description=("Without options: every POSTROOM_* setting's effective value, marked "
                      "[environment], [file] (<NAME>_FILE) or [default]; secrets are never "
                      "shown. With --describe: defaults and meanings. With --check: parse the "
                      "environment and report."))
def cmd_config(args: argparse.Namespace) -> int:
    if args.markdown:
        sys.stdout.write(markdown())
        return 0
    if args.check:
        settings = _settings()
        print(f"configuration is valid (hostname {settings.hostname})")
        return 0
    if args.describe:
        print(describe())
        return 0
    print(describe_effective())
    return 0


def _db_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["upgrade", "downgrade", "current", "check", "roles"],
                   help="upgrade: apply every pending migration (and refresh the privileges "
                   "of the service roles that exist); downgrade REVISION: take the schema back "
                   "(for a rollback past the compatibility window, docs/upgrades.md); current: "
                   "print the revision; check: fail unless this release runs on the schema; "
                   "roles: print the SQL of the service roles (--apply: run it)")
    p.add_argument("services", nargs="*", metavar="SERVICE",
                   help="roles: only these services (default: all); downgrade: the revision")
    p.add_argument("--apply", action="store_true",
                   help="roles: create the missing roles and grant their privileges now")
    p.add_argument("--prefix", default="postroom_",
                   help="roles: role names are PREFIX + service (default postroom_; roles are "
                   "per server, so give each Postroom database on one server its own)")


@command("db", _db_arguments,
         summary="database schema migrations and service roles",
         description=("Apply or inspect the database schema migrations; print or apply the "
                      "least-privilege roles of the services (docs/operations.md)."))
def cmd_db(args: argparse.Namespace) -> int:
    from postroom.store import migrate, roles

    if args.action == "downgrade":
        if len(args.services) != 1:
            raise CLIError("db downgrade takes one revision (e.g. `postroom db downgrade 0005`)")
        return _db_downgrade(args.services[0])
    unknown = [s for s in args.services if s not in roles.SERVICES]
    if (args.services and args.action != "roles") or unknown:
        raise CLIError(f"unknown service {unknown[0]!r} (one of: {', '.join(roles.SERVICES)})"
                       if unknown else "only `db roles` takes services")
    if args.action == "roles" and not args.apply:
        sys.stdout.write(roles.script(args.services or roles.SERVICES, prefix=args.prefix))
        return 0
    settings = _settings()
    require(settings, "database_url")
    url = settings.database_url
    assert url is not None
    if args.action == "upgrade":
        print(migrate.upgrade(url))
        # a new table is granted to the service roles that exist (docs/operations.md)
        refreshed = roles.refresh_url(url)
        if refreshed:
            print(f"privileges of {', '.join(refreshed)} refreshed")
    elif args.action == "roles":
        migrate.check_schema(url)
        done = roles.apply_url(url, args.services or roles.SERVICES, prefix=args.prefix)
        print(f"roles {', '.join(done)} have their privileges (new roles are NOLOGIN: "
              "ALTER ROLE ... WITH LOGIN PASSWORD '...')")
    elif args.action == "current":
        print(migrate.current_revision(url) or "empty (no migrations applied)")
    else:
        at = migrate.check_schema(url)
        head = migrate.head_revision()
        print(f"database schema is current ({head})" if at == head else
              f"database schema is at {at}, newer than this release ({head}) and compatible "
              "with it")
    return 0


def _db_downgrade(revision: str) -> int:
    from postroom.store import migrate

    settings = _settings()
    require(settings, "database_url")
    url = settings.database_url
    assert url is not None
    migrate.downgrade(url, revision)
    # the service roles keep the (newer) grants they have: GRANT cannot name dropped tables
    print(f"database schema is at {migrate.current_revision(url) or 'no revision'}")
    return 0


def _domain_arguments(p: argparse.ArgumentParser) -> None:
    dsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = dsub.add_parser("add", help="add a local domain")
    q.add_argument("domain")
    q = dsub.add_parser("remove", help="remove a domain that has no users left")
    q.add_argument("domain")
    q = dsub.add_parser("list", help="list local domains")
    q.add_argument("--json", action="store_true")
    q = dsub.add_parser(
        "ensure-role-addresses", help="create the missing postmaster@ and abuse@ aliases",
        description="Make postmaster@ (RFC 5321) and abuse@ (RFC 2142) of each domain (all "
        "by default) an alias of --target, else POSTROOM_ROLE_ADDRESS_TARGET, else the "
        "domain's first user, where neither an alias nor a user has that address already.")
    q.add_argument("domains", nargs="*", metavar="DOMAIN")
    q.add_argument("--target", default=None, metavar="ADDRESS",
                   help="where they go (default POSTROOM_ROLE_ADDRESS_TARGET, else the "
                   "domain's first user)")


@command("domain", _domain_arguments,
         summary="local domains",
         description="Manage local domains.")
def cmd_domain(args: argparse.Namespace) -> int:
    from postroom.store import domains

    if args.action == "add":
        target = _settings().role_address_target or None
        _with_db(domains.add_domain, args.domain, role_target=target)
        print(f"domain {args.domain.lower()} added")
        name = args.domain.lower().rstrip(".")
        print(f"postmaster@{name} and abuse@{name} are aliases of {target}" if target else
              f"postmaster@{name} and abuse@{name} will be aliases of its first user "
              "(`postroom alias` changes them)")
    elif args.action == "ensure-role-addresses":
        return _ensure_role_addresses(args.domains, args.target)
    elif args.action == "remove":
        _with_db(domains.remove_domain, args.domain)
        print(f"domain {args.domain.lower()} removed")
    else:
        rows = _with_db(domains.list_domains)
        _print_rows([_plain(r) for r in rows], ["name", "users", "aliases", "created_at"],
                    args.json)
    return 0


def _ensure_role_addresses(names: list[str], target: str | None) -> int:
    from postroom.store import aliases

    target = target or _settings().role_address_target or None
    done = _with_db(aliases.ensure_all_role_addresses, names or None, target)
    for domain, created in done.items():
        for alias in created:
            print(f"alias {alias.source} -> {alias.destination} added")
        if not created:
            there = _with_db(aliases.recipient_status, "postmaster", domain)[0] == "ok"
            print(f"{domain}: nothing to add" if there else
                  f"{domain}: no user yet; its first user will get postmaster@ and "
                  "abuse@ (or pass --target)")
    return 0


def _say_role_addresses(address: str) -> None:
    """After `user add`: which role addresses (postmaster@, abuse@) now reach this user."""
    from postroom.store import aliases

    user = address.strip().lower()
    domain = user.rpartition("@")[2]
    mine = [a.source for a in _with_db(aliases.list_aliases, domain)
            if a.destination == user and a.source.split("@")[0] in aliases.ROLE_LOCALPARTS]
    mine.sort(key=lambda source: aliases.ROLE_LOCALPARTS.index(source.split("@")[0]))
    if mine:
        print(f"{' and '.join(mine)} go to {user} (`postroom alias` changes that)")


def _size_arg(text: str) -> int:
    from postroom.config import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _quota_arg(text: str) -> int | None:
    """A size (500M, 2G, 1.5G, 1024K, bytes) or ``none`` for no quota."""
    from postroom.config import parse_quota

    try:
        return parse_quota(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _strong_password(password: str, address: str) -> str:
    """The password, unless POSTROOM_PASSWORD_MIN_LENGTH or the common list refuse it."""
    from postroom.auth.passwords import WeakPassword, check_password_strength

    try:
        check_password_strength(password, min_length=_settings().password_min_length,
                                account=address)
    except WeakPassword as exc:
        raise CLIError(str(exc)) from None
    return password


def _user_arguments(p: argparse.ArgumentParser) -> None:
    usub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = usub.add_parser("add", help="add a user (password from stdin or prompt)")
    q.add_argument("address")
    q.add_argument("--quota", type=_size_arg, default=None, metavar="SIZE",
                   help="storage quota: 500M, 2G, 1.5G, 1024K or bytes (default: unlimited)")
    q.add_argument("--admin", action="store_true",
                   help="a global admin of the web console and REST API (every domain)")
    q = usub.add_parser("passwd", help="change a user's password (ends their console sessions)")
    q.add_argument("address")
    q = usub.add_parser("disable", help="stop logins and delivery (ends their console sessions)")
    q.add_argument("address")
    q = usub.add_parser("enable", help="allow logins and delivery again")
    q.add_argument("address")
    q = usub.add_parser("admin", help="make a user a global admin of the web console",
                        description="A global admin sees and changes every domain in the web "
                        "console and the REST API; --off takes that away.")
    q.add_argument("address")
    q.add_argument("--off", action="store_true", help="no longer an admin")
    q = usub.add_parser("manager", help="let a user manage a domain in the web console",
                        description="A domain manager logs in to the web console and sees "
                        "and changes only the domains they manage; --remove takes one away.")
    q.add_argument("address")
    q.add_argument("domain")
    q.add_argument("--remove", action="store_true", help="no longer manages DOMAIN")
    q = usub.add_parser("managers", help="list domain managers")
    q.add_argument("domain", nargs="?", help="only this domain's")
    q.add_argument("--json", action="store_true")
    q = usub.add_parser("quota", help="set or remove a user's storage quota")
    q.add_argument("address")
    q.add_argument("size", type=_quota_arg, metavar="SIZE",
                   help="500M, 2G, 1.5G, 1024K, bytes, or none")
    q = usub.add_parser("remove", help="remove a user and their mailboxes")
    q.add_argument("address")
    q = usub.add_parser("list", help="list users")
    q.add_argument("domain", nargs="?", help="only this domain")
    q.add_argument("--json", action="store_true")


@command("user", _user_arguments,
         summary="mail users",
         description=("Manage users. Passwords are read from stdin when it is not a terminal, else "
                      "prompted for twice; never taken from the command line. A password needs "
                      "POSTROOM_PASSWORD_MIN_LENGTH characters (default 12) and must not be a "
                      "common one. Sizes take K, M, G or T (binary: 2G = 2 GiB)."))
def cmd_user(args: argparse.Namespace) -> int:
    from postroom.store import users, webaccess

    address = args.address.lower() if getattr(args, "address", None) else None
    if args.action == "add":
        password = _strong_password(_read_password(), args.address)
        _with_db(users.add_user, args.address, password, quota_bytes=args.quota,
                 is_admin=args.admin)
        print(f"user {address} added" + (" as a global admin" if args.admin else ""))
        _say_role_addresses(args.address)
    elif args.action == "passwd":
        password = _strong_password(_read_password("New password: "), args.address)
        _with_db(users.set_password, args.address, password)
        print(f"password of {address} changed; their web console sessions ended")
    elif args.action in ("disable", "enable"):
        _with_db(users.set_user_active, args.address, args.action == "enable")
        print(f"user {address} {args.action}d" +
              ("; their web console sessions ended" if args.action == "disable" else ""))
    elif args.action == "admin":
        _with_db(webaccess.set_admin, args.address, not args.off)
        print(f"user {address} is {'no longer' if args.off else 'now'} a global admin")
    elif args.action == "manager":
        return _user_manager(args.address, args.domain, args.remove)
    elif args.action == "managers":
        found = _with_db(webaccess.managers, args.domain)
        _print_rows([{"address": a, "domain": d} for a, d in found], ["domain", "address"],
                    args.json)
    elif args.action == "quota":
        _with_db(users.set_quota, args.address, args.size)
        shown = "removed" if args.size is None else f"set to {args.size} bytes"
        print(f"quota of {args.address.lower()} {shown}")
    elif args.action == "remove":
        _with_db(users.remove_user, args.address)
        print(f"user {args.address.lower()} removed")
    else:
        rows = [_plain(r) for r in _with_db(users.list_users, args.domain)]
        if not args.json:
            rows = [{**r, "admin": "yes" if r["is_admin"] else ""} for r in rows]
        _print_rows(rows, ["address", "active", "admin", "quota_bytes", "created_at"],
                    args.json)
    return 0


def _user_manager(address: str, domain: str, remove: bool) -> int:
    from postroom.store import webaccess

    if remove:
        if not _with_db(webaccess.remove_manager, address, domain):
            raise CLIError(f"{address} does not manage {domain}")
        print(f"user {address.lower()} no longer manages {domain.lower()}")
    else:
        _with_db(webaccess.add_manager, address, domain)
        print(f"user {address.lower()} manages {domain.lower()}")
    return 0


def _token_arguments(p: argparse.ArgumentParser) -> None:
    tsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = tsub.add_parser("create", help="create a REST API token (its secret is shown once)",
                        description="Create a token for the REST API, sent as "
                        "'Authorization: Bearer SECRET'. Without --domain it may do what a "
                        "global admin may; with it, only what a manager of that domain may.")
    q.add_argument("name", help="a name to tell it by: letters, digits, '-', '_', '.'")
    q.add_argument("--domain", default=None, metavar="DOMAIN", help="only this domain")
    q = tsub.add_parser("revoke", help="revoke a token for good")
    q.add_argument("name")
    q = tsub.add_parser("list", help="list tokens (never their secrets)")
    q.add_argument("--json", action="store_true")


@command("token", _token_arguments,
         summary="REST API tokens",
         description="Manage the web service's REST API tokens. Only a token's SHA-256 is "
                     "stored: its secret is printed once, at creation.")
def cmd_token(args: argparse.Namespace) -> int:
    from postroom.store import webaccess

    if args.action == "create":
        try:
            secret = _with_db(webaccess.create_token, args.name, args.domain)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        scope = f"domain {args.domain.lower()}" if args.domain else "every domain (admin)"
        print(f"token {args.name} created for {scope}:")
        print(secret)
        print("keep it now: it is stored hashed and will not be shown again")
    elif args.action == "revoke":
        if not _with_db(webaccess.revoke_token, args.name):
            raise CLIError(f"no token {args.name} to revoke")
        print(f"token {args.name} revoked")
    else:
        rows = []
        for info in _with_db(webaccess.list_tokens):
            row = _plain(info)
            if not args.json:
                row["domain"] = info.domain or "(all)"
                row["state"] = "revoked" if info.revoked_at else "active"
            rows.append(row)
        _print_rows(rows, ["name", "domain", "state", "created_at", "last_used_at"], args.json)
    return 0


def _auth_arguments(p: argparse.ArgumentParser) -> None:
    asub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = asub.add_parser(
        "unlock", help="forget failed logins: of an account, of one client, or both",
        description="Forget the failed logins that delay or lock out logins (kept in Redis). "
        "ADDRESS alone: the account's failures from every client. With --ip: the account's "
        "failures from that client and the client's own count across accounts. --ip alone: "
        "everything of that client (an IPv6 address stands for its /64).")
    q.add_argument("address", nargs="?", metavar="ADDRESS", help="the account's address")
    q.add_argument("--ip", default=None, metavar="IP", help="the client's address")
    q = asub.add_parser(
        "status", help="show failed logins: of an account, of one client, or both",
        description="The clients an account failed to log in from (failures, the wait before "
        "its next login, whether it is locked, when it is forgotten); with --ip, the client's "
        "failures across accounts.")
    q.add_argument("address", nargs="?", metavar="ADDRESS", help="the account's address")
    q.add_argument("--ip", default=None, metavar="IP", help="the client's address")
    q.add_argument("--json", action="store_true")


def _ip_text(text: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise CLIError(f"{text!r} is not an IP address") from None


@command("auth", _auth_arguments,
         summary="failed-login delays and locks",
         description="Inspect and clear the failed-login state the msa, imap and pop3 share "
                     "(POSTROOM_AUTH_* settings, docs/security.md).")
def cmd_auth(args: argparse.Namespace) -> int:
    from postroom.auth.ratelimit import LoginRateLimiter
    from postroom.queue.redisclient import RedisError
    from postroom.queue.streams import connect

    if args.address is None and args.ip is None:
        raise CLIError("name an ADDRESS, an --ip, or both")
    ip = _ip_text(args.ip) if args.ip is not None else None
    settings = _settings()
    require(settings, "redis_url")
    assert settings.redis_url is not None
    client = connect(settings.redis_url)
    try:
        limiter = LoginRateLimiter.from_settings(client, settings)
        try:
            if args.action == "status":
                return _auth_status(limiter, args.address, ip, args.json)
            deleted = limiter.unlock(args.address, ip)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        except RedisError as exc:
            raise CLIError(f"cannot use Redis: {exc}") from None
    finally:
        client.close()
    who = " from ".join(x for x in (args.address, ip) if x)
    print(f"failed logins of {who} forgotten ({deleted} record(s))")
    return 0


def _auth_status(limiter: Any, address: str | None, ip: str | None, as_json: bool) -> int:
    import dataclasses

    from postroom.auth.ratelimit import status

    pairs, from_client = status(limiter, address, ip)
    rows = [dataclasses.asdict(p) for p in pairs]
    if as_json:
        print(json.dumps({"pairs": rows, "client_failures": from_client}, indent=2))
        return 0
    if address is not None:
        if not rows:
            print(f"no failed logins of {address}" + (f" from {ip}" if ip else ""))
        _print_rows(rows, ["client", "failures", "next_delay", "locked", "expires_in"], False)
    else:
        locked = sum(1 for p in pairs if p.locked)
        print(f"{len(pairs)} account(s) with failed logins from {ip}, {locked} locked")
    if from_client is not None:
        cap = "locked" if from_client >= limiter.address_limit and not limiter.is_trusted(ip) \
            else "not locked"
        print(f"failures from {ip} across accounts: {from_client} of "
              f"{limiter.address_limit} ({cap})")
    return 0


def _alias_arguments(p: argparse.ArgumentParser) -> None:
    asub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = asub.add_parser("add", help="add an alias")
    q.add_argument("source")
    q.add_argument("destination")
    q = asub.add_parser("remove", help="remove an alias (every destination when none given)")
    q.add_argument("source")
    q.add_argument("destination", nargs="?")
    q = asub.add_parser("list", help="list aliases")
    q.add_argument("domain", nargs="?")
    q.add_argument("--json", action="store_true")


@command("alias", _alias_arguments,
         summary="address aliases",
         description="Manage aliases. A source of @domain is a catch-all.")
def cmd_alias(args: argparse.Namespace) -> int:
    from postroom.store import aliases

    if args.action == "add":
        _with_db(aliases.add_alias, args.source, args.destination)
        print(f"alias {args.source} -> {args.destination} added")
    elif args.action == "remove":
        _with_db(aliases.remove_alias, args.source, args.destination)
        print(f"alias {args.source} -> {args.destination or '*'} removed")
    else:
        rows = _with_db(aliases.list_aliases, args.domain)
        _print_rows([_plain(r) for r in rows], ["source", "destination"], args.json)
    return 0


def _rules_arguments(p: argparse.ArgumentParser) -> None:
    rsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = rsub.add_parser("set", help="replace the rules with those in a JSON file ('-' = stdin)")
    q.add_argument("address")
    q.add_argument("file", help="JSON file with the rules, or - for stdin")
    q = rsub.add_parser("show", help="print the rules as JSON")
    q.add_argument("address")
    q = rsub.add_parser("clear", help="remove every rule")
    q.add_argument("address")


@command("rules", _rules_arguments,
         summary="per-user delivery rules (fileinto, discard, redirect, vacation)",
         description=("Set, show or clear an account's delivery rules: a JSON list described in "
                      "docs/mda.md (a subset of Sieve, RFC 5228)."))
def cmd_rules(args: argparse.Namespace) -> int:
    from postroom.store import rules

    if args.action == "set":
        if args.file == "-":
            text = sys.stdin.read()
        else:
            try:
                with open(args.file, encoding="utf-8") as handle:
                    text = handle.read()
            except OSError as exc:
                raise CLIError(f"cannot read {args.file}: {exc.strerror}") from None
        count = _with_db(rules.set_rules, args.address, text)
        print(f"{count} rule(s) set for {args.address.lower()}")
    elif args.action == "clear":
        _with_db(rules.set_rules, args.address, [])
        print(f"rules of {args.address.lower()} removed")
    else:
        print(json.dumps(_with_db(rules.get_rules, args.address), indent=2))
    return 0


def _keyring(settings: Settings) -> Any:
    """The secret keys of POSTROOM_SECRET_KEY_FILE / _OLD_KEY_FILES (a bad file: exit 2)."""
    from postroom.secretbox import Keyring, SecretError

    try:
        return Keyring.from_files(settings.secret_key_file, settings.secret_old_key_files)
    except SecretError as exc:
        raise ConfigError(str(exc)) from None


def _dkim_row(key: Any) -> dict[str, Any]:
    # private keys never leave the database through the CLI, sealed or not
    row = {k: v for k, v in _plain(key).items() if k != "private_key"}
    row["encrypted"] = key.key_id or "no"
    row["state"] = key.state
    row["replaces"] = key.replaces or ""
    return row


def _dkim_arguments(p: argparse.ArgumentParser) -> None:
    ksub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = ksub.add_parser("generate", help="generate keys for a domain and print their records")
    q.add_argument("domain")
    q.add_argument("--algorithm", choices=["rsa", "ed25519", "both"], default="both",
                   help="key type (default both: RSA-2048 and ed25519, RFC 8463)")
    q.add_argument("--selector", default=None,
                   help="selector name (default: derived from the date and algorithm)")
    q = ksub.add_parser("list", help="list a domain's keys (ENCRYPTED: the secret key id)")
    q.add_argument("domain", nargs="?")
    q.add_argument("--json", action="store_true")
    q = ksub.add_parser(
        "activate", help="make a pending (or retired) key sign, once its record is published",
        description="Activate a key after checking that DNS serves its record (what "
        "`postroom dns DOMAIN --check` does for every pending key); --force skips the check, "
        "for setups where this host cannot see the published zone.")
    q.add_argument("domain")
    q.add_argument("selector")
    q.add_argument("--force", action="store_true",
                   help="activate without looking the record up")
    q = ksub.add_parser(
        "retire", help="stop signing with a key (leave its record published a while)",
        description="Stop signing with a key. Keep its DNS record published for a week or "
        "so, until the mail it signed has been delivered and read; then remove it.")
    q.add_argument("domain")
    q.add_argument("selector")
    q = ksub.add_parser(
        "rotate", help="make a pending successor for each active key",
        description="Generate a new pending key for each active key (of --algorithm); print "
        "their records. The old keys keep signing until the new ones are active (`postroom "
        "dns DOMAIN --check` once the records are published); then the old ones are retired.")
    q.add_argument("domain")
    q.add_argument("--algorithm", choices=["rsa", "ed25519", "all"], default="all",
                   help="rotate only the keys of this type (default all)")
    q = ksub.add_parser("encrypt-keys",
                        help="encrypt every plaintext private key, and re-encrypt those of an "
                        "older secret key, with POSTROOM_SECRET_KEY_FILE's key",
                        description="Encrypt every stored DKIM private key that is plaintext, "
                        "or sealed with a key of POSTROOM_SECRET_OLD_KEY_FILES, with the key of "
                        "POSTROOM_SECRET_KEY_FILE. All or nothing: a key that cannot be "
                        "decrypted stops the run before anything is written.")
    q.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")


@command("dkim", _dkim_arguments,
         summary="DKIM signing keys",
         description=("Generate, list, activate, retire and rotate DKIM keys. A new key is "
                      "pending: it signs once `postroom dns DOMAIN --check` sees its record "
                      "(docs/msa.md, \"DKIM key lifecycle\")."))
def cmd_dkim(args: argparse.Namespace) -> int:
    from postroom.mailauth import dnsrecords
    from postroom.store import dkim

    if args.action in ("activate", "retire", "rotate"):
        return _dkim_lifecycle(args)
    if args.action == "generate":
        algorithms = ["rsa-sha256", "ed25519-sha256"] if args.algorithm == "both" else [
            {"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}[args.algorithm]]
        keyring = _keyring(_settings())
        if not keyring.can_seal:
            print("postroom: warning: POSTROOM_SECRET_KEY_FILE is not set: the private key "
                  "is stored unencrypted (docs/security.md)", file=sys.stderr)
        created = []
        for algorithm in algorithms:
            created.append(_with_db(dkim.generate_key, args.domain, algorithm, args.selector,
                                    keyring=keyring, pending=True))
        print(f"; DKIM keys for {args.domain.lower()}: publish these TXT records")
        for key in created:
            print(dnsrecords.dkim_record(_plain(key)))
        _pending_note(args.domain.lower(), created)
    elif args.action == "encrypt-keys":
        return _dkim_encrypt_keys(args.dry_run)
    else:
        rows = _with_db(dkim.list_keys, args.domain)
        _print_rows([_dkim_row(r) for r in rows],
                    ["domain", "selector", "algorithm", "state", "replaces", "encrypted"],
                    args.json)
    return 0


def _pending_note(domain: str, keys: Sequence[Any]) -> None:
    selectors = " ".join(k.selector for k in keys)
    print(f"; pending ({selectors}): they sign once `postroom dns {domain} --check` sees "
          f"these records published (or `postroom dkim activate {domain} SELECTOR --force`)",
          file=sys.stderr)


def _dkim_lifecycle(args: argparse.Namespace) -> int:
    """dkim activate | retire | rotate (docs/msa.md, "DKIM key lifecycle")."""
    from postroom.mailauth import dnsrecords
    from postroom.store import dkim

    domain = args.domain.lower().rstrip(".")
    if args.action == "rotate":
        algorithms = None if args.algorithm == "all" else [
            {"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}[args.algorithm]]
        created = _with_db(dkim.rotate_keys, domain, keyring=_keyring(_settings()),
                           algorithms=algorithms)
        print(f"; new DKIM keys for {domain}: publish these TXT records (keep the old ones)")
        for key in created:
            print(dnsrecords.dkim_record(_plain(key)))
        _pending_note(domain, created)
        return 0
    if args.action == "retire":
        _with_db(dkim.retire_key, domain, args.selector)
        print(f"DKIM key {args.selector.lower()} of {domain} retired: it no longer signs; "
              "keep its record published a week or so, then remove it")
        return 0
    if not args.force:
        from postroom.net.dns import Resolver
        from postroom.ops.dnscheck import check_key_published

        keys = [k for k in _with_db(dkim.list_keys, domain)
                if k.selector == args.selector.lower()]
        if not keys:
            raise CLIError(f"no DKIM selector {args.selector} for {domain}")
        finding = check_key_published(Resolver.from_settings(_settings()), keys[0])
        if not finding.ok:
            raise CLIError(f"{finding.name}: {finding.detail}; publish the record "
                           f"(`postroom dns {domain}`) or pass --force")
    retired = _with_db(dkim.activate_key, domain, args.selector)
    print(f"DKIM key {args.selector.lower()} of {domain} is active: it signs from the next "
          "message")
    for old in retired:
        print(f"DKIM key {old} of {domain} retired (replaced by {args.selector.lower()})")
    return 0


def _dkim_encrypt_keys(dry_run: bool) -> int:
    from postroom.store import dkim

    keyring = _keyring(_settings())
    if not keyring.can_seal:
        raise ConfigError("POSTROOM_SECRET_KEY_FILE: required to encrypt keys but not set")
    done = _with_db(dkim.encrypt_keys, keyring, dry_run=dry_run)
    verb = "would be" if dry_run else "were"
    for name in done.encrypted:
        print(f"{name}: encrypted" + (" (dry run)" if dry_run else ""))
    for name in done.reencrypted:
        print(f"{name}: re-encrypted with key {keyring.current_id}"
              + (" (dry run)" if dry_run else ""))
    print(f"{len(done.encrypted)} key(s) {verb} encrypted, {len(done.reencrypted)} "
          f"re-encrypted with key {keyring.current_id}, {done.current} already current")
    return 0


def _secret_key_arguments(p: argparse.ArgumentParser) -> None:
    ssub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = ssub.add_parser("generate", help="write a new key file")
    q.add_argument("path", metavar="PATH")


@command("secret-key", _secret_key_arguments,
         summary="make the key that encrypts secrets at rest",
         description=("Write a new random 32-byte key (base64) to PATH with mode 0600, never over "
                      "an existing file, for POSTROOM_SECRET_KEY_FILE; PATH '-' prints it "
                      "to stdout instead."))
def cmd_secret_key(args: argparse.Namespace) -> int:
    from postroom import secretbox

    if args.path == "-":
        key = secretbox.new_key()
        sys.stdout.buffer.write(secretbox.encode_key(key))
        sys.stdout.flush()
    else:
        try:
            key = secretbox.write_key_file(args.path)
        except FileExistsError:
            raise CLIError(f"{args.path} exists; a key file is never overwritten (move it "
                           "away first, and keep it while anything is sealed with it)") from None
        except OSError as exc:
            raise CLIError(f"cannot write {args.path}: {exc.strerror}") from None
        print(f"secret key {secretbox.key_id(key)} written to {args.path} (mode 0600); "
              f"point POSTROOM_SECRET_KEY_FILE at it", file=sys.stderr)
    return 0


def _tls_arguments(p: argparse.ArgumentParser) -> None:
    tsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = tsub.add_parser("self-signed", help="write a self-signed certificate and key")
    q.add_argument("--if-missing", action="store_true",
                   help="do nothing when both files exist (what compose's `tls` service runs)")
    q.add_argument("--owner", type=int, metavar="UID",
                   help="when run as root, give both files to this user (and its group)")


@command("tls", _tls_arguments,
         summary="a self-signed certificate until the real one is there",
         description=("Write a self-signed certificate for POSTROOM_HOSTNAME to "
                      "POSTROOM_TLS_CERT_FILE and its key to POSTROOM_TLS_KEY_FILE, so the "
                      "services start on first `docker compose up`; drop the real files in "
                      "their place later and every service reloads them. --if-missing never "
                      "touches an existing pair and refuses a half one."))
def cmd_tls(args: argparse.Namespace) -> int:
    from postroom.net.tls import make_self_signed

    settings = _settings()
    if not settings.tls_cert_file or not settings.tls_key_file:
        raise CLIError("set POSTROOM_TLS_CERT_FILE and POSTROOM_TLS_KEY_FILE first")
    cert, key = Path(settings.tls_cert_file), Path(settings.tls_key_file)
    present = [path for path in (cert, key) if path.exists()]
    if args.if_missing and len(present) == 2:
        print(f"{cert} and {key} exist; left as they are", file=sys.stderr)
        return 0
    if present:
        raise CLIError(f"{present[0]} exists and is never overwritten (its pair: "
                       f"{key if present[0] == cert else cert}); move it away first")
    try:
        make_self_signed(cert, key, settings.hostname)
        if args.owner is not None and os.geteuid() == 0:
            for path in (key, cert):
                os.chown(path, args.owner, args.owner)
    except OSError as exc:
        raise CLIError(f"cannot write the certificate: {exc}") from None
    print(f"self-signed certificate for {settings.hostname} written to {cert} (key {key}); "
          "replace both with the real ones when you have them", file=sys.stderr)
    return 0


def _dns_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain")
    p.add_argument("--rua", default=None, metavar="ADDRESS",
                   help="where DMARC aggregate and TLS reports go (default postmaster@DOMAIN)")
    p.add_argument("--check", action="store_true",
                   help="look the MX, SPF, DMARC and DKIM records up and say which are "
                   "published; activate each pending DKIM key whose record is (exit 1 when "
                   "something is missing)")


@command("dns", _dns_arguments,
         summary="print every DNS record to publish for a domain, or --check them",
         description=("Print the MX, SPF, DKIM, DMARC, MTA-STS and TLS-RPT records a domain needs, "
                      "in zone-file syntax."))
def cmd_dns(args: argparse.Namespace) -> int:
    from postroom.mailauth import dnsrecords
    from postroom.store import dkim

    settings = _settings()
    if args.check:
        return _dns_check(args.domain, settings)
    keys = [{**_plain(k), "state": k.state} for k in _with_db(dkim.list_keys, args.domain)]
    for line in dnsrecords.all_records(args.domain, settings.hostname, keys,
                                       report_address=args.rua):
        print(line)
    return 0


def _dns_check(domain: str, settings: Settings) -> int:
    from postroom.net.dns import Resolver
    from postroom.ops.dnscheck import check_domain
    from postroom.store import dkim

    domain = domain.lower().rstrip(".")
    keys = _with_db(dkim.list_keys, domain)
    findings = check_domain(Resolver.from_settings(settings), domain, settings.hostname, keys)
    for f in findings:
        what = f"{f.record} {f.selector}" if f.selector else f.record
        print(f"{'ok  ' if f.ok else 'FAIL'}  {what:<16} {f.name}: {f.detail}")
    for f in findings:
        if f.activate and f.selector:
            retired = _with_db(dkim.activate_key, domain, f.selector)
            print(f"DKIM key {f.selector} of {domain} is now active (its record is published)")
            for old in retired:
                print(f"DKIM key {old} of {domain} retired (replaced by {f.selector})")
    return 0 if all(f.ok for f in findings) else 1


def _duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def _queue_arguments(p: argparse.ArgumentParser) -> None:
    qsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    from postroom.store.spool import LIST_STATES

    q = qsub.add_parser(
        "list", help="list queued messages, by state and address",
        description="Queued messages, oldest first (at most 1000). A message is listed when a "
        "recipient is in the --state (queued: not tried yet; deferred: tried, waiting for a "
        "retry; pending: either) and its sender or a recipient contains the --from, --to or "
        "--address text (any case; @example.org matches a domain).")
    q.add_argument("--state", choices=LIST_STATES, default=None)
    q.add_argument("--from", dest="mail_from", default=None, metavar="TEXT",
                   help="the sender contains TEXT")
    q.add_argument("--to", dest="rcpt_to", default=None, metavar="TEXT",
                   help="a recipient contains TEXT")
    q.add_argument("--address", default=None, metavar="TEXT",
                   help="the sender or a recipient contains TEXT")
    q.add_argument("--json", action="store_true")
    for name, text in (("show", "show one message's envelope and recipients"),
                       ("retry", "attempt pending recipients now"),
                       ("delete", "delete a message from the queue")):
        q = qsub.add_parser(name, help=text)
        q.add_argument("queue_id")
    q = qsub.add_parser(
        "purge", help="delete finished messages past the retention",
        description="Delete messages whose every recipient is delivered or bounced, received "
        "and finished longer ago than the retention, with their attempt history and blobs no "
        "mailbox uses (the mta does this every 10 minutes). The retention is never less than "
        "2 x POSTROOM_DMARC_REPORT_INTERVAL + 1m.")
    q.add_argument("--older-than", type=_duration_arg, default=None, metavar="DURATION",
                   help="retention, e.g. 3d or 12h (default POSTROOM_SPOOL_RETENTION)")
    q.add_argument("-n", "--dry-run", action="store_true",
                   help="only count what would be purged")


@command("queue", _queue_arguments,
         summary="the mail queue (spool)",
         description="Inspect and act on queued messages.")
def cmd_queue(args: argparse.Namespace) -> int:
    from postroom.store import spool

    if args.action == "list":
        rows = _with_db(spool.list_spool, args.state, mail_from=args.mail_from,
                        rcpt_to=args.rcpt_to, address=args.address)
        _print_rows([_plain(r) for r in rows],
                    ["queue_id", "kind", "mail_from", "recipients", "state", "received_at"],
                    args.json)
    elif args.action == "show":
        detail = _plain(_with_db(spool.get_spool, args.queue_id))
        print(json.dumps(detail, default=str, indent=2))
    elif args.action == "retry":
        count = _with_db(spool.retry_now, args.queue_id)
        print(f"{count} recipient(s) of {args.queue_id} scheduled for an attempt now")
    elif args.action == "purge":
        return _queue_purge(args.older_than, args.dry_run)
    else:
        _with_db(spool.delete_spool, args.queue_id)
        print(f"{args.queue_id} deleted")
    return 0


def _queue_purge(older_than: float | None, dry_run: bool) -> int:
    """Delete finished messages past the retention (what the mta does every 10 minutes)."""
    from postroom.queue import retention
    from postroom.store import spool

    settings = _settings()
    effective = retention.effective_retention(settings, older_than)
    before = retention.cutoff(settings, requested=older_than)
    if older_than is not None and effective > older_than:
        print(f"note: --older-than raised to {effective:g}s = {effective / 86400:.2f}d "
              "(2 x POSTROOM_DMARC_REPORT_INTERVAL "
              "+ 1m), so DMARC aggregate reports stay sent once per period", file=sys.stderr)
    when = before.strftime("%Y-%m-%dT%H:%M:%SZ")
    if dry_run:
        count = _with_db(spool.count_finished, before)
        print(f"{count} finished message(s) from before {when} would be purged (dry run)")
        return 0
    database = _open_store()
    try:
        count = retention.purge_sync(database, before)
    finally:
        database.dispose()
    print(f"{count} finished message(s) from before {when} purged")
    return 0


def _since(text: str, now: Any) -> Any:
    """A time: a duration back from now (``7d``, ``12h``) or an ISO date or date-time (UTC)."""
    from datetime import UTC, datetime, timedelta

    try:
        return now - timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise CLIError(f"{text!r} is neither a duration (7d, 12h) nor an ISO date") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _dmarc_arguments(p: argparse.ArgumentParser) -> None:
    msub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = msub.add_parser("report", help="pass/fail counts by source IP or by result")
    q.add_argument("domain")
    q.add_argument("--since", default="1d", metavar="WHEN",
                   help="start: a duration back from now (1d, 12h) or an ISO date (default 1d)")
    q.add_argument("--until", default=None, metavar="WHEN", help="end (default: now)")
    q.add_argument("--by", choices=["source", "result"], default="source")
    q.add_argument("--xml", action="store_true",
                   help="print the RFC 7489 aggregate report XML instead of a table")
    q.add_argument("--json", action="store_true")
    q = msub.add_parser("sources", help="the sending sources seen for a domain, and whether "
                        "they pass DMARC, from our verdicts and from the aggregate reports "
                        "other receivers sent us")
    q.add_argument("domain")
    q.add_argument("--since", default="7d", metavar="WHEN", help="start (default 7d)")
    q.add_argument("--json", action="store_true")


@command("dmarc", _dmarc_arguments,
         summary="DMARC verdicts seen: per source, per result, as XML",
         description=("What the dmarc service saw for a reporting domain (the domain whose DMARC "
                      "record applied): counts by source address or by result, the aggregate "
                      "report XML, or the sending sources of one of our own domains and whether "
                      "they pass (before moving to p=reject)."))
def cmd_dmarc(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from postroom.mailauth import dmarcreport
    from postroom.store import dmarc

    now = datetime.now(UTC)
    start = _since(args.since, now)
    end = _since(args.until, now) if getattr(args, "until", None) else now
    domain = args.domain.lower().rstrip(".")
    records = _with_db(dmarc.results_for_report, domain, start, end)
    if args.action == "sources":
        reported = [(org, dmarcreport.IncomingRow.from_json(row)) for org, row in
                    _with_db(dmarc.incoming_report_rows, domain, start)]
        if args.json:
            # one list: what our service saw ("seen"), then what other receivers reported
            print(json.dumps([{**r, "origin": "seen"} for r in dmarcreport.sources(records)]
                             + [{**r, "origin": "reports"}
                                for r in dmarcreport.incoming_sources(reported)],
                             default=str, indent=2))
            return 0
        _print_rows(dmarcreport.sources(records),
                    ["source_ip", "messages", "pass", "status", "from", "last_seen"], False)
        if reported:
            print(f"\nreported by other receivers (aggregate reports since "
                  f"{start.isoformat(timespec='seconds')}):")
            _print_rows(dmarcreport.incoming_sources(reported),
                        ["source_ip", "messages", "pass", "spf_aligned", "dkim_aligned",
                         "status", "from", "reporters"], False)
        elif not records:
            print(f"no DMARC verdicts or reports for {domain} since "
                  f"{start.isoformat(timespec='seconds')}")
        return 0
    elif args.xml:
        stored = next((r.detail.get("record") for r in reversed(records)
                       if r.detail.get("record")), None)
        hostname = _settings().hostname
        meta = dmarcreport.ReportMeta(org_name=hostname, email=f"dmarc-noreply@{hostname}",
                                      report_id=f"{domain}-{int(start.timestamp())}",
                                      begin=start, end=end)
        sys.stdout.write(dmarcreport.build_xml(
            meta, dmarcreport.PolicyPublished.from_record(domain, stored),
            dmarcreport.aggregate(records)).decode())
    else:
        columns = (["source_ip", "messages", "pass", "fail", "spf_aligned", "dkim_aligned",
                    "quarantined", "rejected"] if args.by == "source"
                   else ["dmarc", "spf", "dkim", "disposition", "messages"])
        _print_rows(dmarcreport.summarize(records, args.by), columns, args.json)
    if not records and not args.json and not getattr(args, "xml", False):
        print(f"no DMARC verdicts for {domain} since {start.isoformat(timespec='seconds')}")
    return 0


def _fts_arguments(p: argparse.ArgumentParser) -> None:
    fsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = fsub.add_parser("backfill", help="index the text of stored mail that has none yet "
                        "(resumable: stop and run it again at any time)")
    q.add_argument("--batch", type=int, default=200, metavar="N",
                   help="messages per transaction (default 200)")
    fsub.add_parser("status", help="how many stored messages have their text indexed")


@command("fts", _fts_arguments, summary="the full-text index of SEARCH BODY/TEXT",
         description=("Mail is indexed as it is delivered, appended or imported; "
                      "`backfill` indexes mail stored before (docs/imap.md, Full-text search)."))
def cmd_fts(args: argparse.Namespace) -> int:
    from postroom.store import fts
    from postroom.store.migrate import check_schema

    settings = _settings()
    if args.action == "status":
        total, indexed = _with_db(fts.counts)
        print(f"{indexed} of {total} messages indexed")
        return 0
    if args.batch < 1:
        raise CLIError("--batch must be at least 1")
    database = _database(settings)
    after = indexed = failed = 0
    started = time.monotonic()
    try:
        check_schema(str(settings.database_url))
        while True:
            after, done, bad = database.run_sync(fts.backfill_batch, after, args.batch,
                                                 database.fts_max_bytes)
            indexed, failed = indexed + done, failed + bad
            if done < args.batch:
                break
            if sys.stderr.isatty():
                sys.stderr.write(f"\r{indexed} indexed (message id {after})")
    finally:
        database.dispose()
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    print(f"{indexed} messages indexed in {time.monotonic() - started:.1f} s "
          f"({failed} unreadable: searched by their raw bytes)")
    return 0


def _import_arguments(p: argparse.ArgumentParser) -> None:
    isub = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    q = isub.add_parser("maildir", help="a Maildir++ tree (Dovecot, Courier): every folder")
    q.add_argument("path", metavar="PATH", help="the Maildir root (holding cur/ and new/)")
    q.add_argument("--user", required=True, help="the account that receives the mail")
    q = isub.add_parser("mbox", help="one mbox file into one mailbox")
    q.add_argument("path", metavar="FILE")
    q.add_argument("--user", required=True, help="the account that receives the mail")
    q.add_argument("--mailbox", required=True, metavar="NAME",
                   help="the mailbox to fill (created when missing; / separates levels)")
    q = isub.add_parser(
        "dovecot", help="accounts with their password hashes, and their Maildirs with UIDs "
        "and POP3 UIDLs kept (docs/migrating-from-dovecot.md)")
    q.add_argument("passwd_file", metavar="PASSWD_FILE",
                   help="Dovecot's passwd-file (user:{SCHEME}hash:uid:gid::home::extra)")
    q.add_argument("--domain", help="the domain of user names without one")
    q.add_argument("--mail-location", metavar="LOCATION",
                   help="where each Maildir is, as Dovecot's mail_location "
                        "(~ home, %%u user, %%n local part, %%d domain; default: the "
                        "passwd-file's userdb_mail, else maildir:~/Maildir)")
    q.add_argument("--pop3-uidl-format", default=None, metavar="FORMAT",
                   help="Dovecot's pop3_uidl_format (default %%08Xu%%08Xv, Dovecot's own)")
    q.add_argument("--default-scheme", default="CRYPT", metavar="SCHEME",
                   help="the scheme of hashes without a {SCHEME} prefix "
                        "(Dovecot's default_pass_scheme; default CRYPT)")
    q.add_argument("--user", action="append", dest="only", metavar="ADDRESS",
                   help="import only this account (repeatable)")
    q.add_argument("--users-only", action="store_true",
                   help="accounts and passwords only, no mail")


@command("import", _import_arguments,
         summary="import mail from a Maildir tree or an mbox file, or a whole Dovecot server",
         description=("Import a user's mail. Flags, internal dates and Maildir++ folders are kept; "
                      "running it again imports nothing twice. A progress bar shows on a "
                      "terminal; a summary line ends the run."))
def cmd_import(args: argparse.Namespace) -> int:
    from postroom.ops.importer import maildir, mbox
    from postroom.ops.importer.load import import_folders
    from postroom.ops.importer.progress import Progress

    if args.format == "dovecot":
        return _import_dovecot(args)
    try:
        if args.format == "maildir":
            folders = maildir.scan(args.path)
        else:
            folders = mbox.scan(args.path, args.mailbox)
    except (maildir.NotAMaildir, mbox.NotAnMbox) as exc:
        raise CLIError(str(exc)) from None
    except OSError as exc:
        raise CLIError(f"cannot read {args.path}: {exc.strerror}") from None
    database = _open_store()
    progress = Progress(sum(f.count for f in folders))
    try:
        result = import_folders(database, args.user, folders, progress)
    finally:
        progress.finish()
        database.dispose()
    print(result.summary())
    return 0


def _import_dovecot(args: argparse.Namespace) -> int:
    from postroom.ops.importer import dovecot
    from postroom.ops.importer.progress import Progress
    from postroom.store import domains

    uidl_format = args.pop3_uidl_format or dovecot.DEFAULT_UIDL_FORMAT
    try:
        dovecot.check_uidl_format(uidl_format)
        with open(args.passwd_file, encoding="utf-8", errors="replace") as handle:
            text = handle.read(64 << 20)
    except dovecot.DovecotFormatError as exc:
        raise CLIError(str(exc)) from None
    except OSError as exc:
        raise CLIError(f"cannot read {args.passwd_file}: {exc.strerror}") from None
    entries, problems = dovecot.parse_passwd_file(
        text, domain=args.domain.lower() if args.domain else None,
        default_scheme=args.default_scheme)
    if args.only:
        wanted = {address.lower() for address in args.only}
        entries = [e for e in entries if e.address in wanted]
        missing = wanted - {e.address for e in entries}
        if missing:
            raise CLIError(f"not in {args.passwd_file}: {', '.join(sorted(missing))}")
    for problem in problems:
        print(f"postroom: {problem}", file=sys.stderr)
    database = _open_store()
    progress = Progress(0)
    try:
        known = {d.name for d in database.run_sync(domains.list_domains)}
        unknown = sorted({e.address.partition("@")[2] for e in entries} - known)
        if unknown:
            raise CLIError("add these domains first (postroom domain add): " + ", ".join(unknown))
        result = dovecot.import_dovecot(database, entries, mail_location=args.mail_location,
                                        uidl_format=uidl_format,
                                        with_mail=not args.users_only, progress=progress)
    except dovecot.DovecotFormatError as exc:
        raise CLIError(str(exc)) from None
    finally:
        progress.finish()
        database.dispose()
    for problem in result.problems:
        print(f"postroom: {problem}", file=sys.stderr)
    print(result.summary())
    return 0


def _export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH")
    p.add_argument("--user", required=True)


@command("export", _export_arguments,
         summary="write a user's mailboxes out as a Maildir++ tree",
         description=("Write every mailbox of a user under PATH as Maildir++ (INBOX at the root, "
                      "other mailboxes as .Name folders), flags in the file names and internal "
                      "dates as modification times."))
def cmd_export(args: argparse.Namespace) -> int:
    from postroom.ops.importer.export import export_maildir
    from postroom.ops.importer.progress import Progress

    database = _open_store()
    progress = Progress(0)
    try:
        result = export_maildir(database, args.user, args.path,
                                on_message=lambda name: progress.advance(name))
    except OSError as exc:
        raise CLIError(f"cannot write {args.path}: {exc.strerror}") from None
    finally:
        database.dispose()
    print(result.summary())
    return 0


def _trace_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("queue_id", metavar="QUEUE_ID")
    p.add_argument("--json", action="store_true")


@command("trace", _trace_arguments,
         summary="one message's story: received, attempts, mailboxes",
         description=("Print what the spool knows of a queue id: when and how it was received, the "
                      "policy verdict, each recipient's attempts and state, and the mailbox and "
                      "UID each local copy went to."))
def cmd_trace(args: argparse.Namespace) -> int:
    from postroom.ops.trace import format_trace, load_trace

    story = _with_db(load_trace, args.queue_id)
    if args.json:
        print(json.dumps(story, default=str, indent=2))
    else:
        print(format_trace(story))
    return 0


def _reanalyze_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=int, default=200, metavar="N",
                   help="messages per transaction (default 200)")


@command("reanalyze", _reanalyze_arguments,
         summary="bring stored mail's cached metadata up to date (IMAP search keys)",
         description=("Re-run MIME analysis on stored messages whose cached metadata predates "
                      "the IMAP search keys (FROM/TO/CC/BCC as a client sees them, the Date: "
                      "header's own day for SENT*; docs/imap.md). Safe to run while serving "
                      "and to interrupt: each batch is one transaction, rerun resumes."))
def cmd_reanalyze(args: argparse.Namespace) -> int:
    from postroom.mime import analyze, metadata_dict
    from postroom.store import messages
    from postroom.store.migrate import check_schema

    if args.batch < 1:
        raise CLIError("--batch must be at least 1")
    settings = _settings()
    database = _database(settings)

    def batch(session: Any, after: int) -> tuple[int, int]:
        rows = messages.stale_metadata(session, after, args.batch)
        for message_id, blob in rows:
            messages.set_metadata(session, message_id, metadata_dict(analyze(blob)))
        return len(rows), rows[-1][0] if rows else after

    done, after = 0, 0
    try:
        check_schema(str(settings.database_url))
        while True:
            count, after = database.run_sync(batch, after)
            done += count
            if count < args.batch:
                break
    finally:
        database.dispose()
    print(f"{done} message(s) reanalyzed")
    return 0


# --- the parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="postroom",
        description="Postroom mail server suite: run services and manage domains, users and "
        "the queue. Configuration comes from POSTROOM_* environment variables "
        "(`postroom config` lists them).",
    )
    parser.add_argument("--version", action="version", version=f"postroom {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for spec in COMMANDS:
        p = sub.add_parser(spec.name, help=spec.summary, description=spec.description)
        spec.arguments(p)
        p.set_defaults(func=spec.handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        _fail(str(exc), 2)
    except CLIError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as exc:  # noqa: BLE001 - the CLI shows one line, never a traceback
        _fail(_explain(exc))


def _explain(exc: Exception) -> str:
    """One line for an operator, for the failures the CLI can meet."""
    import sqlalchemy.exc

    from postroom.rules import RulesError
    from postroom.secretbox import SecretError
    from postroom.store.errors import StoreError
    from postroom.store.migrate import SchemaOutOfDate

    if isinstance(exc, (StoreError, SchemaOutOfDate, RulesError, SecretError)):
        return str(exc)
    if isinstance(exc, sqlalchemy.exc.OperationalError):
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else "unreachable"
        return f"cannot use the database: {reason}"
    return f"{type(exc).__name__}: {exc}"


if __name__ == "__main__":
    sys.exit(main())
