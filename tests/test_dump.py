"""Invariant 5: a dump of the database shows no imported key in plaintext."""

from __future__ import annotations

import sqlite3
import subprocess

from sqlalchemy.engine import make_url

from kami import fulfilment
from kami.config import Settings
from tests.conftest import BACKEND, add_keys, make_sku, random_keys


def _dump(settings: Settings) -> str:
    if BACKEND == "sqlite":
        with sqlite3.connect(settings.database_url.split("///", 1)[1]) as conn:
            return "\n".join(conn.iterdump())
    url = make_url(settings.database_url)
    out = subprocess.run(
        [
            "pg_dump",
            "--no-owner",
            "-h",
            url.host or "127.0.0.1",
            "-p",
            str(url.port or 5432),
            "-U",
            url.username or "postgres",
            url.database or "",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out.stdout.decode()


def test_dump_holds_no_plaintext_key(settings: Settings, shop: fulfilment.Shop) -> None:
    sku = make_sku(shop, "DUMP-SKU")
    keys = random_keys(200, "PLAIN")
    pairs = [f"CARD{n:06d}" for n in range(50)]
    add_keys(shop, sku, keys)
    from kami import vault

    rows = [
        vault.GoodLine(n, vault.Secret(card, f"PWD-{card}-SECRET"))
        for n, card in enumerate(pairs, 1)
    ]
    fulfilment.import_and_serve(shop, sku.id, rows, vault.BatchInfo())
    dump = _dump(settings)
    assert "DUMP-SKU" in dump  # the dump is real and has the catalog in it
    leaked = [k for k in keys if k in dump] + [
        p for p in pairs if f"PWD-{p}-SECRET" in dump or p in dump
    ]
    assert leaked == []
