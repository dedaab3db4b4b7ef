"""Server-side prepared statements for the per-message paths (docs/decisions/0006).

psycopg2 sends every statement as text, so PostgreSQL parses and plans it on
every execution. For the multi-join statements of the hot paths, planning
costs more than running: the mda's lock-and-read statement plans in about
1.3 ms and runs in 0.5 ms. A :class:`Prepared` statement is PREPAREd once per
database connection, on first use, and EXECUTEd by name after; from the sixth
execution PostgreSQL keeps a generic plan and plans no more (the statements
here look rows up by key, where the generic plan is the custom one).

The statement text is written with psycopg2's ``%(name)s`` placeholders, as
for ``exec_driver_sql``; each distinct name becomes one ``$n`` parameter.
Which statements a connection holds is remembered in the pool's record of
that connection (``PoolProxiedConnection.info``), which SQLAlchemy clears
when the connection is replaced, so a reconnect prepares again. PREPARE is
not transactional: a rollback after it keeps the statement. A migration that
changes a table the statement uses makes PostgreSQL replan it by itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from psycopg2 import Error as DriverError
from sqlalchemy import Connection, exc

_PARAM = re.compile(r"%\((\w+)\)s")
_INFO_KEY = "postroom_prepared"
# set on a pooled connection's info while Database.run_core_then's transaction runs on it
# in psycopg2's autocommit, its BEGIN sent with the first statement (decision 0036): "begin"
# until that statement goes, then "open"
CORE_TX_KEY = "postroom_core_tx"


class Prepared:
    """One statement, prepared per connection on first use and executed by name."""

    def __init__(self, name: str, sql: str) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ValueError(f"bad prepared statement name {name!r}")
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match.group(1) not in names:
                names.append(match.group(1))
            return f"${names.index(match.group(1)) + 1}"

        body = _PARAM.sub(number, sql).replace("%%", "%")
        self.name = f"postroom_{name}"
        self.params = tuple(names)
        self.prepare_sql = f"PREPARE {self.name} AS {body}"
        args = ", ".join(f"%({n})s" for n in names)
        self.execute_sql = f"EXECUTE {self.name} ({args})" if names else f"EXECUTE {self.name}"

    def execute(self, connection: Connection, params: Mapping[str, Any]) -> Any:
        """EXECUTE on ``connection`` (PREPARE first if this connection has not yet).

        A CursorResult; typed Any because its rows are read by position, which the
        untyped ``CursorResult[Any]`` makes mypy refuse (``Tuple index out of range``).
        """
        info = connection.connection.info
        held: set[str] = info.setdefault(_INFO_KEY, set())
        state = info.get(CORE_TX_KEY)
        if state == "open":
            return self._on_cursor(connection, params, held)
        if state == "begin":
            # the transaction's first statement: its BEGIN in front, as the engine hook
            # would put it (``Database._attempt_core``), on the driver's cursor too
            return self._on_cursor(connection, params, held, begin=True)
        if self.name not in held:
            connection.exec_driver_sql(self.prepare_sql)
            held.add(self.name)
        return connection.exec_driver_sql(self.execute_sql, dict(params))

    def _on_cursor(self, connection: Connection, params: Mapping[str, Any],
                   held: set[str], begin: bool = False) -> Rows:
        """``execute`` inside ``Database.run_core_then``'s transaction: on the driver's
        cursor, without SQLAlchemy's execution context and result (decision 0036). With
        ``begin``, the transaction's first statement: ``BEGIN; `` goes in front of the
        EXECUTE (a PREPARE goes alone, before it: it is not transactional), and the
        connection's state becomes "open" before it is sent, as the engine hook does for
        a statement sent through SQLAlchemy. A driver error is translated as SQLAlchemy
        would (its exception classes; a disconnect invalidates the connection and says
        so, which the caller's retry reads); the transaction is then rolled back by the
        caller, so no statement runs twice."""
        fairy = connection.connection
        dbapi_connection: Any = fairy.dbapi_connection
        statement = self.prepare_sql
        try:
            cursor = dbapi_connection.cursor()
            try:
                if self.name not in held:
                    cursor.execute(statement)
                    held.add(self.name)
                statement = self.execute_sql
                if begin:
                    fairy.info[CORE_TX_KEY] = "open"
                    statement = "BEGIN; " + statement
                cursor.execute(statement, params)
                rows = cursor.fetchall() if cursor.description is not None else []
                return Rows(rows, cursor.rowcount)
            finally:
                cursor.close()
        except DriverError as error:
            raise driver_error(connection, statement, dict(params), error) from error

    def read_rows(self, connection: Connection, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """The rows of an autocommit read as the driver's tuples, without SQLAlchemy's
        execution context and result objects (about 60 µs of CPU a statement, as much as
        psycopg2's own work for IMAP's SELECT; docs/decisions/0033).

        On the pooled connection's DB-API cursor, as ``execute`` would run it. Any driver
        error runs the statement once more through :meth:`execute`, whose error handling
        tells a dead connection apart and invalidates it, so ``Database``'s retry and
        error translation are exactly those of ``execute``. That second run is harmless
        only outside a transaction (a read that committed by itself, or never ran), so
        inside one (psycopg2 not in autocommit: a failed statement aborts the
        transaction) this is ``execute`` from the start.
        """
        fairy = connection.connection
        dbapi_connection: Any = fairy.dbapi_connection
        if (dbapi_connection is None or not dbapi_connection.autocommit
                or CORE_TX_KEY in fairy.info):
            return [tuple(r) for r in self.execute(connection, params)]
        held: set[str] = fairy.info.setdefault(_INFO_KEY, set())
        try:
            cursor = dbapi_connection.cursor()
            try:
                if self.name not in held:
                    cursor.execute(self.prepare_sql)
                    held.add(self.name)
                cursor.execute(self.execute_sql, params)
                rows: list[tuple[Any, ...]] = cursor.fetchall()
            finally:
                cursor.close()
        except Exception:  # noqa: BLE001 - any driver error: SQLAlchemy's path decides
            return [tuple(r) for r in self.execute(connection, params)]
        return rows


def driver_error(connection: Connection, statement: str, params: dict[str, Any] | None,
                 error: DriverError) -> exc.StatementError:
    """A psycopg2 error from a statement sent on the driver's cursor, as SQLAlchemy would
    raise it (its exception classes); a disconnect invalidates ``connection`` and says so,
    which ``Database``'s retry reads (decision 0036)."""
    dbapi_connection: Any = connection.connection.dbapi_connection
    dialect = connection.dialect
    lost = bool(dialect.is_disconnect(error, dbapi_connection, None))
    if lost:
        connection.invalidate(error)
    return exc.DBAPIError.instance(statement, params, error, DriverError,
                                   connection_invalidated=lost, dialect=dialect)


class Rows:
    """The rows of a statement run on the driver's cursor (tuples), with the part of
    SQLAlchemy's result that the store's callers use."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[tuple[Any, ...]], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def __iter__(self) -> Any:
        return iter(self._rows)

    def all(self) -> list[tuple[Any, ...]]:
        return self._rows

    def first(self) -> tuple[Any, ...] | None:
        return self._rows[0] if self._rows else None

    def one(self) -> tuple[Any, ...]:
        if not self._rows:
            raise exc.NoResultFound("No row was found when one was required")
        if len(self._rows) > 1:
            raise exc.MultipleResultsFound("Multiple rows were found when exactly one was required")
        return self._rows[0]

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalars(self) -> Any:
        return iter([r[0] for r in self._rows])
