"""Statements written once as Core, compiled once per dialect, run on the transaction's own
DB-API connection (decision 0009)."""

from __future__ import annotations

import re
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Dialect
from sqlalchemy.orm import Session
from sqlalchemy.types import NullType

from kami.kernel.dberrors import wrapped
from kami.kernel.pgcursor import LeanCursor


class Rows:
    """The answer of a `Prepared` statement: its rows, fetched, and the driver's row count."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def all(self) -> list[Any]:
        return self._rows

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def one(self) -> Any:
        if len(self._rows) != 1:
            raise LookupError(f"expected one row, got {len(self._rows)}")
        return self._rows[0]

    def one_or_none(self) -> Any:
        if len(self._rows) > 1:
            raise LookupError(f"expected at most one row, got {len(self._rows)}")
        return self._rows[0] if self._rows else None

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalar_one_or_none(self) -> Any:
        row = self.one_or_none()
        return None if row is None else row[0]

    def scalars(self) -> list[Any]:
        return [r[0] for r in self._rows]


class _Plan:
    """One statement compiled for one dialect: its SQL, how to lay out and convert parameters,
    and how to convert result columns, all taken from SQLAlchemy's own type processors."""

    def __init__(self, statement: Any, dialect: Dialect) -> None:
        compiled: Any = statement.compile(dialect=dialect)
        self.sql: str = compiled.string
        self.writes = bool(compiled.isinsert or compiled.isupdate or compiled.isdelete)
        names: dict[str, str] = {}  # bind name in the SQL -> key the caller passes
        self.fixed: dict[str, Any] = {}  # values written into the statement itself
        processors: dict[str, Callable[[Any], Any]] = {}
        for bind, name in compiled.bind_names.items():
            if bind.expanding:
                raise TypeError(
                    f"{name}: an expanding IN cannot be prepared once; compare with = or OR"
                )
            if bind.callable is not None:
                raise TypeError(f"{name}: a bind computed per call cannot be prepared once")
            if isinstance(bind.type, NullType):  # decisions 0005, 0020
                raise TypeError(f"{name}: a bind without a type; give it the column's (type_=)")
            if bind.required:
                names[name] = bind.key
            else:
                self.fixed[name] = bind.value
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                processors[name] = processor
        self.keys = frozenset(names.values())
        self.names = names
        order = compiled.positiontup
        self.order: list[str] | None = list(order) if compiled.positional else None
        if self.order is None and dialect.name == "postgresql":
            # psycopg reads `%(name)s` by building a dict lookup per call and re-ordering it;
            # `%s` with a tuple cost 9 µs less CPU per statement (measured, decision 0014).
            self.sql, order_in_sql = _positional(self.sql)
            # Bind names that SQL cannot spell (a space, a dot) appear escaped in the SQL.
            unescape = {v: k for k, v in getattr(compiled, "escaped_bind_names", {}).items()}
            self.order = [unescape.get(n, n) for n in order_in_sql]
        self.processors = processors
        for name, value in self.fixed.items():  # converted once
            if name in processors:
                self.fixed[name] = processors.pop(name)(value)
        self.lay_out = _layout(self.order, names, processors, self.fixed)
        columns = compiled._result_columns  # (key, name, objects, type), SQLAlchemy 2.x
        self.row: Any = namedtuple("Row", [c[0] for c in columns], rename=True) if columns else None
        self.converters = [
            (i, p)
            for i, c in enumerate(columns)
            if (p := c[3].dialect_impl(dialect).result_processor(dialect, None)) is not None
        ]

    def parameters(self, values: Mapping[str, Any]) -> Any:
        if values.keys() != self.keys:
            missing, extra = self.keys - values.keys(), values.keys() - self.keys
            raise TypeError(f"statement parameters differ: {missing=} {extra=}")
        return self.lay_out(values)

    def rows(self, raw: list[Any]) -> list[Any]:
        if self.converters:
            out = []
            for r in raw:
                values = list(r)
                for i, convert in self.converters:
                    values[i] = convert(values[i])
                out.append(self.row._make(values))
            return out
        make = self.row._make
        return [make(r) for r in raw]


