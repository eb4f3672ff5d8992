"""Helpers shared by the license tests."""

from __future__ import annotations

from datetime import datetime

from kami import fulfilment, licenses
from tests.conftest import make_sku


def licensed_sku(
    shop: fulfilment.Shop,
    code: str = "LIC-1",
    *,
    pattern: str = licenses.DEFAULT_PATTERN,
    limit: int = 3,
    days: int | None = None,
    product: str = "acme-editor",
) -> int:
    sku = make_sku(shop, code)
    with shop.db.write() as s:
        licenses.set_policy(
            s,
            sku.id,
            licenses.PolicyIn(
                pattern=pattern, activation_limit=limit, validity_days=days, product_code=product
            ),
        )
    return sku.id


def issue_keys(
    shop: fulfilment.Shop,
    sku_id: int,
    n: int = 1,
    *,
    order_id: int | None = None,
    now: datetime | None = None,
) -> list[str]:
    """Issue `n` licenses and reveal them, as the buyer would see them."""
    with shop.db.write() as s:
        issued = licenses.issue(s, shop.cipher, sku_id, order_id, n, now)
    with shop.db.read() as s:
        revealed = licenses.reveal(s, shop.cipher, [i.license_id for i in issued])
    assert [r.license_id for r in revealed] == [i.license_id for i in issued]
    return [r.key for r in revealed]


def request(
    key: str, machine: str = "machine-1", nonce: str | None = None
) -> licenses.LicenseRequest:
    return licenses.LicenseRequest(license_key=key, machine_id=machine, nonce=nonce)
