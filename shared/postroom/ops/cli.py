"""`postroom`: the operator's command line (serve, up, db, domain, user, app-password, token,
auth, alias, dkim, secret-key, srs, tls, acme, dns, queue, dmarc, doctor, import, export,
trace).

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
    p.add_argument("--processes", metavar="N|auto", type=_processes_arg, default=None,
                   help="run N processes of the service sharing its ports (auto: one per "
                        "core); sets POSTROOM_PROCESSES. Default: auto for mta, msa, imap "
                        "and pop3, 1 for the others")


def _processes_arg(text: str) -> str:
    from postroom.config import parse_processes

    try:
        return parse_processes(text) or "auto"
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@command("serve", _serve_arguments,
         summary="run one service in the foreground (what compose runs)",
         description="Run one service in the foreground, logging JSON lines to stdout, "
                     "until SIGTERM. With more than one process (--processes, "
                     "POSTROOM_PROCESSES), a parent runs the workers and answers "
                     "POSTROOM_HTTP_LISTEN for all of them.")
def cmd_serve(args: argparse.Namespace) -> int:
    from postroom.runtime import run_service

    if getattr(args, "processes", None):
        os.environ["POSTROOM_PROCESSES"] = args.processes
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
        "mta-sts", help="set the MTA-STS mode of a domain (none, testing, enforce)",
        description="Set the mode of the MTA-STS policy (RFC 8461) the web service serves at "
        "https://mta-sts.DOMAIN/.well-known/mta-sts.txt (none: no policy). Every change makes "
        "a new policy id: publish the _mta-sts TXT record `postroom dns DOMAIN` prints then.")
    q.add_argument("domain")
    q.add_argument("mode", choices=("none", "testing", "enforce"))
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
    elif args.action == "mta-sts":
        from postroom.mailauth.dnsrecords import mta_sts_records
        from postroom.store import mtasts

        sts = _with_db(mtasts.set_mode, args.domain, args.mode)
        print(f"MTA-STS mode of {sts.domain} is now {sts.mode}; publish:")
        for line in mta_sts_records(sts.domain, _settings().hostname, sts.mode, sts.stamp):
            print(line)
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


def _announce_credentials(address: str) -> None:
    """Tell the running services to forget their cached logins of ``address`` (after a
    committed change: revoked app password, new password, two-factor login, disabled)."""
    from postroom.queue import authevents
    from postroom.queue.redisclient import RedisError
    from postroom.queue.streams import connect

    settings = _settings()
    if not settings.redis_url:
        return
    try:
        client = connect(settings.redis_url)
        try:
            authevents.publish(client, settings.redis_prefix, address.lower())
        finally:
            client.close()
    except (RedisError, OSError) as exc:
        print(f"postroom: warning: the running services were not told ({exc}); their cached "
              f"logins of {address.lower()} end within a minute", file=sys.stderr)


def _announce_dkim(domain: str) -> None:
    """Tell the running msa processes to forget their cached DKIM keys (after a committed key
    change of ``domain``: generated, rotated, activated, retired, re-encrypted)."""
    from postroom.queue import authevents
    from postroom.queue.redisclient import RedisError
    from postroom.queue.streams import connect

    settings = _settings()
    if not settings.redis_url:
        return
    try:
        client = connect(settings.redis_url)
        try:
            authevents.publish_dkim(client, settings.redis_prefix, domain)
        finally:
            client.close()
    except (RedisError, OSError) as exc:
        print(f"postroom: warning: the running msa processes were not told ({exc}); they read "
              f"the DKIM keys of {domain.lower()} again within "
              f"{settings.msa_dkim_key_cache_ttl:g} s", file=sys.stderr)


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
    q = usub.add_parser(
        "totp", help="show a user's two-factor login, or turn it off (--off)",
        description="Two-factor login (TOTP) is turned on by the user in the web console; "
        "while it is on, IMAP, POP3 and SMTP take app passwords only. Without --off: whether "
        "it is on and how many recovery codes are left. --off turns it off for a user who "
        "lost their phone and recovery codes (their main password works everywhere again).")
    q.add_argument("address")
    q.add_argument("--off", action="store_true", help="turn two-factor login off")
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
        _announce_credentials(args.address)
        print(f"password of {address} changed; their web console sessions ended")
    elif args.action == "totp":
        return _user_totp(args.address, args.off, args.json)
    elif args.action in ("disable", "enable"):
        _with_db(users.set_user_active, args.address, args.action == "enable")
        if args.action == "disable":
            _announce_credentials(args.address)
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
        _announce_credentials(args.address)
        print(f"user {args.address.lower()} removed")
    else:
        rows = [_plain(r) for r in _with_db(users.list_users, args.domain)]
        if not args.json:
            rows = [{**r, "admin": "yes" if r["is_admin"] else ""} for r in rows]
        _print_rows(rows, ["address", "active", "admin", "quota_bytes", "created_at"],
                    args.json)
    return 0


def _user_totp(address: str, off: bool, as_json: bool) -> int:
    from postroom.store import totp

    if off:
        was = _with_db(totp.disable_totp, address)
        _announce_credentials(address)
        print(f"two-factor login of {address.lower()} " +
              ("turned off: the main password works everywhere again" if was
               else "was not on (any set-up begun was forgotten)"))
        return 0
    status = _with_db(totp.totp_status, address)
    if as_json:
        print(json.dumps(_plain(status), indent=2))
    else:
        state = "on" if status.enabled else ("being set up" if status.pending else "off")
        print(f"two-factor login of {address.lower()}: {state}" +
              (f"; {status.recovery_codes_left} recovery code(s) left" if status.enabled
               else ""))
    return 0


def _app_password_arguments(p: argparse.ArgumentParser) -> None:
    from postroom.store.apppasswords import PROTOCOLS

    asub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = asub.add_parser(
        "add", help="make an app password for a device (shown once)",
        description="Make an app password: four groups of four letters, generated by the "
        "server, printed once and stored hashed. Without --protocol it works for every "
        "protocol; with it, only for those named.")
    q.add_argument("address")
    q.add_argument("name", help="the device it is for, e.g. 'phone' (unique per user)")
    q.add_argument("--protocol", action="append", choices=PROTOCOLS, default=None,
                   dest="protocols", help="allow only this protocol (repeat for several)")
    q = asub.add_parser("list", help="list a user's app passwords (never their secrets)")
    q.add_argument("address")
    q.add_argument("--json", action="store_true")
    q = asub.add_parser("revoke", help="revoke an app password (running services forget it "
                        "at once)")
    q.add_argument("address")
    q.add_argument("name")


@command("app-password", _app_password_arguments,
         summary="per-device app passwords for IMAP, POP3, SMTP and ManageSieve",
         description="Manage a user's app passwords: per device, optionally per protocol "
                     "(imap, pop3, submission, managesieve). They log in like the main "
                     "password (PLAIN/LOGIN, not SCRAM) and are the only way in for users "
                     "with two-factor login on (docs/security.md).")
def cmd_app_password(args: argparse.Namespace) -> int:
    from postroom.store import apppasswords

    address = args.address.lower()
    if args.action == "add":
        try:
            secret = _with_db(apppasswords.create, args.address, args.name, args.protocols)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        scope = ", ".join(sorted(set(args.protocols))) if args.protocols else "every protocol"
        print(f"app password {args.name} of {address} for {scope}:")
        print(secret)
        print("enter it in the device now: it is stored hashed and will not be shown again")
    elif args.action == "revoke":
        if not _with_db(apppasswords.revoke, args.address, args.name):
            raise CLIError(f"{address} has no app password {args.name} to revoke")
        _announce_credentials(args.address)
        print(f"app password {args.name} of {address} revoked")
    else:
        rows = []
        for info in _with_db(apppasswords.list_app_passwords, args.address):
            row = _plain(info)
            if args.json:
                row["protocols"] = list(info.protocols) if info.protocols else None
            else:
                row["protocols"] = ",".join(info.protocols) if info.protocols else "(all)"
                row["state"] = "revoked" if info.revoked_at else "active"
                row["last_used_at"] = info.last_used_at or "never"
                row["last_used_ip"] = info.last_used_ip or ""
            rows.append(row)
        _print_rows(rows, ["name", "protocols", "state", "created_at", "last_used_at",
                           "last_used_ip"], args.json)
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


def _relay_arguments(p: argparse.ArgumentParser) -> None:
    rsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = rsub.add_parser("list", help="list transport entries (passwords only by reference)")
    q.add_argument("--json", action="store_true")
    q = rsub.add_parser("set", help="route a domain (.domain: its subdomains) via a smarthost")
    q.add_argument("domain", help="example.com, or .example.com for its subdomains")
    q.add_argument("nexthop", help="host:port (MX lookup of host) or [host]:port (none)")
    q.add_argument("--tls", choices=("starttls", "tls", "none"), default="starttls",
                   help="starttls (required, default), tls (implicit, port 465) or none")
    q.add_argument("--user", help="SASL user name (AUTH PLAIN or LOGIN, only under TLS)")
    q.add_argument("--password-file", help="file holding the password (absolute path), or the "
                   "name of a secret in /run/secrets; the password itself is never stored")
    q = rsub.add_parser("remove", help="remove a domain's transport entry")
    q.add_argument("domain")
    q = rsub.add_parser("test", help="print the route mail to an address would take")
    q.add_argument("address")


@command("relay", _relay_arguments,
         summary="smarthost routes per recipient domain (a transport map)",
         description=("Route outbound mail for a domain through a smarthost instead of its MX "
                      "(Postfix transport_maps). A domain's entry wins over .parent entries, "
                      "which win over POSTROOM_RELAY_HOST; the mta picks up changes within "
                      "seconds. docs/relay.md, \"Smarthost\"."))
def cmd_relay(args: argparse.Namespace) -> int:
    import os

    from postroom.store import transports

    if args.action == "set":
        if bool(args.user) != bool(args.password_file):
            raise CLIError("--user and --password-file go together")
        ref = args.password_file
        if ref and "/" in ref:
            ref = os.path.abspath(ref)
        entry = _with_db(transports.set_transport, args.domain, args.nexthop, tls=args.tls,
                         username=args.user, password_ref=ref)
        print(f"relay {entry.domain} -> {entry.nexthop} tls={entry.tls}"
              + (f" user={entry.username}" if entry.username else "") + " set")
        if ref and not os.path.isfile(transports.password_path(ref)):
            print(f"warning: {transports.password_path(ref)} is not a file here; the mta "
                  "must be able to read it", file=sys.stderr)
    elif args.action == "remove":
        _with_db(transports.remove_transport, args.domain)
        print(f"relay {args.domain} removed")
    elif args.action == "list":
        rows = _with_db(transports.list_transports)
        _print_rows([_plain(r) for r in rows],
                    ["domain", "nexthop", "tls", "username", "password_ref"], args.json)
    else:
        print(_relay_test(args.address))
    return 0


def _relay_test(address: str) -> str:
    """One line saying which route mail to ``address`` takes (nothing is sent)."""
    from postroom.net.nexthop import Route, choose_route
    from postroom.store import domains, transports
    from postroom.store.addresses import split_address

    settings = _settings()
    _local, domain = split_address(address)

    def look(session: Any) -> tuple[bool, dict[str, Route]]:
        return (domains.is_local_domain(session, domain),
                transports.routes_for(session, [domain]))

    local, entries = _with_db(look)
    if local:
        return f"{address}: local domain {domain}, delivered here (no relay)"
    relayhost = None
    if settings.relay_host is not None:
        relayhost = Route(settings.relay_host, settings.relay_tls, settings.relay_user,
                          settings.relay_password_file)
    route = choose_route(domain, entries, relayhost)
    if route is None:
        return f"{address}: by MX of {domain} (no transport entry, no POSTROOM_RELAY_HOST)"
    how = ("MX lookup of " + route.nexthop.host) if route.nexthop.mx_lookup else "no MX lookup"
    login = f" user={route.username}" if route.username else ""
    return (f"{address}: {route.source} -> {route.nexthop} ({how}) tls={route.tls}{login}")


def _rules_arguments(p: argparse.ArgumentParser) -> None:
    rsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = rsub.add_parser("set", help="convert a JSON rules file ('-' = stdin) into the Sieve "
                        "script 'rules' and make it active")
    q.add_argument("address")
    q.add_argument("file", help="JSON file with the rules, or - for stdin")
    q = rsub.add_parser("show", help="print the Sieve script 'rules'")
    q.add_argument("address")
    q = rsub.add_parser("clear", help="deactivate and delete the Sieve script 'rules'")
    q.add_argument("address")


_RULES_REPLACED = ("note: `postroom rules` is replaced by `postroom sieve`; JSON rules are "
                   "converted into the Sieve script 'rules' (docs/mda.md, \"Sieve\")")


@command("rules", _rules_arguments,
         summary="the old JSON delivery rules, converted into Sieve (see `postroom sieve`)",
         description=("Replaced by `postroom sieve`. `set` converts a JSON rule list (the old "
                      "format, docs/mda.md) into the Sieve script 'rules' and activates it; "
                      "`show` prints that script; `clear` removes it."))
def cmd_rules(args: argparse.Namespace) -> int:
    from postroom.rules import RulesError
    from postroom.sieve.convert import SCRIPT_NAME, rules_to_sieve

    if args.action == "set":
        text = _read_input(args.file)
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise CLIError(f"rules: not valid JSON ({exc})") from None
        try:
            script = rules_to_sieve(data)
        except RulesError as exc:
            raise CLIError(str(exc)) from None
        _put_script(args.address, SCRIPT_NAME, script, activate=True)
        print(f"rules of {args.address.lower()} stored as the active Sieve script "
              f"'{SCRIPT_NAME}'")
    elif args.action == "clear":
        _with_db(_sieve_remove, args.address, SCRIPT_NAME)
        print(f"Sieve script '{SCRIPT_NAME}' of {args.address.lower()} removed")
    else:
        sys.stdout.write(_with_db(_sieve_get, args.address, SCRIPT_NAME))
    print(_RULES_REPLACED, file=sys.stderr)
    return 0


def _read_input(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None


def _sieve_user(session: Any, address: str) -> int:
    from postroom.store import users

    user = users.get_user(session, address)
    if user is None:
        raise CLIError(f"no account {address}")
    return int(user.id)


def _sieve_get(session: Any, address: str, name: str | None) -> str:
    from postroom.store import sieve

    uid = _sieve_user(session, address)
    if name is None:
        active = sieve.active_script(session, uid)
        if active is None:
            raise CLIError(f"{address} has no active Sieve script")
        return active[1]
    text = sieve.get_script(session, uid, name)
    if text is None:
        raise CLIError(f"{address} has no Sieve script {name!r}")
    return text


def _sieve_store(session: Any, address: str, name: str, text: str, activate: bool,
                 max_scripts: int) -> None:
    from postroom.store import sieve

    uid = _sieve_user(session, address)
    count, _bytes = sieve.scripts_usage(session, uid)
    if sieve.get_script(session, uid, name) is None and count >= max_scripts:
        raise CLIError(f"{address} has {count} Sieve scripts already "
                       f"(POSTROOM_SIEVE_MAX_SCRIPTS={max_scripts})")
    sieve.put_script(session, uid, name, text)
    if activate:
        sieve.set_active(session, uid, name)


def _sieve_remove(session: Any, address: str, name: str) -> None:
    from postroom.store import sieve

    uid = _sieve_user(session, address)
    active = sieve.active_script(session, uid)
    if active is not None and active[0] == name:
        sieve.set_active(session, uid, None)
    if not sieve.delete_script(session, uid, name):
        raise CLIError(f"{address} has no Sieve script {name!r}")


def _check_or_fail(text: str, max_bytes: int) -> None:
    from postroom.sieve import check_script

    errors = check_script(text, max_bytes=max_bytes)
    if errors:
        raise CLIError("\n".join(str(e) for e in errors))


def _put_script(address: str, name: str, text: str, *, activate: bool) -> None:
    settings = _settings()
    _check_or_fail(text, settings.sieve_max_script_bytes)
    _with_db(_sieve_store, address, name, text, activate, settings.sieve_max_scripts)


def _sieve_arguments(p: argparse.ArgumentParser) -> None:
    ssub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = ssub.add_parser("list", help="the account's scripts (the active one marked)")
    q.add_argument("address")
    q.add_argument("--json", action="store_true")
    q = ssub.add_parser("show", help="print a script (the active one when no name is given)")
    q.add_argument("address")
    q.add_argument("name", nargs="?")
    q = ssub.add_parser("put", help="check and store a script from a file ('-' = stdin)")
    q.add_argument("address")
    q.add_argument("name")
    q.add_argument("file", help="the script, or - for stdin")
    q.add_argument("--activate", action="store_true", help="and make it the active script")
    q = ssub.add_parser("activate", help="make a script the one run at delivery")
    q.add_argument("address")
    q.add_argument("name")
    q = ssub.add_parser("deactivate", help="run no script of the account at delivery")
    q.add_argument("address")
    q = ssub.add_parser("delete", help="delete a script (not the active one)")
    q.add_argument("address")
    q.add_argument("name")
    q = ssub.add_parser("check", help="check a stored script (the active one when no name "
                        "is given), or a file with --file")
    q.add_argument("address", nargs="?")
    q.add_argument("name", nargs="?")
    q.add_argument("--file", help="check this file ('-' = stdin) instead")


@command("sieve", _sieve_arguments,
         summary="each account's Sieve scripts (RFC 5228), run at delivery",
         description=("List, show, store, activate, deactivate, delete and check an account's "
                      "Sieve scripts; the active one runs at delivery, between the operator's "
                      "POSTROOM_SIEVE_BEFORE and _AFTER scripts (docs/mda.md, \"Sieve\")."))
def cmd_sieve(args: argparse.Namespace) -> int:
    from postroom.store import sieve

    if args.action == "list":
        def listing(session: Any, address: str) -> list[Any]:
            return sieve.list_scripts(session, _sieve_user(session, address))
        rows = [_plain(r) for r in _with_db(listing, args.address)]
        _print_rows(rows, ["name", "active", "size", "updated_at"], args.json)
    elif args.action == "show":
        sys.stdout.write(_with_db(_sieve_get, args.address, args.name))
    elif args.action == "put":
        _put_script(args.address, args.name, _read_input(args.file), activate=args.activate)
        print(f"Sieve script {args.name!r} of {args.address.lower()} stored"
              + (" and active" if args.activate else ""))
    elif args.action == "activate":
        def activate(session: Any, address: str, name: str) -> bool:
            return sieve.set_active(session, _sieve_user(session, address), name)
        text = _with_db(_sieve_get, args.address, args.name)
        _check_or_fail(text, _settings().sieve_max_script_bytes)
        if not _with_db(activate, args.address, args.name):
            raise CLIError(f"{args.address} has no Sieve script {args.name!r}")
        print(f"Sieve script {args.name!r} of {args.address.lower()} is active")
    elif args.action == "deactivate":
        def deactivate(session: Any, address: str) -> bool:
            return sieve.set_active(session, _sieve_user(session, address), None)
        _with_db(deactivate, args.address)
        print(f"no Sieve script of {args.address.lower()} is active")
    elif args.action == "delete":
        def remove(session: Any, address: str, name: str) -> bool:
            return sieve.delete_script(session, _sieve_user(session, address), name)
        from postroom.store.errors import InUse

        try:
            done = _with_db(remove, args.address, args.name)
        except InUse as exc:
            raise CLIError(str(exc)) from None
        if not done:
            raise CLIError(f"{args.address} has no Sieve script {args.name!r}")
        print(f"Sieve script {args.name!r} of {args.address.lower()} deleted")
    else:
        if args.file is not None:
            text = _read_input(args.file)
        elif args.address is not None:
            text = _with_db(_sieve_get, args.address, args.name)
        else:
            raise CLIError("give an address (and a script name) or --file")
        _check_or_fail(text, _settings().sieve_max_script_bytes)
        print("valid")
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
        _announce_dkim(args.domain)
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
        _announce_dkim(domain)
        print(f"; new DKIM keys for {domain}: publish these TXT records (keep the old ones)")
        for key in created:
            print(dnsrecords.dkim_record(_plain(key)))
        _pending_note(domain, created)
        return 0
    if args.action == "retire":
        _with_db(dkim.retire_key, domain, args.selector)
        _announce_dkim(domain)
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
    _announce_dkim(domain)
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
    if not dry_run:
        for domain in sorted({name.partition("/")[0] for name in done.encrypted
                              + done.reencrypted}):
            _announce_dkim(domain)
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


def _srs_arguments(p: argparse.ArgumentParser) -> None:
    ssub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    key = ssub.add_parser("key", help="SRS secrets")
    ksub = key.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = ksub.add_parser("generate", help="write a new SRS key file")
    q.add_argument("path", metavar="PATH")
    q.add_argument("--keep", metavar="OLD_FILE",
                   help="append the keys of this file after the new one: they keep verifying "
                        "addresses made before the rotation")


@command("srs", _srs_arguments,
         summary="make the secrets of the Sender Rewriting Scheme",
         description=("`srs key generate PATH` writes a new random SRS secret to PATH (mode "
                      "0600, never over an existing file) for POSTROOM_SRS_KEY_FILE; with "
                      "--keep OLD the old file's secrets follow it, so SRS addresses made "
                      "before the rotation stay valid (docs/operations.md). PATH '-' prints "
                      "the new secret."))
def cmd_srs(args: argparse.Namespace) -> int:
    from postroom.mailauth import srs

    old: tuple[bytes, ...] = ()
    if args.keep:
        try:
            old = srs.load_keys(args.keep)
        except (OSError, ValueError) as exc:
            raise CLIError(f"cannot read {args.keep}: {exc}") from None
    if args.path == "-":
        sys.stdout.buffer.write(srs.new_key() + b"\n")
        sys.stdout.flush()
        return 0
    try:
        srs.write_key_file(args.path, old)
    except FileExistsError:
        raise CLIError(f"{args.path} exists; write the new key file elsewhere and point "
                       "POSTROOM_SRS_KEY_FILE at it") from None
    except OSError as exc:
        raise CLIError(f"cannot write {args.path}: {exc.strerror}") from None
    print(f"SRS key written to {args.path} (mode 0600, {len(old) + 1} key(s)); point "
          "POSTROOM_SRS_KEY_FILE at it and restart the mta and mda", file=sys.stderr)
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


def _acme_arguments(p: argparse.ArgumentParser) -> None:
    asub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    asub.add_parser("issue", help="issue the certificate now, due or not")
    asub.add_parser("renew", help="issue only when due (what the web service does hourly)")
    q = asub.add_parser("status", help="what the stored certificate covers and when it expires")
    q.add_argument("--json", action="store_true")


@command("acme", _acme_arguments,
         summary="the certificate by ACME: issue, renew, status",
         description=("Issue or renew the certificate of POSTROOM_HOSTNAME and each domain's "
                      "mta-sts. and autoconfig. names from POSTROOM_ACME_DIRECTORY (HTTP-01, "
                      "answered by the web service, which must be reachable on port 80 of "
                      "each name), and store it in the database, from which every service "
                      "loads it (POSTROOM_ACME). Exit 1 when the CA refused or another replica "
                      "is renewing."))
def cmd_acme(args: argparse.Namespace) -> int:
    from postroom.ops.acme import Issuer
    from postroom.store import acme

    settings = _settings()
    database = _open_store()
    try:
        if args.action == "status":
            info = database.run_sync(acme.certificate_info)
            due, names = Issuer(database, settings).due()
            row = {"directory": settings.acme_directory, "names": list(names), "due": due,
                   "issued_at": info.issued_at.isoformat() if info else None,
                   "not_after": info.not_after.isoformat() if info else None,
                   "covers": list(info.names) if info else []}
            if args.json:
                print(json.dumps(row, indent=2))
            else:
                for key, value in row.items():
                    shown = ", ".join(value) if isinstance(value, list) else value
                    print(f"{key:<10} {shown if shown is not None else '-'}")
            return 0
        outcome = Issuer(database, settings, keyring=_keyring(settings)).ensure(
            force=args.action == "issue")
    finally:
        database.dispose()
    if outcome.outcome == "issued":
        assert outcome.not_after is not None
        print(f"certificate issued for {', '.join(outcome.names)}, valid until "
              f"{outcome.not_after.isoformat()}; every service loads it within "
              f"POSTROOM_TLS_DB_POLL")
        return 0
    if outcome.outcome == "current":
        assert outcome.not_after is not None
        print(f"certificate current until {outcome.not_after.isoformat()}; nothing to do")
        return 0
    if outcome.outcome == "busy":
        raise CLIError("another replica is renewing the certificate now; try again later")
    raise CLIError(f"ACME issuance failed: {outcome.error}")


def _dns_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain")
    p.add_argument("--rua", default=None, metavar="ADDRESS",
                   help="where DMARC aggregate and TLS reports go (default postmaster@DOMAIN)")
    p.add_argument("--check", action="store_true",
                   help="look the MX, SPF, DMARC and DKIM records up and say which are "
                   "published; activate each pending DKIM key whose record is (exit 1 when "
                   "something is missing)")


def _doctor_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain")
    p.add_argument("--json", action="store_true", help="one JSON document (for monitoring)")
    p.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                   help="for each HTTPS fetch and TCP connect (default 5)")


@command("doctor", _doctor_arguments,
         summary="check from the outside everything that decides a domain's deliverability",
         description=("MX and its addresses, FCrDNS of the sending address, SPF, every DKIM "
                      "key, DMARC and its rua, MTA-STS, TLS-RPT, DANE against our certificate, "
                      "the certificate's names and expiry, and our listeners: one line per "
                      "check (pass, warn, fail) with the fix. Exit 1 when any check fails."))
def cmd_doctor(args: argparse.Namespace) -> int:
    import json

    from postroom.net.dns import Resolver
    from postroom.ops import doctor
    from postroom.store import dkim

    settings = _settings()
    domain = args.domain.lower().rstrip(".")
    keys = _with_db(dkim.list_keys, domain)
    facts = doctor.facts_from_settings(settings, domain, keys)
    checks = doctor.run_checks(Resolver.from_settings(settings),
                               doctor.NetProbes(timeout=args.timeout), facts)
    if args.json:
        print(json.dumps(doctor.as_json(domain, checks), indent=2))
    else:
        for line in doctor.render(checks):
            print(line)
        counts = doctor.summary(checks)
        print(f"{counts['pass']} passed, {counts['warn']} warnings, {counts['fail']} failed")
    return 1 if any(c.status == doctor.FAIL for c in checks) else 0


@command("dns", _dns_arguments,
         summary="print every DNS record to publish for a domain, or --check them",
         description=("Print the MX, SPF, DKIM, DMARC, MTA-STS and TLS-RPT records a domain needs, "
                      "and the mail clients' SRV (RFC 6186), autoconfig and autodiscover names, "
                      "in zone-file syntax."))
def cmd_dns(args: argparse.Namespace) -> int:
    from postroom.mailauth import dnsrecords
    from postroom.store import dkim, mtasts

    settings = _settings()
    if args.check:
        return _dns_check(args.domain, settings)
    keys = [{**_plain(k), "state": k.state} for k in _with_db(dkim.list_keys, args.domain)]
    sts = _with_db(mtasts.get_setting, args.domain)
    for line in dnsrecords.all_records(args.domain, settings.hostname, keys,
                                       report_address=args.rua,
                                       mta_sts_mode=sts.mode if sts else "none",
                                       mta_sts_stamp=sts.stamp if sts else None):
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
            _announce_dkim(domain)
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
