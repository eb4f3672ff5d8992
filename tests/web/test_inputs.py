"""A NUL anywhere in a JSON body is refused with a 422 that says where; nothing else is."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from kami.fulfilment import Shop
from tests.conftest import add_keys, make_sku, random_keys


def _order(client: TestClient, body: bytes) -> tuple[int, dict[str, object]]:
    r = client.post("/api/v1/orders", content=body, headers={"content-type": "application/json"})
    return r.status_code, r.json()


def test_a_nul_in_a_nested_body_string_or_key_is_refused_where_it_is(
    client: TestClient, shop: Shop
) -> None:
    add_keys(shop, make_sku(shop, "N-1"), random_keys(2))
    order = {"sku": "N-1", "quantity": 1, "email": "b@example.com", "gateway": "sandbox"}
    status, problem = _order(
        client, json.dumps({**order, "buyer_input": {"account": "a\x00b"}}).encode()
    )
    assert (status, problem["where"]) == (422, "buyer_input.account")
    status, problem = _order(client, json.dumps({**order, "buyer_input": {"k\x00": "v"}}).encode())
    assert status == 422 and "NUL" in str(problem["detail"])


def test_an_escaped_backslash_before_u0000_is_text_not_a_nul(client: TestClient) -> None:
    # The JSON text \\u0000 is a backslash followed by "u0000": ordinary characters, so the
    # request gets as far as looking the SKU up.
    body = b'{"sku": "X\\\\u0000", "quantity": 1, "email": "b@example.com", "gateway": "sandbox"}'
    status, problem = _order(client, body)
    assert status == 404 and "NUL" not in str(problem["detail"]), problem
    assert "X\\\\u0000" in str(problem["detail"])
