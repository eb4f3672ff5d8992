"""Acceptance: a 1,000,000-line import finishes with bounded memory and reports duplicates and
bad lines by line number.

The real CLI (`kami keys import`) runs as a child process against the test database; its peak
resident memory is read from the kernel's accounting (`ru_maxrss`) of that one process.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from kami import fulfilment, vault
from kami.config import Settings
from tests.conftest import MASTER_KEY, add_keys, make_sku

LINES = 1_000_000
RSS_LIMIT_MB = 300
REPO = Path(__file__).resolve().parents[2]

BAD = {
    77_777: (b"BAD\x01KEY", "card contains a control character"),
    250_000: (b"X" * 600, "card longer than 512 characters"),
    600_001: (b"\xff\xfe\xfd-NOT-UTF8", "not valid UTF-8"),
    999_998: (b"\x7f", "card contains a control character"),
}
REPEATS = {2: 1, 500_000: 10, 999_999: 123_456, 1_000_000: 123_456}  # line: the line it repeats
IN_STOCK = (42, 700_000)  # these lines' keys are imported before the file
BLANK = (300_000,)


def key(n: int) -> str:
    return f"MK{n:07d}-{(n * 2654435761) % 2**32:08X}"


def write_file(path: Path) -> None:
    """Streamed out in blocks; the file is never held whole."""
    with path.open("wb") as fh:
        block: list[bytes] = []
        for n in range(1, LINES + 1):
            if n in BAD:
                line = BAD[n][0]
            elif n in BLANK:
                line = b""
            else:
                line = key(REPEATS.get(n, n)).encode()
            block.append(line + b"\n")
            if len(block) >= 20_000:
                fh.writelines(block)
                block = []
        fh.writelines(block)


# Runs the command and reports its peak RSS. A child's ru_maxrss also counts the memory of the
# process it was forked from (up to its exec), so the CLI is started from this small launcher and
# not straight from the test process, whose own size would be counted otherwise.
LAUNCHER = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[1:])
print("\\nchild-peak-rss-kb", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, flush=True)
sys.exit(code)
"""


def run_cli(args: list[str], env: dict[str, str], out: Path) -> tuple[int, float]:
    """Exit code and peak RSS in MB of the command."""
    with out.open("wb") as fh:
        code = subprocess.call(
            [sys.executable, "-c", LAUNCHER, *args],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    found = re.search(r"child-peak-rss-kb (\d+)", out.read_text(errors="replace"))
    assert found, out.read_text(errors="replace")[-3000:]
    return code, int(found.group(1)) / 1024  # kB on Linux


def numbers(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", text)]


def test_million_line_import_through_the_cli(
    shop: fulfilment.Shop, settings: Settings, tmp_path: Path
) -> None:
    sku = make_sku(shop, "MILLION")
    pre = add_keys(shop, sku, [key(n) for n in IN_STOCK])
    assert pre.imported == len(IN_STOCK)
    path = tmp_path / "million.txt"
    write_file(path)

    env = {
        **os.environ,
        "KAMI_DATABASE_URL": settings.database_url,
        "KAMI_MASTER_KEY": MASTER_KEY,
        "KAMI_MASTER_KEY_FILE": str(tmp_path / "unused.key"),
        "KAMI_SANDBOX_ENABLED": "false",
        "COLUMNS": "4000",  # rich would wrap the report at 80 columns
        "NO_COLOR": "1",
    }
    out = tmp_path / "cli.out"
    code, peak_mb = run_cli(
        [sys.executable, "-m", "kami.cli.main", "keys", "import", "--sku", "MILLION", str(path)],
        env,
        out,
    )
    text = out.read_text(encoding="utf-8", errors="replace")
    assert code == 0, text[-3000:]

    invalid = len(BAD)
    in_file = len(REPEATS)
    in_stock = len(IN_STOCK)
    imported = LINES - len(BLANK) - invalid - in_file - in_stock
    summary = re.search(
        r"batch (\S+): (\d+) imported, (\d+) duplicate in file, (\d+) already in stock, "
        r"(\d+) invalid",
        text,
    )
    assert summary, text[-3000:]
    batch = summary.group(1)
    assert [int(summary.group(i)) for i in (2, 3, 4, 5)] == [imported, in_file, in_stock, invalid]

    reported_bad = {int(n): reason for n, reason in re.findall(r"line (\d+): (.+)", text)}
    assert reported_bad == {n: reason for n, (_, reason) in BAD.items()}
    dup_file = re.search(r"duplicate lines in file: ([\d, ]+)", text)
    dup_stock = re.search(r"lines already in stock: ([\d, ]+)", text)
    assert dup_file and sorted(numbers(dup_file.group(1))) == sorted(REPEATS)
    assert dup_stock and sorted(numbers(dup_stock.group(1))) == sorted(IN_STOCK)

    with shop.db.read() as s:
        assert vault.count_available(s, [sku.id]) == {sku.id: imported + in_stock}
        [row] = [b for b in vault.stock_by_batch(s, sku.id) if b.batch == batch]
    assert row.imported == imported and row.source_name == "million.txt"

    print(f"1,000,000-line import: child peak RSS {peak_mb:.0f} MB")  # shown with -s
    assert peak_mb < RSS_LIMIT_MB, f"the import peaked at {peak_mb:.0f} MB"
