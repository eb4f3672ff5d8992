"""Streaming readers for key files: plain text, CSV and XLSX.

Each yields rows one at a time with their line (or sheet row) number, so a file of a million
lines is never held whole. Problems with a line are yielded as `BadLine`, never raised: one bad
line must not stop an import, and the report lists every one by number.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO

from kami.kernel.errors import InvalidInput
from kami.vault.cipher import Secret

MAX_LEN = 512


class SourceFormat(StrEnum):
    TEXT = "text"
    CSV = "csv"
    XLSX = "xlsx"


@dataclass(frozen=True, slots=True)
class GoodLine:
    line: int
    secret: Secret


@dataclass(frozen=True, slots=True)
class BadLine:
    line: int
    reason: str


Row = GoodLine | BadLine

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # a C0 control character or DEL
_HEADERS = {"card", "key", "code", "cdkey", "卡号", "卡密", "card_no", "serial"}


def _check(value: str, what: str) -> str | None:
    if not value:
        return f"empty {what}"
    if len(value) > MAX_LEN:
        return f"{what} longer than {MAX_LEN} characters"
    if _CONTROL.search(value):
        return f"{what} contains a control character"
    return None


def make_row(line: int, card: str, password: str | None, *, need_password: bool) -> Row:
    card = card.strip()
    password = password.strip() if password is not None else None
    problem = _check(card, "card")
    if problem is None and password is not None:
        problem = _check(password, "password")
    if problem is None and need_password and password is None:
        problem = "separator not found (card and password expected)"
    if problem:
        return BadLine(line, problem)
    return GoodLine(line, Secret(card, password or None))


class Progress:
    """How far a reader has got, in the reader's own units (bytes or rows), and of how many."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0


def read_text(stream: IO[bytes], progress: Progress, separator: str | None) -> Iterator[Row]:
    for n, raw in enumerate(stream, start=1):
        progress.done += len(raw)
        if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            text = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            yield BadLine(n, "not valid UTF-8")
            continue
        if not text.strip():
            continue
        if separator:
            card, sep, password = text.partition(separator)
            yield make_row(n, card, password if sep else None, need_password=True)
        else:
            yield make_row(n, text, None, need_password=False)


def read_csv(stream: IO[bytes], progress: Progress) -> Iterator[Row]:
    """CSV rows with the number of the physical line each starts on.

    Lines are decoded one at a time, so a byte that is not UTF-8 is reported on its own line. A
    record may not run past the end of its line: keys never contain line breaks, and a quote
    that is never closed would otherwise swallow the rest of the file silently.
    """
    at = [0]

    def texts() -> Iterator[str]:
        for n, raw in enumerate(stream, start=1):
            at[0] = n
            progress.done += len(raw)
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput("the CSV file is not UTF-8", where=f"line {n}") from None

    reader = csv.reader(texts())
    start = 1
    try:
        for record in reader:
            n, start = start, at[0] + 1
            if at[0] != n:
                raise InvalidInput(
                    "a quoted field runs past the end of its line (a quote is not closed)",
                    where=f"line {n}",
                )
            cells = [c.strip() for c in record]
            if not any(cells):
                continue
            if n == 1 and cells[0].lower() in _HEADERS:
                continue
            if len(cells) > 2 and any(cells[2:]):
                yield BadLine(n, f"expected 1 or 2 columns, found {len(cells)}")
                continue
            yield make_row(
                n, cells[0], cells[1] if len(cells) > 1 and cells[1] else None, need_password=False
            )
    except csv.Error as exc:
        detail = "a quote is not closed" if "field larger" in str(exc) else str(exc)
        raise InvalidInput(f"malformed CSV: {detail}", where=f"line {start}") from None


def read_xlsx(path: Path, progress: Progress) -> Iterator[Row]:
    from openpyxl import load_workbook  # imported lazily: only XLSX imports pay for it

    try:
        wb = load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:
        raise InvalidInput(f"not a readable XLSX workbook: {exc}", where=str(path.name)) from None
    try:
        ws = wb.worksheets[0]
        progress.total = ws.max_row or 0
        for n, values in enumerate(ws.iter_rows(values_only=True), start=1):
            progress.done = n
            cells = ["" if v is None else str(v).strip() for v in values]
            while cells and not cells[-1]:
                cells.pop()
            if not cells:
                continue
            if n == 1 and cells[0].lower() in _HEADERS:
                continue
            if len(cells) > 2:
                yield BadLine(n, f"expected 1 or 2 columns, found {len(cells)}")
                continue
            yield make_row(
                n, cells[0], cells[1] if len(cells) > 1 and cells[1] else None, need_password=False
            )
    finally:
        wb.close()


def guess_format(name: str) -> SourceFormat:
    lower = name.lower()
    if lower.endswith(".csv"):
        return SourceFormat.CSV
    if lower.endswith((".xlsx", ".xlsm")):
        return SourceFormat.XLSX
    return SourceFormat.TEXT


def open_rows(
    path: Path, fmt: SourceFormat | None = None, separator: str | None = None
) -> tuple[Iterator[Row], Progress]:
    """Rows of a key file and a progress object the caller can poll while iterating."""
    if not path.is_file():
        raise InvalidInput(f"no such file: {path}", where="file")
    fmt = fmt or guess_format(path.name)
    if separator is not None and (separator == "" or "\n" in separator):
        raise InvalidInput(
            "the separator must be a non-empty single-line string", where="separator"
        )
    if fmt is SourceFormat.XLSX:
        progress = Progress(0)
        return read_xlsx(path, progress), progress
    progress = Progress(path.stat().st_size)

    def rows() -> Iterator[Row]:
        with path.open("rb") as fh:
            if fmt is SourceFormat.CSV:
                yield from read_csv(fh, progress)
            else:
                yield from read_text(fh, progress, separator)

    return rows(), progress
