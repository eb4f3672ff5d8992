"""`kami suppliers …`: check the supplier accounts, buy stock now, list what waits for a person."""

from __future__ import annotations

from typing import Annotated

import typer

from kami.cli.context import clear_errors, console, container, settings

app = typer.Typer(
    help="Upstream suppliers (direct recharge, card purchases).", no_args_is_help=True
)


@app.command("check")
def check(
    balance: Annotated[
        bool, typer.Option("--balance", help="also ask each account's balance (calls it)")
    ] = False,
) -> None:
    """Check every configured supplier account (missing options, secrets) without starting."""
    from kami.supplier_config import check_suppliers

    s = settings()
    checks = check_suppliers(s)
    if not checks:
        console.print("no supplier account is configured (see docs/suppliers.md)")
    failed = False
    for c in checks:
        status = "[red]FAILED[/]" if c.errors else "[green]ok[/]"
        state = "" if c.enabled else " (disabled)"
        console.print(f"{c.name}: {status}{state}  [dim]{c.protocol}, {c.source}[/]")
        for problem in c.errors:
            console.print(f"  error: {problem}")
        if not c.errors:
            console.print(f"  callback URL: {c.callback_url}")
        if balance and c.supplier is not None:
            left = c.supplier.balance()
            shown = "unknown" if left is None else f"{left // 100}.{left % 100:02d}"
            console.print(f"  balance: {shown}")
        failed = failed or bool(c.errors)
    if failed:
        raise typer.Exit(2)


@app.command("procure")
def procure(
    sku: Annotated[str | None, typer.Option(help="only this SKU (default: every SKU)")] = None,
) -> None:
    """Buy card keys now for SKUs below their procurement threshold (the worker does this too)."""
    from kami import fulfilment

    with clear_errors(), container() as c:
        if sku:
            fulfilment.settle_open_purchases(c.shop)
            done = [fulfilment.procure_sku(c.shop, sku)]
        else:
            done = fulfilment.procure_due(c.shop)
        if not done:
            console.print("no SKU has procurement settings")
        for p in done:
            what = f"{p.quantity} key(s) ordered, {p.customer_order_no}: {p.status}"
            console.print(f"{p.sku}: {what if p.quantity else p.reason}")


@app.command("review")
def review() -> None:
    """Recharge lines whose supplier outcome stayed unknown: ask the supplier, then fulfil or
    fail them by hand."""
    from kami import fulfilment

    with clear_errors(), container() as c:
        waiting = fulfilment.escalated_lines(c.shop)
        if not waiting:
            console.print("nothing waits for a person")
        for line, row in waiting:
            console.print(
                f"line {line.id} ({line.sku_code}): {row.supplier} #{row.customer_order_no} "
                f"— {row.detail or 'unknown'}"
            )
