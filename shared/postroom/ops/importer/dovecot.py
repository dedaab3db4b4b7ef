"""Moving in from Dovecot: accounts with their password hashes, Maildirs with their UIDs.

What is read, all of it written by Dovecot 2.x:

- the passwd-file (``user:{SCHEME}hash:uid:gid:gecos:home:shell:extra``),
  one account a line; ``userdb_mail=maildir:...`` among the extra fields, or
  the operator's ``--mail-location``, says where the Maildir is;
- each folder's ``dovecot-uidlist`` (version 3: ``3 V<uidvalidity> N<nextuid>
  G<guid>``, then ``<uid> [<ext>...] :<file name base>``; version 1 too), which
  gives the mailbox's UIDVALIDITY and every message's UID;
- each folder's ``dovecot-keywords`` (``<index> <keyword>``): the letters
  ``a``-``z`` after ``:2,`` in a file name are keyword 0-25.

Nothing here touches the database: :mod:`postroom.store.users` adds the
accounts and :mod:`postroom.store.imports` files the messages. Files are read
through :mod:`postroom.ops.importer.maildir` (never through a link out of the
tree). The files come from another machine: every line is bounded, numbers
are range-checked, and a line that does not parse is skipped and logged.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from postroom.auth.dovecotpw import SUPPORTED_SCHEMES, split_scheme
from postroom.logs import get_logger
from postroom.mime import analyze, metadata_dict
from postroom.mime.fulltext import MessageText, text_or_unreadable
from postroom.ops.importer import maildir
from postroom.ops.importer.progress import Progress
from postroom.ops.importer.source import to_crlf
from postroom.store import imports, messages, users
from postroom.store.db import Database
from postroom.store.entries import subscribe

log = get_logger("import")

#: Dovecot's default pop3_uidl_format (`doveconf -d pop3_uidl_format`)
DEFAULT_UIDL_FORMAT = "%08Xu%08Xv"
#: Dovecot's usual mail_location for virtual users; ``~`` is the passwd-file's home
DEFAULT_MAIL_LOCATION = "maildir:~/Maildir"
MAX_UID = 0xFFFFFFFF
# bounds on what is read from the old server's files
MAX_INDEX_FILE = 64 << 20
MAX_LINE = 4096
MAX_UIDL = 70  # RFC 1939: 1 to 70 characters in 0x21-0x7E
# messages filed per transaction: a few hundred round trips saved per commit, memory bounded
BATCH_MESSAGES = 200
BATCH_BYTES = 32 << 20
_KEYWORD = re.compile(r"[!#$&'+,\-.0-9:;<=>?@A-Z^_`a-z|~\x27]{1,64}")  # an IMAP atom, no \ or %
_UIDL_CHARS = re.compile(r"[\x21-\x7e]{1,70}")


class DovecotFormatError(ValueError):
    pass


# --- the passwd-file ----------------------------------------------------------------------------

@dataclass(frozen=True)
class PasswdEntry:
    """One account of a Dovecot passwd-file."""

    address: str
    password: str  # as stored: {SCHEME}hash
    home: str
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def scheme(self) -> str:
        found = split_scheme(self.password)
        return found[0] if found else ""


def parse_passwd_file(text: str, *, domain: str | None = None,
                      default_scheme: str = "CRYPT") -> tuple[list[PasswdEntry], list[str]]:
    """(accounts, problems) of a passwd-file; ``domain`` completes bare user names.

    A hash without a ``{SCHEME}`` prefix is in ``default_scheme`` (Dovecot's
    ``default_pass_scheme``, CRYPT unless configured). Lines that cannot be
    imported (no domain, no password, an unknown scheme) are reported, not fatal.
    """
    entries: list[PasswdEntry] = []
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if len(line) > MAX_LINE:
            problems.append(f"line {number}: too long")
            continue
        fields = line.split(":")
        user = fields[0].strip()
        password = fields[1] if len(fields) > 1 else ""
        home = fields[5] if len(fields) > 5 else ""
        extra_text = ":".join(fields[7:]) if len(fields) > 7 else ""
        if "@" not in user:
            if domain is None:
                problems.append(f"line {number}: {user!r} has no domain (use --domain)")
                continue
            user = f"{user}@{domain}"
        if not password:
            problems.append(f"line {number}: {user} has no password, not imported")
            continue
        if split_scheme(password) is None:
            password = "{" + default_scheme.upper() + "}" + password
        scheme = split_scheme(password)
        if scheme is None or scheme[0] not in SUPPORTED_SCHEMES:
            problems.append(f"line {number}: {user}: password scheme not supported")
            continue
        extra = {}
        for item in extra_text.split():
            key, _, value = item.partition("=")
            extra[key] = value
        entries.append(PasswdEntry(address=user.lower(), password=password, home=home,
                                   extra=extra))
    return entries, problems


def maildir_of(entry: PasswdEntry, mail_location: str | None) -> str | None:
    """The account's Maildir path: the operator's location, else userdb_mail, else the default.

    ``~`` is the home, ``%u`` the user, ``%n`` the local part, ``%d`` the
    domain (also as ``%{user}``, ``%{username}``, ``%{domain}``, ``%{home}``).
    """
    location = mail_location or entry.extra.get("userdb_mail") or entry.extra.get("mail") \
        or DEFAULT_MAIL_LOCATION
    if location.startswith("maildir:"):
        location = location[len("maildir:"):]
    elif ":" in location.split("/", 1)[0]:
        return None  # mbox:, sdbox:, mdbox: are not Maildir
    location = location.split(":", 1)[0]  # drop :INDEX=..., :LAYOUT=... parameters
    local, _, domain = entry.address.partition("@")
    values = {"u": entry.address, "user": entry.address, "n": local, "username": local,
              "d": domain, "domain": domain, "h": entry.home, "home": entry.home}

    def expand(match: re.Match[str]) -> str:
        key = match.group(1) or match.group(2)
        if key == "%":
            return "%"
        if key not in values:
            raise DovecotFormatError(f"unknown variable %{key} in mail location")
        return values[key]

    path = re.sub(r"%\{([a-z]+)\}|%([a-z%])", expand, location)
    if path.startswith("~"):
        if not entry.home:
            return None
        path = entry.home.rstrip("/") + path[1:]
    return path


# --- dovecot-uidlist and dovecot-keywords --------------------------------------------------------

@dataclass(frozen=True)
class UidlistEntry:
    uid: int
    extensions: dict[str, str]


@dataclass(frozen=True)
class Uidlist:
    uidvalidity: int
    nextuid: int
    guid: str
    entries: dict[str, UidlistEntry]  # by file name base


def _number(text: str, upper: int) -> int:
    if not text.isdigit() or len(text) > 10:
        raise DovecotFormatError(f"not a number: {text[:20]!r}")
    value = int(text)
    if not 1 <= value <= upper:
        raise DovecotFormatError(f"out of range: {value}")
    return value


def parse_uidlist(data: bytes) -> Uidlist:
    """A ``dovecot-uidlist`` (version 3, or the older version 1 header and lines)."""
    lines = data.decode("utf-8", "replace").split("\n")
    header = lines[0].split()
    if not header:
        raise DovecotFormatError("empty uidlist")
    if header[0] == "1" and len(header) >= 3:
        uidvalidity, nextuid, guid = (_number(header[1], MAX_UID),
                                      _number(header[2], MAX_UID + 1), "")
    elif header[0] == "3":
        fields = {item[0]: item[1:] for item in header[1:] if item}
        if "V" not in fields or "N" not in fields:
            raise DovecotFormatError("uidlist header without V or N")
        uidvalidity = _number(fields["V"], MAX_UID)
        nextuid = _number(fields["N"], MAX_UID + 1)
        guid = fields.get("G", "")
    else:
        raise DovecotFormatError(f"unknown uidlist version {header[0][:10]!r}")
    entries: dict[str, UidlistEntry] = {}
    for number, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        try:
            uid_text, _, rest = line.partition(" ")
            uid = _number(uid_text, MAX_UID)
            if header[0] == "3":
                extension_text, colon, name = rest.partition(":")
                if not colon:
                    raise DovecotFormatError("no ':' before the file name")
                extensions = {item[0]: item[1:] for item in extension_text.split() if item}
            else:
                name, extensions = rest.strip(), {}
        except DovecotFormatError as exc:
            log.warning("uidlist line skipped", line=number, reason=str(exc))
            continue
        if name and "/" not in name and len(name) <= MAX_LINE:
            entries[name] = UidlistEntry(uid, extensions)
    return Uidlist(uidvalidity, nextuid, guid, entries)


def parse_keywords(data: bytes) -> dict[int, str]:
    """Keyword index -> name from ``dovecot-keywords`` (indexes 0-25: letters a-z)."""
    found: dict[int, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        index, _, name = line.strip().partition(" ")
        if index.isdigit() and int(index) < 26 and _KEYWORD.fullmatch(name) \
                and not name.startswith("\\"):
            found[int(index)] = name
    return found


def parse_subscriptions(data: bytes) -> set[str]:
    """The subscribed mailboxes of a Maildir's ``subscriptions`` file, as Postroom names.

    Version 2 (``V<TAB>2``, a blank line, then one name a line with TAB between
    levels) and the older one (one name a line, ``.`` between levels); levels
    are modified UTF-7 and an ``INBOX.`` namespace prefix is dropped.
    """
    lines = data.decode("utf-8", "replace").split("\n")
    separator = "."
    if lines and lines[0].startswith("V\t"):
        lines, separator = lines[1:], "\t"
    names: set[str] = set()
    for line in lines:
        parts = [p for p in line.rstrip("\r").split(separator) if p]
        if len(parts) > 1 and parts[0].upper() == "INBOX":
            parts = parts[1:]
        if parts and len(line) <= MAX_LINE:
            names.add("/".join(maildir.decode_level(p) for p in parts))
    return names


def file_base(filename: str) -> str:
    """The name Dovecot's uidlist knows a file by: everything before the ``:2,`` info."""
    return filename.split(":", 1)[0]


