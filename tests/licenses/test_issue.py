"""Policies, issue, reveal and revoke: keys are generated to the policy and stored like vault
keys, encrypted under the master key with a keyed fingerprint; the database never holds one."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

from kami import fulfilment, licenses
from kami.config import Settings
from kami.kernel.clock import utcnow
from kami.kernel.errors import InvalidInput, NotFound
from kami.licenses.keyformat import compact
from tests.conftest import make_sku
from tests.licenses import issue_keys, licensed_sku
from tests.test_dump import _dump


def test_policy_is_set_replaced_and_required(shop: fulfilment.Shop) -> None:
    sku = make_sku(shop, "PLAIN")
    with shop.db.write() as s:
        with pytest.raises(NotFound) as missing:
            licenses.issue(s, shop.cipher, sku.id, None, 1)
        assert missing.value.slug == "license-policy-missing" and missing.value.where == "sku_id"
        assert licenses.find_policy(s, sku.id) is None
        first = licenses.set_policy(s, sku.id, licenses.PolicyIn(product_code="p1"))
        assert (first.pattern, first.activation_limit, first.validity_days) == (
            licenses.DEFAULT_PATTERN,
            1,
            None,
        )
        second = licenses.set_policy(
            s,
            sku.id,
            licenses.PolicyIn(
                pattern="ACME-XXXX-XXXX-XXXX-XXXX",
                activation_limit=5,
                validity_days=30,
                product_code="p2",
            ),
        )
        assert second.created_at == first.created_at
        assert licenses.get_policy(s, sku.id) == second
        with pytest.raises(NotFound) as unknown:
            licenses.set_policy(s, 999_999, licenses.PolicyIn(product_code="p"))
        assert unknown.value.where == "sku_id"
        # The failed write left the transaction usable and the earlier policy in place.
        assert licenses.get_policy(s, sku.id).product_code == "p2"


def test_policy_input_is_checked() -> None:
    with pytest.raises(ValueError, match="pattern must end with XX"):
        licenses.PolicyIn(pattern="XXXX-XXXX-XXXX-XXXX-AB", product_code="p")
    with pytest.raises(ValueError, match="activation_limit"):
        licenses.PolicyIn(activation_limit=0, product_code="p")
    with pytest.raises(ValueError, match="product_code"):
        licenses.PolicyIn(product_code="has space")


def test_issue_follows_the_policy(shop: fulfilment.Shop) -> None:
    sku_id = licensed_sku(shop, pattern="ACME-XXXX-XXXX-XXXX-XXXX", limit=2, days=365)
    now = utcnow()
    with shop.db.write() as s:
        issued = licenses.issue(s, shop.cipher, sku_id, 42, 5, now)
    assert len(issued) == 5
    for lic in issued:
        assert lic.order_id == 42 and lic.sku_id == sku_id
        assert lic.activation_limit == 2 and lic.product_code == "acme-editor"
        assert lic.expires_at == now + timedelta(days=365)
        assert lic.masked.startswith("****-****-****-****-") and "*" not in lic.masked[-4:]
    with shop.db.read() as s:
        revealed = licenses.reveal(s, shop.cipher, [i.license_id for i in reversed(issued)])
        views = licenses.licenses_for_order(s, 42)
    keys = [r.key for r in revealed]
    assert [r.license_id for r in revealed] == [i.license_id for i in reversed(issued)]
    assert len(set(keys)) == 5
    for key, r in zip(keys, revealed, strict=True):
        assert key.startswith("ACME-") and compact(key) == key.replace("-", "")
        assert r.masked[-4:] == key[-4:]
    assert [v.license_id for v in views] == [i.license_id for i in issued]
    assert {v.status for v in views} == {"active"} and {v.activations_used for v in views} == {0}
    with shop.db.read() as s:
        found = licenses.find_license(s, shop.cipher, keys[0].lower().replace("-", " "))
        assert found is not None and found.license_id == revealed[0].license_id
        assert licenses.find_license(s, shop.cipher, "not a key") is None


def test_issue_checks_quantity(shop: fulfilment.Shop) -> None:
    sku_id = licensed_sku(shop)
    with shop.db.write() as s:
        for quantity in (0, -1, 1001):
            with pytest.raises(InvalidInput) as bad:
                licenses.issue(s, shop.cipher, sku_id, None, quantity)
            assert bad.value.where == "quantity"


def test_database_holds_no_plaintext_key(settings: Settings, shop: fulfilment.Shop) -> None:
    sku_id = licensed_sku(shop, "DUMP-LIC")
    keys = issue_keys(shop, sku_id, 50, order_id=7)
    forms = [k for key in keys for k in (key, key.replace("-", ""))]
    # The raw rows, every column as the database returns it.
    with shop.db.read() as s:
        rows = s.execute(text("SELECT * FROM licenses_license")).all()
    assert len(rows) == 50
    raw = "\n".join(
        repr(v) + (v.decode("latin-1") if isinstance(v, bytes) else "") for r in rows for v in r
    )
    assert [k for k in forms if k in raw] == []
    # Each row names a data key that exists only wrapped, and the dump shows no key either.
    with shop.db.read() as s:
        wrapped = s.execute(
            text(
                "SELECT count(DISTINCT d.id) FROM licenses_license l "
                "JOIN vault_data_key d ON d.id = l.data_key_id"
            )
        ).scalar_one()
    assert wrapped == 1
    dump = _dump(settings)
    assert "DUMP-LIC" in dump and "licenses_license" in dump
    assert [k for k in forms if k in dump] == []


def test_swapped_ciphertexts_fail_their_integrity_check(shop: fulfilment.Shop) -> None:
    sku_id = licensed_sku(shop)
    issue_keys(shop, sku_id, 2)
    with shop.db.write() as s:
        a, b = s.execute(text("SELECT id, ciphertext FROM licenses_license ORDER BY id")).all()
        s.execute(
            text("UPDATE licenses_license SET ciphertext = :c WHERE id = :i"),
            {"c": b[1], "i": a[0]},
        )
    with shop.db.read() as s, pytest.raises(Exception, match="integrity check"):
        licenses.reveal(s, shop.cipher, [a[0]])


def test_revoke_is_final_and_idempotent(shop: fulfilment.Shop) -> None:
    sku_id = licensed_sku(shop)
    with shop.db.write() as s:
        ids = [i.license_id for i in licenses.issue(s, shop.cipher, sku_id, 9, 3)]
        with pytest.raises(InvalidInput) as no_reason:
            licenses.revoke(s, ids, "  ")
        assert no_reason.value.where == "reason"
        assert licenses.revoke(s, ids[:2], "refund R1") == 2
        assert licenses.revoke(s, ids, "refund R2") == 1
        assert licenses.revoke(s, [], "nothing") == 0
    with shop.db.read() as s:
        views = licenses.licenses_for_order(s, 9)
    assert [v.status for v in views] == ["revoked"] * 3
    assert [v.revoked_reason for v in views] == ["refund R1", "refund R1", "refund R2"]
