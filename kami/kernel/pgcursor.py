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
own, for the parameter types it is run with (psycopg keys its own cache the same way), in the
same round trip as that first run: a server process's first minute (a flash sale's first
wave, on a fresh start) made two dozen such preparations per process, each a round trip of its
own that the event loop waited for (decision 0024). `executemany` goes to psycopg's cursor.

A transaction's BEGIN goes out with its first statement, in one round trip (libpq's pipeline
mode), where it was a round trip of its own: one of the eight to ten that a checkout or a
payment made, each of which a server process's event loop waits for. So do the statements
whose answer nobody reads (`execute_later`: the delivery rows, the mail job, the notification's
record): they go out with the transaction's next statement or with its COMMIT, in order, and a
failure among them is raised there and fails the transaction (decision 0021).
"""

from __future__ import annotations

import itertools
import re
import select
import weakref
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
# Per connection: the LeanCursor that may hold statements for it (`send_kept`), weakly both
# ways (the cursor holds its connection).
_CURSORS: WeakKeyDictionary[Any, weakref.ref[LeanCursor]] = WeakKeyDictionary()
# A statement bound for its connection: its SQL, prepared name, parameters and their formats.
_Bound = tuple[str, bytes, Sequence[Any], Sequence[Any] | None]


def send_kept(conn: Any) -> None:
    """Send the statements kept for later on `conn` (`LeanCursor.execute_later`), if any: for
    whatever runs on the connection without the LeanCursor (SQLAlchemy's own statements, an
    import's COPY-like batches), so that they run in the order they were made."""
    ref = _CURSORS.get(conn)
    cursor = ref() if ref is not None else None
    if cursor is not None and cursor.keeps:
        cursor.send_kept()


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


def _wait(fd: int, events: int) -> int:
    """Wait until the socket `fd` is ready for `events`; the events it is ready for. `poll`, not
    `select`, which refuses a descriptor past 1023 (a server process with a thousand buyers'
    connections open has such)."""
    poller = select.poll()
    poller.register(fd, events | select.POLLERR | select.POLLHUP)
    while True:
        ready = poller.poll()
        if ready:
            return ready[0][1]


class LeanCursor:
    """The part of a DB-API cursor that `Prepared` uses: execute, fetchall, rowcount,
    executemany, on one psycopg connection used by one thread at a time."""

    __slots__ = (
        "__weakref__",
        "_conn",
        "_encoding",
        "_kept",
        "_names",
        "_pending",
        "_queries",
        "_result",
        "_tx",
        "failed_sql",
        "rowcount",
    )

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
        # Statements bound but not yet prepared on the server: they are prepared in the round
        # trip that first runs them (`_together`), and named in `_names` once that succeeded.
        self._pending: dict[tuple[bytes, tuple[int, ...]], tuple[bytes, str]] = {}
        self._result: pq.abc.PGresult | None = None
        self.rowcount = -1
        self._kept: list[_Bound] = []  # `execute_later`'s, in order
        # The SQL of the statement kept for later, or of the preparation, whose failure was
        # raised last, None when it was the statement being executed (for the error's report).
        self.failed_sql: str | None = None
        _CURSORS[conn] = weakref.ref(self)

    @property
    def connection(self) -> Any:
        return self._conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.failed_sql = None
        _, name, values, formats = bound = self._bind(sql, params)
        pgconn = self._conn.pgconn
        self._result = None
        idle = pgconn.transaction_status == pq.TransactionStatus.IDLE
        # A plain BEGIN: Kami sets no isolation level, read-only or deferrable on a connection.
        begin = idle and not self._conn.autocommit
        alone = not self._kept  # no statement kept for later goes out with it
        try:
            if begin or not alone or self._pending:  # with its BEGIN, or its preparation
                result = self._together([bound])[0]
            else:
                result = self._check(pgconn.exec_prepared(name, values, param_formats=formats))
        except errors.InvalidSqlStatementName:
            # Deallocated behind our back (DEALLOCATE or DISCARD ALL sent by someone else): all
            # are prepared again. Outside a transaction nothing was spoilt, and a transaction
            # this statement began had nothing else in it (BEGIN and the statement: it is rolled
            # back; preparations that went with it are not part of it), so it runs again, once.
            # Inside a transaction begun before, it cannot.
            self._names.clear()
            if not (idle and alone):
                raise
            if begin:  # before preparing again, which a failed transaction would refuse
                self._check(pgconn.exec_(b"ROLLBACK"))
            result = self._together([self._bind(sql, params)])[0]  # prepared with it
        assert result is not None
        self._set(result)

    def execute_all(
        self, statements: Sequence[tuple[str, Sequence[Any]]]
    ) -> list[tuple[list[tuple[Any, ...]], int]]:
        """Run each (SQL, parameters) in order, all in one round trip (with BEGIN, and the
        statements kept for later, before them); each one's rows (empty for a statement that
        returns none) and row count. Each runs after the one before has finished, and at READ
        COMMITTED sees what was committed until it starts. The first failure is raised, and
        what follows it is not run, as when they went one after the other."""
        self.failed_sql = None
        self._result = None
        if not statements:
            return []
        results = self._together([self._bind(sql, params) for sql, params in statements])
        answers = []
        for result in results:
            self._set(result)
            rows = self.fetchall() if result.status == pq.ExecStatus.TUPLES_OK else []
            answers.append((rows, self.rowcount))
        return answers

    def execute_later(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Keep a statement whose answer nobody reads (no rows, no row count) to go out with the
        transaction's next statement or its COMMIT, in the same round trip. Its failure is
        raised there, and the transaction fails with it. In autocommit it runs now."""
        self.failed_sql = None
        if self._conn.autocommit:
            self.execute(sql, params)
            return
        self._kept.append(self._bind(sql, params))

    @property
    def keeps(self) -> bool:
        """Whether statements are kept for later."""
        return bool(self._kept)

    def send_kept(self) -> None:
        """Send the statements kept for later now (before a statement that does not come
        through this cursor), and raise the first failure among them."""
        self.failed_sql = None
        if self._kept:
            self._together([])

    def commit(self) -> bool:
        """COMMIT, with the statements kept for later sent before it in the same round trip;
        False (nothing done) when none are kept: the caller commits as usual."""
        self.failed_sql = None
        if not self._kept:
            return False
        self._together([], commit=True)
        return True

    def forget_kept(self) -> None:
        """The transaction is rolled back: what was kept for it is dropped, and so are the
        preparations it would have sent with them (a statement bound again is prepared with
        its next run; one prepared in a rolled-back transaction stays prepared)."""
        self._kept.clear()
        self._pending.clear()

    def _bind(self, sql: str, params: Sequence[Any]) -> _Bound:
        query = self._queries.get(sql)
        if query is None:
            query = self._queries[sql] = (numbered(sql), [PyFormat.AUTO] * len(params))
        text, formats = query
        tx = self._tx
        values = tx.dump_sequence(params, formats)
        types = tx.types or ()  # set by dump_sequence
        key = (text, types)
        name = self._names.get(key)
        if name is None:
            pending = self._pending.get(key)
            if pending is None:
                pending = self._pending[key] = (f"kami_{next(_NAMES)}".encode(), sql)
            name = pending[0]
        return sql, name, values, list(tx.formats) if tx.formats is not None else None

    def _set(self, result: pq.abc.PGresult) -> None:
        self._result = result
        if result.status == pq.ExecStatus.TUPLES_OK:
            self.rowcount = result.ntuples
        else:
            count = result.command_tuples
            self.rowcount = count if count is not None else -1

    def _together(self, last: Sequence[_Bound], *, commit: bool = False) -> list[pq.abc.PGresult]:
        """In one round trip (libpq's pipeline mode): BEGIN if no transaction is open and the
        connection is not in autocommit, the preparations of statements not yet prepared on
        the connection, the statements kept for later, then those of `last`,
        then COMMIT if asked; the results of `last`'s. The first failure is raised, with
        `failed_sql` naming a kept statement or a preparation that failed; what follows a
        failure is not run,
        and the transaction is left failed, as when they went one after the other."""
        kept, self._kept = self._kept, []
        preparing, self._pending = self._pending, {}
        pgconn = self._conn.pgconn
        sent: list[str | None] = []  # per statement: its SQL if kept or prepared, else None
        pgconn.enter_pipeline_mode()
        try:
            if pgconn.transaction_status == pq.TransactionStatus.IDLE and not self._conn.autocommit:
                pgconn.send_query_params(b"BEGIN", None)  # first: with a preparation before it,
                sent.append(None)  # a rollback left the statements after it in place (tested)
            # The preparations; one that succeeded stays, whatever becomes of the transaction
            # (PostgreSQL does not roll a preparation back).
            for (text, types), (name, sql) in preparing.items():
                pgconn.send_prepare(name, text, param_types=types)
                sent.append(sql)
            for sql, name, values, formats in kept:
                pgconn.send_query_prepared(name, values, param_formats=formats)
                sent.append(sql)
            first_last = len(sent)
            for _, name, values, formats in last:
                pgconn.send_query_prepared(name, values, param_formats=formats)
                sent.append(None)
            if commit:
                pgconn.send_query_params(b"COMMIT", None)
                sent.append(None)
            pgconn.pipeline_sync()
            self._flush()
            results = self._results_to_sync()
        finally:
            if pgconn.pipeline_status != pq.PipelineStatus.OFF:
                try:
                    pgconn.exit_pipeline_mode()
                except errors.OperationalError:
                    pgconn.finish()  # stuck in pipeline mode: closed, so the pool drops it
        began = len(sent) - len(preparing) - len(kept) - len(last) - commit  # 0 or 1: BEGIN
        done = results[began : began + len(preparing)]
        for key, (name, _), result in zip(preparing, preparing.values(), done, strict=False):
            if result.status in _OK:
                self._names[key] = name
        for what, result in zip(sent, results, strict=True):
            if result.status not in _OK:
                self.failed_sql = what
                try:
                    self._check(result)
                except errors.InvalidSqlStatementName:
                    self._names.clear()  # prepared again from the next transaction on
                    raise
        return results[first_last : first_last + len(last)]

    def _flush(self) -> None:
        """Send all that libpq holds (psycopg's connections are non-blocking), reading what the
        server answers meanwhile, so that neither side waits on a full buffer."""
        pgconn = self._conn.pgconn
        while pgconn.flush():
            if _wait(pgconn.socket, select.POLLIN | select.POLLOUT) & select.POLLIN:
                pgconn.consume_input()

    def _results_to_sync(self) -> list[pq.abc.PGresult]:
        """The results of a pipeline up to its sync, one per statement. It waits for them in
        `poll`, which lets go of the GIL (libpq's `PQgetResult` would wait holding it, and a
        thread whose transaction this one waits for could then never finish)."""
        pgconn = self._conn.pgconn
        results: list[pq.abc.PGresult] = []
        ended = False
        while True:
            while pgconn.is_busy():
                _wait(pgconn.socket, select.POLLIN)
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
        self.send_kept()
        with self._conn.cursor() as cursor:
            cursor.executemany(sql, params_seq)
            self.rowcount = cursor.rowcount

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
