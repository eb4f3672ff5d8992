"""Key files in, report out: the streaming readers and the import on both databases."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from openpyxl import Workbook
from sqlalchemy import bindparam, text

from kami import catalog, fulfilment, orders, vault
from kami.kernel.clock import utcnow
from kami.kernel.db import UtcDateTime
from kami.kernel.errors import Conflict, InvalidInput
from kami.vault import imports
from tests.conftest import make_sku, place, raw_notification, sandbox_body

Secret = vault.Secret


# -- helpers -----------------------------------------------------------------------------------
def write(tmp_path: Path, name: str, data: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def import_file(
    shop: fulfilment.Shop,
    sku: catalog.SkuView,
    path: Path,
    fmt: vault.SourceFormat | None = None,
    separator: str | None = None,
    **info: object,
) -> vault.ImportReport:
    rows, _progress = vault.open_rows(path, fmt, separator)
    return fulfilment.import_and_serve(shop, sku.id, rows, vault.BatchInfo(**info))  # type: ignore[arg-type]


def stored(shop: fulfilment.Shop, sku: catalog.SkuView) -> list[Secret]:
    """Every key of the SKU, decrypted, in insertion order."""
    with shop.db.read() as s:
        ids = list(
            s.execute(
                text("SELECT id FROM vault_key WHERE sku_id = :s ORDER BY id"), {"s": sku.id}
            ).scalars()
        )
        return vault.reveal_keys(s, shop.cipher, ids)


def count(shop: fulfilment.Shop, table: str) -> int:
    with shop.db.read() as s:
        return int(s.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def cards(secrets: list[Secret]) -> list[str]:
    return [x.card for x in secrets]


# -- plain text --------------------------------------------------------------------------------
def test_plain_text_one_key_per_line(shop: fulfilment.Shop, tmp_path: Path) -> None:
    sku = make_sku(shop)
    path = write(tmp_path, "keys.txt", "AAAA-0001\r\n  AAAA-0002  \nAAAA-0003")
    rows, progress = vault.open_rows(path)
    report = fulfilment.import_and_serve(shop, sku.id, rows, vault.BatchInfo())
    assert (report.imported, report.invalid, report.duplicates_in_file) == (3, 0, 0)
    assert report.lines_read == 3
    assert progress.done == progress.total == path.stat().st_size
    assert stored(shop, sku) == [Secret("AAAA-0001"), Secret("AAAA-0002"), Secret("AAAA-0003")]
    with shop.db.read() as s:
        assert vault.count_available(s) == {sku.id: 3}
        [batch] = vault.stock_by_batch(s, sku.id)
    assert batch.batch == report.batch and batch.imported == 3 and batch.available == 3


def test_blank_lines_are_skipped_and_numbering_is_physical(
    shop: fulfilment.Shop, tmp_path: Path
) -> None:
    sku = make_sku(shop)
    path = write(tmp_path, "keys.txt", "\nK-2\n   \n\t\r\nK-5\n\n\x01\n")
    report = import_file(shop, sku, path)
    assert report.imported == 2
    assert report.invalid_lines == [(7, "card contains a control character")]
    assert report.lines_read == 3  # blank lines are neither keys nor errors
    assert cards(stored(shop, sku)) == ["K-2", "K-5"]


@pytest.mark.parametrize("sep", ["----", ","])
def test_card_and_password_with_a_separator(
    shop: fulfilment.Shop, tmp_path: Path, sep: str
) -> None:
    sku = make_sku(shop)
    lines = [
        f"CARD-01{sep}PASS-01",  # 1
        f"  CARD-02 {sep} PASS-02 ",  # 2: both sides trimmed
        f"{sep}PASS-03",  # 3: empty card
        f"CARD-04{sep}",  # 4: empty password
        "CARD-05",  # 5: no separator
        f"CARD-06{sep}PASS\x0706",  # 6: control character in the password
        f"CARD-07{sep}PASS-07",  # 7
    ]
    report = import_file(shop, sku, write(tmp_path, "keys.txt", "\n".join(lines)), separator=sep)
    assert report.imported == 3
    assert report.invalid_lines == [
        (3, "empty card"),
        (4, "empty password"),
        (5, "separator not found (card and password expected)"),
        (6, "password contains a control character"),
    ]
    assert report.invalid == 4
    assert stored(shop, sku) == [
        Secret("CARD-01", "PASS-01"),
        Secret("CARD-02", "PASS-02"),
        Secret("CARD-07", "PASS-07"),
    ]


def test_separator_must_be_usable(tmp_path: Path) -> None:
    path = write(tmp_path, "keys.txt", "K\n")
    for bad in ("", "a\nb"):
        with pytest.raises(InvalidInput) as exc:
            vault.open_rows(path, separator=bad)
        assert exc.value.where == "separator"
    with pytest.raises(InvalidInput):
        vault.open_rows(tmp_path / "missing.txt")


def test_invalid_lines_are_reported_by_number_and_reason(
    shop: fulfilment.Shop, tmp_path: Path
) -> None:
    sku = make_sku(shop)
    data = b"\n".join(
        [
            b"GOOD-1",  # 1
            b"BAD\x01ONE",  # 2
            b"X" * 513,  # 3
            b"\xff\xfeNOT-UTF8",  # 4
            b"",  # 5: blank, skipped
            "\u5361\u5bc6-\u00e9".encode(),  # 6: non-ASCII but valid UTF-8
            b"Y" * 512,  # 7: exactly at the limit
            b"TAB\tINSIDE",  # 8
            b"DEL\x7f",  # 9
            b"GOOD-10",  # 10
        ]
    )
    report = import_file(shop, sku, write(tmp_path, "keys.txt", data))
    assert report.invalid_lines == [
        (2, "card contains a control character"),
        (3, "card longer than 512 characters"),
        (4, "not valid UTF-8"),
        (8, "card contains a control character"),
        (9, "card contains a control character"),
    ]
    assert report.invalid == 5
    assert report.imported == 4
    assert cards(stored(shop, sku)) == ["GOOD-1", "\u5361\u5bc6-\u00e9", "Y" * 512, "GOOD-10"]


def test_utf8_bom_is_not_part_of_the_first_key(shop: fulfilment.Shop, tmp_path: Path) -> None:
    sku = make_sku(shop)
    report = import_file(shop, sku, write(tmp_path, "keys.txt", b"\xef\xbb\xbfK-1\nK-2\n"))
    assert report.imported == 2 and report.invalid == 0
    csv_report = import_file(
        shop,
        sku,
        write(tmp_path, "keys.csv", b"\xef\xbb\xbfcard,password\r\nC-1,P-1\r\n"),
    )
    assert csv_report.imported == 1 and csv_report.invalid == 0  # the header was recognised
    sep_report = import_file(
        shop, sku, write(tmp_path, "pairs.txt", b"\xef\xbb\xbfS-1----P\n"), separator="----"
    )
    assert sep_report.imported == 1
    assert stored(shop, sku) == [
        Secret("K-1"),
        Secret("K-2"),
        Secret("C-1", "P-1"),
        Secret("S-1", "P"),
    ]
    # A second BOM-prefixed copy of the first key is a duplicate, not a new key.
    again = import_file(shop, sku, write(tmp_path, "again.txt", b"\xef\xbb\xbfK-1\n"))
    assert again.imported == 0 and again.duplicate_lines_in_stock == [1]


# -- CSV ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("header", "body", "expected"),
    [
        (None, ["K-1", "K-2"], [Secret("K-1"), Secret("K-2")]),
        ("key", ["K-1", "K-2"], [Secret("K-1"), Secret("K-2")]),
        (None, ["K-1,P-1", "K-2,"], [Secret("K-1", "P-1"), Secret("K-2")]),
        (
            "card,password",
            ["K-1,P-1", '"K,2","P ""2"""'],
            [Secret("K-1", "P-1"), Secret("K,2", 'P "2"')],
        ),
        ("卡号,卡密", ["K-1,P-1", " K-2 , P-2 "], [Secret("K-1", "P-1"), Secret("K-2", "P-2")]),
    ],
    ids=["1col", "1col-header", "2col", "2col-header-quoted", "2col-chinese-header"],
)
def test_csv_with_and_without_header(
    shop: fulfilment.Shop,
    tmp_path: Path,
    header: str | None,
    body: list[str],
    expected: list[Secret],
) -> None:
    sku = make_sku(shop)
    lines = ([header] if header else []) + body
    report = import_file(shop, sku, write(tmp_path, "keys.csv", "\r\n".join(lines) + "\r\n"))
    assert report.imported == len(expected) and report.invalid == 0
    assert stored(shop, sku) == expected