_PYFORMAT = re.compile(r"%%|%\(([^)]+)\)s")


def _positional(sql: str) -> tuple[str, list[str]]:
    """SQL in psycopg's named style (`%(name)s`, a literal percent as `%%`) rewritten with `%s`
    placeholders, and the bind names in the order they appear (a name used twice appears
    twice)."""
    order: list[str] = []

    def placeholder(match: re.Match[str]) -> str:
        if match.group(1) is None:
            return "%%"
        order.append(match.group(1))
        return "%s"

    return _PYFORMAT.sub(placeholder, sql), order


def _layout(
    order: list[str] | None,
    names: Mapping[str, str],
    processors: Mapping[str, Callable[[Any], Any]],
    fixed: Mapping[str, Any],
) -> Callable[[Mapping[str, Any]], Any]:
    """A function from the caller's values to the driver's parameters, written out once per
    statement: a tuple in SQL order (SQLite) or a dict by name (PostgreSQL), each value through
    its converter, fixed values in place. Written as one expression because a generic loop over
    the parameters was, per statement, a third of `Prepared.run`'s own time. The source holds
    only `repr`s of the statement's own bind names and indexes into `constants`."""
    constants: list[Any] = []

    def const(value: Any) -> str:
        constants.append(value)
        return f"c[{len(constants) - 1}]"

    def value_of(name: str) -> str:
        if name not in names:
            return const(fixed[name])
        given = f"v[{names[name]!r}]"
        return f"{const(processors[name])}({given})" if name in processors else given

    if order is not None:
        body = "(" + "".join(f"{value_of(n)}, " for n in order) + ")"
    else:
        body = "{" + "".join(f"{n!r}: {value_of(n)}, " for n in (*names, *fixed)) + "}"
    made: Callable[[Mapping[str, Any]], Any] = eval(f"lambda v, c=c: {body}", {"c": constants})  # noqa: S307
    return made


def shape_size(n: int) -> int:
    """The number of rows a statement made for `n` rows is shaped for: the next power of two.
    A statement whose size varies (a group of checkouts) is compiled once per shape, so a few
    shapes, compiled ahead (`shapes`), serve every size."""
    return 1 << max(0, n - 1).bit_length()


def shapes(most: int) -> list[int]:
    """Every shape up to the one for `most` rows: 1, 2, 4 … `shape_size(most)`."""
    return [1 << i for i in range(shape_size(most).bit_length())]


