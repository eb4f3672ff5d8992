"""PostgreSQL: `Prepared` statements sent through libpq (`kernel.pgcursor`, decision 0016) give
what psycopg's cursor gives, stay prepared across rollbacks, and recover from being
deallocated by someone else."""

from __future__ import annotations

import gc
import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg import errors as psycopg_errors
from psycopg import pq
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    LargeBinary,
    String,
    bindparam,
    insert,
    select,
    text,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from kami.fulfilment import Shop
from kami.kernel.clock import utcnow
from kami.kernel.db import Database, UtcDateTime
from kami.kernel.engine import make_engine
from kami.kernel.outbox import OutboxJob, enqueue
from kami.kernel.pgcursor import _PREPARED, LeanCursor, numbered
from kami.kernel.prepared import Prepared, run_all
from tests.conftest import BACKEND

pytestmark = pytest.mark.skipif(BACKEND != "postgresql", reason="PostgreSQL's own cursor")

_J = OutboxJob.__table__
_ATTEMPTS = Prepared(select(_J.c.attempts).where(_J.c.ref == bindparam("ref")))
_ECHO = Prepared(
    select(
        bindparam("i", type_=BigInteger),
        bindparam("s", type_=String),
        bindparam("none", type_=String),
        bindparam("b", type_=LargeBinary),
        bindparam("t", type_=Boolean),
        bindparam("at", type_=UtcDateTime),
        bindparam("j", type_=JSON),
    )
)
_ECHO_INT = Prepared(select(bindparam("i", type_=BigInteger)))
_INSERT_WITH_ID = Prepared(
    insert(_J).values(
        id=bindparam("id"),
        kind="k",
        ref=bindparam("ref"),
        payload={},
        status="pending",
        attempts=0,
        run_after=bindparam("now"),
        created_at=bindparam("now"),
    )
)


def _cursor(session: Session) -> Any:
    return session.info["kami_kept"][3]


def _driver(session: Session) -> Any:
    return session.info["kami_kept"][0]


def test_placeholders_are_numbered_and_percent_signs_kept() -> None:
    assert numbered("SELECT %s, '100%%' || %s WHERE a = %s") == (
        b"SELECT $1, '100%' || $2 WHERE a = $3"
    )


def test_values_travel_as_through_psycopgs_cursor(shop: Shop) -> None:
    values = {
        "i": 2**40,
        "s": "näive 卡密 '%s'",
        "none": None,
        "b": b"\x00\xff binary",
        "t": True,
        "at": datetime(2026, 12, 6, 4, 25, 41, 123456, tzinfo=UTC),
        "j": {"a": [1, "二"], "b": None},
    }
    with shop.db.read() as s:
        assert isinstance(_cursor(s), LeanCursor)
        lean = tuple(_ECHO.run(s, values).one())
        through_psycopg = tuple(s.execute(_ECHO._statements["postgresql"], values).one())
    assert lean == through_psycopg == tuple(values.values())


def test_a_rollback_leaves_the_statements_prepared(shop: Shop) -> None:
    """psycopg deallocates every prepared statement on ROLLBACK once it has prepared one of its
    own (after five runs of one statement); ours would go with them."""
    with shop.db.write() as s:
        enqueue(s, "k", {}, ref="r")
        first = _driver(s)
    with pytest.raises(LookupError), shop.db.write() as s:
        assert _driver(s) is first
        for _ in range(6):  # an ORM statement, often enough for psycopg to prepare it
            s.execute(select(OutboxJob.id).where(OutboxJob.ref == "r")).scalar_one()
        assert _ATTEMPTS.run(s, {"ref": "r"}).scalar_one() == 0
        raise LookupError("a business error: rolled back, the connection kept")
    with shop.db.write() as s:
        assert _driver(s) is first
        assert _ATTEMPTS.run(s, {"ref": "r"}).scalar_one() == 0


