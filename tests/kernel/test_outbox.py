"""The outbox: retried with backoff, parked (never dropped), leased against crashed runners."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from importlib import resources
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import event, text

from kami import bootstrap, fulfilment
from kami.fulfilment import Shop
from kami.kernel import outbox
from kami.kernel.clock import utcnow
from kami.worker import runner
from tests.conftest import BACKEND


def _set_jobs(shop: Shop, assignments: str, where: str = "TRUE", **values: Any) -> None:
    """`UPDATE kernel_outbox SET <assignments> WHERE <where>`: a job as a test needs it (`:t`
    and the like bound from `values`)."""
    with shop.db.write() as s:
        s.execute(text(f"UPDATE kernel_outbox SET {assignments} WHERE {where}"), values)


def _past() -> datetime:
    return utcnow() - timedelta(seconds=1)


def _due_now(shop: Shop) -> None:
    _set_jobs(shop, "run_after = :t", t=_past())


def test_job_runs_once_after_commit_and_not_after_rollback(shop: Shop) -> None:
    seen: list[dict[str, Any]] = []
    with shop.db.write() as s:
        outbox.enqueue(s, "t.ok", {"n": 1}, ref="R1")
    try:
        with shop.db.write() as s:
            outbox.enqueue(s, "t.ok", {"n": 2})
            raise RuntimeError("rolled back")
    except RuntimeError:
        pass
    assert outbox.run_due_jobs(shop.db, {"t.ok": seen.append}) == 1
    assert outbox.run_due_jobs(shop.db, {"t.ok": seen.append}) == 0
    assert seen == [{"n": 1}]
    with shop.db.read() as s:
        assert [j.status for j in outbox.list_jobs(s, ref="R1")] == ["done"]


def test_failing_job_backs_off_then_parks_and_can_be_retried(shop: Shop) -> None:
    calls = 0

    def boom(_: dict[str, Any]) -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("smtp down")

    with shop.db.write() as s:
        outbox.enqueue(s, "t.boom", {})
    assert outbox.run_due_jobs(shop.db, {"t.boom": boom}) == 1
    # Backed off: not due again straight away.
    assert outbox.run_due_jobs(shop.db, {"t.boom": boom}) == 0
    for _ in range(outbox.MAX_ATTEMPTS - 1):
        _due_now(shop)
        outbox.run_due_jobs(shop.db, {"t.boom": boom})
    assert calls == outbox.MAX_ATTEMPTS
    with shop.db.read() as s:
        (job,) = outbox.list_jobs(s)
    assert job.status == "parked" and "smtp down" in (job.last_error or "")
    _due_now(shop)
    assert outbox.run_due_jobs(shop.db, {"t.boom": boom}) == 0  # parked jobs stay parked
    with shop.db.write() as s:
        assert outbox.retry_job(s, job.id)
    assert outbox.run_due_jobs(shop.db, {"t.boom": lambda _: None}) == 1
    with shop.db.read() as s:
        assert outbox.list_jobs(s)[0].status == "done"


def test_unknown_kind_is_parked_not_lost(shop: Shop) -> None:
    with shop.db.write() as s:
        outbox.enqueue(s, "t.nobody", {})
    outbox.run_due_jobs(shop.db, {})
    with shop.db.read() as s:
        assert outbox.count_jobs(s) == {"parked": 1}


def test_a_crashed_runner_lease_expires_and_the_job_runs_again(shop: Shop) -> None:
    with shop.db.write() as s:
        outbox.enqueue(s, "t.ok", {})
    # As a runner killed mid-job leaves it: running, lease in the past.
    _set_jobs(shop, "status='running', locked_until=:t, run_after=:t", t=_past())
    seen: list[dict[str, Any]] = []
    assert outbox.run_due_jobs(shop.db, {"t.ok": seen.append}) == 1
    assert seen == [{}]


def test_a_leased_job_is_not_leased_again_until_its_lease_lapses(shop: Shop) -> None:
    with shop.db.write() as s:
        outbox.enqueue(s, "t.ok", {}, ref="L1")
    [leased] = outbox._lease(shop.db, 10)
    assert outbox._lease(shop.db, 10) == []  # a second runner, while the first runs it
    with shop.db.read() as s:
        [job] = outbox.list_jobs(s, ref="L1")
    assert job.status == "running" and job.run_after > utcnow() + outbox.LEASE / 2
    # The lease lapses, as when its runner was killed.
    _set_jobs(shop, "run_after = :t, locked_until = :t", t=utcnow())
    [again] = outbox._lease(shop.db, 10)
    assert (again.id, again.attempts) == (leased.id, 2)


@pytest.mark.parametrize("attempts", [outbox.MAX_ATTEMPTS - 1, outbox.MAX_ATTEMPTS])
def test_a_job_whose_runs_never_end_is_parked_after_the_last_attempt(
    shop: Shop, attempts: int
) -> None:
    """A handler that kills its worker never reaches the end of a run, where failures are
    counted: its lease lapses and it is leased again. The lease after the last attempt parks it
    unrun."""
    with shop.db.write() as s:
        outbox.enqueue(s, "t.fatal", {}, ref="F1")
    # As its worker left it when it died in its run.
    _set_jobs(
        shop, "status='running', attempts=:n, run_after=:t, locked_until=:t", n=attempts, t=_past()
    )
    ran: list[dict[str, Any]] = []
    assert outbox.run_due_jobs(shop.db, {"t.fatal": ran.append}) == 1
    with shop.db.read() as s:
        [job] = outbox.list_jobs(s, ref="F1")
    if attempts < outbox.MAX_ATTEMPTS:  # its last attempt: run
        assert ran == [{}] and job.status == "done"
    else:
        assert ran == [] and job.status == "parked"
        assert job.last_error is not None and "none of its last runs ended" in job.last_error


def test_a_runner_whose_lease_went_to_another_leaves_the_job_alone(shop: Shop) -> None:
    with shop.db.write() as s:
        outbox.enqueue(s, "t.ok", {}, ref="W1")
    [first] = outbox._lease(shop.db, 10)
    # The first runner overran its lease ...
    _set_jobs(shop, "run_after = :t, locked_until = :t", t=_past())
    [second] = outbox._lease(shop.db, 10)  # ... and another took the job
    # What the first runner does when it gets back changes nothing.
    outbox._finish(shop.db, first, "TimeoutError: slow", False)
    outbox._mark_done(shop.db, [first])
    outbox._give_back(shop.db, [first])
    with shop.db.read() as s:
        [job] = outbox.list_jobs(s, ref="W1")
    assert (job.status, job.attempts, job.last_error) == ("running", 2, None)
    assert job.run_after == second.lease_end
    outbox._mark_done(shop.db, [second])
    with shop.db.read() as s:
        [job] = outbox.list_jobs(s, ref="W1")
    assert job.status == "done" and job.finished_at == job.run_after <= utcnow()


def test_a_lease_taken_by_a_worker_before_migration_0017_is_kept(shop: Shop) -> None:
    with shop.db.write() as s:
        outbox.enqueue(s, "t.ok", {})
    # Such a worker moved locked_until only; run_after stayed when the job was queued.
    _set_jobs(shop, "status='running', locked_until=:t", t=utcnow() + outbox.LEASE)
    assert outbox._lease(shop.db, 10) == []


def test_the_poll_reads_the_live_jobs_through_their_own_index(shop: Shop) -> None:
    with shop.db.write() as s:
        for n in range(3):
            outbox.enqueue(s, "t.ok", {"n": n})
    polls: list[tuple[str, Any]] = []

    @event.listens_for(shop.db.engine, "before_cursor_execute")
    def _keep(conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool) -> None:
        if "kernel_outbox" in sql or "enable_bitmapscan" in sql:
            polls.append((sql, params))

    try:
        assert len(outbox._lease(shop.db, 32)) == 3
    finally:
        event.remove(shop.db.engine, "before_cursor_execute", _keep)
    if BACKEND == "postgresql":
        assert polls[0][0] == "SET LOCAL enable_bitmapscan = off"
        polls = polls[1:]
    (sql, params), _lease_update = polls
    raw = shop.db.engine.raw_connection()
    try:
        cur = raw.cursor()
        if BACKEND == "sqlite":
            cur.execute(f"EXPLAIN QUERY PLAN {sql}", params)
            plan = "\n".join(str(row[-1]) for row in cur.fetchall())
        else:
            cur.execute("SET enable_bitmapscan = off")  # as the poll does
            cur.execute("SET enable_seqscan = off")  # a tiny table: whichever index serves it
            cur.execute(f"EXPLAIN {sql}", params)
            plan = "\n".join(row[0] for row in cur.fetchall())
        raw.rollback()
    finally:
        raw.close()
    assert "ix_kernel_outbox_due" in plan and "Bitmap" not in plan, plan
    assert "ix_kernel_outbox_status" not in plan, plan


def test_migration_0017_keeps_the_leases_it_finds(shop: Shop) -> None:
    with shop.db.write() as s:
        outbox.enqueue(s, "t.ok", {"n": 1}, ref="M1")
        outbox.enqueue(s, "t.ok", {"n": 2}, ref="M2")
    # M1 leased by a runner of the code before: run_after untouched, the lease ahead.
    _set_jobs(shop, "status='running', locked_until=:t", "ref='M1'", t=utcnow() + outbox.LEASE)
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("kami") / "migrations"))
    cfg.attributes["database_url"] = shop.db.engine.url.render_as_string(hide_password=False)
    command.downgrade(cfg, "0016")
    command.upgrade(cfg, "head")
    assert [job.payload for job in outbox._lease(shop.db, 10)] == [{"n": 2}]
    with shop.db.read() as s:
        assert outbox.count_jobs(s) == {"running": 2}
        [m1] = outbox.list_jobs(s, ref="M1")
    assert m1.attempts == 0 and m1.run_after > utcnow()


def test_backoff_grows_and_is_capped() -> None:
    delays = [outbox.backoff(n).total_seconds() for n in range(1, 20)]
    assert delays[:3] == [5, 10, 20]
    assert delays == sorted(delays) and max(delays) == 3600


def _write_transactions(shop: Shop) -> list[int]:
    """A counter of the write transactions begun on the shop's engine from now on."""
    begun = [0]

    @event.listens_for(shop.db.engine, "begin")
    def _count(conn: Any) -> None:
        if conn.get_execution_options().get("kami_write"):
            begun[0] += 1

    return begun


