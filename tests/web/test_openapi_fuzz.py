"""Fuzz the whole HTTP API from its own OpenAPI document: no request may cause a 5xx.

Schemathesis reads `/openapi.json` from the in-process ASGI app and makes one test per operation,
public (/api/v1/) and admin (/api/admin/) alike. Each sends boundary cases (coverage phase) and
derandomized Hypothesis cases, valid and invalid, to an app on a fresh database holding a small
catalog, stock, orders in several states (pending, expired, delivered, awaiting stock),
notifications and parked jobs.

A schema hook keeps the fuzzer from stopping at the first 404 or 401: it mixes identifiers that
exist into path parameters and body fields (SKU codes, slugs, order numbers, job ids, the sandbox
gateway), attaches the admin token on /api/admin/ and the order's own access token on
/api/v1/orders/{order_no} (or sometimes a wrong or malformed credential), uploads key files with
odd names and contents, and sends payment notifications with fuzzed raw bodies, signed or not.

Every response must be below 500, and every error from /api/ must be application/problem+json.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from types import SimpleNamespace
from typing import Any, cast

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from sqlalchemy import text

from kami import accounts, bootstrap, catalog, fulfilment, orders
from kami.config import Settings
from kami.kernel import outbox
from kami.kernel.clock import utcnow
from kami.web.app import create_app
from kami.web.problems import PROBLEM
from tests.conftest import add_keys, make_sku, place, raw_notification, sandbox_body, sign

MAX_EXAMPLES = 40  # per operation, fuzzing phase; the coverage phase adds its boundary cases
SEED = 20240607

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "generation": {
            "mode": "all",  # inputs that match the schema and inputs that do not
            "max-examples": MAX_EXAMPLES,
            "deterministic": True,  # Hypothesis `derandomize`: the same cases on every run
            "database": "none",  # nothing replayed from, or written to, .hypothesis/
        },
        "phases": {"stateful": {"enabled": False}},
    }
)

ADMIN_PREFIX = "/api/admin/"
NOTIFY_PATH = "/api/v1/payments/{gateway}/notify"
KEYS_PATH = "/api/admin/skus/{code}/keys"
# None: the right credential; anything else is sent as the Authorization header instead.
AUTH_VARIANTS = [None, None, None, None, "Bearer ", "Bearer kami_not-a-token", "Basic YQ=="]
KEY_FILES = [
    b"AAAA-1111-0001\nAAAA-1111-0002\nAAAA-1111-0001\n",
    b"card,password\nCARD-1,PASS-1\nCARD-2,\n,lonely\n",
    b"C1----P1\nno separator here\n\n",
    b"\xef\xbb\xbfBOM-KEY\nbad-\xff-utf8\nctl-\x01-char\n",
    b'"unterminated,quote\n',
    b"PK\x03\x04not really a workbook",
]
# Strings that have broken web applications before: NUL, overlong, odd Unicode, path tricks.
NASTY = ["", " ", "\x00", "a\x00b", "x" * 300, "%00", "../..", "\u202e", "😀" * 20, "' OR '1'='1"]
UPLOAD_NAMES = ["keys.txt", "keys.csv", "keys.xlsx", "", ".", "..", "../../etc/passwd", "a\\b.txt"]
BOUNDARY = "kami-fuzz-boundary-8f3a"
FAR = ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"]  # no UTC equivalent


@dataclass
class World:
    """What the database holds, so fuzzed requests can name things that exist."""

    admin_token: str
    token_secret: bytes
    categories: list[str] = field(default_factory=list)
    products: list[str] = field(default_factory=list)
    skus: list[str] = field(default_factory=list)
    order_nos: list[str] = field(default_factory=list)
    payable: list[tuple[str, int, str]] = field(default_factory=list)  # order_no, amount, currency
    job_ids: list[int] = field(default_factory=list)

    def path_pool(self, path: str, name: str) -> list[Any]:
        """Identifiers worth trying for a path parameter of this operation."""
        if name == "slug":
            return self.products if path.startswith("/api/admin/products") else self.categories
        pools = {"order_no": self.order_nos, "code": self.skus, "job_id": self.job_ids}
        return [*pools.get(name, []), *(["sandbox"] if name == "gateway" else [])]

    def field_pool(self, name: str) -> list[Any]:
        """Values worth trying for a body field or form field: real references and edge cases."""
        pools: dict[str, list[Any]] = {
            "sku": self.skus,
            "product": self.products,
            "category": self.categories,
            "parent": self.categories,
            "gateway": ["sandbox"],
            "email": ["buyer@example.com", "a.b+c@mail.example.org"],
            "quantity": [1, 2, 5],
            "price_minor": [2**31, 10**12, 2**31 - 1, 1250],
            "currency": ["CNY", "JPY", "USD", "XXX"],
            "cost_currency": ["CNY", "JPY", "XXX"],
            "format": ["text", "csv", "xlsx"],
            "separator": ["----", ",", "\t"],
            "unit_cost": ["Infinity", "sNaN", "9e99", "12.50", "0", "-1", "0.001", "NaN"],
            "expires_at": [*FAR, "2099-01-01T00:00:00+08:00", "2000-01-01T00:00:00Z", "2099-01-01"],
            "starts_at": ["2020-01-01T00:00:00Z", FAR[0]],
            "ends_at": ["2099-01-01T00:00:00+08:00", FAR[1]],
            "file": KEY_FILES,
        }
        return pools.get(name, [])

    def credential(self, path: str, path_parameters: dict[str, Any]) -> str | None:
        if path.startswith(ADMIN_PREFIX):
            return f"Bearer {self.admin_token}"
        order_no = path_parameters.get("order_no")
        if path.startswith("/api/v1/orders/") and isinstance(order_no, str):
            try:
                return f"Bearer {orders.access_token(self.token_secret, order_no)}"
            except UnicodeError:
                return None
        return None


def _populate(shop: fulfilment.Shop) -> World:
    with shop.db.write() as s:
        admin = accounts.create_admin(s, "fuzzer", "correct horse battery")
        token = accounts.issue_token(s, admin.id)
    world = World(admin_token=token, token_secret=shop.token_secret())

    game = make_sku(shop, "GAME-1", price=1250, max_quantity=5)
    add_keys(shop, game, [f"GAME-KEY-{n:04d}" for n in range(1, 13)], supplier="acme")
    make_sku(shop, "GIFT_50.CNY", price=5000, display=catalog.StockDisplay.LEVEL)  # no stock
    vip = make_sku(shop, "VIP-1", price=2**31 - 1, max_quantity=10)  # the largest INTEGER
    add_keys(shop, vip, ["VIP-KEY-1", "VIP-KEY-2", "VIP-KEY-3"])
    solo = make_sku(shop, "JP-100", price=100, currency="JPY", display=catalog.StockDisplay.HIDDEN)
    add_keys(shop, solo, ["SOLO-KEY-1"])

    def pay(placed: fulfilment.PlacedOrder) -> None:
        o = placed.order
        body = sandbox_body(o.order_no, o.amount_minor, currency=o.currency)
        fulfilment.handle_notification(shop, raw_notification(body))

    pending = place(shop, "GAME-1", 2)
    delivered = place(shop, "GAME-1", 3, email="paid@example.com")
    pay(delivered)
    expired = place(shop, "GAME-1", 1, email="gone@example.com")
    late = place(shop, "JP-100", email="late@example.com")  # reserves the only key
    with shop.db.write() as s:
        s.execute(
            text("UPDATE orders_order SET expires_at = :t WHERE order_no IN (:a, :b)"),
            {
                "t": utcnow() - timedelta(seconds=1),
                "a": expired.order.order_no,
                "b": late.order.order_no,
            },
        )
    fulfilment.expire_orders(shop)  # both lapse; the JP-100 key goes back on sale
    holder = place(shop, "JP-100", email="holder@example.com")  # and is reserved again
    pay(late)  # paid after all, but its key is held: it waits for stock
    # A rejected notification, so /notifications has more than one verdict.
    fulfilment.handle_notification(shop, raw_notification(b"{}", signature="0" * 64))
    # No handler for the e-mail jobs: they are parked, so /jobs/{id}/retry has work to do.
    outbox.run_due_jobs(shop.db, {})

    with shop.db.read() as s:
        world.categories = [c.slug for c in catalog.list_categories(s)]
        world.products = [p.slug for p in catalog.list_products(s)]
        world.skus = [v.code for v in catalog.list_skus(s)]
        world.job_ids = [j.id for j in outbox.list_jobs(s)]
        states = {o.order_no: o.status for o in orders.list_orders(s, limit=50)}
    placed = (pending, delivered, expired, late, holder)
    world.order_nos = [o.order.order_no for o in placed]
    world.payable = [(o.order.order_no, o.order.amount_minor, o.order.currency) for o in placed]
    assert sorted(states.values()) == sorted(
        ["awaiting_stock", "delivered", "expired", "pending", "pending"]
    ), states
    return world


def _notify_body(world: World) -> st.SearchStrategy[tuple[bytes, str | None]]:
    """Raw notification bodies, close to a real payment or not at all, signed or not."""
    txt = st.one_of(st.sampled_from(NASTY), st.text(max_size=80))

    @st.composite
    def fields(draw: st.DrawFn) -> dict[str, Any]:
        order_no, amount, currency = draw(st.sampled_from(world.payable))
        data = {
            "order_no": draw(st.one_of(st.just(order_no), txt, st.integers())),
            "trade_no": draw(st.one_of(st.sampled_from(["T1", "T2"]), txt, st.none())),
            "amount_minor": draw(
                st.one_of(st.just(amount), st.integers(), st.floats(), st.booleans(), txt)
            ),
            "currency": draw(st.one_of(st.just(currency), st.sampled_from(["XXX", ""]), txt)),
            "status": draw(st.one_of(st.sampled_from(["paid", "pending", "closed"]), txt)),
        }
        for name in draw(st.lists(st.sampled_from(sorted(data)), max_size=2)):
            data.pop(name, None)
        return data

    bodies = st.one_of(
        fields().map(lambda d: json.dumps(d).encode()),
        fields().map(lambda d: json.dumps(d, ensure_ascii=False).encode()),
        st.binary(max_size=200),
        st.sampled_from([b"", b"\x00", b"{}\x00"]),
    )
    return st.tuples(bodies, st.sampled_from(["valid", "wrong", "missing"])).map(
        lambda t: (t[0], sign(t[0]) if t[1] == "valid" else "ab" * 32 if t[1] == "wrong" else None)
    )


def _multipart(filename: str, content: bytes, form: dict[str, str]) -> bytes:
    """A hand-made multipart body: the generated ones always name the file after the field."""
    out = [
        f"--{BOUNDARY}\r\n".encode(),
        b'Content-Disposition: form-data; name="file"; filename="'
        + filename.encode("utf-8", "surrogatepass")
        + b'"\r\nContent-Type: application/octet-stream\r\n\r\n',
        content,
        b"\r\n",
    ]
    for name, value in form.items():
        out += [
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode(),
            value.encode("utf-8", "surrogatepass"),
            b"\r\n",
        ]
    out.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(out)


def _key_upload(world: World) -> st.SearchStrategy[bytes]:
    """Multipart bodies with any file name, content and form fields (or none of the fields)."""
    names = ("format", "separator", "supplier", "unit_cost", "cost_currency", "expires_at")
    form = st.fixed_dictionaries(
        {
            n: st.one_of(
                st.none(), st.sampled_from(world.field_pool(n) or ["acme"]), st.text(max_size=12)
            )
            for n in names
        }
    ).map(lambda fields: {n: v for n, v in fields.items() if v is not None})
    return st.builds(
        _multipart,
        st.one_of(st.sampled_from(UPLOAD_NAMES), st.sampled_from(NASTY), st.text(max_size=40)),
        st.one_of(st.sampled_from(KEY_FILES), st.binary(max_size=300)),
        form,
    )


def _mixed(value: Any, pool: list[Any]) -> st.SearchStrategy[Any]:
    """A value from the pool, the generated one, or for text a classic troublemaker."""
    options = [st.sampled_from(pool)] if pool else []  # first: Hypothesis favours early branches
    options.append(st.just(value))
    if isinstance(value, str):
        options.append(st.sampled_from(NASTY))
    return st.one_of(*options)


def _body_fields(document: dict[str, Any]) -> dict[tuple[str, str], list[str]]:
    """(METHOD, path) -> the properties of its request body, so absent ones can be filled in."""
    components = document.get("components", {}).get("schemas", {})
    fields: dict[tuple[str, str], list[str]] = {}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for media in operation.get("requestBody", {}).get("content", {}).values():
                name = media.get("schema", {}).get("$ref", "").rsplit("/", 1)[-1]
                properties = components.get(name, {}).get("properties", {})
                fields[(method.upper(), path)] = sorted(properties)
    return fields


ABSENT = object()  # a body field the generated case left out

# The OpenAPI document does not depend on the database, so it is read at collection time from an
# app whose container has settings and nothing else (no request reaches a handler); each test then
# sends its cases to an app built on that test's own database (`case.call(app=...)`). One pytest
# item per operation, each with a fresh, populated database. (`schemathesis.pytest.from_fixture`
# would build the schema from fixtures instead, but with pytest 9 it fails on `Node._nodeid`.)
SCHEMA_APP = create_app(
    cast(bootstrap.Container, SimpleNamespace(settings=Settings(database_url="sqlite://"))),
    worker=False,
)
schema = schemathesis.openapi.from_asgi("/openapi.json", SCHEMA_APP, config=CONFIG)
BODY_FIELDS = _body_fields(SCHEMA_APP.openapi())
_current: dict[str, World] = {}


@schema.hook
def flatmap_case(context: Any, case: Any) -> st.SearchStrategy[Any]:
    """Steer each generated case towards data that exists, and vary what the schema cannot say."""
    world = _current["world"]
    path = case.operation.path
    parts: dict[str, st.SearchStrategy[Any]] = {
        "path": st.fixed_dictionaries(
            {
                n: _mixed(v, world.path_pool(path, n))
                for n, v in (case.path_parameters or {}).items()
            }
        ),
        "auth": st.sampled_from(AUTH_VARIANTS),
    }
    if "idempotency-key" in {n.lower() for n in case.headers or {}}:
        # The generated key first: reusing one mostly replays an order or refuses a new one.
        parts["idempotency"] = st.one_of(st.none(), st.sampled_from(["fuzz-key-1", "fuzz-key-2"]))
    if isinstance(case.body, dict):
        names = set(case.body) | set(BODY_FIELDS.get((case.method.upper(), path), []))
        parts["body"] = st.fixed_dictionaries(
            {n: _mixed(case.body.get(n, ABSENT), world.field_pool(n)) for n in sorted(names)}
        )
    if path == NOTIFY_PATH:
        parts["notify"] = _notify_body(world)
    if path == KEYS_PATH:
        parts["upload"] = st.one_of(_key_upload(world), st.none())

    def apply(drawn: dict[str, Any]) -> Any:
        if case.path_parameters:
            case.path_parameters.update(drawn["path"])
        if drawn.get("idempotency") is not None:
            case.headers["Idempotency-Key"] = drawn["idempotency"]
        for name, value in drawn.get("body", {}).items():
            if value is ABSENT:
                case.body.pop(name, None)
            else:
                case.body[name] = value
        if drawn["auth"] is not None:
            case.headers["Authorization"] = drawn["auth"]
        if "notify" in drawn:
            # The operation declares no body (gateways read the raw bytes), so one is made here.
            case.body, signature = drawn["notify"]
            case.media_type = "application/octet-stream"
            case.headers["Content-Type"] = "application/json"
            if signature is not None:
                case.headers["X-Sandbox-Signature"] = signature
        if drawn.get("upload") is not None:
            case.body = drawn["upload"]
            case.headers["Content-Type"] = f"multipart/form-data; boundary={BOUNDARY}"
        return case

    return st.fixed_dictionaries(parts).map(apply)


@pytest.fixture
def world(shop: fulfilment.Shop) -> Iterator[World]:
    _current["world"] = populated = _populate(shop)
    yield populated
    _current.clear()


@pytest.fixture
def app(container: bootstrap.Container) -> FastAPI:
    return create_app(container, worker=False)


@schema.parametrize()
# One operation's examples share its database on purpose: what earlier examples created, paid or
# deleted is part of what later ones run into.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_no_input_causes_a_server_error(case: Any, world: World, app: FastAPI) -> None:
    headers = {}
    if "authorization" not in {k.lower() for k in (case.headers or {})}:
        credential = world.credential(case.operation.path, case.path_parameters or {})
        if credential is not None:
            headers["Authorization"] = credential
    response = case.call(headers=headers, app=app)
    case.validate_response(response, checks=[not_a_server_error], headers=headers)
    if response.status_code >= 400 and case.operation.path.startswith("/api/"):
        content_type = response.headers.get("content-type", [""])[0]
        assert content_type.startswith(PROBLEM), (
            f"{case.operation.label} answered {response.status_code} with {content_type!r}, "
            f"not {PROBLEM}: {response.text[:300]}"
        )
