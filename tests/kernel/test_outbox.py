"""The outbox: retried with backoff, parked (never dropped), leased against crashed runners."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import text

from kami.fulfilment import Shop
from kami.kernel import outbox
from kami.kernel.clock import utcnow


def _due_now(shop: Shop) -> None:
    with shop.db.write() as s:
        s.execute(
            text("UPDATE kernel_outbox SET run_after = :t"), {"t": utcnow() - timedelta(seconds=1)}
        )


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
        s.flush()
        s.execute(
            text("UPDATE kernel_outbox SET status='running', locked_until=:t"),
            {"t": utcnow() - timedelta(seconds=1)},
        )
    seen: list[dict[str, Any]] = []
    assert outbox.run_due_jobs(shop.db, {"t.ok": seen.append}) == 1
    assert seen == [{}]


def test_backoff_grows_and_is_capped() -> None:
    delays = [outbox.backoff(n).total_seconds() for n in range(1, 20)]
    assert delays[:3] == [5, 10, 20]
    assert delays == sorted(delays) and max(delays) == 3600
