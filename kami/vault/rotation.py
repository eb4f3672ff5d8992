"""Re-wrapping every data key under the newest master key, without downtime.

Only the small data-key rows change; key ciphertexts are untouched, so rotation takes seconds
for any pool size. Each data key is re-wrapped in its own short transaction: readers always see
either the old wrapping (old version still in the keyring) or the new one.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select, update

from kami.kernel.clock import utcnow
from kami.kernel.db import Database
from kami.vault.cipher import VaultCipher
from kami.vault.models import DataKey


def rotate(
    db: Database, cipher: VaultCipher, *, on_progress: Callable[[int, int], None] | None = None
) -> int:
    """Re-wrap data keys not yet under the current master version; returns how many."""
    target = cipher.keyring.current_version
    with db.read() as s:
        ids = list(
            s.execute(
                select(DataKey.id).where(DataKey.master_version != target).order_by(DataKey.id)
            ).scalars()
        )
    for n, key_id in enumerate(ids, start=1):
        with db.write() as s:
            row = s.get(DataKey, key_id)
            if row is None or row.master_version == target:
                continue
            dek = cipher.unwrap(row.master_version, row.wrapped)
            version, wrapped = cipher.wrap(dek, target)
            s.execute(
                update(DataKey)
                .where(DataKey.id == key_id, DataKey.master_version == row.master_version)
                .values(master_version=version, wrapped=wrapped, rotated_at=utcnow())
            )
        if on_progress:
            on_progress(n, len(ids))
    return len(ids)
