"""Scratch databases for the benchmark harnesses: made fresh, migrated, dropped afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, make_url, text

from kami import bootstrap
from kami.config import Settings
from kami.kernel.engine import normalise_url

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextmanager
def scratch_database(db: str, work: Path) -> Iterator[str]:
    """`db` is 'sqlite', 'postgresql' or a PostgreSQL server URL; yields a migrated database URL."""
    if db == "sqlite" or db.startswith("sqlite:"):
        url = f"sqlite:///{work / 'bench.db'}"
        bootstrap.migrate(Settings(database_url=url))
        yield url
        return
    admin_url = normalise_url(DEFAULT_PG if db == "postgresql" else db)
    if not admin_url.startswith("postgresql+psycopg://"):
        raise SystemExit("--db must be 'sqlite', 'postgresql' or a postgresql:// URL")
    name = f"kami_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    # make_url, not string surgery: the URL may end in a query (?host=/var/run/postgresql).
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        bootstrap.migrate(Settings(database_url=url))
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
