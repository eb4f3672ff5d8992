"""`kami vault`: master key status and rotation."""

from __future__ import annotations

import typer
from rich.progress import Progress

from kami import vault
from kami.cli.context import clear_errors, console, container

app = typer.Typer(help="The key vault's master keys.", no_args_is_help=True)


@app.command("status")
def status() -> None:
    """Which master key versions wrap how many data keys."""
    with clear_errors(), container() as c, c.db.read() as s:
        usage = vault.master_key_usage(s)
        ring = c.shop.cipher.keyring
    console.print(
        f"current master key version: {ring.current_version} "
        f"(available versions: {sorted(ring.keys)})"
    )
    for version, count in sorted(usage.items()):
        console.print(f"  version {version}: {count} data key(s)")


@app.command("rotate")
def rotate(
    generate: bool = typer.Option(True, help="add a new master key version to the key file first"),
) -> None:
    """Re-wrap every data key under a new master key, without downtime.

    With a key file, a new version is generated and appended; running processes pick it up when
    they meet it. With KAMI_MASTER_KEY, add the new 'N:<base64>' entry on every process first and
    run with --no-generate.
    """
    with clear_errors(), container() as c:
        ring = c.shop.cipher.keyring
        if generate:
            version = ring.add_generated_version()
            console.print(f"new master key version {version} written to {ring.path}; back it up")
        with Progress(console=console) as bar:
            task = bar.add_task("re-wrapping", total=None)

            def on_progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            n = vault.rotate(c.db, c.shop.cipher, on_progress=on_progress)
    console.print(f"{n} data key(s) re-wrapped to version {ring.current_version}")