def test_statements_deallocated_by_someone_else_are_prepared_again(shop: Shop) -> None:
    with shop.db.write() as s:
        enqueue(s, "k", {}, ref="d")
    with shop.db.read() as s:  # autocommit: nothing spoilt, so run again at once
        assert _ATTEMPTS.run(s, {"ref": "d"}).scalar_one() == 0
        s.execute(text("DEALLOCATE ALL"))
        assert _ATTEMPTS.run(s, {"ref": "d"}).scalar_one() == 0
    with shop.db.write() as s:
        assert _ATTEMPTS.run(s, {"ref": "d"}).scalar_one() == 0
    with pytest.raises(ProgrammingError, match="does not exist"), shop.db.write() as s:
        s.execute(text("DEALLOCATE ALL"))
        _ATTEMPTS.run(s, {"ref": "d"})  # the transaction cannot go on: it fails
    with shop.db.write() as s:
        assert _ATTEMPTS.run(s, {"ref": "d"}).scalar_one() == 0


def test_a_constraint_broken_through_it_is_sqlalchemys_integrity_error(shop: Shop) -> None:
    now = utcnow()
    with shop.db.write() as s:
        _INSERT_WITH_ID.run(s, {"id": 10_001, "ref": "u", "now": now})
    with pytest.raises(IntegrityError, match="duplicate key"), shop.db.write() as s:
        _INSERT_WITH_ID.run(s, {"id": 10_001, "ref": "u2", "now": now})
    with shop.db.write() as s:  # a fresh connection, statements prepared on it anew
        _INSERT_WITH_ID.run(s, {"id": 10_002, "ref": "u3", "now": now})
    with shop.db.read() as s:
        refs = s.execute(select(OutboxJob.ref).where(OutboxJob.id >= 10_001)).scalars().all()
    assert sorted(refs) == ["u", "u3"]


def test_every_connection_is_opened_with_psycopgs_preparing_off(shop: Shop) -> None:
    """A pooled connection that a nested session used would otherwise hold psycopg's own
    prepared statements, and its next ROLLBACK would deallocate ours."""
    with shop.db.engine.connect() as conn:
        assert conn.connection.driver_connection.prepare_threshold is None


def test_a_connection_a_nested_session_used_keeps_our_statements_when_kept(shop: Shop) -> None:
    db = Database(
        make_engine(shop.db.engine.url.render_as_string(hide_password=False)), concurrency=1
    )
    try:
        with db.write() as outer:
            enqueue(outer, "k", {}, ref="n")
        with db.write(), db.write() as nested:  # nested: a pooled connection of its own
            pooled = nested.connection().connection.driver_connection
            for _ in range(6):  # often enough for psycopg to prepare it, were it allowed to
                nested.execute(select(OutboxJob.id).where(OutboxJob.ref == "n")).all()
        with pytest.raises(DBAPIError), db.write() as s:  # the kept one is discarded
            s.execute(text("SELECT 1/0"))
        with pytest.raises(LookupError), db.write() as s:
            assert _driver(s) is pooled  # the slot took the nested session's connection
            assert _ATTEMPTS.run(s, {"ref": "n"}).scalar_one() == 0
            raise LookupError("a business error: rolled back")
        with db.write() as s:
            assert _ATTEMPTS.run(s, {"ref": "n"}).scalar_one() == 0
    finally:
        db.dispose()


def test_one_statement_deallocated_leaves_the_others_and_no_name_is_reused(shop: Shop) -> None:
    with shop.db.write() as s:
        enqueue(s, "k", {}, ref="p")
    with shop.db.read() as s:
        assert _ATTEMPTS.run(s, {"ref": "p"}).scalar_one() == 0
        _ECHO_INT.run(s, {"i": 1})
        names = list(_PREPARED[_driver(s)].values())
        s.execute(text(f"DEALLOCATE {names[-1].decode()}"))
        assert _ECHO_INT.run(s, {"i": 2}).scalar_one() == 2  # prepared again, run again
        assert _ATTEMPTS.run(s, {"ref": "p"}).scalar_one() == 0
        assert _ECHO_INT.run(s, {"i": 3}).scalar_one() == 3


def test_a_connection_the_server_dropped_is_an_operational_error(shop: Shop) -> None:
    with shop.db.read() as s:
        pid = s.execute(text("SELECT pg_backend_pid()")).scalar_one()
    with shop.db.engine.connect() as other:
        other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        other.commit()
    with pytest.raises(OperationalError), shop.db.read() as s:
        _ATTEMPTS.run(s, {"ref": "none"})
    with shop.db.read() as s:  # replaced
        assert _ATTEMPTS.run(s, {"ref": "none"}).first() is None


