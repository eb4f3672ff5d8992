"""The migrations build exactly the schema the models declare, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from kami.kernel.db import Base
from kami.kernel.engine import normalise_url


def test_the_migrated_database_matches_the_models(database_url: str) -> None:
    # An index declared on a model but missing from the migrations (or the reverse) is a
    # query that is fast in one place and scans in the other.
    engine = create_engine(normalise_url(database_url))
    try:
        with engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert differences == []
