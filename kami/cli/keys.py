"""`kami keys`: import and stock."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from kami import catalog, fulfilment, vault
from kami.cli.context import clear_errors, console, container
from kami.kernel.errors import InvalidInput
from kami.kernel.money import check_currency, parse_major

app = typer.Typer(help="Card keys: import and stock.", no_args_is_help=True)


@app.command("import")
def import_keys(
    file: Path,
    sku: Annotated[str, typer.Option(help="SKU code the keys belong to")],
    format: Annotated[
        vault.SourceFormat | None, typer.Option(help="default: by file extension")
    ] = None,
    separator: Annotated[
        str | None, typer.Option(help="between card and password on a line")
    ] = None,
    supplier: Annotated[str, typer.Option()] = "",
    unit_cost: Annotated[
        str | None, typer.Option(help="cost per key in major units, e.g. 12.50")
    ] = None,
    cost_currency: Annotated[str, typer.Option()] = "CNY",
    expires: Annotated[
        str | None, typer.Option(help="batch expiry, ISO date with timezone")
    ] = None,
) -> None:
    """Import keys from a text, CSV or XLSX file (streamed; shows progress)."""
    from datetime import datetime

    with clear_errors(), container() as c:
        with c.db.read() as s:
            sku_view = catalog.get_sku(s, sku)
        cost = parse_major(unit_cost, cost_currency, where="--unit-cost") if unit_cost else None
        expiry = None
        if expires:
            try:
                expiry = datetime.fromisoformat(expires)
            except ValueError:
                raise InvalidInput(f"{expires!r} is not an ISO date", where="--expires") from None
            if expiry.tzinfo is None:
                raise InvalidInput(
                    "give --expires a timezone, e.g. 2027-01-01T00:00+08:00", where="--expires"
                )
        info = vault.BatchInfo(
            supplier=supplier,
            unit_cost_minor=cost,
            cost_currency=check_currency(cost_currency) if cost is not None else None,
            expires_at=expiry,
            source_name=file.name,
        )
        rows, progress = vault.open_rows(file, format, separator)
        with Progress(
            TextColumn("[bold]importing"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[keys]} keys"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        ) as bar:
            task = bar.add_task("import", total=max(progress.total, 1), keys=0)

            def on_chunk(r: vault.ImportReport) -> None:
                bar.update(
                    task, completed=progress.done, total=max(progress.total, 1), keys=r.imported
                )

            report = fulfilment.import_and_serve(c.shop, sku_view.id, rows, info, on_chunk=on_chunk)
            bar.update(task, completed=max(progress.total, 1))
    console.print(
        f"batch {report.batch}: [green]{report.imported} imported[/], "
        f"{report.duplicates_in_file} duplicate in file, "
        f"{report.duplicates_in_stock} already in stock, {report.invalid} invalid"
    )
    for line, reason in report.invalid_lines[:50]:
        console.print(f"  line {line}: {reason}")
    if report.invalid > 50:
        console.print(f"  … and {report.invalid - 50} more invalid lines")
    if report.duplicate_lines_in_file:
        console.print(
            "  duplicate lines in file: " + ", ".join(map(str, report.duplicate_lines_in_file[:50]))
        )
    if report.duplicate_lines_in_stock:
        console.print(
            "  lines already in stock: " + ", ".join(map(str, report.duplicate_lines_in_stock[:50]))
        )


@app.command("stock")
def stock(sku: Annotated[str | None, typer.Option(help="one SKU code")] = None) -> None:
    """Sellable stock per SKU and per import batch."""
    with clear_errors(), container() as c, c.db.read() as s:
        skus = [catalog.get_sku(s, sku)] if sku else catalog.list_skus(s)
        counts = vault.count_available(s)
        batches = vault.stock_by_batch(s)
    table = Table(
        "SKU",
        "name",
        "available",
        "alert",
        "batch",
        "supplier",
        "imported",
        "sold",
        "expired",
        "expires",
    )
    for v in skus:
        avail = counts.get(v.id, 0)
        alert = "LOW" if avail <= v.low_stock_threshold else ""
        table.add_row(
            v.code, f"{v.product_name} · {v.name}", str(avail), alert, "", "", "", "", "", ""
        )
        for b in batches:
            if b.sku_id == v.id:
                table.add_row(
                    "",
                    "",
                    str(b.available),
                    "",
                    b.batch,
                    b.supplier,
                    str(b.imported),
                    str(b.sold),
                    str(b.expired),
                    b.expires_at.date().isoformat() if b.expires_at else "-",
                )
    console.print(table)
