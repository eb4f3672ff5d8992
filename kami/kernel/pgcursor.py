"""PostgreSQL: `Prepared` statements sent through libpq itself, not psycopg's cursor
(decision 0016).

psycopg's cursor runs each statement through a stack of Python generators (query conversion,
its prepared-statement manager, the transaction check, the wait loop, result bookkeeping). On
this machine that came to 73–80 µs of CPU and 144 µs of wall per one-row statement, against
28–31 µs and 80–93 µs for the same prepared statement through `pgconn.exec_prepared`, and a
purchase on PostgreSQL runs some twenty such statements. What psycopg does that matters is
kept, by using its own parts: its adapters turn parameters into bytes and result columns into
Python values (`Transformer`, the same dumpers and loaders the cursor uses, including those
SQLAlchemy registered on the connection), its error classes report failures
(`errors.error_from_result`), and libpq's own transaction status says when to BEGIN, so psycopg's
`commit()` and `rollback()` see what happened. libpq lets go of the GIL while it waits.

A statement is prepared on its connection the first time it is run there, under a name of its
own, for the parameter types it is run with (psycopg keys its own cache the same way).
`executemany` goes to psycopg's cursor.

A transaction's BEGIN goes out with its first statement, in one round trip (libpq's pipeline
mode), where it was a round trip of its own: one of the eight to ten that a checkout or a
payment made, each of which a server process's event loop waits for (decision 0021).
"""

from __future__ import annotations

import itertools
import re
import select
from collections.abc import Sequence
from typing import Any
from weakref import WeakKeyDictionary

from psycopg import errors, pq
from psycopg.adapt import PyFormat, Transformer

_PLACEHOLDER = re.compile(r"%%|%s")
# Names are never reused: after a partial DEALLOCATE some old ones may still exist on the server.
_NAMES = itertools.count()
_OK = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK)
# Per connection: the statements prepared on it, by SQL and parameter types, and their names.
_PREPARED: WeakKeyDictionary[Any, dict[tuple[bytes, tuple[int, ...]], bytes]] = WeakKeyDictionary()


def numbered(sql: str) -> bytes:
    """psycopg's `%s` placeholders as libpq's `$1`, `$2` …, and `%%` as `%`."""
    counter = 0

    def placeholder(match: re.Match[str]) -> str:
        nonlocal counter
        if match.group(0) == "%%":
            return "%"
        counter += 1
        return f"${counter}"

    return _PLACEHOLDER.sub(placeholder, sql).encode()