class Prepared:
    """A Core statement compiled once per dialect and run on the transaction's own DB-API
    connection.

    Through SQLAlchemy's execution path every statement paid for its cache key, an execution
    context, events and a result object: on the purchase path that was about half the domain's
    CPU (measured, docs/benchmarks.md). The statement is still written once, as Core; its SQL,
    parameter order and type conversions (UTC datetimes, enums, JSON) are SQLAlchemy's own, so
    the two databases still see the same values. It runs inside the session's transaction, and a
    driver error arrives as SQLAlchemy's exception (IntegrityError, OperationalError …) with its
    parameters hidden. A write through a `Database.read()` session is refused.

    Not for IN lists that vary per call (compare with = or OR instead), nor for a bind without
    a type (give it the column's, `type_=`): its values would reach the driver unconverted.
    """

    def __init__(self, statement: Any) -> None:
        """`statement`: one Core statement, or one per dialect name ("sqlite", "postgresql")
        where their spellings differ."""
        self._statements: dict[str, Any] = (
            dict(statement) if isinstance(statement, dict) else dict.fromkeys(_DIALECTS, statement)
        )
        # Compiled now against default dialects, so a statement that cannot be prepared fails
        # at import; compiled again against the live engine's dialect on first use, or as a
        # server process starts (`ready_all`).
        self.keys = frozenset().union(
            *(_Plan(self._statements[n], d).keys for n, d in _DIALECTS.items())
        )
        self._plans: dict[str, _Plan] = {}
        _MADE.append(self)

    def plan(self, dialect: Dialect, read_only: bool = False) -> _Plan:
        """Its SQL and conversions for `dialect`; a write refused in a `Database.read()`."""
        plan = self._plans.get(dialect.name)
        if plan is None:
            plan = self._plans[dialect.name] = _Plan(self._statements[dialect.name], dialect)
        if plan.writes and read_only:
            raise RuntimeError(f"a write inside Database.read(): {plan.sql[:80]}")
        return plan

    def ready(self, dialect: Dialect) -> None:
        """Compile it for `dialect` now, not on its first run."""
        self.plan(dialect)

    def run(self, session: Session, values: Mapping[str, Any] | None = None) -> Rows:
        driver, dialect, read_only, cursor = _driver(session)
        plan = self.plan(dialect, read_only)
        params = plan.parameters(values or {})
        try:
            if cursor is None:
                cursor = driver.cursor()
            cursor.execute(plan.sql, params)
            raw = cursor.fetchall() if plan.row is not None else []
            count = cursor.rowcount
        except dialect.loaded_dbapi.Error as exc:
            raise wrapped(session, dialect, _failed(cursor, plan.sql), exc) from exc
        return Rows(plan.rows(raw) if raw else raw, count)

    def run_each(self, session: Session, rows: Sequence[Mapping[str, Any]]) -> list[Rows]:
        """`run` once for each of `rows`, in order. On PostgreSQL all of them go out in one
        round trip (with the statements kept for later before them): for a group of calls that
        would each wait for their own answer (decision 0022)."""
        return run_all(session, [(self, values) for values in rows])

    def run_later(self, session: Session, values: Mapping[str, Any] | None = None) -> None:
        """As `run`, for a statement whose answer nobody reads: on PostgreSQL it goes out with
        the transaction's next statement or its COMMIT, in the same round trip, and its failure
        is raised there and fails the transaction (decision 0021); elsewhere it runs now. Only
        for a statement whose failure nobody catches to carry on."""
        self.run_many_later(session, [values or {}])

    def run_many_later(self, session: Session, rows: Sequence[Mapping[str, Any]]) -> None:
        """`run_later` for each of `rows`, in order."""
        _, dialect, read_only, cursor = _driver(session)
        plan = self.plan(dialect, read_only)
        if not plan.writes:  # a write's rows (an INSERT's implicit RETURNING id) are let go
            raise TypeError(f"a read whose rows nobody would read: {plan.sql[:80]}")
        if not isinstance(cursor, LeanCursor) or len(rows) > KEEP_AT_MOST:
            self.run_many(session, rows)  # now; many rows: one executemany, not a long pipeline
            return
        try:
            for values in rows:
                cursor.execute_later(plan.sql, plan.parameters(values))
        except dialect.loaded_dbapi.Error as exc:  # in autocommit, running it
            raise wrapped(session, dialect, _failed(cursor, plan.sql), exc) from exc

    def run_many(self, session: Session, rows: Sequence[Mapping[str, Any]]) -> None:
        """One executemany for all `rows` (nothing returned)."""
        if not rows:
            return
        driver, dialect, read_only, cursor = _driver(session)
        plan = self.plan(dialect, read_only)
        params = [plan.parameters(r) for r in rows]
        try:
            if cursor is None:
                cursor = driver.cursor()
            if len(params) == 1:  # psycopg's executemany costs a pipeline: 50 µs more for one
                cursor.execute(plan.sql, params[0])
            else:
                cursor.executemany(plan.sql, params)
        except dialect.loaded_dbapi.Error as exc:
            raise wrapped(session, dialect, _failed(cursor, plan.sql), exc) from exc


# Every statement made, in the order made, for `ready_all`.
_MADE: list[Prepared] = []


