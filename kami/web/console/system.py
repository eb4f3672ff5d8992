"""Jobs (the outbox, parked jobs and their retry) and settings (payment channels as
`kami gateways check` sees them, SMTP, the master key): no secret is ever shown."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse

from kami import vault
from kami.gateway_config import check_channels
from kami.kernel import outbox
from kami.kernel.errors import InvalidInput, NotFound
from kami.web.console.frame import (
    PREFIX,
    Admin,
    ConsoleRoute,
    Form,
    redirect,
    render,
    signed_in,
    written,
)
from kami.web.deps import container, shop

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)

MAX_ID = 2**31 - 1


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request) -> Response:
    admin = signed_in(request)
    status = request.query_params.get("status", outbox.JobStatus.PARKED.value)
    if status and status not in set(outbox.JobStatus):
        raise InvalidInput(f"unknown job status {status[:40]!r}", where="status")
    with shop(request).db.read() as s:
        jobs = outbox.list_jobs(s, status=status or None, limit=200)
    return render(
        request,
        "jobs.html",
        admin=admin,
        jobs=jobs,
        status=status,
        statuses=[st.value for st in outbox.JobStatus],
    )


@router.post("/jobs/{job_id}/retry")
def retry_job(job_id: int, request: Request, _admin: Admin, _form: Form) -> Response:
    if not 1 <= job_id <= MAX_ID:
        raise NotFound(f"no parked job {job_id}", where="job_id")
    if not written(shop(request), outbox.retry_job, job_id):
        raise NotFound(f"no parked job {job_id}", where="job_id")
    return redirect(f"{PREFIX}/jobs")


@router.get("/settings", response_class=HTMLResponse)
def settings_page(request: Request) -> Response:
    admin = signed_in(request)
    c = container(request)
    settings = c.settings
    keyring = c.shop.cipher.keyring
    with c.shop.db.read() as s:
        usage = vault.master_key_usage(s)
    smtp = settings.smtp
    return render(
        request,
        "settings.html",
        admin=admin,
        channels=check_channels(settings),
        sandbox=settings.sandbox_enabled,
        smtp={
            "host": smtp.host,
            "port": smtp.port,
            "security": smtp.security,
            "sender": smtp.sender,
            "username": smtp.username,
            "password_set": smtp.password is not None,
        },
        master={
            "current": keyring.current_version,
            "versions": sorted(keyring.keys),
            "usage": sorted(usage.items()),
            "source": "KAMI_MASTER_KEY" if settings.master_key is not None else "file",
            "rotated": set(usage) <= {keyring.current_version},
        },
    )
