"""Configuring supplier accounts, the registry, and what a request may hold."""

from __future__ import annotations

import pytest

from kami.kernel.errors import InvalidInput, NotFound
from kami.suppliers import (
    SUPPLIER_SPECS,
    DayuanrenSupplier,
    FuluSupplier,
    GenericSupplier,
    SupplierCard,
    SupplierRegistry,
    SupplierRequest,
)

SPECS = {spec.protocol: spec for spec in SUPPLIER_SPECS}
SECRET = "TOP-SECRET-VALUE-0123456789"
GOOD = {
    "fulu": {
        "gateway_url": "https://openapi.fulu.com/api/getway",
        "app_key": "k",
        "app_secret": SECRET,
    },
    "dayuanren": {"base_url": "https://sup.example/yrapi.php", "userid": "10001", "apikey": SECRET},
    "generic": {"base_url": "https://sup.example/kami", "key_id": "kid", "secret": SECRET},
}


def test_every_protocol_is_configurable_and_names_its_secrets() -> None:
    assert set(SPECS) == {"fulu", "dayuanren", "generic"}
    built = [SPECS[p].build(f"{p}-main", GOOD[p]) for p in SPECS]
    assert [s.name for s in built] == ["fulu-main", "dayuanren-main", "generic-main"]
    assert isinstance(built[0], FuluSupplier)
    assert isinstance(built[1], DayuanrenSupplier)
    assert isinstance(built[2], GenericSupplier)
    for protocol, spec in SPECS.items():
        assert spec.secrets <= set(spec.required)
        assert set(GOOD[protocol]) == set(spec.required)


@pytest.mark.parametrize("protocol", ["fulu", "dayuanren", "generic"])
def test_bad_options_name_the_option_and_never_the_secret(protocol: str) -> None:
    spec = SPECS[protocol]
    for option in spec.required:
        with pytest.raises(ValueError) as caught:
            spec.build("x", {k: v for k, v in GOOD[protocol].items() if k != option})
        assert str(caught.value).startswith(f"{option}: ")
    url_option = spec.required[0]
    for bad_url in ("ftp://sup.example", "sup.example", "https://sup.example/?a=1"):
        with pytest.raises(ValueError) as caught:
            spec.build("x", dict(GOOD[protocol], **{url_option: bad_url}))
        assert str(caught.value).startswith(f"{url_option}: ")
    for bad_timeout in ("soon", "0", "500"):
        with pytest.raises(ValueError) as caught:
            spec.build("x", dict(GOOD[protocol], timeout=bad_timeout))
        assert str(caught.value).startswith("timeout: ")
        assert SECRET not in str(caught.value)


def test_a_short_generic_secret_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValueError) as caught:
        SPECS["generic"].build("g", dict(GOOD["generic"], secret="short-secret"))
    assert str(caught.value).startswith("secret: ") and "short-secret" not in str(caught.value)


def test_the_registry_is_explicit() -> None:
    registry = SupplierRegistry()
    registry.register(SPECS["fulu"].build("fulu-a", GOOD["fulu"]))
    registry.register(SPECS["generic"].build("gen-b", GOOD["generic"]))
    assert registry.names() == ["fulu-a", "gen-b"]
    assert registry.get("gen-b").name == "gen-b"
    with pytest.raises(ValueError):
        registry.register(SPECS["fulu"].build("fulu-a", GOOD["fulu"]))
    with pytest.raises(NotFound) as caught:
        registry.get("nope")
    assert caught.value.slug == "unknown-supplier"
    assert "fulu-a, gen-b" in caught.value.detail


@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"customer_order_no": ""}, "customer_order_no"),
        ({"customer_order_no": "K" * 51}, "customer_order_no"),
        ({"customer_order_no": "K 1"}, "customer_order_no"),
        ({"product_id": ""}, "product_id"),
        ({"quantity": 0}, "quantity"),
        ({"quantity": True}, "quantity"),
        ({"kind": "gift"}, "kind"),
        ({"account": None}, "account"),
        ({"account": "x\n"}, "account"),
        ({"max_cost_minor": -1}, "max_cost"),
    ],
)
def test_a_request_refuses_what_no_supplier_could_take(
    changes: dict[str, object], where: str
) -> None:
    fields: dict[str, object] = {
        "customer_order_no": "K2607190ABCDEFGHJKMNPQRSTV",
        "product_id": "10000001",
        "quantity": 1,
        "account": "13800138000",
        "kind": "recharge",
    }
    fields.update(changes)
    with pytest.raises(InvalidInput) as caught:
        SupplierRequest(**fields)  # type: ignore[arg-type]
    assert caught.value.where == where


def test_a_card_purchase_needs_no_account_and_cards_hide_in_reprs() -> None:
    request = SupplierRequest("K1", "20000001", 2, None, "card")
    assert request.account is None
    card = SupplierCard("CARD-NUMBER-1", "PASSWORD-1")
    assert "CARD-NUMBER-1" not in repr(card) and "PASSWORD-1" not in repr((card,))
