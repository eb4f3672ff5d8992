"""Named secrets are made once, at start, in a write transaction.

One made lazily inside a read was rolled back with it on PostgreSQL (and refused once reads
stopped opening a transaction), so a process kept a secret the database never stored: the next
process made another, and whatever the first had sealed with it (TOTP secrets) was lost.
"""

from __future__ import annotations

from sqlalchemy import text

from kami import accounts, bootstrap, fulfilment, licenses, vault


def test_every_named_secret_is_stored_when_the_shop_starts(
    container: bootstrap.Container,
) -> None:
    expected = {
        vault.FINGERPRINT_SECRET,
        fulfilment.ORDER_TOKEN_SECRET,
        fulfilment.WEBHOOK_SECRET,
        fulfilment.ORDER_SALT,
        fulfilment.LOOKUP_SECRET,
        fulfilment.DOWNLOAD_SECRET,
        accounts.TOTP_SECRET,
        licenses.SIGNING_SECRET,
        licenses.FINGERPRINT_SECRET,
        bootstrap.SANDBOX_SECRET,
    }
    with container.shop.db.read() as s:
        stored = set(
            s.execute(text("SELECT name FROM vault_data_key WHERE name IS NOT NULL")).scalars()
        )
    assert expected <= stored, f"made lazily, not at start: {sorted(expected - stored)}"
