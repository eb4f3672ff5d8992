"""Runs outbox jobs and the periodic sweeps (expiry, awaiting-stock) until told to stop.

`kami serve` runs it in threads: in its one process, or with several request processes in the
supervising process, away from every request's event loop. `kami worker` runs it alone for
deployments with separate worker processes. Several may run at once: jobs are leased, sweeps
are guarded updates.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from kami import fulfilment
from kami.bootstrap import Container
from kami.kernel.outbox import run_due_jobs

log = logging.getLogger("kami.worker")

SWEEP_EVERY = 5.0
# Jobs run per cycle at most. A cycle that ran fewer found the queue drained and waits the poll
# interval before the next: looping at once after every job made each purchase cost the worker
# four more transactions (measured on the purchase bench at low concurrency).
JOBS_PER_CYCLE = 100


def run_once(container: Container, *, sweep: bool = True) -> int:
    ran = run_due_jobs(container.db, container.job_handlers(), limit=JOBS_PER_CYCLE)
    # SQLite: the WAL is copied back here, off the commit path (kami.kernel.db).
    container.db.checkpoint()
    # Expiry runs every cycle: it is one indexed update and it gives reserved keys back.
    fulfilment.expire_orders(container.shop)
    # Goods from the seller's webhook: every cycle, each line when its attempt is due.
    fulfilment.drive_due(container.shop)
    if sweep:
        fulfilment.serve_awaiting_stock(container.shop)
        fulfilment.procure_due(container.shop)  # card keys bought when a SKU runs low
        s = container.settings
        fulfilment.sync_due(
            container.shop,
            after=timedelta(minutes=s.sync_after_minutes),
            every=timedelta(minutes=s.sync_every_minutes),
        )
        fulfilment.sync_refunds_due(
            container.shop, after=timedelta(minutes=s.refund_sync_after_minutes)
        )
        fulfilment.send_validity_reminders(container.shop, days=s.validity_reminder_days)
    return ran


def run_forever(container: Container, stop: threading.Event) -> None:
    poll = container.settings.worker_poll_seconds
    since_sweep = SWEEP_EVERY
    while not stop.is_set():
        try:
            sweep = since_sweep >= SWEEP_EVERY
            ran = run_once(container, sweep=sweep)
            since_sweep = 0.0 if sweep else since_sweep + poll
        except Exception as exc:
            # The worker must outlive any one failure; the job keeps its record. The type only:
            # a message or a trace could carry a key or a secret (invariant 5).
            log.error("worker cycle failed: %s", type(exc).__name__)
            ran = 0
        if ran < JOBS_PER_CYCLE:
            stop.wait(poll)


def start_thread(container: Container) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(
        target=run_forever, args=(container, stop), name="kami-worker", daemon=True
    )
    thread.start()
    return thread, stop
