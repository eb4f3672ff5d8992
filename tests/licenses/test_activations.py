"""Seats and signed answers in the domain: the activation limit holds under concurrent
activations from threads and processes, one machine holds one seat, deactivation frees it,
expired and revoked licenses are refused, and every answer (refusals too) verifies offline."""

from __future__ import annotations

import base64
import json
import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from kami import bootstrap, fulfilment, licenses
from kami.config import Settings
from kami.kernel.clock import utcnow
from kami.licenses.keyformat import generate
from kami.licenses.signing import Signer
from tests.licenses import issue_keys, licensed_sku, request

THREADS = 32


def _activate(shop: fulfilment.Shop, key: str, machine: str) -> str:
    """The answer's `result`, whether it is a success or a signed refusal."""
    try:
        with shop.db.write() as s:
            return str(licenses.activate(s, shop.cipher, request(key, machine)).payload["result"])
    except licenses.LicenseRefused as refused:
        return str(refused.answer.payload["result"])


def _live_seats(shop: fulfilment.Shop) -> list[tuple[int, str]]:
    with shop.db.read() as s:
        rows = s.execute(
            text(
                "SELECT license_id, machine_id FROM licenses_activation "
                "WHERE deactivated_at IS NULL ORDER BY machine_id"
            )
        )
        return [(r[0], r[1]) for r in rows]


def _public_key(shop: fulfilment.Shop) -> licenses.PublicKey:
    with shop.db.read() as s:
        return licenses.public_key(s, shop.cipher)


def test_limit_holds_under_32_concurrent_activations(shop: fulfilment.Shop) -> None:
    sku_id = licensed_sku(shop, limit=5)
    key, other = issue_keys(shop, sku_id, 2)
    start = threading.Barrier(THREADS, timeout=30)

    def go(n: int) -> str:
        start.wait()  # every activation goes in at the same moment
        return _activate(shop, key, f"machine-{n:02d}")

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(go, range(THREADS)))
    assert results.count("activated") == 5
    assert results.count("activation-limit-reached") == THREADS - 5
    seats = _live_seats(shop)
    assert len(seats) == 5 and {lid for lid, _ in seats} == {seats[0][0]}
    winners = {f"machine-{n:02d}" for n, r in enumerate(results) if r == "activated"}
    assert {m for _, m in seats} == winners
    # The other license of the SKU has seats of its own.
    assert _activate(shop, other, "machine-00") == "activated"


def test_one_machine_racing_itself_takes_one_seat(shop: fulfilment.Shop) -> None:
    sku_id = licensed_sku(shop, limit=2)
    (key,) = issue_keys(shop, sku_id)
    start = threading.Barrier(16, timeout=30)

    def go(_: int) -> str:
        start.wait()
        return _activate(shop, key, "same-box")

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(go, range(16)))
    assert sorted(set(results)) == ["activated", "already-activated"]
    assert results.count("activated") == 1
    assert [m for _, m in _live_seats(shop)] == ["same-box"]
    assert _activate(shop, key, "second-box") == "activated"  # the second seat is still free


def _process_activate(settings_json: str, key: str, prefix: str, start: Any, out: Any) -> None:
    container = bootstrap.build(Settings.model_validate_json(settings_json))
    start.wait(60)
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(
                pool.map(lambda n: _activate(container.shop, key, f"{prefix}-{n}"), range(8))
            )
        out.put(results)
    finally:
        container.close()


def test_limit_holds_across_processes(shop: fulfilment.Shop, settings: Settings) -> None:
    sku_id = licensed_sku(shop, limit=7)
    (key,) = issue_keys(shop, sku_id)
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    payload = json.loads(settings.model_dump_json(exclude={"master_key", "sandbox_secret"}))
    assert settings.master_key is not None
    payload["master_key"] = settings.master_key.get_secret_value()
    procs = [
        ctx.Process(target=_process_activate, args=(json.dumps(payload), key, f"p{i}", start, out))
        for i in range(3)
    ]
    for p in procs:
        p.start()
    start.set()
    results = [r for _ in procs for r in out.get(timeout=180)]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert results.count("activated") == 7
    assert results.count("activation-limit-reached") == 3 * 8 - 7
    assert len(_live_seats(shop)) == 7


