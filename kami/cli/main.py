"""`kami`: serve the shop, run the worker, migrate, load keys, inspect orders."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from kami import bootstrap
from kami.cli import admincmd, bench, keys, suppliers, suppliersim, vaultcmd
from kami.cli.context import clear_errors, console, container, err, settings
from kami.web.app import rate_limits
from kami.web.ratelimit import check_redis
from kami.worker import runner

app = typer.Typer(
    help="Kami: self-hosted shop with automatic delivery of virtual goods.", no_args_is_help=True
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
admin_app = typer.Typer(help="Admin accounts.", no_args_is_help=True)
orders_app = typer.Typer(help="Orders.", no_args_is_help=True)
gateways_app = typer.Typer(help="Payment channels.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(admin_app, name="admin")
admin_app.command("reset-2fa")(admincmd.reset_2fa)
app.add_typer(orders_app, name="orders")
app.add_typer(gateways_app, name="gateways")
app.add_typer(keys.app, name="keys")
app.add_typer(vaultcmd.app, name="vault")
app.add_typer(suppliers.app, name="suppliers")
app.command("supplier-sim")(suppliersim.supplier_sim)
app.command(
    "bench",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)(bench.bench)


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply the migrations shipped with Kami."""
    with clear_errors():
        bootstrap.migrate(settings(), revision)
    console.print("database is up to date")


@db_app.command("vacuum")
def db_vacuum() -> None:
    """SQLite: rebuild the database file with Kami's page size (stop the server first)."""
    from kami.kernel.sqlite_rebuild import rebuild

    with clear_errors():
        s = settings()
        if not s.is_sqlite:
            err.print("kami db vacuum is for SQLite; PostgreSQL has its own VACUUM")
            raise typer.Exit(2)
        path = s.database_url.split("///", 1)[-1]
        with console.status("rebuilding the database") as status:
            done = rebuild(
                path, tick=lambda t: status.update(f"rebuilding the database: {t:.0f} s")
            )
    console.print(
        f"rebuilt in {done.seconds:.1f} s: pages of {done.page_size_before} → {done.page_size} "
        f"bytes, {done.bytes_before / 2**20:.1f} → {done.bytes_after / 2**20:.1f} MiB"
    )


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="overrides KAMI_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="overrides KAMI_PORT")] = None,
    workers: Annotated[int, typer.Option(help="server processes")] = 1,
    no_worker: Annotated[
        bool, typer.Option("--no-worker", help="do not run jobs in-process")
    ] = False,
) -> None:
    """Serve the shop and the APIs, and run the jobs (unless --no-worker).

    With one process the jobs run in a thread of it. With several, the request processes run
    none: the supervising process, otherwise idle, runs one job thread per request process, so
    no request waits for the interpreter while a job holds it (decision 0010).
    """
    import uvicorn

    if host:
        os.environ["KAMI_HOST"] = host
    if port:
        os.environ["KAMI_PORT"] = str(port)
    if no_worker:
        os.environ["KAMI_INPROCESS_WORKER"] = "false"
    s = settings()
    # Fail early and clearly on a bad key, database URL or rate-limit setting, or a Redis that
    # refuses Kami, here, rather than in each server process (which uvicorn would restart).
    with clear_errors(), container():
        check_redis(s.redis_url)
        rate_limits(s)
    console.print(f"Kami serving on http://{s.host}:{s.port}")
    config = uvicorn.Config(
        "kami.web.app:create_app_from_env",
        factory=True,
        host=s.host,
        port=s.port,
        workers=workers,
        log_level="warning",
        access_log=False,
        forwarded_allow_ips=s.forwarded_allow_ips,
        http="kami.web.wire:HttpProtocol",  # a response in one write (decision 0021)
    )
    if workers <= 1:
        uvicorn.Server(config).run()
        return
    from uvicorn.supervisors import Multiprocess

    sock = config.bind_socket()
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto == 0:
        # uvicorn binds with proto 0, and asyncio then never sets TCP_NODELAY on the accepted
        # connections of worker processes: each request after the first on a kept-alive
        # connection waited ~43 ms for the peer's delayed ACK (measured by the purchase bench).
        sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
    if not s.inprocess_worker:  # --no-worker: jobs run in `kami worker` processes
        Multiprocess(config, sockets=[sock]).run()
        return
    os.environ["KAMI_INPROCESS_WORKER"] = "false"  # the request processes (spawned) run none
    with clear_errors(), container() as c:
        stops = [runner.start_thread(c)[1] for _ in range(workers)]
        try:
            Multiprocess(config, sockets=[sock]).run()
        finally:
            for stop in stops:
                stop.set()


@app.command()
def worker(once: Annotated[bool, typer.Option(help="run due jobs once and exit")] = False) -> None:
    """Run outbox jobs and the periodic sweeps (expiry, awaiting stock)."""
    with clear_errors(), container() as c:
        if once:
            ran = runner.run_once(c)
            console.print(f"ran {ran} job(s)")
            return
        stop = threading.Event()
        console.print("worker running; Ctrl-C to stop")
        try:
            runner.run_forever(c, stop)
        except KeyboardInterrupt:
            stop.set()


@app.command()
def demo(
    if_empty: Annotated[bool, typer.Option(help="do nothing when a catalog exists")] = False,
) -> None:
    """Load the demo catalog (腾讯视频, 爱奇艺, 网易一卡通) with demo keys."""
    from kami.cli.demo import load_demo

    with clear_errors(), container() as c:
        if load_demo(c.shop):
            console.print("demo catalog and keys loaded")
        elif not if_empty:
            err.print("a catalog already exists; nothing loaded")
            raise typer.Exit(1)