def test_csv_bad_rows_are_reported_by_line(shop: fulfilment.Shop, tmp_path: Path) -> None:
    sku = make_sku(shop)
    lines = [
        "card,password",  # 1: header
        "K-2,P-2",  # 2
        "K-3,P-3,EXTRA",  # 3: too many columns
        "K-4,P-4,",  # 4: a trailing empty column is tolerated
        ",P-5",  # 5: empty card
        "",  # 6: blank
        ",",  # 7: blank cells only
        "K-8\x02,P-8",  # 8: control character
        "K-9,P-9,x,y",  # 9
        "K-10",  # 10: password is optional in CSV
    ]
    report = import_file(shop, sku, write(tmp_path, "keys.csv", "\n".join(lines) + "\n"))
    assert report.invalid_lines == [
        (3, "expected 1 or 2 columns, found 3"),
        (5, "empty card"),
        (8, "card contains a control character"),
        (9, "expected 1 or 2 columns, found 4"),
    ]
    assert report.imported == 3
    assert stored(shop, sku) == [Secret("K-2", "P-2"), Secret("K-4", "P-4"), Secret("K-10")]


def test_header_is_only_recognised_on_the_first_line(shop: fulfilment.Shop, tmp_path: Path) -> None:
    sku = make_sku(shop)
    report = import_file(shop, sku, write(tmp_path, "keys.csv", "K-1\nkey\n"))
    assert report.imported == 2
    assert cards(stored(shop, sku)) == ["K-1", "key"]