def test_deactivate_frees_a_seat_and_is_idempotent(shop: fulfilment.Shop) -> None:
    sku_id = licensed_sku(shop, limit=1)
    (key,) = issue_keys(shop, sku_id)
    assert _activate(shop, key, "old-laptop") == "activated"
    assert _activate(shop, key, "new-laptop") == "activation-limit-reached"
    with shop.db.write() as s:
        answer = licenses.deactivate(s, shop.cipher, request(key, "old-laptop"))
    assert answer.payload["result"] == "deactivated" and answer.payload["activations_used"] == 0
    assert answer.payload["machine_activated"] is False
    with shop.db.write() as s:
        again = licenses.deactivate(s, shop.cipher, request(key, "old-laptop"))
    assert again.payload["ok"] is True and again.payload["result"] == "not-activated"
    assert _activate(shop, key, "new-laptop") == "activated"
    assert _activate(shop, key, "old-laptop") == "activation-limit-reached"
    with shop.db.read() as s:
        lic = licenses.find_license(s, shop.cipher, key)
        assert lic is not None
        history = licenses.list_activations(s, lic.license_id)
    assert [(a.machine_id, a.deactivated_at is None) for a in history] == [
        ("old-laptop", False),
        ("new-laptop", True),
    ]


def test_one_live_seat_per_machine_is_enforced_by_the_database(shop: fulfilment.Shop) -> None:
    sku_id = licensed_sku(shop, limit=3)
    (key,) = issue_keys(shop, sku_id)
    assert _activate(shop, key, "box") == "activated"
    (license_id, _), *_ = _live_seats(shop)
    insert = text(
        "INSERT INTO licenses_activation (license_id, machine_id, activated_at, last_seen_at) "
        "VALUES (:l, 'box', :t, :t)"
    )
    with pytest.raises(IntegrityError), shop.db.write() as s:
        s.execute(insert, {"l": license_id, "t": utcnow().replace(tzinfo=None)})


def test_validate(shop: fulfilment.Shop) -> None:
    sku_id = licensed_sku(shop, limit=2, days=30)
    now = utcnow()
    (key,) = issue_keys(shop, sku_id, now=now)
    with shop.db.read() as s, pytest.raises(licenses.LicenseRefused) as not_yet:
        licenses.validate(s, shop.cipher, request(key, "box", nonce="n-1"))
    assert not_yet.value.slug == "machine-not-activated" and not_yet.value.status == 403
    assert not_yet.value.answer.payload["status"] == "active"
    assert _activate(shop, key, "box") == "activated"
    with shop.db.read() as s:
        answer = licenses.validate(s, shop.cipher, request(key.lower(), "box", nonce="n-2"))
    p = answer.payload
    assert (p["ok"], p["result"], p["status"], p["action"]) == (True, "valid", "active", "validate")
    assert (p["product_code"], p["machine_id"], p["nonce"]) == ("acme-editor", "box", "n-2")
    assert (p["activations_used"], p["activation_limit"], p["machine_activated"]) == (1, 2, True)
    assert p["expires_at"].endswith("Z") and p["key_sha256"] == licenses.key_digest(key)
    # One second before expiry it is valid; at expiry it is not.
    expires = now + timedelta(days=30)
    with shop.db.read() as s:
        licenses.validate(s, shop.cipher, request(key, "box"), expires - timedelta(seconds=1))
        with pytest.raises(licenses.LicenseRefused) as expired:
            licenses.validate(s, shop.cipher, request(key, "box"), expires)
    assert expired.value.slug == "license-expired" and expired.value.answer.payload["ok"] is False


def test_expired_license_cannot_be_activated_but_frees_seats(shop: fulfilment.Shop) -> None:
    sku_id = licensed_sku(shop, limit=2, days=365)
    (key,) = issue_keys(shop, sku_id, now=utcnow() - timedelta(days=366))
    assert _activate(shop, key, "box") == "license-expired"
    with shop.db.write() as s:
        answer = licenses.deactivate(s, shop.cipher, request(key, "box"))
    assert answer.payload["status"] == "expired" and answer.payload["ok"] is True


def test_revoked_license_is_refused(shop: fulfilment.Shop) -> None:
    sku_id = licensed_sku(shop, limit=2)
    (key,) = issue_keys(shop, sku_id, order_id=5)
    assert _activate(shop, key, "box") == "activated"
    with shop.db.write() as s:
        licenses.revoke(s, [v.license_id for v in licenses.licenses_for_order(s, 5)], "refund")
    assert _activate(shop, key, "box") == "license-revoked"
    assert _activate(shop, key, "other") == "license-revoked"
    with shop.db.read() as s, pytest.raises(licenses.LicenseRefused) as refused:
        licenses.validate(s, shop.cipher, request(key, "box"))
    assert refused.value.slug == "license-revoked" and refused.value.status == 403