def file_flags(filename: str, keywords: dict[int, str]) -> list[str]:
    """System flags (S R F T D) and keywords (letters a-z) of a Maildir file name."""
    _, sep, info = filename.rpartition(maildir.INFO_SEPARATOR)
    flags = list(maildir.parse_flags(filename))
    if sep:
        for letter in sorted(set(info)):
            if "a" <= letter <= "z" and ord(letter) - ord("a") in keywords:
                flags.append(keywords[ord(letter) - ord("a")])
    return flags


# --- POP3 UIDLs ----------------------------------------------------------------------------------

_UIDL_VARIABLE = re.compile(r"%(0?)([0-9]{0,2})([XLU]*)(?:\{([a-z]+)\}|([a-z%]))")
_UIDL_NAMES = {"u": "uid", "v": "uidvalidity", "f": "filename", "g": "guid", "%": "%"}


def check_uidl_format(fmt: str) -> None:
    """DovecotFormatError unless every variable of ``fmt`` is one we can compute."""
    format_uidl(fmt, uid=1, uidvalidity=1, filename="x", guid="x")


def format_uidl(fmt: str, *, uid: int, uidvalidity: int, filename: str, guid: str) -> str:
    """What Dovecot's ``pop3_uidl_format`` gives for a message (``%08Xu%08Xv`` by default).

    Variables: ``%u`` uid, ``%v`` uidvalidity, ``%f`` file name base, ``%g``
    GUID (the base unless the uidlist gave one), also as ``%{uid}`` etc.
    Modifiers as Dovecot's var_expand: ``X`` hexadecimal (lower case, as
    Dovecot prints it), ``U``/``L`` upper/lower case, ``0N`` zero padding to N.
    ``%m`` (a header MD5) is not supported.
    """
    values: dict[str, int | str] = {"uid": uid, "uidvalidity": uidvalidity,
                                    "filename": filename, "guid": guid}

    def expand(match: re.Match[str]) -> str:
        zero, width, modifiers, long_name, short = match.groups()
        name = long_name or _UIDL_NAMES.get(short or "", "")
        if name == "%":
            return "%"
        if name not in values:
            raise DovecotFormatError(f"pop3_uidl_format variable {match.group(0)!r} "
                                     "is not supported")
        value = values[name]
        text = format(value, "x") if "X" in modifiers and isinstance(value, int) else str(value)
        if "U" in modifiers:
            text = text.upper()
        if "L" in modifiers:
            text = text.lower()
        if width:
            text = text.rjust(int(width), "0" if zero else " ")
        return text

    return _UIDL_VARIABLE.sub(expand, fmt)


