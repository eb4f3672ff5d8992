"""`kami bench NAME …`: run a harness from bench/ (claim, purchase, flashsale, import, steps,
console_import)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import typer

from kami.cli.context import err

# Modules of bench/ that the harnesses use, not harnesses themselves.
_NOT_HARNESSES = frozenset({"scratch", "loadgen", "bare_claim"})


def _bench_dir() -> Path | None:
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (base / "bench").is_dir():
            return base / "bench"
    return None


def bench(
    ctx: typer.Context,
    name: str = typer.Argument(
        help="harness name: claim, purchase, flashsale, import, steps or console_import"
    ),
) -> None:
    """Run a benchmark harness; its options follow the name (see `kami bench NAME --help`).

    Each prints one JSON object as its last line. The harnesses live in the source checkout's
    bench/ folder and are not part of an installed package.
    """
    folder = _bench_dir()
    if folder is None:
        err.print("error: no bench/ folder here; run from a Kami source checkout")
        raise typer.Exit(2)
    aliases = {"import": "import_keys"}
    script = folder / f"{aliases.get(name, name)}.py"
    if name in _NOT_HARNESSES or not script.is_file():
        known = sorted(p.stem for p in folder.glob("*.py") if p.stem not in _NOT_HARNESSES)
        err.print(f"error: no benchmark {name!r} (have: {', '.join(known)})")
        raise typer.Exit(2)
    sys.argv = [str(script), *ctx.args]
    runpy.run_path(str(script), run_name="__main__")
