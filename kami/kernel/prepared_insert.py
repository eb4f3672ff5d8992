"""INSERTs built once per table and set of columns, run as `Prepared` statements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import bindparam, insert
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from kami.kernel.prepared import Prepared, Rows


class PreparedInsert:
    """An INSERT built once, run as a `Prepared` statement with each call's values.

    Every column named must be given a value.
    """

    def __init__(
        self,
        table: Any,
        columns: Sequence[str],
        returning: Any = None,
        *,
        skip_conflicts_on: Sequence[str] = (),
    ) -> None:
        """`skip_conflicts_on`: the unique columns on which a conflicting row is skipped
        (`ON CONFLICT … DO NOTHING`, which SQLite and PostgreSQL spell alike)."""
        values: dict[str, Any] = {c: bindparam(f"p_{c}") for c in columns}
        statements: dict[str, Any] = {}
        for name, dialect_insert in (("sqlite", sqlite_insert), ("postgresql", postgresql_insert)):
            stmt: Any = insert(table).values(values)
            if skip_conflicts_on:
                stmt = (
                    dialect_insert(table)
                    .values(values)
                    .on_conflict_do_nothing(index_elements=list(skip_conflicts_on))
                )
            statements[name] = stmt.returning(returning) if returning is not None else stmt
        self._prepared = Prepared(statements)
        self.columns = frozenset(columns)

    def params(self, values: Mapping[str, Any]) -> dict[str, Any]:
        if values.keys() != self.columns:
            missing, extra = self.columns - values.keys(), values.keys() - self.columns
            raise TypeError(f"insert values differ from its columns: {missing=} {extra=}")
        return {f"p_{k}": v for k, v in values.items()}

    def run(self, session: Session, **values: Any) -> Rows:
        return self._prepared.run(session, self.params(values))

    def run_many(self, session: Session, rows: Sequence[Mapping[str, Any]]) -> None:
        """One executemany for all `rows` (nothing returned)."""
        self._prepared.run_many(session, [self.params(r) for r in rows])

    def run_each(self, session: Session, rows: Sequence[Mapping[str, Any]]) -> list[Rows]:
        """`Prepared.run_each`: one run per row, on PostgreSQL in one round trip."""
        return self._prepared.run_each(session, [self.params(r) for r in rows])

    def run_later(self, session: Session, **values: Any) -> None:
        """`Prepared.run_later`: on PostgreSQL, sent with the transaction's next statement."""
        self._prepared.run_later(session, self.params(values))

    def run_many_later(self, session: Session, rows: Sequence[Mapping[str, Any]]) -> None:
        """`Prepared.run_many_later`."""
        self._prepared.run_many_later(session, [self.params(r) for r in rows])