@admin_app.command("create")
def admin_create(
    username: str,
    role: Annotated[str, typer.Option(help="owner, operator or finance")] = "owner",
    password: Annotated[str | None, typer.Option(help="prompted when omitted")] = None,
) -> None:
    """Create an admin and print a bearer token for /api/admin/."""
    from kami import accounts

    if password is None:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    with clear_errors(), container() as c, c.db.write() as s:
        try:
            parsed_role = accounts.Role(role)
        except ValueError:
            raise typer.BadParameter("role must be owner, operator or finance") from None
        admin = accounts.create_admin(s, username, password, parsed_role)
        token = accounts.issue_token(s, admin.id)
    console.print(f"admin {admin.username} ({admin.role}) created")
    console.print("bearer token (shown once):")
    print(token)


@orders_app.command("show")
def orders_show(order_no: str) -> None:
    """An order with its items (masked) and timeline."""
    from kami import fulfilment

    with clear_errors(), container() as c:
        d = fulfilment.admin_detail(c.shop, order_no)
    o = d.order
    table = Table(title=f"Order {o.order_no}", show_header=False)
    for label, value in [
        ("status", o.status),
        ("item", f"{o.title} × {o.quantity}"),
        ("amount", f"{o.amount_minor} {o.currency} (minor units)"),
        ("email", o.email),
        ("gateway", o.gateway),
        ("trade no", o.trade_no or "-"),
        ("created", o.created_at.isoformat()),
        ("paid", o.paid_at.isoformat() if o.paid_at else "-"),
        ("delivered", o.delivered_at.isoformat() if o.delivered_at else "-"),
    ]:
        table.add_row(label, str(value))
    console.print(table)
    for item in d.items:
        console.print(f"  #{item.position} {item.masked}")
    console.print("timeline:")
    for e in d.timeline:
        extra = ", ".join(f"{k}={v}" for k, v in e.detail.items() if v is not None)
        console.print(f"  {e.at:%Y-%m-%d %H:%M:%S} {e.event} {extra}")


@gateways_app.command("check")
def gateways_check() -> None:
    """Check every configured payment channel (key formats, missing fields) without starting."""
    from kami.gateway_config import check_channels

    s = settings()
    checks = check_channels(s)
    failed = False
    if s.sandbox_enabled:
        console.print(
            "sandbox: enabled — a test channel where anyone can pay; never on a live shop"
        )
    if not checks and not s.sandbox_enabled:
        console.print("no payment channel is configured (see docs/payments.md)")
    for check in checks:
        status = "[red]FAILED[/]" if check.errors else "[green]ok[/]"
        state = "" if check.enabled else " (disabled)"
        console.print(f"{check.name}: {status}{state}  [dim]{check.channel}, {check.source}[/]")
        for problem in check.errors:
            console.print(f"  error: {problem}")
        for note in check.warnings:
            console.print(f"  warning: {note}")
        failed = failed or bool(check.errors)
    if failed:
        raise typer.Exit(2)


@orders_app.command("refund")
def orders_refund(
    order_no: str,
    reason: Annotated[str, typer.Option(help="why; shown on the order's timeline")],
    amount: Annotated[
        str | None, typer.Option(help="in major units, e.g. 12.50; omitted: all that is left")
    ] = None,
    keys: Annotated[
        str, typer.Option(help="keep | void | restock: what becomes of the order's keys")
    ] = "keep",
    key: Annotated[
        str | None,
        typer.Option(
            help="idempotency key; by default one made of the order, amount and reason, so "
            "running the same command again never refunds twice"
        ),
    ] = None,
) -> None:
    """Refund all or part of a paid order through its payment channel."""
    import hashlib

    from kami import fulfilment, orders
    from kami.kernel.money import Money, parse_major

    with clear_errors(), container() as c:
        with c.shop.db.read() as s:
            order = orders.get_order(s, order_no)
        minor = parse_major(amount, order.currency, where="--amount") if amount else None
        digest = hashlib.sha256(f"{minor}|{reason}|{keys}".encode()).hexdigest()[:32]
        out = fulfilment.request_refund(
            c.shop,
            order_no,
            amount_minor=minor,
            reason=reason,
            request_key=key or f"cli:{digest}",
            keys=keys,
            actor="cli",
        )
    r = out.refund
    money = Money(r.amount_minor, r.currency).format()
    console.print(
        f"refund {r.refund_no}: {money} {r.status}; order {order_no} is {out.order_status}"
    )
    if r.detail:
        console.print(f"  channel: {r.detail}")
    if out.note:
        console.print(f"  {out.note}")
    if r.status == "failed":
        raise typer.Exit(1)


@orders_app.command("refund-sync")
def orders_refund_sync(refund_no: str) -> None:
    """Ask the payment channel what became of a refund that is still open."""
    from kami import fulfilment

    with clear_errors(), container() as c:
        out = fulfilment.sync_refund(c.shop, refund_no)
    console.print(f"refund {refund_no}: {out.status}; order is {out.order_status}")


@orders_app.command("sync")
def orders_sync(order_no: str) -> None:
    """Ask the payment channel about an unpaid order and apply what it says (lost callback)."""
    from kami import fulfilment

    with clear_errors(), container() as c:
        result = fulfilment.sync_order(c.shop, order_no)
    if not result.found:
        console.print(f"{order_no}: the channel has no payment for it; status {result.status}")
    else:
        verdict = result.outcome.verdict if result.outcome else "not paid"
        console.print(f"{order_no}: payment found ({verdict}); status {result.status}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()


__all__ = ["Path", "app", "main"]
