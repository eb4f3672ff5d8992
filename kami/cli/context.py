from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from pydantic import ValidationError
from rich.console import Console

from kami import bootstrap
from kami.config import Settings
from kami.kernel.errors import KamiError

console = Console()
err = Console(stderr=True)


def settings() -> Settings:
    """The settings from the environment; a bad one stops the command with a line per setting
    that names it (KAMI_…) and says what is wrong, not a traceback."""
    try:
        return Settings()
    except ValidationError as exc:
        for error in exc.errors():
            name = "KAMI_" + "__".join(str(part) for part in error["loc"]).upper()
            said = str(error["msg"]).removeprefix("Value error, ")
            err.print(f"[red]error:[/] {name}: {said}", highlight=False)
        raise typer.Exit(code=2) from None


@contextmanager
def container() -> Iterator[bootstrap.Container]:
    s = settings()
    logging.basicConfig(level=s.log_level, format="%(levelname)s %(name)s: %(message)s")
    c = bootstrap.build(s)
    if c.shop.cipher.keyring.generated:
        err.print(
            f"[bold red]A new master key was written to {s.master_key_file}. Back it up now, "
            "away from the database: without it the keys in stock cannot be read.[/]"
        )
    try:
        yield c
    finally:
        c.close()


def fail(exc: KamiError) -> typer.Exit:
    where = f" (at {exc.where})" if exc.where else ""
    err.print(f"[red]error:[/] {exc.detail}{where}")
    return typer.Exit(code=2)


@contextmanager
def clear_errors() -> Iterator[None]:
    """Turn domain errors into one clear line on stderr and exit code 2, never a traceback."""
    try:
        yield
    except KamiError as exc:
        raise fail(exc) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