# --- the import ----------------------------------------------------------------------------------

@dataclass
class DovecotImportResult:
    users_created: int = 0
    users_updated: int = 0
    users_kept: int = 0
    imported: int = 0
    skipped: int = 0
    uids_kept: int = 0
    uids_new: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"users: {self.users_created} created, {self.users_updated} hash updated, "
                f"{self.users_kept} kept; messages: {self.imported} imported "
                f"({self.uids_kept} with their old UID, {self.uids_new} with a new one), "
                f"{self.skipped} already here; {len(self.problems)} problem(s)")


@dataclass(frozen=True)
class _File:
    parts: maildir.Parts
    base: str
    uid: int | None
    extensions: dict[str, str]


def _read_small(root: str, parts: maildir.Parts) -> bytes | None:
    """A Dovecot index file inside the tree, when it exists and is not absurdly large."""
    try:
        fd = maildir.open_beneath(root, parts)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            log.warning("dovecot index file not a regular file, ignored",
                        path=os.path.join(root, *parts))
            return None
        data = handle.read(MAX_INDEX_FILE + 1)
    if len(data) > MAX_INDEX_FILE:
        log.warning("dovecot index file too large, ignored", path=os.path.join(root, *parts))
        return None
    return data


def _folder_files(root: str, folder: maildir.Parts,
                  uidlist: Uidlist | None) -> list[_File]:
    """The folder's files: those the uidlist knows by UID, then the others oldest first."""
    listed: list[_File] = []
    unlisted: list[_File] = []
    for parts in maildir.message_files(root, folder):
        base = file_base(parts[-1])
        known = uidlist.entries.get(base) if uidlist else None
        if known is None:
            unlisted.append(_File(parts, base, None, {}))
        else:
            listed.append(_File(parts, base, known.uid, known.extensions))
    listed.sort(key=lambda f: f.uid or 0)
    return listed + unlisted


