"""`kami supplier-sim`: run the upstream-supplier simulator in the foreground.

It speaks Fulu, 大猿人 and Kami's generic supplier protocol on one port, with the misbehaviour
asked for, and prints the URL and the (simulator-only) credentials to configure suppliers with.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console

from kami.suppliers import SimConfig, SimProduct, Simulator

# Its own consoles: the simulator needs no settings, database or master key (kami.cli.context
# would build them).
console = Console()
err = Console(stderr=True)


def _product(text: str) -> SimProduct:
    parts = text.split(":", 3)
    if len(parts) < 3 or not parts[1].isdigit() or parts[2] not in ("recharge", "card"):
        raise typer.BadParameter(
            f"{text!r}: expected ID:PRICE_IN_FEN:recharge|card[:NAME]", param_hint="--product"
        )
    kind: Literal["recharge", "card"] = "card" if parts[2] == "card" else "recharge"
    return SimProduct(parts[0], int(parts[1]), kind, parts[3] if len(parts) > 3 else "")


def supplier_sim(
    port: Annotated[int, typer.Option(help="port to listen on (0: any free port)")] = 9100,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    latency_ms: Annotated[int, typer.Option(help="delay before every answer")] = 0,
    fail_rate: Annotated[float, typer.Option(help="share of new orders refused")] = 0.0,
    timeout_rate: Annotated[
        float, typer.Option(help="share of new orders whose answer is held past the time-out")
    ] = 0.0,
    hang_s: Annotated[float, typer.Option(help="how long such an answer is held")] = 15.0,
    processing_rate: Annotated[
        float, typer.Option(help="share of new orders that stay processing for a while")
    ] = 0.0,
    processing_ms: Annotated[int, typer.Option(help="how long they stay processing")] = 3000,
    seed: Annotated[int | None, typer.Option(help="RNG seed, for reproducible runs")] = None,
    callback_url: Annotated[
        str | None, typer.Option(help="callback URL for Fulu (and orders without notify_url)")
    ] = None,
    balance: Annotated[
        int | None, typer.Option(help="starting balance of every account, in fen")
    ] = None,
    product: Annotated[
        list[str] | None,
        typer.Option(help="ID:PRICE_IN_FEN:recharge|card[:NAME], repeatable (replaces defaults)"),
    ] = None,
    ledger_file: Annotated[
        Path | None, typer.Option(help="write the ledger here as JSON after every change")
    ] = None,
) -> None:
    """Run the supplier simulator (Fulu, 大猿人, generic) until Ctrl-C."""
    base = SimConfig()
    try:
        config = SimConfig(
            host=host,
            port=port,
            latency_ms=latency_ms,
            fail_rate=fail_rate,
            timeout_rate=timeout_rate,
            hang_s=hang_s,
            processing_rate=processing_rate,
            processing_ms=processing_ms,
            seed=seed,
            callback_url=callback_url,
            products=tuple(_product(p) for p in product) if product else base.products,
            accounts=tuple(replace(a, balance_minor=balance) for a in base.accounts)
            if balance is not None
            else base.accounts,
            ledger_file=ledger_file,
        )
    except ValueError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    sim = Simulator(config)
    try:
        sim.start()
    except OSError as exc:
        err.print(f"[red]error:[/] cannot listen on {host}:{port}: {exc.strerror}")
        raise typer.Exit(2) from None
    console.print(
        f"supplier simulator on {sim.url}  (ledger: GET {sim.url}/_sim/ledger)", soft_wrap=True
    )
    for protocol in ("fulu", "dayuanren", "generic"):
        options = "  ".join(f"{k}={v}" for k, v in sim.options(protocol).items())
        console.print(f"  {protocol:<9} {options}", highlight=False, markup=False, soft_wrap=True)
    for item in config.products:
        console.print(
            f"  product {item.product_id}  {item.kind:<8} {item.price_minor} fen  {item.name}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    try:
        sim.stopping.wait()
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        sim.stop()
