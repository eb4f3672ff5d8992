"""Alembic environment: the URL comes from the caller (kami db upgrade), never from a file."""

from alembic import context
from sqlalchemy import create_engine, pool

import kami.accounts.models
import kami.catalog.models
import kami.delivery.models
import kami.kernel.outbox
import kami.licenses.models
import kami.orders.lookup
import kami.orders.models
import kami.payments.models
import kami.vault.models  # noqa: F401  (every model module registers its tables)
from kami.kernel.db import Base
from kami.kernel.engine import PAGE_SIZE

config = context.config
url = str(config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url"))
target_metadata = Base.metadata


def run() -> None:
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            # A database the first migration makes takes Kami's page size (decision 0030); one
            # that has tables keeps its own, and SQLite ignores this.
            connection.exec_driver_sql(f"PRAGMA page_size = {PAGE_SIZE}")
            connection.commit()  # else the migrations join the PRAGMA's transaction and are undone
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run()
