"""Connections kept between transactions (`kernel.db._Kept`): the transaction is begun and ended
on the driver, the ORM and `Prepared` statements share it, and a connection that saw a database
error is replaced, on both databases."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import bindparam, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from kami.fulfilment import Shop
from kami.kernel.clock import utcnow
from kami.kernel.outbox import OutboxJob, enqueue
from kami.kernel.prepared import Prepared
from tests.conftest import BACKEND

_J = OutboxJob.__table__
_ATTEMPTS = Prepared(select(_J.c.attempts).where(_J.c.ref == bindparam("ref")))
_BUMP = Prepared(update(_J).where(_J.c.ref == bindparam("ref")).values(attempts=_J.c.attempts + 1))


def _driver(session: Session) -> Any:
    return session.info["kami_kept"][0]


def _attempts(shop: Shop, ref: str) -> int:
    with shop.db.read() as s:
        return int(_ATTEMPTS.run(s, {"ref": ref}).scalar_one())


def test_sequential_transactions_keep_their_connection(shop: Shop) -> None:
    with shop.db.write() as s:
        enqueue(s, "k", {}, ref="a")
        first = _driver(s)
    for _ in range(3):
        with shop.db.write() as s:
            assert _driver(s) is first
            _BUMP.run(s, {"ref": "a"})
    with pytest.raises(LookupError), shop.db.write() as s:  # a business error keeps it too
        _BUMP.run(s, {"ref": "a"})
        raise LookupError("sold out")
    with shop.db.write() as s:
        assert _driver(s) is first
        assert s.info["kami_kept"][3].connection is first  # one cursor for all its statements
    assert _attempts(shop, "a") == 3  # the failed block's bump was rolled back


def test_orm_core_and_prepared_work_commit_or_roll_back_together(shop: Shop) -> None:
    with shop.db.write() as s:
        s.add(OutboxJob(kind="k", ref="b", payload={}, run_after=utcnow(), created_at=utcnow()))
        s.flush()
        _BUMP.run(s, {"ref": "b"})
        s.execute(update(OutboxJob).where(OutboxJob.ref == "b").values(kind="k2"))
    with shop.db.read() as s:
        job = s.execute(select(OutboxJob).where(OutboxJob.ref == "b")).scalar_one()
        assert (job.kind, job.attempts) == ("k2", 1)
    with pytest.raises(RuntimeError), shop.db.write() as s:
        s.execute(update(OutboxJob).where(OutboxJob.ref == "b").values(kind="k3"))
        _BUMP.run(s, {"ref": "b"})
        s.add(OutboxJob(kind="k", ref="c", payload={}, run_after=utcnow(), created_at=utcnow()))
        s.flush()
        raise RuntimeError("undo all three")
    with shop.db.read() as s:
        job = s.execute(select(OutboxJob).where(OutboxJob.ref == "b")).scalar_one()
        assert (job.kind, job.attempts) == ("k2", 1)
        assert s.execute(select(OutboxJob).where(OutboxJob.ref == "c")).first() is None


def test_work_after_a_commit_part_way_is_still_transactional(shop: Shop) -> None:
    with shop.db.write() as s:
        enqueue(s, "k", {}, ref="d")
    with pytest.raises(RuntimeError), shop.db.write() as s:
        _BUMP.run(s, {"ref": "d"})
        s.commit()  # kept
        _BUMP.run(s, {"ref": "d"})  # in a transaction of its own again
        raise RuntimeError("undo the second")
    assert _attempts(shop, "d") == 1


def test_a_kept_reader_sees_what_was_committed_since_its_last_read(shop: Shop) -> None:
    with shop.db.write() as s:
        enqueue(s, "k", {}, ref="e")
    assert _attempts(shop, "e") == 0

    def bump_elsewhere() -> None:  # another thread, so another connection
        with shop.db.write() as s:
            _BUMP.run(s, {"ref": "e"})

    t = threading.Thread(target=bump_elsewhere)
    t.start()
    t.join()
    assert _attempts(shop, "e") == 1


def test_a_read_inside_a_write_of_the_same_thread(shop: Shop) -> None:
    with shop.db.write() as s:
        enqueue(s, "k", {}, ref="f")
        with shop.db.read() as r:
            r.execute(text("SELECT 1")).scalar_one()
        _BUMP.run(s, {"ref": "f"})
    assert _attempts(shop, "f") == 1


def test_a_connection_that_saw_a_database_error_is_replaced(shop: Shop) -> None:
    with shop.db.write() as s:
        enqueue(s, "k", {}, ref="g")
        first = s.bind
    with pytest.raises(IntegrityError), shop.db.write() as s:
        s.execute(
            text(
                "INSERT INTO kernel_outbox (id, kind, payload, status, attempts, run_after, "
                "created_at) SELECT id, kind, payload, status, attempts, run_after, "
                "created_at FROM kernel_outbox WHERE ref = 'g'"
            )
        )
    with shop.db.write() as s:
        assert s.bind is not first and first.closed  # given back; a new one checked out
        assert s.info["kami_kept"][3].connection is _driver(s)  # its cursor with it
        _BUMP.run(s, {"ref": "g"})
    assert _attempts(shop, "g") == 1


@pytest.mark.skipif(BACKEND != "postgresql", reason="a server that drops the connection")
def test_a_connection_the_server_dropped_fails_once_then_the_next_is_fresh(shop: Shop) -> None:
    with shop.db.write() as s:
        enqueue(s, "k", {}, ref="h")
        pid = s.execute(text("SELECT pg_backend_pid()")).scalar_one()
    with shop.db.engine.connect() as other:
        other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        other.commit()
    with pytest.raises(DBAPIError), shop.db.write() as s:
        _BUMP.run(s, {"ref": "h"})
    with shop.db.write() as s:
        assert s.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
        _BUMP.run(s, {"ref": "h"})
    assert _attempts(shop, "h") == 1