def _uidl_for(file: _File, uidlist: Uidlist | None, uidl_format: str) -> str | None:
    if file.uid is None or uidlist is None:
        return None
    saved = file.extensions.get("P")  # pop3_save_uidl kept what an earlier server answered
    if saved and _UIDL_CHARS.fullmatch(saved):
        return saved
    uidl = format_uidl(uidl_format, uid=file.uid, uidvalidity=uidlist.uidvalidity,
                       filename=file.base, guid=file.extensions.get("G") or file.base)
    return uidl if _UIDL_CHARS.fullmatch(uidl) else None


def _already_here(file: _File, uidl: str | None, import_uidnext: int | None,
                  known_uidls: set[str]) -> bool:
    """Known without reading it: an earlier run took it (or it was deleted here since)."""
    if file.uid is not None and import_uidnext is not None and file.uid < import_uidnext:
        return True
    return uidl is not None and uidl in known_uidls


def import_maildir(database: Database, user_id: int, root: str, *, uidl_format: str,
                   result: DovecotImportResult, progress: Progress | None = None) -> None:
    """Import one account's Maildir tree at ``root`` (a real path)."""
    subscriptions_raw = _read_small(root, ("subscriptions",))
    subscribed = parse_subscriptions(subscriptions_raw) if subscriptions_raw else None
    for name, folder in maildir.folders(root):
        raw = _read_small(root, (*folder, "dovecot-uidlist"))
        uidlist: Uidlist | None = None
        if raw is not None:
            try:
                uidlist = parse_uidlist(raw)
            except DovecotFormatError as exc:
                result.problems.append(f"{os.path.join(root, *folder)}: dovecot-uidlist: {exc}")
        keywords_raw = _read_small(root, (*folder, "dovecot-keywords"))
        keywords = parse_keywords(keywords_raw) if keywords_raw else {}
        target = database.run_sync(imports.open_import_mailbox, user_id, name,
                                   uidlist.uidvalidity if uidlist else None)
        if uidlist is not None and not target.keep_uids:
            result.problems.append(f"{name}: had mail here already; imported with new UIDs "
                                   "(clients fetch this mailbox again)")
        count = 0
        batch: list[_Pending] = []
        batch_bytes = 0
        unlisted_digests = target.digests_without_uidl
        known_uidls = target.uidls
        for file in _folder_files(root, folder, uidlist):
            if progress is not None:
                progress.advance(name)
            uidl = _uidl_for(file, uidlist, uidl_format)
            if _already_here(file, uidl, target.import_uidnext, known_uidls):
                result.skipped += 1
                continue
            read = maildir.read_message(root, file.parts)
            if read is None:
                continue
            data, mtime = read
            data = to_crlf(data)
            if hashlib.sha256(data).hexdigest() in unlisted_digests:
                # imported before the uidlist knew it, under a UID of ours
                result.skipped += 1
                continue
            flags = file_flags(file.parts[-1], keywords) if file.parts[-2] == "cur" else []
            batch.append(_Pending(data, metadata_dict(analyze(data)), file.uid, flags,
                                  datetime.fromtimestamp(mtime, UTC), uidl,
                                  text_or_unreadable(data, database.fts_max_bytes)))
            batch_bytes += len(data)
            if len(batch) >= BATCH_MESSAGES or batch_bytes >= BATCH_BYTES:
                count += _flush(database, target, batch, result)
                batch, batch_bytes = [], 0
        count += _flush(database, target, batch, result)
        database.run_sync(imports.finish_import_mailbox, target,
                          uidlist.nextuid if uidlist else None)
        if subscribed is not None and target.name != "INBOX":
            # as the user had it on Dovecot (clients that show subscribed folders only)
            database.run_sync(subscribe, user_id, target.name, target.name in subscribed)
        result.imported += count
        log.info("mailbox imported", user_id=user_id, mailbox=name, imported=count,
                 uidvalidity=uidlist.uidvalidity if uidlist else None,
                 uids_kept=target.keep_uids)


