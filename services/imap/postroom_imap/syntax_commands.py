"""Per-command argument grammars: tokens after ``tag NAME`` into the typed argument objects."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from postroom_imap.syntax_args import Args, mailbox_name, parse_date_time
from postroom_imap.syntax_fetch import parse_fetch_items
from postroom_imap.syntax_lexer import Atom, Str, SyntaxProblem, Token
from postroom_imap.syntax_search import check_charset, parse_search_keys
from postroom_imap.syntax_types import (
    Append,
    AppendMessage,
    Authenticate,
    CatText,
    CatUrl,
    Compress,
    Copy,
    Create,
    Enable,
    Expunge,
    Fetch,
    GetMetadata,
    Id,
    ListArgs,
    Login,
    MailboxArg,
    NoArgs,
    Qresync,
    QuotaRoot,
    Rename,
    Search,
    Select,
    SetMetadata,
    SetQuota,
    Sort,
    Status,
    Store,
    Thread,
)

STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ",
                "SIZE", "DELETED", "APPENDLIMIT")
SORT_KEYS = ("ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO")
THREAD_ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")
ESEARCH_RETURNS = ("MIN", "MAX", "ALL", "COUNT", "SAVE")
NO_ARGS = ("CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "CHECK", "CLOSE", "UNSELECT", "IDLE",
           "NAMESPACE")


def _no_args(args: Args) -> NoArgs:
    args.end()
    return NoArgs()


def _login(args: Args) -> Login:
    user = args.astring("user name")
    password = args.astring("password")
    args.end()
    return Login(user, password)


def _authenticate(args: Args) -> Authenticate:
    mechanism = args.atom("mechanism").upper()
    initial = None
    if args.more():
        initial = args.atom("initial response")
    args.end()
    return Authenticate(mechanism, initial)


def _select(args: Args) -> Select:
    mailbox = args.mailbox()
    params: tuple[object, ...] = ()
    condstore = False
    qresync = None
    if args.more():
        raw = args.list("select parameters")
        params = tuple(t.text.upper() if isinstance(t, Atom) else t for t in raw)
        condstore = "CONDSTORE" in params
        if "QRESYNC" in params:
            at = params.index("QRESYNC")
            if at + 1 >= len(raw) or not isinstance(raw[at + 1], list):
                raise SyntaxProblem("QRESYNC needs its parameters")
            qresync = _qresync(Args(cast(list[Token], raw[at + 1]), "QRESYNC parameters"))
    args.end()
    return Select(mailbox, condstore, params, qresync)


def _qresync(args: Args) -> Qresync:
    """``(uidvalidity modseq [known-uids [(seq-set uid-set)]])`` (RFC 7162 4)."""
    uidvalidity = args.number("uidvalidity")
    modseq = args.modseq()
    if uidvalidity == 0 or modseq == 0:
        raise SyntaxProblem("invalid QRESYNC parameters")
    known = args.sequence_set() if isinstance(args.peek(), Atom) else None
    seq_match = None
    if args.more():
        pair = Args(args.list("sequence match data"), "sequence match data")
        seq_match = (pair.sequence_set(), pair.sequence_set())
        pair.end()
    args.end()
    return Qresync(uidvalidity, modseq, known, seq_match)


def _mailbox(args: Args) -> MailboxArg:
    mailbox = args.mailbox()
    args.end()
    return MailboxArg(mailbox)


def _create(args: Args) -> Create:
    mailbox = args.mailbox(strict=True)
    uses: list[str] = []
    if args.more():
        params = Args(args.list("create parameters"), "create parameters")
        while params.more():
            name = params.atom("create parameter").upper()
            if name != "USE":
                raise SyntaxProblem("unknown CREATE parameter")
            uses.extend(params.flag_list())
    args.end()
    return Create(mailbox, tuple(uses))


def _rename(args: Args) -> Rename:
    old = args.mailbox()
    new = args.mailbox(strict=True)
    args.end()
    return Rename(old, new)


def _pattern(args: Args) -> str:
    # list-mailbox: wildcards are atom characters here; names are still modified UTF-7.
    data = args.astring_bytes("mailbox pattern")
    if data == b"":
        return ""
    return mailbox_name(data) if data.upper() != b"INBOX" else "INBOX"


def _atoms(items: list[Token], what: str) -> tuple[str, ...]:
    out = []
    for item in items:
        if isinstance(item, Atom):
            out.append(item.text.upper())
        elif isinstance(item, list):
            out.append("(" + " ".join(_atoms(item, what)) + ")")
        else:
            raise SyntaxProblem(f"invalid {what}")
    return tuple(out)


def _list(args: Args) -> ListArgs:
    selection: tuple[str, ...] = ()
    if isinstance(args.peek(), list):
        selection = _atoms(args.list(), "selection options")
    reference = args.astring("reference")
    if isinstance(args.peek(), list):
        patterns = []
        for tok in args.list("patterns"):
            patterns.append(_pattern(Args([tok])))
        if not patterns:
            raise SyntaxProblem("empty pattern list")
    else:
        patterns = [_pattern(args)]
    returns: tuple[str, ...] = ()
    if args.peek_atom() == "RETURN":
        args.pos += 1
        returns = _atoms(args.list("return options"), "return options")
    args.end()
    return ListArgs(reference, tuple(patterns), selection, returns)


# RFC 5464 3.2: entry names; "*" and "%" are reserved, "/" separates, no empty component
MAX_ENTRY_NAME = 1024
MAX_ENTRIES = 100


def metadata_entry(raw: bytes) -> str:
    """An entry name, lower-cased (entries are case-insensitive), or SyntaxProblem."""
    if not raw or len(raw) > MAX_ENTRY_NAME or not raw.isascii():
        raise SyntaxProblem("invalid metadata entry name")
    name = raw.decode("ascii").lower()
    if (any(c in "*%" or ord(c) < 0x20 or ord(c) == 0x7F for c in name)
            or "//" in name or name.endswith("/")
            or not (name.startswith("/private/") or name.startswith("/shared/"))):
        raise SyntaxProblem("invalid metadata entry name")
    return name


def _metadata_mailbox(args: Args) -> str:
    data = args.astring_bytes("mailbox name")
    return "" if data == b"" else mailbox_name(data)


def _metadata_options(args: Args, maxsize: int | None, depth: str) -> tuple[int | None, str]:
    options = Args(args.list("GETMETADATA options"), "GETMETADATA options")
    while options.more():
        option = options.atom("GETMETADATA option").upper()
        if option == "MAXSIZE":
            maxsize = options.number("MAXSIZE")
        elif option == "DEPTH":
            depth = options.atom("DEPTH").lower()
            if depth not in ("0", "1", "infinity"):
                raise SyntaxProblem("DEPTH is 0, 1 or infinity")
        else:
            raise SyntaxProblem("unknown GETMETADATA option")
    return maxsize, depth


def _is_options(tok: Token | None) -> bool:
    return (isinstance(tok, list) and bool(tok) and isinstance(tok[0], Atom)
            and tok[0].text.upper() in ("MAXSIZE", "DEPTH"))


def _getmetadata(args: Args) -> GetMetadata:
    maxsize: int | None = None
    depth = "0"
    if isinstance(args.peek(), list):
        maxsize, depth = _metadata_options(args, maxsize, depth)
    mailbox = _metadata_mailbox(args)
    # RFC 5464's own examples put the options after the mailbox (errata 2785): take both
    if _is_options(args.peek()) and args.pos + 1 < len(args.tokens):
        maxsize, depth = _metadata_options(args, maxsize, depth)
    if isinstance(args.peek(), list):
        names = [metadata_entry(Args([t]).astring_bytes("entry")) for t in args.list("entries")]
    else:
        names = [metadata_entry(args.astring_bytes("entry"))]
    args.end()
    if not names or len(names) > MAX_ENTRIES:
        raise SyntaxProblem(f"GETMETADATA takes 1 to {MAX_ENTRIES} entries")
    return GetMetadata(mailbox, tuple(dict.fromkeys(names)), maxsize, depth)


def _setmetadata(args: Args) -> SetMetadata:
    mailbox = _metadata_mailbox(args)
    pairs = Args(args.list("entry values"), "entry values")
    args.end()
    entries: dict[str, bytes | None] = {}
    while pairs.more():
        name = metadata_entry(pairs.astring_bytes("entry"))
        if pairs.peek_atom() == "NIL":
            pairs.pos += 1
            entries[name] = None
            continue
        value = pairs.next("entry value")
        if not isinstance(value, Str) or value.spooled is not None:
            raise SyntaxProblem("expected an entry value (string, literal or NIL)")
        entries[name] = value.data
    if not entries or len(entries) > MAX_ENTRIES:
        raise SyntaxProblem(f"SETMETADATA takes 1 to {MAX_ENTRIES} entries")
    return SetMetadata(mailbox, tuple(entries.items()))


def _status(args: Args) -> Status:
    mailbox = args.mailbox()
    items = _atoms(args.list("status items"), "status items")
    if not items or any(i not in STATUS_ITEMS for i in items):
        raise SyntaxProblem("invalid status item")
    args.end()
    return Status(mailbox, items)


def _append(args: Args) -> Append:
    mailbox = args.mailbox()
    messages: list[AppendMessage] = []
    while args.more() or not messages:
        flags: tuple[str, ...] = ()
        when = None
        if isinstance(args.peek(), list):
            flags = args.flag_list()
        tok = args.peek()
        if isinstance(tok, Str) and not tok.literal:
            args.pos += 1
            when = parse_date_time(tok.data.decode("ascii", "replace"))
        if args.peek_atom() == "CATENATE":
            args.pos += 1
            messages.append(AppendMessage(flags, when, b"", False, _catenate(args)))
            continue
        tok = args.next("message literal")
        if not isinstance(tok, Str) or not tok.literal:
            raise SyntaxProblem("APPEND needs the message as a literal")
        data = tok.data if tok.spooled is None else tok.spooled
        messages.append(AppendMessage(flags, when, data, tok.binary))
    return Append(mailbox, tuple(messages))


def _catenate(args: Args) -> tuple[CatText | CatUrl, ...]:
    """``(TEXT literal / URL astring ...)`` of RFC 4469."""
    items = Args(args.list("CATENATE parts"), "CATENATE parts")
    parts: list[CatText | CatUrl] = []
    while items.more():
        kind = items.atom("TEXT or URL").upper()
        if kind == "TEXT":
            tok = items.next("text literal")
            if not isinstance(tok, Str) or not tok.literal:
                raise SyntaxProblem("CATENATE TEXT needs a literal")
            parts.append(CatText(tok.data if tok.spooled is None else tok.spooled))
        elif kind == "URL":
            parts.append(CatUrl(items.astring("URL")))
        else:
            raise SyntaxProblem("CATENATE parts are TEXT or URL")
    if not parts:
        raise SyntaxProblem("empty CATENATE")
    return tuple(parts)


def _search_prefix(args: Args) -> tuple[tuple[str, ...] | None, str | None]:
    returns = None
    if args.peek_atom() == "RETURN":
        args.pos += 1
        returns = _atoms(args.list("return options"), "return options")
        if any(r not in ESEARCH_RETURNS for r in returns):
            raise SyntaxProblem("unknown RETURN option")
        returns = returns or ("ALL",)
    charset = None
    if args.peek_atom() == "CHARSET":
        args.pos += 1
        charset = check_charset(args.astring("charset"))
    return returns, charset


def _search(args: Args) -> Search:
    returns, charset = _search_prefix(args)
    key = parse_search_keys(args, charset or "utf-8")
    return Search(key, charset, returns)


def _sort(args: Args) -> Sort:
    criteria = _atoms(args.list("sort criteria"), "sort criteria")
    if not criteria or criteria[-1] == "REVERSE":
        raise SyntaxProblem("invalid sort criteria")
    for i, c in enumerate(criteria):
        if c not in SORT_KEYS and not (c == "REVERSE" and criteria[i + 1] != "REVERSE"):
            raise SyntaxProblem("invalid sort criteria")
    charset = check_charset(args.astring("charset"))
    return Sort(criteria, charset, parse_search_keys(args, charset))


def _thread(args: Args) -> Thread:
    algorithm = args.atom("threading algorithm").upper()
    if algorithm not in THREAD_ALGORITHMS:
        raise SyntaxProblem("unknown threading algorithm")
    charset = check_charset(args.astring("charset"))
    return Thread(algorithm, charset, parse_search_keys(args, charset))


def _fetch(args: Args) -> Fetch:
    sequence = args.sequence_set()
    items, macro = parse_fetch_items(args)
    changedsince = None
    vanished = False
    if args.more():
        mods = Args(args.list("fetch modifiers"), "fetch modifiers")
        while mods.more():
            name = mods.atom("fetch modifier").upper()
            if name == "CHANGEDSINCE":
                changedsince = mods.modseq()
            elif name == "VANISHED":
                vanished = True
            else:
                raise SyntaxProblem("unknown fetch modifier")
    args.end()
    return Fetch(sequence, items, changedsince, vanished, macro)


def _store(args: Args) -> Store:
    sequence = args.sequence_set()
    unchangedsince = None
    if isinstance(args.peek(), list):
        mods = Args(args.list(), "store modifiers")
        while mods.more():
            if mods.atom("store modifier").upper() != "UNCHANGEDSINCE":
                raise SyntaxProblem("unknown store modifier")
            unchangedsince = mods.modseq()
    action = args.atom("store action").upper()
    silent = action.endswith(".SILENT")
    action = action.removesuffix(".SILENT")
    mode = action[0] if action[:1] in ("+", "-") else ""
    if action.lstrip("+-") != "FLAGS" or len(action) - len(action.lstrip("+-")) > 1:
        raise SyntaxProblem("invalid store action")
    if isinstance(args.peek(), list):
        flags = args.flag_list()
    else:
        items = []
        while args.more():
            items.append(args.flag())
        flags = tuple(items)
    args.end()
    return Store(sequence, mode, silent, flags, unchangedsince)


def _copy(args: Args) -> Copy:
    sequence = args.sequence_set()
    mailbox = args.mailbox()
    args.end()
    return Copy(sequence, mailbox)


def _expunge(args: Args) -> Expunge:
    args.end()
    return Expunge()


def _uid_expunge(args: Args) -> Expunge:
    sequence = args.sequence_set()
    args.end()
    return Expunge(sequence)


def _enable(args: Args) -> Enable:
    caps = []
    while args.more():
        caps.append(args.atom("capability").upper())
    if not caps:
        raise SyntaxProblem("ENABLE needs a capability")
    return Enable(tuple(caps))


def _id(args: Args) -> Id:
    if args.peek_atom() == "NIL":
        args.pos += 1
        args.end()
        return Id(None)
    items = Args(args.list("ID parameters"), "ID parameters")
    pairs: list[tuple[str, str | None]] = []
    while items.more():
        if len(pairs) >= 30:
            raise SyntaxProblem("too many ID fields")  # RFC 2971 section 3.3
        key = items.string("ID field name")
        pairs.append((key, items.nstring("ID field value")))
    args.end()
    return Id(tuple(pairs))


def _getquota(args: Args) -> QuotaRoot:
    root = args.astring("quota root")
    args.end()
    return QuotaRoot(root)


def _setquota(args: Args) -> SetQuota:
    root = args.astring("quota root")
    items = Args(args.list("quota limits"), "quota limits")
    limits = []
    while items.more():
        limits.append((items.atom("resource").upper(), items.number("limit", 2**63 - 1)))
    args.end()
    return SetQuota(root, tuple(limits))


def _compress(args: Args) -> Compress:
    mechanism = args.atom("compression mechanism").upper()
    args.end()
    return Compress(mechanism)


COMMANDS: dict[str, Callable[[Args], object]] = {
    **{name: _no_args for name in NO_ARGS},
    "EXPUNGE": _expunge,
    "LOGIN": _login,
    "AUTHENTICATE": _authenticate,
    "SELECT": _select,
    "EXAMINE": _select,
    "CREATE": _create,
    "DELETE": _mailbox,
    "RENAME": _rename,
    "SUBSCRIBE": _mailbox,
    "UNSUBSCRIBE": _mailbox,
    "LIST": _list,
    "LSUB": _list,
    "STATUS": _status,
    "APPEND": _append,
    "SEARCH": _search,
    "SORT": _sort,
    "THREAD": _thread,
    "FETCH": _fetch,
    "STORE": _store,
    "COPY": _copy,
    "MOVE": _copy,
    "ENABLE": _enable,
    "GETMETADATA": _getmetadata,
    "SETMETADATA": _setmetadata,
    "ID": _id,
    "GETQUOTA": _getquota,
    "GETQUOTAROOT": _mailbox,
    "SETQUOTA": _setquota,
    "COMPRESS": _compress,
}

UID_COMMANDS: dict[str, Callable[[Args], object]] = {
    "FETCH": _fetch,
    "SEARCH": _search,
    "SORT": _sort,
    "THREAD": _thread,
    "STORE": _store,
    "COPY": _copy,
    "MOVE": _copy,
    "EXPUNGE": _uid_expunge,
}