class LeanCursor:
    """The part of a DB-API cursor that `Prepared` uses: execute, fetchall, rowcount,
    executemany, on one psycopg connection used by one thread at a time."""

    __slots__ = ("_conn", "_encoding", "_names", "_queries", "_result", "_tx", "rowcount")

    def __init__(self, conn: Any) -> None:
        # psycopg answers every ROLLBACK with DEALLOCATE ALL once it has prepared statements of
        # its own on the connection, which would take ours with them; the engine opens every
        # connection with psycopg's preparing off (`engine.make_engine`), so a pooled one that a
        # nested session used has none either. Set here too for a connection made elsewhere.
        # A statement's server-side plan survives a rollback in PostgreSQL.
        conn.prepare_threshold = None
        self._conn = conn
        self._tx = Transformer(conn)
        self._encoding = conn.info.encoding
        self._queries: dict[str, tuple[bytes, list[PyFormat]]] = {}
        # The names live as long as the connection, which the pool may hand to another cursor.
        self._names = _PREPARED.setdefault(conn, {})
        self._result: pq.abc.PGresult | None = None
        self.rowcount = -1

    @property
    def connection(self) -> Any:
        return self._conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        query = self._queries.get(sql)
        if query is None:
            query = self._queries[sql] = (numbered(sql), [PyFormat.AUTO] * len(params))
        text, formats = query
        tx = self._tx
        values = tx.dump_sequence(params, formats)
        types = tx.types or ()  # set by dump_sequence
        key = (text, types)
        pgconn = self._conn.pgconn
        self._result = None
        name = self._names.get(key) or self._prepare(key)
        idle = pgconn.transaction_status == pq.TransactionStatus.IDLE
        # A plain BEGIN: Kami sets no isolation level, read-only or deferrable on a connection.
        begin = idle and not self._conn.autocommit
        try:
            if begin:
                result = self._begin_with(name, values, tx.formats)
            else:
                result = self._check(pgconn.exec_prepared(name, values, param_formats=tx.formats))
        except errors.InvalidSqlStatementName:
            # Deallocated behind our back (DEALLOCATE or DISCARD ALL sent by someone else): all
            # are prepared again. Outside a transaction nothing was spoilt, so it runs again, once.
            self._names.clear()
            if begin or not idle:
                raise
            name = self._prepare(key)
            result = self._check(pgconn.exec_prepared(name, values, param_formats=tx.formats))
        self._set(result)

    def _set(self, result: pq.abc.PGresult) -> None:
        self._result = result
        if result.status == pq.ExecStatus.TUPLES_OK:
            self.rowcount = result.ntuples
        else:
            count = result.command_tuples
            self.rowcount = count if count is not None else -1

    def _begin_with(
        self, name: bytes, values: Sequence[Any], formats: Sequence[Any] | None
    ) -> pq.abc.PGresult:
        """BEGIN and the prepared statement `name`, sent together and answered together; the
        statement's result. A failed BEGIN raises its own error (the statement then did not
        run); a failed statement raises its error inside the begun transaction, as when the
        two went one after the other."""
        pgconn = self._conn.pgconn
        pgconn.enter_pipeline_mode()
        try:
            pgconn.send_query_params(b"BEGIN", None)
            pgconn.send_query_prepared(name, values, param_formats=formats)
            pgconn.pipeline_sync()
            self._flush()
            results = self._results_to_sync()
        finally:
            if pgconn.pipeline_status != pq.PipelineStatus.OFF:
                try:
                    pgconn.exit_pipeline_mode()
                except errors.OperationalError:
                    pgconn.finish()  # stuck in pipeline mode: closed, so the pool drops it
        begun, result = results
        self._check(begun)
        return self._check(result)

    def _flush(self) -> None:
        """Send all that libpq holds (psycopg's connections are non-blocking)."""
        pgconn = self._conn.pgconn
        while pgconn.flush():
            select.select([], [pgconn.socket], [])

    def _results_to_sync(self) -> list[pq.abc.PGresult]:
        """The results of a pipeline up to its sync, one per statement. It waits for them in
        `select`, which lets go of the GIL (libpq's `PQgetResult` would wait holding it, and a
        thread whose transaction this one waits for could then never finish)."""
        pgconn = self._conn.pgconn
        results: list[pq.abc.PGresult] = []
        ended = False
        while True:
            while pgconn.is_busy():
                select.select([pgconn.socket], [], [])
                pgconn.consume_input()
            result = pgconn.get_result()
            if result is None:
                if ended:  # nothing more is coming: the connection is gone
                    message = pgconn.get_error_message(self._encoding)
                    raise errors.OperationalError(message or "the connection was lost")
                ended = True  # the end of one statement's results
                continue
            ended = False
            if result.status == pq.ExecStatus.PIPELINE_SYNC:
                return results
            results.append(result)

    def fetchall(self) -> list[tuple[Any, ...]]:
        result, self._result = self._result, None
        if result is None or result.status != pq.ExecStatus.TUPLES_OK:
            raise errors.ProgrammingError("the last statement returned no rows")
        tx = self._tx
        tx.set_pgresult(result)
        rows: list[tuple[Any, ...]] = tx.load_rows(0, result.ntuples, tuple)
        tx.set_pgresult(None)
        return rows

    def executemany(self, sql: str, params_seq: Sequence[Sequence[Any]]) -> None:
        with self._conn.cursor() as cursor:
            cursor.executemany(sql, params_seq)
            self.rowcount = cursor.rowcount

    def _prepare(self, key: tuple[bytes, tuple[int, ...]]) -> bytes:
        name = f"kami_{next(_NAMES)}".encode()
        self._check(self._conn.pgconn.prepare(name, key[0], param_types=key[1]))
        self._names[key] = name
        return name

    def _check(self, result: pq.abc.PGresult) -> pq.abc.PGresult:
        if result.status not in _OK:
            pgconn = self._conn.pgconn
            if pgconn.status == pq.ConnStatus.BAD and not result.error_field(
                pq.DiagnosticField.SQLSTATE
            ):  # the connection is gone: OperationalError, as psycopg's cursor says
                message = pgconn.get_error_message(self._encoding) or "the connection was lost"
                raise errors.OperationalError(message)
            raise errors.error_from_result(result, encoding=self._encoding)
        return result
