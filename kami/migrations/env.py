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

config = context.config
url = str(config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url"))
target_metadata = Base.metadata


def run() -> None:
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
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