def ready_all(dialect: Dialect) -> int:
    """Compile every statement made so far (those of every module imported) for `dialect` now,
    not on its first run; returns how many there are. A server process does it as it starts:
    compiled on first use, a flash sale's first group of payments spent 7 to 9 ms of CPU where
    the next ones spent 1 to 2, with every buyer of that process waiting (decision 0024)."""
    made = list(_MADE)
    for prepared in made:
        prepared.ready(dialect)
    return len(made)


def run_all(session: Session, runs: Sequence[tuple[Prepared, Mapping[str, Any]]]) -> list[Rows]:
    """Each (statement, values) of `runs`, in order: on PostgreSQL all in one round trip, each
    statement starting once the one before has finished (`LeanCursor.execute_all`)."""
    _, dialect, read_only, cursor = _driver(session)
    if not isinstance(cursor, LeanCursor) or len(runs) < 2:
        return [prepared.run(session, values) for prepared, values in runs]
    plans = [prepared.plan(dialect, read_only) for prepared, _ in runs]
    statements = [
        (plan.sql, plan.parameters(values)) for plan, (_, values) in zip(plans, runs, strict=True)
    ]
    try:
        answers = cursor.execute_all(statements)
    except dialect.loaded_dbapi.Error as exc:
        together = "; ".join(dict.fromkeys(plan.sql for plan in plans))  # one of them failed
        raise wrapped(session, dialect, _failed(cursor, together), exc) from exc
    return [
        Rows(plan.rows(raw) if raw else raw, count)
        for plan, (raw, count) in zip(plans, answers, strict=True)
    ]


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Ask(Generic[T]):
    """A read that can go out with others (`ask_all`): its statement, its values, and what its
    rows come to. A domain hands one out where a caller may want the answer together with
    other domains' reads, in one round trip on PostgreSQL."""

    statement: Prepared
    values: Mapping[str, Any]
    answer: Callable[[Rows], T]

    def run(self, session: Session) -> T:
        """The answer, asked alone."""
        return self.answer(self.statement.run(session, self.values))


def ask_all(session: Session, asks: Sequence[Ask[Any]]) -> list[Any]:
    """Each ask's answer, in order: on PostgreSQL all in one round trip, each statement
    starting once the one before has finished, so a read placed after another sees at least
    what that one saw (`run_all`)."""
    answers = run_all(session, [(ask.statement, ask.values) for ask in asks])
    return [ask.answer(rows) for ask, rows in zip(asks, answers, strict=True)]


# At most this many rows of one `run_many_later` are kept for later; more run at once.
KEEP_AT_MOST = 32


def _failed(cursor: Any, sql: str) -> str:
    """The SQL a failure belongs to: a statement kept for later (`run_later`) that failed when
    it went out with `sql`, or `sql` itself."""
    return getattr(cursor, "failed_sql", None) or sql


def _dialects() -> dict[str, Dialect]:
    from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect
    from sqlalchemy.dialects.sqlite.pysqlite import dialect as pysqlite_dialect

    return {"sqlite": pysqlite_dialect(), "postgresql": psycopg_dialect()}  # type: ignore[no-untyped-call]


_DIALECTS = _dialects()


def _driver(session: Session) -> tuple[Any, Dialect, bool, Any]:
    """The session's DB-API connection for its current transaction (begun if need be), its
    dialect, whether the session is a read, and a cursor kept with the connection (None: make
    one); remembered per transaction."""
    info = session.info
    kept = info.get("kami_kept")
    if kept is not None:
        driver = kept[0]
        if kept[1].name == "sqlite" and not driver.in_transaction:
            # The block committed or rolled back part-way through: begin again, as the
            # Session itself would.
            driver.execute("BEGIN" if kept[2] else "BEGIN IMMEDIATE")
        return kept  # type: ignore[no-any-return]
    known = info.get("kami_driver")
    if known is not None and known[0] is session.get_transaction():
        found: tuple[Any, Dialect, bool, Any] = known[1]
        return found
    conn = session.connection()
    options = conn.get_execution_options()
    found = (conn.connection.driver_connection, conn.dialect, bool(options.get("kami_read")), None)
    info["kami_driver"] = (session.get_transaction(), found)
    return found