@dataclass(frozen=True)
class _Pending:
    data: bytes
    metadata: dict[str, object]
    uid: int | None
    flags: list[str]
    internaldate: datetime
    uidl: str | None
    doc: MessageText | None = None


def _file_batch(session: Session, target: imports.ImportTarget,
                batch: list[_Pending]) -> list[int]:
    """Store and file ``batch`` in UID order, in one transaction; the UIDs given."""
    given = []
    for item in batch:
        message_id = messages.store_message(session, item.data, item.metadata, item.doc)
        given.append(imports.add_imported(session, target=target,
                                          message_id=message_id, uid=item.uid,
                                          flags=item.flags, internaldate=item.internaldate,
                                          pop3_uidl=item.uidl))
    return given


def _flush(database: Database, target: imports.ImportTarget,
           batch: list[_Pending], result: DovecotImportResult) -> int:
    if not batch:
        return 0
    given = database.run_sync(_file_batch, target, batch)
    for item, uid in zip(batch, given, strict=True):
        if item.uid is not None and uid == item.uid:
            result.uids_kept += 1
        else:
            result.uids_new += 1
    return len(batch)


def import_dovecot(database: Database, entries: Iterable[PasswdEntry], *,
                   mail_location: str | None = None, uidl_format: str = DEFAULT_UIDL_FORMAT,
                   with_mail: bool = True,
                   progress: Progress | None = None) -> DovecotImportResult:
    """Add each account with its hash, then import its Maildir (when it has one)."""
    check_uidl_format(uidl_format)
    result = DovecotImportResult()
    for entry in entries:
        imported = database.run_sync(users.import_user, entry.address, entry.password)
        outcome = imported.outcome
        if outcome == "created":
            result.users_created += 1
        elif outcome == "hash_updated":
            result.users_updated += 1
        else:
            result.users_kept += 1
        log.info("account imported", user=entry.address, outcome=outcome, scheme=entry.scheme)
        if not with_mail:
            continue
        path = maildir_of(entry, mail_location)
        if path is None or not os.path.isdir(path):
            result.problems.append(f"{entry.address}: no Maildir at {path or '(no home)'}")
            continue
        try:
            import_maildir(database, imported.info.id, os.path.realpath(path),
                           uidl_format=uidl_format, result=result, progress=progress)
        except maildir.NotAMaildir as exc:
            result.problems.append(f"{entry.address}: {exc}")
    return result