class _Counted:
    """A psycopg connection whose libpq connection counts the exchanges that wait for the
    server: each `exec_…` or `prepare` call, and each pipeline sync (one for all that went
    before it)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.waits: list[str] = []
        counted = self

        class PgConn:
            def __getattr__(self, name: str) -> Any:
                found = getattr(conn.pgconn, name)
                if name.startswith("exec_") or name in ("prepare", "pipeline_sync"):
                    counted.waits.append(name)
                return found

        self.pgconn = PgConn()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


@contextmanager
def _counted_cursor(shop: Shop) -> Iterator[tuple[Any, _Counted, LeanCursor, Any]]:
    """A LeanCursor on a pooled connection whose waits are counted, and `insert(id, ref)`: the
    SQL and parameters of `_INSERT_WITH_ID` for that outbox row."""
    raw = shop.db.engine.raw_connection()
    try:
        conn = raw.driver_connection
        counted = _Counted(conn)
        plan, now = _INSERT_WITH_ID.plan(shop.db.engine.dialect), utcnow()

        def insert(n: int, ref: str) -> tuple[str, Any]:
            return plan.sql, plan.parameters({"id": n, "ref": ref, "now": now})

        yield conn, counted, LeanCursor(counted), insert
    finally:
        raw.close()


def test_a_transactions_begin_goes_with_its_first_statement(shop: Shop) -> None:
    with _counted_cursor(shop) as (conn, counted, cursor, insert):
        cursor.execute(*insert(10_101, "b1"))
        conn.rollback()  # prepared now: what follows counts only the statements
        counted.waits.clear()
        cursor.execute(*insert(10_102, "b2"))
        assert cursor.rowcount == 1
        assert counted.waits == ["pipeline_sync"]  # BEGIN and INSERT: one wait, not two
        cursor.execute(*insert(10_103, "b3"))
        assert counted.waits == ["pipeline_sync", "exec_prepared"]
        conn.commit()
        # The first statement fails: its error, inside the begun transaction, which rolls back.
        with pytest.raises(psycopg_errors.UniqueViolation):
            cursor.execute(*insert(10_102, "again"))
        assert conn.pgconn.transaction_status == pq.TransactionStatus.INERROR
        conn.rollback()
        cursor.execute("SELECT count(*) FROM kernel_outbox WHERE id > %s", (10_100,))
        assert cursor.fetchall() == [(2,)]
        conn.rollback()


def test_a_statement_is_prepared_in_the_round_trip_of_its_first_run(shop: Shop) -> None:
    """Decision 0024: a statement new to the connection is prepared in the same round trip as
    its first run, with BEGIN before both; a preparation that fails is the statement's error,
    and nothing is taken as prepared. A preparation stays when its transaction rolls back."""
    with _counted_cursor(shop) as (conn, counted, cursor, insert):
        cursor.execute(*insert(10_301, "p1"))  # BEGIN, the preparation, the INSERT
        assert counted.waits == ["pipeline_sync"]
        conn.rollback()
        counted.waits.clear()
        cursor.execute(*insert(10_302, "p2"))
        assert counted.waits == ["pipeline_sync"]  # BEGIN and the INSERT, prepared before
        conn.commit()
        with pytest.raises(psycopg_errors.SyntaxError):
            cursor.execute("SELEC %s", (1,))
        assert cursor.failed_sql == "SELEC %s"
        assert not [key for key in cursor._names if key[0].startswith(b"SELEC ")]
        conn.rollback()
        cursor.execute_later(*insert(10_303, "p3"))  # new to the connection: prepared with
        cursor.execute_later("DELETE FROM kernel_outbox WHERE id = %s", (10_303,))
        counted.waits.clear()
        assert cursor.commit()  # BEGIN, two preparations, both statements, COMMIT: one wait
        assert counted.waits == ["pipeline_sync"]
        counted.waits.clear()
        conn.autocommit = True
        cursor.execute("SELECT count(*) FROM kernel_outbox WHERE id > %s", (10_300,))
        assert cursor.fetchall() == [(1,)]  # the rolled-back INSERT is gone, the other stays
        cursor.execute("SELECT count(*) FROM kernel_outbox WHERE id > %s", (10_300,))
        assert counted.waits == ["pipeline_sync", "exec_prepared"]
        conn.autocommit = False


def test_a_first_statement_deallocated_behind_our_back_runs_again(shop: Shop) -> None:
    """BEGIN went out with it, and the transaction was nothing else: it is rolled back and the
    statement, prepared again, runs in a new one. With a statement kept for later before it,
    or inside a transaction begun before, it fails: what went before cannot be run again."""
    with shop.db.write() as s:
        enqueue(s, "k", {}, ref="f")
        first = _driver(s)
    with shop.db.write() as s:
        assert _ATTEMPTS.run(s, {"ref": "f"}).scalar_one() == 0
        s.execute(text("DEALLOCATE ALL"))
    with shop.db.write() as s:
        assert _driver(s) is first
        assert _ATTEMPTS.run(s, {"ref": "f"}).scalar_one() == 0
        enqueue(s, "k", {}, ref="f2")  # the transaction goes on, and commits
    with shop.db.write() as s:
        assert _ATTEMPTS.run(s, {"ref": "f2"}).scalar_one() == 0
        s.execute(text("DEALLOCATE ALL"))
    now = utcnow()
    with pytest.raises(ProgrammingError, match="does not exist"), shop.db.write() as s:
        _INSERT_WITH_ID.run_later(s, {"id": 10_270, "ref": "f3", "now": now})
        _ATTEMPTS.run(s, {"ref": "f"})
    assert _outbox_ids(shop, 10_270) == []
    with shop.db.write() as s:  # on a connection of its own: one that failed is not kept
        assert _ATTEMPTS.run(s, {"ref": "f"}).scalar_one() == 0


def test_statements_kept_for_later_go_with_the_next_one_or_the_commit(shop: Shop) -> None:
    with _counted_cursor(shop) as (conn, counted, cursor, insert):
        count = "SELECT count(*) FROM kernel_outbox WHERE id > %s"
        cursor.execute(count, (10_200,))  # prepared first; the INSERT's goes with its first run
        cursor.execute_later(*insert(10_201, "l1"))
        conn.rollback()
        cursor.forget_kept()
        counted.waits.clear()

        for n in (10_202, 10_203):
            cursor.execute_later(*insert(n, f"l{n}"))
        assert counted.waits == [] and cursor.keeps
        cursor.execute(count, (10_200,))  # BEGIN, both INSERTs and the count: one wait
        assert cursor.fetchall() == [(2,)] and not cursor.keeps
        cursor.execute_later(*insert(10_204, "l4"))
        assert cursor.commit()  # the INSERT and the COMMIT: one wait
        assert counted.waits == ["pipeline_sync", "pipeline_sync"]
        assert not cursor.commit()  # nothing kept: the caller commits as usual
        cursor.execute(count, (10_200,))
        assert cursor.fetchall() == [(3,)]
        conn.rollback()


def test_one_statement_run_for_each_of_many_goes_out_in_one_round_trip(shop: Shop) -> None:
    """Decision 0022: `execute_all` sends BEGIN, what was kept, and one run per parameter set
    in one round trip, and answers each run's rows and count; the first failure is raised,
    naming the statement, and the transaction fails with it."""
    with _counted_cursor(shop) as (conn, counted, cursor, insert):
        count = "SELECT count(*) FROM kernel_outbox WHERE id > %s"
        cursor.execute(count, (10_250,))
        cursor.execute(*insert(10_251, "e1"))
        conn.rollback()  # both prepared: what follows counts only the statements
        counted.waits.clear()
        cursor.execute_later(*insert(10_252, "e2"))
        sql, params = insert(10_253, "e3")
        answers = cursor.execute_all([(sql, params), insert(10_254, "e4")])
        assert answers == [([], 1), ([], 1)]
        assert cursor.execute_all([(count, (n,)) for n in (10_250, 10_253, 10_260)]) == [
            ([(3,)], 1),
            ([(1,)], 1),
            ([(0,)], 1),
        ]
        assert counted.waits == ["pipeline_sync", "pipeline_sync"]
        assert cursor.execute_all([]) == [] and counted.waits == ["pipeline_sync"] * 2
        conn.commit()
        cursor.execute_later(*insert(10_255, "e5"))
        with pytest.raises(psycopg_errors.UniqueViolation):
            cursor.execute_all([insert(10_256, "e6"), insert(10_252, "again")])
        assert cursor.failed_sql is None  # the statement run, not the one kept
        assert conn.pgconn.transaction_status == pq.TransactionStatus.INERROR
        conn.rollback()
    assert _outbox_ids(shop, 10_250) == [10_252, 10_253, 10_254]
    with shop.db.write() as s:  # through `Prepared.run_each`, as the domains use it
        rows = _ATTEMPTS.run_each(s, [{"ref": "e3"}, {"ref": "nothing"}])
    assert [r.all() for r in rows] == [[(0,)], []]
    with shop.db.read() as s:  # a read runs in autocommit: no BEGIN, no transaction left open
        rows = _ATTEMPTS.run_each(s, [{"ref": "e4"}, {"ref": "e3"}])
        assert [r.all() for r in rows] == [[(0,)], [(0,)]]
        assert _driver(s).pgconn.transaction_status == pq.TransactionStatus.IDLE


def test_different_statements_go_out_together_each_after_the_one_before(shop: Shop) -> None:
    """`run_all`: statements that differ, in one round trip, in order; the second sees what
    the first wrote. A failure among them fails the read or transaction they ran in."""
    with _counted_cursor(shop) as (conn, counted, cursor, insert):
        count = "SELECT count(*) FROM kernel_outbox WHERE id > %s"
        cursor.execute(count, (10_280,))
        cursor.execute(*insert(10_281, "a1"))
        conn.rollback()
        counted.waits.clear()
        answers = cursor.execute_all([insert(10_282, "a2"), (count, (10_280,))])
        assert answers == [([], 1), ([(1,)], 1)]
        assert counted.waits == ["pipeline_sync"]
        conn.rollback()
    with shop.db.write() as s:
        rows = run_all(s, [(_ECHO_INT, {"i": 7}), (_ATTEMPTS, {"ref": "nothing"})])
    assert [r.all() for r in rows] == [[(7,)], []]
    with pytest.raises(IntegrityError) as raised, shop.db.write() as s:
        now = utcnow()
        _INSERT_WITH_ID.run(s, {"id": 10_283, "ref": "a3", "now": now})
        run_all(
            s,
            [
                (_ECHO_INT, {"i": 1}),
                (_INSERT_WITH_ID, {"id": 10_283, "ref": "again", "now": now}),
            ],
        )
    assert "INSERT INTO kernel_outbox" in str(raised.value.statement)
    assert _outbox_ids(shop, 10_280) == []


def _outbox_ids(shop: Shop, first: int) -> list[int]:
    with shop.db.read() as s:
        return sorted(s.execute(select(OutboxJob.id).where(OutboxJob.id >= first)).scalars())


def test_a_kept_statement_that_fails_fails_its_transaction_where_it_goes_out(shop: Shop) -> None:
    now = utcnow()
    with shop.db.write() as s:
        _INSERT_WITH_ID.run(s, {"id": 10_301, "ref": "f1", "now": now})
    # Raised by the next statement, naming the kept INSERT, not the statement it went with.
    with pytest.raises(IntegrityError, match="duplicate key") as raised, shop.db.write() as s:
        _INSERT_WITH_ID.run_later(s, {"id": 10_302, "ref": "f2", "now": now})
        _INSERT_WITH_ID.run_later(s, {"id": 10_301, "ref": "again", "now": now})
        _ECHO_INT.run(s, {"i": 1})
    assert "INSERT INTO kernel_outbox" in str(raised.value.statement)
    # Raised by the COMMIT: nothing of the transaction is kept.
    with pytest.raises(IntegrityError, match="duplicate key"), shop.db.write() as s:
        _INSERT_WITH_ID.run(s, {"id": 10_303, "ref": "f3", "now": now})
        _INSERT_WITH_ID.run_later(s, {"id": 10_301, "ref": "again", "now": now})
    assert _outbox_ids(shop, 10_300) == [10_301]
    with shop.db.write() as s:  # the connection after it is a working one
        _INSERT_WITH_ID.run_later(s, {"id": 10_304, "ref": "f4", "now": now})
    assert _outbox_ids(shop, 10_300) == [10_301, 10_304]


def test_a_rolled_back_transaction_drops_what_it_kept(shop: Shop) -> None:
    now = utcnow()
    with pytest.raises(LookupError), shop.db.write() as s:
        _INSERT_WITH_ID.run_later(s, {"id": 10_401, "ref": "r1", "now": now})
        raise LookupError("a business error: rolled back before anything went out")
    with shop.db.write() as s:
        _INSERT_WITH_ID.run_later(s, {"id": 10_402, "ref": "r2", "now": now})
    assert _outbox_ids(shop, 10_400) == [10_402]


def _orm_job(ref: str, now: datetime) -> OutboxJob:
    return OutboxJob(
        kind="k", ref=ref, payload={}, status="pending", attempts=0, run_after=now, created_at=now
    )


def test_sqlalchemys_own_statements_see_what_was_kept(shop: Shop) -> None:
    now = utcnow()
    with shop.db.write() as s:
        _INSERT_WITH_ID.run_later(s, {"id": 10_501, "ref": "o1", "now": now})
        # ORM and Core statements go through psycopg's cursor: what was kept goes out first.
        assert s.execute(select(OutboxJob.ref).where(OutboxJob.id == 10_501)).scalar() == "o1"
        _INSERT_WITH_ID.run_later(s, {"id": 10_502, "ref": "o2", "now": now})
        s.add(_orm_job("o3", now))  # an ORM write, flushed at the commit
    with shop.db.read() as s:
        refs = s.execute(select(OutboxJob.ref).where(OutboxJob.ref.like("o_"))).scalars().all()
    assert sorted(refs) == ["o1", "o2", "o3"]


def test_a_read_cannot_be_kept_for_later(shop: Shop) -> None:
    with pytest.raises(TypeError, match="nobody would read"), shop.db.write() as s:
        _ECHO_INT.run_later(s, {"i": 1})


def test_kept_statements_commit_with_what_sqlalchemy_ran_in_the_transaction(shop: Shop) -> None:
    """SQLAlchemy's own commit sends a bare COMMIT: were it first, the kept statements would
    then run in a transaction of their own, and the rest would be committed without them."""
    now = utcnow()
    with shop.db.write() as s:
        _INSERT_WITH_ID.run(s, {"id": 10_601, "ref": "a1", "now": now})
    with pytest.raises(IntegrityError, match="duplicate key"), shop.db.write() as s:
        _INSERT_WITH_ID.run(s, {"id": 10_602, "ref": "a2", "now": now})
        s.execute(select(OutboxJob.id).where(OutboxJob.id == 10_601)).all()  # SQLAlchemy's own
        _INSERT_WITH_ID.run_later(s, {"id": 10_601, "ref": "dup", "now": now})
    assert _outbox_ids(shop, 10_600) == [10_601]  # 10_602 went with the failed COMMIT
    with shop.db.write() as s:
        s.execute(select(OutboxJob.id).where(OutboxJob.id == 10_601)).all()
        _INSERT_WITH_ID.run_later(s, {"id": 10_603, "ref": "a3", "now": now})
        s.add(_orm_job("a4", now))  # an ORM write, flushed at the commit
    with shop.db.read() as s:
        refs = s.execute(select(OutboxJob.ref).where(OutboxJob.ref.in_(["a3", "a4"]))).scalars()
        assert sorted(refs) == ["a3", "a4"]


def _pg_url(shop: Shop) -> str:
    return shop.db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def test_a_cursor_does_not_keep_its_connection_alive(shop: Shop) -> None:
    conn = psycopg.connect(_pg_url(shop))
    cursor = LeanCursor(conn)
    cursor.execute("SELECT %s::int", (1,))
    conn.close()
    gone = weakref.ref(conn)
    del conn, cursor
    gc.collect()
    assert gone() is None


def test_a_connection_on_a_descriptor_past_1023_waits_for_its_answers(shop: Shop) -> None:
    """`select` refuses such a descriptor; a server process with a thousand buyers' sockets
    open gets one for its next database connection."""
    filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        conn = psycopg.connect(_pg_url(shop))
    finally:
        for fd in filler:
            os.close(fd)
    try:
        assert conn.pgconn.socket > 1023
        cursor = LeanCursor(conn)
        cursor.execute_later("SELECT %s::int", (1,))
        cursor.execute("SELECT %s::int", (2,))  # BEGIN, the kept one and this: one pipeline
        assert cursor.fetchall() == [(2,)]
        conn.rollback()
    finally:
        conn.close()