def test_wrong_and_unknown_keys_get_one_and_the_same_refusal(shop: fulfilment.Shop) -> None:
    sku_id = licensed_sku(shop)
    (key,) = issue_keys(shop, sku_id)
    unknown = generate(licenses.DEFAULT_PATTERN)  # well-formed, but nobody was sold it
    for text_ in ["", "garbage", key[:-1] + ("Z" if key[-1] != "Z" else "Y"), unknown]:
        with shop.db.read() as s, pytest.raises(licenses.LicenseRefused) as refused:
            licenses.validate(s, shop.cipher, request(text_, "box"))
        p = refused.value.answer.payload
        assert (refused.value.slug, refused.value.status, refused.value.detail) == (
            "license-invalid",
            404,
            "this license key is not valid",
        )
        assert p["status"] == "invalid" and p["product_code"] is None
        assert p["activation_limit"] is None and p["issued_at"] is None


# -- signatures --------------------------------------------------------------------------------
def _canonical(payload: dict[str, Any]) -> bytes:
    """What the seller's software computes: written out here, not imported from Kami."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def test_answers_verify_offline_with_plain_cryptography(shop: fulfilment.Shop) -> None:
    sku_id = licensed_sku(shop, limit=1, product="editor-pro")
    (key,) = issue_keys(shop, sku_id)
    published = _public_key(shop)
    with shop.db.write() as s:
        ok = licenses.activate(s, shop.cipher, request(key, "box", nonce="café-1")).body()
    try:
        with shop.db.write() as s:
            licenses.activate(s, shop.cipher, request(key, "box-2", nonce="n-2"))
    except licenses.LicenseRefused as refused:
        no = refused.answer.body()
    wire = [json.loads(json.dumps(doc)) for doc in (ok, no)]  # as the client receives them

    pem_key = load_pem_public_key(published.pem.encode())
    raw_key = Ed25519PublicKey.from_public_bytes(base64.b64decode(published.raw_base64))
    assert isinstance(pem_key, Ed25519PublicKey)
    for doc in wire:
        assert doc["key_id"] == published.key_id
        for k in (pem_key, raw_key):
            k.verify(base64.b64decode(doc["signature"]), _canonical(doc["payload"]))
    assert wire[0]["payload"]["product_code"] == "editor-pro"
    assert wire[0]["payload"]["nonce"] == "café-1" and wire[0]["payload"]["ok"] is True
    assert wire[1]["payload"]["result"] == "activation-limit-reached"

    # Kami's own helper agrees, given the key in any of its published forms.
    for form in (published.pem, published.raw_base64, pem_key):
        assert (
            licenses.verify_offline(form, json.dumps(wire[0]), nonce="café-1") == wire[0]["payload"]
        )
    licenses.verify_offline(published.pem, wire[1], machine_id="box-2", license_key=key.lower())


def test_tampered_answers_fail_verification(shop: fulfilment.Shop) -> None:
    sku_id = licensed_sku(shop, limit=1)
    (key,) = issue_keys(shop, sku_id)
    published = _public_key(shop)
    with shop.db.write() as s:
        doc = licenses.activate(s, shop.cipher, request(key, "box", nonce="n")).body()
    pem_key = load_pem_public_key(published.pem.encode())
    assert isinstance(pem_key, Ed25519PublicKey)
    tampered = [
        {**doc, "payload": {**doc["payload"], "activation_limit": 1000}},
        {**doc, "payload": {**doc["payload"], "expires_at": "2099-01-01T00:00:00Z"}},
        {**doc, "payload": {**doc["payload"], "ok": False}},
        {**doc, "payload": {**doc["payload"], "extra": 1}},
    ]
    for bad in tampered:
        with pytest.raises(InvalidSignature):
            pem_key.verify(base64.b64decode(bad["signature"]), _canonical(bad["payload"]))
        with pytest.raises(licenses.SignatureInvalid):
            licenses.verify_offline(published.pem, bad)
    flipped = bytearray(base64.b64decode(doc["signature"]))
    flipped[0] ^= 1
    with pytest.raises(licenses.SignatureInvalid):
        licenses.verify_offline(
            published.pem, {**doc, "signature": base64.b64encode(flipped).decode()}
        )
    # Right signature, wrong request: another nonce, machine or key.
    for kwargs in ({"nonce": "other"}, {"machine_id": "other"}, {"license_key": key + "2"}):
        with pytest.raises(licenses.SignatureInvalid):
            licenses.verify_offline(published.pem, doc, **kwargs)
    # Another shop's key does not verify this shop's answers.
    stranger = Signer(b"s" * 32).public_key
    assert stranger.key_id != published.key_id
    with pytest.raises(licenses.SignatureInvalid):
        licenses.verify_offline(stranger.pem, doc)