def test_malformed_csv_names_the_line_and_imports_nothing(
    shop: fulfilment.Shop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sku = make_sku(shop)
    import_file(shop, sku, write(tmp_path, "first.txt", "OLD-1\nOLD-2\n"))
    # Small chunks: several chunks have been inserted before the reader fails.
    monkeypatch.setattr(imports, "CHUNK", 2)
    lines = [f"NEW-{n}" for n in range(1, 8)] + ['"' + "x" * 200_000 + '"', "NEW-9"]
    with pytest.raises(InvalidInput) as exc:
        import_file(shop, sku, write(tmp_path, "bad.csv", "\n".join(lines) + "\n"))
    assert exc.value.where == "line 8"
    assert "malformed CSV" in exc.value.detail
    assert cards(stored(shop, sku)) == ["OLD-1", "OLD-2"]
    assert count(shop, "vault_batch") == 1  # the failed import's batch was rolled back too


def test_unterminated_quote_names_its_line(shop: fulfilment.Shop, tmp_path: Path) -> None:
    sku = make_sku(shop)
    lines = ["K-1", '"K-2,P-2', *(f"K-{n}" for n in range(3, 30_000))]
    with pytest.raises(InvalidInput) as exc:
        import_file(shop, sku, write(tmp_path, "bad.csv", "\n".join(lines) + "\n"))
    assert exc.value.where == "line 2"
    assert count(shop, "vault_key") == 0


def test_csv_not_utf8_names_its_line(shop: fulfilment.Shop, tmp_path: Path) -> None:
    sku = make_sku(shop)
    data = b"".join(b"K-%d\n" % n for n in range(1, 3001)) + b"\xff\n" + b"K-3002\n"
    with pytest.raises(InvalidInput) as exc:
        import_file(shop, sku, write(tmp_path, "bad.csv", data))
    assert exc.value.where == "line 3001"
    assert count(shop, "vault_key") == 0


# -- XLSX --------------------------------------------------------------------------------------
def test_xlsx_first_sheet_by_row_number(shop: fulfilment.Shop, tmp_path: Path) -> None:
    sku = make_sku(shop)
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(["Card", "Password"])  # 1: header, any case
    ws.append(["X-2", "P-2"])  # 2
    ws.append([])  # 3: empty row
    ws.append([123456789, None])  # 4: a number, no password
    ws.append([None, "P-5"])  # 5: empty card
    ws.append(["X-6", "P-6", "oops"])  # 6: three columns
    ws.cell(row=9, column=1, value=" X-9 ")  # 9, after two missing rows
    ws.append(["X" * 513, "P"])  # 10: control characters cannot be stored, length can
    other = wb.create_sheet("ignored")
    other.append(["NOT-IMPORTED"])
    path = tmp_path / "keys.xlsx"
    wb.save(path)

    rows, progress = vault.open_rows(path)
    report = fulfilment.import_and_serve(shop, sku.id, rows, vault.BatchInfo())
    assert report.invalid_lines == [
        (5, "empty card"),
        (6, "expected 1 or 2 columns, found 3"),
        (10, "card longer than 512 characters"),
    ]
    assert report.imported == 3
    assert stored(shop, sku) == [Secret("X-2", "P-2"), Secret("123456789"), Secret("X-9")]
    assert progress.total == 10 and progress.done == 10


def test_a_file_that_is_not_a_workbook_is_refused(shop: fulfilment.Shop, tmp_path: Path) -> None:
    sku = make_sku(shop)
    with pytest.raises(InvalidInput) as exc:
        import_file(shop, sku, write(tmp_path, "keys.xlsx", "K-1\nK-2\n"))
    assert exc.value.where == "keys.xlsx"
    assert count(shop, "vault_key") == 0 and count(shop, "vault_batch") == 0


def _reference_mask(secret: Secret) -> str:
    """The definition `vault.mask` is optimised from, kept here as its specification."""
    card = secret.card
    alnum = [i for i, ch in enumerate(card) if ch.isalnum()]
    show = min(4, len(alnum) // 3)
    visible = set(alnum[:show]) | set(alnum[len(alnum) - show :] if show else [])
    masked = "".join(ch if (i in visible or not ch.isalnum()) else "*" for i, ch in enumerate(card))
    if len(masked) > 64:
        masked = masked[:30] + "…" + masked[-30:]
    return masked if secret.password is None else masked + " / ******"


def test_mask_matches_its_definition() -> None:
    rnd = random.Random(20261124)
    alphabets = ["AB9z-_ *./", "AB-_ 9x*z\u5361\u5bc6\u00e9\u0663\u00b2\u2160./:"]
    for n in range(20_000):
        alphabet = alphabets[n % 2]
        card = "".join(rnd.choice(alphabet) for _ in range(rnd.choice([0, 1, 3, 8, 12, 19, 70])))
        secret = Secret(card, rnd.choice([None, "pw"]))
        assert vault.mask(secret) == _reference_mask(secret), secret


# -- duplicates --------------------------------------------------------------------------------
def test_imported_keys_are_found_by_the_same_fingerprint(
    shop: fulfilment.Shop, tmp_path: Path
) -> None:
    """The import's batched fingerprint and cipher paths agree with the single-key ones."""
    sku = make_sku(shop)
    path = write(tmp_path, "keys.txt", "FIND-ME-1\nFIND-ME-2----PW\n")
    import_file(shop, sku, path)
    pairs = import_file(shop, sku, write(tmp_path, "p.txt", "FIND-ME-3----PW\n"), separator="----")
    assert pairs.imported == 1
    with shop.db.read() as s:
        for secret in (Secret("FIND-ME-1"), Secret("FIND-ME-2----PW"), Secret("FIND-ME-3", "PW")):
            [found] = vault.find_key(s, shop.cipher, secret)
            assert found.sku_id == sku.id and found.status == "available"
            assert vault.reveal_keys(s, shop.cipher, [found.key_id]) == [secret]
        assert vault.find_key(s, shop.cipher, Secret("FIND-ME-3")) == []
    fp_key = b"f" * 32
    fingerprint = shop.cipher.fingerprinter(fp_key)
    for secret in (Secret("A"), Secret("A", "B"), Secret("\u5361\u5bc6")):
        assert fingerprint(secret.encode()) == shop.cipher.fingerprint(fp_key, secret)


@pytest.mark.parametrize("chunk", [imports.CHUNK, 2], ids=["one-chunk", "many-chunks"])
def test_duplicates_in_file_and_in_stock_by_line(
    shop: fulfilment.Shop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(imports, "CHUNK", chunk)
    sku = make_sku(shop)
    other = make_sku(shop, "SKU-2")
    first = import_file(shop, sku, write(tmp_path, "first.txt", "OLD-1\nOLD-2\nOLD-3\n"))
    assert first.imported == 3
    lines = [
        "OLD-1",  # 1: in stock
        "NEW-1",  # 2
        "NEW-1",  # 3: repeats line 2
        "OLD-3 ",  # 4: in stock (after trimming)
        "",  # 5
        "NEW-2",  # 6
        "NEW-1",  # 7: repeats line 2
        "new-2",  # 8: case matters, a different key
        "NEW-2",  # 9: repeats line 6
        "OLD-1",  # 10: in stock, and repeats line 1
        "NEW-3",  # 11
    ]
    report = import_file(shop, sku, write(tmp_path, "second.txt", "\n".join(lines)))
    assert report.imported == 4
    assert report.duplicates_in_file + report.duplicates_in_stock == 6
    assert sorted(report.duplicate_lines_in_file + report.duplicate_lines_in_stock) == [
        1,
        3,
        4,
        7,
        9,
        10,
    ]
    assert {3, 7, 9} <= set(report.duplicate_lines_in_file)
    assert {1, 4} <= set(report.duplicate_lines_in_stock)
    assert len(report.duplicate_lines_in_file) == report.duplicates_in_file
    assert len(report.duplicate_lines_in_stock) == report.duplicates_in_stock
    assert report.lines_read == 10
    assert cards(stored(shop, sku)) == [
        "OLD-1",
        "OLD-2",
        "OLD-3",
        "NEW-1",
        "NEW-2",
        "new-2",
        "NEW-3",
    ]
    # The same keys under another SKU are not duplicates: uniqueness is per SKU.
    elsewhere = import_file(shop, other, write(tmp_path, "other.txt", "OLD-1\nNEW-1\n"))
    assert elsewhere.imported == 2 and elsewhere.duplicates_in_stock == 0
    with shop.db.read() as s:
        batches = {b.batch: b for b in vault.stock_by_batch(s)}
    assert batches[report.batch].imported == 4
    assert batches[elsewhere.batch].sku_id == other.id


def test_duplicate_lines_are_exact_when_not_in_stock(
    shop: fulfilment.Shop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(imports, "CHUNK", 3)
    sku = make_sku(shop)
    lines = ["A", "B", "A", "C", "D", "B", "E", "A", "F", "G", "C"]
    report = import_file(shop, sku, write(tmp_path, "keys.txt", "\n".join(lines)))
    assert report.imported == 7
    assert sorted(report.duplicate_lines_in_file) == [3, 6, 8, 11]
    assert report.duplicates_in_stock == 0 and report.duplicate_lines_in_stock == []


def test_same_card_with_another_password_is_a_different_key(
    shop: fulfilment.Shop, tmp_path: Path
) -> None:
    sku = make_sku(shop)
    path = write(tmp_path, "keys.txt", "C----P1\nC----P2\nC----P1\n")
    report = import_file(shop, sku, path, separator="----")
    assert report.imported == 2 and report.duplicate_lines_in_file == [3]
    plain = import_file(shop, sku, write(tmp_path, "plain.txt", "C\n"))
    assert plain.imported == 1  # a card alone is not the card with a password


def test_report_lists_are_capped_but_counts_are_complete(
    shop: fulfilment.Shop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(imports, "LISTED", 5)
    sku = make_sku(shop)
    data = "SAME\n" * 12 + "\x01\n" * 9
    report = import_file(shop, sku, write(tmp_path, "keys.txt", data))
    assert report.imported == 1
    assert report.duplicates_in_file == 11 and report.duplicate_lines_in_file == [2, 3, 4, 5, 6]
    assert report.invalid == 9
    assert [n for n, _ in report.invalid_lines] == [13, 14, 15, 16, 17]


# -- batch expiry ------------------------------------------------------------------------------
def _age(shop: fulfilment.Shop, batch: str, expires_at: datetime) -> None:
    """Move a batch's expiry (as if time had passed): the import refuses a past date."""
    stmt = text(
        "UPDATE vault_key SET expires_at = :t "
        "WHERE batch_id = (SELECT id FROM vault_batch WHERE public_id = :b)"
    ).bindparams(bindparam("t", type_=UtcDateTime()))
    with shop.db.write() as s:
        s.execute(stmt, {"t": expires_at, "b": batch})
        s.execute(
            text("UPDATE vault_batch SET expires_at = :t WHERE public_id = :b").bindparams(
                bindparam("t", type_=UtcDateTime())
            ),
            {"t": expires_at, "b": batch},
        )


def test_expiry_in_the_past_is_refused(shop: fulfilment.Shop, tmp_path: Path) -> None:
    sku = make_sku(shop)
    path = write(tmp_path, "keys.txt", "K-1\n")
    for past in (utcnow() - timedelta(minutes=1), utcnow() - timedelta(days=400)):
        with pytest.raises(InvalidInput) as exc:
            import_file(shop, sku, path, expires_at=past)
        assert exc.value.where == "expires_at"
    assert count(shop, "vault_key") == 0 and count(shop, "vault_batch") == 0
    ok = import_file(shop, sku, path, expires_at=utcnow() + timedelta(days=1))
    assert ok.imported == 1


def test_claims_take_the_earliest_expiring_unexpired_key(
    shop: fulfilment.Shop, tmp_path: Path
) -> None:
    sku = make_sku(shop)
    now = utcnow()
    # Imported in an order unlike expiry order, so id order cannot pass for expiry order.
    import_file(shop, sku, write(tmp_path, "never.txt", "NEVER-1\n"))
    import_file(
        shop,
        sku,
        write(tmp_path, "late.txt", "LATE-1\nLATE-2\n"),
        expires_at=now + timedelta(days=30),
    )
    import_file(
        shop, sku, write(tmp_path, "soon.txt", "SOON-1\n"), expires_at=now + timedelta(hours=2)
    )
    import_file(
        shop, sku, write(tmp_path, "mid.txt", "MID-1\n"), expires_at=now + timedelta(days=3)
    )

    def claim(quantity: int, at: datetime, order_id: int) -> list[str]:
        with shop.db.write() as s:
            ids = vault.claim_keys(s, sku.id, order_id, quantity, at)
            return cards(vault.reveal_keys(s, shop.cipher, ids))

    # Three hours on, the SOON batch has expired: it is skipped though it expires first.
    later = now + timedelta(hours=3)
    assert claim(1, later, 1) == ["MID-1"]
    assert claim(2, later, 2) == ["LATE-1", "LATE-2"]
    assert claim(2, later, 3) == []  # only NEVER-1 is sellable: all or none
    assert claim(1, later, 4) == ["NEVER-1"]
    assert claim(1, later, 5) == []
    # At the real now SOON-1 has not expired and is still available for sale.
    assert claim(1, utcnow(), 6) == ["SOON-1"]


def test_keys_of_an_expired_batch_are_never_sold(shop: fulfilment.Shop, tmp_path: Path) -> None:
    sku = make_sku(shop, price=500)
    now = utcnow()

    def batch(name: str, keys: str, expires_at: datetime | None) -> vault.ImportReport:
        return import_file(shop, sku, write(tmp_path, name, keys), expires_at=expires_at)

    def pay(placed: fulfilment.PlacedOrder) -> fulfilment.Outcome:
        body = sandbox_body(placed.order.order_no, placed.order.amount_minor)
        return fulfilment.handle_notification(shop, raw_notification(body))

    def buy() -> list[str]:
        placed = place(shop, sku.code)
        assert pay(placed).delivered
        _, items = fulfilment.reveal(
            shop, placed.order.order_no, placed.access_token, ip=None, user_agent=None
        )
        return [i.card for i in items]

    batch("plain.txt", "PLAN-KEY-0001\n", None)
    batch("fresh.txt", "FRSH-KEY-0001\n", now + timedelta(days=9))
    stale = batch("stale.txt", "STAL-KEY-0001\nSTAL-KEY-0002\n", now + timedelta(hours=1))
    assert stale.imported == 2
    _age(shop, stale.batch, now - timedelta(minutes=5))
    with shop.db.read() as s:
        assert vault.count_available(s) == {sku.id: 2}

    assert buy() == ["FRSH-KEY-0001"]  # the earliest-expiring key that has not expired
    assert buy() == ["PLAN-KEY-0001"]  # then the one without expiry, never the stale ones
    with pytest.raises(Conflict) as exc:
        place(shop, sku.code)
    assert exc.value.slug == "sold-out"

    with shop.db.read() as s:
        [b] = [b for b in vault.stock_by_batch(s, sku.id) if b.batch == stale.batch]
    assert (b.available, b.sold, b.expired) == (0, 0, 2)


def test_a_key_that_expires_between_checkout_and_payment_is_not_sold(
    shop: fulfilment.Shop, tmp_path: Path
) -> None:
    sku = make_sku(shop, price=500)
    now = utcnow()
    last = import_file(
        shop,
        sku,
        write(tmp_path, "last.txt", "LAST-KEY-0001\n"),
        expires_at=now + timedelta(hours=1),
    )
    placed = place(shop, sku.code)  # stock is checked (and possibly reserved) here
    _age(shop, last.batch, now - timedelta(seconds=1))
    body = sandbox_body(placed.order.order_no, placed.order.amount_minor)
    outcome = fulfilment.handle_notification(shop, raw_notification(body))
    assert outcome.verdict == "accepted"  # the money is kept track of either way
    with shop.db.read() as s:
        [b] = vault.stock_by_batch(s, sku.id)
        status = orders.get_order(s, placed.order.order_no).status
    assert b.sold == 0, "an expired key was sold"
    assert not outcome.delivered and status != "delivered"