def test_jobs_are_leased_and_finished_in_batches_in_order(shop: Shop) -> None:
    with shop.db.write() as s:
        for n in range(70):
            outbox.enqueue(s, "t.ok", {"n": n})
    seen: list[int] = []
    begun = _write_transactions(shop)
    assert outbox.run_due_jobs(shop.db, {"t.ok": lambda p: seen.append(p["n"])}) == 70
    assert seen == list(range(70))
    # One by one this took two write transactions a job (140); batches of 32 take six.
    assert begun[0] <= 2 * (70 // outbox.LEASE_BATCH + 1)
    with shop.db.read() as s:
        assert outbox.count_jobs(s) == {"done": 70}


def test_a_failure_in_a_batch_is_retried_alone(shop: Shop) -> None:
    with shop.db.write() as s:
        for n in range(5):
            outbox.enqueue(s, "t.job", {"n": n}, ref=f"J{n}")

    def handler(payload: dict[str, Any]) -> None:
        if payload["n"] == 2:
            raise RuntimeError("smtp down")

    assert outbox.run_due_jobs(shop.db, {"t.job": handler}) == 5
    with shop.db.read() as s:
        failed = outbox.list_jobs(s, ref="J2")[0]
        assert (failed.status, failed.attempts) == ("pending", 1)
        assert failed.last_error == "RuntimeError: smtp down"
        assert outbox.count_jobs(s) == {"done": 4, "pending": 1}


def test_a_batch_running_past_half_its_lease_gives_the_rest_back(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    with shop.db.write() as s:
        for n in range(4):
            outbox.enqueue(s, "t.slow", {"n": n}, ref=f"S{n}")
    clock = [1000.0]
    monkeypatch.setattr("kami.kernel.outbox.monotonic", lambda: clock[0])

    def slow(_payload: dict[str, Any]) -> None:
        clock[0] += outbox.LEASE.total_seconds()  # one job took the whole lease

    assert outbox.run_due_jobs(shop.db, {"t.slow": slow}) == 1
    with shop.db.read() as s:
        assert outbox.list_jobs(s, ref="S0")[0].status == "done"
        rest = [outbox.list_jobs(s, ref=f"S{n}")[0] for n in (1, 2, 3)]
    # Back on the queue at once, and the attempt they never had is not counted.
    assert [(j.status, j.attempts) for j in rest] == [("pending", 0)] * 3
    assert outbox.run_due_jobs(shop.db, {"t.slow": lambda _p: None}) == 3


def test_two_runners_at_once_run_each_job_once(shop: Shop) -> None:
    with shop.db.write() as s:
        for n in range(120):
            outbox.enqueue(s, "t.ok", {"n": n})
    seen: list[int] = []
    lock = threading.Lock()

    def handler(payload: dict[str, Any]) -> None:
        with lock:
            seen.append(payload["n"])

    threads = [
        threading.Thread(target=outbox.run_due_jobs, args=(shop.db, {"t.ok": handler}))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == list(range(120))


class _OneCycle(threading.Event):
    """A stop signal that stops the runner the first time it would wait."""

    def wait(self, timeout: float | None = None) -> bool:
        self.set()
        return True


def test_the_worker_waits_once_the_queue_is_drained(
    container: bootstrap.Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    with container.shop.db.write() as s:
        for n in range(3):
            outbox.enqueue(s, fulfilment.MAIL_JOB, {"order_no": f"K{n}", "event": "delivered"})
    cycles: list[int] = []

    def counted(c: bootstrap.Container, *, sweep: bool = True) -> int:
        cycles.append(outbox.run_due_jobs(c.db, c.job_handlers()))
        return cycles[-1]

    monkeypatch.setattr(runner, "run_once", counted)
    runner.run_forever(container, _OneCycle())
    # Three jobs, fewer than a cycle takes: the next cycle waits for the poll interval instead
    # of starting at once (each cycle costs several transactions even when it finds nothing).
    assert cycles == [3]


def test_a_failed_worker_cycle_is_logged_by_its_type_only(
    container: bootstrap.Container,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def failing(_c: bootstrap.Container, *, sweep: bool = True) -> int:
        raise RuntimeError("KEY-SECRET-0004 was in the message")

    monkeypatch.setattr(runner, "run_once", failing)
    runner.run_forever(container, _OneCycle())  # outlives the failure
    assert "worker cycle failed: RuntimeError" in caplog.text
    assert "KEY-SECRET" not in caplog.text and "Traceback" not in caplog.text
